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
from conftest import MODE

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


def test_against_moments_needs_counts_and_falls_back_to_the_estimator():
    x, y, _, data = _mlp(counted=False)
    batches = [{"x": d} for d in data]
    stats = popstats.estimate([x], y, batches, upstream="population", mode=MODE,
                              progress=False)
    # no counts: the new side is the statistics' own estimator ("mean"),
    # so consistent values do not move
    measured = popstats.shift(stats, [x], y, batches, eps=EPS, mode=MODE,
                              progress=False)
    assert max(r.max for r in measured.values()) < 1e-12
    with pytest.raises(popstats.PopstatsError, match=r"drift\(against=\.\.\.\)"):
        popstats.drift(stats, [x], y, batches, against="exact")
    with pytest.raises(popstats.PopstatsError, match=r"drift\(upstream=\.\.\.\)"):
        popstats.drift(stats, [x], y, batches, upstream="inference")


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
