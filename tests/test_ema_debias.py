"""The zero-debiased EMA: ``Estimator("ema", momentum=..., debias=True)``.

The debiased value after ``n`` batches is the batches' weighted average with
weights ``momentum (1 - momentum) ** (n - k)`` normalized to sum to 1 (Adam's
bias correction, Kingma & Ba 2015). Every expected value here is that
weighted average computed in NumPy from the raw data, the weights summed
explicitly; per time step ``n`` is the number of batches that reached the
step. Checked on the accumulators, through ``estimate`` on a masked Scan
with ragged lengths, host against graph (PyTensor) and device (JAX)
accumulation, merge, checkpoints, saving and loading (files without the flag
included) and the checks of the option.
"""

from __future__ import annotations

import json

import numpy as np
import pytensor.tensor as pt
import pytest
from conftest import MODE, fails, scan

import popstats
from popstats import Estimator
from popstats._src.estimation import estimators as est

F = 2
EPS = 1e-3

STAT = {
    "mean": lambda e: e.mean(axis=0),
    "var": lambda e: e.var(axis=0),
    "std": lambda e: e.std(axis=0),
    None: lambda e: e.max(axis=0),
}


def debiased_reference(stats, momentum):
    """The weighted average of ``stats`` (batch order) with EMA weights."""
    n = len(stats)
    weights = np.array([momentum * (1 - momentum) ** (n - 1 - k) for k in range(n)])
    return np.tensordot(weights, np.stack(stats), axes=1) / weights.sum()


def biased_reference(stats, momentum, start):
    v = np.full(stats[0].shape, start)
    for s in stats:
        v = (1 - momentum) * v + momentum * s
    return v


def batch_stat(role, elements, unbiased=False):
    if unbiased and role == "var":
        return elements.var(axis=0, ddof=1)
    if unbiased and role == "std":
        return elements.std(axis=0, ddof=1)
    return STAT[role](elements)


def accumulate(estimator, role, batches, depth):
    """The accumulator over ``batches``: element arrays, per step if depth."""
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


def flat_data(seed=1, sizes=(6, 3, 11, 2, 7, 5, 4)):
    rng = np.random.default_rng(seed)
    return [rng.normal(0.7, 1.3, (n, F)) for n in sizes]


def sequence_data(seed=0, lengths=(3, 2, 5, 4, 5, 1)):
    rng = np.random.default_rng(seed)
    return [[rng.normal(0.7, 1.3, (int(rng.integers(2, 8)), F)) for _ in range(t)]
            for t in lengths]


# --------------------------------------------------------------------------
# Accumulators
# --------------------------------------------------------------------------


# unbiased=True scales spreads only; a max without role is averaged as it is
ROLES = [("mean", False), ("var", False), ("std", False), (None, False),
         ("mean", True), ("var", True), ("std", True)]


@pytest.mark.parametrize(("role", "unbiased"), ROLES)
@pytest.mark.parametrize("depth", [0, 1])
def test_accumulator_matches_the_numpy_weighted_average(depth, role, unbiased):
    momentum = 0.3
    batches = sequence_data() if depth else flat_data()
    estimator = Estimator("ema", momentum=momentum, unbiased=unbiased, debias=True)
    state = accumulate(estimator, role, batches, depth)
    got = est.finalize(estimator, role, state)
    if not depth:
        want = debiased_reference([batch_stat(role, e, unbiased) for e in batches],
                                  momentum)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
        return
    # per step: the batches that reached the step, with their own count
    steps = max(len(b) for b in batches)
    coverage = [sum(len(b) > t for b in batches) for t in range(steps)]
    np.testing.assert_array_equal(state["n"], coverage)
    assert coverage == [6, 5, 4, 3, 2]  # ragged: every step its own n
    for t in range(steps):
        stats = [batch_stat(role, b[t], unbiased) for b in batches if len(b) > t]
        np.testing.assert_allclose(got[t], debiased_reference(stats, momentum),
                                   rtol=1e-12, atol=1e-14)
    # the same state finalized without debias is the biased average
    plain = Estimator("ema", momentum=momentum, unbiased=unbiased)
    start = 1.0 if role in ("var", "std") else 0.0
    last = [batch_stat(role, b[4], unbiased) for b in batches if len(b) > 4]
    np.testing.assert_allclose(est.finalize(plain, role, state)[4],
                               biased_reference(last, momentum, start), rtol=1e-12)


