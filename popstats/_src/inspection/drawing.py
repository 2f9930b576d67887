"""Drawings of a graph and its rewrite (the ``graphviz`` package, optional).

:func:`draw` always builds a :class:`graphviz.Digraph` (its DOT source is
``.source``); only :func:`render` needs Graphviz's ``dot`` program.
Statistics (``BNStat`` nodes, tagged variables) are orange, the population
variables replacing them green. An application of an op a registered
recognizer claims (pytensor-ml's ``BatchNormLayer``) is one orange box
labelled with the labels of the statistics it holds (``bn.mean``,
``bn.var``), found by expanding it as every other stage does. Scans are
clusters holding their inner graphs (a ``SymbolicOp`` in a loop body is
named by its class: interned, its own name may be another layer's); past
``max_nodes`` apply nodes in all, the drawing is a summary: one box per
Scan with its counts of nodes and statistics.

Stage: inspection (:mod:`popstats._src.inspection`). Members: :func:`draw`,
:func:`draw_rewrite`, :func:`render`.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from collections.abc import Sequence
from itertools import count

from pytensor.compile.builders import OpFromGraph
from pytensor.graph.basic import Constant, Variable
from pytensor.graph.traversal import toposort
from pytensor.scan.op import Scan

from popstats._src.errors import PopstatsError, check_int
from popstats._src.export.exporter import as_variables
from popstats._src.graph.marker import BNStat, is_statistic, statistic_label
from popstats._src.graph.recognize import RecognitionContext, recognizer_for
from popstats._src.graph.surgery import walk_nodes
from popstats._src.graph.walk import scan_outer_input

__all__ = ["draw", "draw_rewrite", "render"]

STATISTIC = {"style": "filled", "fillcolor": "orange"}
POPULATION = {"style": "filled", "fillcolor": "palegreen"}


def _graphviz():
    from popstats._src.inspection.optional import require

    return require("graphviz", "drawing")


def _is_stat_node(node) -> bool:
    return isinstance(node.op, BNStat) or any(is_statistic(o) for o in node.outputs)


def _recognized_labels(node, loops: tuple[str, ...], origin=None) -> list[str] | None:
    """The labels of the statistics a recognized application holds, sorted;
    None when no recognizer claims the node's op."""
    recognizer = recognizer_for(node.op)
    if recognizer is None:
        return None
    body = recognizer.expand(node, RecognitionContext(loops, origin))
    return sorted({statistic_label(out)
                   for inner in toposort(list(body), blockers=list(node.inputs))
                   for out in inner.outputs
                   if isinstance(inner.op, BNStat) or is_statistic(out)})


def _op_name(op: object, loops: tuple[str, ...]) -> str:
    """How a Scan or ``OpFromGraph`` is named in a drawing. In a loop body,
    an op defined by its ``__props__`` (a ``SymbolicOp``: pytensor-ml's
    layers) is named by its class: PyTensor interns equal ops there, so its
    ``name`` may be another layer's."""
    if loops and isinstance(op, OpFromGraph) and getattr(type(op), "__props__", None):
        return type(op).__name__
    return getattr(op, "name", None) or type(op).__name__


def _origin(frames: tuple) -> object:
    """``RecognitionContext.origin`` for the drawer: an inner input traced out
    through the enclosing Scans (non-sequences) and ``OpFromGraph``s."""

    def origin(var: Variable) -> Variable:
        for node, positions in reversed(frames):
            position = positions.get(var)
            if position is None:
                return var
            given = (scan_outer_input(node, position, len(positions))
                     if isinstance(node.op, Scan) else node.inputs[position])
            if given is None:
                return var  # a sequence or a state: no outer variable stands for it
            var = given
        return var

    return origin


def _population_name(var: Variable) -> str | None:
    return getattr(var.tag, "popstats_statistic", None)


