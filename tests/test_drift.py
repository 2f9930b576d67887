"""``popstats.drift``: divergences and standardized differences.

Against independent references: the KL divergence of two normals written
with its logarithms (they cancel in the symmetric form), closed forms for
affine shifts of known size, NumPy's per-batch statistics for the
standardized difference; a shift injected at layer k or at step t leaves
what comes before at exactly zero; records, table, HTML report; errors.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from shared import MODE, bn_pair, fails, scan

import popstats
from popstats._src.drift.comparison import jeffreys

EPS = 1e-5


def kl(m_p, v_p, m_q, v_q):
    """KL(N(m_p, v_p) || N(m_q, v_q)), the textbook form."""
    return 0.5 * np.log(v_q / v_p) + (v_p + (m_p - m_q) ** 2) / (2 * v_q) - 0.5


@settings(max_examples=60, deadline=None)
@given(st.floats(-5, 5), st.floats(0.01, 10), st.floats(-5, 5), st.floats(0.01, 10))
def test_jeffreys_is_the_sum_of_both_kl_divergences(m0, v0, m1, v1):
    expected = kl(m0, v0, m1, v1) + kl(m1, v1, m0, v0)
    assert jeffreys(m0, v0, m1, v1) == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert jeffreys(m0, v0, m0, v0) == 0.0


def test_jeffreys_at_zero_variances():
    out = jeffreys([0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [0.0, 1.0, 1.0], [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(out, [0.0, np.inf, np.inf])


def bn(h, name, count=True):
    return bn_pair(h, name, eps=EPS, counted=count)


def mlp(shift_at=None):
    """Three BN layers; ``s`` is added to layer ``shift_at``'s input."""
    rng = np.random.default_rng(1)
    x, s = pt.matrix("x"), pt.vector("s")
    h = x
    for k in range(3):
        if k:
            h = pt.tanh(h) @ pytensor.shared(rng.normal(size=(3, 3)), name=f"w{k}")
        if k == shift_at:
            h = h + s
        h = bn(h, f"l{k}")
    return ([x] if shift_at is None else [x, s]), h


def batches_of(data, s=(0.0, 0.0, 0.0), size=40):
    return [{"x": data[i:i + size], "s": np.asarray(s)}
            for i in range(0, len(data), size)]


@pytest.mark.parametrize("estimator", ["mean", "pooled"])
@pytest.mark.parametrize("scale,shift", [(1.0, 1.5), (2.0, 0.0), (0.5, -1.0)])
def test_an_affine_change_gives_the_closed_form(estimator, scale, shift):
    x = pt.matrix("x")
    y = bn(x, "bn")
    rng = np.random.default_rng(0)
    a = rng.normal(1.0, 2.0, (400, 3))
    stats = popstats.estimate([x], y, [{"x": a[i:i + 50]} for i in range(0, 400, 50)],
                              estimator=estimator, mode=MODE)
    b = a * [scale, 1.0, 1.0] + [shift, 0.0, 0.0]
    moved = popstats.drift(stats, [x], y, [{"x": b[i:i + 50]}
                                           for i in range(0, 400, 50)], mode=MODE)
    record = moved["bn"]
    m0, v0 = stats["bn.mean"].value, stats["bn.var"].value
    m1, v1 = scale * m0[0] + shift, scale**2 * v0[0]
    expected0 = (0.5 * (scale**2 + scale**-2) - 1.0
                 + 0.5 * (m1 - m0[0]) ** 2 * (1 / v0[0] + 1 / v1))
    np.testing.assert_allclose(record.per_unit, [expected0, 0.0, 0.0], rtol=1e-12,
                               atol=1e-15)
    assert record.kind == "divergence" and record.names == ("bn.mean", "bn.var")
    assert record.worst[0][0] == (0,) and record.max == pytest.approx(expected0)
    # the new data's statistics are a second set for rewrite
    np.testing.assert_allclose(moved.statistics["bn.var"].value, v0 * [scale**2, 1, 1],
                               rtol=1e-12)


def test_identical_data_gives_zero_everywhere():
    inputs, y = mlp()
    data = np.random.default_rng(2).normal(size=(200, 3))
    stats = popstats.estimate(inputs, y, batches_of(data), mode=MODE)
    moved = popstats.drift(stats, inputs, y, batches_of(data), mode=MODE)
    assert len(moved) == 3
    for record in moved.values():
        assert np.all(record.per_unit == 0.0) and record.mean == record.max == 0.0
    assert moved.first_moved(0.0) is None


