"""``examples/pytensor_ml_digits.py`` in its --fast setting, against NumPy.

Skipped as a whole where pytensor-ml is not installed (the Python 3.11 line;
pytensor-ml needs Python >= 3.12), like ``tests/test_pytensor_ml.py``. The
script trains its two pytensor-ml models (a conv net, a BN-LSTM in a
``Recurrent`` cell) once per module with pytensor-ml's own training function
and evaluates four ways of normalizing at inference. Checked here,
independently of popstats:

* the table has every row and column, and each accuracy is that of the
  predictions returned;
* the three ways that normalize with fixed statistics (pytensor-ml's running
  averages, ``update_running_stats``, the rewrite) predict the same at batch
  sizes 1 and 256, while batch statistics at batch size 1 see only the
  example itself (the fully connected batch norms then output their shift:
  one class for every digit);
* NumPy forward passes of both models with the statistics that popstats
  estimated (the mean of the training batches' statistics; per step in the
  loop, clamped past the last estimated step), with the values
  ``update_running_stats`` wrote, and with pytensor-ml's running averages
  reproduce the script's probabilities; the estimated and written statistics
  are recomputed from the estimation batches.

The example compiles with ``POPSTATS_TEST_MODE`` (FAST_COMPILE by default,
like the other example tests): with an empty cache the default Numba
backend needs about a minute per training function.
"""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from shared import MODE

