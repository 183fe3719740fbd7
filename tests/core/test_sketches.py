"""LatencySketch: relative accuracy, merging across real processes, JSON form, bounds."""

from __future__ import annotations

import json
import math
import multiprocessing
import random
import threading

import pytest
from ddsketch import LogarithmicMapping
from hypothesis import given, settings
from hypothesis import strategies as st

from tiercel.core.metrics.sketches import DEFAULT_RELATIVE_ACCURACY, LatencySketch

# Float rounding in log/pow may push an answer a hair past the guarantee.
_EPS = 1e-9


def exact_quantile(values: list[float], q: float) -> float:
    """The lower quantile, the definition the sketch answers for."""
    ordered = sorted(values)
    return ordered[math.floor(q * (len(ordered) - 1))]


def lognormal(seed: int, n: int) -> list[float]:
    rng = random.Random(seed)
    return [rng.lognormvariate(-6.0, 1.5) for _ in range(n)]


def sketch_of(values: list[float], **kwargs: float) -> LatencySketch:
    sketch = LatencySketch(**kwargs)  # type: ignore[arg-type]
    for value in values:
        sketch.add(value)
    return sketch


def _build_in_child(seed: int) -> str:
    """Runs in a spawned process: a sketch of 25,000 lognormal samples, as JSON."""
    return json.dumps(sketch_of(lognormal(seed, 25_000)).to_dict())


def test_merged_p99_of_four_processes_is_within_one_percent() -> None:
    seeds = [11, 12, 13, 14]
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        payloads = pool.map(_build_in_child, seeds)
    merged = LatencySketch.merged(LatencySketch.from_dict(json.loads(p)) for p in payloads)
    union = [v for seed in seeds for v in lognormal(seed, 25_000)]
    assert merged.count == len(union) == 100_000
    for q in (0.5, 0.9, 0.99, 0.999):
        exact = exact_quantile(union, q)
        estimate = merged.quantile(q)
        assert estimate is not None
        assert abs(estimate - exact) <= (0.01 + _EPS) * exact, (q, estimate, exact)
    assert merged.sum == pytest.approx(math.fsum(union), rel=1e-9)
    assert merged.min == min(union)
    assert merged.max == max(union)


@pytest.mark.parametrize("accuracy", [0.01, 0.005, 0.05])
def test_quantiles_within_relative_accuracy(accuracy: float) -> None:
    values = lognormal(3, 20_000) + [0.0] * 50
    sketch = sketch_of(values, relative_accuracy=accuracy)
    for q in [0.0, 0.001, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1.0]:
        exact = exact_quantile(values, q)
        estimate = sketch.quantile(q)
        assert estimate is not None
        assert abs(estimate - exact) <= (accuracy + _EPS) * exact, (q, estimate, exact)


def test_buckets_are_ddsketch_buckets() -> None:
    """The inlined mapping puts every value where the library's mapping would."""
    rng = random.Random(5)
    for accuracy in (0.01, 0.002, 0.05):
        mapping = LogarithmicMapping(accuracy)
        for _ in range(2000):
            value = math.exp(rng.uniform(-40.0, 20.0))
            sketch = LatencySketch(accuracy)
            sketch.add(value)
            assert sketch.to_dict()["buckets"] == {str(mapping.key(value)): 1}


def test_exact_summary_figures() -> None:
    sketch = sketch_of([0.5, 0.25, 2.0])
    sketch.add(1.0, 3)
    assert sketch.count == 6
    assert sketch.sum == pytest.approx(5.75)
    assert sketch.avg == pytest.approx(5.75 / 6)
    assert sketch.min == 0.25
    assert sketch.max == 2.0
    assert sketch.quantile(0.5) == pytest.approx(1.0, rel=0.01)


def test_empty_sketch() -> None:
    sketch = LatencySketch()
    assert sketch.count == 0
    assert sketch.quantile(0.5) is None
    assert sketch.min is None and sketch.max is None and sketch.avg is None
    assert LatencySketch.from_dict(json.loads(json.dumps(sketch.to_dict()))).count == 0


def test_zero_values_have_their_own_bucket() -> None:
    sketch = sketch_of([0.0, 0.0, 0.0, 1.0])
    assert sketch.quantile(0.5) == 0.0
    assert sketch.quantile(1.0) == 1.0
    assert sketch.to_dict()["zero_count"] == 3


@pytest.mark.parametrize("bad", [-1e-9, -1.0, math.nan, math.inf])
def test_rejects_values_that_are_not_durations(bad: float) -> None:
    with pytest.raises(ValueError, match="durations"):
        LatencySketch().add(bad)


def test_rejects_bad_configuration_and_counts() -> None:
    with pytest.raises(ValueError, match="relative_accuracy"):
        LatencySketch(0.0)
    with pytest.raises(ValueError, match="bin_limit"):
        LatencySketch(0.01, 0)
    with pytest.raises(ValueError, match="count"):
        LatencySketch().add(1.0, 0)


def test_json_round_trip_is_exact() -> None:
    sketch = sketch_of([*lognormal(7, 5000), 0.0])
    data = sketch.to_dict()
    text = json.dumps(data)
    assert json.loads(text) == data  # bucket keys are already strings
    again = LatencySketch.from_dict(json.loads(text))
    assert again.to_dict() == data
    for q in (0.0, 0.5, 0.99, 1.0):
        assert again.quantile(q) == sketch.quantile(q)


