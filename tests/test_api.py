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


# -- the estimation options: one record, the same keywords everywhere ---------

OPTION_DEFAULTS = {"estimator": "mean", "time": "step", "max_steps": None,
                   "mode": None, "dtypes": "convert", "accumulate": "host",
                   "upstream": "batch", "upstream_tol": 1e-10, "upstream_se": None,
                   "upstream_passes": 50, "target_error": None, "min_batches": 10}


def _public_calls():
    calls = [popstats.estimate, popstats.get_inference_graph, popstats.Estimation]
    try:
        import popstats.dask as dask_api
    except ImportError:
        return calls
    return [*calls, dask_api.estimate, dask_api.estimate_groups]


@pytest.mark.parametrize("call", _public_calls(), ids=lambda c: c.__qualname__)
def test_public_signatures_show_the_options_with_their_defaults(call):
    import inspect

    params = inspect.signature(call).parameters
    for name, default in OPTION_DEFAULTS.items():
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY
        assert params[name].default == default
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    assert "[estimation options]" not in call.__doc__
    assert 'accumulate : {"host", "graph"}, default "host"' in call.__doc__


def test_the_record_and_the_keywords_list_the_same_options():
    from popstats._src.estimation.options import EstimationOptions, OptionKeywords

    assert EstimationOptions.names() == tuple(OPTION_DEFAULTS)
    assert tuple(OptionKeywords.__annotations__) == tuple(OPTION_DEFAULTS)
    assert EstimationOptions.check("estimate", {}) == EstimationOptions(
        **OPTION_DEFAULTS)


@pytest.mark.parametrize("call", ["estimate", "get_inference_graph", "Estimation"])
def test_an_unknown_keyword_fails_first_naming_the_call(call):
    x, w, y, _ = _model()
    fn = getattr(popstats, call)
    args = ([x, w], y) if call == "Estimation" else ([x, w], y, [])
    with pytest.raises(TypeError, match=rf"^{call}\(\) got an unexpected keyword "
                       r"argument 'estimatr'; did you mean 'estimator'\?"):
        fn(*args, estimatr="pooled")


def test_on_batch_sees_each_batch_and_forces_nothing_else():
    x, w, y, _ = _model()
    batches = _batches(np.random.default_rng(1), n=4)
    for accumulate in ("host", "graph"):
        run = popstats.Estimation([x, w], y, accumulate=accumulate)
        seen: list = []

        at = [site.name for site in run.sites].index("mean")

        def observe(i, stats, seen=seen, at=at):
            seen.append((i, stats[at][0].copy()))

        state = run.run(batches, on_batch=observe)
        plain = run.run(batches)
        assert [i for i, _ in seen] == [0, 1, 2, 3]
        h = [b["x"] * b["w"] for b in batches]
        np.testing.assert_allclose([v for _, v in seen], [a.mean(0) for a in h])
        got, want = run.finalize(state), run.finalize(plain)
        for name in want:
            np.testing.assert_allclose(got[name].value, want[name].value,
                                       rtol=1e-12)