@pytest.mark.parametrize("role", ["mean", "var", "std", None])
def test_one_batch_gives_the_batch_value(role):
    batch = flat_data()[0]
    for momentum in (0.01, 0.1, 0.5, 1.0):
        estimator = Estimator("ema", momentum=momentum, debias=True)
        got = est.finalize(estimator, role, accumulate(estimator, role, [batch], 0))
        np.testing.assert_allclose(got, STAT[role](batch), rtol=1e-13)
        # the biased average is still mostly its start
        plain = Estimator("ema", momentum=momentum)
        biased = est.finalize(plain, role, accumulate(plain, role, [batch], 0))
        if momentum < 1:
            assert not np.allclose(biased, STAT[role](batch), rtol=1e-3)


def test_constant_batches_give_the_constant_at_every_n():
    momentum = 0.05
    c = np.array([2.5, -4.0])
    estimator = Estimator("ema", momentum=momentum, debias=True)
    plain = Estimator("ema", momentum=momentum)
    for role, start in (("mean", 0.0), ("var", 1.0)):
        state = est.init(estimator, role, (F,), 0)
        for n in range(1, 60):
            est.update(estimator, role, state, c, np.float64(4), None, c)
            np.testing.assert_allclose(est.finalize(estimator, role, state), c,
                                       rtol=1e-12)
            # unlike the biased average: c + (start - c) (1 - momentum) ** n
            biased = est.finalize(plain, role, state)
            np.testing.assert_allclose(biased, c + (start - c) * (1 - momentum) ** n,
                                       rtol=1e-12)
            assert np.abs(biased - c).min() > 1e-2


def test_merge_is_the_debiased_average_over_the_first_part_then_the_second():
    batches = sequence_data(seed=2)
    estimator = Estimator("ema", momentum=0.2, debias=True)
    whole = est.finalize(estimator, "var", accumulate(estimator, "var", batches, 1))
    for split in (1, 3, 5):
        a = accumulate(estimator, "var", batches[:split], 1)
        b = accumulate(estimator, "var", batches[split:], 1)
        merged = est.merge(estimator, "var", a, b)
        np.testing.assert_allclose(est.finalize(estimator, "var", merged), whole,
                                   rtol=1e-12, atol=1e-14)


def test_a_cell_no_batch_reached_is_zero_before_filling():
    estimator = Estimator("ema", momentum=0.1, debias=True)
    state = est.grow(est.init(estimator, "mean", (F,), 1), (2,))
    est.update(estimator, "mean", state, np.array([[1.0, 2.0], [np.nan, np.nan]]),
               np.array([3.0, 0.0]), np.array([True, False]), None)
    got = est.finalize(estimator, "mean", state)
    np.testing.assert_allclose(got, [[1.0, 2.0], [0.0, 0.0]], rtol=1e-13)


# --------------------------------------------------------------------------
# estimate(): a masked Scan with ragged lengths, on every engine
# --------------------------------------------------------------------------


def mark(var, label, role=None, group=None, count=None):
    return popstats.bn_statistic(var, label, role=role, group=group, count=count)


def masked_model():
    x = pt.tensor3("x")
    mask = pt.matrix("mask")

    def step(xt, mt, h):
        c = mt.sum()
        w = mt[:, None]
        mean = (xt * w).sum(0) / c
        var = (((xt - mean) ** 2) * w).sum(0) / c
        m = mark(mean, "s.mean", "mean", "s", c)
        v = mark(var, "s.var", "var", "s", c)
        return h + (xt - m) / pt.sqrt(v + EPS)

    hs = scan(step, sequences=[x, mask], outputs_info=[pt.zeros_like(x[0])])
    return [x, mask], hs


