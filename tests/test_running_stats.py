"""update_running_stats into popstats.nn's running averages, against NumPy.

Runs on every Python line (the pytensor-ml half is
``tests/test_pytensor_ml_running.py``).
"""

from __future__ import annotations

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest

import popstats
from popstats import nn


def _mlp():
    x = pt.tensor("x", shape=(None, 3))
    bn = nn.batch_norm(x * 2.0 + 1.0, axes=0, label="fc")
    return x, bn


def _batches(n=5, rows=(4, 6, 8, 4, 10)):
    rng = np.random.default_rng(0)
    return [rng.normal(1.0, 2.0, (rows[i], 3)) for i in range(n)]


def test_feedforward_values_are_the_mean_of_batch_moments():
    x, bn = _mlp()
    y, _, running = nn.running_average_updates(bn.output)
    batches = _batches()
    written = popstats.update_running_stats([x], y, [{"x": b} for b in batches],
                                            running=running)
    h = [2 * b + 1 for b in batches]
    mean, var = np.mean([a.mean(0) for a in h], 0), np.mean([a.var(0) for a in h], 0)
    np.testing.assert_allclose(running.variables["fc.mean"].get_value(), mean,
                               rtol=1e-12)
    np.testing.assert_allclose(running.variables["fc.var"].get_value(), var,
                               rtol=1e-12)
    assert written["running.fc.var"].statistics == ("fc.var",)
    assert written["running.fc.var"].source == "popstats.nn"
    assert int(running.n_batches.get_value()) == 5
    # what the running averages give rewrite now is the estimate
    stats = running.as_statistics()
    np.testing.assert_allclose(stats["fc.mean"].value, mean, rtol=1e-12)
    # the training graph is unchanged: it still normalizes with batch moments
    f = pytensor.function([x], y)
    z = f(batches[0])
    np.testing.assert_allclose(z.mean(0), 0.0, atol=1e-12)


def test_unbiased_running_averages_take_the_unbiased_estimator():
    x, bn = _mlp()
    y, _, running = nn.running_average_updates(bn.output, unbiased=True)
    batches = _batches()
    feed = [{"x": b} for b in batches]
    with pytest.raises(popstats.PopstatsError, match=r"estimator='unbiased'"):
        popstats.update_running_stats([x], y, feed, running=running)
    assert running.variables["fc.var"].get_value().tolist() == [1.0] * 3  # untouched
    popstats.update_running_stats([x], y, feed, running=running,
                                  estimator="unbiased")
    h = [2 * b + 1 for b in batches]
    np.testing.assert_allclose(running.variables["fc.var"].get_value(),
                               np.mean([a.var(0, ddof=1) for a in h], 0), rtol=1e-12)


def test_per_step_running_averages_get_per_step_values():
    x = pt.tensor3("x")  # (time, batch, 2)
    gamma, beta = nn.bn_params(2, label="rnn")

    def step(x_t, h, g, b):
        bn = nn.batch_norm(x_t + 0.5 * h, axes=0, gamma=g, beta=b,
                           label="rnn")
        return pt.tanh(bn.output)

    h = pytensor.scan(step, sequences=[x], outputs_info=[pt.zeros((x.shape[1], 2))],
                      non_sequences=[gamma, beta], return_updates=False)
    y, _, running = nn.running_average_updates(h, max_steps=6)
    rng = np.random.default_rng(1)
    batches = [rng.normal(1.0, 1.0, (4, 5, 2)) for _ in range(3)]
    popstats.update_running_stats([x], y, [{"x": b} for b in batches],
                                  running=running)
    expected = []
    for b in batches:
        state, per = np.zeros((5, 2)), []
        for t in range(4):
            a = b[t] + 0.5 * state
            per.append((a.mean(0), a.var(0)))
            state = np.tanh((a - a.mean(0)) / np.sqrt(a.var(0) + 1e-5))
        expected.append(per)
    mean = np.mean([[p[0] for p in per] for per in expected], 0)
    got = running.variables["rnn.mean"].get_value()
    assert got.shape == (6, 2)
    np.testing.assert_allclose(got[:4], mean, rtol=1e-10)
    np.testing.assert_allclose(got[4:], mean[[-1, -1]], rtol=1e-10)  # last repeated
    assert running.coverage["rnn.mean"].get_value().tolist() == [3, 3, 3, 3, 0, 0]
    stats = running.as_statistics()
    assert stats["rnn.mean"].value.shape == (4, 2)


def test_refusals_write_nothing():
    x, bn = _mlp()
    feed = [{"x": b} for b in _batches()]
    with pytest.raises(popstats.PopstatsError, match="no running variable"):
        popstats.update_running_stats([x], bn.output, feed)
    with pytest.raises(popstats.PopstatsError, match=r"running=\.\.\.\): expected"):
        popstats.update_running_stats([x], bn.output, feed, running={"a": 1})
    with pytest.raises(TypeError, match="estimatr"):
        popstats.update_running_stats([x], bn.output, feed, estimatr="mean")
