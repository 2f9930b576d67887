"""The estimation shift and upstream='population' outside estimate itself.

``popstats.shift`` against a NumPy forward pass of the inference graph (the
exact moments of each layer's input, their Jeffreys divergence from the
held values); ``drift(upstream=...)`` on the estimation data (0 at the fixed
point); ``describe(shift=)`` and the report's sections; and ``popstats.dask``
running the passes of ``upstream="population"`` on a cluster, equal to the
passes in this process.
"""

from __future__ import annotations

import contextlib
import functools
import io
from pathlib import Path

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from shared import MODE

import popstats
from popstats._src.drift.measures import jeffreys

EPS = 1e-5
DEPTH = 3


def _mlp(seed: int = 0, counted: bool = True):
    rng = np.random.default_rng(seed)
    x = pt.matrix("x")
    h = x
    weights = []
    for i in range(DEPTH):
        W = rng.normal(size=(3, 3))
        weights.append(W)
        h = h @ pytensor.shared(W, name=f"W{i}")
        n = h.shape[0] if counted else None
        m = popstats.bn_statistic(h.mean(0), f"bn{i}.mean", role="mean",
                                  group=f"bn{i}", count=n)
        v = popstats.bn_statistic(h.var(0), f"bn{i}.var", role="var",
                                  group=f"bn{i}", count=n)
        h = pt.tanh((h - m) / pt.sqrt(v + EPS))
    data = [rng.normal(1.0, 2.0, size=(4, 3)) for _ in range(12)]
    return x, h, weights, data


def _inputs_at_inference(weights, data, stats):
    """Per layer, every batch's input to its batch norm in the inference
    graph of ``stats`` (NumPy)."""
    layers = [[] for _ in weights]
    for batch in data:
        h = batch
        for i, W in enumerate(weights):
            a = h @ W
            layers[i].append(a)
            m, v = stats[f"bn{i}.mean"].value, stats[f"bn{i}.var"].value
            h = np.tanh((a - m) / np.sqrt(v + EPS))
    return [np.concatenate(a) for a in layers]


def test_shift_is_the_divergence_from_the_inputs_moments_at_inference():
    x, y, weights, data = _mlp()
    batches = [{"x": d} for d in data]
    stats = popstats.estimate([x], y, batches, mode=MODE, progress=False)
    measured = popstats.shift(stats, [x], y, batches, eps=EPS, mode=MODE,
                              progress=False)
    inputs = _inputs_at_inference(weights, data, stats)
    for i, a in enumerate(inputs):
        m0, v0 = stats[f"bn{i}.mean"].value, stats[f"bn{i}.var"].value
        expected = jeffreys(m0, v0 + EPS, a.mean(0), a.var(0) + EPS)
        record = measured[f"bn{i}"]
        np.testing.assert_allclose(record.per_unit, expected, rtol=1e-9, atol=1e-14)
        assert record.mean == pytest.approx(expected.mean(), rel=1e-9, abs=1e-14)
    # the first layer: only the "mean" estimator's small-batch variance bias
    # (its input is the same in both graphs); the later ones moved further
    assert 0 < measured["bn0"].mean < measured["bn2"].mean
    # the new side is the inference graph's, marked as such
    assert {s.upstream for s in measured.statistics.values()} == {"given"}


def test_consistent_pooled_statistics_have_no_shift():
    x, y, _, data = _mlp()
    batches = [{"x": d} for d in data]
    consistent = popstats.estimate([x], y, batches, estimator="pooled",
                                   upstream="population", mode=MODE, progress=False)
    after = popstats.shift(consistent, [x], y, batches, eps=EPS, mode=MODE,
                           progress=False)
    assert max(r.max for r in after.values()) < 1e-12
    today = popstats.estimate([x], y, batches, estimator="pooled", mode=MODE,
                              progress=False)
    before = popstats.shift(today, [x], y, batches, eps=EPS, mode=MODE,
                            progress=False)
    assert before["bn0"].max < 1e-12  # the first layer's input is the same
    assert before["bn2"].mean > 1e-3


