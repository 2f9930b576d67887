"""update_running_stats on pytensor-ml models: NumPy and PyTorch references.

Skipped without pytensor-ml (Python 3.11 line). The PyTorch comparison runs
``torch_update_bn.py`` with the interpreter ``POPSTATS_TORCH_PYTHON`` names
(``.ci/run`` sets it to its Python 3.11 environment, which has torch) and
skips cleanly where there is none.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pytensor_ml")

import pytensor
from pytensor_ml.model import Model
from pytensor_ml.pytensorf import compile_predict

import popstats

sys.path.insert(0, str(Path(__file__).parent))
import ptml_models as models

FAST = "FAST_COMPILE"
#: an interpreter with torch (.ci/run sets it to its Python 3.11 environment)
TORCH = os.environ.get("POPSTATS_TORCH_PYTHON", "")


def _feed(batches):
    return [{"X": x} for x in batches]


def _update(model, batches, **options):
    options.setdefault("mode", FAST)
    return popstats.update_running_stats([model.X], model.y, _feed(batches), **options)


@pytest.mark.parametrize("floatX", ["float64", "float32"])
def test_mlp_running_stats_and_predict_match_numpy(floatX):
    model = models.mlp("bn" if floatX == "float64" else "bn32", floatX=floatX)
    batches = model.batches()
    before = pytensor.function([model.X], model.y, mode=FAST)
    written = _update(model, batches)
    bn, label = model.bns[0], model.bns[0].name
    expected = model.stats(batches)
    tol = 1e-12 if floatX == "float64" else 1e-5
    assert bn.running_var.get_value().dtype == floatX
    np.testing.assert_allclose(bn.running_mean.get_value(), expected[f"{label}.mean"],
                               rtol=tol, atol=tol)
    np.testing.assert_allclose(bn.running_var.get_value(), expected[f"{label}.var"],
                               rtol=tol, atol=tol)
    assert written[f"{label}_running_var"].statistics == (f"{label}.var",)
    x1 = batches[1][:1]
    want = model.reference(batches, x1.astype("float64"))
    tol = 1e-10 if floatX == "float64" else 1e-4
    # pytensor-ml compiles a float32 model's prediction under its own floatX
    with pytensor.config.change_flags(floatX=floatX):
        predict = compile_predict(model.y, inputs=[model.X])
        np.testing.assert_allclose(predict(x1), want, rtol=tol, atol=tol)
        np.testing.assert_allclose(Model(model.y).predict(x1), want, rtol=tol,
                                   atol=tol)
    # the graph is unchanged: training mode still uses batch statistics
    np.testing.assert_allclose(before(batches[0]), pytensor.function(
        [model.X], model.y, mode=FAST)(batches[0]))


def test_reused_layer_gets_the_pool_of_both_applications():
    model = models.reused()
    batches = model.batches()
    stats = popstats.estimate([model.X], model.y, _feed(batches), mode=FAST)
    written = _update(model, batches)
    (write_mean,) = [w for w in written if w.role == "mean"]
    assert write_mean.statistics == ("shared_bn.mean#0", "shared_bn.mean#1")
    assert write_mean.weights == (4.0, 4.0)
    m = [stats[f"shared_bn.mean#{k}"].value for k in (0, 1)]
    v = [stats[f"shared_bn.var#{k}"].value for k in (0, 1)]
    mean = (m[0] + m[1]) / 2
    var = ((v[0] + (m[0] - mean) ** 2) + (v[1] + (m[1] - mean) ** 2)) / 2
    bn = model.bns[0]
    np.testing.assert_allclose(bn.running_mean.get_value(), mean, rtol=1e-12)
    np.testing.assert_allclose(bn.running_var.get_value(), var, rtol=1e-12)


def _rnn_errors():
    """Output error at batch size 1 against batch statistics of 256 sequences."""
    model = models.rnn()
    batches = model.batches(n=8, batch=64)
    x_test = model.batches(seed=9, n=1, batch=256)[0]
    target = pytensor.function([model.X], model.y, mode=FAST)(x_test)  # batch stats
    per_step = pytensor.function(
        [model.X], popstats.get_inference_graph([model.X], model.y, _feed(batches),
                                                mode=FAST), mode=FAST)
    written = _update(model, batches)
    pooled = compile_predict(model.y, inputs=[model.X])
    errors = {}
    for name, f in (("per-step rewrite", per_step), ("pooled running stats", pooled)):
        out = np.concatenate([f(x_test[i:i + 1]) for i in range(len(x_test))])
        errors[name] = float(np.abs(out - target).mean())
    return model, batches, written, errors


def test_recurrent_cell_pools_steps_and_rewrite_is_better():
    model, batches, _, errors = _rnn_errors()
    stats = popstats.estimate([model.X], model.y, _feed(batches), mode=FAST,
                              time="pooled")
    bn = model.bns[0]
    np.testing.assert_allclose(bn.running_mean.get_value(),
                               stats["cell_bn.mean"].value, rtol=1e-12)
    np.testing.assert_allclose(bn.running_var.get_value(),
                               stats["cell_bn.var"].value, rtol=1e-12)
    # one pair for all steps: worse than per-step statistics at batch size 1
    assert errors["per-step rewrite"] < 0.85 * errors["pooled running stats"], errors
    with pytest.raises(popstats.PopstatsError, match="per time step"):
        _update(model, batches, time="step")


def test_no_running_stats_is_refused_and_nothing_written():
    model = models.mlp("free_bn", track=False)
    with pytest.raises(popstats.PopstatsError, match="track_running_stats=False"):
        _update(model, model.batches())


def test_save_state_holds_the_estimate(tmp_path):
    pytest.importorskip("safetensors")
    from pytensor_ml.checkpoint import load_state, save_state

    model = models.mlp()
    _update(model, model.batches())
    bn = model.bns[0]
    saved = bn.running_var.get_value().copy()
    save_state([bn.running_mean, bn.running_var], tmp_path / "bn.safetensors")
    bn.running_var.set_value(np.ones_like(saved))
    load_state([bn.running_mean, bn.running_var], tmp_path / "bn.safetensors")
    np.testing.assert_array_equal(bn.running_var.get_value(), saved)


def _torch_python():
    if not TORCH or not Path(TORCH).exists():
        return None
    probe = subprocess.run([TORCH, "-c", "import torch"], capture_output=True)
    return TORCH if probe.returncode == 0 else None


def test_written_values_match_pytorch_update_bn(tmp_path):
    python = _torch_python()
    if python is None:
        pytest.skip(f"no Python with torch at {TORCH} (set POPSTATS_TORCH_PYTHON)")
    model = models.mlp()
    batches = model.batches(n=6, batch=32)
    params = {p.name: p.get_value() for p in pytensor.graph.graph_inputs([model.y])
              if hasattr(p, "get_value")}
    x1 = model.batches(seed=3, n=1, batch=5)[0]
    np.savez(tmp_path / "in.npz", W=params["fc_W"], scale=params["bn_scale"],
             loc=params["bn_loc"], W2=params["out_W"], b2=params["out_b"],
             batches=np.stack(batches), x1=x1)
    subprocess.run([python, str(Path(__file__).with_name("torch_update_bn.py")),
                    str(tmp_path / "in.npz"), str(tmp_path / "out.npz")], check=True)
    torch = np.load(tmp_path / "out.npz")
    bn = model.bns[0]
    _update(model, batches, estimator="unbiased")  # exactly update_bn
    np.testing.assert_allclose(bn.running_mean.get_value(), torch["running_mean"],
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(bn.running_var.get_value(), torch["running_var"],
                               rtol=1e-12, atol=1e-12)
    predicted = np.concatenate([Model(model.y).predict(row[None]) for row in x1])
    np.testing.assert_allclose(predicted, torch["predicted"], rtol=1e-10, atol=1e-10)
    _update(model, batches)  # the default, pytensor-ml's biased convention
    m = 32
    np.testing.assert_allclose(bn.running_var.get_value() * m / (m - 1),
                               torch["running_var"], rtol=1e-12)


def test_consistent_running_statistics_of_a_recurrent_cell():
    """upstream='population' writes the fixed point of pytensor-ml's own
    prediction graph: one running pair for every step (pooled over them)."""
    model = models.rnn()
    batches = [{"X": b} for b in model.batches()]
    written = popstats.update_running_stats([model.X], model.y, batches,
                                            upstream="population")
    assert written.statistics.fixed_point.passes > 2
    alone = popstats.estimate([model.X], model.y, batches, time="pooled",
                              upstream="population")
    for write in written:
        (name,) = write.statistics
        np.testing.assert_allclose(write.value, alone[name].value, rtol=1e-12)
        np.testing.assert_allclose(write.variable.get_value(), alone[name].value,
                                   rtol=1e-12)
    assert {s.upstream for s in written.statistics.values()} == {"population"}


def test_consistent_running_statistics_refuse_a_layer_applied_twice():
    model = models.reused()
    before = [bn.running_mean.get_value().copy() for bn in model.bns]
    with pytest.raises(popstats.PopstatsError, match="applied 2 times"):
        popstats.update_running_stats([model.X], model.y,
                                      [{"X": b} for b in model.batches()],
                                      upstream="population")
    for bn, value in zip(model.bns, before, strict=True):
        np.testing.assert_array_equal(bn.running_mean.get_value(), value)
