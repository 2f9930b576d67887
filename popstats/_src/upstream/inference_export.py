"""The estimation graph of the inference graph: statistics as inference sees them.

Today's estimation (and PyTorch's ``update_bn``, fvcore's PreciseBN) runs
the training graph: every batch norm upstream of a statistic normalizes with
its *batch* statistics. At inference they normalize with population values,
so a layer's input differs from the one its statistics were measured on
(the "estimation shift", Huang et al., CVPR 2022). :func:`inference_export`
builds the graph that measures each statistic on its inference-time input:
one walk over the training graph (:func:`~popstats._src.graph.walk.transform`)
with a visitor that is both the exporter's and the rewriter's. At every
statistic it records the batch statistic, computed from the rewritten
upstream graph, as an output (per step inside loops, pooled where the time
modes say), and hands the rest of the graph the population value, exactly
as :func:`~popstats.rewrite` would (``population[min(t, T - 1)]`` in loops).
Statistics of one ``group`` (one layer) are not upstream of each other: a
variance computed from its layer's marked mean is exported computed from
the batch mean, as in training. A statistic that reads another's value
where either has no group is refused: its layer cannot be told.

The population values sit in shared variables (:class:`InferenceExport`
holds them by statistic name) so that one compiled function serves every
round of the fixed-point iteration
(:mod:`popstats._src.upstream.fixed_point`): :meth:`InferenceExport.hold`
puts new values in place.

Stage: upstream. Members: :class:`InferenceExport`, :func:`inference_export`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import pytensor.tensor as pt
from pytensor.graph.basic import Variable
from pytensor.graph.replace import clone_replace
from pytensor.graph.traversal import ancestors
from pytensor.tensor.random.op import RandomVariable
from pytensor.tensor.sharedvar import TensorSharedVariable

from popstats._src.errors import PopstatsError
from popstats._src.estimation.statistics import PopulationStatistics
from popstats._src.export.exporter import ExportLevel, export_with
from popstats._src.export.sites import EstimationGraph
from popstats._src.graph.marker import statistic_group, statistic_label
from popstats._src.graph.surgery import ScanEdit, walk_nodes
from popstats._src.graph.walk import LoopStep, SiteId
from popstats._src.rewrite.matching import Matcher
from popstats._src.rewrite.rewriter import (
    RewriteLevel,
    check_fits,
    population_array,
    step_index,
)

__all__ = ["InferenceExport", "inference_export"]


class _InferenceLevel(ExportLevel):
    """Exports each statistic and replaces it downstream by its value."""

    def __init__(self, call: str, time: object, names: Mapping[SiteId, str] | None,
                 rewrite: RewriteLevel):
        super().__init__(call, time, names)
        self.rewrite = rewrite
        #: per group at this level, each statistic's value in the graph
        #: (its population value) and its batch value
        self.layers: dict[str, dict[Variable, Variable]] = {}
        #: every statistic's value in the graph at this level: (label, group)
        self.replaced: dict[Variable, tuple[str, str | None]] = {}
        #: the labels of this level's statistics that read another's value
        self.dependent: set[str] = set()

    def statistic(self, var: Variable, site: SiteId) -> Variable | None:
        # The batch statistic, on rewritten inputs -- but a statistic of the
        # same layer (group) is not upstream of it: a variance computed
        # from its layer's mean reads the batch mean, as in training.
        group = statistic_group(var)
        siblings = self.layers.setdefault(group, {}) if group is not None else {}
        batch = clone_replace(var, replace=siblings) if siblings else var
        self._check_reads(batch, statistic_label(var), group)
        super().statistic(batch, site)
        replacement = self.rewrite.statistic(var, site)
        if replacement is not None:
            self.replaced[replacement] = (statistic_label(var), group)
            if group is not None:
                siblings[replacement] = batch
        return replacement

    def _check_reads(self, batch: Variable, label: str, group: str | None) -> None:
        """Refuse a statistic reading another's value where a group is
        missing: popstats cannot tell the other's layer (its own: the batch
        value; one upstream: the population value)."""
        if not self.replaced:
            return
        read = [self.replaced[v] for v in ancestors([batch]) if v in self.replaced]
        if read:
            self.dependent.add(label)
        for other, other_group in read:
            if group is None or other_group is None:
                which = ("neither has" if group is None and other_group is None
                         else "one has no")
                raise PopstatsError(
                    f"{self.call}(upstream='population'): statistic {label!r} is "
                    f"computed from statistic {other!r}, and {which} group, so "
                    f"popstats cannot tell whether {other!r} is of "
                    f"{label!r}'s own layer (then read as its batch value, as in "
                    f"training: a variance from its layer's mean) or of a layer "
                    f"upstream (then read as its population value). Give the "
                    f"statistics of each layer one group: bn_statistic(..., "
                    f"group='layer1') (popstats.nn's and pytensor-ml's layers do)."
                )

    def inner_level(self, path: tuple[LoopStep, ...]) -> _InferenceLevel:
        step = pt.scalar(f"{path[-1].name}_step", dtype="int64")
        inner = RewriteLevel(self.rewrite.matcher, None, parent=self.rewrite,
                              step=step, level=len(path) - 1)
        return _InferenceLevel(self.call, self.time, self.names, inner)

    def extend_scan(self, edit: ScanEdit, inner: ExportLevel) -> None:
        rewrite = inner.rewrite  # type: ignore[attr-defined]
        edit.add_sequence(step_index(edit.n_steps), rewrite.step)
        for outer_value, inner_value in rewrite.non_seqs:
            edit.add_non_sequence(outer_value, inner_value)


@dataclass(frozen=True)
class InferenceExport:
    """The estimation graph of an inference graph, and the values it holds.

    ``graph`` is an :class:`~popstats.EstimationGraph` whose statistics
    (same names and identities as :func:`~popstats.export` of the training
    graph) are computed with every statistic upstream of them at the
    population values held in ``values`` (statistic name to shared
    variable).
    """

    graph: EstimationGraph
    values: Mapping[str, TensorSharedVariable]
    #: the statistics outside loops that read no population value (no
    #: statistic upstream): every round over the same data gives them the
    #: same value, which :mod:`~popstats._src.upstream.fixed_point` checks
    independent: frozenset[str] = frozenset()

    def hold(self, stats: PopulationStatistics, call: str) -> None:
        """Put the values of ``stats`` into the graph (same statistics)."""
        for name, var in self.values.items():
            stat = stats.get(name)
            if stat is None or stat.site.time != var.tag.popstats_time:
                raise PopstatsError(  # pragma: no cover - popstats' own rounds
                    f"{call}: the upstream values lack statistic {name!r} (or "
                    f"hold it with other time modes); estimate them on this graph."
                )
            value = population_array([stat], False, call)
            held = var.get_value(borrow=True)
            if value.shape[stat.depth:] != held.shape[stat.depth:]:
                raise PopstatsError(  # pragma: no cover - popstats' own rounds
                    f"{call}: statistic {name!r} has shape {value.shape} in the "
                    f"upstream values but {held.shape} in the graph."
                )
            var.set_value(np.asarray(value, dtype=held.dtype))


def inference_export(
    outputs: Sequence[Variable], stats: PopulationStatistics, time: object,
    call: str, match: str = "structure",
) -> InferenceExport:
    """The estimation graph of ``outputs`` rewritten with ``stats``.

    ``stats`` must hold a value for every statistic of ``outputs`` (with the
    time modes ``time`` gives them), found as ``match`` says (as in
    :func:`~popstats.rewrite`); the user's graph is not modified.
    """
    matcher = Matcher([stats], match, call)
    root = RewriteLevel(matcher, None)
    graph = export_with(outputs, call, time,
                        lambda c, t, names: _InferenceLevel(c, t, names, root))
    matcher.check()
    check_fits(root.placed, call)
    _check_not_random(graph, call)
    held = set(root.values.values())
    independent = frozenset(
        site.name for site, out in zip(graph.sites, graph.outputs, strict=True)
        if not site.depth and not held.intersection(ancestors([out])))
    # without select the values are the shared variables themselves
    values = cast(dict[str, TensorSharedVariable], root.values)
    return InferenceExport(graph, dict(values), independent)


def _check_not_random(graph: EstimationGraph, call: str) -> None:
    """Refuse random numbers in the estimation graph (dropout): their fixed
    point is not defined, and inference usually leaves them out."""
    outputs = [*graph.outputs, *(c for c in graph.counts if c is not None)]
    for _, node in walk_nodes(outputs):
        if isinstance(node.op, RandomVariable):
            raise PopstatsError(
                f"{call}(upstream='population'): the statistics depend on random "
                f"numbers ({node.op}, dropout or noise?), which change from "
                f"batch to batch and pass to pass, and which an inference graph "
                f"leaves out: the fixed point of such a graph is not the one "
                f"deployed. Estimate on the graph built for inference (without "
                f"dropout: e.g. pytensor-ml's Model in eval mode, or the outputs "
                f"built with training=False), or use upstream='batch'."
            )