@pytest.mark.parametrize("k", [1, 2])
def test_a_shift_after_layer_k_leaves_earlier_layers_at_zero(k):
    inputs, y = mlp(shift_at=k)
    data = np.random.default_rng(3).normal(size=(200, 3))
    stats = popstats.estimate(inputs, y, batches_of(data), mode=MODE)
    moved = popstats.drift(stats, inputs, y, batches_of(data, s=(2.0, 0.0, -1.0)),
                           mode=MODE)
    names = [r.name for r in sorted(moved.values(), key=lambda r: r.order)]
    assert names == ["l0", "l1", "l2"]
    for j in range(k):
        assert moved[f"l{j}"].max == 0.0
    assert moved[f"l{k}"].mean > 0.1
    assert moved.first_moved(1e-9).name == f"l{k}"


def loop_model():
    """BN on each step's input (its statistics depend on that step only)."""
    xs = pt.tensor3("xs")

    def step(x_t, h):
        return h + bn(x_t, "step")

    return xs, scan(step, sequences=[xs], outputs_info=[pt.zeros(xs.shape[1:])])


def test_per_step_drift_starts_where_the_shift_starts():
    xs, hs = loop_model()
    rng = np.random.default_rng(4)
    old = [rng.normal(size=(6, 16, 2)) for _ in range(10)]
    stats = popstats.estimate([xs], hs, [{"xs": a} for a in old], mode=MODE)
    new = [a.copy() for a in old]
    for a in new:
        a[3:, :, 0] += 1.0  # from step 3 on
    moved = popstats.drift(stats, [xs], hs, [{"xs": a} for a in new], mode=MODE)
    record = moved["step"]
    assert np.all(record.per_step[:3] == 0.0) and np.all(record.per_step[3:] > 0.05)
    assert record.peak_step[0] >= 3
    assert record.steps_above(1e-12)[0].tolist() == [3]
    assert record.per_unit.shape == (6, 2)


def test_steps_beyond_the_population_compare_with_its_last_step():
    xs, hs = loop_model()
    rng = np.random.default_rng(5)
    stats = popstats.estimate([xs], hs, [{"xs": rng.normal(size=(3, 16, 2))}
                                         for _ in range(5)], mode=MODE)
    longer = [rng.normal(size=(5, 16, 2)) for _ in range(5)]
    moved = popstats.drift(stats, [xs], hs, [{"xs": a} for a in longer], mode=MODE)
    record, new = moved["step"], moved.statistics
    m0, v0 = stats["step.mean"].value, stats["step.var"].value
    for t in range(5):
        last = min(t, 2)
        expected = jeffreys(m0[last], v0[last], new["step.mean"].value[t],
                            new["step.var"].value[t])
        np.testing.assert_allclose(record.per_unit[t], expected, rtol=1e-14)


def test_standardized_difference_against_numpy():
    x = pt.matrix("x")
    top = popstats.bn_statistic(x.max(0), "top")  # no role: not a pair
    y = x - top
    rng = np.random.default_rng(6)
    old = [rng.normal(size=(20, 3)) for _ in range(12)]
    new = [a * 1.5 + 0.3 for a in old[:9]]
    stats = popstats.estimate([x], y, [{"x": a} for a in old], mode=MODE)
    record = popstats.drift(stats, [x], y, [{"x": a} for a in new], mode=MODE)["top"]
    per_batch = np.array([a.max(0) for a in new])
    expected = (np.abs(per_batch.mean(0) - np.mean([a.max(0) for a in old], 0))
                / per_batch.std(0, ddof=1))
    assert record.kind == "standardized"
    np.testing.assert_allclose(record.per_unit, expected, rtol=1e-9)


def test_table_records_and_report(tmp_path):
    inputs, y = mlp(shift_at=1)
    data = np.random.default_rng(7).normal(size=(120, 3))
    stats = popstats.estimate(inputs, y, batches_of(data), mode=MODE)
    moved = popstats.drift(stats, inputs, y, batches_of(data, s=(1.0, 1.0, 1.0)),
                           mode=MODE, worst=2)
    text = str(moved)
    assert text.splitlines()[0].split()[:3] == ["name", "kind", "order"]
    rows = moved.to_dicts()
    assert [r["mean"] for r in rows] == sorted((r["mean"] for r in rows), reverse=True)
    assert rows[0]["name"] == "l1" and len(rows[0]["worst"]) == 2
    assert "<table" in moved._repr_html_()
    if importlib.util.find_spec("matplotlib") is None:
        pytest.skip("matplotlib not installed")
    xs, hs = loop_model()
    seqs = [{"xs": np.random.default_rng(i).normal(size=(4, 8, 2))} for i in range(3)]
    looped = popstats.drift(popstats.estimate([xs], hs, seqs, mode=MODE), [xs], hs,
                            seqs, mode=MODE)
    for result, name in ((moved, "a.html"), (looped, "b.html")):
        path = result.report(tmp_path / name)
        with open(path, encoding="utf-8") as handle:
            page = handle.read()
        assert "First in the graph to move" in page or result.first_moved(0) is None
        assert page.count("data:image/png;base64,") == 1


