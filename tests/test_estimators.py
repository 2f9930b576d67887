"""Estimators ("mean", "weighted", "pooled", "unbiased", "ema"), time pooling,
max_steps, merge, and their input checks.

Two levels: the accumulators of ``popstats._src.estimation.estimators`` on plain arrays
(init / update / merge / finalize), and :func:`popstats.estimate` on small
PyTensor graphs (feed-forward with unequal batch sizes, a masked Scan with
variable lengths, nested Scans). Every expected value is computed in NumPy
from the raw data (``np.mean`` / ``np.var`` over concatenated elements, the
EMA recurrence, ...), never by popstats.
"""

from __future__ import annotations

import logging
import math
import re

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from shared import MODE, fails, mark, nested_loop, scan

import popstats
from popstats import Estimator
from popstats._src.estimation import estimators as est

EPS = 1e-3
F = 2  # features of every statistic here


# --------------------------------------------------------------------------
# NumPy references
# --------------------------------------------------------------------------

#: the batch statistic of each role, from a batch's elements (rows)
STAT = {
    "mean": lambda e: e.mean(axis=0),
    "var": lambda e: e.var(axis=0),
    "std": lambda e: e.std(axis=0),
    None: lambda e: e.max(axis=0),
}


def reference(name, role, elements, momentum=0.1):
    """Population value of one cell from the element arrays of the batches
    that reached it (in batch order), as each estimator is specified."""
    stats = [STAT[role](e) for e in elements]
    counts = [len(e) for e in elements]
    if name == "mean":
        return np.mean(stats, axis=0)
    if name == "weighted":
        return np.average(stats, axis=0, weights=counts)
    if name == "pooled":
        return STAT[role](np.concatenate(elements))
    if name == "unbiased":
        if role in ("var", "std"):
            # Ioffe & Szegedy: Var[x] = m/(m-1) E[sigma_B^2]
            variance = np.mean([e.var(axis=0, ddof=1) for e in elements], axis=0)
            return variance if role == "var" else np.sqrt(variance)
        return np.mean(stats, axis=0)
    if name == "ema":
        v = np.full(stats[0].shape, 1.0 if role in ("var", "std") else 0.0)
        for s in stats:
            v = (1 - momentum) * v + momentum * s
        return v
    raise AssertionError(name)


def spec_name(spec):
    return spec.name if isinstance(spec, Estimator) else spec


def spec_momentum(spec):
    return spec.momentum if isinstance(spec, Estimator) else None


# --------------------------------------------------------------------------
# Accumulators on arrays
# --------------------------------------------------------------------------

#: per batch, the element arrays of its steps (unequal sizes per step)
LENGTHS = (3, 2, 5, 4, 5)


def _sequence_data(seed=0):
    rng = np.random.default_rng(seed)
    return [
        [rng.normal(0.7, 1.3, (int(rng.integers(2, 8)), F)) for _ in range(t)]
        for t in LENGTHS
    ]


def _flat_data(seed=1):
    rng = np.random.default_rng(seed)
    return [rng.normal(0.7, 1.3, (n, F)) for n in (6, 3, 11, 2, 7)]


PAIRS = [
    (name, role)
    for name, roles in (
        ("mean", ("mean", "var", "std", None)),
        ("weighted", ("mean", "var", None)),
        ("pooled", ("mean", "var", "std")),
        ("unbiased", ("mean", "var", "std")),
        ("ema", ("mean", "var", "std", None)),
    )
    for role in roles
]


def accumulate(estimator, role, batches, depth):
    """Run the accumulator of ``estimator`` over ``batches`` (see above)."""
    state = est.init(estimator, role, (F,), depth)
    for batch in batches:
        cells = batch if depth else [batch]
        value = np.stack([STAT[role](e) for e in cells])
        mean = np.stack([e.mean(axis=0) for e in cells])
        count = np.array([len(e) for e in cells], dtype=np.float64)
        if not depth:
            value, mean, count = value[0], mean[0], count[0]
        state = est.grow(state, value.shape[:depth])
        state = est.update(estimator, role, state, value, count, None, mean)
    return state


def expected_table(name, role, batches, depth, momentum=0.1):
    if not depth:
        return reference(name, role, batches, momentum), np.array(len(batches))
    steps = max(len(b) for b in batches)
    cells = [[b[t] for b in batches if len(b) > t] for t in range(steps)]
    value = np.stack([reference(name, role, c, momentum) for c in cells])
    return value, np.array([len(c) for c in cells])


@pytest.mark.parametrize("depth", [0, 1])
@pytest.mark.parametrize(("name", "role"), PAIRS)
def test_accumulator_matches_numpy(name, role, depth):
    batches = _sequence_data() if depth else _flat_data()
    estimator = Estimator(name, momentum=0.3 if name == "ema" else None)
    state = accumulate(estimator, role, batches, depth)
    want, coverage = expected_table(name, role, batches, depth, momentum=0.3)
    got = est.finalize(estimator, role, state)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-14)
    np.testing.assert_array_equal(state["n"], coverage)


