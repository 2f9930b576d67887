"""popstats.nn: batch_norm and running_average_updates against NumPy."""

from __future__ import annotations

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest

import popstats
from popstats import nn

MODE = "FAST_COMPILE"
EPS = 1e-5
FX = pytensor.config.floatX
TOL = {"rtol": 1e-5, "atol": 1e-6} if FX == "float64" else {"rtol": 1e-4, "atol": 1e-4}


def fn(inputs, outputs, mode=MODE, **kw):
    return pytensor.function(inputs, outputs, mode=mode, on_unused_input="ignore", **kw)


def rng(seed=0):
    return np.random.default_rng(seed)


def np_bn(x, axes, mask=None, gamma=1.0, beta=0.0):
    """Reference batch norm: returns (y, mean, var, count) over ``axes``."""
    w = np.ones_like(x) if mask is None else np.broadcast_to(mask, x.shape) * 1.0
    count = w.sum(axis=axes, keepdims=True)
    mean = (x * w).sum(axis=axes, keepdims=True) / count
    var = (((x - mean) ** 2) * w).sum(axis=axes, keepdims=True) / count
    y = gamma * (x - mean) / np.sqrt(var + EPS) + beta
    return y, mean.squeeze(axis=axes), var.squeeze(axis=axes), count.reshape(-1)[0]


def marks(stat):
    op = stat.owner.op
    return op.label, op.role, op.group


def test_feed_forward_output_and_marks():
    x = pt.tensor("x", shape=(None, 3), dtype=FX)
    bn = nn.batch_norm(x, axes=0, label="fc1")
    assert isinstance(bn, nn.BatchNorm)
    assert [p.name for p in bn.params] == ["fc1.gamma", "fc1.beta"]
    assert bn.gamma is bn.params[0] and bn.beta is bn.params[1]
    lm, rm, gm = marks(bn.mean)
    lv, rv, gv = marks(bn.var)
    assert (lm, rm, lv, rv) == ("fc1.mean", "mean", "fc1.var", "var")
    assert gm == gv and gm.startswith("fc1")
    count = popstats.export(bn.output).counts
    data = rng().normal(size=(5, 3)).astype(FX)
    bn.gamma.set_value(np.array([1.0, 2.0, 0.5], FX))
    bn.beta.set_value(np.array([0.0, -1.0, 3.0], FX))
    y, m, v, c0, c1 = fn([x], [bn.output, bn.mean, bn.var, *count])(data)
    ry, rm_, rv_, rc = np_bn(data, (0,), gamma=np.array([1, 2, 0.5]),
                            beta=np.array([0, -1, 3]))
    np.testing.assert_allclose(y, ry, **TOL)
    np.testing.assert_allclose(m, rm_, **TOL)
    np.testing.assert_allclose(v, rv_, **TOL)
    assert int(c0) == int(c1) == rc == 5


def test_conv_nchw():
    x = pt.tensor("x", shape=(None, 2, None, None), dtype=FX)
    bn = nn.batch_norm(x, axes=(0, 2, 3), label="conv")
    assert bn.gamma.get_value().shape == (2,)
    eg = popstats.export(bn.output)
    data = rng(1).normal(2.0, 3.0, size=(3, 2, 4, 5)).astype(FX)
    y, m, v, c = fn([x], [bn.output, bn.mean, bn.var, eg.counts[0]])(data)
    ry, rm, rv, rc = np_bn(data, (0, 2, 3))
    np.testing.assert_allclose(y, ry, **TOL)
    np.testing.assert_allclose(m, rm, **TOL)
    np.testing.assert_allclose(v, rv, **TOL)
    assert m.shape == (2,) and int(c) == rc == 60


def ragged(lengths, t, b_feat=2, seed=2):
    data = rng(seed).normal(1.0, 2.0, size=(t, len(lengths), b_feat)).astype(FX)
    mask = (np.arange(t)[:, None] < np.asarray(lengths)[None, :]).astype(FX)
    return data, mask


