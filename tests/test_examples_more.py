"""The estimator and nested-loop examples in their --fast setting.

``examples/feedforward_estimators.py`` and ``examples/nested_words.py`` are
each run once per session; their results are checked against NumPy
references written here, independently of popstats: per-batch statistics
combined by each estimator's rule, the exact population statistics of the
training set, NumPy forward passes of both models with the estimated
statistics, and the coverage implied by the padded batch shapes.

The examples compile with ``POPSTATS_TEST_MODE`` (FAST_COMPILE by default).
"""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from shared import MODE

pytest.importorskip("sklearn", reason="the feedforward example needs sklearn")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(name, tmp_path_factory):
    module = _load(name)
    out = tmp_path_factory.mktemp(name)
    result = module.main(
        ["--fast", "--seed", "0", "--mode", MODE, "--output", str(out)]
    )
    return module, result, out


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# ============================================================================
# feedforward_estimators.py
# ============================================================================


@pytest.fixture(scope="module")
def feedforward(tmp_path_factory):
    return _run("feedforward_estimators", tmp_path_factory)


def _mlp(p, x, stats, eps):
    def bn(a, layer, gamma, beta):
        m, v = stats[f"{layer}.mean"], stats[f"{layer}.var"]
        return gamma * (a - m) / np.sqrt(v + eps) + beta

    h1 = np.maximum(bn(x @ p["W1"], "bn1", p["gamma1"], p["beta1"]), 0)
    h2 = np.maximum(bn(h1 @ p["W2"], "bn2", p["gamma2"], p["beta2"]), 0)
    return _softmax(h2 @ p["W3"] + p["b3"])


def test_feedforward_table(feedforward):
    _, result, out = feedforward
    rows = {r["estimator"]: r for r in result["rows"]}
    assert list(rows) == ["mean", "weighted", "pooled", "unbiased", "ema(0.1)", "exact"]
    for row in rows.values():
        assert 0.0 <= row["accuracy"] <= 1.0
    # Every example once, so pooling the batches' moments gives the exact
    # moments of the first layer's inputs; a size-weighted mean of batch
    # means is the exact mean too.
    assert rows["pooled"]["bn1_mean_err"] < 1e-8
    assert rows["pooled"]["bn1_var_rel_err"] < 1e-8
    assert rows["weighted"]["bn1_mean_err"] < 1e-8
    # Uneven batches: the others are off, EMA (few batches, started at 0/1)
    # by most.
    for name in ("mean", "unbiased", "ema(0.1)"):
        assert rows[name]["bn1_mean_err"] > 1e-6
    for name in ("mean", "weighted", "unbiased", "ema(0.1)"):
        assert rows[name]["bn1_var_rel_err"] > 1e-6
    assert rows["ema(0.1)"]["bn1_var_rel_err"] > rows["pooled"]["bn1_var_rel_err"]
    # Second layer: gathered in the training network, so not exact.
    assert rows["pooled"]["bn2_mean_err"] > 1e-6
    data = json.loads((out / "feedforward_estimators.json").read_text())
    assert data["rows"] == result["rows"]
    with open(out / "feedforward_estimators.csv", newline="") as f:
        assert [r["estimator"] for r in csv.DictReader(f)] == list(rows)