@pytest.mark.parametrize(("name", "role"), PAIRS)
def test_accumulator_merge_equals_one_pass(name, role):
    # LENGTHS = 3, 2, 5, 4, 5: the parts have different numbers of steps,
    # longer on either side
    batches = _sequence_data(seed=2)
    estimator = Estimator(name)
    whole = accumulate(estimator, role, batches, 1)
    want = est.finalize(estimator, role, whole)
    for split in (1, 2, 3, 4):
        a = accumulate(estimator, role, batches[:split], 1)
        b = accumulate(estimator, role, batches[split:], 1)
        if split <= 2:  # a: 3 steps, b: 5 steps
            assert (est.steps_of(a), est.steps_of(b)) == ((3,), (5,))
        merged = est.merge(estimator, role, a, b)
        np.testing.assert_array_equal(merged["n"], whole["n"])
        np.testing.assert_allclose(
            est.finalize(estimator, role, merged), want, rtol=1e-12, atol=1e-14
        )
    # merging is associative: ((a, b), c) == (a, (b, c))
    parts = [accumulate(estimator, role, batches[i:j], 1) for i, j in
             ((0, 2), (2, 3), (3, 5))]
    left = est.merge(estimator, role, est.merge(estimator, role, *parts[:2]), parts[2])
    right = est.merge(estimator, role, parts[0], est.merge(estimator, role, *parts[1:]))
    np.testing.assert_allclose(
        est.finalize(estimator, role, left), est.finalize(estimator, role, right),
        rtol=1e-12, atol=1e-14,
    )


def test_ema_with_momentum_one_keeps_the_last_batch():
    batches = _flat_data()
    for role in ("mean", "var", None):
        state = accumulate(Estimator("ema", momentum=1.0), role, batches, 0)
        got = est.finalize(Estimator("ema", momentum=1.0), role, state)
        np.testing.assert_allclose(got, STAT[role](batches[-1]), rtol=1e-14)


def test_ema_starts_at_zero_for_means_and_one_for_variances():
    # one batch: v = (1 - m) * start + m * x (PyTorch's running_mean = 0,
    # running_var = 1)
    x = np.array([[1.0, 2.0], [3.0, 6.0]])
    m = 0.25
    for role, start in (("mean", 0.0), (None, 0.0), ("var", 1.0), ("std", 1.0)):
        state = accumulate(Estimator("ema", momentum=m), role, [x], 0)
        got = est.finalize(Estimator("ema", momentum=m), role, state)
        np.testing.assert_allclose(got, (1 - m) * start + m * STAT[role](x))


@pytest.mark.parametrize("name", ["mean", "weighted", "unbiased", "pooled", "ema"])
def test_a_cell_not_reached_changes_nothing(name):
    # two steps; the second batch reaches only step 0: step 1 is as after batch 1
    estimator = Estimator(name)
    role = "var" if name != "mean" else "mean"
    state = est.init(estimator, role, (F,), 1)
    state = est.grow(state, (2,))
    first = np.array([[1.0, 2.0], [3.0, 4.0]])
    count = np.array([4.0, 5.0])
    mean = np.zeros((2, F))
    est.update(estimator, role, state, first, count, None, mean)
    after_one = {k: v.copy() for k, v in state.items()}
    second = np.array([[5.0, 6.0], [np.nan, np.nan]])  # not read
    est.update(estimator, role, state, second, np.array([4.0, 0.0]),
               np.array([True, False]), np.zeros((2, F)))
    for field, array in state.items():
        np.testing.assert_array_equal(array[1], after_one[field][1])
    np.testing.assert_array_equal(state["n"], [2, 1])


# --------------------------------------------------------------------------
# Graphs
# --------------------------------------------------------------------------


def ff_model(counted=True):
    """Feed-forward: group a (mean, var) of x, group b (mean, std) of tanh(x),
    c.max without role."""
    x = pt.matrix("x")
    n = x.shape[0] if counted else None
    z = pt.tanh(x)
    am = mark(x.mean(0), "a.mean", "mean", "a", n)
    av = mark(x.var(0), "a.var", "var", "a", n)
    bm = mark(z.mean(0), "b.mean", "mean", "b", n)
    bs = mark(z.std(0), "b.std", "std", "b", n)
    cm = mark(x.max(0), "c.max", count=n)
    y = (x - am) / pt.sqrt(av + EPS) + (z - bm) / (bs + EPS) + cm
    return [x], y


#: statistic -> (role, elements of a batch)
FF_STATS = {
    "a.mean": ("mean", lambda x: x),
    "a.var": ("var", lambda x: x),
    "b.mean": ("mean", np.tanh),
    "b.std": ("std", np.tanh),
    "c.max": (None, lambda x: x),
}


def ff_batches(sizes=(6, 3, 9, 2, 7), seed=3):
    rng = np.random.default_rng(seed)
    return [{"x": rng.normal(0.8, 1.5, (b, F))} for b in sizes]


def masked_model():
    """A Scan whose statistics reduce over the unmasked rows of each step."""
    x = pt.tensor3("x")
    mask = pt.matrix("mask")

    def step(xt, mt, h):
        c = mt.sum()
        w = mt[:, None]
        mean = (xt * w).sum(0) / c
        var = (((xt - mean) ** 2) * w).sum(0) / c
        m = mark(mean, "s.mean", "mean", "s", c)
        v = mark(var, "s.var", "var", "s", c)
        mx = mark(pt.switch(w > 0, xt, -1e9).max(0), "s.max", count=c)
        return h + (xt - m) / pt.sqrt(v + EPS) + mx

    hs = scan(step, sequences=[x, mask], outputs_info=[pt.zeros_like(x[0])])
    return [x, mask], hs


