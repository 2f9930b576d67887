"""Population values put into an inference graph in place, and where they are.

Stage: rewrite. :func:`bind` sets the shared variables of a graph made by
:func:`~popstats._src.rewrite.rewriter.rewrite` (every copy of a statistic's
variable: outputs rewritten in separate calls hold one each);
:func:`population_variables` gives them by statistic name (refusing a graph
that holds several copies of one); :func:`population_copies` lists every copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from pytensor.graph.basic import Variable
from pytensor.graph.traversal import toposort
from pytensor.tensor.sharedvar import TensorSharedVariable

from popstats._src.errors import PopstatsError, describe_value
from popstats._src.estimation.statistics import PopulationStatistics
from popstats._src.export.exporter import as_variables
from popstats._src.rewrite.matching import Matcher, check_match
from popstats._src.rewrite.rewriter import check_finite, check_stats, population_array

__all__ = ["bind", "population_copies", "population_variables"]


def bind(
    outputs: Variable | Sequence[Variable],
    stats: PopulationStatistics | Sequence[PopulationStatistics],
    *,
    match: str = "structure",
) -> None:
    """Put other population values into an inference graph, in place.

    Sets the shared variables of a graph made by :func:`rewrite` (or loaded
    statistics onto a graph built earlier, in this process or another)
    without rebuilding or recompiling. A graph built with ``select`` takes a
    list of sets (their number may change); the others take one
    :class:`PopulationStatistics`. Values are matched with the graph's
    statistics as in :func:`rewrite` (``match``); if any statistic has no
    value, or a value does not fit, nothing is changed.

    Examples
    --------
    >>> import numpy as np, pytensor, pytensor.tensor as pt, popstats
    >>> x = pt.matrix("x")
    >>> y = x - popstats.bn_statistic(x.mean(axis=0), label="mean")
    >>> y_inf = popstats.rewrite(y, popstats.estimate([x], y, [{"x": np.ones((3, 2))}]))
    >>> f = pytensor.function([x], y_inf)
    >>> popstats.bind(y_inf, popstats.estimate([x], y, [{"x": np.full((2, 2), 4.0)}]))
    >>> f(np.zeros((1, 2)))
    array([[-4., -4.]])
    """
    found = population_copies(outputs, "bind")
    if not found:
        raise PopstatsError(
            "bind(outputs=...): the graph holds no population variables; bind "
            "onto outputs returned by popstats.rewrite or get_inference_graph."
        )
    sets = [stats] if isinstance(stats, PopulationStatistics) else stats
    check_stats(sets, select=0, call="bind")
    matcher = Matcher(sets, check_match(match, "bind"), "bind")
    planned = []
    for name, var in ((n, v) for n, copies in found.items() for v in copies):
        stacked = bool(getattr(var.tag, "popstats_stacked", False))
        if stacked == isinstance(stats, PopulationStatistics):
            wanted = "a list of PopulationStatistics" if stacked else "one"
            raise PopstatsError(
                f"bind(stats=...): the graph was built "
                f"{'with' if stacked else 'without'} select=..., so pass {wanted} "
                f"(got {describe_value(stats)})."
            )
        group = matcher.find(var.tag.popstats_site)
        if group is not None:
            planned.append((name, var, stacked, group))
    matcher.check()
    values = []
    for name, var, stacked, group in planned:
        built = getattr(var.tag, "popstats_time", None)
        for k, stat in enumerate(group):
            if stat.site.time != built:
                where = "stats" if not stacked else f"stats[{k}]"
                raise PopstatsError(
                    f"bind(stats=...): statistic {name!r} was estimated with time "
                    f"modes {stat.site.time} in {where}, but the graph was built "
                    f"for {built} (per loop level, outermost first): its time "
                    f"axes would be indexed as the wrong loops' steps. Estimate "
                    f"with the graph's time=..., or rewrite the graph again with "
                    f"these statistics."
                )
        for stat in group:
            check_finite(stat, "bind")
        value = population_array(group, stacked, "bind")
        want = var.type.shape
        # the statistic's own axes (after time axes and the set axis) must be
        # those of the value in place: a different size, or a 1 that would
        # broadcast, is a value estimated for another graph
        own = len(group[0].site.shape)
        held = var.get_value(borrow=True).shape
        if value.ndim != len(want) or any(
            w is not None and w != v for w, v in zip(want, value.shape, strict=True)
        ) or (own and value.shape[-own:] != held[-own:]):
            raise PopstatsError(
                f"bind(stats=...): statistic {name!r} has shape {value.shape} in "
                f"stats (statistic shape {value.shape[value.ndim - own:]}), but "
                f"the graph holds shape {held} (statistic shape "
                f"{held[len(held) - own:]}). These values were estimated for "
                f"another graph; estimate on this one."
            )
        values.append((var, value.astype(var.dtype)))
    for var, value in values:
        var.set_value(value)


def population_variables(
    outputs: Variable | Sequence[Variable],
) -> dict[str, TensorSharedVariable]:
    """The shared variables holding population values in a rewritten graph.

    Returns a dict from statistic name to shared variable; update one with
    ``set_value`` to change the value without rebuilding or recompiling.
    Outputs rewritten in separate :func:`rewrite` calls hold one variable per
    call for a statistic they share; then this refuses (setting one would
    leave the others stale) and :func:`bind` is the way to update them all.

    Examples
    --------
    >>> import numpy as np, pytensor.tensor as pt, popstats
    >>> x = pt.matrix("x")
    >>> y = x - popstats.bn_statistic(x.mean(axis=0), label="mean")
    >>> y_inf = popstats.rewrite(y, popstats.estimate([x], y, [{"x": np.ones((3, 2))}]))
    >>> popstats.population_variables(y_inf)["mean"].get_value()
    array([1., 1.])
    """
    call = "population_variables"
    found = population_copies(outputs, call)
    shared = {name: len(copies) for name, copies in found.items() if len(copies) > 1}
    if shared:
        raise PopstatsError(
            f"{call}(outputs=...): the graph holds several population variables "
            f"for the same statistic ({shared}: name and number of copies), "
            f"because its outputs were rewritten in separate rewrite calls; "
            f"setting one copy would leave the others with the old value. Use "
            f"popstats.bind(outputs, stats), which sets every copy, or rewrite "
            f"all outputs in one call: rewrite([y, loss], stats)."
        )
    return {name: copies[0] for name, copies in found.items()}


def population_copies(
    outputs: object, call: str
) -> dict[str, list[TensorSharedVariable]]:
    """Per statistic name, every shared variable holding its population value
    in the graph of ``outputs`` (several when the outputs come from separate
    :func:`rewrite` calls), in graph order."""
    outs = as_variables(outputs, call)
    found: dict[str, list[TensorSharedVariable]] = {}

    def add(var: Variable) -> None:
        name = getattr(var.tag, "popstats_statistic", None)
        if name is not None and var.owner is None:
            copies = found.setdefault(name, [])
            if not any(var is other for other in copies):
                copies.append(cast(TensorSharedVariable, var))  # rewrite's shared

    for node in toposort(list(outs)):
        for var in node.inputs:
            add(var)
    for var in outs:
        add(var)
    return found