def test_the_report_bars_use_a_log_scale_across_orders_of_magnitude():
    pytest.importorskip("matplotlib")
    from popstats._src.drift.report import plot_drift

    inputs, y = mlp(shift_at=1)
    data = np.random.default_rng(7).normal(size=(120, 3))
    stats = popstats.estimate(inputs, y, batches_of(data), mode=MODE)
    same = popstats.drift(stats, inputs, y, batches_of(data), mode=MODE)
    far = popstats.drift(stats, inputs, y, batches_of(data, s=(40.0, 0, 0)),
                         mode=MODE)
    moved = sorted(r.mean for r in far.values() if r.mean > 0)
    assert moved[-1] > 100 * moved[0]  # the case the scale is for
    assert plot_drift(far).axes[0].get_xscale() == "log"
    # the same data: no drift at all, nothing to stretch
    assert plot_drift(same).axes[0].get_xscale() == "linear"
    labels = [t.get_text() for t in plot_drift(far).axes[0].texts]
    assert labels == [f"{r.mean:.3g}" for r in far.values()]


def test_the_remedy_selects_the_new_set_per_input():
    inputs, y = mlp(shift_at=1)
    data = np.random.default_rng(8).normal(size=(200, 3))
    stats = popstats.estimate(inputs, y, batches_of(data), mode=MODE)
    moved = popstats.drift(stats, inputs, y, batches_of(data, s=(3.0, 0, 0)),
                           mode=MODE)
    k = pt.iscalar("k")
    both = popstats.rewrite(y, [stats, moved.statistics], select=k)
    f = pytensor.function([*inputs, k], both, mode=MODE)
    g = pytensor.function(inputs, popstats.rewrite(y, moved.statistics), mode=MODE)
    row, s = data[:1], np.array([3.0, 0, 0])
    np.testing.assert_array_equal(f(row, s, 1), g(row, s))
    assert not np.allclose(f(row, s, 0), g(row, s))


def test_bad_input_is_refused():
    inputs, y = mlp(shift_at=2)
    data = np.random.default_rng(9).normal(size=(80, 3))
    stats = popstats.estimate(inputs, y, batches_of(data), mode=MODE)
    with fails("drift(batches=...)", "'s'"):
        popstats.drift(stats, inputs, y, [{"x": data}], mode=MODE)
    with fails("drift(stats=...)", "PopulationStatistics", "dict"):
        popstats.drift(dict(stats), inputs, y, batches_of(data), mode=MODE)
    x = pt.matrix("x")
    with fails("drift(stats=...)", "no statistic in stats matches", "'o.mean'"):
        popstats.drift(stats, [x], x - popstats.bn_statistic(x.mean(0), "o.mean"),
                       [{"x": data}], mode=MODE)
    with fails("drift(compare=...)", "'auto'", "'divergence'"):
        popstats.drift(stats, inputs, y, batches_of(data), compare="kl")
    with fails("drift(worst=...)", "True"):
        popstats.drift(stats, inputs, y, batches_of(data), worst=True)
    with fails("drift(batches=...)", "no batches"):
        popstats.drift(stats, inputs, y, [], mode=MODE)