MASKED_ROLES = {"s.mean": "mean", "s.var": "var", "s.max": None}


def masked_batches(lengths=(3, 2, 5, 4), sizes=(4, 3, 6, 5), seed=4):
    rng = np.random.default_rng(seed)
    batches = []
    for t, b in zip(lengths, sizes, strict=True):
        mask = (rng.random((t, b)) < 0.6).astype(np.float64)
        mask[:, :2] = 1.0  # at least two elements per step
        batches.append({"x": rng.normal(0.5, 1.5, (t, b, F)), "mask": mask})
    return batches


def masked_elements(batch, t):
    return batch["x"][t][batch["mask"][t] > 0]


def masked_infer(x, pop, steps=None):
    """NumPy inference of masked_model with population values ``pop``
    (name -> value per step, or one value when ``steps`` is None)."""
    h = np.zeros_like(x[0])
    out = []
    for t in range(len(x)):
        at = {k: v if steps is None else v[min(t, steps - 1)] for k, v in pop.items()}
        h = h + (x[t] - at["s.mean"]) / np.sqrt(at["s.var"] + EPS) + at["s.max"]
        out.append(h)
    return np.stack(out)


def compile_masked(inputs, inference):
    # the mask only feeds the counts, which the rewritten graph does not use
    return pytensor.function(inputs, inference, mode=MODE, on_unused_input="ignore")


ESTIMATORS = [
    "mean",
    "weighted",
    {"s.max": "mean", "c.max": "mean", "*": "pooled"},
    "unbiased",
    Estimator("ema", momentum=0.3),
]
IDS = ["mean", "weighted", "pooled", "unbiased", "ema"]


def resolved(spec, name):
    """(estimator name, momentum) that ``spec`` gives statistic ``name``."""
    if isinstance(spec, dict):
        for pattern, value in spec.items():
            if re.fullmatch(pattern.replace(".", r"\.").replace("*", ".*"), name):
                return spec_name(value), spec_momentum(value)
        return "mean", None
    return spec_name(spec), spec_momentum(spec)


# --------------------------------------------------------------------------
# estimate(): every estimator against NumPy
# --------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ESTIMATORS, ids=IDS)
def test_feed_forward_estimators_match_numpy(spec):
    inputs, y = ff_model()
    batches = ff_batches()  # unequal batch sizes
    stats = popstats.estimate(inputs, y, batches, estimator=spec, mode=MODE)
    for name, (role, elements_of) in FF_STATS.items():
        which, momentum = resolved(spec, name)
        elements = [elements_of(b["x"]) for b in batches]
        want = reference(which, role, elements, momentum)
        stat = stats[name]
        assert stat.estimator.name == which
        np.testing.assert_allclose(stat.value, want, rtol=1e-10, atol=1e-14)
        assert stat.value.shape == (F,)
        assert int(stat.coverage) == stat.n_batches == len(batches)


def test_pooled_equals_moments_of_the_concatenated_data():
    inputs, y = ff_model()
    batches = ff_batches(sizes=(1, 17, 4, 2, 30, 5))
    stats = popstats.estimate(
        inputs, y, batches, estimator={"c.*": "mean", "*": "pooled"}, mode=MODE
    )
    data = np.concatenate([b["x"] for b in batches])
    np.testing.assert_allclose(stats["a.mean"].value, np.mean(data, axis=0), rtol=1e-10)
    np.testing.assert_allclose(stats["a.var"].value, np.var(data, axis=0), rtol=1e-10)
    # a std is pooled through its variance
    z = np.tanh(data)
    np.testing.assert_allclose(stats["b.mean"].value, np.mean(z, axis=0), rtol=1e-10)
    np.testing.assert_allclose(stats["b.std"].value, np.std(z, axis=0), rtol=1e-10)
    # not what the plain average of batch variances gives
    plain = np.mean([b["x"].var(0) for b in batches], axis=0)
    assert not np.allclose(stats["a.var"].value, plain, rtol=1e-3)


def test_weighted_mean_equals_mean_of_the_concatenated_data():
    inputs, y = ff_model()
    batches = ff_batches(sizes=(2, 13, 5))
    stats = popstats.estimate(inputs, y, batches, estimator="weighted", mode=MODE)
    data = np.concatenate([b["x"] for b in batches])
    np.testing.assert_allclose(stats["a.mean"].value, data.mean(0), rtol=1e-10)
    np.testing.assert_allclose(stats["b.mean"].value, np.tanh(data).mean(0), rtol=1e-10)


def test_estimator_per_label_pattern():
    inputs, y = ff_model()
    batches = ff_batches()
    cases = [
        ({"a.*": "pooled", "*": "mean"}, {"a.mean": "pooled", "a.var": "pooled"}),
        # first match wins; unmatched statistics use "mean"
        ({"a.var": "weighted", "a.*": "pooled", "b.std": Estimator("ema")},
         {"a.mean": "pooled", "a.var": "weighted", "b.std": "ema"}),
        # names and labels both match
        ({"c.max": "unbiased", "b.mean": "ema"},
         {"c.max": "unbiased", "b.mean": "ema"}),
    ]
    for spec, special in cases:
        stats = popstats.estimate(inputs, y, batches, estimator=spec, mode=MODE)
        for name, (role, elements_of) in FF_STATS.items():
            which = special.get(name, "mean")
            assert stats[name].estimator.name == which, (spec, name)
            want = reference(which, role, [elements_of(b["x"]) for b in batches])
            np.testing.assert_allclose(stats[name].value, want, rtol=1e-10)