@pytest.mark.parametrize("estimator", ["mean", "weighted", "unbiased"])
def test_drift_on_the_inference_graph_is_zero_at_the_fixed_point(estimator):
    x, y, _, data = _mlp()
    batches = [{"x": d} for d in data]
    consistent = popstats.estimate([x], y, batches, estimator=estimator,
                                   upstream="population", mode=MODE, progress=False)
    same = popstats.drift(consistent, [x], y, batches, upstream="population",
                          eps=EPS, mode=MODE, progress=False)
    assert max(r.max for r in same.values()) < 1e-12
    # on the training graph the same values are not the batch statistics
    moved = popstats.drift(consistent, [x], y, batches, eps=EPS, mode=MODE,
                           progress=False)
    assert moved["bn2"].mean > 1e-4


def test_against_moments_needs_counts_and_groups():
    x, y, _, data = _mlp(counted=False)
    batches = [{"x": d} for d in data]
    stats = popstats.estimate([x], y, batches, upstream="population", mode=MODE,
                              progress=False)
    # no counts: the exact moments cannot be computed, and shift says so
    # (in its own name) rather than comparing with the "mean" estimator
    with pytest.raises(popstats.PopstatsError,
                       match=r"^shift\(against='moments'\): statistic 'bn0\.\w+'.*"
                             r"has no count"):
        popstats.shift(stats, [x], y, batches, eps=EPS, mode=MODE, progress=False)
    same = popstats.drift(stats, [x], y, batches, upstream="population", eps=EPS,
                          mode=MODE, progress=False)  # against its estimator
    assert max(r.max for r in same.values()) < 1e-12
    with pytest.raises(popstats.PopstatsError, match=r"drift\(against=\.\.\.\)"):
        popstats.drift(stats, [x], y, batches, against="exact")
    with pytest.raises(popstats.PopstatsError, match=r"drift\(upstream=\.\.\.\)"):
        popstats.drift(stats, [x], y, batches, upstream="inference")
    with pytest.raises(popstats.PopstatsError, match=r"^shift\(stats=\.\.\.\)"):
        popstats.shift(None, [x], y, batches)


def test_statistics_without_groups_that_read_each_other_are_refused():
    """A statistic computed from another where a group is missing: its layer
    cannot be told (its own: batch value; upstream: population value)."""
    x = pt.matrix("x")
    m = popstats.bn_statistic(x.mean(0), "bn.mean")
    v = popstats.bn_statistic(((x - m) ** 2).mean(0), "bn.var")
    y = (x - m) / pt.sqrt(v + EPS)
    batches = [{"x": np.random.default_rng(i).normal(size=(4, 2)) + i}
               for i in range(3)]
    with pytest.raises(popstats.PopstatsError,
                       match=r"'bn\.var' is computed from statistic 'bn\.mean'.*"
                             r"neither has group"):
        popstats.estimate([x], y, batches, upstream="population", mode=MODE)
    # independent statistics need no group
    v2 = popstats.bn_statistic(x.var(0), "bn.var")
    y2 = (x - m) / pt.sqrt(v2 + EPS)
    one = popstats.estimate([x], y2, batches, upstream="population", mode=MODE,
                            progress=False)
    assert one.fixed_point.passes == 2


def test_random_numbers_in_the_graph_are_refused():
    rng = pytensor.shared(np.random.default_rng(0))
    x = pt.matrix("x")
    _, mask = pt.random.bernoulli(0.5, size=x.shape, rng=rng, return_next_rng=True)
    d = x * mask * 2.0
    n = d.shape[0]
    m = popstats.bn_statistic(d.mean(0), "bn.mean", role="mean", group="bn", count=n)
    v = popstats.bn_statistic(d.var(0), "bn.var", role="var", group="bn", count=n)
    y = (d - m) / pt.sqrt(v + EPS)
    batches = [{"x": np.ones((4, 2))}] * 2
    with pytest.raises(popstats.PopstatsError, match="depend on random numbers"):
        popstats.estimate([x], y, batches, upstream="population", mode=MODE)


def test_tolerance_and_passes_need_upstream_population():
    x, y, _, data = _mlp()
    with pytest.raises(popstats.PopstatsError,
                       match=r"estimate\(upstream_tol=\.\.\.\): applies to "
                             r"upstream='population' only"):
        popstats.estimate([x], y, [{"x": data[0]}], upstream_tol=1e-3)
    with pytest.raises(popstats.PopstatsError, match=r"upstream_passes=\.\.\."):
        popstats.get_inference_graph([x], y, [{"x": data[0]}], upstream_passes=3)


