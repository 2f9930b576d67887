"""Where each input's batch axis goes in a graph, and which operations mix it.

Stage: independence (used by :mod:`popstats._src.independence.mixing`). A
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

Members: :class:`Event`, :class:`Flow`, :obj:`Hyp`, :obj:`Place`,
:func:`walk_back`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from pytensor.compile.builders import OpFromGraph
from pytensor.graph.basic import Apply, Variable
from pytensor.graph.traversal import toposort
from pytensor.scan.op import Scan
from pytensor.scan.utils import ScanArgs
from pytensor.tensor import subtensor
from pytensor.tensor.basic import Alloc, AllocEmpty, Eye, Join, Split
from pytensor.tensor.blockwise import Blockwise
from pytensor.tensor.elemwise import CAReduce, DimShuffle, Elemwise
from pytensor.tensor.extra_ops import CumOp, Repeat
from pytensor.tensor.math import Argmax, Dot
from pytensor.tensor.pad import Pad
from pytensor.tensor.random.op import RandomVariable
from pytensor.tensor.shape import Reshape, Shape, Shape_i
from pytensor.tensor.sort import ArgSortOp, SortOp
from pytensor.tensor.special import LogSoftmax, Softmax
from pytensor.tensor.subtensor import IncSubtensor, Subtensor, get_idx_list

from popstats._src.graph.marker import BNStat, is_statistic
from popstats._src.graph.recognize import acts_per_example
from popstats._src.independence.rules import (
    Hyp,
    Place,
    Rules,
    State,
    tensor_inputs,
    tensor_outputs,
)
from popstats._src.independence.shapes import JOIN_DIMS, PASS, SPLIT_DIMS, Shapes, const

__all__ = ["Event", "Flow", "Hyp", "Place", "walk_back"]

#: ``x[indices]`` along axis 0 (PyTensor 3.0; 3.3 has AdvancedSubtensor only)
_TAKE = getattr(subtensor, "AdvancedSubtensor1", ())
#: The batch size read as a value (``h / h.shape[0]``): an aggregate, the
#: number of examples; as a shape (``zeros((n, k))``, a reshape) it is not.
_COUNTS = "counts the examples (the batch size as a value) of"
#: Kinds of mixing that make an aggregate (see :meth:`Flow.mix`).
_AGGREGATE = ("reduces over", "contracts", "takes single examples", _COUNTS)

#: Operations that work along one axis and keep the shape.
_ALONG = (Softmax, LogSoftmax, CumOp, SortOp, ArgSortOp, Repeat)


@dataclass
class Event:
    """Operations of one node that mix examples, per hypothesis."""

    node: Apply
    where: str
    kinds: dict[Hyp, str] = field(default_factory=dict)


class Flow(Rules):
    """Follow hypotheses through one graph level (see the module doc).

    Parameters
    ----------
    states : dict
        Variable -> State for the level's roots (inputs, inner inputs).
    where : str
        The level's place: ``"<graph>"`` or the loop path ``"outer/inner"``.
    """

    def __init__(self, states: dict[Variable, State], where: str,
                 shapes: Shapes | None = None, confirmed: set | None = None):
        self.states = dict(states)
        #: aggregates over examples (reductions...) a variable holds, per hypothesis
        self.taint: dict[Variable, dict[Hyp, frozenset[Apply]]] = {}
        self.pending: dict[Apply, set[Hyp]] = {}
        #: (node, hypothesis) found mixing; shared with inner graphs' flows
        self.confirmed: set[tuple[Apply, Hyp]] = set() if confirmed is None else (
            confirmed)
        self.where = where
        self.shapes = shapes or Shapes()
        self.events: dict[Apply, Event] = {}
        self.nested: list[tuple[Apply, Flow]] = []  # inner graphs' flows
        self.used: set[Apply] = set()  # nodes whose values reach the outputs
        self.marks: list[Variable] = []  # marked statistics of this level

    def state(self, var: Variable) -> State:
        return self.states.get(var, {})

    def mix(self, node: Apply, hyp: Hyp, kind: str) -> None:
        """Record that ``node`` mixes examples along ``hyp``'s axis.

        An aggregate (a reduction, a contraction, one example taken) mixes
        only once it meets values that still hold that batch axis (see
        :meth:`carry`): a loss summed over the batch is an output, not a
        mistake. Anything else mixes at once.
        """
        event = self.events.setdefault(node, Event(node, self.where))
        event.kinds.setdefault(hyp, kind)
        if kind.startswith(_AGGREGATE):
            self.pending.setdefault(node, set()).add(hyp)
        else:
            self.confirmed.add((node, hyp))

    def carry(self, node: Apply, states: list[State]) -> None:
        """Pass aggregates on to ``node``'s outputs; those that meet their
        batch axis there (or enter a loop) mix."""
        incoming: dict[Hyp, set[Apply]] = {}
        for var in _data_inputs(node):
            for hyp, nodes in self.taint.get(var, {}).items():
                incoming.setdefault(hyp, set()).update(nodes)
        inner = isinstance(node.op, Scan | OpFromGraph)
        # an aggregate mixes where it meets the batch axis: in an output, or
        # in an input the operation combines it with (K @ h, K from the batch)
        held = set().union(*states, *(self.state(v) for v in _data_inputs(node)))
        out: dict[Hyp, frozenset[Apply]] = {}
        for hyp, reached in incoming.items():
            if inner or hyp in held:
                counted = {n for n in nodes if _reads_size(n)}
                if counted != nodes:  # a mean: its reduction is the mixing
                    nodes = nodes - counted
                self.confirmed.update((n, hyp) for n in nodes)
            else:
                out[hyp] = frozenset(reached)
        for hyp in self.pending.pop(node, ()):
            out[hyp] = out.get(hyp, frozenset()) | {node}
        if out:
            for var in node.outputs:
                self.taint[var] = out

    def all_flows(self) -> list[Flow]:
        """This level's flow and those of every inner graph, outermost first."""
        return [self, *(f for _, inner in self.nested for f in inner.all_flows())]

    def all_events(self) -> list[Event]:
        """Events of nodes whose values (not only shapes) reach the outputs,
        here and in the inner graphs of such nodes."""
        found = []
        for node, event in self.events.items():
            kinds = {h: k for h, k in event.kinds.items()
                     if (node, h) in self.confirmed}
            if node in self.used and kinds:
                found.append(Event(node, event.where, kinds))
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
            for hyp in self._batch_size(node):
                self.mix(node, hyp, _COUNTS)
            states: list[State] = [{} for _ in node.outputs]
            if any(self.state(v) for v in node.inputs):
                states = self.apply(node)
                for out, state in zip(node.outputs, states, strict=True):
                    if state:
                        self.states[out] = state
            if self.pending.get(node) or any(v in self.taint for v in node.inputs):
                self.carry(node, states)
        self._mark_used(outputs)
        return [self.state(v) for v in outputs]

    def apply(self, node: Apply) -> list[State]:
        op, ins = node.op, tensor_inputs(node)
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
            shift = tensor_outputs(node)[0].ndim - ins[0].ndim
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
        if isinstance(op, subtensor.AdvancedSubtensor):
            return [self.advanced_subtensor(node)]
        if isinstance(op, IncSubtensor):
            return [self.inc_subtensor(node)]
        if isinstance(op, Reshape):
            return [self.reshape(node)]
        if isinstance(op, JOIN_DIMS):
            return [self.join_dims(node)]
        if isinstance(op, SPLIT_DIMS):
            return [self.split_dims(node)]
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
        if isinstance(op, Pad):
            states = self.pad(node)
            if states is not None:
                return states
        if isinstance(op, OpFromGraph):
            self.shapes.alias(op.inner_inputs, ins)
            inner = type(self)({v: self.state(o) for v, o in zip(
                op.inner_inputs, ins, strict=False)}, self.where, self.shapes,
                self.confirmed)
            self.nested.append((node, inner))
            states = inner.run(op.inner_outputs)
            for outer, var in zip(node.outputs, op.inner_outputs, strict=True):
                if var in inner.taint:
                    self.taint[outer] = inner.taint[var]
            return states
        if acts_per_example(op):  # e.g. pytensor-ml's Im2Col (its recognizer says)
            out = {}
            for hyp, (d, c) in self.state(ins[0]).items():
                if d == 0:
                    out[hyp] = (0, c)
                else:
                    self.unfollowed(node, hyp, "a per-example operation on another "
                                    "axis")
            return [out] + [{}] * (n_out - 1)
        return self.unknown(node)

    def _batch_size(self, node: Apply) -> list[Hyp]:
        """The hypotheses whose batch-axis size ``node`` reads: ``Shape_i``
        of that axis, or an index or slice of a ``Shape`` taking it."""
        op = node.op
        if isinstance(op, Shape_i):
            return [h for h, (d, _) in self.state(node.inputs[0]).items()
                    if d == op.i]
        source = node.inputs[0].owner if node.inputs else None
        if not isinstance(op, Subtensor) or source is None or not isinstance(
                source.op, Shape):
            return []
        var = source.inputs[0]
        entries = get_idx_list(node.inputs, op.idx_list)
        if len(entries) != 1:
            return []
        entry = entries[0]
        if isinstance(entry, slice):
            bounds = [None if b is None else const(b)
                      for b in (entry.start, entry.stop, entry.step)]
            if any(b is None and e is not None for b, e in zip(
                    bounds, (entry.start, entry.stop, entry.step), strict=True)):
                return []
            taken = set(range(var.ndim)[slice(*bounds)])  # type: ignore[arg-type]  # const folds ints here
        else:
            index = const(entry)
            if index is None:
                return []
            taken = {int(index) % max(var.ndim, 1)}
        return [h for h, (d, _) in self.state(var).items() if d in taken]

    def scan(self, node: Apply) -> list[State]:
        """A loop: :class:`~.scan_rule.LoopFlow` follows it."""
        return self.unknown(node)

    def unknown(self, node: Apply) -> list[State]:
        for inp in node.inputs:
            for hyp in self.state(inp):
                self.unfollowed(node, hyp, "an operation the rules do not know")
        return [{} for _ in node.outputs]


