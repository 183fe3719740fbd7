"""A project laid out as Celery's First Steps: the app in ``tasks.py``, tiercel attached."""

import os
import time

from celery import Celery

import tiercel

app = Celery("tasks", broker=os.environ["PROJECT_REDIS"], backend=os.environ["PROJECT_REDIS"])
app.conf.worker_prefetch_multiplier = 3
app.conf.task_default_queue = os.environ["PROJECT_QUEUE"]
app.conf.broker_transport_options = {"visibility_timeout": 7200}
tiercel.init_app(app, namespace=os.environ["PROJECT_NAMESPACE"])


def _count(counter: str) -> int:
    from tiercel.tasks import runtime

    return int(runtime.current().tier.client.incr(counter))


@tiercel.cached_task(ttl=600)
def square(n: int, counter: str) -> int:
    _count(counter)
    time.sleep(0.2)
    return n * n


@tiercel.cached_task(ttl=600, bind=True)
def whoami(self, n: int) -> dict:
    return {"n": n, "task_id": self.request.id, "task": self.name}


@app.task
def add(a: int, b: int) -> int:
    return a + b
