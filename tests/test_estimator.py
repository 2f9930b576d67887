"""estimate(): averages of batch statistics, per step over covering batches.

The expected values come from the NumPy models (batch statistics of every
training batch) and :func:`reference.reference_estimate`, never from
popstats itself.
"""

from __future__ import annotations

import numpy as np
import pytensor.tensor as pt
import pytest
from conftest import CASES, build_case
from reference import reference_estimate
from shared import MODE

import popstats


@pytest.mark.parametrize("name", CASES)
def test_estimate_matches_numpy(pipeline, name):
    pl = pipeline(name)
    assert set(pl.stats) == set(pl.reference)
    for stat_name, (value, coverage) in pl.reference.items():
        stat = pl.stats[stat_name]
        assert stat.name == stat_name
        assert stat.depth == pl.case.depths[stat_name]
        assert stat.value.dtype == np.float64
        assert stat.coverage.dtype == np.int64
        assert stat.value.shape == value.shape, stat_name
        np.testing.assert_allclose(stat.value, value, rtol=1e-10, atol=1e-12)
        np.testing.assert_array_equal(stat.coverage, coverage)
        assert stat.steps == coverage.shape
        assert stat.n_batches == len(pl.case.batches)


def test_recurrent_coverage_counts_batches_reaching_each_step(pipeline):
    pl = pipeline("rnn")  # training lengths 3, 5, 2, 4
    for name in ("rnn.mean", "rnn.var"):
        np.testing.assert_array_equal(pl.stats[name].coverage, [4, 4, 3, 2, 1])


def test_recurrent_step_average_uses_only_batches_that_reached_it(pipeline):
    pl = pipeline("rnn")
    case = pl.case
    per_batch = [case.train_forward(b)[1]["rnn.mean"] for b in case.batches]
    value = pl.stats["rnn.mean"].value
    lengths = [len(v) for v in per_batch]
    for t in range(max(lengths)):
        reached = [v[t] for v in per_batch if len(v) > t]
        np.testing.assert_allclose(value[t], np.mean(reached, axis=0), rtol=1e-10)
    # the last step is the one batch of length 5 alone
    np.testing.assert_allclose(value[4], per_batch[lengths.index(5)][4], rtol=1e-12)


def test_feed_forward_estimate_is_the_plain_batch_average(pipeline):
    pl = pipeline("ff")
    case = pl.case
    per_batch = [case.train_forward(b)[1] for b in case.batches]
    for name in ("l1.mean", "l1.var", "l2.mean", "l2.var"):
        want = np.mean([stats[name] for stats in per_batch], axis=0)
        np.testing.assert_allclose(pl.stats[name].value, want, rtol=1e-10)
        assert pl.stats[name].coverage.shape == ()
        assert int(pl.stats[name].coverage) == len(case.batches)


def test_while_loop_coverage_follows_the_stopping_step(pipeline):
    pl = pipeline("while")  # n = 3, 5, 2, 9 on sequences of length 6
    np.testing.assert_array_equal(pl.stats["while.mean"].coverage, [4, 4, 3, 2, 2, 1])


def test_nested_coverage_is_per_cell_and_uncovered_cells_are_filled(pipeline):
    pl = pipeline("nested2")  # (T1, T2) = (2, 3), (3, 2), (1, 4), (3, 3)
    stat = pl.stats["in.mean"]
    np.testing.assert_array_equal(
        stat.coverage,
        [[4, 4, 3, 1], [3, 3, 2, 0], [2, 2, 1, 0]],
    )
    value = stat.value
    # cells no batch reached repeat the last reached step of their row
    np.testing.assert_array_equal(value[1, 3], value[1, 2])
    np.testing.assert_array_equal(value[2, 3], value[2, 2])
    # a reached cell averages the batches that reached it
    case = pl.case
    per_batch = [case.train_forward(b)[1]["in.mean"] for b in case.batches]
    cell = [v[1, 2] for v in per_batch if v.shape[0] > 1 and v.shape[1] > 2]
    assert len(cell) == 2
    np.testing.assert_allclose(value[1, 2], np.mean(cell, axis=0), rtol=1e-10)
    np.testing.assert_array_equal(pl.stats["out.mean"].coverage, [4, 3, 2])


