"""What a collector reports: the :class:`Sample` figures the registry pulls at snapshot time.

A collector is a callable the registry runs at every snapshot
(:meth:`~tiercel.core.metrics.registry.MetricsRegistry.register_collector`); it
reports figures its source already keeps, so recording them costs the source's
hot path nothing (the cache's is :func:`tiercel.core.metrics.collectors.register_cache`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Final, NamedTuple

__all__ = ["COUNTER", "GAUGE", "Collector", "Sample"]

#: :attr:`Sample.kind` of a cumulative count owned by the source.
COUNTER: Final = "counter"
#: :attr:`Sample.kind` of a figure now.
GAUGE: Final = "gauge"


class Sample(NamedTuple):
    """One figure a collector reports at snapshot time.

    ``kind`` is ``"counter"`` (a cumulative count owned by the source) or
    ``"gauge"`` (a figure now).
    """

    kind: str
    name: str
    value: float
    labels: Mapping[str, str] = {}


Collector = Callable[[], Iterable[Sample]]