@pytest.mark.parametrize("full_ndim", [False, True])
def test_masked_ragged(full_ndim):
    x = pt.tensor("x", shape=(None, None, 2), dtype=FX)
    mask = pt.tensor("mask", shape=(None, None, 1) if full_ndim else (None, None),
                     dtype=FX)
    bn = nn.batch_norm(x, axes=(0, 1), mask=mask, label="seq")
    eg = popstats.export(bn.output)
    data, m = ragged([4, 2, 1], 4)
    # padded positions must not matter
    data[m == 0] = 1e3
    mv = m[..., None] if full_ndim else m
    f = fn([x, mask], [bn.output, bn.mean, bn.var, eg.counts[0]])
    y, mean, var, c = f(data, mv)
    valid = data[m == 1]
    np.testing.assert_allclose(mean, valid.mean(axis=0), **TOL)
    np.testing.assert_allclose(var, valid.var(axis=0), **TOL)
    assert int(c) == 7
    ry = (data - valid.mean(0)) / np.sqrt(valid.var(0) + EPS)
    np.testing.assert_allclose(y[m == 1], ry[m == 1], **TOL)


def scan_model(max_len=None):
    """A recurrent-style model: batch norm per step, over the batch, masked."""
    x = pt.tensor("x", shape=(None, None, 2), dtype=FX)  # (time, batch, feat)
    mask = pt.tensor("mask", shape=(None, None), dtype=FX)
    gamma, beta = nn.bn_params((2,), label="rnn")

    def step(x_t, m_t, h, g, b):
        bn = nn.batch_norm(x_t + h, axes=0, gamma=g, beta=b, mask=m_t, label="rnn")
        return pt.tanh(bn.output) * m_t[:, None]

    h = pytensor.scan(step, sequences=[x, mask],
                      outputs_info=[pt.zeros_like(x[0])],
                      non_sequences=[gamma, beta], return_updates=False)
    return x, mask, h, (gamma, beta)


def np_scan(data, m, gamma=1.0, beta=0.0, pop=None):
    """NumPy twin of scan_model; returns (h, per-step means, per-step vars)."""
    h = np.zeros_like(data[0])
    hs, means, vars_ = [], [], []
    for t in range(len(data)):
        z = data[t] + h
        if pop is None:
            _, mu, var, _ = np_bn(z, (0,), mask=m[t][:, None])
        else:
            k = min(t, len(pop[0]) - 1)
            mu, var = pop[0][k], pop[1][k]
        h = np.tanh(gamma * (z - mu) / np.sqrt(var + EPS) + beta) * m[t][:, None]
        hs.append(h)
        means.append(mu)
        vars_.append(var)
    return np.array(hs), np.array(means), np.array(vars_)


def test_scan_per_step_statistics():
    x, mask, h, _ = scan_model()
    eg = popstats.export(h)
    labels = [s.label for s in eg.sites]
    assert sorted(labels) == ["rnn.mean", "rnn.var"]
    assert all(s.depth == 1 and s.counted for s in eg.sites)
    data, m = ragged([5, 3, 2], 5, seed=3)
    out = fn([x, mask], [*eg.replaced, *eg.outputs, eg.counts[0]])(data, m)
    rh, rmean, rvar = np_scan(data, m)
    np.testing.assert_allclose(out[0], rh, **TOL)
    np.testing.assert_allclose(out[1 + labels.index("rnn.mean")], rmean, **TOL)
    np.testing.assert_allclose(out[1 + labels.index("rnn.var")], rvar, **TOL)
    np.testing.assert_array_equal(out[3], m.sum(axis=1))


def test_pooled_estimator_equals_all_data():
    x = pt.tensor("x", shape=(None, None, 2), dtype=FX)
    mask = pt.tensor("mask", shape=(None, None), dtype=FX)
    bn = nn.batch_norm(x, axes=(0, 1), mask=mask, label="seq")
    batches, valid = [], []
    for i, (lengths, t) in enumerate([([3, 1], 3), ([6, 2, 4], 6), ([1], 1)]):
        data, m = ragged(lengths, t, seed=10 + i)
        batches.append((data, m))
        valid.append(data[m == 1])
    valid = np.concatenate(valid)
    stats = popstats.estimate([x, mask], bn.output, batches, mode=MODE,
                              estimator="pooled")
    np.testing.assert_allclose(stats["seq.mean"].value, valid.mean(0), **TOL)
    np.testing.assert_allclose(stats["seq.var"].value, valid.var(0), **TOL)


