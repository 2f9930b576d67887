"""Statistic identity: reused computations, names, matching and refusals.

Each application of a marked computation is its own statistic, and the value
it gets does not depend on which outputs are estimated or rewritten, nor on
their order. References are NumPy reimplementations of the small models.
"""

from __future__ import annotations

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from pytensor.compile.builders import OpFromGraph
from pytensor.graph.replace import clone_replace
from pytensor.graph.traversal import toposort
from shared import MODE, fails, scan

import popstats

EPS = 1e-5
RNG = np.random.default_rng(7)
W_VALUE = RNG.normal(size=(3, 3))


def snapshot(outputs):
    """The structure of a graph: ops and input identities of every node."""
    return [(str(n.op), tuple(map(id, n.inputs)), tuple(map(id, n.outputs)))
            for n in toposort(outputs)]


def norm(a, mean, var):
    return (a - mean) / np.sqrt(var + EPS)


def bn_layer():
    """A batch-norm layer written as an OpFromGraph (marks inside)."""
    xi = pt.matrix("xi")
    mean = popstats.bn_statistic(xi.mean(0), "bn.mean")
    var = popstats.bn_statistic(xi.var(0), "bn.var")
    return OpFromGraph([xi], [(xi - mean) / pt.sqrt(var + EPS)])


def ofg_twice():
    layer = bn_layer()
    x = pt.matrix("x")
    w = pytensor.shared(W_VALUE, name="W")
    h = layer(x)
    y = layer(pt.dot(h, w) * 3.0 + 1.0)
    return x, h, y


def ofg_reference(batches, test):
    m1 = np.mean([b.mean(0) for b in batches], 0)
    v1 = np.mean([b.var(0) for b in batches], 0)
    inner = [norm(b, b.mean(0), b.var(0)) @ W_VALUE * 3.0 + 1.0 for b in batches]
    m2 = np.mean([a.mean(0) for a in inner], 0)
    v2 = np.mean([a.var(0) for a in inner], 0)
    h = norm(test, m1, v1)
    return h, norm(h @ W_VALUE * 3.0 + 1.0, m2, v2)


def data(n=3, rows=6):
    return [RNG.normal(1.0, 2.0, (rows, 3)) for _ in range(n)]


@pytest.mark.parametrize("order", ["together", "h_first", "y_first"])
def test_opfromgraph_applied_twice_each_application_its_own(order):
    x, h, y = ofg_twice()
    before = snapshot([h, y])
    batches, test = data(), RNG.normal(size=(4, 3))
    outs = {"together": [h, y], "h_first": [h, y], "y_first": [y, h]}[order]
    stats = popstats.estimate([x], outs, [{"x": b} for b in batches], mode=MODE)
    assert sorted(stats) == ["bn.mean#0", "bn.mean#1", "bn.var#0", "bn.var#1"]
    h_ref, y_ref = ofg_reference(batches, test)
    fn = pytensor.function([x], popstats.rewrite([h, y], stats), mode=MODE)
    got_h, got_y = fn(test)
    np.testing.assert_allclose(got_h, h_ref, rtol=1e-12)
    np.testing.assert_allclose(got_y, y_ref, rtol=1e-12)
    # each output alone gets the same values as both together
    alone = [popstats.rewrite(v, stats) for v in (h, y)]
    got_alone = pytensor.function([x], alone, mode=MODE)(test)
    np.testing.assert_allclose(got_alone[0], h_ref, rtol=1e-12)
    np.testing.assert_allclose(got_alone[1], y_ref, rtol=1e-12)
    assert snapshot([h, y]) == before


def test_opfromgraph_estimated_on_one_output_only():
    """Estimating the second application alone gives the same values."""
    x, _, y = ofg_twice()
    batches, test = data(), RNG.normal(size=(4, 3))
    stats = popstats.estimate([x], y, [{"x": b} for b in batches], mode=MODE)
    _, y_ref = ofg_reference(batches, test)
    fn = pytensor.function([x], popstats.rewrite(y, stats), mode=MODE)
    np.testing.assert_allclose(fn(test), y_ref, rtol=1e-12)


def siamese():
    left, right = pt.matrix("left"), pt.matrix("right")
    mean = popstats.bn_statistic(left.mean(0), "enc.mean")
    var = popstats.bn_statistic(left.var(0), "enc.var")
    branch = (left - mean) / pt.sqrt(var + EPS)
    return left, right, branch, clone_replace(branch, {left: right})


def test_copied_branch_rewritten_alone_gets_its_own_statistics():
    left, right, a, b = siamese()
    lb, rb = data(rows=5), [v * 3.0 - 4.0 for v in data(rows=5)]
    pairs = [{"left": p, "right": q} for p, q in zip(lb, rb, strict=True)]
    stats = popstats.estimate([left, right], [a, b], pairs, mode=MODE)
    test = RNG.normal(size=(2, 3))
    for var, inp, seen in ((a, left, lb), (b, right, rb)):
        mean = np.mean([v.mean(0) for v in seen], 0)
        variance = np.mean([v.var(0) for v in seen], 0)
        fn = pytensor.function([inp], popstats.rewrite(var, stats), mode=MODE)
        np.testing.assert_allclose(fn(test), norm(test, mean, variance), rtol=1e-12)