def masked_batches(lengths=(3, 2, 5, 4, 1, 5), seed=4):
    rng = np.random.default_rng(seed)
    batches = []
    for t in lengths:
        b = int(rng.integers(3, 7))
        mask = (rng.random((t, b)) < 0.6).astype(np.float64)
        mask[:, :2] = 1.0  # at least two elements per step
        batches.append({"x": rng.normal(0.5, 1.5, (t, b, F)), "mask": mask})
    return batches


def step_reference(batches, name, momentum, unbiased=False):
    role = "mean" if name == "s.mean" else "var"
    steps = max(len(b["x"]) for b in batches)
    out = []
    for t in range(steps):
        stats = [batch_stat(role, b["x"][t][b["mask"][t] > 0], unbiased)
                 for b in batches if len(b["x"]) > t]
        out.append(debiased_reference(stats, momentum))
    return np.stack(out)


DEBIASED = Estimator("ema", momentum=0.2, debias=True)


@pytest.mark.parametrize("accumulate", ["host", "graph"])
def test_estimate_per_step_matches_numpy(accumulate):
    inputs, hs = masked_model()
    batches = masked_batches()
    stats = popstats.estimate(inputs, hs, batches, estimator=DEBIASED, mode=MODE,
                              accumulate=accumulate)
    for name in ("s.mean", "s.var"):
        stat = stats[name]
        assert stat.estimator == DEBIASED
        np.testing.assert_array_equal(stat.coverage, [6, 5, 4, 3, 2])
        np.testing.assert_allclose(stat.value, step_reference(batches, name, 0.2),
                                   rtol=1e-10, atol=1e-14)


def test_unbiased_and_debiased_together():
    inputs, hs = masked_model()
    batches = masked_batches(seed=5)
    both = Estimator("ema", momentum=0.3, unbiased=True, debias=True)
    stats = popstats.estimate(inputs, hs, batches, estimator=both, mode=MODE)
    np.testing.assert_allclose(stats["s.var"].value,
                               step_reference(batches, "s.var", 0.3, unbiased=True),
                               rtol=1e-10)


def test_host_and_graph_accumulation_give_the_same_state_and_values():
    inputs, hs = masked_model()
    batches = masked_batches(seed=6)
    host = popstats.Estimation(inputs, hs, estimator=DEBIASED, mode=MODE)
    graph = popstats.Estimation(inputs, hs, estimator=DEBIASED, mode=MODE,
                                accumulate="graph")
    a, b = host.run(batches, progress=False), graph.run(batches, progress=False)
    for sa, sb in zip(a.states, b.states, strict=True):
        assert sa.keys() == sb.keys()
        for field in sa:
            np.testing.assert_allclose(sa[field], sb[field], rtol=1e-12, atol=1e-14)
    fa, fb = host.finalize(a), graph.finalize(b)
    for name in ("s.mean", "s.var"):
        np.testing.assert_allclose(fa[name].value, fb[name].value, rtol=1e-12)


