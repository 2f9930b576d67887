"""Precise batch norm: population statistics written into running statistics.

Stage: running. :func:`update_running_stats` is PyTorch's ``update_bn`` and
fvcore's PreciseBN for PyTensor: it estimates the population statistics of a
graph (any estimator, as :func:`~popstats.estimate`) and writes them into the
shared variables the graph's batch norms read at inference, without changing
the graph: pytensor-ml's ``running_mean`` / ``running_var``
(:mod:`popstats._src.running.ptml_targets`) and
:func:`popstats.nn.running_average_updates`' running averages (passed as
``running=``; found by the tags ``nn`` writes on its variables, since this
stage cannot import ``nn``). Everything is checked before anything is written.

Members: :class:`RunningWrite`, :class:`WrittenStatistics`,
:func:`update_running_stats`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Unpack

import numpy as np
from pytensor.compile.sharedvalue import SharedVariable
from pytensor.graph.basic import Variable

from popstats._src.errors import PopstatsError, describe_value
from popstats._src.estimation.estimators import bessel_corrected
from popstats._src.estimation.one_call import estimate_as
from popstats._src.estimation.options import (
    EstimationOptions,
    OptionKeywords,
    takes_options,
)
from popstats._src.estimation.statistics import PopulationStatistics, Statistic
from popstats._src.export.exporter import export
from popstats._src.graph.pytensor_ml import collect_applications
from popstats._src.running import ptml_targets as running_ptml
from popstats._src.running.ptml_targets import CALL, Target

__all__ = ["RunningWrite", "WrittenStatistics", "update_running_stats"]


@dataclasses.dataclass(frozen=True)
class RunningWrite:
    """One shared variable :func:`update_running_stats` wrote.

    Attributes
    ----------
    variable : SharedVariable
        The variable written (e.g. pytensor-ml's ``bn_running_mean``).
    role : {"mean", "var", "std"} or None
        The statistic's role.
    statistics : tuple of str
        The estimated statistics written into it: several when one running
        pair serves several applications of a layer (then pooled).
    weights : tuple of float
        Their pooling weights (elements reduced over), one per statistic.
    value : numpy.ndarray
        The value written, in the variable's dtype.
    source : {"pytensor-ml", "popstats.nn"}
        Whose running statistic it is.
    """

    variable: SharedVariable
    role: str | None
    statistics: tuple[str, ...]
    weights: tuple[float, ...]
    value: np.ndarray
    source: str

    @property
    def name(self) -> str:
        """The variable's name."""
        return str(self.variable.name)


class WrittenStatistics(Sequence):
    """What :func:`update_running_stats` wrote: a sequence of :class:`RunningWrite`.

    ``written[name]`` is the write of the variable named ``name``;
    :attr:`statistics` the estimated :class:`~popstats.PopulationStatistics`
    (before pooling and the cast to the variables' dtypes).
    """

    def __init__(self, writes: Sequence[RunningWrite],
                 statistics: PopulationStatistics):
        self.writes = tuple(writes)
        self.statistics = statistics

    def __len__(self) -> int:
        return len(self.writes)

    def __iter__(self) -> Iterator[RunningWrite]:
        return iter(self.writes)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            for write in self.writes:
                if write.name == key:
                    return write
            raise KeyError(f"{key!r}: written are {[w.name for w in self.writes]}")
        return self.writes[key]

    def __repr__(self) -> str:
        lines = [f"{w.name} <- {' + '.join(w.statistics)} ({w.source}, "
                 f"{w.value.dtype}, shape {w.value.shape})" for w in self.writes]
        return "WrittenStatistics(\n  " + "\n  ".join(lines) + "\n)"


def _running_sets(running: object) -> list[Any]:
    items = ([] if running is None else list(running)
             if isinstance(running, list | tuple) else [running])
    for item in items:
        variables = getattr(item, "variables", None)
        tagged = isinstance(variables, Mapping) and bool(variables) and all(
            getattr(v.tag, "popstats_running", None) == name
            for name, v in variables.items() if isinstance(v, SharedVariable)
        ) and all(isinstance(v, SharedVariable) for v in variables.values())
        if not tagged or not all(hasattr(item, a) for a in
                                 ("sites", "coverage", "n_batches", "unbiased")):
            raise PopstatsError(
                f"{CALL}(running=...): expected the RunningAverages returned by "
                f"popstats.nn.running_average_updates (or a list of them), got "
                f"{describe_value(running)}. pytensor-ml's running statistics "
                f"are found in the graph: pass running only for popstats.nn's."
            )
    return items


def _per_step(stat: Statistic, variable: SharedVariable, depth: int, reason: str):
    """``stat``'s value (and coverage) laid out as ``variable``'s steps."""
    shape = variable.get_value(borrow=True).shape
    value = np.asarray(stat.value)
    if stat.depth != depth or value.shape[depth:] != shape[depth:]:
        raise PopstatsError(
            f"{CALL}(running=...): statistic {stat.name!r} was estimated with "
            f"value shape {value.shape} ({stat.depth} time axes), but its running "
            f"variable {variable.name!r} has shape {shape} ({depth} time axes, "
            f"{reason}). Estimate with time='step' (the default) for per-step "
            f"running averages."
        )
    if not depth:
        return value, stat.coverage
    cut = tuple(slice(0, min(n, m)) for n, m in zip(value.shape, shape[:depth],
                                                     strict=False))
    value, coverage = value[cut], np.asarray(stat.coverage, np.int64)[cut]
    pad = [(0, m - n) for n, m in zip(value.shape[:depth], shape[:depth],
                                      strict=True)]
    value = np.pad(value, pad + [(0, 0)] * (value.ndim - depth), mode="edge")
    return value, np.pad(coverage, pad)


def _same_statistic(site: Any, stats: PopulationStatistics) -> Statistic | None:
    """The statistic ``site`` (of running_average_updates' graph) is in ``stats``.

    Matched by the mark's key, which the outputs running_average_updates
    returns share with those it was given (their loops rebuilt, so their
    fingerprints differ); by identity too when a mark is applied twice.
    """
    same = [s for s in stats.values() if s.site.id.key == site.id.key]
    if len(same) > 1:
        same = [s for s in same if s.site.id == site.id]
    return same[0] if len(same) == 1 else None


def _nn_targets(sets: list[Any], stats: PopulationStatistics, claimed: set[str]):
    targets, extra = [], []
    for running in sets:
        for site in running.sites:
            stat = _same_statistic(site, stats)
            if stat is None:
                raise PopstatsError(
                    f"{CALL}(running=...): the running average of {site.name!r} "
                    f"(in {site.where}) belongs to no statistic of outputs, so "
                    f"popstats cannot be sure where its value comes from; "
                    f"estimated: {', '.join(map(repr, stats)) or 'none'}. Pass "
                    f"the outputs given to running_average_updates (or those it "
                    f"returned), with the RunningAverages it returned."
                )
            corrected = bessel_corrected(stat.estimator, site.role)
            if site.role in ("var", "std") and corrected != bool(running.unbiased):
                want = "'unbiased'" if running.unbiased else "'mean' (or a biased one)"
                raise PopstatsError(
                    f"{CALL}(estimator=...): the running {site.role} "
                    f"{site.name!r} averages "
                    f"{'unbiased' if running.unbiased else 'biased'} batch "
                    f"variances (running_average_updates(unbiased="
                    f"{bool(running.unbiased)})), but estimator "
                    f"{stat.estimator.name!r} gives "
                    f"{'unbiased' if not running.unbiased else 'biased'} ones. "
                    f"Pass estimator={want} to keep the running averages' "
                    f"convention."
                )
            variable = running.variables[site.name]
            value, coverage = _per_step(stat, variable, site.time_axes,
                                        f"max_steps={running.max_steps}")
            targets.append(Target(variable, site.role, "popstats.nn", [stat], value,
                                  [float(stat.n_batches)]))
            cov = running.coverage[site.name]
            extra.append((cov, coverage if site.time_axes else stat.n_batches))
            claimed.add(stat.name)
        extra.append((running.n_batches,
                      max((s.n_batches for s in stats.values()), default=0)))
    return targets, extra


@takes_options
def update_running_stats(
    inputs: Sequence[Variable],
    outputs: Variable | Sequence[Variable],
    batches: Iterable[Any],
    *,
    running: Any = None,
    progress: bool | str = "auto",
    **options: Unpack[OptionKeywords],
) -> WrittenStatistics:
    """Estimate population statistics and write them into running statistics.

    PyTorch's ``update_bn`` (fvcore's PreciseBN) for PyTensor: after it,
    pytensor-ml's ``Model.predict``, ``compile_predict`` and ``save_state``
    use the estimated values, and so does
    :meth:`popstats.nn.RunningAverages.as_statistics`. The graph is not
    changed, only the values of the shared variables it reads; nothing is
    written unless every statistic has exactly one variable to go to.

    Written are, per statistic, the estimator's value cast to the
    variable's dtype: with the default ``"mean"``, the mean of the batch
    means and of the biased batch variances, the quantity pytensor-ml's own
    running averages (biased, momentum 0.1) average; ``"unbiased"`` writes
    PyTorch ``update_bn``'s values; ``"pooled"`` fvcore's. Where one
    pytensor-ml running pair serves several time steps (a ``BatchNorm`` in a
    ``Recurrent`` cell) its statistics are estimated pooled over the steps
    (``time="pooled"`` for them unless ``time`` is given), and where it
    serves several applications of a layer they are pooled, weighted by
    elements reduced over, the spread between applications included: one
    pair cannot normalize each step or application with its own values,
    :func:`~popstats.rewrite` can (see :doc:`/pytensor-ml`).

    Parameters
    ----------
    inputs, outputs, batches
        As for :func:`~popstats.estimate`: the training graph, with its
        pytensor-ml batch norms (found without marks) or marked statistics.
    [estimation options]
    running : RunningAverages or list of them, optional
        Keyword only. The running averages of
        :func:`popstats.nn.running_average_updates` to overwrite (one value
        per step as they keep; their coverage and batch count too). Their
        ``unbiased`` convention must be the estimator's.
    progress : bool or "auto", default "auto"
        As for :func:`~popstats.estimate`.

    Returns
    -------
    WrittenStatistics
        One :class:`RunningWrite` per variable written: which variable got
        which statistics, with which weights, and the value.

    Raises
    ------
    PopstatsError
        For what :func:`~popstats.estimate` refuses; a pytensor-ml layer
        without running statistics (``track_running_stats=False``: use
        :func:`~popstats.rewrite`); a statistic with no running variable, or
        one whose variable popstats cannot be sure of; values that do not
        fit their variable; a ``running`` of the other variance convention.

    Examples
    --------
    >>> import numpy as np, pytensor, pytensor.tensor as pt, popstats
    >>> from popstats import nn
    >>> x = pt.tensor("x", shape=(None, 1))
    >>> bn = nn.batch_norm(x, axes=0, label="fc")
    >>> y, updates, running = nn.running_average_updates(bn.output)
    >>> batches = [{"x": np.array([[0.0], [2.0]])}, {"x": np.array([[4.0], [8.0]])}]
    >>> written = popstats.update_running_stats([x], y, batches, running=running)
    >>> sorted((w.name, w.statistics, w.value.tolist()) for w in written)
    [('running.fc.mean', ('fc.mean',), [3.5]), ('running.fc.var', ('fc.var',), [2.5])]
    >>> running.as_statistics()["fc.var"].value.tolist()
    [2.5]
    """
    opts = EstimationOptions.check(CALL, options)
    sets = _running_sets(running)
    with collect_applications() as found:
        sites = export(outputs).sites
    running_ptml.check_applications(sites, found)
    if opts.upstream == "population":
        running_ptml.check_consistent(found)
    nn_keys = {site.id.key for r in sets for site in r.sites}
    stray = [s for s in sites
             if (s.group or "") not in found and s.id.key not in nn_keys]
    if stray:
        _no_variable(stray[0].name, running)
    if "time" not in options:
        opts = dataclasses.replace(opts, time=running_ptml.pooled_time(sites, found))
    with collect_applications() as found:
        stats = estimate_as(CALL, inputs, outputs, batches, opts, progress=progress)
    claimed: set[str] = set()
    targets = running_ptml.targets(stats, found, claimed)
    nn_targets, bookkeeping = _nn_targets(sets, stats, claimed)
    unclaimed = [name for name in stats if name not in claimed]
    if unclaimed:
        _no_variable(unclaimed[0], running)
    writes = []
    for target in [*targets, *nn_targets]:
        old = target.variable.get_value(borrow=True)
        value = np.asarray(target.value).astype(old.dtype)
        writes.append(RunningWrite(target.variable, target.role,
                                   tuple(s.name for s in target.stats),
                                   target.weights, value, target.source))
    for write in writes:
        write.variable.set_value(write.value.copy())
    for variable, value in bookkeeping:
        old = variable.get_value(borrow=True)
        variable.set_value(np.asarray(value).astype(old.dtype))
    return WrittenStatistics(writes, stats)


def _no_variable(name: str, running: object) -> None:
    held = "" if running is None else ", and running= holds no running average of it"
    raise PopstatsError(
        f"{CALL}(outputs=...): statistic {name!r} has no running variable: it "
        f"is not a pytensor-ml BatchNorm's statistic{held}, so popstats cannot "
        f"be sure where to write it. Pass the RunningAverages of "
        f"popstats.nn.running_average_updates as running=..., or use "
        f"popstats.rewrite / popstats.get_inference_graph, which need no "
        f"running variables."
    )