@pytest.mark.parametrize("spec", ESTIMATORS, ids=IDS)
def test_scan_per_step_estimators_match_numpy(spec):
    inputs, hs = masked_model()
    batches = masked_batches()  # lengths 3, 2, 5, 4; mask-based counts
    stats = popstats.estimate(inputs, hs, batches, estimator=spec, mode=MODE)
    for name, role in MASKED_ROLES.items():
        which, momentum = resolved(spec, name)
        stat = stats[name]
        assert stat.value.shape == (5, F)
        np.testing.assert_array_equal(stat.coverage, [4, 4, 3, 2, 1])
        for t in range(5):
            elements = [masked_elements(b, t) for b in batches if len(b["x"]) > t]
            want = reference(which, role, elements, momentum)
            np.testing.assert_allclose(stat.value[t], want, rtol=1e-10, atol=1e-14)


def test_scan_pooled_per_step_is_exact_with_mask_counts():
    inputs, hs = masked_model()
    batches = masked_batches(lengths=(2, 4, 4), sizes=(7, 3, 9), seed=8)
    stats = popstats.estimate(
        inputs, hs, batches, estimator={"s.max": "mean", "*": "pooled"}, mode=MODE
    )
    for t in range(4):
        data = np.concatenate(
            [masked_elements(b, t) for b in batches if len(b["x"]) > t]
        )
        np.testing.assert_allclose(stats["s.mean"].value[t], np.mean(data, 0),
                                   rtol=1e-10)
        np.testing.assert_allclose(stats["s.var"].value[t], np.var(data, 0),
                                   rtol=1e-10)


# --------------------------------------------------------------------------
# merge
# --------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ESTIMATORS, ids=IDS)
def test_estimation_merge_equals_one_pass(spec):
    inputs, hs = masked_model()
    batches = masked_batches()  # lengths 3, 2 | 5, 4: parts of 3 and 5 steps
    run = popstats.Estimation(inputs, hs, estimator=spec, mode=MODE)
    a = run.run(batches[:2])
    b = run.run(batches[2:])
    assert a.states[0]["n"].shape == (3,) and b.states[0]["n"].shape == (5,)
    whole = run.finalize(run.run(batches))
    for merged in (run.merge(a, b), run.merge(run.merge(run.init(), a), b)):
        assert merged.n_batches == 4
        got = run.finalize(merged)
        for name in MASKED_ROLES:
            np.testing.assert_array_equal(got[name].coverage, whole[name].coverage)
            np.testing.assert_allclose(
                got[name].value, whole[name].value, rtol=1e-12, atol=1e-14
            )
    # a and b are not modified by merge
    again = run.finalize(run.merge(a, b))
    np.testing.assert_array_equal(again["s.var"].value, got["s.var"].value)


def test_finalize_of_an_empty_state():
    inputs, y = ff_model()
    run = popstats.Estimation(inputs, y, mode=MODE)
    with fails("Estimation.finalize(state=...)", "counts no batches"):
        run.finalize(run.init())


# --------------------------------------------------------------------------
# time="pooled"
# --------------------------------------------------------------------------


def time_pooled_reference(which, role, cells, momentum=0.1):
    """Rule of time pooling: each batch's statistic over all its steps (the
    statistic of its elements of every step: for a mean, variance or std
    with its paired mean, that of the concatenated elements; for other
    statistics the count-weighted average of the steps' values), combined
    over batches as the estimator combines batches."""
    if role is not None:
        return reference(which, role, [np.concatenate(c) for c in cells], momentum)
    joint = [np.average([STAT[None](e) for e in c], axis=0,
                        weights=[len(e) for e in c]) for c in cells]
    counts = [sum(len(e) for e in c) for c in cells]
    if which == "weighted":
        return np.average(joint, axis=0, weights=counts)
    if which == "ema":
        v = np.zeros(F)
        for value in joint:
            v = (1 - momentum) * v + momentum * value
        return v
    return np.mean(joint, axis=0)


@pytest.mark.parametrize("which", ["mean", "weighted", "unbiased", "ema"])
def test_time_pooled_statistics_are_those_of_each_batch_over_its_steps(which):
    inputs, hs = masked_model()
    batches = masked_batches()
    cells = [[masked_elements(b, t) for t in range(len(b["x"]))] for b in batches]
    spec = Estimator("ema", momentum=0.2) if which == "ema" else which
    stats = popstats.estimate(inputs, hs, batches, estimator=spec, time="pooled",
                              mode=MODE)
    for name, role in MASKED_ROLES.items():
        stat = stats[name]
        assert stat.value.shape == (F,)
        assert stat.coverage.shape == ()
        assert int(stat.coverage) == len(batches)
        want = time_pooled_reference(which, role, cells, 0.2)
        np.testing.assert_allclose(stat.value, want, rtol=1e-10)
    # between-step spread is in every estimator's variance: not the plain
    # average of the steps' variances
    per_step = np.mean([e.var(0) for c in cells for e in c], axis=0)
    assert not np.allclose(stats["s.var"].value, per_step, rtol=1e-2)