def test_device_accumulation_in_jax_equals_the_host():
    pytest.importorskip("jax")
    import pytensor.link.jax.dispatch  # noqa: F401 - sets x64 from floatX

    x = pt.tensor3("x")

    def step(xt, h):
        m = mark(xt.mean(0), "r.mean", "mean", "r", xt.shape[0].astype("float64"))
        v = mark(xt.var(0), "r.var", "var", "r", xt.shape[0].astype("float64"))
        return h + (xt - m) / pt.sqrt(v + EPS)

    hs = scan(step, sequences=[x], outputs_info=[pt.zeros_like(x[0])])
    rng = np.random.default_rng(7)
    batches = [{"x": rng.normal(1.0, 2.0, (t, 4, F))} for t in (2, 4, 1, 3, 4)]
    device = popstats.Estimation([x], hs, estimator=DEBIASED, mode="JAX",
                                 accumulate="graph")
    assert device._engine.device is not None
    host = popstats.Estimation([x], hs, estimator=DEBIASED, mode=MODE)
    got = device.finalize(device.run(batches, progress=False))
    want = host.finalize(host.run(batches, progress=False))
    for name, role in (("r.mean", "mean"), ("r.var", "var")):
        tol = 1e-12 if device._engine.device.dtype == "float64" else 1e-5
        np.testing.assert_allclose(got[name].value, want[name].value, rtol=tol)
        steps = [[batch_stat(role, b["x"][t]) for b in batches if len(b["x"]) > t]
                 for t in range(4)]
        np.testing.assert_allclose(
            want[name].value, np.stack([debiased_reference(s, 0.2) for s in steps]),
            rtol=1e-10)


def test_estimation_merge_equals_one_pass():
    inputs, hs = masked_model()
    batches = masked_batches()
    run = popstats.Estimation(inputs, hs, estimator=DEBIASED, mode=MODE)
    whole = run.finalize(run.run(batches, progress=False))
    merged = run.finalize(run.merge(run.run(batches[:2], progress=False),
                                    run.run(batches[2:], progress=False)))
    for name in ("s.mean", "s.var"):
        np.testing.assert_allclose(merged[name].value, whole[name].value,
                                   rtol=1e-12, atol=1e-14)


# --------------------------------------------------------------------------
# Saving, loading, checkpoints
# --------------------------------------------------------------------------


def rewrite_meta(path, edit):
    """Rewrite a saved file's JSON metadata with ``edit(meta)`` (as an older
    popstats would have written it)."""
    with np.load(path, allow_pickle=False) as archive:
        arrays = {key: archive[key] for key in archive.files}
    meta = json.loads(str(arrays["meta"]))
    edit(meta)
    arrays["meta"] = np.array(json.dumps(meta))
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)


def estimators_in(path):
    with np.load(path, allow_pickle=False) as archive:
        meta = json.loads(str(archive["meta"]))
    entries = meta["statistics"] if "statistics" in meta else (
        meta["spec"]["statistics"])
    return [entry["estimator"] for entry in entries]


def test_statistics_saved_and_loaded_keep_debias(tmp_path):
    inputs, hs = masked_model()
    batches = masked_batches()
    stats = popstats.estimate(inputs, hs, batches, estimator=DEBIASED, mode=MODE)
    path = tmp_path / "s.npz"
    stats.save(path)
    assert all(e.get("debias") is True for e in estimators_in(path))
    loaded = popstats.load(path)
    for name in ("s.mean", "s.var"):
        assert loaded[name].estimator == DEBIASED
        np.testing.assert_array_equal(loaded[name].value, stats[name].value)


def test_a_file_without_the_flag_loads_as_not_debiased(tmp_path):
    inputs, hs = masked_model()
    batches = masked_batches()
    plain = Estimator("ema", momentum=0.2)
    # files of the biased EMA are written as before: no "debias" key
    stats = popstats.estimate(inputs, hs, batches, estimator=plain, mode=MODE)
    stats.save(tmp_path / "plain.npz")
    assert all("debias" not in e for e in estimators_in(tmp_path / "plain.npz"))
    assert popstats.load(tmp_path / "plain.npz")["s.var"].estimator == plain
    # a state file of an older popstats (no key) reads as the biased EMA
    run = popstats.Estimation(inputs, hs, estimator=DEBIASED, mode=MODE)
    state = run.run(batches, progress=False)
    state.save(tmp_path / "state.npz")

    def drop(meta):
        for entry in meta["spec"]["statistics"]:
            del entry["estimator"]["debias"]

    rewrite_meta(tmp_path / "state.npz", drop)
    old = popstats.load_state(tmp_path / "state.npz")
    biased = popstats.Estimation(inputs, hs, estimator=plain, mode=MODE)
    values = biased.finalize(old)
    for name in ("s.mean", "s.var"):
        assert values[name].estimator == plain
        np.testing.assert_allclose(
            values[name].value,
            popstats.estimate(inputs, hs, batches, estimator=plain,
                              mode=MODE)[name].value, rtol=1e-12)
    # and is refused by a debiased pass, naming the difference
    with fails("Estimation.finalize(state=...)", "'ema' (momentum 0.2) in the state",
               "'ema' (momentum 0.2, debiased) here"):
        run.finalize(old)