class _Drawer:
    def __init__(self, prefix: str):
        self.prefix = prefix
        self.ids = count()
        self.names: dict[int, str] = {}

    def node_id(self, obj: object) -> str:
        key = id(obj)
        if key not in self.names:
            self.names[key] = f"{self.prefix}{next(self.ids)}"
        return self.names[key]

    def level(self, graph, outputs: Sequence[Variable], inputs: Sequence[Variable],
              frames: tuple = ()):
        """Draw one graph level into ``graph``; inner graphs as clusters.

        ``frames`` are the enclosing Scan and ``OpFromGraph`` nodes, outermost
        first, each with its inner inputs' positions.
        """
        gv = _graphviz()
        blockers = list(inputs)
        loops = tuple(n.op.name or "scan" for n, _ in frames if isinstance(n.op, Scan))
        origin = _origin(frames)
        for var in inputs:
            graph.node(self.node_id(var), var.name or "input", shape="ellipse",
                       color="gray")
        for node in toposort(list(outputs), blockers=blockers):
            for var in node.inputs:
                if var.owner is None and id(var) not in self.names:
                    self._root(graph, var)
            op = node.op
            here = self.node_id(node)
            labels = _recognized_labels(node, loops, origin)
            if labels is not None:
                graph.node(here, f"{type(op).__name__}\n[{', '.join(labels)}]",
                           shape="box3d", **STATISTIC)
            elif isinstance(op, Scan | OpFromGraph):
                kind = "scan" if isinstance(op, Scan) else "op"
                name = _op_name(op, loops)
                cluster = gv.Digraph(name=f"cluster_{here}")
                cluster.attr(label=f"{kind} {name}", style="rounded", color="blue")
                cluster.node(here, f"{kind} {name}", shape="box3d", color="blue")
                positions = {v: i for i, v in enumerate(op.fgraph.inputs)}
                self.level(cluster, op.fgraph.outputs, op.fgraph.inputs,
                           (*frames, (node, positions)))
                for inner in op.fgraph.outputs:
                    if inner.owner is not None or id(inner) in self.names:
                        src = (self.node_id(inner.owner) if inner.owner is not None
                               else self.node_id(inner))
                        cluster.edge(src, here, style="dotted")
                graph.subgraph(cluster)
            else:
                attrs = dict(STATISTIC) if _is_stat_node(node) else {}
                label = str(op)
                if _is_stat_node(node) and not isinstance(op, BNStat):
                    label += f"\n[{statistic_label(node.outputs[0])}]"
                graph.node(here, label, shape="box", **attrs)
            for var in node.inputs:
                src = (self.node_id(var.owner) if var.owner is not None
                       else self.node_id(var))
                graph.edge(src, here)

    def _root(self, graph, var: Variable) -> None:
        pop = _population_name(var)
        if pop is not None:
            graph.node(self.node_id(var), f"{var.name or pop}\n(population)",
                       shape="ellipse", **POPULATION)
        elif isinstance(var, Constant):
            text = str(var.data) if var.data.size <= 4 else f"const {var.type}"
            graph.node(self.node_id(var), text[:30], shape="plaintext")
        else:
            graph.node(self.node_id(var), var.name or str(var.type), shape="ellipse")


def _summary(graph, outputs: Sequence[Variable], prefix: str) -> None:
    nodes: Counter = Counter()
    stats: Counter = Counter()
    pops = 0
    for path, node in walk_nodes(outputs):
        where = "/".join(path) or "<graph>"
        nodes[where] += 1
        labels = _recognized_labels(node, path)
        stats[where] += _is_stat_node(node) if labels is None else len(labels)
        if not path:
            pops += sum(_population_name(v) is not None for v in node.inputs
                        if v.owner is None)
    for where in nodes:
        text = f"{where}\n{nodes[where]} nodes, {stats[where]} statistics"
        if where == "<graph>" and pops:
            text += f"\n{pops} population variables"
        attrs = dict(STATISTIC) if stats[where] else {}
        if where == "<graph>" and pops and not stats[where]:
            attrs = dict(POPULATION)
        graph.node(f"{prefix}{where}", text, shape="box", **attrs)
        parent = where.rpartition("/")[0] or ("<graph>" if where != "<graph>" else "")
        if parent:
            graph.edge(f"{prefix}{parent}", f"{prefix}{where}")