def test_three_deep_statistic_has_three_time_axes(pipeline):
    pl = pipeline("nested3")  # (T1, T2, T3) = (2, 2, 3), (1, 3, 2), (2, 1, 1)
    stat = pl.stats["l3.mean"]
    assert stat.value.shape == (2, 3, 3, 3)
    np.testing.assert_array_equal(
        stat.coverage,
        [[[3, 2, 1], [2, 2, 1], [1, 1, 0]], [[2, 1, 1], [1, 1, 1], [0, 0, 0]]],
    )
    value = stat.value
    np.testing.assert_array_equal(value[0, 2, 2], value[0, 2, 1])  # innermost first
    np.testing.assert_array_equal(value[1, 2], value[1, 1])  # then outwards
    np.testing.assert_array_equal(pl.stats["l2.mean"].coverage, [[3, 2, 1], [2, 1, 0]])


def test_same_op_twice_estimates_each_site_on_its_own_inputs(pipeline):
    pl = pipeline("twice")
    first, second = pl.stats["twice.mean#0"], pl.stats["twice.mean#1"]
    assert first.label == second.label == "twice.mean"
    assert not np.allclose(first.value, second.value)


@pytest.mark.parametrize("form", ["names", "variables", "tuples", "generator"])
def test_batch_forms_give_the_same_estimate(pipeline, form):
    pl = pipeline("mit_sot")  # two inputs: order matters for tuples
    case = pl.case
    inputs = case.inputs
    if form == "names":
        batches = [dict(reversed(b.items())) for b in case.batches]
    elif form == "variables":
        batches = [{v: b[v.name] for v in inputs} for b in case.batches]
    elif form == "tuples":
        batches = [tuple(case.values(b)) for b in case.batches]
    else:
        batches = (dict(b) for b in case.batches)
    stats = popstats.estimate(inputs, case.outputs, batches, mode=MODE)
    value, coverage = pl.reference["mit.mean"]
    np.testing.assert_allclose(stats["mit.mean"].value, value, rtol=1e-10)
    np.testing.assert_array_equal(stats["mit.mean"].coverage, coverage)


def test_estimate_does_not_depend_on_the_random_stream():
    case = build_case("rng")
    first = popstats.estimate(case.inputs, case.outputs, case.batches, mode=MODE)
    case.extra["rng"].set_value(np.random.default_rng(12345))
    second = popstats.estimate(case.inputs, case.outputs, case.batches, mode=MODE)
    np.testing.assert_array_equal(first["rng.mean"].value, second["rng.mean"].value)
    value, _ = case.reference_stats()["rng.mean"]
    np.testing.assert_allclose(first["rng.mean"].value, value, rtol=1e-10)


def test_statistics_mapping_api(pipeline):
    pl = pipeline("nested2")
    stats = pl.stats
    assert list(stats) == [s.name for s in popstats.export(pl.case.outputs).sites]
    assert len(stats) == 3
    assert "in.mean" in stats and "nope" not in stats
    assert stats.get("nope") is None
    assert stats["in.mean"].steps == (3, 4)


# --------------------------------------------------------------------------
# The reference estimate itself, on hand-computed examples
# --------------------------------------------------------------------------


def test_reference_estimate_by_hand_one_axis():
    a = np.array([[1.0], [2.0], [3.0]])
    b = np.array([[3.0]])
    value, coverage = reference_estimate([a, b], depth=1)
    np.testing.assert_array_equal(coverage, [2, 1, 1])
    np.testing.assert_array_equal(value, [[2.0], [2.0], [3.0]])


def test_reference_estimate_by_hand_two_axes():
    a = np.arange(2 * 1 * 1, dtype=float).reshape(2, 1, 1)  # (T1, T2) = (2, 1)
    b = 10 + np.arange(1 * 3 * 1, dtype=float).reshape(1, 3, 1)  # (1, 3)
    value, coverage = reference_estimate([a, b], depth=2)
    np.testing.assert_array_equal(coverage, [[2, 1, 1], [1, 0, 0]])
    np.testing.assert_array_equal(value[..., 0], [[5.0, 11.0, 12.0], [1.0, 1.0, 1.0]])