def test_pooled_feed_forward_batches_of_different_sizes():
    x = pt.tensor("x", shape=(None, 3), dtype=FX)
    bn = nn.batch_norm(x, axes=0)
    batches = [rng(i).normal(i, 1 + i, size=(n, 3)).astype(FX)
               for i, n in enumerate([2, 7, 4])]
    stats = popstats.estimate([x], bn.output, [(b,) for b in batches], mode=MODE,
                              estimator="pooled")
    alldata = np.concatenate(batches)
    np.testing.assert_allclose(stats["bn.mean"].value, alldata.mean(0), **TOL)
    np.testing.assert_allclose(stats["bn.var"].value, alldata.var(0), **TOL)


def test_gradients_wrt_gamma_beta():
    x = pt.tensor("x", shape=(None, 2), dtype=FX)
    w = pt.tensor("w", shape=(None, 2), dtype=FX)
    bn = nn.batch_norm(x, axes=0)
    grads = pytensor.grad((bn.output * w).sum(), list(bn.params))
    data = rng(4).normal(size=(4, 2)).astype(FX)
    wv = rng(5).normal(size=(4, 2)).astype(FX)
    g_gamma, g_beta = fn([x, w], grads)(data, wv)
    xhat = np_bn(data, (0,))[0]
    np.testing.assert_allclose(g_gamma, (wv * xhat).sum(0), **TOL)
    np.testing.assert_allclose(g_beta, wv.sum(0), **TOL)


@pytest.mark.parametrize("mode", [MODE, None])  # None: the default (Numba) mode
def test_running_average_feed_forward(mode):
    x = pt.tensor("x", shape=(None, 2), dtype=FX)
    bn = nn.batch_norm(x, axes=0, label="fc")
    y, updates, running = nn.running_average_updates(bn.output, momentum=0.3)
    train = fn([x], y, updates=updates, mode=mode)
    mean, var = np.zeros(2), np.ones(2)
    batches = [rng(i).normal(i, 2.0, size=(3 + i, 2)).astype(FX) for i in range(3)]
    for b in batches:
        out = train(b)
        ry, bm, bv, _ = np_bn(b, (0,))
        np.testing.assert_allclose(out, ry, **TOL)
        mean = 0.7 * mean + 0.3 * bm
        var = 0.7 * var + 0.3 * bv
    np.testing.assert_allclose(running.variables["fc.mean"].get_value(), mean, **TOL)
    np.testing.assert_allclose(running.variables["fc.var"].get_value(), var, **TOL)
    stats = running.as_statistics()
    assert stats["fc.var"].estimator == popstats.Estimator("ema", momentum=0.3)
    assert stats["fc.mean"].n_batches == 3
    # bound into the inference graph
    infer = fn([x], popstats.rewrite(bn.output, stats), mode=mode)
    test = rng(9).normal(size=(2, 2)).astype(FX)
    np.testing.assert_allclose(infer(test), (test - mean) / np.sqrt(var + EPS), **TOL)
    running.reset()
    assert running.variables["fc.var"].get_value().tolist() == [1.0, 1.0]
    assert int(running.n_batches.get_value()) == 0


def test_running_average_scan_variable_lengths_and_bind():
    x, mask, h, _ = scan_model()
    max_steps = 4
    h2, updates, running = nn.running_average_updates(h, momentum=0.5,
                                                      max_steps=max_steps)
    train = fn([x, mask], h2, updates=updates)
    run_m = np.zeros((max_steps, 2))
    run_v = np.ones((max_steps, 2))
    cov = np.zeros(max_steps, int)
    for i, lengths in enumerate([[3, 1], [6, 2, 5], [2, 2]]):
        data, m = ragged(lengths, max(lengths), seed=20 + i)
        np.testing.assert_allclose(train(data, m), np_scan(data, m)[0], **TOL)
        _, bm, bv = np_scan(data, m)
        n = min(len(data), max_steps)
        run_m[:n] = 0.5 * run_m[:n] + 0.5 * bm[:n]
        run_v[:n] = 0.5 * run_v[:n] + 0.5 * bv[:n]
        cov[:n] += 1
    np.testing.assert_allclose(running.variables["rnn.mean"].get_value(), run_m, **TOL)
    np.testing.assert_allclose(running.variables["rnn.var"].get_value(), run_v, **TOL)
    np.testing.assert_array_equal(running.coverage["rnn.var"].get_value(), cov)
    stats = running.as_statistics()
    assert stats["rnn.mean"].value.shape == (max_steps, 2)
    np.testing.assert_array_equal(stats["rnn.mean"].coverage, cov)

    # an inference graph from a proper estimation pass, then the running values
    # bound into it; sequences longer than max_steps reuse the last step
    est = popstats.estimate([x, mask], h, [ragged([2], 2, seed=30)], mode=MODE)
    h_inf = popstats.rewrite(h, est)
    infer = fn([x, mask], h_inf)
    popstats.bind(h_inf, stats)
    data, m = ragged([6, 3], 6, seed=31)
    ref = np_scan(data, m, pop=(run_m, run_v))[0]
    np.testing.assert_allclose(infer(data, m), ref, **TOL)