pytest.importorskip("pytensor_ml")
pytest.importorskip("sklearn", reason="the example needs scikit-learn's digits")

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "pytensor_ml_digits.py"
EPS = 1e-5  # pytensor-ml's BatchNorm default
ROWS = [  # (model, steps, batch size)
    ("conv", 8, 256),
    ("conv", 8, 1),
    ("rnn", 8, 256),
    ("rnn", 8, 1),
    ("rnn", 20, 256),
    ("rnn", 20, 1),
]
WAYS = ["batch", "running", "update_running_stats", "rewrite"]


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    spec = importlib.util.spec_from_file_location("pytensor_ml_digits", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path_factory.mktemp("pytensor_ml_digits")
    argv = ["--fast", "--seed", "0", "--mode", MODE, "--output", str(out)]
    result = module.main(argv)
    return module, result, out


# ----------------------------------------------------------------------------
# NumPy references
# ----------------------------------------------------------------------------


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


class _Norm:
    """Batch norm by name: batch statistics (recorded), or given ones.

    ``given[label]`` is ``(mean, var)``, each either one vector or one per
    step (then clamped to the last step)."""

    def __init__(self, p, given=None):
        self.p, self.given, self.seen = p, given, {}

    def __call__(self, a, label, axes, t=None):
        if self.given is None:
            mean, var = a.mean(axis=axes), a.var(axis=axes)
            self.seen.setdefault(label, []).append((mean, var))
        else:
            mean, var = self.given[label]
            if mean.ndim == 2:
                mean, var = mean[min(t, len(mean) - 1)], var[min(t, len(var) - 1)]
        z = (a - mean) / np.sqrt(var + EPS)
        return z * self.p[f"{label}_scale"] + self.p[f"{label}_loc"]


def conv_net(p, x, norm):
    """Logits of the conv net; ``x`` (n, 8, 8, 1)."""
    windows = np.lib.stride_tricks.sliding_window_view(x[..., 0], (3, 3), axis=(1, 2))
    a = np.einsum("nijkl,klo->nijo", windows, p["conv_W"][:, :, 0, :])  # valid
    a = np.maximum(norm(a, "conv_bn", (0, 1, 2)), 0)
    n, _, _, c = a.shape
    pooled = a.reshape(n, 3, 2, 3, 2, c).max(axis=(2, 4)).reshape(n, -1)
    h = np.maximum(norm(pooled @ p["fc_W"], "fc_bn", 0), 0)
    return h @ p["head_W"] + p["head_b"]


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def bn_lstm(p, x, norm):
    """Logits of the BN-LSTM over the rows; ``x`` (n, steps, 8)."""
    n_hidden = p["lstm_Wh_W"].shape[0]
    h = c = np.zeros((x.shape[0], n_hidden))
    for t in range(x.shape[1]):
        pre = (norm(h @ p["lstm_Wh_W"], "lstm_bn_h", 0, t)
               + norm(x[:, t] @ p["lstm_Wx_W"], "lstm_bn_x", 0, t))
        i, f, o, g = np.split(pre, 4, axis=1)
        c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
        h = _sigmoid(o) * np.tanh(norm(c, "lstm_bn_c", 0, t))
    return h @ p["head_W"] + p["head_b"]


FORWARD = {"conv": conv_net, "rnn": bn_lstm}


def _batch_statistics(name, res):
    """Per label, the NumPy batch statistics of every estimation batch:
    a list (per batch) of lists (per step: one entry for conv) of (mean, var)."""
    per_batch = {}
    for batch in res["estimation_batches"]:
        norm = _Norm(res["params"])
        FORWARD[name](res["params"], batch["X"], norm)
        for label, seen in norm.seen.items():
            per_batch.setdefault(label, []).append(seen)
    return per_batch


def _pairs(values, labels):
    return {label: (values[f"{label}.mean"], values[f"{label}.var"])
            for label in labels}


def _written(res, labels):
    w = res["written"]
    return {label: (w[f"{label}_running_mean"], w[f"{label}_running_var"])
            for label in labels}


LABELS = {"conv": ["conv_bn", "fc_bn"], "rnn": ["lstm_bn_x", "lstm_bn_h", "lstm_bn_c"]}


# ----------------------------------------------------------------------------
# The table
# ----------------------------------------------------------------------------


def test_table_has_every_row_and_column(example):
    _, result, out = example
    rows = result["rows"]
    assert [(r["model"], r["steps"], r["batch_size"]) for r in rows] == ROWS
    for row in rows:
        assert list(row) == ["model", "steps", "batch_size", *WAYS]
        res = result["models"][row["model"]]
        suffix = "_long" if row["steps"] == 20 else ""
        for way in WAYS:
            pred = res["predictions"][f"{way}_{row['batch_size']}{suffix}"]
            assert row[way] == pytest.approx(np.mean(pred == res["labels"]),
                                             abs=0.5 / len(pred))
    assert json.loads((out / "pytensor_ml_digits.json").read_text())["rows"] == rows
    with open(out / "pytensor_ml_digits.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == len(rows)
    assert result["summary"]["mode"] == MODE


def test_fixed_statistics_do_not_depend_on_batch_size(example):
    _, result, _ = example
    for name, res in result["models"].items():
        prob = res["probabilities"]
        for way in ("running", "update_running_stats", "rewrite"):
            for suffix in ([""] if name == "conv" else ["", "_long"]):
                np.testing.assert_allclose(
                    prob[f"{way}_1{suffix}"], prob[f"{way}_256{suffix}"],
                    rtol=1e-9, atol=1e-12, err_msg=f"{name} {way}{suffix}",
                )
    for row in result["rows"]:
        if row["batch_size"] == 1:
            twin = next(r for r in result["rows"] if r["batch_size"] == 256
                        and (r["model"], r["steps"]) == (row["model"], row["steps"]))
            for way in ("running", "update_running_stats", "rewrite"):
                assert row[way] == twin[way]


def test_batch_statistics_of_one_example_lose_the_input(example):
    _, result, _ = example
    for name, res in result["models"].items():
        # After the fully connected batch norm (conv net) or the per-step
        # ones (LSTM), one example is its own batch: its normalized values
        # are all 0, the output the shift's, one class for every digit.
        assert len(np.unique(res["predictions"]["batch_1"])) == 1, name
    rows = {(r["model"], r["steps"], r["batch_size"]): r for r in result["rows"]}
    for name in ("conv", "rnn"):
        assert rows[name, 8, 1]["batch"] < 0.2
        assert rows[name, 8, 256]["batch"] > 0.7  # trained past chance
        assert rows[name, 8, 1]["rewrite"] > 0.7


def test_per_step_statistics_beat_one_pair_in_the_loop(example):
    _, result, _ = example
    rows = {(r["model"], r["steps"], r["batch_size"]): r for r in result["rows"]}
    rnn = rows["rnn", 8, 1]
    assert rnn["rewrite"] > rnn["update_running_stats"]
    assert rnn["rewrite"] > rnn["running"]
    # No loop in the conv net: both popstats ways write the same numbers.
    conv = result["models"]["conv"]["probabilities"]
    np.testing.assert_allclose(conv["update_running_stats_256"], conv["rewrite_256"],
                               rtol=1e-9, atol=1e-12)


# ----------------------------------------------------------------------------
# Against NumPy
# ----------------------------------------------------------------------------


def test_conv_statistics_against_numpy(example):
    _, result, _ = example
    res = result["models"]["conv"]
    per_batch = _batch_statistics("conv", res)
    for label in LABELS["conv"]:
        means = np.mean([seen[0][0] for seen in per_batch[label]], axis=0)
        variances = np.mean([seen[0][1] for seen in per_batch[label]], axis=0)
        stats, written = res["stats"], res["written"]
        for got, want, what in (
            (stats[f"{label}.mean"].value, means, "mean"),
            (stats[f"{label}.var"].value, variances, "var"),
            (written[f"{label}_running_mean"], means, "mean"),
            (written[f"{label}_running_var"], variances, "var"),
        ):
            np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12,
                                       err_msg=f"{label} {what}")


def test_rnn_statistics_against_numpy(example):
    _, result, _ = example
    res = result["models"]["rnn"]
    per_batch = _batch_statistics("rnn", res)
    steps = res["trained_steps"]
    assert steps == 8 + 4  # the longest training sequence: 4 blank rows at most
    for label in LABELS["rnn"]:
        # Per step: the mean over the batches that reach the step.
        stat = res["stats"][f"{label}.mean"]
        assert stat.value.shape[0] == steps
        for t in range(steps):
            reaching = [seen[t] for seen in per_batch[label] if len(seen) > t]
            assert stat.coverage[t] == len(reaching)
            np.testing.assert_allclose(stat.value[t],
                                       np.mean([m for m, _ in reaching], axis=0),
                                       rtol=1e-9, atol=1e-12)
        # One running pair for all steps: per batch, the moments of all its
        # elements over its steps (the spread between steps included), then
        # the mean over batches (the default estimator).
        means, variances = [], []
        for seen in per_batch[label]:
            m = np.array([mean for mean, _ in seen])
            v = np.array([var for _, var in seen])
            means.append(m.mean(axis=0))
            variances.append(v.mean(axis=0) + m.var(axis=0))
        np.testing.assert_allclose(res["written"][f"{label}_running_mean"],
                                   np.mean(means, axis=0), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(res["written"][f"{label}_running_var"],
                                   np.mean(variances, axis=0), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", ["conv", "rnn"])
def test_probabilities_against_numpy(example, name):
    _, result, _ = example
    res = result["models"][name]
    p, labels = res["params"], LABELS[name]
    stats = {k: s.value for k, s in res["stats"].items()}
    given = {
        "rewrite": _pairs(stats, labels),
        "update_running_stats": _written(res, labels),
        "running": _pairs(res["running_trained"], labels),
    }
    for way, pairs in given.items():
        for suffix, x in (("", res["inputs"]["test"]),
                          ("_long", res["inputs"].get("test_long"))):
            if x is None:
                continue
            want = _softmax(FORWARD[name](p, x, _Norm(p, pairs)))
            np.testing.assert_allclose(res["probabilities"][f"{way}_256{suffix}"], want,
                                       rtol=1e-6, atol=1e-9, err_msg=f"{way}{suffix}")
    # Batch statistics of whole test batches (256, then the rest).
    x = res["inputs"]["test"]
    want = np.concatenate([_softmax(FORWARD[name](p, x[s:s + 256], _Norm(p)))
                           for s in (0, 256)])
    np.testing.assert_allclose(res["probabilities"]["batch_256"], want,
                               rtol=1e-6, atol=1e-9)


def test_training_moved_the_running_averages(example):
    _, result, _ = example
    for name, res in result["models"].items():
        for label in LABELS[name]:
            assert np.abs(res["running_trained"][f"{label}.mean"]).max() > 1e-3
            assert np.abs(res["running_trained"][f"{label}.var"] - 1).max() > 1e-3
        # update_running_stats left its values in the layers.
        for bn in res["graph"][2]:
            np.testing.assert_array_equal(bn.running_mean.get_value(),
                                          res["written"][f"{bn.name}_running_mean"])
