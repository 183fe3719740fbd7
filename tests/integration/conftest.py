"""Fixtures that start real worker processes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.fleet import worker_fleet
from tiercel.workers.launcher import Fleet


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    """Two prefork worker nodes with two processes each, for one test module.

    Module scope, not session: tests that start a private fleet (with other
    settings) must never share the queue with a fleet that outlives its module.
    """
    import tiercel.workers.app  # noqa: F401  (the client side uses the session's servers too)

    with worker_fleet(nodes=2, concurrency=2) as running:
        yield running