def test_running_average_cut_to_reached_steps():
    x, mask, h, _ = scan_model()
    h2, updates, running = nn.running_average_updates(h, max_steps=10)
    train = fn([x, mask], h2, updates=updates)
    data, m = ragged([3, 2], 3, seed=40)
    train(data, m)
    stats = running.as_statistics()
    assert stats["rnn.var"].value.shape == (3, 2)
    np.testing.assert_array_equal(stats["rnn.var"].coverage, [1, 1, 1])


# ---------------------------------------------------------------- errors


def err(match):
    return pytest.raises(popstats.PopstatsError, match=match)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"axes": 2}, r"axes=.*out of range"),
        ({"axes": (0, -3)}, r"axes=.*out of range"),
        ({"axes": (0, 0)}, r"axes=.*duplicated"),
        ({"axes": (0, -2)}, r"axes=.*duplicated"),
        ({"axes": (0, 1)}, r"axes=.*keep at least one"),
        ({"axes": ()}, r"axes=.*non-empty"),
        ({"axes": 0.5}, r"axes=.*int"),
        ({"axes": True}, r"axes=.*int"),
        ({"axes": 0, "epsilon": -1e-3}, r"epsilon=.*>= 0"),
        ({"axes": 0, "epsilon": "1e-5"}, r"epsilon="),
        ({"axes": 0, "label": ""}, r"label="),
        ({"axes": 0, "mask": np.ones((2, 3, 4))}, r"mask=.*3-d mask"),
        ({"axes": 0, "mask": np.ones((3,))}, r"mask=.*broadcast"),
        ({"axes": 0, "mask": np.ones((4, 3))}, r"mask=.*kept axes"),
        ({"axes": 0, "mask": "m"}, r"mask="),
        ({"axes": 0, "gamma": np.ones((2, 2, 2))}, r"gamma=.*kept axes"),
        ({"axes": 0, "beta": "b"}, r"beta="),
    ],
)
def test_batch_norm_errors(kwargs, match):
    x = pt.tensor("x", shape=(4, 3), dtype=FX)
    with err(match) as info:
        nn.batch_norm(x, **kwargs)
    assert "batch_norm(" in str(info.value)


def test_batch_norm_non_variable_and_unknown_shape():
    with err(r"batch_norm\(x=...\).*tensor variable"):
        nn.batch_norm(np.ones((2, 3)), axes=0)
    with err(r"gamma=None.*static shape"):
        nn.batch_norm(pt.matrix("x"), axes=0)
    # given parameters lend their static shape to the statistics
    gamma, beta = nn.bn_params(3)
    bn = nn.batch_norm(pt.matrix("x", dtype=FX), axes=0, gamma=gamma, beta=beta)
    assert bn.params == () and bn.mean.type.shape == (3,)


@pytest.mark.parametrize("shape", [0, -1, (2, 0), True, "3", (1.5,), ()])
def test_bn_params_errors(shape):
    with err(r"bn_params\(shape=...\)"):
        nn.bn_params(shape)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"momentum": 0}, r"momentum=.*\(0, 1\]"),
        ({"momentum": 1.5}, r"momentum="),
        ({"momentum": True}, r"momentum="),
        ({"momentum": "0.1"}, r"momentum="),
        ({"max_steps": 0}, r"max_steps=.*positive int"),
        ({"max_steps": 2.0}, r"max_steps="),
        ({"max_steps": True}, r"max_steps="),
    ],
)
def test_running_average_errors(kwargs, match):
    x = pt.tensor("x", shape=(None, 2), dtype=FX)
    with err(match):
        nn.running_average_updates(nn.batch_norm(x, axes=0).output, **kwargs)


