"""upstream="population" inside loops: per step, nested, pooled over time.

The expected values are computed in NumPy (``reference.py``). Per-step
statistics have a stage order -- step t's hidden-to-hidden statistic reads
the earlier steps' population values through the recurrence, the second
layer's statistics at step t read the first layer's at step t -- so
``reference.staged_estimate`` computes each once from exact upstream
values. Statistics pooled over time read their own value at earlier steps:
there the reference is the NumPy fixed point (``numpy_fixed_point``), and
the passes must stop within a bound their tolerance sets.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import reference as ref
import upstream_models as um
from shared import MODE

import popstats
from popstats import Estimator

RNN_STATS = sorted(f"{g}.{r}" for g in ("x1", "h1", "x2", "h2")
                   for r in ("mean", "var"))
EMA = Estimator("ema", momentum=0.3)
#: every estimator, each on an input-to-hidden and a hidden-to-hidden pair
#: of one of the two runs (one compile per run: estimators given per label)
MIXED = {
    "run1": {"x1": "mean", "h1": "pooled", "x2": EMA, "h2": "weighted"},
    "run2": {"x1": "unbiased", "h1": EMA, "x2": "pooled", "h2": "mean"},
    "run3": {"x1": EMA, "h1": "weighted", "x2": "unbiased", "h2": "unbiased"},
}


def per_label(assignment: dict):
    """The estimator option and the NumPy rule of a pair -> estimator map."""
    option = {f"{pair}.*": spec for pair, spec in assignment.items()}
    rule = ref.MomentRule({
        pair: (spec.name, spec.momentum) if isinstance(spec, Estimator) else (spec, 0.1)
        for pair, spec in assignment.items()})
    return option, rule


def estimate(model, **options):
    options.setdefault("mode", MODE)
    return popstats.estimate(model.inputs, model.outputs, model.batches,
                             upstream="population", **options)


# --------------------------------------------------------------------------
# The 2-layer BN-RNN, per step
# --------------------------------------------------------------------------


@pytest.mark.parametrize("run", sorted(MIXED))
def test_rnn_per_step_statistics_are_the_staged_numpy_values(run):
    model = um.rnn()  # lengths 3, 4, 2: step t averages the batches reaching it
    option, rule = per_label(MIXED[run])
    stats = estimate(model, estimator=option)
    want = ref.staged_estimate(model.forward, model.batches, rule)
    assert sorted(want) == RNN_STATS
    um.assert_statistics(stats, want, tol=1e-12)
    for name, stat in stats.items():
        np.testing.assert_array_equal(stat.coverage, [3, 3, 2, 1])
        assert stat.upstream == "population"
        assert stat.estimator.name == rule.estimator[name.split(".")[0]][0]
    # a statistic at step t is (t + 2) deep: h1 at t reads h1 at t - 1, x2 at
    # t reads h1 at t; the deepest, at t = 3, is exact after pass 4 and
    # pass 5 changes nothing
    assert stats.fixed_point.passes == 4 + 2
    assert stats.fixed_point.changes[-1] == 0.0
    again = ref.numpy_pass(model.forward, model.batches, rule, um.tables(stats))
    um.assert_statistics(stats, again, tol=1e-12)


def test_rnn_of_fixed_length_and_one_more_pass_of_popstats():
    model = um.rnn(lengths=(4, 4, 4), sizes=(3, 5, 4))
    stats = estimate(model, estimator="pooled")
    um.assert_statistics(stats, ref.staged_estimate(
        model.forward, model.batches, ref.MomentRule("pooled")), tol=1e-12)
    assert stats.fixed_point.passes == 4 + 2
    again = um.popstats_pass(model, stats, MODE, estimator="pooled")
    um.assert_statistics(again, {n: (s.value, s.coverage) for n, s in stats.items()},
                         tol=1e-12)
    # the statistics differ from today's beyond the first step's input ones
    today = popstats.estimate(model.inputs, model.outputs, model.batches, mode=MODE,
                              estimator="pooled")
    np.testing.assert_allclose(today["x1.var"].value, stats["x1.var"].value,
                               rtol=1e-13)
    assert np.max(np.abs(today["h2.var"].value[1:] - stats["h2.var"].value[1:])) > 1e-3


def test_rnn_with_max_steps_estimates_the_capped_steps():
    model = um.rnn()
    stats = estimate(model, max_steps=3)
    want = ref.staged_estimate(model.forward, model.batches, ref.MomentRule())
    capped = {name: (value[:3], coverage[:3])
              for name, (value, coverage) in want.items()}
    um.assert_statistics(stats, capped, tol=1e-12)
    # later steps read step 2's values at inference: still a fixed point
    again = um.popstats_pass(model, stats, MODE, max_steps=3)
    um.assert_statistics(again, capped, tol=1e-12)


# --------------------------------------------------------------------------
# Pooled over time: no stage order, a geometric approach
# --------------------------------------------------------------------------


def test_rnn_pooled_over_time_converges_to_the_numpy_fixed_point():
    model = um.rnn(lengths=(3, 5, 2, 4), sizes=(4, 5, 3, 4), seed=3)
    rule = ref.MomentRule()
    stats = estimate(model, time="pooled")
    record = stats.fixed_point
    assert all(s.value.shape == (3,) and s.coverage == 4 for s in stats.values())
    assert record.changes[-1] <= 1e-10 < record.changes[-2]
    # geometric: every few passes the change falls by a steady factor
    tail = np.array(record.changes[3:])
    assert np.all(tail[4:] < 0.5 * tail[:-4])
    # one more pass (NumPy) moves the values by less than the tolerance
    again = ref.numpy_pass(model.forward, model.batches, rule, um.tables(stats),
                           pooled=True)
    assert um.largest_relative_change(um.tables(stats), again) <= 1e-10
    # and the values are the fixed point's, within what the rate allows
    exact = ref.numpy_fixed_point(model.forward, model.batches, rule, pooled=True)
    um.assert_statistics(stats, exact, tol=1e-8)


# --------------------------------------------------------------------------
# Nested loops
# --------------------------------------------------------------------------


@pytest.mark.parametrize("assignment", [{"in": "mean", "out": "mean"},
                                        {"in": "pooled", "out": EMA},
                                        {"in": EMA, "out": "unbiased"}],
                         ids=["mean", "pooled-ema", "ema-unbiased"])
def test_nested_per_cell_statistics_are_the_staged_numpy_values(assignment, caplog):
    model = um.nested()  # (T1, T2) = (2, 3), (3, 2), (1, 4), (3, 3)
    option, rule = per_label(assignment)
    with caplog.at_level(logging.WARNING, logger="popstats"):
        stats = estimate(model, estimator=option)
    want = ref.staged_estimate(model.forward, model.batches, rule)
    um.assert_statistics(stats, want, tol=1e-12)
    np.testing.assert_array_equal(stats["in.var"].coverage,
                                  [[4, 4, 3, 1], [3, 3, 2, 0], [2, 2, 1, 0]])
    assert stats["in.var"].uncovered_steps == 2
    np.testing.assert_array_equal(stats["out.mean"].coverage, [4, 3, 2])
    # cells deep in the loops converge geometrically before they are exact
    assert stats.fixed_point.passes > 5
    assert stats.fixed_point.changes[-1] <= 1e-10
    again = ref.numpy_pass(model.forward, model.batches, rule, um.tables(stats))
    um.assert_statistics(stats, again, tol=1e-12)
    # the holes are reported once, not once per pass
    reported = [r.getMessage() for r in caplog.records if "never reached" in
                r.getMessage()]
    assert sorted(m.split("'")[1] for m in reported) == ["in.mean", "in.var"]


@pytest.mark.parametrize(("time", "tol"), [(("step", "pooled"), 1e-6),
                                         (("pooled", "step"), 1e-10),
                                         ("pooled", 1e-8)],
                         ids=["inner-pooled", "outer-pooled", "both-pooled"])
def test_nested_pooled_over_time_stops_within_its_tolerance(time, tol):
    model = um.nested(shapes=((2, 3, 4), (3, 2, 3)))
    pooled = (True, True) if time == "pooled" else tuple(t == "pooled" for t in time)
    rule = ref.MomentRule("pooled")
    exact = ref.numpy_fixed_point(model.forward, model.batches, rule, pooled=pooled)
    stats = estimate(model, time=time, upstream_tol=tol, estimator="pooled")
    assert {n: s.value.shape for n, s in stats.items()} == {
        n: v.shape for n, (v, _) in exact.items()}
    changes = stats.fixed_point.changes
    assert changes[-1] <= tol < changes[-2]
    # the change falls by half a pass or faster: what is left to the fixed
    # point is at most about the last change again
    assert changes[-1] < 0.5 * changes[-2]
    left = um.largest_relative_change(exact, um.tables(stats))
    assert left <= 2 * tol, left
    again = ref.numpy_pass(model.forward, model.batches, rule, um.tables(stats),
                           pooled=pooled)
    assert um.largest_relative_change(um.tables(stats), again) <= tol
