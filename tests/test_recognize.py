"""The recognizer registry, with a user's toy batch norm (no pytensor-ml needed).

A ``ToyBatchNorm`` (an ``OpFromGraph`` subclass taking ``x`` and a shared
scale) is unknown to popstats until a recognizer is registered; then its
statistics are found in the outer graph and per step inside a loop, labelled
from the scale's name, which the recognizer reads through
``RecognitionContext.origin`` (inside the loop the node's input is the
loop's placeholder).
"""

from __future__ import annotations

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from pytensor.compile.builders import OpFromGraph

import popstats

EPS = 1e-5


class ToyBatchNorm(OpFromGraph):
    pass


def _toy() -> ToyBatchNorm:
    x_in, g_in = pt.matrix("x_in"), pt.vector("g_in")
    body = (x_in - x_in.mean(0)) / pt.sqrt(x_in.var(0) + EPS) * g_in
    return ToyBatchNorm([x_in, g_in], [body])


def _expand(node, context):
    x, gamma = node.inputs
    label = context.origin(gamma).name or "toy"
    mean, var = popstats.mark_moments(x.mean(0), x.var(0), label, count=x.shape[0])
    return [(x - mean) / pt.sqrt(var + EPS) * gamma]


@pytest.fixture
def toy_recognizer():
    recognizer = popstats.register_recognizer(popstats.Recognizer(
        "toy", matches=lambda op: isinstance(op, ToyBatchNorm), expand=_expand))
    yield recognizer
    popstats.unregister_recognizer("toy")


def _gamma():
    return pytensor.shared(np.array([1.0, 2.0]), name="gamma")


def test_unrecognized_op_holds_no_statistic():
    x = pt.matrix("x")
    with pytest.raises(popstats.PopstatsError, match="no batch statistic"):
        popstats.export(_toy()(x, _gamma()))


def test_outer_graph(toy_recognizer):
    x, gamma = pt.matrix("x"), _gamma()
    y = _toy()(x, gamma)
    rows = {r.label: r for r in popstats.describe(y)}
    assert sorted(rows) == ["gamma.mean", "gamma.var"]
    assert rows["gamma.mean"].counted and rows["gamma.var"].role == "var"
    rng = np.random.default_rng(0)
    batches = [rng.normal(2.0, 3.0, (16, 2)) for _ in range(3)]
    graph = popstats.get_inference_graph([x], y, [{"x": b} for b in batches],
                                         estimator="pooled", mode="FAST_COMPILE")
    x1 = np.array([[1.0, -1.0]])
    got = pytensor.function([x], graph, mode="FAST_COMPILE")(x1)
    allx = np.concatenate(batches)  # equal batch sizes: pooled = moments of all rows
    expected = (x1 - allx.mean(0)) / np.sqrt(allx.var(0) + EPS) * gamma.get_value()
    np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_inside_a_loop_per_step(toy_recognizer):
    xs, gamma = pt.tensor3("xs"), _gamma()
    toy = _toy()
    ys = pytensor.scan(lambda x: toy(x, gamma), sequences=[xs], name="loop",
                       return_updates=False)
    (row, _) = popstats.describe(ys)
    assert (row.where, row.time) == ("loop", ("step",))
    assert {r.label for r in popstats.describe(ys)} == {"gamma.mean", "gamma.var"}
    rng = np.random.default_rng(1)
    centres = np.arange(3)[:, None, None]
    batches = [rng.normal(centres, 1.0, (3, 8, 2)) for _ in range(2)]
    stats = popstats.estimate([xs], ys, [{"xs": b} for b in batches],
                              mode="FAST_COMPILE")
    means = np.mean([b.mean(1) for b in batches], 0)
    np.testing.assert_allclose(stats["gamma.mean"].value, means, rtol=1e-10)
    graph = popstats.rewrite(ys, stats)
    x1 = rng.normal(size=(3, 1, 2))
    got = pytensor.function([xs], graph, mode="FAST_COMPILE")(x1)
    variances = np.mean([b.var(1) for b in batches], 0)
    expected = ((x1 - means[:, None]) / np.sqrt(variances[:, None] + EPS)
                * gamma.get_value())
    np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_latest_registration_wins_and_replace(toy_recognizer):
    x = pt.matrix("x")
    y = _toy()(x, _gamma())

    def renamed(node, context):
        x_, gamma = node.inputs
        mean, var = popstats.mark_moments(x_.mean(0), x_.var(0), "other")
        return [(x_ - mean) / pt.sqrt(var + EPS) * gamma]

    popstats.register_recognizer(popstats.Recognizer(
        "toy2", lambda op: isinstance(op, ToyBatchNorm), renamed))
    try:
        assert {r.label for r in popstats.describe(y)} == {"other.mean", "other.var"}
        assert [r.name for r in popstats.recognizers()][-2:] == ["toy", "toy2"]
    finally:
        popstats.unregister_recognizer("toy2")
    assert {r.label for r in popstats.describe(y)} == {"gamma.mean", "gamma.var"}
    again = popstats.Recognizer("toy", toy_recognizer.matches, renamed)
    popstats.register_recognizer(again, replace=True)
    assert {r.label for r in popstats.describe(y)} == {"other.mean", "other.var"}


def test_the_shipped_recognizer_is_registered_without_importing_pytensor_ml():
    import subprocess
    import sys

    code = ("import sys, popstats; print([r.name for r in popstats.recognizers()], "
            "'pytensor_ml' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120).stdout.strip()
    assert out == "['pytensor-ml'] False"
