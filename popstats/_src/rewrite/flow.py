"""Where each input's batch axis goes in a graph, and which operations mix it.

Stage: rewrite (used by :mod:`popstats._src.rewrite.independence`). A
*hypothesis* ``(k, a)`` says "axis ``a`` of root ``k`` indexes examples". A
:class:`Flow` follows every hypothesis through one graph level in
topological order: each variable maps each hypothesis to a *place*
``(dim, part)``, the axis holding the examples and, when a reshape folded
several axes into that one, the factor of it that is the batch (``part``,
0 otherwise; a fold is followed, see :class:`Shapes`). An operation that
combines values of different examples along a hypothesis' axis records an
*event* for it (reduction, contraction, sort, concatenation along it, a loop
carrying state over it, an operation the rules cannot follow). The rules
are in :meth:`Flow.apply` and documented in ``docs/independence.rst``.

Nothing here mutates a graph: frozen inner graphs (PyTensor >= 3.1) are
read as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from pytensor.compile.builders import OpFromGraph
from pytensor.graph.basic import Apply, Variable
from pytensor.graph.traversal import toposort
from pytensor.scan.op import Scan
from pytensor.scan.utils import ScanArgs
from pytensor.tensor.basic import Alloc, Join, Split
from pytensor.tensor.blockwise import Blockwise
from pytensor.tensor.elemwise import CAReduce, DimShuffle, Elemwise
from pytensor.tensor.extra_ops import CumOp, Repeat
from pytensor.tensor.math import Argmax, Dot
from pytensor.tensor.random.op import RandomVariable
from pytensor.tensor.shape import Reshape, Shape, Shape_i
from pytensor.tensor.sort import ArgSortOp, SortOp
from pytensor.tensor.special import LogSoftmax, Softmax
from pytensor.tensor import subtensor
from pytensor.tensor.subtensor import IncSubtensor, Subtensor, get_idx_list

from popstats._src.graph.marker import BNStat, is_statistic
from popstats._src.rewrite.shapes import PASS, Shapes, const, find, resolve

__all__ = ["Event", "Flow", "Hyp", "Place", "walk_back"]

#: ``x[indices]`` along axis 0 (PyTensor 3.0; 3.3 has AdvancedSubtensor only)
_TAKE = getattr(subtensor, "AdvancedSubtensor1", ())
Hyp = tuple[int, int]  # (root index, axis)
Place = tuple[int, int]  # (dim, part of a folded dim)
State = dict[Hyp, Place]

#: Operations that work along one axis and keep the shape.
_ALONG = (Softmax, LogSoftmax, CumOp, SortOp, ArgSortOp, Repeat)


@dataclass
class Event:
    """Operations of one node that mix examples, per hypothesis."""

    node: Apply
    where: str
    kinds: dict[Hyp, str] = field(default_factory=dict)


class Flow:
    """Follow hypotheses through one graph level (see the module doc).

    Parameters
    ----------
    states : dict
        Variable -> State for the level's roots (inputs, inner inputs).
    where : str
        The level's place: ``"<graph>"`` or the loop path ``"outer/inner"``.
    """

    def __init__(self, states: dict[Variable, State], where: str,
                 shapes: Shapes | None = None):
        self.states = dict(states)
        self.where = where
        self.shapes = shapes or Shapes()
        self.events: dict[Apply, Event] = {}
        self.nested: list[tuple[Apply, Flow]] = []  # inner graphs' flows
        self.used: set[Apply] = set()  # nodes whose values reach the outputs
        self.marks: list[Variable] = []  # marked statistics of this level

    def state(self, var: Variable) -> State:
        return self.states.get(var, {})

    def mix(self, node: Apply, hyp: Hyp, kind: str) -> None:
        event = self.events.setdefault(node, Event(node, self.where))
        event.kinds.setdefault(hyp, kind)

    def all_flows(self) -> list[Flow]:
        """This level's flow and those of every inner graph, outermost first."""
        return [self, *(f for _, inner in self.nested for f in inner.all_flows())]

    def all_events(self) -> list[Event]:
        """Events of nodes whose values (not only shapes) reach the outputs,
        here and in the inner graphs of such nodes."""
        found = [e for node, e in self.events.items() if node in self.used]
        for node, inner in self.nested:
            if node in self.used:
                found += inner.all_events()
        return found

    def _mark_used(self, outputs: Sequence[Variable]) -> None:
        stack = [v.owner for v in outputs if v.owner is not None]
        while stack:
            node = stack.pop()
            if node in self.used:
                continue
            self.used.add(node)
            stack += [v.owner for v in _data_inputs(node) if v.owner is not None]

    def run(self, outputs: Sequence[Variable]) -> list[State]:
        for node in toposort(list(outputs)):
            self.marks += [out for out in node.outputs if isinstance(
                node.op, BNStat) or is_statistic(out)]
            if any(self.state(v) for v in node.inputs):
                for out, state in zip(node.outputs, self.apply(node), strict=True):
                    if state:
                        self.states[out] = state
        self._mark_used(outputs)
        return [self.state(v) for v in outputs]

    def put(self, node: Apply, out: State, hyp: Hyp, place: Place) -> None:
        """Place ``hyp`` in an output; the same one in two places mixes."""
        if out.get(hyp, place) != place:
            self.mix(node, hyp, "combines examples along two different axes")
            out.pop(hyp)
        elif hyp not in out or out[hyp] == place:
            out[hyp] = place

    def apply(self, node: Apply) -> list[State]:
        op, ins = node.op, node.inputs
        n_out = len(node.outputs)
        if isinstance(op, PASS):
            return [dict(self.state(ins[0]))] + [{}] * (n_out - 1)
        if isinstance(op, Elemwise):
            out: State = {}
            for inp in _data_inputs(node):
                for hyp, place in self.state(inp).items():
                    self.put(node, out, hyp, place)
            return [out] * n_out
        if isinstance(op, DimShuffle):
            order = list(op.new_order)
            return [{h: (order.index(d), c) for h, (d, c) in self.state(ins[0]).items()
                     if d in order}]
        if isinstance(op, CAReduce | Argmax):
            axes = getattr(op, "axis", None)
            axes = range(ins[0].ndim) if axes is None else axes
            return [self.reduce(node, self.state(ins[0]), axes, "reduces over")]
        if isinstance(op, _ALONG):
            return [self.along(node)]
        if isinstance(op, Shape | Shape_i):
            return [{}]
        if isinstance(op, Alloc):
            shift = node.outputs[0].ndim - ins[0].ndim
            return [{h: (d + shift, c) for h, (d, c) in self.state(ins[0]).items()}]
        if isinstance(op, Subtensor):
            return [self.subtensor(node)]
        if _TAKE and isinstance(op, _TAKE):
            out = {}
            for hyp, (d, c) in self.state(ins[0]).items():
                if d == 0:
                    self.mix(node, hyp, "gathers examples by index along")
                else:
                    self.put(node, out, hyp, (d + ins[1].ndim - 1, c))
            for hyp, place in self.state(ins[1]).items():
                self.put(node, out, hyp, place)
            return [out]
        if isinstance(op, IncSubtensor):
            return [self.inc_subtensor(node)]
        if isinstance(op, Reshape):
            return [self.reshape(node)]
        if isinstance(op, Dot):
            return [self.dot(node)]
        if isinstance(op, Join | Split):
            return self.join(node)
        if isinstance(op, Blockwise):
            return self.blockwise(node)
        if isinstance(op, RandomVariable):
            return [{}, self.random(node)]
        if isinstance(op, Scan):
            return self.scan(node)
        if isinstance(op, OpFromGraph):
            inner = type(self)({v: self.state(o) for v, o in zip(
                op.inner_inputs, ins, strict=False)}, self.where, self.shapes)
            self.nested.append((node, inner))
            return inner.run(op.inner_outputs)
        return self.unknown(node)

    def scan(self, node: Apply) -> list[State]:
        """A loop: :class:`~popstats._src.rewrite.loops.LoopFlow` follows it."""
        return self.unknown(node)

    def unknown(self, node: Apply) -> list[State]:
        for inp in node.inputs:
            for hyp in self.state(inp):
                self.mix(node, hyp, "cannot be followed through (unknown operation) on")
        return [{} for _ in node.outputs]

    def reduce(self, node: Apply, state: State, axes, kind: str) -> State:
        axes = {int(a) % max(node.inputs[0].ndim, 1) for a in axes}
        out = {}
        for hyp, (d, c) in state.items():
            if d in axes:
                self.mix(node, hyp, kind)
            else:
                out[hyp] = (d - sum(a < d for a in axes), c)
        return out

    def along(self, node: Apply) -> State:
        axis = getattr(node.op, "axis", None)
        if isinstance(node.op, SortOp | ArgSortOp) and len(node.inputs) > 1:
            axis = const(node.inputs[1])  # PyTensor 3.0: the axis is an input
        ndim = max(node.inputs[0].ndim, 1)
        axes = None if axis is None else {int(a) % ndim for a in np.atleast_1d(axis)}
        out = {}
        for hyp, (d, c) in self.state(node.inputs[0]).items():
            if axes is None or d in axes:
                self.mix(node, hyp, "works along")
            else:
                out[hyp] = (d, c)
        return out

    def subtensor(self, node: Apply) -> State:
        x = node.inputs[0]
        entries = get_idx_list(node.inputs, node.op.idx_list)
        keep, out_dim = {}, 0
        for dim in range(x.ndim):
            entry = entries[dim] if dim < len(entries) else slice(None)
            if isinstance(entry, slice):
                prefix = (entry.start is None or const(entry.start) == 0) and (
                    entry.step is None or const(entry.step) == 1)
                keep[dim] = (out_dim, prefix)
                out_dim += 1
            else:
                keep[dim] = None
        out = {}
        for hyp, (d, c) in self.state(x).items():
            if keep[d] is None:
                self.mix(node, hyp, "takes single examples (an index) along")
            elif not keep[d][1]:
                self.mix(node, hyp, "shifts or reorders the examples (a slice) along")
            else:
                out[hyp] = (keep[d][0], c)
        return out

    def inc_subtensor(self, node: Apply) -> State:
        x, y = node.inputs[:2]
        entries = get_idx_list(node.inputs, node.op.idx_list)
        view = []  # x's dims that the view keeps, with whether fully
        for dim in range(x.ndim):
            entry = entries[dim] if dim < len(entries) else slice(None)
            if isinstance(entry, slice):
                view.append((dim, entry == slice(None)))
        out = {}
        for hyp, (d, c) in self.state(x).items():
            entry = entries[d] if d < len(entries) else slice(None)
            if entry != slice(None):
                self.mix(node, hyp, "writes into some examples only along")
            else:
                out[hyp] = (d, c)
        offset = len(view) - y.ndim
        for hyp, (d, c) in self.state(y).items():
            dim, full = view[d + offset]
            if not full:
                self.mix(node, hyp, "writes the examples into a part of")
            else:
                self.put(node, out, hyp, (dim, c))
        return out

    def reshape(self, node: Apply) -> State:
        x = node.inputs[0]
        per_dim = [list(self.shapes.atoms(x, d)) for d in range(x.ndim)]
        flat_in = [a for atoms in per_dim for a in atoms]
        sizes = self.shapes.target(node)
        sizes = None if sizes is None else resolve(flat_in, sizes)
        out = {}
        for hyp, (d, c) in self.state(x).items():
            place = None
            if sizes is not None and c < len(per_dim[d]):
                index = sum(len(p) for p in per_dim[:d]) + c
                place = find(flat_in, index, sizes)
            if place is None:
                self.mix(node, hyp, "folds or splits (a reshape it cannot follow)")
            else:
                out[hyp] = place
        return out

    def dot(self, node: Apply) -> State:
        left, right = node.inputs
        out = {}
        for hyp, (d, c) in self.state(left).items():
            if d == left.ndim - 1:
                self.mix(node, hyp, "contracts (a matrix product) over")
            else:
                self.put(node, out, hyp, (d, c))
        for hyp, (d, c) in self.state(right).items():
            if d == 0:
                self.mix(node, hyp, "contracts (a matrix product) over")
            else:
                self.put(node, out, hyp, (left.ndim - 1 + d - 1, c))
        return out

    def join(self, node: Apply) -> list[State]:
        op, ins = node.op, list(node.inputs)
        axis = getattr(op, "axis", None)
        if ins and ins[0].ndim == 0:  # the axis as an input (PyTensor 3.0)
            axis = const(ins.pop(0))
        if isinstance(op, Split):
            ins = ins[:1]
        out: State = {}
        for inp in ins:
            for hyp, (d, c) in self.state(inp).items():
                if axis is None or d == int(axis) % inp.ndim:
                    self.mix(node, hyp, "concatenates or splits along")
                else:
                    self.put(node, out, hyp, (d, c))
        return [out for _ in node.outputs]

    def blockwise(self, node: Apply) -> list[State]:
        op = node.op
        in_sig, out_sig = op.inputs_sig, op.outputs_sig
        n_loop = node.outputs[0].ndim - len(out_sig[0])
        is_dot = isinstance(op.core_op, Dot) or type(op.core_op).__name__ == "Dot"
        outs: list[State] = [{} for _ in node.outputs]
        for inp, sig in zip(node.inputs, in_sig, strict=True):
            loop = inp.ndim - len(sig)
            for hyp, (d, c) in self.state(inp).items():
                if d < loop:
                    for out in outs:
                        self.put(node, out, hyp, (d + n_loop - loop, c))
                    continue
                name = sig[d - loop]
                placed = [(k, s.index(name)) for k, s in enumerate(out_sig)
                          if name in s]
                if not is_dot or not placed:
                    kind = ("contracts (a matrix product) over" if is_dot else
                            f"cannot be followed through the core axes of {op} on")
                    self.mix(node, hyp, kind)
                for k, pos in placed if is_dot else ():
                    self.put(node, outs[k], hyp, (n_loop + pos, c))
        return outs

    def random(self, node: Apply) -> State:
        op, draw = node.op, node.outputs[1]
        n_batch = draw.ndim - op.ndim_supp
        out: State = {}
        for param, core in zip(op.dist_params(node), op.ndims_params, strict=True):
            loop = param.ndim - core
            for hyp, (d, c) in self.state(param).items():
                if d >= loop:
                    self.mix(node, hyp, f"cannot be followed through {op} on")
                else:
                    self.put(node, out, hyp, (d + n_batch - loop, c))
        return out


