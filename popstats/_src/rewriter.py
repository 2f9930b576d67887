"""Rewriter: replace every batch statistic by its population value.

In the outer graph a statistic is replaced by a shared variable holding its
population value. Inside a Scan, the rebuilt loop gets a step-index sequence
and the population array as a non-sequence; the statistic becomes
``population[min(t, T - 1)]`` (steps past the longest sequence seen reuse
the last one, the rule of recurrent batch normalization, Cooijmans et al.
2016), recursively for nested loops. One pass over the graph: nothing is
cloned per statistic.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import overload

import numpy as np
import pytensor
import pytensor.tensor as pt
from pytensor.graph.basic import Apply, Variable
from pytensor.graph.traversal import toposort

from popstats._src.errors import PopstatsError, describe_value
from popstats._src.exporter import as_variables
from popstats._src.scan_surgery import ScanEdit
from popstats._src.statistics import PopulationStatistics, Statistic
from popstats._src.walk import LoopStep, SiteId, transform

__all__ = ["population_variables", "rewrite"]


class _RewriteLevel:
    """One graph level; lends each statistic's value to the level below."""

    call = "rewrite"  # named in errors

    def __init__(
        self,
        stats: PopulationStatistics,
        parent: _RewriteLevel | None = None,
        step: Variable | None = None,
    ):
        self.stats = stats
        self.parent = parent
        self.step = step
        self.values: dict[str, Variable] = {}
        self.non_seqs: list[tuple[Variable, Variable]] = []

    def value(self, stat: Statistic) -> Variable:
        """The population value at this level (remaining time axes first)."""
        if stat.name in self.values:
            return self.values[stat.name]
        if self.parent is None:
            value = _shared_for(stat)
        else:
            outer = self.parent.value(stat)
            inner = outer.type()
            inner.name = outer.name
            self.non_seqs.append((outer, inner))
            value = inner[pt.minimum(self.step, inner.shape[0] - 1)]
        self.values[stat.name] = value
        return value

    def statistic(self, var: Variable, site: SiteId) -> Variable:
        stat = self.stats.lookup(site)
        if stat is None:
            raise PopstatsError(
                f"rewrite(stats=...): the graph has statistic {site.label!r} (in "
                f"{site.where}) but stats has no value for it; stats holds "
                f"{sorted(self.stats)}. Estimate on outputs that include this "
                f"statistic (popstats.estimate(inputs, outputs, batches))."
            )
        expected = stat.value.shape[stat.depth :]
        static = var.type.shape
        if len(static) != len(expected) or any(
            s is not None and s != e for s, e in zip(static, expected, strict=True)
        ):
            raise PopstatsError(
                f"rewrite(stats=...): statistic {stat.name!r} has shape {static} "
                f"in the graph but {expected} in stats. Estimate again on this "
                f"graph."
            )
        value = self.value(stat)
        if value.dtype != var.dtype:
            value = value.astype(var.dtype)
        return var.type.filter_variable(value)

    def scan(
        self, node: Apply, inputs: list[Variable], path: tuple[LoopStep, ...]
    ) -> list[Variable]:
        edit = ScanEdit(node, inputs)
        step = pt.scalar(f"{node.op.name}_step", dtype="int64")
        inner = _RewriteLevel(self.stats, parent=self, step=step)
        edit.set_inner_outputs(
            transform(edit.inner_inputs, edit.inner_outputs, inner, path)
        )
        edit.add_sequence(pt.arange(edit.n_steps, dtype="int64"), step)
        for outer_value, inner_value in inner.non_seqs:
            edit.add_non_sequence(outer_value, inner_value)
        replaced, _ = edit.build()
        return replaced


def _shared_for(stat: Statistic) -> Variable:
    site = stat.site
    value = np.asarray(stat.value, dtype=site.dtype)
    shape = (None,) * site.depth + tuple(site.shape)
    var = pytensor.shared(value, name=stat.name, shape=shape)
    var.tag.popstats_statistic = stat.name
    return var


@overload
def rewrite(outputs: Variable, stats: PopulationStatistics) -> Variable: ...
@overload
def rewrite(
    outputs: Sequence[Variable], stats: PopulationStatistics
) -> list[Variable]: ...
def rewrite(outputs, stats):
    """Replace every marked statistic in ``outputs`` by its population value.

    Parameters
    ----------
    outputs : Variable or sequence of Variable
        Graph to rewrite: the training graph, or any graph holding the
        statistics ``stats`` was estimated for.
    stats : PopulationStatistics
        From :func:`~popstats.estimate`.

    Returns
    -------
    Variable or list of Variable
        The inference outputs, in the structure given. Population values are
        shared variables named after the statistics (see
        :func:`population_variables`); the user's graph is not modified.

    Examples
    --------
    >>> import numpy as np, pytensor, pytensor.tensor as pt, popstats
    >>> x = pt.matrix("x")
    >>> y = x - popstats.bn_statistic(x.mean(axis=0), label="mean")
    >>> stats = popstats.estimate([x], y, [{"x": np.ones((3, 2))}])
    >>> y_inf = popstats.rewrite(y, stats)
    >>> pytensor.function([x], y_inf)(np.zeros((1, 2)))
    array([[-1., -1.]])
    """
    if not isinstance(stats, PopulationStatistics):
        raise PopstatsError(
            f"rewrite(stats=...): expected PopulationStatistics from "
            f"popstats.estimate(), got {describe_value(stats)}."
        )
    outs = as_variables(outputs, "rewrite")
    new = transform((), outs, _RewriteLevel(stats))
    if isinstance(outputs, Variable):
        return new[0]
    return type(outputs)(new) if isinstance(outputs, tuple) else new


def population_variables(outputs: Variable | Sequence[Variable]) -> dict[str, Variable]:
    """The shared variables holding population values in a rewritten graph.

    Returns a dict from statistic name to shared variable; update one with
    ``set_value`` to change the value without rebuilding or recompiling.

    Examples
    --------
    >>> import numpy as np, pytensor.tensor as pt, popstats
    >>> x = pt.matrix("x")
    >>> y = x - popstats.bn_statistic(x.mean(axis=0), label="mean")
    >>> y_inf = popstats.rewrite(y, popstats.estimate([x], y, [{"x": np.ones((3, 2))}]))
    >>> popstats.population_variables(y_inf)["mean"].get_value()
    array([1., 1.])
    """
    outs = as_variables(outputs, "population_variables")
    found: dict[str, Variable] = {}
    stack = list(outs)
    for node in toposort(stack):
        for var in node.inputs:
            name = getattr(var.tag, "popstats_statistic", None)
            if name is not None and var.owner is None:
                found.setdefault(name, var)
    for var in outs:
        name = getattr(var.tag, "popstats_statistic", None)
        if name is not None:
            found.setdefault(name, var)
    return found
