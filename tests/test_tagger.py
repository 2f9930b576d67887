"""The tagger: bn_statistic marks, and the var.tag.bn_statistic convention."""

from __future__ import annotations

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from pytensor.compile.mode import Mode
from pytensor.graph.fg import FunctionGraph
from pytensor.graph.replace import clone_replace
from pytensor.graph.rewriting.basic import MergeOptimizer
from pytensor.graph.traversal import toposort
from pytensor.scan.op import Scan
from shared import DEFAULT_MODE, PT_VERSION

import popstats
from popstats import BNStat

MODE = "FAST_COMPILE"
EPS = 1e-3
FROZEN_SCAN = PT_VERSION >= (3, 1)  # Scan inner graphs frozen and interned
# The op's own perform and grad, without the rewrite that removes it.
NO_REWRITES = Mode(linker="py", optimizer=None)


# --------------------------------------------------------------------- helpers


def marks(outputs):
    """The BNStat nodes of a graph, outer level only."""
    return [n for n in toposort(outputs) if isinstance(n.op, BNStat)]


def scan_nodes(outputs):
    return [n for n in toposort(outputs) if isinstance(n.op, Scan)]


def inner_marks(scan_op):
    return [n for n in scan_op.fgraph.apply_nodes if isinstance(n.op, BNStat)]


def compiled_ops(fgraph):
    """Every op of a compiled function, recursing into Scan inner graphs."""
    ops = []
    for node in fgraph.apply_nodes:
        ops.append(node.op)
        if isinstance(node.op, Scan):
            ops.extend(compiled_ops(node.op.fgraph))
            inner_fn = getattr(node.op, "_fn", None)  # compiled inner function
            if inner_fn is not None:
                ops.extend(compiled_ops(inner_fn.maker.fgraph))
    return ops


def numpy_bn(h, axis=0):
    mean = h.mean(axis=axis, keepdims=True)
    return (h - mean) / np.sqrt(h.var(axis=axis, keepdims=True) + EPS)


def batches(n=3, shape=(5, 3), seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(1.0, 2.0, shape) for _ in range(n)]


# ------------------------------------------------------------- the identity


def _bn_cost(mark):
    x = pt.matrix("x")
    w = pt.vector("w")
    h = x * w
    mean, var = h.mean(axis=0), h.var(axis=0)
    if mark:
        mean = popstats.bn_statistic(mean, label="mean")
        var = popstats.bn_statistic(var, label="var")
    y = (h - mean) / pt.sqrt(var + EPS)
    cost = (y**3 * np.array([1.0, 2.0, 3.0])).sum()
    return x, w, cost, pytensor.grad(cost, w)


@pytest.mark.parametrize(
    "mode", [MODE, NO_REWRITES], ids=["fast_compile", "no_rewrites"]
)
def test_value_and_gradient_equal_the_unmarked(mode):
    xv = batches(1)[0]
    wv = np.array([1.0, -0.5, 2.0])
    results = []
    for mark in (False, True):
        x, w, cost, grad = _bn_cost(mark)
        assert bool(marks([cost])) == mark
        results.append(pytensor.function([x, w], [cost, grad], mode=mode)(xv, wv))
    (cost0, grad0), (cost1, grad1) = results
    np.testing.assert_allclose(cost1, cost0, rtol=1e-12)
    np.testing.assert_allclose(grad1, grad0, rtol=1e-12)
    expected = (numpy_bn(xv * wv) ** 3 * [1.0, 2.0, 3.0]).sum()
    np.testing.assert_allclose(cost1, expected, rtol=1e-10)
    # central differences: the gradient is the full one (through the statistics)
    fn = pytensor.function([x, w], cost, mode=mode)
    delta = 1e-6
    numeric = [
        (fn(xv, wv + delta * e) - fn(xv, wv - delta * e)) / (2 * delta)
        for e in np.eye(3)
    ]
    np.testing.assert_allclose(grad1, numeric, rtol=1e-5, atol=1e-6)


def test_marked_variable():
    x = pt.matrix("x")
    m = x.mean(axis=0)
    m.name = "mu"
    op_before = m.owner.op
    marked = popstats.bn_statistic(m, label="layer1.mean")
    assert marked is not m
    assert marked.owner.inputs == [m]
    assert marked.type == m.type
    assert marked.name == "mu"
    assert isinstance(marked.owner.op, BNStat)
    assert marked.owner.op.label == "layer1.mean"
    assert str(marked.owner.op) == "BNStat{layer1.mean}"
    assert popstats.is_statistic(marked)
    # the argument is untouched
    assert m.owner.op is op_before
    assert not popstats.is_statistic(m)
    # default labels: the name, else "bn_stat"
    assert popstats.bn_statistic(m).owner.op.label == "mu"
    unnamed = x.sum(axis=0)
    assert unnamed.name is None
    assert popstats.bn_statistic(unnamed).owner.op.label == "bn_stat"