def test_feedforward_estimators_match_numpy_rules(feedforward):
    _, result, _ = feedforward
    w1 = result["params"]["W1"]
    acts = [xb @ w1 for xb in result["batches"]]
    sizes = np.array([len(a) for a in acts], dtype=float)
    means = np.stack([a.mean(axis=0) for a in acts])
    vars_ = np.stack([a.var(axis=0) for a in acts])
    stats = result["stats"]
    rtol = 1e-9
    np.testing.assert_allclose(stats["mean"]["bn1.mean"], means.mean(0), rtol=rtol)
    np.testing.assert_allclose(stats["mean"]["bn1.var"], vars_.mean(0), rtol=rtol)
    w = sizes / sizes.sum()
    np.testing.assert_allclose(stats["weighted"]["bn1.mean"], w @ means, rtol=rtol)
    np.testing.assert_allclose(stats["weighted"]["bn1.var"], w @ vars_, rtol=rtol)
    all_acts = np.concatenate(acts)
    np.testing.assert_allclose(stats["pooled"]["bn1.mean"], all_acts.mean(0), rtol=rtol)
    np.testing.assert_allclose(stats["pooled"]["bn1.var"], all_acts.var(0), rtol=rtol)
    np.testing.assert_allclose(
        stats["unbiased"]["bn1.var"],
        (vars_ * (sizes / (sizes - 1))[:, None]).mean(0),
        rtol=rtol,
    )
    ema_m, ema_v = np.zeros_like(means[0]), np.ones_like(vars_[0])
    for m, v in zip(means, vars_, strict=True):
        ema_m, ema_v = 0.9 * ema_m + 0.1 * m, 0.9 * ema_v + 0.1 * v
    np.testing.assert_allclose(stats["ema(0.1)"]["bn1.mean"], ema_m, rtol=rtol)
    np.testing.assert_allclose(stats["ema(0.1)"]["bn1.var"], ema_v, rtol=rtol)


def test_feedforward_exact_population_and_accuracy(feedforward):
    module, result, _ = feedforward
    p, exact = result["params"], result["exact"]
    x_train, _, x_test, y_test = result["data"]
    # bn1's exact statistics from the training set directly.
    np.testing.assert_allclose(exact["bn1.mean"], (x_train @ p["W1"]).mean(0))
    np.testing.assert_allclose(exact["bn1.var"], (x_train @ p["W1"]).var(0))
    rows = {r["estimator"]: r for r in result["rows"]}
    for name, prob in result["probabilities"].items():
        stats = exact if name == "exact" else result["stats"][name]
        ref = _mlp(p, x_test, stats, module.EPS)
        np.testing.assert_allclose(prob, ref, rtol=1e-6, atol=1e-9)
        acc = float(np.mean(ref.argmax(1) == y_test))
        assert rows[name]["accuracy"] == pytest.approx(acc, abs=0.5 / len(y_test))
        if name != "exact":
            for layer in ("bn1", "bn2"):
                err = np.abs(stats[f"{layer}.mean"] - exact[f"{layer}.mean"]).max()
                assert rows[name][f"{layer}_mean_err"] == pytest.approx(err, rel=1e-6)
    # Trained past chance.
    assert rows["exact"]["accuracy"] > 0.5


# ============================================================================
# nested_words.py
# ============================================================================


@pytest.fixture(scope="module")
def nested(tmp_path_factory):
    return _run("nested_words", tmp_path_factory)


def _hrnn(p, batch, eps, stats=None, pooled_chars=False):
    """NumPy twin of the nested model; batch statistics, or population ones
    clamped to the last estimated step along each axis. Also returns the
    per-cell batch means of the pre-normalization activations."""
    x, cmask, wmask = batch["x"], batch["char_mask"], batch["word_mask"]
    n_words, n_chars, n = x.shape[:3]
    hidden = p["U"].shape[0]
    char_means, word_means = {}, {}

    def bn(a, label, index, gamma, beta, record):
        if stats is None:
            m, v = a.mean(0), a.var(0)
            record[index] = m
        else:
            mean, var = stats[f"{label}.mean"].value, stats[f"{label}.var"].value
            for k, i in enumerate(index):
                top = mean.shape[0] - 1 if k == 0 else mean.shape[1] - 1
                idx = min(i, top)
                mean, var = mean[idx], var[idx]
            m, v = mean, var
        return gamma * (a - m) / np.sqrt(v + eps) + beta

    s = np.zeros((n, hidden))
    for w in range(n_words):
        h = np.zeros((n, hidden))
        for c in range(n_chars):
            index = (w,) if pooled_chars else (w, c)
            a = x[w, c] @ p["W"] + h @ p["U"]
            h_new = np.tanh(bn(a, "char", index, p["gamma_c"], p["beta_c"], char_means))
            m = cmask[w, c][:, None]
            h = m * h_new + (1 - m) * h
        a = h @ p["V"] + s @ p["R"]
        s_new = np.tanh(bn(a, "word", (w,), p["gamma_w"], p["beta_w"], word_means))
        m = wmask[w][:, None]
        s = m * s_new + (1 - m) * s
    return _softmax(s @ p["W_out"] + p["b_out"]), char_means, word_means