def test_one_value_for_two_applications_is_refused():
    left, right, a, b = siamese()
    only_left = popstats.estimate([left], a, [{"left": v} for v in data()], mode=MODE)
    with fails("rewrite(stats=...)", "'enc.mean'", "has no value",
               "computed differently", "match='name'"):
        popstats.rewrite([a, b], only_left)
    # by name, the right branch alone would take it; both at once cannot
    with fails("rewrite(stats=...)", "2 places", "one value", "Estimate on this graph"):
        popstats.rewrite([a, b], only_left, match="name")
    alone = popstats.rewrite(b, only_left, match="name")
    fn = pytensor.function([right], alone, mode=MODE)
    assert fn(np.ones((2, 3))).shape == (2, 3)


def test_same_scan_op_on_two_inputs():
    x1, x2 = pt.matrix("x1"), pt.matrix("x2")

    def step(xt, h):
        a = xt + h
        return a - popstats.bn_statistic(a.mean(), "s.mean")

    first = scan(step, sequences=[x1], outputs_info=[pt.zeros((3,))],
                 name="shared_loop")
    second = clone_replace(first, {x1: x2})
    assert second.owner.inputs[0].owner is not None
    seqs1 = [RNG.normal(size=(4, 3)) for _ in range(3)]
    seqs2 = [5.0 + RNG.normal(size=(4, 3)) for _ in range(3)]
    batches = [{"x1": p, "x2": q} for p, q in zip(seqs1, seqs2, strict=True)]
    stats = popstats.estimate([x1, x2], [second, first], batches, mode=MODE)
    assert len(stats) == 2

    def reference(seqs, test):
        per_batch = []
        for s in seqs:
            h, means = np.zeros(3), []
            for row in s:
                means.append((row + h).mean())
                h = (row + h) - means[-1]
            per_batch.append(means)
        pop = np.mean(per_batch, 0)
        h, out = np.zeros(3), []
        for t, row in enumerate(test):
            h = (row + h) - pop[min(t, len(pop) - 1)]
            out.append(h)
        return np.array(out)

    test = RNG.normal(size=(6, 3))  # longer than any seen
    for var, inp, seqs in ((first, x1, seqs1), (second, x2, seqs2)):
        fn = pytensor.function([inp], popstats.rewrite(var, stats), mode=MODE)
        np.testing.assert_allclose(fn(test), reference(seqs, test), rtol=1e-12)


def test_generated_names_skip_user_labels():
    x = pt.matrix("x")
    a = popstats.bn_statistic(x.mean(0), "bn")
    b = popstats.bn_statistic(x.max(0), "bn")
    c = popstats.bn_statistic(x.min(0), "bn#0")
    y = x + a + 2.0 * b + 3.0 * c
    names = [s.name for s in popstats.export(y).sites]
    assert sorted(names) == ["bn#0", "bn#1", "bn#2"]
    batches = data(2)
    stats = popstats.estimate([x], y, [{"x": v} for v in batches], mode=MODE)
    assert len(stats) == 3
    by_value = {
        "mean": np.mean([v.mean(0) for v in batches], 0),
        "max": np.mean([v.max(0) for v in batches], 0),
        "min": np.mean([v.min(0) for v in batches], 0),
    }
    assert stats["bn#0"].label == "bn#0"
    np.testing.assert_allclose(stats["bn#0"].value, by_value["min"])
    fn = pytensor.function([x], popstats.rewrite(y, stats), mode=MODE)
    expected = by_value["mean"] + 2.0 * by_value["max"] + 3.0 * by_value["min"]
    np.testing.assert_allclose(fn(batches[0]), batches[0] + expected)


def test_indistinguishable_applications_are_refused():
    """Inputs that differ only by being different unnamed variables."""
    u, v = pt.matrix(), pt.matrix()
    branch = u - popstats.bn_statistic(u.mean(0), "bn")
    other = clone_replace(branch, {u: v})
    with fails("export(outputs=...)", "'bn'", "cannot tell apart",
               "Name the inputs", "own label"):
        popstats.export([branch, other])
    # the same computation reached twice is one statistic (same value)
    again = clone_replace(branch, {u: u})
    (site,) = popstats.export([branch, again]).sites
    assert site.name == "bn"


def test_fingerprint_ignores_marker_keys_and_sees_structure():
    def build(scale, name="W"):
        x = pt.matrix("x")
        w = pytensor.shared(np.eye(3), name=name)
        h = pt.dot(x, w) * scale
        return popstats.export(h - popstats.bn_statistic(h.mean(0), "m")).sites[0]

    first, again = build(2.0), build(2.0)
    assert first.id.key != again.id.key
    assert first.id == again.id
    assert build(3.0).id != first.id  # a small constant counts by value
    assert build(2.0, name="V").id != first.id  # inputs count by name