def test_std_pairs_and_eps():
    x = pt.matrix("x")
    m = popstats.bn_statistic(x.mean(0), "m", role="mean", group="g")
    s = popstats.bn_statistic(x.std(0), "s", role="std", group="g")
    y = (x - m) / (s + 1e-3)
    old = np.zeros((30, 2))
    old[:, 0] = np.random.default_rng(10).normal(size=30)  # unit 1 constant
    new = old + np.random.default_rng(11).normal(0.0, 0.5, old.shape)
    stats = popstats.estimate([x], y, [{"x": old}], mode=MODE)
    plain = popstats.drift(stats, [x], y, [{"x": new}], mode=MODE)["g"]
    assert plain.per_unit[1] == np.inf and np.isfinite(plain.per_unit[0])
    eps = 1e-3
    smoothed = popstats.drift(stats, [x], y, [{"x": new}], eps=eps, mode=MODE)["g"]
    v0, v1 = old.var(0) + eps, new.var(0) + eps
    dm = new.mean(0) - old.mean(0)
    expected = 0.5 * (v0 / v1 + v1 / v0) - 1 + 0.5 * dm**2 * (1 / v0 + 1 / v1)
    np.testing.assert_allclose(smoothed.per_unit, expected, rtol=1e-12)
    with fails("drift(eps=...)", "-1"):
        popstats.drift(stats, [x], y, [{"x": new}], eps=-1)


def test_new_user_findings():
    # ema: the new side is the plain average of the new batches, not a
    # running average still near its starting value
    x = pt.matrix("x")
    y = bn(x, "bn")
    rng = np.random.default_rng(12)
    old = [{"x": rng.normal(3, 2, (64, 2))} for _ in range(100)]
    new = [{"x": rng.normal(3, 2, (64, 2))} for _ in range(5)]
    ema = popstats.estimate([x], y, old, estimator=popstats.Estimator("ema", 0.1),
                            mode=MODE)
    moved = popstats.drift(ema, [x], y, new, mode=MODE)
    assert moved["bn"].max < 0.05
    np.testing.assert_allclose(moved.statistics["bn.mean"].value,
                               np.mean([b["x"].mean(0) for b in new], 0), rtol=1e-12)
    # a feature width other than the population's
    with fails("drift(batches=...)", "(3,)", "(2,)"):
        popstats.drift(ema, [x], y, [{"x": np.ones((5, 3))}], mode=MODE)
    for bad in ("label", None):
        with fails("drift(match=...)", "'structure'"):
            popstats.drift(ema, [x], y, new, match=bad)
    with fails("drift(mode=...)", "3"):
        popstats.drift(ema, [x], y, new, mode=3)
    with fails("Drift.first_moved(threshold=...)", "'a'"):
        moved.first_moved("a")
    with fails("StatisticDrift.steps_above(threshold=...)", "None"):
        moved["bn"].steps_above(None)


def test_steps_beyond_max_steps_are_compared_with_the_last_kept_step():
    xs, hs = loop_model()
    rng = np.random.default_rng(13)
    old = [{"xs": rng.normal(size=(6, 50, 2))} for _ in range(5)]
    stats = popstats.estimate([xs], hs, old, max_steps=3, mode=MODE)
    shift = np.array([0, 0, 0, 3, 3, 3.0])[:, None, None]
    new = [{"xs": b["xs"] + shift} for b in old]
    record = popstats.drift(stats, [xs], hs, new, mode=MODE)["step"]
    assert record.per_unit.shape == (6, 2)
    assert np.all(record.per_step[3:] > 5) and record.peak_step[0] >= 3
    m0, v0 = stats["step.mean"].value[2], stats["step.var"].value[2]
    moved = np.concatenate([b["xs"][5] for b in new])
    np.testing.assert_allclose(
        record.per_unit[5], jeffreys(m0, v0, moved.reshape(-1, 50, 2).mean(1).mean(0),
                                     np.mean([b["xs"][5].var(0) for b in new], 0)),
        rtol=1e-10)


def test_undefined_units_make_the_summary_nan():
    x = pt.matrix("x")
    top = popstats.bn_statistic(x.max(0), "top")
    y = x - top
    old = np.stack([np.ones(10), np.arange(10.0)], 1)
    new = np.stack([np.arange(10.0), np.arange(10.0)], 1)
    stats = popstats.estimate([x], y, [{"x": old}], mode=MODE)
    record = popstats.drift(stats, [x], y, [{"x": new}], mode=MODE)["top"]
    assert np.isnan(record.per_unit[0]) and record.per_unit[1] == 0.0
    assert np.isnan(record.mean) and np.isnan(record.max)


def _same_records(a, b):
    assert list(a) == list(b)
    for name in a:
        np.testing.assert_array_equal(a[name].per_unit, b[name].per_unit)


