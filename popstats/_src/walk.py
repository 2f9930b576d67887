"""One pass over a graph that recurses into Scan inner graphs.

:func:`transform` visits the apply nodes of a graph level in topological
order, clones only what changed (one memo, no per-statistic cloning), and
hands two events to a :class:`Visitor`: a marked statistic, and a Scan whose
inner graph contains statistics. The exporter and the rewriter are two
visitors; the recursion into a Scan is the visitor's choice (it builds a
:class:`~popstats._src.scan_surgery.ScanEdit` and calls :func:`transform` on
its inner graph). An ``OpFromGraph`` holding statistics is inlined and its
body visited in place.

Sites are identified by a :class:`SiteId`: the chain of Scans leading to the
statistic (each by name and occurrence of that op at its level, so one op
applied twice gives two sites), the marker's key, and the occurrence of that
key at its level. Two passes over the same graph produce the same ids.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from pytensor.compile.builders import OpFromGraph
from pytensor.graph.basic import Apply, Variable
from pytensor.graph.replace import clone_replace
from pytensor.graph.traversal import toposort
from pytensor.scan.op import Scan

from popstats._src.errors import PopstatsError
from popstats._src.scan_surgery import inner_graph_nodes, is_gradient_scan
from popstats._src.tagger import BNStat, is_statistic, statistic_key, statistic_label

__all__ = ["LoopStep", "SiteId", "Visitor", "contains_statistics", "transform"]


@dataclass(frozen=True)
class LoopStep:
    """One Scan on the way to a statistic: its name and occurrence index."""

    name: str
    occurrence: int

    def __str__(self) -> str:
        return self.name if self.occurrence == 0 else f"{self.name}#{self.occurrence}"


@dataclass(frozen=True)
class SiteId:
    """Where a statistic is: loops from outermost in, key, occurrence."""

    path: tuple[LoopStep, ...]
    key: str
    occurrence: int
    label: str

    @property
    def depth(self) -> int:
        return len(self.path)

    @property
    def where(self) -> str:
        """The chain of loops, e.g. ``"outer/inner"``, or ``"<graph>"``."""
        return "/".join(map(str, self.path)) or "<graph>"


class Visitor(Protocol):
    call: str  # the public call (e.g. "export"), named in errors

    def statistic(self, var: Variable, site: SiteId) -> Variable | None:
        """Called with the (new) marked variable; return a replacement or None."""

    def scan(
        self, node: Apply, inputs: list[Variable], path: tuple[LoopStep, ...]
    ) -> list[Variable]:
        """Rebuild a Scan holding statistics; return its new outputs."""


def contains_statistics(op: object) -> bool:
    """Whether a Scan or OpFromGraph holds a marked statistic, at any depth."""
    if not isinstance(op, Scan | OpFromGraph):
        return False
    nodes = inner_graph_nodes(op) if isinstance(op, Scan) else op.fgraph.apply_nodes
    return any(
        isinstance(node.op, BNStat)
        or any(is_statistic(out) for out in node.outputs)
        or contains_statistics(node.op)
        for node in nodes
    )


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


def transform(
    inputs: Sequence[Variable],
    outputs: Sequence[Variable],
    visitor: Visitor,
    path: tuple[LoopStep, ...] = (),
) -> list[Variable]:
    """Visit one graph level; return the new outputs (same order).

    Nodes that neither hold statistics nor depend on a change are kept as
    they are; the rest are cloned once. The input graph is not modified.
    """
    memo: dict[Variable, Variable] = {}
    scan_seen: Counter = Counter()
    key_seen: Counter = Counter()
    for node in toposort(outputs, blockers=inputs):
        new_inputs = [memo.get(v, v) for v in node.inputs]
        op = node.op
        if isinstance(op, Scan) and contains_statistics(op):
            _check_gradient_scan(node, visitor.call)
            step = LoopStep(op.name or "scan", scan_seen[op])
            scan_seen[op] += 1
            new_outputs = visitor.scan(node, new_inputs, (*path, step))
        elif isinstance(op, OpFromGraph) and contains_statistics(op):
            givens = dict(zip(op.fgraph.inputs, new_inputs, strict=True))
            body = clone_replace(list(op.fgraph.outputs), givens)
            new_outputs = transform(new_inputs, body, visitor, path)
        elif any(n is not o for n, o in zip(new_inputs, node.inputs, strict=True)):
            new_outputs = node.clone_with_new_inputs(new_inputs).outputs
        else:
            new_outputs = node.outputs
        for old, new in zip(node.outputs, new_outputs, strict=True):
            if is_statistic(old):
                key = statistic_key(old)
                site = SiteId(path, key, key_seen[key], statistic_label(old))
                key_seen[key] += 1
                replacement = visitor.statistic(new, site)
                if replacement is not None:
                    new = replacement
            if new is not old:
                memo[old] = new
    return [memo.get(v, v) for v in outputs]