def test_reference_estimate_fills_outwards_when_a_row_is_empty():
    # an inner loop of length 0 leaves a whole row unreached
    a = np.ones((1, 2, 1))
    b = np.zeros((3, 0, 1))
    value, coverage = reference_estimate([a, b], depth=2)
    np.testing.assert_array_equal(coverage, [[1, 1], [0, 0], [0, 0]])
    np.testing.assert_array_equal(value, np.ones((3, 2, 1)))


def test_plain_statistics_share_one_buffer_without_changing_results():
    """Statistics outside loops with the plain mean are updated together after
    the first batch; results, errors and resumed states are unchanged."""
    x = pt.matrix("x")
    a = popstats.bn_statistic(x.mean(0), "a")
    b = popstats.bn_statistic((x**2).max(0), "b")
    y = (x - a) * b
    rng = np.random.default_rng(3)
    data = [rng.normal(size=(5, 3)) for _ in range(6)]
    run = popstats.Estimation([x], y, mode="FAST_COMPILE", accumulate="host")
    state = run.run([{"x": d} for d in data[:3]])
    assert run._host._flat is not None  # the shared buffer is in use
    state = run.run([{"x": d} for d in data[3:]], state)
    stats = run.finalize(state)
    np.testing.assert_array_equal(
        stats["a"].value, _running_mean([d.mean(0) for d in data])
    )
    np.testing.assert_array_equal(
        stats["b"].value, _running_mean([(d**2).max(0) for d in data])
    )
    # a merged state (not linked to the buffer) continues correctly
    merged = run.merge(run.run([{"x": data[0]}]), run.run([{"x": data[1]}]))
    merged = run.update(merged, {"x": data[2]})
    np.testing.assert_allclose(
        run.finalize(merged)["a"].value, np.mean([d.mean(0) for d in data[:3]], 0)
    )
    # errors still name the statistic and the batch
    bad = [{"x": data[0]}, {"x": data[1]}, {"x": np.full((5, 3), np.nan)}]
    with pytest.raises(popstats.PopstatsError, match=r"'b'.*batch 2|'a'.*batch 2"):
        run.run(bad)
    with pytest.raises(popstats.PopstatsError, match="shape"):
        run.run([{"x": data[0]}, {"x": data[1]}, {"x": np.ones((5, 4))}])


def test_counted_plain_statistics_share_the_buffer_and_skip_unreached_batches():
    """A count only says whether a batch reached a "mean" statistic: counted
    statistics use the shared buffer too, and a batch with count 0 (or an
    invalid count) takes the checked per-statistic path."""
    x = pt.matrix("x")
    n = pt.sum(pt.neq(x[:, 0], 0.0))  # rows with a nonzero first entry
    a = popstats.bn_statistic(x.sum(0) / pt.maximum(n, 1), "a", role="mean",
                              group="g", count=n)
    b = popstats.bn_statistic((x**2).max(0), "b")
    y = (x - a) * b
    rng = np.random.default_rng(4)
    data = [rng.normal(size=(5, 3)) for _ in range(6)]
    data[4][:, 0] = 0.0  # batch 4 does not reach 'a'
    run = popstats.Estimation([x], y, mode="FAST_COMPILE", accumulate="host")
    stats = run.finalize(run.run([{"x": d} for d in data]))
    assert run._host._flat is not None and run._host._counted
    reached = [d for k, d in enumerate(data) if k != 4]
    np.testing.assert_array_equal(
        stats["a"].value, _running_mean([d.sum(0) / 5 for d in reached]))
    assert int(stats["a"].coverage) == 5 and int(stats["b"].coverage) == 6
    np.testing.assert_array_equal(
        stats["b"].value, _running_mean([(d**2).max(0) for d in data]))


def _running_mean(values):
    mean = np.zeros_like(values[0])
    for k, v in enumerate(values, start=1):
        mean += (v - mean) * (1.0 / np.float64(k))
    return mean