# ---------------------------------------------------------- distinct marks


def test_same_label_gives_distinct_keys_and_is_not_merged():
    """Two marks of one computation with one label: distinct ops, one statistic.

    They compute the same value, so popstats estimates it once and gives it
    to both (their fingerprints are equal: the marker's key is not part of
    a statistic's identity).
    """
    x = pt.matrix("x")
    m = x.mean(axis=0)
    a = popstats.bn_statistic(m, label="m")
    b = popstats.bn_statistic(m, label="m")
    assert a.owner.op.key != b.owner.op.key
    assert a.owner.op != b.owner.op
    y = x * a + b
    fg = FunctionGraph([x], [y], clone=True)
    MergeOptimizer().rewrite(fg)
    merged = [n for n in fg.apply_nodes if isinstance(n.op, BNStat)]
    assert len(merged) == 2
    assert {n.op.key for n in merged} == {a.owner.op.key, b.owner.op.key}

    eg = popstats.export(y)
    assert [site.name for site in eg.sites] == ["m"]
    data = batches(2)
    stats = popstats.estimate([x], y, [{"x": v} for v in data], mode=MODE)
    expected = np.mean([v.mean(axis=0) for v in data], axis=0)
    np.testing.assert_allclose(stats["m"].value, expected)
    out = pytensor.function([x], popstats.rewrite(y, stats), mode=MODE)(data[0])
    np.testing.assert_allclose(out, data[0] * expected + expected)


def test_same_label_inside_scan_is_not_merged():
    """On PyTensor >= 3.1 the inner graph is frozen and equal nodes interned."""
    x = pt.matrix("x")
    keys = []

    def step(xt):
        mean = xt.mean()  # one input: equal-props marks would be one node
        a = popstats.bn_statistic(mean, label="m")
        b = popstats.bn_statistic(mean, label="m")
        keys.extend([a.owner.op.key, b.owner.op.key])
        return xt * a + b

    ys = pytensor.scan(step, sequences=[x], return_updates=False)
    (node,) = scan_nodes([ys])
    inner = inner_marks(node.op)
    assert len(inner) == 2
    assert sorted(n.op.key for n in inner) == sorted(keys)
    assert len(set(keys)) == 2
    assert len({n.inputs[0] for n in inner}) == 1

    eg = popstats.export(ys)
    assert [(site.name, site.depth) for site in eg.sites] == [("m", 1)]
    data = batches(2, shape=(4, 3))
    stats = popstats.estimate([x], ys, [{"x": v} for v in data], mode=MODE)
    expected = np.mean([v.mean(axis=1) for v in data], axis=0)
    np.testing.assert_allclose(stats["m"].value, expected)
    out = pytensor.function([x], popstats.rewrite(ys, stats), mode=MODE)(data[0])
    np.testing.assert_allclose(out, data[0] * expected[:, None] + expected[:, None])


# ------------------------------------------------------------ survival


def test_mark_survives_clone_replace():
    x = pt.matrix("x")
    mean = popstats.bn_statistic(x.mean(axis=0), label="mean")
    y = x - mean
    x2 = pt.matrix("x2")
    y2 = clone_replace(y, {x: x2 * 2.0})
    (site,) = popstats.export(y2).sites
    assert (site.name, site.id.key) == ("mean", mean.owner.op.key)
    data = batches(2)
    stats = popstats.estimate([x2], y2, [{"x2": v} for v in data], mode=MODE)
    np.testing.assert_allclose(
        stats["mean"].value, np.mean([2.0 * v.mean(axis=0) for v in data], axis=0)
    )


def test_mark_survives_scan_freezing():
    x = pt.matrix("x")
    made = []

    def step(xt):
        mean = popstats.bn_statistic(xt.mean(), label="row_mean")
        made.append(mean.owner.op)
        return xt - mean

    ys = pytensor.scan(step, sequences=[x], return_updates=False)
    (node,) = scan_nodes([ys])
    (inner,) = inner_marks(node.op)
    assert (inner.op.key, inner.op.label) == (made[0].key, made[0].label)
    (site,) = popstats.export(ys).sites
    assert (site.name, site.depth, site.id.key) == ("row_mean", 1, made[0].key)


def test_mark_survives_grad():
    x, w, cost, grad = _bn_cost(mark=True)
    keys = {n.op.key for n in marks([cost])}
    assert len(keys) == 2
    # the gradient graph uses the marked forward statistics
    assert {n.op.key for n in marks([grad])} == keys
    eg = popstats.export(grad)
    assert {site.id.key for site in eg.sites} == keys
    assert sorted(site.name for site in eg.sites) == ["mean", "var"]
    data = batches(2)
    wv = np.array([1.0, -0.5, 2.0])
    stats = popstats.estimate([x, w], grad, [(v, wv) for v in data], mode=MODE)
    np.testing.assert_allclose(
        stats["var"].value, np.mean([(v * wv).var(axis=0) for v in data], axis=0)
    )