def _data_inputs(node: Apply) -> list[Variable]:
    """The inputs whose values (not only their shapes) an operation reads."""
    op = node.op
    if isinstance(op, Shape | Shape_i):
        return []
    if isinstance(op, Elemwise) and type(op.scalar_op).__name__ == "Second":
        return list(node.inputs[1:])  # fill(x, v): x's shape, v's values
    if isinstance(op, Alloc | Reshape):
        return list(node.inputs[:1])
    return list(node.inputs)


def walk_back(flow: Flow, var: Variable) -> set[Hyp]:
    """The hypotheses mixed to compute ``var`` (a marked statistic).

    Walks back from ``var`` through elementwise operations, dimshuffles and
    marks to the nearest operations that mix (a statistic's own reductions)
    and collects what they mix; it goes no further.
    """
    found: set[Hyp] = set()
    stack, seen = [var], set()
    while stack:
        node = stack.pop().owner
        if node is None or node in seen:
            continue
        seen.add(node)
        if node in flow.events:
            found.update(flow.events[node].kinds)
        elif isinstance(node.op, (Elemwise, DimShuffle, *PASS)):
            stack.extend(node.inputs[:1] if isinstance(node.op, BNStat)
                         else node.inputs)
    return found


def scan_args(node: Apply) -> ScanArgs:
    """The partition of a Scan's inputs and outputs (frozen graphs read as is)."""
    return ScanArgs.from_node(node)