def test_match_argument_is_checked():
    x = pt.matrix("x")
    y = x - popstats.bn_statistic(x.mean(0), "m")
    stats = popstats.estimate([x], y, [{"x": np.ones((2, 3))}], mode=MODE)
    with fails("rewrite(match=...)", "'structure'", "'name'", "'exact'"):
        popstats.rewrite(y, stats, match="exact")
    with fails("bind(match=...)", "'structure'", "'name'"):
        popstats.bind(popstats.rewrite(y, stats), stats, match=1)


def test_bind_is_all_or_nothing():
    x = pt.matrix("x")
    y = (x - popstats.bn_statistic(x.mean(0), "m")) * popstats.bn_statistic(
        x.std(0), "s")
    stats = popstats.estimate([x], y, [{"x": np.ones((2, 3))}], mode=MODE)
    inference = popstats.rewrite(y, stats)
    z = pt.matrix("x")
    partial = popstats.estimate(
        [z], z - popstats.bn_statistic(z.mean(0), "m"),
        [{"x": np.full((2, 3), 9.0)}], mode=MODE,
    )
    shared = popstats.population_variables(inference)
    before = {k: v.get_value() for k, v in shared.items()}
    with fails("bind(stats=...)", "'s'", "has no value"):
        popstats.bind(inference, partial)
    after = {k: v.get_value() for k, v in shared.items()}
    assert before.keys() == after.keys()
    for k in before:
        np.testing.assert_array_equal(before[k], after[k])


def test_rewrite_error_lists_all_missing_with_close_names():
    x = pt.matrix("x")

    def build(labels):
        m = popstats.bn_statistic(x.mean(0), labels[0])
        v = popstats.bn_statistic(x.var(0), labels[1])
        return (x - m) / pt.sqrt(v + EPS)

    stats = popstats.estimate([x], build(["l1.mean", "l1.var"]),
                              [{"x": np.ones((2, 3))}], mode=MODE)
    with fails("rewrite(stats=...)", "2 statistic(s)", "'layer1.mean'",
               "'layer1.var'", "closest without a statistic: 'l1.mean'",
               "'l1.var'", "label"):
        popstats.rewrite(build(["layer1.mean", "layer1.var"]), stats)


# ----------------------------------------------- found by generated models


def _one_mark_layer(label="m", weights=False):
    xi = pt.matrix()
    if weights:
        wi = pt.matrix()
        h = pt.dot(xi, wi)
        return OpFromGraph([xi, wi], [h - popstats.bn_statistic(h.mean(0), label)])
    return OpFromGraph([xi], [xi - popstats.bn_statistic(xi.mean(0), label)])


def test_opfromgraph_applied_once():
    """Crashed on PyTensor >= 3.1 (frozen graph, no clone_with_new_inputs)."""
    x = pt.matrix("x")
    y = _one_mark_layer()(x)
    stats = popstats.estimate([x], y, [{"x": np.ones((3, 2))}], mode=MODE)
    fn = pytensor.function([x], popstats.rewrite(y, stats), mode=MODE)
    np.testing.assert_allclose(fn(np.zeros((1, 2))), [[-1.0, -1.0]])


def test_opfromgraph_side_by_side_with_other_weights():
    layer = _one_mark_layer(weights=True)
    x = pt.matrix("x")
    w1 = pytensor.shared(np.eye(2), name="w1")
    w2 = pytensor.shared(2 * np.eye(2), name="w2")
    y = layer(x, w1) + layer(x, w2)
    stats = popstats.estimate([x], y, [{"x": np.ones((3, 2))}], mode=MODE)
    assert sorted(s.value.tolist() for s in stats.values()) == [[1.0, 1.0], [2.0, 2.0]]
    fn = pytensor.function([x], popstats.rewrite(y, stats), mode=MODE)
    np.testing.assert_allclose(fn(np.ones((1, 2))), [[0.0, 0.0]])


def test_opfromgraph_in_sequence_and_after_a_mark_counts_each_once():
    layer = _one_mark_layer("inner", weights=True)
    x = pt.matrix("x")
    w = pytensor.shared(np.eye(2), name="w")
    twice = layer(layer(x, w), w)
    assert len(popstats.export(twice).sites) == 2
    after = layer(x - popstats.bn_statistic(x.mean(0), "outer"), w)
    assert sorted(s.name for s in popstats.export(after).sites) == ["inner", "outer"]


def test_random_stream_in_a_loop_gives_each_statistic_once():
    """Scan clones the update graph: two equal inner marks, one statistic."""
    import warnings

    from pytensor.tensor.random.utils import RandomStream

    x = pt.tensor3("x")

    def step(xt):
        h = xt - popstats.bn_statistic(xt.mean(0), label="m")
        return h * srng.binomial(1, 1.0, size=h.shape)

    with warnings.catch_warnings():  # RandomStream and scan's updates: deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        srng = RandomStream(0)
        hs, _ = pytensor.scan(step, sequences=[x], return_updates=True)
    data = np.arange(12.0).reshape(2, 3, 2)
    stats = popstats.estimate([x], hs, [{"x": data}], mode=MODE)
    assert list(stats) == ["m"]
    np.testing.assert_allclose(stats["m"].value, data.mean(1))
