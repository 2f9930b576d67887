"""The BN-LSTM digits example (examples/bn_lstm_digits.py) in its --fast setting.

The script is run once per session (train a few seconds, estimate, evaluate)
and its results are checked against what recurrent batch normalization
implies, independently of popstats: a NumPy forward pass of the BN-LSTM with
the estimated population statistics (clamped past the last estimated step)
must give the script's probabilities, predictions with population statistics
(and with the running averages kept while training) must not depend on the
batch size, and with batch statistics at batch size 1
every normalized value is the BN shift, so all predictions are one class.

The example compiles with ``POPSTATS_TEST_MODE`` (FAST_COMPILE by default,
like the other tests): its training graph holds the gradient of a Scan, which
the default Numba backend takes minutes to compile on a cold cache.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from shared import MODE

pytest.importorskip("sklearn", reason="the example needs scikit-learn's digits")

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "bn_lstm_digits.py"
ROWS = {
    "batch_256": ("batch", 256, 8),
    "batch_1": ("batch", 1, 8),
    "population_256": ("population", 256, 8),
    "population_1": ("population", 1, 8),
    "running_256": ("running averages", 256, 8),
    "running_1": ("running averages", 1, 8),
    "batch_256_long": ("batch", 256, 20),
    "population_256_long": ("population", 256, 20),
    "population_1_long": ("population", 1, 20),
    "running_256_long": ("running averages", 256, 20),
    "running_1_long": ("running averages", 1, 20),
}


def _load_script():
    spec = importlib.util.spec_from_file_location("bn_lstm_digits", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    module = _load_script()
    out = tmp_path_factory.mktemp("bn_lstm_digits")
    result = module.main(
        ["--fast", "--seed", "0", "--mode", MODE, "--output", str(out)]
    )
    return module, result, out


# ----------------------------------------------------------------------------
# NumPy reference of the model (Cooijmans et al. 2016, eqs. 6-8)
# ----------------------------------------------------------------------------


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def bn_lstm_reference(p, x, eps, population=None):
    """Class probabilities; batch statistics, or ``population[label][step]``
    with steps past the last estimated one using the last one."""

    def bn(a, label, t, gamma, beta=0.0):
        if population is None:
            mean, var = a.mean(axis=0), a.var(axis=0)
        else:
            s = min(t, len(population[f"{label}.mean"]) - 1)
            mean, var = population[f"{label}.mean"][s], population[f"{label}.var"][s]
        return gamma * (a - mean) / np.sqrt(var + eps) + beta

    n_hidden = p["W_h"].shape[0]
    h = c = np.zeros((x.shape[1], n_hidden))
    for t in range(x.shape[0]):
        pre = (
            bn(h @ p["W_h"], "bn_h", t, p["gamma_h"])
            + bn(x[t] @ p["W_x"], "bn_x", t, p["gamma_x"])
            + p["b"]
        )
        i, f, o, g = np.split(pre, 4, axis=1)
        c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
        h = _sigmoid(o) * np.tanh(bn(c, "bn_c", t, p["gamma_c"], p["beta_c"]))
    return _softmax(h @ p["W_out"] + p["b_out"])


# ----------------------------------------------------------------------------
# Tests
# ----------------------------------------------------------------------------


def test_table_has_every_row(example):
    _, result, _ = example
    rows = {r["row"]: r for r in result["rows"]}
    assert list(rows) == list(ROWS)
    for key, (kind, batch_size, steps) in ROWS.items():
        row = rows[key]
        assert (row["statistics"], row["batch_size"], row["steps"]) == (
            kind,
            batch_size,
            steps,
        )
        assert isinstance(row["accuracy"], float)
        assert 0.0 <= row["accuracy"] <= 1.0
        n = len(result["labels"])
        assert row["accuracy"] == pytest.approx(
            np.mean(result["predictions"][key] == result["labels"]), abs=0.5 / n
        )


def test_outputs_written(example):
    _, result, out = example
    data = json.loads((out / "bn_lstm_digits.json").read_text())
    assert data["rows"] == result["rows"]
    assert data["settings"]["fast"] is True
    with open(out / "bn_lstm_digits.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["row"] for r in table] == list(ROWS)
    for written, row in zip(table, result["rows"], strict=True):
        assert float(written["accuracy"]) == pytest.approx(row["accuracy"])


def test_statistics_saved_for_the_command(example):
    # The README runs `popstats summary` on this file after the main job.
    import popstats

    _, result, out = example
    path = out / "bn_lstm_digits_stats.npz"
    assert result["files"][:3] == [
        "bn_lstm_digits.csv", "bn_lstm_digits.json", path.name
    ]
    loaded = popstats.load(path)
    assert sorted(loaded) == sorted(result["stats"])
    for name, value in result["stats"].items():
        np.testing.assert_array_equal(loaded[name].value, value)
    env = dict(os.environ, PYTHONPATH=str(SCRIPT.parents[1]))
    done = subprocess.run(
        [sys.executable, "-m", "popstats", "summary", str(path)],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("name ")
    for name in result["stats"]:
        assert f"\n{name} " in done.stdout, name


def test_figure_legend_outside_the_values(example):
    # The legend of the per-step figure covers no line, and names what the
    # solid (population) and dashed (running averages) lines are.
    pytest.importorskip("matplotlib")
    module, result, _ = example
    fig = module.per_step_figure(
        result["population_statistics"], result["running_statistics"]
    )
    ax = fig.axes[0]
    legend = ax.get_legend()
    labels = [t.get_text() for t in legend.get_texts()]
    assert labels[:2] == ["population (popstats)", "running averages"]
    assert all(label.startswith("unit ") for label in labels[2:]) and labels[2:]
    fig.canvas.draw()
    box, axes_box = legend.get_window_extent(), ax.get_window_extent()
    assert box.x0 >= axes_box.x1  # beside the axes, not over them
    assert not box.overlaps(axes_box)


@pytest.mark.parametrize("kind", ["population", "running"])
def test_inference_predictions_do_not_depend_on_batch_size(example, kind):
    _, result, _ = example
    pred, prob = result["predictions"], result["probabilities"]
    for suffix in ("", "_long"):
        np.testing.assert_array_equal(
            pred[f"{kind}_1{suffix}"], pred[f"{kind}_256{suffix}"]
        )
        np.testing.assert_allclose(
            prob[f"{kind}_1{suffix}"],
            prob[f"{kind}_256{suffix}"],
            rtol=1e-9,
            atol=1e-12,
        )


def test_figures_written(example):
    _, result, out = example
    report = out / "bn_lstm_digits_report.html"
    assert report.is_file()
    html = report.read_text()
    assert html.lstrip().lower().startswith("<!doctype html")
    for name in result["stats"]:
        assert name in html
    png = out / "bn_lstm_digits_bn_x_mean.png"
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert not png.exists()
        assert result["files"][-1] == report.name
    else:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert result["files"][-2:] == [report.name, png.name]


def test_batch_statistics_fail_at_batch_size_1(example):
    _, result, _ = example
    pred = result["predictions"]
    # One example per batch: zero variance, every BN output equals its shift,
    # the input is invisible and all predictions are the same class.
    assert len(np.unique(pred["batch_1"])) == 1
    assert not np.array_equal(pred["batch_1"], pred["batch_256"])


def test_population_beats_batch_statistics_at_batch_size_1(example):
    _, result, _ = example
    acc = {r["row"]: r["accuracy"] for r in result["rows"]}
    # Observed in the fast setting (seed 0): about 0.8 against 0.1 (chance).
    assert acc["batch_1"] < 0.2
    assert acc["population_1"] > acc["batch_1"] + 0.3


def test_probabilities_match_numpy_bn_lstm(example):
    module, result, _ = example
    p, stats, eps = result["params"], result["stats"], module.EPS
    assert sorted(stats) == sorted(
        f"bn_{k}.{s}" for k in "xhc" for s in ("mean", "var")
    )
    x, x_long = result["inputs"]["test"], result["inputs"]["test_long"]
    trained = stats["bn_x.mean"].shape[0]
    assert x.shape[0] < trained < x_long.shape[0]  # the long test clamps
    prob = result["probabilities"]
    np.testing.assert_allclose(
        bn_lstm_reference(p, x, eps, stats),
        prob["population_256"],
        rtol=1e-6,
        atol=1e-9,
    )
    np.testing.assert_allclose(
        bn_lstm_reference(p, x_long, eps, stats),
        prob["population_256_long"],
        rtol=1e-6,
        atol=1e-9,
    )
    # Running averages: kept for every step some training batch reached (the
    # longest training sequence), clamped beyond like the population values.
    running = result["running_stats"]
    assert sorted(running) == sorted(stats)
    assert running["bn_x.mean"].shape[0] == trained
    for name, value in running.items():
        assert value.shape == stats[name].shape
        assert np.all(np.isfinite(value))
    for suffix, xs in (("", x), ("_long", x_long)):
        np.testing.assert_allclose(
            bn_lstm_reference(p, xs, eps, running),
            prob[f"running_256{suffix}"],
            rtol=1e-6,
            atol=1e-9,
        )
    # Batch statistics over the first evaluation batch of 256 test digits.
    np.testing.assert_allclose(
        bn_lstm_reference(p, x[:, :256], eps),
        prob["batch_256"][:256],
        rtol=1e-6,
        atol=1e-9,
    )


@pytest.mark.parametrize("name", ["bn_lstm_digits", "drift_digits",
                                  "feedforward_estimators"])
def test_without_scikit_learn_the_examples_name_what_to_install(name):
    script = SCRIPT.with_name(f"{name}.py")
    code = ("import runpy, sys; sys.modules['sklearn'] = None; "
            f"sys.argv = ['{name}', '--fast']; "
            f"runpy.run_path({str(script)!r}, run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True,
                          text=True, timeout=300, cwd=SCRIPT.parents[1])
    assert done.returncode == 1, done.stderr
    assert "pip install scikit-learn" in done.stderr
    assert "'.[examples]'" in done.stderr