def test_checkpoint_resume_equals_one_pass(tmp_path):
    inputs, hs = masked_model()
    batches = masked_batches()
    run = popstats.Estimation(inputs, hs, estimator=DEBIASED, mode=MODE)
    whole = run.finalize(run.run(batches, progress=False))

    def stopped(items, n):
        for i, item in enumerate(items):
            if i == n:
                raise KeyboardInterrupt
            yield item

    path = tmp_path / "ck.npz"
    with pytest.raises(KeyboardInterrupt):
        run.run(stopped(batches, 3), checkpoint=path, checkpoint_every=1,
                progress=False)
    assert popstats.load_state(path).n_batches == 3
    resumed = run.finalize(run.run(batches, checkpoint=path, progress=False))
    for name in ("s.mean", "s.var"):
        np.testing.assert_allclose(resumed[name].value, whole[name].value,
                                   rtol=1e-12, atol=1e-14)
    # a biased pass does not resume the debiased checkpoint
    plain = popstats.Estimation(inputs, hs, estimator=Estimator("ema", momentum=0.2),
                                mode=MODE)
    with fails("Estimation.run(checkpoint=...)", "debiased"):
        plain.run(batches, checkpoint=path, progress=False)


# --------------------------------------------------------------------------
# The option
# --------------------------------------------------------------------------


def test_repr_and_default():
    assert Estimator("ema").debias is False
    assert repr(Estimator("ema", debias=True)) == (
        "Estimator(name='ema', momentum=0.1, debias=True)")
    assert repr(Estimator("ema", momentum=0.5, unbiased=True, debias=np.True_)) == (
        "Estimator(name='ema', momentum=0.5, unbiased=True, debias=True)")
    assert Estimator("ema", debias=np.True_).debias is True
    assert Estimator("ema", debias=True) != Estimator("ema")


@pytest.mark.parametrize("debias", ["yes", 1, 0, None, 1.0])
def test_debias_must_be_a_bool(debias):
    with fails("Estimator(debias=...)", "expected True or False", "1 - (1 - momentum)"):
        Estimator("ema", debias=debias)


@pytest.mark.parametrize("name", ["mean", "weighted", "pooled", "unbiased"])
def test_debias_only_for_ema(name):
    with fails("Estimator(debias=...)", "only 'ema'", repr(name)):
        Estimator(name, debias=True)
    assert Estimator(name, debias=False).debias is False


def test_debias_is_keyword_only():
    with pytest.raises(TypeError):
        Estimator("ema", 0.1, False, True)  # type: ignore[misc]


def test_per_statistic_mapping():
    inputs, hs = masked_model()
    batches = masked_batches()
    plain = Estimator("ema", momentum=0.2)
    stats = popstats.estimate(inputs, hs, batches, mode=MODE,
                              estimator={"s.var": DEBIASED, "*": plain})
    assert stats["s.var"].estimator == DEBIASED and stats["s.mean"].estimator == plain
    np.testing.assert_allclose(stats["s.var"].value,
                               step_reference(batches, "s.var", 0.2), rtol=1e-10)
    steps = [[batch_stat("mean", b["x"][t][b["mask"][t] > 0]) for b in batches
              if len(b["x"]) > t] for t in range(5)]
    np.testing.assert_allclose(
        stats["s.mean"].value,
        np.stack([biased_reference(s, 0.2, 0.0) for s in steps]), rtol=1e-10)
