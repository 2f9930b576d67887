"""Host accumulation's in-place update equals the formulas' update bit for bit.

``popstats._src.estimation.in_place.update`` restates
``formulas.update`` for NumPy without new arrays (the host's fast path for
batches that reach every cell). The reference here is ``formulas.update``
itself, run through ``estimators.update`` without scratch arrays: for every
estimator and role, statistics outside loops and one or two loops deep,
float32 and float64 batch values, loops that change length between batches
(the state grows; the batch covers only part of it) and batches that miss
some cells (those take the formulas' path in both runs, so the two paths
alternate on one state). Every field must be identical, bit for bit
(``np.array_equal``, NaN never arises). Hypothesis draws the shapes and the
sequence of batches.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from popstats._src.estimation import estimators as est
from popstats._src.estimation import in_place

CASES = [
    (est.Estimator("mean"), "mean"),
    (est.Estimator("mean"), "var"),
    (est.Estimator("mean"), None),
    (est.Estimator("unbiased"), "var"),
    (est.Estimator("unbiased"), "std"),
    (est.Estimator("unbiased"), "mean"),
    (est.Estimator("weighted"), "mean"),
    (est.Estimator("weighted"), "var"),
    (est.Estimator("pooled"), "mean"),
    (est.Estimator("pooled"), "var"),
    (est.Estimator("pooled"), "std"),
    (est.Estimator("ema", momentum=0.3), "mean"),
    (est.Estimator("ema", momentum=0.1, unbiased=True), "var"),
    (est.Estimator("ema", momentum=0.1, unbiased=True), "std"),
]


def run(estimator, role, batches, shape, depth, fast: bool):
    state = est.init(estimator, role, shape, depth)
    scratch: dict = {}
    for value, count, reached, mean in batches:
        steps = value.shape[:depth]
        state = est.grow(state, steps)
        buffers = None
        if fast:
            full = state["n"].shape + shape
            if scratch.get("full") != full:
                scratch["full"] = full
                scratch["arrays"] = [
                    np.full(full, np.nan)
                    for _ in range(in_place.scratch_needed(estimator, role))]
            cells = tuple(slice(0, n) for n in steps)
            buffers = [a[(*cells, ...)] for a in scratch["arrays"]]
        state = est.update(estimator, role, state, value, count, reached, mean,
                           buffers)
    return state


@st.composite
def batch_sequences(draw):
    depth = draw(st.integers(0, 2))
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=0, max_size=2)))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    n = draw(st.integers(1, 8))
    seed = draw(st.integers(0, 2**32 - 1))
    lengths = [tuple(draw(st.integers(1, 3)) for _ in range(depth)) for _ in range(n)]
    missing = [draw(st.booleans()) and depth > 0 for _ in range(n)]
    return depth, shape, dtype, seed, lengths, missing


def make_batches(role, depth, shape, dtype, seed, lengths, missing):
    rng = np.random.default_rng(seed)
    batches = []
    for steps, miss in zip(lengths, missing, strict=True):
        value = rng.normal(size=steps + shape).astype(dtype)
        if role in ("var", "std"):
            value = np.abs(value) + dtype(0.1)
        mean = rng.normal(size=steps + shape).astype(dtype)
        count = rng.integers(2, 50, size=steps).astype(np.float64)
        reached = None
        if miss:  # a step the batch did not reach: count 0 there
            reached = np.ones(steps, bool)
            reached[(0,) * depth] = False
            count = np.where(reached, count, 0.0)
        batches.append((value, count, reached, mean))
    return batches


@pytest.mark.parametrize(("estimator", "role"), CASES, ids=lambda c: str(c))
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(drawn=batch_sequences())
def test_in_place_update_equals_the_formulas_bit_for_bit(estimator, role, drawn):
    depth, shape, dtype, seed, lengths, missing = drawn
    batches = make_batches(role, depth, shape, dtype, seed, lengths, missing)
    slow = run(estimator, role, batches, shape, depth, fast=False)
    fast = run(estimator, role, batches, shape, depth, fast=True)
    assert set(fast) == set(est.fields(estimator, role))
    for field in slow:
        assert fast[field].dtype == slow[field].dtype, field
        assert np.array_equal(fast[field], slow[field]), (field, fast[field],
                                                          slow[field])


def test_the_fast_path_is_taken():
    """A batch that reaches every cell does not call the formulas."""
    estimator, role = est.Estimator("pooled"), "var"
    state = est.init(estimator, role, (3,), 1)
    state = est.grow(state, (2,))
    value = np.ones((2, 3))
    scratch = [np.empty((2, 3))
               for _ in range(in_place.scratch_needed(estimator, role))]
    calls = []
    original = est.fm.update
    try:
        est.fm.update = lambda *a, **k: calls.append(a) or original(*a, **k)
        est.update(estimator, role, state, value, np.full(2, 4.0), None, value,
                   scratch)
        assert not calls
        est.update(estimator, role, state, value, np.full(2, 4.0), None, value)
        assert len(calls) == 1
    finally:
        est.fm.update = original
