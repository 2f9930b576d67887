"""ScanEdit: rebuilding a Scan keeps the op, and additions land where asked."""

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from pytensor.scan.op import Scan

from popstats._src.graph.surgery import ScanEdit, is_gradient_scan


def _scan_node(outputs):
    var = outputs[0] if isinstance(outputs, list | tuple) else outputs
    node = var.owner
    while not isinstance(node.op, Scan):
        node = node.inputs[0].owner
    return node


def _loop(**options):
    x = pt.matrix("x")
    out = pytensor.scan(
        lambda xt, h: h + xt,
        sequences=[x],
        outputs_info=[pt.zeros_like(x[0])],
        return_updates=False,
        **options,
    )
    return x, out


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"truncate_gradient": 3, "name": "acc"},
        {"profile": False, "allow_gc": False, "strict": True},
        {"go_backwards": True},
    ],
)
def test_rebuild_without_additions_gives_an_equal_op(options):
    _, out = _loop(**options)
    node = _scan_node(out)
    replaced, added = ScanEdit(node, node.inputs).build()
    new_node = replaced[0].owner
    assert added == []
    assert new_node.op == node.op
    assert hash(new_node.op) == hash(node.op)
    for attr in ("mode", "name", "truncate_gradient", "profile", "allow_gc", "strict"):
        assert getattr(new_node.op, attr) == getattr(node.op, attr)


@pytest.mark.filterwarnings(
    "ignore:Scan return signature will change:DeprecationWarning"
)
def test_additions_keep_original_outputs_and_order():
    """A sequence, a non-sequence and a nit_sot output, with an untraced state."""
    x = pt.matrix("x")
    rng = pytensor.shared(np.random.default_rng(0), name="rng")

    def step(xt, h, rng):
        next_rng, noise = pt.random.normal(size=xt.shape, rng=rng, return_next_rng=True)
        return [h + xt, noise.sum()], {rng: next_rng}

    (acc, _noise), _updates = pytensor.scan(
        step,
        sequences=[x],
        outputs_info=[pt.zeros_like(x[0]), None],
        non_sequences=[rng],
        return_updates=True,
        strict=True,
    )
    node = _scan_node([acc])
    edit = ScanEdit(node, node.inputs)
    step_idx = pt.scalar("t", dtype="int64")
    offset = pt.vector("offset")
    offset_inner = offset.type()
    inner_out = edit.inner_outputs
    # The added nit_sot: per-step h + t + offset, built in the inner graph.
    h_inner = inner_out[0]
    edit.add_sequence(pt.arange(edit.n_steps, dtype="int64"), step_idx)
    edit.add_non_sequence(offset, offset_inner)
    edit.add_nit_sot(h_inner + step_idx + offset_inner)
    replaced, added = edit.build()
    assert len(replaced) == len(node.outputs)
    assert replaced[-1].type == node.outputs[-1].type  # untraced RNG state last
    f = pytensor.function([x, offset], [replaced[0], added[0]])
    xv = np.arange(12.0).reshape(4, 3)
    acc_v, extra = f(xv, np.ones(3))
    np.testing.assert_allclose(acc_v[1:], np.cumsum(xv, axis=0))  # row 0: initial state
    np.testing.assert_allclose(extra, np.cumsum(xv, axis=0) + np.arange(4)[:, None] + 1)


def test_gradient_scan_is_recognised():
    x, out = _loop()
    assert not is_gradient_scan(_scan_node(out).op)
    grad = pytensor.grad(out.sum(), x)
    grad_scans = [
        n for n in pytensor.graph.traversal.toposort([grad]) if isinstance(n.op, Scan)
    ]
    assert any(is_gradient_scan(n.op) for n in grad_scans)


def test_walk_nodes_reads_every_inner_graph_with_its_scan_path():
    from conftest import scan
    from pytensor.compile.builders import OpFromGraph

    from popstats._src.graph.surgery import walk_nodes

    a = pt.dscalar("a")
    body = OpFromGraph([a], [pt.exp(a) * 2.0], name="body")
    xs = pt.matrix("xs")
    inner = scan(lambda row: scan(lambda v: body(v), sequences=[row], name="in"),
                 sequences=[xs], name="out")
    walked = list(walk_nodes([inner.sum()]))
    # the reference: op type names at each path, read level by level by hand
    outer_scan = inner.owner.op
    in_scan = next(n.op for n in outer_scan.fgraph.toposort()
                   if isinstance(n.op, Scan))
    body_op = next(n.op for n in in_scan.fgraph.toposort()
                   if isinstance(n.op, OpFromGraph))
    by_path = {}
    for path, node in walked:
        by_path.setdefault(path, []).append(node)
    assert set(by_path) == {(), ("out",), ("out", "in")}
    assert set(by_path[("out",)]) == set(outer_scan.fgraph.apply_nodes)
    assert set(by_path[("out", "in")]) == (set(in_scan.fgraph.apply_nodes)
                                          | set(body_op.fgraph.apply_nodes))
    assert sum(isinstance(n.op, OpFromGraph) for _, n in walked) == 1
    assert [type(n.op.scalar_op).__name__ for n in body_op.fgraph.toposort()
            if hasattr(n.op, "scalar_op")] == ["Exp", "Mul"]
