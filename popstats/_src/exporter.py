"""Exporter: find every statistic and make it an output of the graph.

Statistics in the outer graph are outputs as they are. A statistic inside a
Scan becomes an extra ``nit_sot`` output of a rebuilt Scan, recursively: a
statistic two loops deep comes out with two leading time axes (outer steps,
inner steps). The user's graph is not modified.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from pytensor.graph.basic import Apply, Variable
from pytensor.graph.traversal import toposort
from pytensor.scan.op import Scan

from popstats._src.errors import PopstatsError, describe_value
from popstats._src.scan_surgery import ScanEdit
from popstats._src.walk import LoopStep, SiteId, transform

__all__ = ["EstimationGraph", "Site", "as_variables", "export", "export_checked"]


@dataclass(frozen=True)
class Site:
    """A batch statistic found in a graph.

    Attributes
    ----------
    name : str
        Unique within the graph: the label, or ``label#k`` (k = 0, 1, ...,
        in graph order) when several statistics share a label, e.g. when the
        same Scan op is applied at two places.
    label : str
        The label given to :func:`~popstats.bn_statistic` (or ``tag.bn_label``).
    id : SiteId
        Identity used to match the statistic across passes and graphs.
    shape : tuple of int or None
        Static shape of the statistic itself (without time axes).
    dtype : str
        Its dtype.
    """

    name: str
    label: str
    id: SiteId
    shape: tuple[int | None, ...]
    dtype: str

    @property
    def depth(self) -> int:
        """Number of enclosing loops, i.e. of leading time axes."""
        return self.id.depth

    @property
    def where(self) -> str:
        """The chain of loops holding it, e.g. ``"outer/inner"``."""
        return self.id.where


@dataclass(frozen=True)
class EstimationGraph:
    """The exporter's result: one output per site, time axes first."""

    outputs: tuple[Variable, ...]
    sites: tuple[Site, ...]


class _ExportLevel:
    def __init__(self, call: str) -> None:
        self.call = call  # the public call, named in errors
        self.found: list[tuple[SiteId, Variable, Variable]] = []

    def statistic(self, var: Variable, site: SiteId) -> None:
        self.found.append((site, var, var))
        return None

    def scan(
        self, node: Apply, inputs: list[Variable], path: tuple[LoopStep, ...]
    ) -> list[Variable]:
        edit = ScanEdit(node, inputs)
        inner = _ExportLevel(self.call)
        inner_outputs = transform(edit.inner_inputs, edit.inner_outputs, inner, path)
        edit.set_inner_outputs(inner_outputs)
        for _, var, _ in inner.found:
            edit.add_nit_sot(var)
        replaced, added = edit.build()
        for (site, _, stat), out in zip(inner.found, added, strict=True):
            self.found.append((site, out, stat))
        return replaced


def as_variables(outputs: object, call: str) -> list[Variable]:
    """Check ``outputs`` is a variable or a sequence of them; return a list."""
    seq = [outputs] if isinstance(outputs, Variable) else outputs
    if not isinstance(seq, list | tuple) or not seq:
        raise PopstatsError(
            f"{call}(outputs=...): expected a PyTensor variable or a non-empty "
            f"list/tuple of them, got {describe_value(outputs)}. Pass the "
            f"symbolic output(s) of the model, e.g. outputs=y or [y, loss]."
        )
    for i, var in enumerate(seq):
        if not isinstance(var, Variable):
            raise PopstatsError(
                f"{call}(outputs=...): element {i} is {describe_value(var)}, not "
                f"a PyTensor variable. Pass the symbolic outputs of the model."
            )
    return list(seq)


def _name_sites(found: Sequence[tuple[SiteId, Variable, Variable]]) -> list[Site]:
    counts = Counter(site.label for site, _, _ in found)
    seen: Counter = Counter()
    sites = []
    for site, _, stat in found:
        name = site.label
        if counts[name] > 1:
            name = f"{site.label}#{seen[site.label]}"
            seen[site.label] += 1
        sites.append(Site(name, site.label, site, tuple(stat.type.shape), stat.dtype))
    return sites


def _no_statistics_error(outputs: Sequence[Variable], call: str) -> PopstatsError:
    has_scan = any(isinstance(n.op, Scan) for n in toposort(outputs))
    hint = (
        " The graph has Scan loops: PyTensor >= 3.1 freezes their inner graphs "
        "and drops the tags of inner variables, so `var.tag.bn_statistic = "
        "True` inside a loop is lost there; mark statistics with "
        "popstats.bn_statistic(var, label=...) instead, which survives."
        if has_scan
        else ""
    )
    return PopstatsError(
        f"{call}(outputs=...): no batch statistic found in the graph of "
        f"{describe_value([str(v) for v in outputs])}. Mark each statistic with "
        "popstats.bn_statistic(var, label=...) (or set var.tag.bn_statistic = "
        "True) and build the outputs from the marked variables." + hint
    )


def export(outputs: Variable | Sequence[Variable]) -> EstimationGraph:
    """Build the estimation graph: every statistic as an output.

    Parameters
    ----------
    outputs : Variable or sequence of Variable
        Outputs of the training graph (e.g. the loss or the predictions).

    Returns
    -------
    EstimationGraph
        ``outputs[i]`` holds ``sites[i]``, with one leading axis per
        enclosing loop (outermost first).

    Raises
    ------
    PopstatsError
        If no statistic is found, or the graph holds the gradient of a loop.

    Examples
    --------
    >>> import pytensor.tensor as pt
    >>> import popstats
    >>> x = pt.matrix("x")
    >>> mean = popstats.bn_statistic(x.mean(axis=0), label="mean")
    >>> eg = popstats.export(x - mean)
    >>> [site.name for site in eg.sites]
    ['mean']
    """
    return export_checked(as_variables(outputs, "export"), "export")


def export_checked(outputs: Sequence[Variable], call: str) -> EstimationGraph:
    """:func:`export` of checked outputs; errors name the public ``call``."""
    level = _ExportLevel(call)
    transform((), outputs, level)
    if not level.found:
        raise _no_statistics_error(outputs, call)
    return EstimationGraph(
        tuple(var for _, var, _ in level.found), tuple(_name_sites(level.found))
    )
