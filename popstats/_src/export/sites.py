"""The records of the export stage: a site, the exported graph, a found statistic.

Stage: export. :class:`Site` (one batch statistic found in a graph, what
every later stage keys its values by), :class:`EstimationGraph` (the result
of :func:`popstats._src.export.exporter.export`) and :class:`Found` (a
statistic as one graph level sees it, during the export pass).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pytensor.graph.basic import Variable
from pytensor.tensor.variable import TensorVariable

from popstats._src.graph.walk import SiteId

__all__ = ["EstimationGraph", "Found", "Site"]


@dataclass(frozen=True)
class Site:
    """A batch statistic found in a graph.

    Attributes
    ----------
    name : str
        Unique within the graph: the label, or ``label#k`` (k = 0, 1, ...,
        in graph order, skipping names that are labels) when several
        statistics share a label, e.g. when the same layer is applied at two
        places. A handle for tables and ``stats[name]``; statistics are
        matched across graphs and processes by :attr:`id`.
    label : str
        The label given to :func:`~popstats.bn_statistic` (or ``tag.bn_label``).
    id : SiteId
        Identity used to match the statistic across graphs and processes:
        the chain of enclosing loops, the label and a structural
        fingerprint (see :doc:`/names`).
    shape : tuple of int or None
        Static shape of the statistic itself (without time axes).
    dtype : str
        Its dtype.
    role, group : str or None
        As given to :func:`~popstats.bn_statistic`.
    counted : bool
        Whether an element count was given.
    time : tuple of str
        Per enclosing loop, outermost first: ``"step"`` (one value per step)
        or ``"pooled"`` (one value for all steps of that loop).
    """

    name: str
    label: str
    id: SiteId
    shape: tuple[int | None, ...]
    dtype: str
    role: str | None = None
    group: str | None = None
    counted: bool = False
    time: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if len(self.time) != self.id.depth:
            object.__setattr__(self, "time", ("step",) * self.id.depth)

    @property
    def depth(self) -> int:
        """Number of enclosing loops."""
        return self.id.depth

    @property
    def time_axes(self) -> int:
        """Number of leading time axes of its value (loops not pooled)."""
        return self.time.count("step")

    @property
    def where(self) -> str:
        """The chain of loops holding it, e.g. ``"outer/inner"``."""
        return self.id.where


@dataclass(frozen=True)
class EstimationGraph:
    """The exporter's result, one entry per site.

    ``outputs[i]`` is the statistic of ``sites[i]`` with one leading axis per
    loop level not pooled; ``counts[i]`` its element count (same time axes,
    None when not given); ``weights[i]`` the number of steps pooled into each
    value (None when no loop level is pooled). ``replaced`` holds the
    exported graph's versions of the outputs given to :func:`export`: they
    share its rebuilt loops, so a function computing both runs each loop once.
    """

    outputs: tuple[TensorVariable, ...]
    sites: tuple[Site, ...]
    counts: tuple[TensorVariable | None, ...] = ()
    weights: tuple[TensorVariable | None, ...] = ()
    replaced: tuple[Variable, ...] = ()

    def __post_init__(self) -> None:
        n = len(self.outputs)
        if len(self.counts) != n:
            object.__setattr__(self, "counts", (None,) * n)
        if len(self.weights) != n:
            object.__setattr__(self, "weights", (None,) * n)



@dataclass
class Found:
    """A statistic as seen from one graph level, during the export pass."""

    site: SiteId
    stat: TensorVariable  # the marked variable where it is computed
    value: TensorVariable
    count: TensorVariable | None
    weight: TensorVariable | None
    time: list[str]  # per loop level from this level inwards, filled outwards
