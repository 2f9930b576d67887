"""All Scan surgery of popstats, and the one read-only walk of a graph.

:func:`walk_nodes` is every read of "every node, inner graphs too": each
apply node of a graph and, recursively, of the inner graphs of its ops
(Scan, OpFromGraph and its subclasses such as pytensor-ml's layers: any op
PyTensor calls ``HasInnerGraph``). :func:`~popstats._src.graph.walk.transform`
is the walk that rebuilds a graph.

A :class:`ScanEdit` is a detached, mutable copy of one Scan application:
its inner graph unfrozen (PyTensor >= 3.1 freezes inner graphs and interns
their nodes; ``ScanArgs.from_node(node, clone=True)`` gives a fresh copy on
both supported lines). Callers transform the copy's inner outputs, add
sequences, non-sequences and ``nit_sot`` outputs, then :meth:`ScanEdit.build`
applies a new Scan op to the outer inputs. The user's node is never touched.

Facts relied on (see ``shared/pytensor-notes.md``): ScanInfo is edited with
:func:`dataclasses.replace` on counts only, never naming the field of
untraced states, which was renamed twice; outer outputs are ordered mit_mot,
mit_sot, sit_sot, nit_sot, untraced; rebuilding with the original options
and no additions gives an op equal to the original.

Stage: graph (:mod:`popstats._src.graph`). Members: :class:`ScanEdit`,
:func:`inner_outputs`, :func:`is_gradient_scan`, :func:`walk_nodes`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import cast

from pytensor.graph.basic import Apply, Variable
from pytensor.graph.op import HasInnerGraph
from pytensor.graph.traversal import toposort
from pytensor.scan.op import Scan
from pytensor.scan.utils import ScanArgs

__all__ = ["ScanEdit", "inner_outputs", "is_gradient_scan", "walk_nodes"]


def inner_outputs(op: object) -> list[Variable]:
    """The outputs of the inner graphs of ``op``: its one graph (a Scan, an
    OpFromGraph, any ``HasInnerGraph``), each of several (PyTensor >= 3.1's
    ``inner_graphs``, e.g. a lazy ``ifelse``'s branches), or none."""
    graphs = getattr(op, "inner_graphs", None)
    if isinstance(graphs, Mapping):
        return [out for graph in graphs.values() for out in graph.outputs]
    if isinstance(op, HasInnerGraph):
        return list(op.inner_outputs)
    return []


def walk_nodes(outputs: Sequence[Variable], path: tuple[str, ...] = ()
               ) -> Iterator[tuple[tuple[str, ...], Apply]]:
    """Every apply node of the graph of ``outputs``, inner graphs too.

    Yields ``(path, node)`` in topological order, each node followed by the
    nodes of its op's inner graphs (:func:`inner_outputs`), once per
    application; ``path`` is the names of the Scans the node is inside,
    outermost first (an OpFromGraph adds none).

    >>> import pytensor.tensor as pt
    >>> from pytensor.compile.builders import OpFromGraph
    >>> a = pt.vector("a")
    >>> body = OpFromGraph([a], [pt.exp(a)])
    >>> [type(node.op).__name__ for _, node in walk_nodes([body(pt.vector("x"))])]
    ['OpFromGraph', 'Elemwise']
    """
    for node in toposort(list(outputs)):
        yield path, node
        inner = inner_outputs(node.op)
        if inner:
            scan = (node.op.name or "scan",) if isinstance(node.op, Scan) else ()
            yield from walk_nodes(inner, (*path, *scan))


def is_gradient_scan(op: Scan) -> bool:
    """A Scan built by ``pytensor.grad`` (or ``Rop``).

    The gradient of a recurrent loop has mit_mot states; that of a
    feed-forward loop has none, but PyTensor names it ``grad_of_<name>``
    (``rop_of_<name>`` for Rop), and ``pytensor.scan`` always names loops.
    """
    name = op.name or ""
    return op.info.n_mit_mot > 0 or name.startswith(("grad_of_", "rop_of_"))


class ScanEdit:
    """A mutable copy of a Scan application, to be rebuilt with additions.

    Parameters
    ----------
    node : Apply
        An application of :class:`~pytensor.scan.op.Scan`.
    outer_inputs : sequence of Variable
        The outer inputs the rebuilt Scan is applied to (the node's inputs,
        possibly already replaced by an enclosing transformation).
    """

    def __init__(self, node: Apply, outer_inputs: Sequence[Variable]):
        self.node = node
        self.op: Scan = node.op
        self.args = ScanArgs.from_node(node, clone=True)
        self.outer_inputs = list(outer_inputs)
        self.extra_seqs: list[tuple[Variable, Variable]] = []
        self.extra_non_seqs: list[tuple[Variable, Variable]] = []
        self.extra_nit_sot: list[Variable] = []

    @property
    def n_steps(self) -> Variable:
        """The outer number of steps (the node's first input)."""
        return self.outer_inputs[0]

    @property
    def inner_inputs(self) -> list[Variable]:
        return list(self.args.inner_inputs)

    @property
    def inner_outputs(self) -> list[Variable]:
        """Inner outputs, the ``until`` condition last for while-loops."""
        return list(self.args.inner_outputs)

    def set_inner_outputs(self, outputs: Sequence[Variable]) -> None:
        """Replace the inner outputs (same order as :attr:`inner_outputs`)."""
        args = self.args
        outputs = list(outputs)
        if args.cond:
            args.cond = [outputs.pop()]
        pos = 0
        groups = []
        for sl in args.mit_mot_out_slices:
            groups.append(outputs[pos : pos + len(sl)])
            pos += len(sl)
        args.inner_out_mit_mot = tuple(groups)
        for field in (
            "inner_out_mit_sot",
            "inner_out_sit_sot",
            "inner_out_nit_sot",
            "inner_out_shared",
        ):
            n = len(getattr(args, field))
            setattr(args, field, outputs[pos : pos + n])
            pos += n

    def add_sequence(self, outer: Variable, inner: Variable) -> None:
        """Add a sequence; ``inner`` is its per-step slice in the inner graph."""
        self.extra_seqs.append((outer, inner))

    def add_non_sequence(self, outer: Variable, inner: Variable) -> None:
        """Add a non-sequence; ``inner`` is its placeholder in the inner graph."""
        self.extra_non_seqs.append((outer, inner))

    def add_nit_sot(self, inner: Variable) -> None:
        """Collect ``inner`` at every step as an extra ``nit_sot`` output."""
        self.extra_nit_sot.append(inner)

    def build(self) -> tuple[list[Variable], list[Variable]]:
        """Apply the rebuilt Scan.

        Returns
        -------
        replaced : list of Variable
            One new outer output per output of the original node, same order.
        added : list of Variable
            The outer outputs of the extra ``nit_sot`` outputs, in the order
            they were added (leading axis: the steps of this Scan).
        """
        args, op = self.args, self.op
        info = op.info
        n_seq = info.n_seqs
        n_mit_mot_in = sum(len(s) for s in info.mit_mot_in_slices)
        n_mit_sot_in = sum(len(s) for s in info.mit_sot_in_slices)
        n_sit_sot = len(args.inner_in_sit_sot)
        n_shared = len(args.inner_in_shared)

        old_inner_in = self.inner_inputs
        before_states = old_inner_in[:n_seq]
        states = old_inner_in[n_seq : n_seq + n_mit_mot_in + n_mit_sot_in + n_sit_sot
                              + n_shared]
        non_seqs = old_inner_in[n_seq + len(states) :]
        inner_inputs = [
            *before_states,
            *(inner for _, inner in self.extra_seqs),
            *states,
            *non_seqs,
            *(inner for _, inner in self.extra_non_seqs),
        ]

        old_out = self.inner_outputs
        cond = old_out[-1:] if args.cond else []
        body = old_out[: len(old_out) - len(cond)]
        n_before_untraced = len(body) - len(args.inner_out_shared)
        inner_outputs = [
            *body[:n_before_untraced],
            *self.extra_nit_sot,
            *body[n_before_untraced:],
            *cond,
        ]

        new_info = dataclasses.replace(
            info,
            n_seqs=info.n_seqs + len(self.extra_seqs),
            n_nit_sot=info.n_nit_sot + len(self.extra_nit_sot),
            n_non_seqs=info.n_non_seqs + len(self.extra_non_seqs),
        )
        new_op = Scan(
            inner_inputs,
            inner_outputs,
            new_info,
            mode=op.mode,
            truncate_gradient=op.truncate_gradient,
            name=op.name,
            profile=op.profile,
            allow_gc=op.allow_gc,
            strict=op.strict,
        )

        outer = self.outer_inputs
        n_outer_states = info.n_mit_mot + info.n_mit_sot + n_sit_sot + n_shared
        n_nit = info.n_nit_sot
        pos = 1 + n_seq
        outer_seqs = outer[1:pos]
        outer_states = outer[pos : pos + n_outer_states]
        pos += n_outer_states
        outer_nit = outer[pos : pos + n_nit]
        outer_non_seqs = outer[pos + n_nit :]
        new_outer = [
            self.n_steps,
            *outer_seqs,
            *(o for o, _ in self.extra_seqs),
            *outer_states,
            *outer_nit,
            *(self.n_steps for _ in self.extra_nit_sot),
            *outer_non_seqs,
            *(o for o, _ in self.extra_non_seqs),
        ]
        new_outputs = cast(list[Variable], new_op(*new_outer, return_list=True))

        n_first = info.n_mit_mot + info.n_mit_sot + n_sit_sot + n_nit
        k = len(self.extra_nit_sot)
        replaced = new_outputs[:n_first] + new_outputs[n_first + k :]
        added = new_outputs[n_first : n_first + k]
        for old, new in zip(self.node.outputs, replaced, strict=True):
            if old.name is not None:
                new.name = old.name
        return list(replaced), list(added)

