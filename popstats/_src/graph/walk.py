"""One pass over a graph that recurses into Scan inner graphs, rebuilding it.

(Reading every node, inner graphs too, is
:func:`popstats._src.graph.surgery.walk_nodes`.)

:func:`transform` visits the apply nodes of a graph level in topological
order, clones only what changed (one memo, no per-statistic cloning), and
hands two events to a :class:`Visitor`: a marked statistic, and a Scan whose
inner graph contains statistics. The exporter and the rewriter are two
visitors; the recursion into a Scan is the visitor's choice (it builds a
:class:`~popstats._src.graph.surgery.ScanEdit` and calls :func:`transform` on
its inner graph). An ``OpFromGraph`` holding statistics is inlined: its body,
applied to the node's own inputs, is visited at the same level, once per
application. So is the application of an op a registered recognizer claims
(:mod:`popstats._src.graph.recognize`): its body, rebuilt with the statistics marked, is
visited in place of the node.

Sites are identified by a :class:`SiteId`: the chain of Scans leading to the
statistic (each by name and the fingerprint of its application), the label, and
the statistic's fingerprint at its level (see
:mod:`popstats._src.graph.identity`). None of these depends on object identity,
on the marker's random key, or on which other outputs are in the graph being
walked: the same statistic of the same model code has the same id in every
process and in every subset of outputs.

Stage: graph (:mod:`popstats._src.graph`). Members: :class:`LoopStep`,
:class:`SiteId`, :class:`Visitor`, :func:`contains_statistics`,
:func:`scan_outer_input`, :func:`transform`.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Protocol

from pytensor.compile.builders import OpFromGraph
from pytensor.graph.basic import Apply, Variable
from pytensor.graph.replace import clone_replace
from pytensor.graph.traversal import toposort
from pytensor.scan.op import Scan

from popstats._src.errors import PopstatsError
from popstats._src.graph.identity import Fingerprints, digest
from popstats._src.graph.marker import (
    BNStat,
    is_statistic,
    statistic_key,
    statistic_label,
)
from popstats._src.graph.recognize import RecognitionContext, recognizer_for
from popstats._src.graph.surgery import inner_outputs, is_gradient_scan, walk_nodes

__all__ = ["LoopStep", "SiteId", "Visitor", "contains_statistics", "scan_outer_input",
           "transform"]


@dataclass(frozen=True)
class LoopStep:
    """One Scan on the way to a statistic.

    ``name`` is the Scan's name; ``fingerprint`` the stable hash of its
    application (its op, inner graph included, and its outer inputs), which
    tells two applications of one Scan op apart. ``instance`` is in-process
    only (not compared, not saved).
    """

    name: str
    fingerprint: str = ""
    instance: str = field(default="", compare=False, repr=False)

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class SiteId:
    """What a statistic is, the same in every process that builds the model.

    Compared on ``path`` (loops from outermost in), ``label`` and
    ``fingerprint`` (the stable hash of the statistic at its level). ``key``
    (the marker's random key) and ``instance`` (an in-process hash that
    tells apart computations differing only by unnamed variables) are kept
    for diagnostics and are not compared.
    """

    path: tuple[LoopStep, ...]
    label: str
    fingerprint: str = ""
    key: str = field(default="", compare=False)
    instance: str = field(default="", compare=False, repr=False)

    @property
    def depth(self) -> int:
        return len(self.path)

    @property
    def where(self) -> str:
        """The chain of loops, e.g. ``"outer/inner"``, or ``"<graph>"``."""
        return "/".join(map(str, self.path)) or "<graph>"

    @property
    def chain(self) -> tuple[str, ...]:
        """The names of the enclosing loops, outermost first."""
        return tuple(step.name for step in self.path)

    @property
    def qualified(self) -> str:
        """Loop names and label, e.g. ``"outer/inner/bn.mean"``."""
        return "/".join((*self.chain, self.label))


class Visitor(Protocol):
    call: str  # the public call (e.g. "export"), named in errors

    def statistic(self, var: Variable, site: SiteId) -> Variable | None:
        """Called with the (new) marked variable; return a replacement or None."""

    def scan(
        self, node: Apply, inputs: list[Variable], path: tuple[LoopStep, ...]
    ) -> list[Variable]:
        """Rebuild a Scan holding statistics; return its new outputs."""


def contains_statistics(op: object) -> bool:
    """Whether a Scan or OpFromGraph holds a statistic, marked or recognized."""
    if not isinstance(op, Scan | OpFromGraph):
        return False
    return any(
        isinstance(node.op, BNStat)
        or any(is_statistic(out) for out in node.outputs)
        or recognizer_for(node.op) is not None
        for _, node in walk_nodes(inner_outputs(op))
    )


def recognized_body(
    node: Apply, context: RecognitionContext, call: str
) -> list[Variable] | None:
    """The body a registered recognizer gives ``node``, or None if none claims it."""
    recognizer = recognizer_for(node.op)
    if recognizer is None:
        return None
    body = list(recognizer.expand(node, context))
    if len(body) != len(node.outputs):
        raise PopstatsError(
            f"{call}(outputs=...): recognizer {recognizer.name!r}: expand() "
            f"returned {len(body)} variable(s) for {node.op}, which has "
            f"{len(node.outputs)} output(s). "
            f"Return one variable per output of the node, in order."
        )
    checked = []
    for i, (old, new) in enumerate(zip(node.outputs, body, strict=True)):
        converted = (
            old.type.convert_variable(new) if isinstance(new, Variable) else None
        )
        if converted is None:
            got = new.type if isinstance(new, Variable) else type(new).__name__
            raise PopstatsError(
                f"{call}(outputs=...): recognizer {recognizer.name!r}: expand() "
                f"returned {got} for output {i} of {node.op}, whose type is "
                f"{old.type}. Return "
                f"variables of the node's output types (cast with .astype)."
            )
        checked.append(converted)
    return checked


def scan_outer_input(node: Apply, position: int, n_inner: int) -> Variable | None:
    """The outer variable a Scan gives its inner input ``position`` (of
    ``n_inner``) when that input is a non-sequence, else None."""
    from_end = n_inner - position
    if from_end > node.op.info.n_non_seqs:
        return None
    return node.inputs[-from_end]


#: the Scan being rebuilt by a visitor, with its node and level, so that the
#: level of its inner graph can trace its inputs out (``RecognitionContext``)
_ENTERING: ContextVar[tuple | None] = ContextVar("popstats_entering_scan", default=None)


def _check_gradient_scan(node: Apply, call: str) -> None:
    if is_gradient_scan(node.op):
        raise PopstatsError(
            f"{call}(outputs=...): the graph contains the gradient of a loop (Scan "
            f"{node.op.name!r}, made by pytensor.grad) "
            f"whose loop holds batch statistics. A gradient loop holds copies "
            f"of the forward statistics and runs in reverse, so it cannot be "
            f"estimated or rewritten. Pass the forward outputs, and take "
            f"gradients of the inference graph instead."
        )


def inline_body(op: OpFromGraph, inputs: Sequence[Variable]) -> list[Variable]:
    """A fresh copy of an ``OpFromGraph``'s outputs applied to ``inputs``.

    PyTensor >= 3.1 freezes the op's graph (frozen nodes cannot be cloned
    with new inputs): it is unfrozen first.
    """
    fgraph = op.fgraph
    unfreeze = getattr(fgraph, "unfreeze", None)
    if unfreeze is not None:
        fgraph = unfreeze()
    givens = dict(zip(fgraph.inputs, inputs, strict=True))
    return clone_replace(list(fgraph.outputs), givens)


class _Level:
    """The state of one graph level during :func:`transform`."""

    def __init__(
        self, inputs: Sequence[Variable], visitor: Visitor, path: tuple[LoopStep, ...]
    ):
        self.visitor = visitor
        self.path = path
        self.inputs = list(inputs)
        self.loops = tuple(step.name for step in path)
        self.positions = {var: i for i, var in enumerate(self.inputs)}
        entering = _ENTERING.get()
        # (enclosing level, Scan node) when this level is that Scan's body
        self.parent: tuple[_Level, Apply] | None = (
            entering[1:] if entering is not None and path and entering[0] is path[-1]
            else None
        )
        self.prints = Fingerprints(inputs)
        self.memo: dict[Variable, Variable] = {}
        self.done: set[Apply] = set()
        self.outer = digest(*(step.instance for step in path))

    def visit(self, outputs: Sequence[Variable]) -> None:
        for node in toposort(list(outputs)):
            if node not in self.done:
                self.done.add(node)
                self.apply(node)

    def origin(self, var: Variable) -> Variable:
        """The outermost variable ``var`` stands for (non-sequences traced out)."""
        level: _Level | None = self
        while level is not None and level.parent is not None:
            outer, node = level.parent
            position = level.positions.get(var)
            if position is not None:
                given = scan_outer_input(node, position, len(level.inputs))
                if given is None:
                    return var
                var = given
            level = outer
        return var

    def apply(self, node: Apply) -> None:
        op = node.op
        body = recognized_body(
            node, RecognitionContext(self.loops, self.origin), self.visitor.call
        )
        if body is None and isinstance(op, OpFromGraph) and contains_statistics(op):
            body = inline_body(op, node.inputs)
        if body is not None:
            # Inline: the body, on the node's own (old) inputs, is visited here
            # like any other part of this level, once per application.
            self.visit(body)
            for old, inner in zip(node.outputs, body, strict=True):
                self.prints.alias(old, inner)
                self.memo[old] = self.memo.get(inner, inner)
            return
        stable, instance = self.prints.node(node)
        new_inputs = [self.memo.get(v, v) for v in node.inputs]
        if isinstance(op, Scan) and contains_statistics(op):
            _check_gradient_scan(node, self.visitor.call)
            step = LoopStep(op.name or "scan", stable, digest(self.outer, instance))
            token = _ENTERING.set((step, self, node))
            try:
                new_outputs = self.visitor.scan(node, new_inputs, (*self.path, step))
            finally:
                _ENTERING.reset(token)
        elif any(n is not o for n, o in zip(new_inputs, node.inputs, strict=True)):
            new_outputs = node.clone_with_new_inputs(new_inputs).outputs
        else:
            new_outputs = node.outputs
        for old, new in zip(node.outputs, new_outputs, strict=True):
            if is_statistic(old):
                site = SiteId(
                    self.path,
                    statistic_label(old),
                    self.prints.stable(old),
                    statistic_key(old),
                    digest(self.outer, self.prints.instance(old)),
                )
                replacement = self.visitor.statistic(new, site)
                if replacement is not None:
                    new = replacement
            if new is not old:
                self.memo[old] = new


def transform(
    inputs: Sequence[Variable],
    outputs: Sequence[Variable],
    visitor: Visitor,
    path: tuple[LoopStep, ...] = (),
) -> list[Variable]:
    """Visit one graph level; return the new outputs (same order).

    ``inputs`` are the level's inputs (an inner graph's, hashed by
    position; empty for the outer graph). Nodes that neither hold
    statistics nor depend on a change are kept as they are; the rest are
    cloned once. The input graph is not modified.
    """
    level = _Level(inputs, visitor, path)
    level.visit(outputs)
    return [level.memo.get(v, v) for v in outputs]