def _reads_size(node: Apply) -> bool:
    """Whether ``node`` reads sizes of a ``Shape`` (see :meth:`Flow._batch_size`)."""
    source = node.inputs[0].owner if node.inputs else None
    return isinstance(node.op, Shape_i) or (
        isinstance(node.op, Subtensor) and source is not None
        and isinstance(source.op, Shape))


def _data_inputs(node: Apply) -> list[Variable]:
    """The inputs whose values (not only their shapes) an operation reads."""
    op = node.op
    if isinstance(op, Shape | Shape_i | AllocEmpty):
        return []
    if isinstance(op, Elemwise) and type(op.scalar_op).__name__ == "Second":
        return list(node.inputs[1:])  # fill(x, v): x's shape, v's values
    if isinstance(op, (Alloc, Reshape, Eye, *SPLIT_DIMS, *PASS)):
        return list(node.inputs[:1])  # sizes, counts and checks: not data
    if isinstance(op, RandomVariable):
        return list(op.dist_params(node))  # not the rng, nor the size
    if isinstance(op, Scan):  # the number of steps and output lengths: sizes
        sizes = {id(v) for v in scan_args(node).outer_in_nit_sot}
        return [v for v in node.inputs[1:] if id(v) not in sizes
                and not getattr(v.tag, "popstats_step_index", False)]
    if isinstance(op, Subtensor):  # slice bounds are sizes (x[:n] is all of x)
        bounds = {id(b) for e in get_idx_list(node.inputs, op.idx_list)
                  if isinstance(e, slice) for b in (e.start, e.stop, e.step)}
        return [v for k, v in enumerate(node.inputs) if k == 0 or id(v) not in bounds]
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
        if node in flow.events:  # a mean's count is not what it reduces over
            found.update(h for h, k in flow.events[node].kinds.items()
                         if k != _COUNTS)
        elif isinstance(node.op, (Elemwise, DimShuffle, *PASS)):
            stack.extend(node.inputs[:1] if isinstance(node.op, BNStat)
                         else node.inputs)
    return found


def scan_args(node: Apply) -> ScanArgs:
    """The partition of a Scan's inputs and outputs (frozen graphs read as is)."""
    return ScanArgs.from_node(node)
