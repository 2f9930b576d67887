"""examples/upstream_digits.py (issue 22's figure) in its --fast setting.

The script runs once per session (a 4-layer BN-MLP at batch size 4 and the
main job's BN-LSTM, small, seed 0) and its results are checked for what the
design implies (``docs/upstream.rst``), not for figures that training
noise moves:

* the tables have every seed, estimation, layer and step, accuracies in
  [0, 1] (at batch size 1, and with batch statistics as trained);
* the passes: a feed-forward net of L batch norms has statistics d = L - 1
  deep (on the longest path to the last one), so ``upstream="population"``
  is exact after pass d and confirmed by pass d + 1: d + 2 = L + 1 passes;
* the shift: the first layer has nothing upstream, so both options give it
  the same values; with the ``"pooled"`` estimator (exact moments) the
  consistent statistics are the moments of every layer's inference-time
  input over the estimation data, so their shift is 0 up to rounding, and
  today's is not; with ``"mean"`` the consistent shift at the last layer is
  the small-batch variance bias, below today's.

Compiled with ``POPSTATS_TEST_MODE`` (FAST_COMPILE by default).
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
from shared import MODE

pytest.importorskip("sklearn", reason="the example needs scikit-learn's digits")

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "upstream_digits.py"
DEPTH = 4  # the --fast MLP
CONFIGS = ["batch/mean", "population/mean", "batch/pooled", "population/pooled"]


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    spec = importlib.util.spec_from_file_location("upstream_digits", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path_factory.mktemp("upstream_digits")
    result = module.main(["--fast", "--mode", MODE, "--output", str(out)])
    return result, out


def test_tables_have_every_seed_config_and_layer(example):
    result, out = example
    assert result["configs"] == CONFIGS
    assert result["settings"]["depth"] == DEPTH
    for part, runs in (("mlp", result["mlp"]), ("lstm", result["lstm"])):
        assert [r["seed"] for r in runs] == [0], part
        for run in runs:
            for field in ("accuracy", "passes", "shift"):
                assert list(run[field]) == CONFIGS, (part, field)
            accuracies = {**run["accuracy"], "training mode": run["training_mode"]}
            for config, accuracy in accuracies.items():
                assert math.isfinite(accuracy) and 0.0 <= accuracy <= 1.0, config
    for shift in result["mlp"][0]["shift"].values():
        assert len(shift) == DEPTH and all(math.isfinite(s) for s in shift)
    for shift in result["lstm"][0]["shift"].values():
        assert sorted(shift) == ["bn_c", "bn_h", "bn_x"]
        lengths = {len(steps) for steps in shift.values()}
        assert len(lengths) == 1 and min(lengths) >= 8  # digits + blank tails
        for steps in shift.values():
            assert all(math.isfinite(s) for s in steps)
    text = result["table"]
    assert "test accuracy at batch size 1" in text and "shift per layer" in text
    assert "largest @ step" in text
    for config in [*CONFIGS, "training mode"]:
        assert config in text
    written = json.loads((out / "upstream_digits.json").read_text())
    assert written["mlp"] == result["mlp"] and written["table"] == text


def test_passes_of_a_feed_forward_net(example):
    result, _ = example
    passes = result["mlp"][0]["passes"]
    assert passes["batch/mean"] == passes["batch/pooled"] == 1
    d = DEPTH - 1  # batch norms upstream of the last one
    assert passes["population/mean"] == passes["population/pooled"] == d + 2


def test_passes_of_the_lstm_are_bounded(example):
    result, _ = example
    passes = result["lstm"][0]["passes"]
    assert passes["batch/mean"] == passes["batch/pooled"] == 1
    # per-step statistics: the change falls geometrically through the steps
    for config in ("population/mean", "population/pooled"):
        assert 3 <= passes[config] < 50


def test_first_layer_is_the_same_either_way(example):
    result, _ = example
    shift = result["mlp"][0]["shift"]
    for estimator in ("mean", "pooled"):
        assert shift[f"population/{estimator}"][0] == pytest.approx(
            shift[f"batch/{estimator}"][0], rel=1e-9, abs=1e-20)


def test_consistent_pooled_statistics_have_no_shift(example):
    result, _ = example
    mlp = result["mlp"][0]["shift"]
    assert max(mlp["population/pooled"]) < 1e-20
    assert mlp["batch/pooled"][-1] > 1e-3  # today's: layers 2.. shifted
    for layer, steps in result["lstm"][0]["shift"]["population/pooled"].items():
        assert max(steps) < 1e-12, layer


def test_consistent_mean_shift_below_todays_at_the_last_layer(example):
    result, _ = example
    shift = result["mlp"][0]["shift"]
    assert shift["population/mean"][-1] < shift["batch/mean"][-1]