def test_running_average_graph_errors():
    _, _, h, _ = scan_model()
    with err(r"max_steps=None.*inside"):
        nn.running_average_updates(h)
    x = pt.matrix("x", dtype=FX)
    y = x - popstats.bn_statistic(x.mean(axis=0), label="m")
    with err(r"no static shape"):
        nn.running_average_updates(y)
    with err(r"export"):
        nn.running_average_updates(x * 2)
    z = pt.tensor("z", shape=(None, 2), dtype=FX)
    _, _, running = nn.running_average_updates(nn.batch_norm(z, axes=0).output)
    with err(r"as_statistics\(\).*no update"):
        running.as_statistics()


@pytest.mark.parametrize("time", ["step", "pooled"])
def test_fully_masked_trailing_steps_are_not_reached(time):
    """Fixed-length padding: steps where the mask leaves nothing are skipped."""
    x, mask = pt.tensor3("x"), pt.matrix("mask")  # (time, batch, feat), (time, batch)
    gamma, beta = nn.bn_params(2, "rnn")

    def step(xt, mt, g, b):
        return nn.batch_norm(xt, axes=0, gamma=g, beta=b, mask=mt, label="rnn").output

    y = pytensor.scan(step, sequences=[x, mask], non_sequences=[gamma, beta],
                      return_updates=False)
    rng = np.random.default_rng(3)
    lengths = [(2, 3), (4, 1)]  # real lengths of each sequence, padded to 5 steps
    batches = []
    for lens in lengths:
        m = np.zeros((5, len(lens)))
        for j, n in enumerate(lens):
            m[:n, j] = 1.0
        batches.append({"x": rng.normal(2.0, 3.0, (5, len(lens), 2)), "mask": m})
    stats = popstats.estimate([x, mask], y, batches, time=time, mode=MODE)
    mean = stats["rnn.mean"]
    # NumPy: per step, the masked mean of each batch that has a real element
    per_step = [[] for _ in range(5)]
    per_batch = []
    for b in batches:
        for t in range(5):
            rows = b["x"][t][b["mask"][t] > 0]
            if len(rows):
                per_step[t].append(rows.mean(0))
        per_batch.append(b["x"][b["mask"] > 0].mean(0))
    if time == "step":
        np.testing.assert_array_equal(mean.coverage, [len(p) for p in per_step])
        for t in range(4):
            np.testing.assert_allclose(mean.value[t], np.mean(per_step[t], 0))
        np.testing.assert_allclose(mean.value[4], mean.value[3])  # filled
    else:
        # pooled over time: each batch's mean of all its real elements (the
        # masked steps weigh nothing), averaged over batches
        np.testing.assert_allclose(mean.value, np.mean(per_batch, 0), rtol=1e-12)
    assert np.isfinite(stats["rnn.var"].value).all()


def test_running_averages_skip_fully_masked_steps():
    """A step where the mask leaves nothing keeps its running value."""
    x, mask = pt.tensor3("x"), pt.matrix("mask")
    gamma, beta = nn.bn_params(2, "rnn")

    def step(xt, mt, g, b):
        return nn.batch_norm(xt, axes=0, gamma=g, beta=b, mask=mt, label="rnn").output

    y = pytensor.scan(step, sequences=[x, mask], non_sequences=[gamma, beta],
                      return_updates=False)
    _, updates, running = nn.running_average_updates(y, momentum=0.5, max_steps=3)
    train = pytensor.function([x, mask], [], updates=updates, mode=MODE)
    rng = np.random.default_rng(4)
    data = rng.normal(1.0, 2.0, (3, 2, 2))
    m = np.array([[1.0, 1.0], [1.0, 0.0], [0.0, 0.0]])  # step 2 fully padded
    train(data, m)
    stats = running.as_statistics()
    mean = stats["rnn.mean"]
    np.testing.assert_array_equal(mean.coverage, [1, 1])  # step 2 never reached
    np.testing.assert_allclose(mean.value[0], 0.5 * data[0].mean(0))
    np.testing.assert_allclose(mean.value[1], 0.5 * data[1, 0])
    assert np.isfinite(stats["rnn.var"].value).all()
    np.testing.assert_allclose(running.variables["rnn.mean"].get_value()[2], 0.0)