def test_describe_and_report_show_the_shift(tmp_path):
    x, y, _, data = _mlp()
    batches = [{"x": d} for d in data]
    stats = popstats.estimate([x], y, batches, estimator="pooled", mode=MODE,
                              progress=False)
    measured = popstats.shift(stats, [x], y, batches, eps=EPS, mode=MODE,
                              progress=False)
    table = popstats.describe(y, shift=measured)
    assert table["bn2.var"].shift == pytest.approx(measured["bn2"].mean)
    assert table.to_dicts()[0]["shift"] == table[0].shift
    assert "shift" in str(table).splitlines()[0]
    assert "shift" not in str(popstats.describe(y)).splitlines()[0]
    with pytest.raises(popstats.PopstatsError, match=r"describe\(shift=\.\.\.\)"):
        popstats.describe(y, shift=[1.0])
    z = pt.matrix("z")
    other = popstats.bn_statistic(z.mean(0), "other.mean")
    with pytest.raises(popstats.PopstatsError, match="none of these outputs"):
        popstats.describe(z - other, shift=measured)
    page = stats.report(tmp_path / "r.html", plots=False, shift=measured)
    text = Path(page).read_text()
    assert "<h2>Estimation shift</h2>" in text and "upstream=&#x27;batch&#x27;" in text
    consistent = popstats.estimate([x], y, batches, upstream="population",
                                   mode=MODE, progress=False)
    text = Path(consistent.report(tmp_path / "c.html", plots=False)).read_text()
    assert f"fixed point in {consistent.fixed_point.passes} passes" in text
    assert "Estimation shift" not in text
    with pytest.raises(popstats.PopstatsError, match=r"report\(shift=\.\.\.\)"):
        stats.report(tmp_path / "bad.html", plots=False, shift={"a": 1})
    single = popstats.estimate([z], z - other, [{"z": data[0]}], progress=False)
    with pytest.raises(popstats.PopstatsError, match="another graph"):
        single.report(tmp_path / "bad.html", plots=False, shift=measured)


def test_given_statistics_save_and_load_as_given(tmp_path):
    x, y, _, data = _mlp()
    batches = [{"x": d} for d in data]
    stats = popstats.estimate([x], y, batches, mode=MODE, progress=False)
    new = popstats.shift(stats, [x], y, batches, mode=MODE, progress=False).statistics
    new.save(tmp_path / "given.npz")
    loaded = popstats.load(tmp_path / "given.npz")
    assert {s.upstream for s in loaded.values()} == {"given"}
    assert loaded.fixed_point is None


# --------------------------------------------------------------------------
# popstats.dask: the passes on a cluster


def test_dask_passes_equal_the_passes_here(dask_client):
    pytest.importorskip("distributed")
    import dask_loaders as loaders
    import pass_models

    import popstats.dask

    inputs, outputs = pass_models.model()
    options = dict(estimator=pass_models.estimator_spec("pooled"), mode=MODE,
                   upstream="population")
    here = popstats.estimate(inputs, outputs, loaders.batches(3, 12), progress=False,
                             **options)
    parts = [functools.partial(loaders.part, 3, lo, lo + 4) for lo in (0, 4, 8)]
    there, state = popstats.dask.estimate(inputs, outputs, parts, client=dask_client,
                                          progress=False, return_state=True,
                                          **options)
    assert there.fixed_point.passes == here.fixed_point.passes
    assert state.spec.upstream.startswith("population:")
    for name, stat in here.items():
        np.testing.assert_allclose(there[name].value, stat.value, rtol=1e-12,
                                   atol=1e-14)
        assert there[name].upstream == "population"
        np.testing.assert_array_equal(there[name].coverage, stat.coverage)
    groups = popstats.dask.estimate_groups(
        inputs, outputs, {"a": parts[:1], "b": parts[1:]}, client=dask_client,
        progress=False, **options)
    alone = popstats.estimate(inputs, outputs, loaders.batches(3, 12)[:4],
                              progress=False, **options)
    for name, stat in alone.items():
        np.testing.assert_allclose(groups["a"][name].value, stat.value, rtol=1e-12,
                                   atol=1e-14)
    with pytest.raises(popstats.PopstatsError, match=r"estimate\(state=\.\.\.\)"):
        popstats.dask.estimate(inputs, outputs, parts, client=dask_client,
                               state=state, progress=False, **options)