def _fill(graph, outputs: Sequence[Variable], prefix: str, max_nodes: int) -> bool:
    """Draw ``outputs`` into ``graph``; True when summarized."""
    total = sum(1 for _ in walk_nodes(outputs))
    if total > max_nodes:
        _summary(graph, outputs, prefix)
        return True
    drawer = _Drawer(prefix)
    drawer.level(graph, outputs, [])
    for i, var in enumerate(outputs):
        out = f"{prefix}out{i}"
        graph.node(out, var.name or f"output {i}", shape="doubleoctagon")
        src = (drawer.node_id(var.owner) if var.owner is not None
               else drawer.node_id(var))
        graph.edge(src, out)
    return False


def _check_limit(max_nodes: object) -> int:
    return check_int(max_nodes, "draw(max_nodes=...)", minimum=0)


def draw(outputs: Variable | Sequence[Variable], *, max_nodes: int = 200):
    """A graphviz drawing of a graph, statistics highlighted.

    Parameters
    ----------
    outputs : Variable or sequence of Variable
        A training graph (statistics in orange) or a rewritten one
        (population variables in green).
    max_nodes : int, default 200
        Above this many apply nodes (inner graphs included), draw one box
        per Scan with its counts instead of every node.

    Returns
    -------
    graphviz.Digraph
        Its ``.source`` is the DOT text; :func:`render` writes an image.

    Examples
    --------
    >>> import pytensor.tensor as pt, popstats
    >>> x = pt.matrix("x")
    >>> dot = popstats.draw(x - popstats.bn_statistic(x.mean(axis=0), label="mean"))
    >>> "BNStat{mean}" in dot.source and "orange" in dot.source
    True
    """
    outs = as_variables(outputs, "draw")
    graph = _graphviz().Digraph(name="popstats")
    graph.attr(rankdir="TB", fontsize="10")
    if _fill(graph, outs, "n", _check_limit(max_nodes)):
        graph.attr(label=f"summary (over {max_nodes} nodes)")
    return graph


def draw_rewrite(original: Variable | Sequence[Variable],
                 inference: Variable | Sequence[Variable], *, max_nodes: int = 200):
    """The graph before and after :func:`~popstats.rewrite`, side by side.

    Returns a :class:`graphviz.Digraph` with two clusters, ``before``
    (statistics in orange) and ``after`` (population variables in green);
    each is summarized past ``max_nodes`` nodes as in :func:`draw`.

    Examples
    --------
    >>> import numpy as np, pytensor.tensor as pt, popstats
    >>> x = pt.matrix("x")
    >>> y = x - popstats.bn_statistic(x.mean(axis=0), label="mean")
    >>> y_inf = popstats.rewrite(y, popstats.estimate([x], y, [{"x": np.ones((3, 2))}]))
    >>> dot = popstats.draw_rewrite(y, y_inf)
    >>> "cluster_before" in dot.source and "palegreen" in dot.source
    True
    """
    before = as_variables(original, "draw_rewrite")
    after = as_variables(inference, "draw_rewrite")
    limit = _check_limit(max_nodes)
    gv = _graphviz()
    graph = gv.Digraph(name="popstats_rewrite")
    graph.attr(rankdir="TB", fontsize="10")
    for name, outs, prefix in (("before", before, "b"), ("after", after, "a")):
        cluster = gv.Digraph(name=f"cluster_{name}")
        cluster.attr(label=name, style="dashed")
        _fill(cluster, outs, prefix, limit)
        graph.subgraph(cluster)
    return graph


def render(graph, path: str | os.PathLike, *, format: str = "svg") -> str:
    """Render a drawing to ``path`` (e.g. ``"graph.svg"``); return the file.

    Needs Graphviz's ``dot`` program on the PATH; without it, raises a
    PopstatsError (the DOT source ``graph.source`` needs no program).
    """
    if shutil.which("dot") is None:
        raise PopstatsError(
            "render(...): Graphviz's `dot` program is not installed (the Python "
            "package is not enough). Install Graphviz (e.g. `apt-get install "
            "graphviz`), or use the DOT text in `graph.source` elsewhere."
        )
    stem, _ = os.path.splitext(os.fspath(path))
    return graph.render(filename=stem, format=format, cleanup=True)
