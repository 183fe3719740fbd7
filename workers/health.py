"""Exit 0 when this process's dependencies (and, with --node, its worker node) answer; else 1.

Meant for probes: Kubernetes exec probes, compose health checks, monitoring
agents. It prints exactly one line (stdout when healthy,
stderr when not), never a secret, and returns within --timeout seconds.

--liveness (the default) checks that the broker answers and, with --node,
that the worker node answers a ping. The cache tier is left out on purpose:
a worker keeps computing when the cache tier is down, so restarting it would
not help. --readiness also checks the result backend and the cache tier.

--node NAME takes a Celery node name; %h, %n and %d expand as in the
worker's own -n option, so "--node worker@%h" names the worker started with
"-n worker@%h" in the same container or pod (same hostname).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import click

from tiercel.core.errors import NodeSilent

#: Seconds the whole check may take unless --timeout says otherwise.
DEFAULT_TIMEOUT = 5.0


class Seconds(click.types.FloatParamType):
    """The probe's time budget: more than 0, at most 300 seconds."""

    name = "seconds"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        """``value`` in seconds, or a usage error naming the option."""
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not 0 < seconds <= 300:
            self.fail(f"{seconds:g} must be between 0 and 300 seconds", param, ctx)
        return seconds


def expand_node_name(name: str) -> str:
    """Expand %h, %n and %d in ``name`` exactly as ``celery worker -n`` does."""
    from celery.utils.nodenames import host_format

    return str(host_format(name))


@dataclass
class HealthCheck:
    """The checks of one probe, run in order against one deadline."""

    mode: str
    node: str | None
    timeout: float
    passed: list[str] = field(default_factory=list)
    secrets: list[str] = field(default_factory=list)

    def run(self) -> None:
        """Raise an exception naming the first check that failed."""
        from tiercel.core.settings import resolve_settings
        from tiercel.workers.launcher import check_reachable

        deadline = time.monotonic() + self.timeout
        settings = resolve_settings()
        self.secrets = _passwords(settings.broker_url, settings.result_backend, settings.cache_url)
        targets = [("broker", settings.broker_url)]
        if self.mode == "readiness":
            if settings.result_backend != settings.broker_url:
                targets.append(("result backend", settings.result_backend))
            targets.append(("cache", settings.cache_url))
        for name, url in targets:
            if url is None:  # pragma: no cover - resolve_settings fills every URL
                continue
            # A socket call may wait for connect and then for the reply: halve the budget.
            check_reachable(name, url, timeout=max(0.05, _remaining(deadline) / 2))
            self.passed.append(name)
        if self.node is not None:
            from tiercel.workers.control import ping_nodes

            node = expand_node_name(self.node)
            wait = _remaining(deadline)
            if not ping_nodes(settings, [node], timeout=max(0.05, wait)):
                raise NodeSilent(f"worker node {node} did not answer a ping within {wait:.1f}s")
            self.passed.append(f"node {node}")


def _remaining(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def _passwords(*urls: str | None) -> list[str]:
    from urllib.parse import unquote, urlsplit

    found: list[str] = []
    for url in urls:
        if url:
            try:
                password = urlsplit(url).password
            except ValueError:
                continue
            if password:
                found.extend({password, unquote(password)})
    return found


def scrub(text: str, secrets: list[str]) -> str:
    """``text`` on one line with every secret replaced by ``***``."""
    line = " ".join(text.split())
    for secret in sorted(secrets, key=len, reverse=True):
        line = line.replace(secret, "***")
    return line


def _in_thread(target: Callable[[], None], timeout: float) -> tuple[bool, BaseException | None]:
    """Run ``target`` in a daemon thread; (finished, error). A hung socket cannot outlive us."""
    outcome: list[BaseException | None] = []

    def body() -> None:
        try:
            target()
        except BaseException as exc:  # reported by the caller, one line
            outcome.append(exc)
        else:
            outcome.append(None)

    thread = threading.Thread(target=body, name="tiercel-health", daemon=True)
    thread.start()
    thread.join(timeout)
    if not outcome:
        return False, None
    return True, outcome[0]


def run(mode: str = "liveness", node: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> int:
    """Run the probe; print one line; 0 when healthy, 1 when not."""
    check = HealthCheck(mode=mode, node=node, timeout=timeout)
    # The checks bound themselves; the thread is the backstop for a call that ignores its
    # timeout (a DNS lookup, a retry loop), so the probe's own deadline always holds.
    finished, error = _in_thread(check.run, timeout + 1.0)
    if finished and error is None:
        print(f"tiercel health: ok ({check.mode}): {', '.join(check.passed)}", flush=True)
        return 0
    if not finished:
        reason = f"no answer within {timeout:g}s"
    else:
        reason = str(error) or type(error).__name__
    done = f" (passed: {', '.join(check.passed)})" if check.passed else ""
    message = f"tiercel health: FAIL ({check.mode}): {reason}{done}"
    print(scrub(message, check.secrets), file=sys.stderr, flush=True)
    return 1


@click.command(
    "health", short_help="exit 0 when this node's fleet is healthy, else 1", help=__doc__
)
@click.option("--liveness", is_flag=True, help="broker reachable, node answers (default)")
@click.option(
    "--readiness",
    is_flag=True,
    help="broker, result backend and cache tier reachable, node answers",
)
@click.option(
    "--node",
    default=None,
    metavar="NAME",
    help="also ping this worker node; %h is this host's name, as in "
    "the worker's -n option (e.g. worker@%h)",
)
@click.option(
    "--timeout",
    type=Seconds(),
    default=DEFAULT_TIMEOUT,
    metavar="SECONDS",
    help=f"upper bound of the whole check (default {DEFAULT_TIMEOUT:g})",
)
@click.pass_context
def command(
    ctx: click.Context, liveness: bool, readiness: bool, node: str | None, timeout: float
) -> int:
    # The help is the module's docstring.
    if liveness and readiness:
        ctx.fail("--liveness and --readiness are mutually exclusive")
    return run("readiness" if readiness else "liveness", node, timeout)