# ------------------------------------------------------- compiled graphs


@pytest.mark.parametrize("mode", [pytest.param(DEFAULT_MODE, id="None"), "CVM",
                                  "FAST_COMPILE"])
def test_compiled_graph_has_no_mark(mode):
    x = pt.matrix("x")
    mean = popstats.bn_statistic(x.mean(axis=0), label="mean")

    def step(xt):
        return xt - popstats.bn_statistic(xt.mean(), label="row_mean")

    ys = pytensor.scan(step, sequences=[x - mean], return_updates=False)
    (node,) = scan_nodes([ys])
    assert marks([ys]) and inner_marks(node.op)  # marked before compiling
    fn = pytensor.function([x], ys, mode=mode)
    ops = compiled_ops(fn.maker.fgraph)
    assert any(isinstance(op, Scan) for op in ops)
    assert not [op for op in ops if isinstance(op, BNStat)]
    xv = batches(1, shape=(3, 4))[0]
    centred = xv - xv.mean(axis=0)
    np.testing.assert_allclose(
        fn(xv), centred - centred.mean(axis=1, keepdims=True), rtol=1e-10, atol=1e-12
    )


# ---------------------------------------------------------- tag convention


def test_tag_convention_outer_graph():
    x = pt.matrix("x")
    mean = x.mean(axis=0)
    mean.tag.bn_statistic = True
    mean.tag.bn_label = "mu"  # the label wins over the name
    mean.name = "ignored"
    var = x.var(axis=0)
    var.name = "sigma2"  # no label: the name
    var.tag.bn_statistic = True
    other = x.max(axis=0)
    assert other.name is None
    other.tag.bn_statistic = True  # neither: "bn_stat"
    y = (x - mean) / pt.sqrt(var + EPS) + 0.0 * other
    assert all(popstats.is_statistic(v) for v in (mean, var, other))
    assert not popstats.is_statistic(x.min(axis=0))
    assert sorted(site.name for site in popstats.export(y).sites) == [
        "bn_stat",
        "mu",
        "sigma2",
    ]
    # tags survive clone_replace in the outer graph
    x2 = pt.matrix("x2")
    y2 = clone_replace(y, {x: x2})
    assert len(popstats.export(y2).sites) == 3

    data = batches(3)
    stats = popstats.estimate([x], y, [{"x": v} for v in data], mode=MODE)
    mu = np.mean([v.mean(axis=0) for v in data], axis=0)
    sigma2 = np.mean([v.var(axis=0) for v in data], axis=0)
    np.testing.assert_allclose(stats["mu"].value, mu)
    np.testing.assert_allclose(stats["sigma2"].value, sigma2)
    y_inf = popstats.rewrite(y, stats)
    xv = batches(1, seed=5)[0]
    out = pytensor.function([x], y_inf, mode=MODE)(xv)
    np.testing.assert_allclose(out, (xv - mu) / np.sqrt(sigma2 + EPS), rtol=1e-10)


@pytest.mark.skipif(
    FROZEN_SCAN,
    reason="PyTensor >= 3.1 drops tags inside Scan (the error is in test_errors.py)",
)
def test_tag_convention_inside_scan():
    x = pt.matrix("x")

    def step(xt):
        mean = xt.mean()
        mean.tag.bn_statistic = True
        mean.tag.bn_label = "row_mean"
        var = xt.var()
        var.name = "row_var"
        var.tag.bn_statistic = True
        return (xt - mean) / pt.sqrt(var + EPS)

    ys = pytensor.scan(step, sequences=[x], return_updates=False)
    eg = popstats.export(ys)
    assert sorted((s.name, s.depth) for s in eg.sites) == [
        ("row_mean", 1),
        ("row_var", 1),
    ]
    data = batches(3, shape=(4, 3))
    stats = popstats.estimate([x], ys, [{"x": v} for v in data], mode=MODE)
    mean = np.mean([v.mean(axis=1) for v in data], axis=0)
    var = np.mean([v.var(axis=1) for v in data], axis=0)
    np.testing.assert_allclose(stats["row_mean"].value, mean)
    np.testing.assert_allclose(stats["row_var"].value, var)
    xv = batches(1, shape=(4, 3), seed=9)[0]
    out = pytensor.function([x], popstats.rewrite(ys, stats), mode=MODE)(xv)
    expected = (xv - mean[:, None]) / np.sqrt(var[:, None] + EPS)
    np.testing.assert_allclose(out, expected, rtol=1e-10)