def test_time_pooled_unbiased_is_mean_times_m_over_m_minus_1():
    # equal elements per batch (M = 3 steps x 4 rows): the documented factor
    inputs, hs = masked_model()
    rng = np.random.default_rng(3)
    shift = 3.0 * np.arange(3)[:, None, None]  # steps far apart
    batches = [{"x": rng.normal(size=(3, 4, F)) + shift, "mask": np.ones((3, 4))}
               for _ in range(5)]
    mean = popstats.estimate(inputs, hs, batches, time="pooled", mode=MODE)
    unbiased = popstats.estimate(inputs, hs, batches, estimator="unbiased",
                                 time="pooled", mode=MODE)
    np.testing.assert_allclose(unbiased["s.var"].value,
                               mean["s.var"].value * 12 / 11, rtol=1e-12)


def test_time_pooled_pooled_is_exact_over_all_steps():
    inputs, hs = masked_model()
    batches = masked_batches()
    stats = popstats.estimate(
        inputs, hs, batches, estimator={"s.max": "mean", "*": "pooled"},
        time="pooled", mode=MODE,
    )
    data = np.concatenate(
        [masked_elements(b, t) for b in batches for t in range(len(b["x"]))]
    )
    np.testing.assert_allclose(stats["s.mean"].value, data.mean(0), rtol=1e-10)
    np.testing.assert_allclose(stats["s.var"].value, data.var(0), rtol=1e-10)


def test_rewrite_of_time_pooled_statistics_uses_one_value_at_every_step():
    inputs, hs = masked_model()
    batches = masked_batches()
    # mixed: s.mean and s.max pooled over time, s.var per step
    stats = popstats.estimate(
        inputs, hs, batches, time={"s.m*": "pooled"}, mode=MODE
    )
    assert stats["s.mean"].value.shape == (F,)
    assert stats["s.max"].value.shape == (F,)
    assert stats["s.var"].value.shape == (5, F)
    assert stats["s.mean"].site.time == ("pooled",)
    assert stats["s.var"].site.time == ("step",)
    infer = compile_masked(inputs, popstats.rewrite(hs, stats))
    rng = np.random.default_rng(9)
    x = rng.normal(0.5, 1.5, (8, 3, F))  # longer than any training sequence
    got = infer(x, np.ones((8, 3)))
    h = np.zeros((3, F))
    for t in range(8):
        var = stats["s.var"].value[min(t, 4)]
        h = h + (x[t] - stats["s.mean"].value) / np.sqrt(var + EPS)
        h = h + stats["s.max"].value
        np.testing.assert_allclose(got[t], h, rtol=1e-10)
    # fully pooled: the same single value at every step
    pooled = popstats.estimate(inputs, hs, batches, time="pooled", mode=MODE)
    infer = compile_masked(inputs, popstats.rewrite(hs, pooled))
    pop = {k: s.value for k, s in pooled.items()}
    np.testing.assert_allclose(
        infer(x, np.ones((8, 3))), masked_infer(x, pop), rtol=1e-10
    )


# -- nested loops -----------------------------------------------------------


def nested_model():
    """Outer loop over x[t1] (T2, B, F); inner loop over its rows."""
    return nested_loop(EPS)


NESTED_SHAPES = ((2, 3, 4), (3, 2, 3), (1, 4, 5), (3, 3, 4))


def nested_batches():
    rng = np.random.default_rng(10)
    return [{"x4": rng.normal(0.5, 1.5, (a, b, c, F))} for a, b, c in NESTED_SHAPES]