def test_nested_table(nested):
    _, result, out = nested
    rows = {r["row"]: r for r in result["rows"]}
    assert list(rows) == [
        "batch_64",
        "batch_1",
        "population_64",
        "population_1",
        "pooled_64",
        "pooled_1",
    ]
    labels = result["labels"]
    for key, row in rows.items():
        assert row["accuracy"] == pytest.approx(
            np.mean(result["predictions"][key] == labels), abs=0.5 / len(labels)
        )
    # Batch statistics of one sentence: the input is invisible.
    assert len(np.unique(result["predictions"]["batch_1"])) == 1
    assert rows["population_1"]["accuracy"] > rows["batch_1"]["accuracy"]
    assert rows["population_64"]["accuracy"] > 0.7
    data = json.loads((out / "nested_words.json").read_text())
    assert data["rows"] == result["rows"]


def test_nested_population_predictions_do_not_depend_on_batch_size(nested):
    _, result, _ = nested
    pred, prob = result["predictions"], result["probabilities"]
    for kind in ("population", "pooled"):
        np.testing.assert_array_equal(pred[f"{kind}_1"], pred[f"{kind}_64"])
        np.testing.assert_allclose(
            prob[f"{kind}_1"], prob[f"{kind}_64"], rtol=1e-9, atol=1e-12
        )


def test_nested_coverage_two_levels(nested):
    _, result, _ = nested
    stats, pooled = result["stats"], result["stats_pooled"]
    shapes = [b["x"].shape[:2] for b in result["estimation_batches"]]
    n_words = max(w for w, _ in shapes)
    n_chars = max(c for _, c in shapes)
    hidden = result["params"]["U"].shape[0]
    want = np.zeros((n_words, n_chars), dtype=np.int64)
    for w, c in shapes:
        want[:w, :c] += 1
    for name in ("char.mean", "char.var"):
        assert stats[name].value.shape == (n_words, n_chars, hidden)
        np.testing.assert_array_equal(stats[name].coverage, want)
        assert stats[name].n_batches == len(shapes)
        assert pooled[name].value.shape == (n_words, hidden)
        np.testing.assert_array_equal(pooled[name].coverage, want[:, 0])
    for name in ("word.mean", "word.var"):
        assert stats[name].value.shape == (n_words, hidden)
        np.testing.assert_array_equal(stats[name].coverage, want[:, 0])
    # Bucketed batches: not every batch reaches the last word step.
    assert want[-1, 0] < len(shapes)


def test_nested_statistics_match_numpy(nested):
    module, result, _ = nested
    p, eps = result["params"], module.EPS
    stats = result["stats"]
    sums, counts = {}, {}
    for batch in result["estimation_batches"]:
        _, char_means, word_means = _hrnn(p, batch, eps)
        for key, m in char_means.items():
            sums[key] = sums.get(key, 0) + m
            counts[key] = counts.get(key, 0) + 1
        for (w,), m in word_means.items():
            sums["w", w] = sums.get(("w", w), 0) + m
            counts["w", w] = counts.get(("w", w), 0) + 1
    for key, total in sums.items():
        if key[0] == "w":
            np.testing.assert_allclose(
                stats["word.mean"].value[key[1]], total / counts[key], rtol=1e-7
            )
        else:
            np.testing.assert_allclose(
                stats["char.mean"].value[key], total / counts[key], rtol=1e-7
            )


def test_nested_probabilities_match_numpy(nested):
    module, result, _ = nested
    p, eps = result["params"], module.EPS
    batch = module.pad_batch(result["test"])
    ref, _, _ = _hrnn(p, batch, eps, result["stats"])
    np.testing.assert_allclose(
        ref, result["probabilities"]["population_64"], rtol=1e-6, atol=1e-9
    )
    ref, _, _ = _hrnn(p, batch, eps, result["stats_pooled"], pooled_chars=True)
    np.testing.assert_allclose(
        ref, result["probabilities"]["pooled_64"], rtol=1e-6, atol=1e-9
    )