def test_graph_accumulation_and_checkpoints_give_the_same_drift(tmp_path):
    inputs, y = mlp(shift_at=1)
    data = np.random.default_rng(9).normal(size=(160, 3))
    stats = popstats.estimate(inputs, y, batches_of(data), mode=MODE)
    new = batches_of(data, s=(1.0, 0.5, 0.0))
    host = popstats.drift(stats, inputs, y, new, mode=MODE)
    graph = popstats.drift(stats, inputs, y, new, mode=MODE, accumulate="graph")
    for name in host:
        np.testing.assert_allclose(graph[name].per_unit, host[name].per_unit,
                                   rtol=1e-12)
    ck = tmp_path / "drift.ck.npz"

    def interrupted():
        for i, batch in enumerate(new):
            if i == 2:
                raise KeyboardInterrupt
            yield batch

    with pytest.raises(KeyboardInterrupt):
        popstats.drift(stats, inputs, y, interrupted(), mode=MODE, checkpoint=ck,
                       checkpoint_every=1)
    from popstats._src.estimation.state import load_checkpoint

    assert load_checkpoint(ck)[0].n_batches == 2  # the batches before the stop
    resumed = popstats.drift(stats, inputs, y, new, mode=MODE, checkpoint=ck)
    _same_records(resumed, host)
    assert load_checkpoint(ck)[0].n_batches == len(new)


def test_checkpoints_are_refused_for_statistics_outside_pairs(tmp_path):
    x = pt.matrix("x")
    y = x - popstats.bn_statistic(x.mean(0), "alone")
    data = np.random.default_rng(2).normal(size=(40, 2))
    stats = popstats.estimate([x], y, [{"x": data[:20]}, {"x": data[20:]}],
                              mode=MODE)
    with pytest.raises(popstats.PopstatsError, match=r"checkpoint=.*'alone'.*pair"):
        popstats.drift(stats, [x], y, [{"x": data}], mode=MODE,
                       checkpoint=tmp_path / "ck.npz")
    assert not (tmp_path / "ck.npz").exists()


def test_records_of_nn_layers_answer_to_the_label_given():
    from popstats import nn

    x = pt.tensor("x", shape=(None, 3))
    h = nn.batch_norm(x, axes=0, label="fc1").output
    y = nn.batch_norm(pt.tanh(h), axes=0, label="fc2").output
    data = np.random.default_rng(4).normal(size=(80, 3))
    batches = [{"x": data[i:i + 40]} for i in (0, 40)]
    stats = popstats.estimate([x], y, batches, mode=MODE)
    moved = popstats.drift(stats, [x], y, [{"x": data + 1.0}], mode=MODE)
    assert sorted(moved) == ["fc1", "fc2"]
    assert moved["fc1"].names == ("fc1.mean", "fc1.var")
    assert moved["fc1"].mean > 0.1 > moved["fc2"].mean >= 0.0


@pytest.mark.parametrize("offset", [0.0, 1e6, 1e4])
def test_the_standardized_difference_keeps_its_digits_far_from_zero(offset):
    x = pt.vector("x")
    y = x - popstats.bn_statistic(x.mean(), "m")  # no role: standardized
    stats = popstats.estimate([x], y, [{"x": np.full(4, offset)}], mode=MODE)
    means = offset + np.arange(4) * 1e-3
    moved = popstats.drift(stats, [x], y, [{"x": np.full(4, m)} for m in means],
                           mode=MODE)
    # |new - population| / the Bessel-corrected spread of the batch values
    want = abs(means.mean() - offset) / np.std(means - offset, ddof=1)
    np.testing.assert_allclose(moved["m"].per_unit, want, rtol=1e-6)
    assert abs(float(moved["m"].per_unit) - 1.1619) < 1e-4


def test_the_standardized_difference_per_step_with_sequences_of_other_lengths():
    xs = pt.tensor3("xs")  # (steps, batch, features)

    def step(x):
        return x - popstats.bn_statistic(x.max(0), "top")  # no role

    ys = scan(step, sequences=[xs])
    rng = np.random.default_rng(11)
    old = [rng.normal(size=(4, 10, 2)) for _ in range(3)]
    stats = popstats.estimate([xs], ys, [{"xs": a} for a in old], mode=MODE)
    new = [1e4 + rng.normal(size=(n, 10, 2)) for n in (2, 4, 3, 4, 1)]
    record = popstats.drift(stats, [xs], ys, [{"xs": a} for a in new],
                            mode=MODE)["top"]
    population = np.mean([a.max(1) for a in old], axis=0)  # (4, 2)
    for t in range(4):
        values = np.array([a[t].max(0) for a in new if len(a) > t])
        want = np.abs(values.mean(0) - population[t]) / values.std(0, ddof=1)
        np.testing.assert_allclose(record.per_unit[t], want, rtol=1e-7)