def test_time_per_loop_level_in_nested_loops():
    inputs, hs = nested_model()
    batches = nested_batches()
    xs = [b["x4"] for b in batches]
    spec = {"out.*": "mean", "*": "pooled"}

    def cells(select):
        """Element arrays (rows) per batch for the (t1, t2) picked by select."""
        return [np.concatenate([x[t1, t2] for t1, t2 in select(x)]) for x in xs
                if list(select(x))]

    def every(x):
        return [(a, b) for a in range(x.shape[0]) for b in range(x.shape[1])]

    # inner loop pooled: one value per outer step
    for est_spec in ("mean", spec):
        stats = popstats.estimate(
            inputs, hs, batches, time=("step", "pooled"), estimator=est_spec,
            mode=MODE,
        )
        assert stats["in.mean"].value.shape == (3, F)
        assert stats["out.mean"].value.shape == (3, F)
        np.testing.assert_array_equal(stats["in.mean"].coverage, [4, 3, 2])
        for t1 in range(3):
            def at(x, t1=t1):
                return [(t1, b) for b in range(x.shape[1])] if x.shape[0] > t1 else []
            if est_spec == "mean":
                # each batch's statistic over its inner steps, averaged
                joint = [np.concatenate([x[c] for c in at(x)]) for x in xs if at(x)]
                want = np.mean([e.mean(0) for e in joint], axis=0)
                np.testing.assert_allclose(stats["in.mean"].value[t1], want,
                                           rtol=1e-10)
                want = np.mean([e.var(0) for e in joint], axis=0)
                np.testing.assert_allclose(stats["in.var"].value[t1], want,
                                           rtol=1e-10)
            else:
                data = np.concatenate(cells(at))
                np.testing.assert_allclose(stats["in.mean"].value[t1], data.mean(0),
                                           rtol=1e-10)
                np.testing.assert_allclose(stats["in.var"].value[t1], data.var(0),
                                           rtol=1e-10)
            outs = [x[t1].mean((0, 1)) for x in xs if x.shape[0] > t1]
            np.testing.assert_allclose(stats["out.mean"].value[t1], np.mean(outs, 0),
                                       rtol=1e-10)

    # outer loop pooled, inner per step: one value per inner step
    stats = popstats.estimate(
        inputs, hs, batches, time=("pooled", "step"), estimator=spec, mode=MODE
    )
    assert stats["in.var"].value.shape == (4, F)
    assert stats["in.var"].site.time == ("pooled", "step")
    assert stats["out.mean"].value.shape == (F,)
    for t2 in range(4):
        def at(x, t2=t2):
            return [(a, t2) for a in range(x.shape[0])] if x.shape[1] > t2 else []
        data = np.concatenate(cells(at))
        np.testing.assert_allclose(stats["in.mean"].value[t2], data.mean(0), rtol=1e-10)
        np.testing.assert_allclose(stats["in.var"].value[t2], data.var(0), rtol=1e-10)
    # out.mean has no count: each batch's outer steps weigh the same
    outs = [np.mean([x[t1].mean((0, 1)) for t1 in range(x.shape[0])], 0) for x in xs]
    np.testing.assert_allclose(stats["out.mean"].value, np.mean(outs, 0), rtol=1e-10)

    # both pooled
    stats = popstats.estimate(inputs, hs, batches, time="pooled", estimator="mean",
                              mode=MODE)
    assert stats["in.mean"].value.shape == (F,)
    # per batch, the statistic of all its elements (every outer and inner
    # step), then the plain average over batches
    joint = [x.reshape(-1, F) for x in xs]
    want = np.mean([e.mean(0) for e in joint], axis=0)
    np.testing.assert_allclose(stats["in.mean"].value, want, rtol=1e-10)
    want = np.mean([e.var(0) for e in joint], axis=0)
    np.testing.assert_allclose(stats["in.var"].value, want, rtol=1e-10)


def varying_inner_model():
    """An inner loop whose length varies between outer steps."""
    lengths = pt.ivector("lengths")
    data = pt.tensor4("data")  # (outer steps, max inner steps, B, F)

    def outer(length, rows, h):
        def inner(xt, g):
            n = xt.shape[0]
            m = mark(xt.mean(0), "in.mean", "mean", "in", n)
            v = mark(xt.var(0), "in.var", "var", "in", n)
            return g + (xt - m) / pt.sqrt(v + EPS)

        gs = scan(inner, sequences=[rows[:length]], outputs_info=[h])
        return gs[-1]

    h0 = pt.zeros_like(data[0, 0])
    hs = scan(outer, sequences=[lengths, data], outputs_info=[h0])
    return [lengths, data], hs


def test_inner_length_varying_between_outer_steps_with_inner_time_pooled():
    inputs, hs = varying_inner_model()
    rng = np.random.default_rng(11)
    batches = [
        {"lengths": np.array(lens, dtype="int32"),
         "data": rng.normal(0.3, 1.2, (len(lens), 4, b, F))}
        for lens, b in (((2, 4, 1), 3), ((3, 1), 5), ((4, 2, 2), 2))
    ]
    for spec in ("mean", "pooled"):
        stats = popstats.estimate(
            inputs, hs, batches, estimator=spec, time=("step", "pooled"), mode=MODE
        )
        np.testing.assert_array_equal(stats["in.mean"].coverage, [3, 3, 2])
        for t1 in range(3):
            per_batch = [
                np.concatenate([b["data"][t1, t2] for t2 in range(b["lengths"][t1])])
                for b in batches if len(b["lengths"]) > t1
            ]
            rows = per_batch
            if spec == "mean":  # each batch over its inner steps, then averaged
                want_m = np.mean([r.mean(0) for r in per_batch], axis=0)
                want_v = np.mean([r.var(0) for r in per_batch], axis=0)
            else:
                rows = np.concatenate(rows)
                want_m, want_v = rows.mean(0), rows.var(0)
            np.testing.assert_allclose(stats["in.mean"].value[t1], want_m, rtol=1e-10)
            np.testing.assert_allclose(stats["in.var"].value[t1], want_v, rtol=1e-10)


# --------------------------------------------------------------------------
# max_steps, coverage reports
# --------------------------------------------------------------------------


