"""Models for the cross-process deployment tests (``test_deploy.py``).

Every builder is deterministic: called in two fresh processes it builds the
same graph (same labels, same loop names, same structure), the same weights
(from a fixed seed), the same training batches and the same test batch. The
test process never builds them; ``deploy_worker.py`` does, once in the
process that estimates and saves (step A) and again in the process that
loads and rewrites (step B).

A :class:`Model` lists one batch list per statistic set (most have one; the
``sets`` model has two, estimated on different data) and, for models whose
layer is reused, the output indices of each branch, which step B also
rewrites alone.

Graph variables are built with ``pytensor.config.floatX``; the worker sets
it to ``float64`` before building.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytensor
import pytensor.tensor as pt
from pytensor.graph.replace import clone_replace
from pytensor.graph.traversal import toposort
from pytensor.scan.op import Scan

import popstats
from popstats import nn

EPS = 1e-5


@dataclass
class Model:
    """A model, its data, and how step B uses it."""

    #: where its statistics are saved: ``{stem}.stats{k}.npz`` (a variant
    #: built with other labels reads the files of the model it varies)
    stem: str
    inputs: list
    outputs: list
    #: one list of training batches (dicts keyed by input name) per set
    batch_sets: list
    #: the inference batch (sequences longer than any seen in training)
    test: dict
    #: output indices of each reused branch (rewritten alone in step B)
    branches: tuple = ()
    estimator: str = "mean"


class Marks:
    """Marks statistics with ``bn_statistic`` or with the tag convention.

    ``rename`` maps labels to other labels (a model built with a label
    changed, as if someone edited the code between steps A and B).
    """

    def __init__(self, tags: bool = False, rename: dict | None = None):
        self.tags = tags
        self.rename = dict(rename or {})

    def label(self, label: str) -> str:
        return self.rename.get(label, label)

    def __call__(self, var, label: str, **options):
        label = self.label(label)
        if self.tags:
            var.tag.bn_statistic = True
            var.tag.bn_label = label
            return var
        return popstats.bn_statistic(var, label=label, **options)


def weights(seed: int, **shapes) -> dict:
    """Shared variables drawn from ``default_rng(seed)``, in keyword order."""
    rng = np.random.default_rng(seed)
    return {
        name: pytensor.shared(rng.normal(0.0, 0.7, shape), name=name)
        for name, shape in shapes.items()
    }


def sequences(seed: int, name: str, shapes, loc: float, scale: float) -> list:
    """Batches ``{name: array}`` of the given shapes (features last)."""
    rng = np.random.default_rng(seed)
    return [{name: rng.normal(loc, scale, shape)} for shape in shapes]


def loop(step, name=None, **kwargs):
    return pytensor.scan(step, name=name, return_updates=False, **kwargs)


def normalize(a, marks: Marks, prefix: str):
    mean = marks(a.mean(0), f"{prefix}.mean")
    var = marks(a.var(0), f"{prefix}.var")
    return (a - mean) / pt.sqrt(var + EPS)


# --------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------


def build_mlp(marks: Marks | None = None) -> Model:
    """Feed-forward: two dense layers, each batch-normalized, then a readout."""
    marks = marks or Marks()
    p = weights(101, W1=(3, 5), b1=(5,), g1=(5,), W2=(5, 4), g2=(4,), W3=(4, 2))
    x = pt.matrix("x")
    h1 = pt.dot(x, p["W1"]) + p["b1"]
    a1 = pt.tanh(p["g1"] * normalize(h1, marks, "l1"))
    h2 = pt.dot(a1, p["W2"])
    a2 = pt.tanh(p["g2"] * normalize(h2, marks, "l2"))
    y = pt.dot(a2, p["W3"])
    rng = np.random.default_rng(201)
    batches = [{"x": rng.normal(1.0, 2.0, (b, 3))} for b in (6, 9, 4, 7, 5)]
    test = {"x": rng.normal(1.0, 2.0, (3, 3))}
    return Model("mlp", [x], [y], [batches], test)


def build_rnn(marks: Marks | None = None) -> Model:
    """BN-RNN: per-step statistics; batches of varying lengths, longer test."""
    marks = marks or Marks()
    p = weights(102, Wx=(2, 4), Wh=(4, 4), g=(4,), b=(4,), Wo=(4, 2))
    x = pt.tensor3("seq")

    def step(xt, h, Wx, Wh, g, b):
        a = pt.dot(xt, Wx) + pt.dot(h, Wh)
        return pt.tanh(g * normalize(a, marks, "rnn") + b)

    hs = loop(
        step,
        "rnn",
        sequences=[x],
        outputs_info=[pt.zeros((x.shape[1], 4))],
        non_sequences=[p["Wx"], p["Wh"], p["g"], p["b"]],
    )
    y = pt.dot(hs, p["Wo"])
    shapes = [(3, 4, 2), (5, 6, 2), (2, 3, 2), (4, 5, 2)]
    batches = sequences(202, "seq", shapes, 0.5, 1.5)
    test = sequences(203, "seq", [(8, 3, 2)], 0.5, 1.5)[0]
    return Model("rnn", [x], [y], [batches], test)


def build_nested(marks: Marks | None = None) -> Model:
    """Two nested loops with per-step statistics at both levels."""
    marks = marks or Marks()
    p = weights(103, Wx=(2, 4), Wg=(4, 4), Wo=(4, 4), go=(4,), Wy=(4, 2))
    x = pt.tensor4("chunks")  # (outer steps, inner steps, batch, features)

    def inner_step(xt, g, Wx, Wg):
        a = pt.dot(xt, Wx) + pt.dot(g, Wg)
        return pt.tanh(normalize(a, marks, "inner"))

    def outer_step(chunk, h, Wx, Wg, Wo, go):
        gs = loop(
            inner_step,
            "inner",
            sequences=[chunk],
            outputs_info=[h],
            non_sequences=[Wx, Wg],
        )
        b = pt.dot(gs[-1], Wo)
        return pt.tanh(go * normalize(b, marks, "outer"))

    hs = loop(
        outer_step,
        "outer",
        sequences=[x],
        outputs_info=[pt.zeros((x.shape[2], 4))],
        non_sequences=[p["Wx"], p["Wg"], p["Wo"], p["go"]],
    )
    y = pt.dot(hs, p["Wy"])
    shapes = [(2, 3, 4, 2), (3, 2, 3, 2), (1, 4, 5, 2), (3, 3, 4, 2)]
    batches = sequences(204, "chunks", shapes, 0.5, 1.5)
    test = sequences(205, "chunks", [(5, 6, 3, 2)], 0.5, 1.5)[0]
    return Model("nested", [x], [y], [batches], test)


def build_sets(marks: Marks | None = None) -> Model:
    """An input statistic outside a loop and per-step ones inside; two sets
    of batches from different distributions (and of different lengths)."""
    marks = marks or Marks()
    p = weights(104, Wx=(2, 4), Wh=(4, 4), g=(4,), Wo=(4, 2))
    x = pt.tensor3("signal")
    centred = x - marks(x.mean((0, 1)), "input.mean")

    def step(xt, h, Wx, Wh, g):
        a = pt.dot(xt, Wx) + pt.dot(h, Wh)
        return pt.tanh(g * normalize(a, marks, "cell"))

    hs = loop(
        step,
        "cell",
        sequences=[centred],
        outputs_info=[pt.zeros((x.shape[1], 4))],
        non_sequences=[p["Wx"], p["Wh"], p["g"]],
    )
    y = pt.dot(hs, p["Wo"])
    first = sequences(206, "signal", [(3, 4, 2), (5, 5, 2), (2, 3, 2)], 0.5, 1.0)
    second = sequences(207, "signal", [(2, 5, 2), (3, 4, 2), (6, 6, 2)], -2.0, 3.0)
    test = sequences(208, "signal", [(9, 3, 2)], -0.5, 2.0)[0]
    return Model("sets", [x], [y], [first, second], test)


def _bn_params(size: int, label: str, seed: int) -> tuple:
    """``nn.bn_params`` with values drawn from a seed (as if trained)."""
    gamma, beta = nn.bn_params(size, label=label)
    rng = np.random.default_rng(seed)
    gamma.set_value(1.0 + 0.3 * rng.normal(size=size))
    beta.set_value(0.3 * rng.normal(size=size))
    return gamma, beta


def build_nn_ff(marks: Marks | None = None) -> Model:
    """``popstats.nn.batch_norm`` feed-forward (pooled estimator)."""
    marks = marks or Marks()
    p = weights(105, W1=(3, 5), W2=(5, 3))
    g1, b1 = _bn_params(5, "fc1", 305)
    g2, b2 = _bn_params(3, "fc2", 306)
    x = pt.matrix("features")
    bn1 = nn.batch_norm(pt.dot(x, p["W1"]), 0, g1, b1, label=marks.label("fc1"))
    bn2 = nn.batch_norm(
        pt.dot(pt.tanh(bn1.output), p["W2"]), 0, g2, b2, label=marks.label("fc2")
    )
    rng = np.random.default_rng(209)
    batches = [{"features": rng.normal(-1.0, 2.5, (b, 3))} for b in (5, 8, 6, 4)]
    test = {"features": rng.normal(-1.0, 2.5, (2, 3))}
    return Model("nn_ff", [x], [bn2.output], [batches], test, estimator="pooled")


def build_nn_rnn(marks: Marks | None = None) -> Model:
    """``popstats.nn.batch_norm`` inside an (unnamed) loop, pooled estimator."""
    marks = marks or Marks()
    p = weights(106, Wx=(2, 4), Wh=(4, 4), Wo=(4, 2))
    gamma, beta = _bn_params(4, "cell", 307)
    x = pt.tensor3("tokens")

    def step(xt, h, Wx, Wh, gamma, beta):
        a = pt.dot(xt, Wx) + pt.dot(h, Wh)
        bn = nn.batch_norm(a, 0, gamma, beta, label=marks.label("cell"))
        return pt.tanh(bn.output)

    hs = loop(
        step,
        sequences=[x],
        outputs_info=[pt.zeros((x.shape[1], 4))],
        non_sequences=[p["Wx"], p["Wh"], gamma, beta],
    )
    y = pt.dot(hs, p["Wo"])
    shapes = [(4, 3, 2), (2, 5, 2), (6, 4, 2), (3, 6, 2)]
    batches = sequences(210, "tokens", shapes, 1.0, 1.5)
    test = sequences(211, "tokens", [(9, 2, 2)], 1.0, 1.5)[0]
    return Model("nn_rnn", [x], [y], [batches], test, estimator="pooled")


def build_siamese(marks: Marks | None = None) -> Model:
    """One BN layer function applied to two named inputs (siamese style);
    both applications carry the same labels."""
    marks = marks or Marks()
    p = weights(107, W=(2, 4), g=(4,), Wo=(4, 2))

    def encoder(x):
        h = pt.dot(x, p["W"])
        return pt.dot(pt.tanh(p["g"] * normalize(h, marks, "enc")), p["Wo"])

    left, right = pt.matrix("left"), pt.matrix("right")
    rng = np.random.default_rng(212)
    batches = [
        {"left": rng.normal(0.5, 1.0, (a, 2)), "right": rng.normal(-2.0, 3.0, (b, 2))}
        for a, b in ((4, 6), (7, 3), (5, 5))
    ]
    test = {
        "left": rng.normal(0.5, 1.0, (2, 2)),
        "right": rng.normal(-2.0, 3.0, (3, 2)),
    }
    return Model(
        "siamese",
        [left, right],
        [encoder(left), encoder(right)],
        [batches],
        test,
        branches=((0,), (1,)),
    )


def build_twice(marks: Marks | None = None) -> Model:
    """The same Scan op applied to two inputs (via ``clone_replace``)."""
    marks = marks or Marks()
    p = weights(108, Wx=(2, 4), Wh=(4, 4), Wo=(4, 2))
    xa, xb = pt.tensor3("first"), pt.tensor3("second")

    def step(xt, h, Wx, Wh):
        a = pt.dot(xt, Wx) + pt.dot(h, Wh)
        return pt.tanh(normalize(a, marks, "shared"))

    ha = loop(
        step,
        "shared_loop",
        sequences=[xa],
        outputs_info=[pt.zeros((xa.shape[1], 4))],
        non_sequences=[p["Wx"], p["Wh"]],
    )
    ya = pt.dot(ha, p["Wo"])
    yb = clone_replace(ya, {xa: xb})
    scans = [node.op for node in toposort([ya, yb]) if isinstance(node.op, Scan)]
    assert len(scans) == 2 and scans[0] is scans[1], "expected one reused Scan op"
    rng = np.random.default_rng(213)
    batches = [
        {
            "first": rng.normal(0.5, 1.0, (t, b, 2)),
            "second": rng.normal(-1.5, 2.5, (u, c, 2)),
        }
        for t, b, u, c in ((3, 4, 2, 3), (2, 5, 4, 4), (4, 3, 3, 5))
    ]
    test = {
        "first": rng.normal(0.5, 1.0, (6, 3, 2)),
        "second": rng.normal(-1.5, 2.5, (7, 2, 2)),
    }
    return Model("twice", [xa, xb], [ya, yb], [batches], test, branches=((0,), (1,)))


BUILDERS: dict[str, Callable[[], Model]] = {
    "mlp": build_mlp,
    "rnn": build_rnn,
    "nested": build_nested,
    "sets": build_sets,
    "nn_ff": build_nn_ff,
    "nn_rnn": build_nn_rnn,
    "siamese": build_siamese,
    "twice": build_twice,
    # the tag convention (var.tag.bn_statistic / bn_label)
    "tags_mlp": lambda: _stem(build_mlp(Marks(tags=True)), "tags_mlp"),
    "tags_rnn": lambda: _stem(build_rnn(Marks(tags=True)), "tags_rnn"),
    # built with one label changed: they read the files of "mlp" / "nested"
    "mlp_renamed": lambda: build_mlp(Marks(rename={"l2.var": "layer2.var"})),
    "nested_renamed": lambda: build_nested(
        Marks(rename={"inner.var": "inner.variance"})
    ),
}

def _stem(model: Model, stem: str) -> Model:
    model.stem = stem
    return model


def build(name: str) -> Model:
    """The model called ``name`` (a key of :data:`BUILDERS`)."""
    return BUILDERS[name]()
