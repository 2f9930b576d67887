"""get_inference_graph: structure in, structure out; batch formats."""

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest

import popstats


def _model():
    x = pt.matrix("x")
    w = pt.vector("w")
    h = x * w
    mean = popstats.bn_statistic(h.mean(axis=0), label="mean")
    var = popstats.bn_statistic(h.var(axis=0), label="var")
    y = (h - mean) / pt.sqrt(var + 1e-3)
    return x, w, y, y.sum(axis=1)


def _batches(rng, n=5):
    return [
        {"x": rng.normal(1.0, 2.0, (8, 3)), "w": np.array([1.0, 2.0, 3.0])}
        for _ in range(n)
    ]


def _reference(batches, xv, wv):
    hs = [b["x"] * b["w"] for b in batches]
    mean = np.mean([h.mean(0) for h in hs], axis=0)
    var = np.mean([h.var(0) for h in hs], axis=0)
    return (xv * wv - mean) / np.sqrt(var + 1e-3)


@pytest.mark.parametrize("kind", ["variable", "list", "tuple"])
def test_structure_of_outputs_is_kept(kind):
    x, w, y, s = _model()
    batches = _batches(np.random.default_rng(0))
    outputs = {"variable": y, "list": [y, s], "tuple": (y, s)}[kind]
    result = popstats.get_inference_graph([x, w], outputs, batches)
    if kind == "variable":
        assert isinstance(result, pt.TensorVariable)
        result = [result]
    else:
        assert type(result) is type(outputs)
        assert len(result) == 2
    xv, wv = np.ones((1, 3)), batches[0]["w"]
    got = pytensor.function([x, w], list(result))(xv, wv)
    np.testing.assert_allclose(got[0], _reference(batches, xv, wv), rtol=1e-10)
    if kind != "variable":
        np.testing.assert_allclose(got[1], got[0].sum(axis=1), rtol=1e-10)


@pytest.mark.parametrize("form", ["names", "variables", "tuples", "generator"])
def test_batch_formats_give_the_same_statistics(form):
    x, w, y, _ = _model()
    batches = _batches(np.random.default_rng(1))
    if form == "variables":
        fed = [{x: b["x"], w: b["w"]} for b in batches]
    elif form == "tuples":
        fed = [(b["x"], b["w"]) for b in batches]
    elif form == "generator":
        fed = (b for b in batches)
    else:
        fed = [{**b, "label": 0} for b in batches]  # extra keys are ignored
    _, stats = popstats.get_inference_graph([x, w], y, fed, return_stats=True)
    hs = [b["x"] * b["w"] for b in batches]
    np.testing.assert_allclose(
        stats["mean"].value, np.mean([h.mean(0) for h in hs], axis=0), rtol=1e-12
    )
    assert stats["var"].n_batches == len(batches)
    assert stats["var"].coverage.shape == ()


def test_one_call_equals_the_stages():
    x, w, y, _ = _model()
    batches = _batches(np.random.default_rng(2))
    one = popstats.get_inference_graph([x, w], y, batches)
    stats = popstats.estimate([x, w], y, batches)
    staged = popstats.rewrite(y, stats)
    xv, wv = np.random.default_rng(3).normal(size=(4, 3)), batches[0]["w"]
    f = pytensor.function([x, w], [one, staged])
    a, b = f(xv, wv)
    np.testing.assert_array_equal(a, b)


def test_population_variables_can_be_updated_without_recompiling():
    x, w, y, _ = _model()
    batches = _batches(np.random.default_rng(4))
    inference = popstats.get_inference_graph([x, w], y, batches)
    shared = popstats.population_variables(inference)
    assert sorted(shared) == ["mean", "var"]
    f = pytensor.function([x, w], inference)
    shared["mean"].set_value(np.zeros(3))
    shared["var"].set_value(np.full(3, 1.0 - 1e-3))
    xv = np.ones((2, 3))
    np.testing.assert_allclose(f(xv, np.ones(3)), xv, rtol=1e-12)