def test_max_steps_caps_the_table_and_inference_clamps_to_it():
    inputs, hs = masked_model()
    batches = masked_batches()  # lengths 3, 2, 5, 4
    full = popstats.estimate(inputs, hs, batches, mode=MODE)
    stats = popstats.estimate(inputs, hs, batches, max_steps=3, mode=MODE)
    for name in MASKED_ROLES:
        assert stats[name].value.shape == (3, F)
        np.testing.assert_array_equal(stats[name].coverage, [4, 4, 3])
        np.testing.assert_allclose(stats[name].value, full[name].value[:3], rtol=1e-12)
    for t in range(3):
        elements = [masked_elements(b, t) for b in batches if len(b["x"]) > t]
        np.testing.assert_allclose(
            stats["s.var"].value[t], np.mean([e.var(0) for e in elements], 0),
            rtol=1e-10,
        )
    infer = compile_masked(inputs, popstats.rewrite(hs, stats))
    x = np.random.default_rng(12).normal(0.5, 1.5, (7, 2, F))
    pop = {k: s.value for k, s in stats.items()}
    np.testing.assert_allclose(
        infer(x, np.ones((7, 2))), masked_infer(x, pop, steps=3), rtol=1e-10
    )
    # nested: every time axis is capped
    inputs, hs = nested_model()
    stats = popstats.estimate(inputs, hs, nested_batches(), max_steps=2, mode=MODE)
    assert stats["in.mean"].value.shape == (2, 2, F)
    assert stats["out.mean"].value.shape == (2, F)
    np.testing.assert_array_equal(stats["in.mean"].coverage, [[4, 4], [3, 3]])


def test_thin_steps_are_reported(caplog):
    inputs, hs = masked_model()
    # 11 batches: steps 2 and 3 reached by one batch only (< 10%)
    batches = masked_batches(lengths=(2,) * 10 + (4,), sizes=(3,) * 11, seed=13)
    with caplog.at_level(logging.WARNING, logger="popstats"):
        stats = popstats.estimate(inputs, hs, batches, mode=MODE)
    for name in MASKED_ROLES:
        assert stats[name].thin_steps == 2
        assert stats[name].uncovered_steps == 0
    messages = [r.getMessage() for r in caplog.records if r.name == "popstats"]
    assert len(messages) == 3
    assert all(r.levelno == logging.WARNING for r in caplog.records)
    assert any("'s.var'" in m and "0 step(s) never reached" in m
               and "2 reached by under 10%" in m for m in messages)


def test_uncovered_steps_are_reported_and_filled(caplog):
    inputs, hs = nested_model()
    rng = np.random.default_rng(14)
    # (T1, T2) = (2, 3) and (3, 2): cell (2, 2) is never reached
    batches = [{"x4": rng.normal(size=(t1, t2, 4, F))} for t1, t2 in ((2, 3), (3, 2))]
    with caplog.at_level(logging.WARNING, logger="popstats"):
        stats = popstats.estimate(inputs, hs, batches, mode=MODE)
    stat = stats["in.mean"]
    np.testing.assert_array_equal(stat.coverage, [[2, 2, 1], [2, 2, 1], [1, 1, 0]])
    assert stat.uncovered_steps == 1
    assert stat.thin_steps == 0
    np.testing.assert_array_equal(stat.value[2, 2], stat.value[2, 1])
    assert stats["out.mean"].uncovered_steps == 0
    messages = [r.getMessage() for r in caplog.records if r.name == "popstats"]
    assert any("'in.mean'" in m and "1 step(s) never reached" in m for m in messages)
    assert not any("out.mean" in m for m in messages)


def test_no_warning_when_every_step_is_well_covered(caplog):
    inputs, y = ff_model()
    with caplog.at_level(logging.WARNING, logger="popstats"):
        stats = popstats.estimate(inputs, y, ff_batches(), mode=MODE)
    assert not [r for r in caplog.records if r.name == "popstats"]
    assert all(s.uncovered_steps == 0 and s.thin_steps == 0 for s in stats.values())


# --------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------

ALLOWED = "'mean', 'weighted', 'pooled', 'unbiased', 'ema'"


def test_unknown_estimator():
    inputs, y = ff_model()
    b = ff_batches()[:1]
    with fails("estimate(estimator=...)", "'median'", ALLOWED):
        popstats.estimate(inputs, y, b, estimator="median", mode=MODE)
    with fails("estimate(estimator=...)", "'median'", ALLOWED):
        popstats.estimate(inputs, y, b, estimator={"a.*": "median"}, mode=MODE)
    with fails("estimate(estimator=...)", "3", ALLOWED, "Estimator"):
        popstats.estimate(inputs, y, b, estimator=3, mode=MODE)
    with fails("estimate(estimator=...)", "label patterns", "str"):
        popstats.estimate(inputs, y, b, estimator={1: "mean"}, mode=MODE)
    with fails("Estimator(name=...)", "'EMA'", ALLOWED):
        Estimator("EMA")


@pytest.mark.parametrize("momentum", [0, -0.1, 1.5, math.nan, "0.1", True])
def test_bad_momentum(momentum):
    with fails("Estimator(momentum=...)", "(0, 1]", repr(momentum)):
        Estimator("ema", momentum=momentum)


def test_momentum_only_for_ema():
    with fails("Estimator(momentum=...)", "only 'ema'", "'mean'", "0.1"):
        Estimator("mean", momentum=0.1)
    assert Estimator("ema").momentum == 0.1


def test_unknown_role():
    x = pt.matrix("x")
    with fails("bn_statistic(role=...)", "'variance'", "'mean', 'var', 'std'"):
        popstats.bn_statistic(x.var(0), "v", role="variance")


