"""pytensor-ml models, unmarked: statistics found, estimated and rewritten.

Skipped as a whole where pytensor-ml is not installed (the Python 3.11 line;
pytensor-ml needs Python >= 3.12). Every model kind of ``ptml_models.py`` is
checked against NumPy: the estimated statistics, and the inference output at
batch size 1. Then the inference graphs: compiled in Numba, JAX and CVM
modes, differentiable, unchanged by pytensor-ml's ``compile_predict``, and
deployed from one process to another (``ptml_worker.py``).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pytensor_ml")

import pytensor
from pytensor.graph.traversal import applys_between
from pytensor_ml.pytensorf import compile_predict

import popstats
from popstats._src.graph import pytensor_ml as recognizer
from popstats._src.graph.recognize import RecognitionContext

sys.path.insert(0, str(Path(__file__).parent))
import ptml_models as models
from shared import DEFAULT_MODE

WORKER = Path(__file__).with_name("ptml_worker.py")
FAST = "FAST_COMPILE"


def _feed(batches):
    return [{"X": x} for x in batches]


def _estimate(model, batches, **options):
    options.setdefault("mode", FAST)
    return popstats.estimate([model.X], model.y, _feed(batches), **options)


def _inference(model, batches, mode=FAST, **options):
    stats = _estimate(model, batches, **options)
    graph = popstats.rewrite(model.y, stats)
    return pytensor.function([model.X], graph, mode=mode)


FEEDFORWARD = {
    "mlp": lambda: models.mlp(),
    "mlp_float32": lambda: models.mlp("bn32", floatX="float32"),
    "no_running_stats": lambda: models.mlp("free_bn", track=False),
    "conv": models.conv,
    "float16": models.half,
}


@pytest.mark.parametrize("kind", sorted(FEEDFORWARD))
def test_statistics_and_inference_match_numpy(kind):
    model = FEEDFORWARD[kind]()
    batches = model.batches()
    stats = _estimate(model, batches)
    expected = model.stats(batches)
    assert sorted(stats) == sorted(expected)
    tol = 1e-10 if model.dtype == "float64" else 1e-5
    for name, value in expected.items():
        assert stats[name].site.role == name.rsplit(".", 1)[1]
        np.testing.assert_allclose(stats[name].value, value, rtol=tol, atol=tol)
    x1 = batches[1][:1]
    got = pytensor.function([model.X], popstats.rewrite(model.y, stats), mode=FAST)(x1)
    tol = {"float64": 1e-10, "float32": 1e-4, "float16": 1e-2}[model.dtype]
    np.testing.assert_allclose(got, model.reference(batches, x1.astype("float64")),
                               rtol=tol, atol=tol)


def test_float16_statistics_accumulate_in_float32():
    model = models.half()
    stats = _estimate(model, model.batches())
    assert {s.site.dtype for s in stats.values()} == {"float32"}


def test_layer_applied_twice_follows_its_update_chain():
    model = models.reused()
    batches = model.batches()
    table = popstats.describe(model.y)
    labels = sorted(r.label for r in table)
    assert labels == ["shared_bn.mean"] * 2 + ["shared_bn.var"] * 2
    x1 = batches[2][:1]
    np.testing.assert_allclose(_inference(model, batches)(x1),
                               model.reference(batches, x1), rtol=1e-10, atol=1e-10)


def test_recurrent_cell_is_normalized_per_step_past_the_longest_sequence():
    model = models.rnn()
    batches = model.batches()  # sequences of 5 steps
    stats = _estimate(model, batches)
    per_step = model.per_step(batches)
    np.testing.assert_allclose(stats["cell_bn.mean"].value, [m for m, _ in per_step],
                               rtol=1e-10)
    np.testing.assert_allclose(stats["cell_bn.var"].value, [v for _, v in per_step],
                               rtol=1e-10)
    graph = popstats.rewrite(model.y, stats)
    longer = np.random.default_rng(9).normal(1.0, 2.0, (1, 8, 3))
    got = pytensor.function([model.X], graph, mode=FAST)(longer)
    np.testing.assert_allclose(got, model.reference(batches, longer), rtol=1e-10,
                               atol=1e-12)


def test_nested_loops_are_normalized_per_step_of_each_loop():
    model = models.nested()
    batches = model.batches()
    (site,) = {s.site.where for s in _estimate(model, batches).values()}
    assert site == "chunks/deep_recurrence"
    x1 = batches[0][:, :1]
    np.testing.assert_allclose(_inference(model, batches)(x1),
                               model.reference(batches, x1), rtol=1e-10, atol=1e-12)


def test_labels_in_loops_come_from_the_layer_not_the_interned_op():
    first, second = models.rnn("first"), models.rnn("second")
    assert {r.label for r in popstats.describe(first.y)} == {
        "first_bn.mean", "first_bn.var"}
    assert {r.label for r in popstats.describe(second.y)} == {
        "second_bn.mean", "second_bn.var"}


def test_pooled_estimator_pairs_mean_and_variance():
    model = models.mlp()
    batches = model.batches()
    stats = _estimate(model, batches, estimator="pooled")
    means = np.array([_batch_moments(model, x)[0] for x in batches])
    variances = np.array([_batch_moments(model, x)[1] for x in batches])
    pooled_mean = means.mean(0)
    pooled_var = (variances + means**2).mean(0) - pooled_mean**2
    np.testing.assert_allclose(stats["bn.mean"].value, pooled_mean, rtol=1e-10)
    np.testing.assert_allclose(stats["bn.var"].value, pooled_var, rtol=1e-10)


def _batch_moments(model, x):
    one = model.stats([x])
    return one["bn.mean"], one["bn.var"]


def test_expansion_computes_what_the_op_computes():
    for model in (models.mlp(), models.mlp("b32", floatX="float32"), models.half(),
                  models.mlp("nr", track=False)):
        nodes = [n for n in applys_between([model.X], [model.y])
                 if recognizer.matches(n.op)]
        (node,) = nodes
        body = recognizer.expand(node, RecognitionContext(()))
        assert [b.type for b in body] == [o.type for o in node.outputs]
        inputs = [model.X]
        f = pytensor.function(inputs, [*node.outputs, *body], mode=FAST)
        x = model.batches()[0]
        values = f(x)
        # the normalized output exactly; the running averages of a float16
        # input within its rounding (pytensor-ml scales the float16 mean)
        np.testing.assert_allclose(values[3], values[0], rtol=1e-6, atol=1e-6)
        tol = 1e-3 if model.dtype == "float16" else 1e-6
        for op_value, ours in zip(values[1:3], values[4:], strict=True):
            np.testing.assert_allclose(ours, op_value, rtol=tol, atol=tol)


@pytest.mark.parametrize("mode", [pytest.param(DEFAULT_MODE, id="None"), "JAX", "CVM"])
def test_inference_graph_compiles_in_every_cpu_mode(mode):
    if mode == "JAX":
        pytest.importorskip("jax")
    model = models.rnn()
    batches = model.batches()
    graph = popstats.rewrite(model.y, _estimate(model, batches))
    compiled = pytensor.function([model.X], graph, mode=mode)
    x1 = batches[0][:1]
    np.testing.assert_allclose(compiled(x1), model.reference(batches, x1), rtol=1e-8,
                               atol=1e-10)


def test_inference_graph_is_differentiable():
    model = models.rnn()
    graph = popstats.rewrite(model.y, _estimate(model, model.batches()))
    weight = model.bns[0].scale
    grad = pytensor.grad(graph.sum(), weight)
    value = pytensor.function([model.X], grad, mode=FAST)(model.batches()[0][:1])
    assert value.shape == weight.get_value().shape and np.isfinite(value).all()
    assert np.abs(value).sum() > 0


@pytest.mark.parametrize("kind", ["mlp", "rnn"])
def test_compile_predict_keeps_population_statistics(kind):
    model = models.mlp() if kind == "mlp" else models.rnn()
    batches = model.batches()
    graph = popstats.rewrite(model.y, _estimate(model, batches))
    x1 = batches[0][:1]
    predicted = compile_predict(graph, inputs=[model.X],
                                compile_kwargs={"mode": FAST})(x1)
    np.testing.assert_allclose(predicted, model.reference(batches, x1), rtol=1e-8,
                               atol=1e-10)
    # pytensor-ml's own prediction reads its running averages (still 0 and 1)
    running = compile_predict(model.y, inputs=[model.X],
                              compile_kwargs={"mode": FAST})(x1)
    assert not np.allclose(running, predicted)


def test_the_users_graph_is_not_changed():
    model = models.rnn()
    before = applys_between([model.X], [model.y])
    before = [(type(n.op).__name__, n.op) for n in before]
    popstats.rewrite(model.y, _estimate(model, model.batches()))
    after = [(type(n.op).__name__, n.op)
             for n in applys_between([model.X], [model.y])]
    assert after == before


def _worker(*args: str) -> dict:
    proc = subprocess.run([sys.executable, str(WORKER), *args], capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_deploy_from_another_process(tmp_path):
    """Process A (which built another model first) saves; this process loads."""
    saved = _worker("save", str(tmp_path))
    # built after other models here, so the loop's interned ops carry other names
    models.rnn("other"), models.nested()
    for name, model in (("mlp", models.mlp()), ("rnn", models.rnn()),
                        ("nested", models.nested())):
        stats = popstats.load(tmp_path / f"{name}.npz")
        graph = popstats.rewrite(model.y, stats)
        x1 = np.asarray(saved[name]["x"])
        got = pytensor.function([model.X], graph, mode=FAST)(x1)
        np.testing.assert_allclose(got, np.asarray(saved[name]["y"]), rtol=1e-12)


def test_fingerprints_do_not_depend_on_what_the_process_built_before():
    fresh = _worker("fingerprints")
    models.rnn("decoy")
    here = {name: _fingerprints(build()) for name, build in
            (("rnn", models.rnn), ("nested", models.nested))}
    assert here == fresh


def _fingerprints(model) -> list[str]:
    sites = popstats.export(model.y).sites
    return sorted("/".join([*(s.fingerprint for s in site.id.path),
                            site.id.fingerprint]) for site in sites)


def test_drift_sees_recognized_statistics():
    model = models.rnn()
    batches = model.batches()
    stats = _estimate(model, batches)
    same = popstats.drift(stats, [model.X], model.y, _feed(batches), mode=FAST)
    moved = popstats.drift(stats, [model.X], model.y, _feed([x + 2.0 for x in batches]),
                           mode=FAST)
    (record,) = moved.values()
    (unmoved,) = same.values()
    assert (record.label, record.where) == ("cell_bn.mean", "cell_recurrence")
    assert list(moved) == ["cell_bn"]  # the layer's name, as the user gave it
    assert record.mean > 10 * unmoved.mean


_NODE = re.compile(r'^\s*(\w+|"[^"]*") \[label="((?:[^"\\]|\\.)*)"([^\]]*)\]', re.M)


def _boxes(source: str, text: str) -> list[tuple[str, str]]:
    """(label, other attributes) of the DOT nodes of ``source`` whose label holds
    ``text``."""
    return [(label, attrs) for _, label, attrs in _NODE.findall(source)
            if text in label]


@pytest.mark.parametrize("kind", ["mlp", "rnn", "nested", "reused"])
def test_draw_highlights_recognized_statistics_with_their_labels(kind):
    pytest.importorskip("graphviz")
    # built after another RNN: the loop's interned op carries the other's name
    models.rnn("decoy")
    build, layer, where = {
        "mlp": (models.mlp, "bn", "<graph>"),
        "rnn": (models.rnn, "cell_bn", "cell_recurrence"),
        "nested": (models.nested, "deep_bn", "chunks/deep_recurrence"),
        "reused": (models.reused, "shared_bn", "<graph>")}[kind]
    model = build()
    source = popstats.draw(model.y).source
    boxes = _boxes(source, "BatchNormLayer")
    assert len(boxes) == (2 if kind == "reused" else 1), boxes
    for label, attrs in boxes:
        assert label == f"BatchNormLayer\n[{layer}.mean, {layer}.var]", label
        assert "fillcolor=orange" in attrs and "style=filled" in attrs, attrs
    # other pytensor-ml layers in a loop body are named by their class
    assert "decoy" not in source
    if kind in ("rnn", "nested"):
        assert "op LinearLayer" in source and "op cell_lin" not in source
    # summarized: the statistics counted where they are (in the loop for RNNs)
    summary = popstats.draw(model.y, max_nodes=3).source
    (box,) = [b for b in _boxes(summary, "statistics") if b[0].startswith(f"{where}\n")]
    assert box[0].endswith(f"{2 * len(boxes)} statistics"), box
    assert "fillcolor=orange" in box[1], box


def test_draw_rewrite_shows_recognized_statistics_replaced():
    pytest.importorskip("graphviz")
    model = models.rnn()
    graph = popstats.rewrite(model.y, _estimate(model, model.batches()))
    source = popstats.draw_rewrite(model.y, graph).source
    before, after = source.split("subgraph cluster_after")
    assert _boxes(before, "BatchNormLayer\n[cell_bn.mean, cell_bn.var]")
    assert "BatchNormLayer" not in after and "orange" not in after
    for name in ("cell_bn.mean", "cell_bn.var"):
        (box,) = _boxes(after, f"{name}\n(population)")
        assert "fillcolor=palegreen" in box[1], box


def test_an_estimation_pass_through_dropout_warns():
    """pytensor-ml's Dropout draws its masks from generators that a plain
    compiled function does not advance: the pass would see one dropped-out
    network, while prediction drops the layer. popstats says so."""
    from pytensor_ml.layers import BatchNorm, Dropout, Input, Linear, Sequential

    X = Input("X", shape=(None, 4))
    with_dropout = Sequential(Linear("fc", n_in=4, n_out=6),
                              Dropout("drop", p=0.5, random_state=0),
                              BatchNorm("bn", n_in=6))(X)
    without = Sequential(Linear("fc2", n_in=4, n_out=6), BatchNorm("bn2", n_in=6))(X)
    batches = [{"X": np.random.default_rng(i).normal(size=(8, 4))} for i in range(3)]
    with pytest.warns(popstats.PopstatsWarning, match="pytensor-ml Dropout layers"):
        popstats.estimate([X], with_dropout, batches, mode="FAST_COMPILE")
    popstats.estimate([X], without, batches, mode="FAST_COMPILE")  # no warning
    with pytest.raises(popstats.PopstatsError, match="random numbers"):
        popstats.estimate([X], with_dropout, batches, mode="FAST_COMPILE",
                          upstream="population")
