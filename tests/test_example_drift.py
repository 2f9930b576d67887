"""``examples/drift_digits.py`` in its --fast setting, against NumPy.

The input layer's divergence is recomputed from the pixels: the population
mean and variance are the averages of the per-batch means and variances
(the ``"mean"`` estimator) of the training batches and of the new-domain
batches; the symmetric KL divergence is written out here. Re-estimating on
the new domain must recover accuracy that the original statistics lose.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from shared import MODE

pytest.importorskip("sklearn", reason="the drift example needs sklearn")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "drift_digits.py"


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    spec = importlib.util.spec_from_file_location("drift_digits", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path_factory.mktemp("drift")
    return module, module.main(["--fast", "--mode", MODE, "--output", str(out)]), out


def averaged(x, size=64):
    parts = [x[i:i + size] for i in range(0, len(x), size)]
    return (np.mean([p.mean(0) for p in parts], 0),
            np.mean([p.var(0) for p in parts], 0))


def test_input_divergence_against_numpy(example):
    module, result, _ = example
    x_train, _, x_test, _ = module.load(0, True)
    shifted = module.new_domain(x_test, np.random.default_rng(1))
    m0, v0 = averaged(x_train)
    m1, v1 = averaged(shifted[: len(x_test) // 2])
    v0, v1 = v0 + module.EPS, v1 + module.EPS
    expected = 0.5 * (v0 / v1 + v1 / v0) - 1 + 0.5 * (m1 - m0) ** 2 * (1 / v0 + 1 / v1)
    record = next(r for r in result["drift"] if r["name"] == "input")
    assert record["mean"] == pytest.approx(expected.mean(), rel=1e-10)
    assert record["max"] == pytest.approx(expected.max(), rel=1e-10)
    assert record["worst"][0][0] == [int(expected.argmax())]
    assert result["first_moved"] == "input"


def test_reestimating_recovers_accuracy(example):
    _, result, out = example
    acc = result["accuracy"]
    assert acc["original domain, original statistics"] > 0.8
    assert acc["new domain, original statistics"] < 0.5
    assert (acc["new domain, re-estimated statistics"]
            > acc["new domain, original statistics"] + 0.2)
    assert (out / "drift.json").exists()
    if importlib.util.find_spec("matplotlib") is not None:
        assert (out / "drift.html").exists()