def test_pooled_without_partner():
    x = pt.matrix("x")
    n = x.shape[0]
    m = mark(x.mean(0), "m", "mean", "g1", n)
    v = mark(x.var(0), "v", "var", "g2", n)
    y = (x - m) / pt.sqrt(v + EPS)
    b = ff_batches()[:1]
    with fails("estimate(estimator=...)", "'pooled'", "'v'", "group='g2'",
               "role='mean'", "group="):
        popstats.estimate([x], y, b, estimator="pooled", mode=MODE)
    # a var without any group
    v2 = mark(x.var(0), "v2", "var", None, n)
    with fails("estimate(estimator=...)", "'v2'", "has no group"):
        popstats.estimate([x], x - m + v2, b, estimator="pooled", mode=MODE)
    # two means in one group
    m2 = mark(x.mean(0) * 2, "m2", "mean", "g2", n)
    m3 = mark(x.mean(0) * 3, "m3", "mean", "g2", n)
    with fails("'v'", "2 statistic"):
        popstats.estimate([x], y + m2 + m3, b, estimator="pooled", mode=MODE)
    # no role at all
    c = mark(x.max(0), "c", count=n)
    with fails("estimate(estimator=...)", "'c'", "no role", "role="):
        popstats.estimate([x], x + c, b, estimator="pooled", mode=MODE)
    # pooled is fine once the pairing is right, or the lone one is excluded
    popstats.estimate([x], x + c, b, estimator={"c": "mean", "*": "pooled"}, mode=MODE)


def test_pooled_partner_with_other_time_mode():
    inputs, hs = masked_model()
    with fails("estimate(time=...)", "'s.var'", "'s.mean'", "same time modes"):
        popstats.estimate(
            inputs, hs, masked_batches()[:1],
            estimator={"s.max": "mean", "*": "pooled"},
            time={"s.var": "pooled"}, mode=MODE,
        )


@pytest.mark.parametrize("name", ["pooled", "weighted", "unbiased"])
def test_estimators_needing_a_count(name):
    x = pt.matrix("x")
    m = mark(x.mean(0), "m", "mean", "g", x.shape[0])
    v = mark(x.var(0), "v", "var", "g")  # no count
    y = (x - m) / pt.sqrt(v + EPS)
    with fails("estimate(estimator=...)", f"{name!r}", "statistic 'v'", "count="):
        popstats.estimate([x], y, ff_batches()[:1], estimator=name, mode=MODE)
    # fine where no statistic needs one
    popstats.estimate([x], y, ff_batches()[:1], estimator={"v": "mean", "*": name},
                      mode=MODE)


def test_zero_or_negative_count_at_run_time():
    x = pt.matrix("x")
    mask = pt.vector("mask")
    c = mask.sum()
    mean = (x * mask[:, None]).sum(0) / pt.maximum(c, 1.0)  # finite when empty
    y = x - mark(mean, "masked.mean", "mean", count=c)
    rng = np.random.default_rng(15)
    good = {"x": rng.normal(size=(4, F)), "mask": np.ones(4)}
    empty = {"x": rng.normal(size=(3, F)), "mask": np.zeros(3)}
    # a count of 0 (a mask that leaves no element) is a batch that did not
    # reach the statistic: it is not counted, and is no error
    stats = popstats.estimate([x, mask], y, [good, empty], mode=MODE)
    assert int(stats["masked.mean"].coverage) == 1
    np.testing.assert_allclose(stats["masked.mean"].value, good["x"].mean(0))
    with fails("estimate(batches=...)", "'masked.mean'", "never computed"):
        popstats.estimate([x, mask], y, [empty], mode=MODE)
    n = pt.lscalar("n")
    y = x - mark(x.mean(0), "m", count=n)
    with fails("'m'", "is -2 in batch 2", "not negative"):
        popstats.estimate(
            [x, n], y, [(good["x"], 4), (good["x"], 4), (good["x"], -2)], mode=MODE
        )


def test_count_must_be_a_positive_scalar():
    x = pt.matrix("x")
    with fails("bn_statistic(count=...)", "scalar", "1-d", "count=mask.sum()"):
        popstats.bn_statistic(x.mean(0), "m", count=x.shape)
    for bad in (0, -3, 0.0):
        with fails("bn_statistic(count=...)", "> 0", repr(bad)):
            popstats.bn_statistic(x.mean(0), "m", count=bad)
    with fails("bn_statistic(count=...)", "'many'"):
        popstats.bn_statistic(x.mean(0), "m", count="many")


@pytest.mark.parametrize(
    ("time", "shown"),
    [("pool", "'pool'"), (("step", "bogus"), "'bogus'"), ({"s.*": "never"}, "'never'"),
     (3, "3")],
)
def test_unknown_time_mode(time, shown):
    inputs, hs = masked_model()
    with fails("estimate(time=...)", shown, "'step', 'pooled'"):
        popstats.estimate(inputs, hs, masked_batches()[:1], time=time, mode=MODE)


@pytest.mark.parametrize("max_steps", [0, -1, 2.5, True, "3"])
def test_bad_max_steps(max_steps):
    inputs, hs = masked_model()
    with fails("estimate(max_steps=...)", "positive int or None", repr(max_steps)):
        popstats.estimate(inputs, hs, masked_batches()[:1], max_steps=max_steps,
                          mode=MODE)