def test_from_dict_rejects_foreign_data() -> None:
    good = sketch_of([1.0, 2.0]).to_dict()
    with pytest.raises(ValueError, match="not a LatencySketch"):
        LatencySketch.from_dict({"buckets": {}})
    with pytest.raises(ValueError, match="format"):
        LatencySketch.from_dict({**good, "format": 99})
    with pytest.raises(ValueError, match="count"):
        LatencySketch.from_dict({**good, "count": 5})
    with pytest.raises(ValueError, match="positive"):
        LatencySketch.from_dict({**good, "buckets": {"3": 0}, "count": 0})


def test_bucket_count_is_bounded_and_high_quantiles_stay_accurate() -> None:
    # 1e-12 .. 1e4 seconds, 10^0.1 apart: ~12 buckets between neighbours, so 64
    # buckets keep only the top ~3.5x of the range apart; the rest collapse.
    values = [10.0 ** (e / 10.0) for e in range(-120, 40)]
    sketch = sketch_of(values, bin_limit=64)
    assert sketch.num_buckets <= 64
    assert len(sketch.to_dict()["buckets"]) <= 64
    for q in (0.98, 0.99, 0.995):
        exact = exact_quantile(values, q)
        estimate = sketch.quantile(q)
        assert estimate is not None
        assert abs(estimate - exact) <= (DEFAULT_RELATIVE_ACCURACY + _EPS) * exact


def test_default_limit_does_not_collapse_a_realistic_range() -> None:
    sketch = sketch_of([1e-7, 2e-7, 1e-3, 1.0, 3600.0])
    assert sketch.quantile(0.25) == pytest.approx(2e-7, rel=0.01)


def test_merge_refuses_another_accuracy() -> None:
    with pytest.raises(ValueError, match="relative accuracy"):
        LatencySketch(0.01).merge(LatencySketch(0.02))


def test_merge_across_bin_limits_keeps_own_limit() -> None:
    wide = sketch_of([10.0 ** (e / 10.0) for e in range(-120, 40)])
    narrow = LatencySketch(bin_limit=32)
    narrow.merge(wide)
    assert narrow.bin_limit == 32
    assert narrow.num_buckets <= 32
    assert narrow.count == wide.count
    assert narrow.quantile(1.0) == wide.quantile(1.0)


def test_merge_leaves_the_other_unchanged_and_self_merge_doubles() -> None:
    a = sketch_of([1.0, 2.0])
    b = sketch_of([3.0])
    before = b.to_dict()
    a.merge(b)
    assert b.to_dict() == before
    assert a.count == 3
    a.merge(a)
    assert a.count == 6


def test_merged_of_nothing_is_empty() -> None:
    assert LatencySketch.merged([]).count == 0


values_lists = st.lists(
    st.floats(min_value=0.0, max_value=1e4, allow_nan=False, allow_infinity=False),
    max_size=60,
)


def _same(a: LatencySketch, b: LatencySketch) -> None:
    da, db = a.to_dict(), b.to_dict()
    assert da.pop("sum") == pytest.approx(db.pop("sum"), rel=1e-12, abs=1e-12)
    assert da == db


@settings(max_examples=60, deadline=None)
@given(values_lists, values_lists, values_lists)
def test_merge_is_associative_commutative_and_equals_the_union(
    xs: list[float], ys: list[float], zs: list[float]
) -> None:
    a, b, c = sketch_of(xs), sketch_of(ys), sketch_of(zs)
    left = LatencySketch.merged([LatencySketch.merged([a, b]), c])
    right = LatencySketch.merged([a, LatencySketch.merged([b, c])])
    swapped = LatencySketch.merged([c, b, a])
    union = sketch_of(xs + ys + zs)
    _same(left, right)
    _same(left, swapped)
    _same(left, union)


def test_threads_lose_no_counts() -> None:
    sketch = LatencySketch()

    def work(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(5000):
            sketch.add(rng.random())

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sketch.count == 20_000
    assert sum(sketch.to_dict()["buckets"].values()) + sketch.to_dict()["zero_count"] == 20_000


def test_clear_and_reset_after_fork_forget_values() -> None:
    sketch = sketch_of([1.0, 2.0])
    sketch.clear()
    assert sketch.count == 0 and sketch.quantile(0.5) is None
    sketch.add(1.0)
    sketch.reset_after_fork()
    assert sketch.count == 0
    sketch.add(4.0)
    assert sketch.quantile(0.5) == 4.0


def test_cumulative_counts_are_a_histogram_of_the_values() -> None:
    from tiercel.core.metrics.sketches import LatencySketch

    sketch = LatencySketch()
    values = [0.0, 0.0004, 0.003, 0.003, 0.02, 0.2, 0.2, 0.2, 3.0, 100.0]
    for value in values:
        sketch.add(value)
    bounds = [0.001, 0.01, 0.1, 1.0, 10.0, 1000.0]
    assert sketch.cumulative(bounds) == [sum(v <= b for v in values) for b in bounds]
    assert sketch.cumulative([]) == []
    assert LatencySketch().cumulative(bounds) == [0] * len(bounds)