def test_the_summary_command_says_how_consistent_statistics_were_made(tmp_path):
    from popstats._src.inspection import cli

    x, y, _, data = _mlp()
    batches = [{"x": d} for d in data]
    consistent = popstats.estimate([x], y, batches, upstream="population",
                                   mode=MODE, progress=False)
    consistent.save(tmp_path / "c.npz")
    loaded = popstats.load(tmp_path / "c.npz")
    assert loaded.fixed_point == consistent.fixed_point
    assert {s.upstream for s in loaded.values()} == {"population"}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["summary", str(tmp_path / "c.npz")]) == 0
    lines = out.getvalue().splitlines()
    assert f"fixed point in {consistent.fixed_point.passes} passes" in lines[-1]


@pytest.mark.parametrize("in_loop", [False, True])
def test_a_variance_computed_from_its_layers_mean_reads_the_batch_mean(in_loop):
    """Statistics of one group are one layer: the variance's own mean is not
    upstream of it (in the inference graph's pass it stays the batch mean)."""
    rng = np.random.default_rng(1)
    x = pt.tensor3("x") if in_loop else pt.matrix("x")

    def layer(a, from_mean):
        m = popstats.bn_statistic(a.mean(0), "bn.mean", role="mean", group="bn")
        var = ((a - m) ** 2).mean(0) if from_mean else a.var(0)
        v = popstats.bn_statistic(var, "bn.var", role="var", group="bn")
        return pt.tanh((a - m) / pt.sqrt(v + EPS))

    W = pytensor.shared(rng.normal(size=(3, 3)), name="W")

    def model(from_mean):
        if not in_loop:
            return layer(x @ W, from_mean)
        return pytensor.scan(lambda xt, h: layer(xt + h @ W, from_mean),
                             sequences=[x], outputs_info=[pt.zeros_like(x[0])],
                             name="rnn", return_updates=False)

    shape = (5, 4, 3) if in_loop else (4, 3)
    batches = [{"x": rng.normal(size=shape) + i} for i in range(4)]
    results = [popstats.estimate([x], model(f), batches, upstream="population",
                                 mode=MODE, progress=False) for f in (False, True)]
    for name in results[0]:
        np.testing.assert_allclose(results[1][name].value, results[0][name].value,
                                   rtol=1e-12, atol=1e-14)
    if not in_loop:  # one layer: nothing upstream, the batch pass is the answer
        assert results[1].fixed_point.passes == 2


def test_dask_passes_refuse_loaders_that_move_and_take_a_generator(dask_client):
    pytest.importorskip("distributed")
    import dask_loaders as loaders

    import popstats.dask

    x, y, _, _ = _mlp()
    parts = (functools.partial(loaders.table, seed, 3) for seed in (1, 2))
    stats = popstats.dask.estimate([x], y, parts, client=dask_client, mode=MODE,
                                   upstream="population", progress=False)
    here = popstats.estimate([x], y, loaders.table(1, 3) + loaders.table(2, 3),
                             mode=MODE, upstream="population", progress=False)
    assert stats.fixed_point.passes == here.fixed_point.passes
    for name, stat in here.items():
        np.testing.assert_allclose(stats[name].value, stat.value, rtol=1e-12)
    moving = [functools.partial(loaders.noisy, seed, 3) for seed in (1, 2)]
    with pytest.raises(popstats.PopstatsError,
                       match=r"statistic 'bn0\.\w+', which no other statistic is "
                             r"upstream of, moved by"):
        popstats.dask.estimate([x], y, moving, client=dask_client, mode=MODE,
                               upstream="population", progress=False)


def test_shift_refuses_statistics_without_role():
    """Issue 28: statistics with no mean/var/std role have no moments to
    measure; shift refused them instead of returning zeros."""
    rng = np.random.default_rng(0)
    x = pt.matrix("x")
    h = x @ pytensor.shared(rng.normal(size=(3, 3)), name="W0")
    m = popstats.bn_statistic(h.mean(0), "bn.mean")
    v = popstats.bn_statistic(h.var(0), "bn.var")
    y = pt.tanh((h - m) / pt.sqrt(v + EPS))
    batches = [{"x": rng.normal(size=(4, 3))} for _ in range(4)]
    stats = popstats.estimate([x], y, batches, mode=MODE, progress=False)
    with pytest.raises(popstats.PopstatsError,
                       match=r"^shift\(stats=\.\.\.\): none of the statistics "
                             r"\('bn\.\w+', 'bn\.\w+'\) has a role.*role='mean'.*"
                             r"popstats\.drift\(\.\.\., upstream='population'\)"):
        popstats.shift(stats, [x], y, batches, eps=EPS, mode=MODE, progress=False)
