"""``python manage.py quote SYMBOL DAY``: submit a cached quote, print it as JSON."""

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

import core
from core.tasks import add, quote


class Command(BaseCommand):
    help = "Submit quote(SYMBOL, DAY) and print its value and where it came from."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("symbol")
        parser.add_argument("day", type=int)
        parser.add_argument("--wait", type=float, default=60.0)

    def handle(self, *args: Any, **options: Any) -> None:
        result = quote.submit(options["symbol"], options["day"])
        value = result.get(timeout=options["wait"])
        app = quote.app
        self.stdout.write(
            json.dumps(
                {
                    "source": result.source,
                    "task_id": result.task_id,
                    "value": value,
                    "core": core.__file__,
                    "plain": add.delay(2, 3).get(timeout=options["wait"]),
                    "app": app.main,
                    "prefetch": app.conf.worker_prefetch_multiplier,
                    "queue": app.conf.task_default_queue,
                }
            )
        )
