"""Drift: how far new data departs from population statistics, and where.

:func:`drift` runs the estimation pass of a graph over new batches, with the
estimators, time modes and ``max_steps`` the population statistics were
made with, and compares cell by cell (per time step inside loops) what the
new data gives with the values inference would use:

* a mean and its variance (or std) of one group -- a batch-norm layer -- as
  the normal distributions they describe, per unit, with the symmetric
  Kullback-Leibler divergence (Jeffreys divergence)::

      J = KL(p||q) + KL(q||p)
        = (s0/s1 + s1/s0) / 2 - 1 + (m1 - m0)^2 (1/s0 + 1/s1) / 2

  with ``m0, s0`` the population mean and variance and ``m1, s1`` the new
  data's: 0 for the same distribution, ``d^2`` for a mean shift of ``d``
  standard deviations, ``(c^2 + 1/c^2)/2 - 1`` for a scale change ``c``;
* any other statistic by its standardized difference ``|v1 - v0| / sd``,
  ``sd`` the batch-to-batch standard deviation of the statistic on the new
  data (Bessel-corrected): how many batches' worth of noise it moved.

Cells the new data did not reach are not compared; steps beyond the
population's are compared with its last step, which inference repeats.

Stage: drift. Members: :func:`drift` and :func:`jeffreys` (from
:mod:`popstats._src.drift.measures`). The new data's
pass is an :class:`~popstats.Estimation` run (:meth:`~popstats.Estimation.run`,
the one batch loop, with its progress bar and, in JAX mode, the parameters
on the device once per pass); the batch-to-batch spread of the statistics
outside pairs is added up from the run's ``on_batch`` hook.
"""

from __future__ import annotations

import dataclasses
import glob
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from pytensor.graph.basic import Variable

from popstats._src.drift.measures import (
    aligned,
    first_seen,
    jeffreys,
    nan_reduce,
)
from popstats._src.drift.records import Drift, StatisticDrift
from popstats._src.errors import (
    PopstatsError,
    check_choice,
    check_int,
    check_number,
    describe_value,
)
from popstats._src.estimation import estimators as est
from popstats._src.estimation import formulas as fm
from popstats._src.estimation.accumulate_host import HostAccumulator
from popstats._src.estimation.options import EstimationOptions
from popstats._src.estimation.pass_object import Estimation
from popstats._src.estimation.plan import EstimationPlan
from popstats._src.estimation.statistics import PopulationStatistics
from popstats._src.export.exporter import as_variables, export_checked
from popstats._src.export.pairing import Pairs, key_of_site
from popstats._src.export.time_modes import align_cells
from popstats._src.rewrite.matching import check_match
from popstats._src.upstream.fixed_point import inference_pass
from popstats._src.upstream.inference_export import inference_export

__all__ = ["drift", "jeffreys"]

CALL = "drift"
_MEAN = est.Estimator("mean")
AGAINST = {
    "estimator": "the new data estimated as stats were",
    "moments": "the exact moments of the layers' inputs over the new data",
}
COMPARE = {
    "auto": "a divergence for each mean/variance pair, a standardized "
            "difference for every other statistic",
    "divergence": "a divergence for every statistic: each must be in a "
                  "mean/variance pair",
}


def drift(stats: PopulationStatistics, inputs: Sequence[Variable],
          outputs: Variable | Sequence[Variable], batches: Iterable[Any], *,
          eps: float = 0.0, mode: object = None, match: str = "structure",
          compare: str = "auto", worst: int = 5, dtypes: str = "convert",
          accumulate: str = "host", upstream: str = "batch",
          against: str = "estimator",
          checkpoint: str | os.PathLike | None = None,
          checkpoint_every: int = 100, progress: bool | str = "auto") -> Drift:
    """Compare new batches with population statistics, per statistic and step.

    Parameters
    ----------
    stats : PopulationStatistics
        The population statistics of ``outputs`` (from :func:`estimate` or
        :func:`load`).
    inputs, outputs, batches
        As for :func:`~popstats.estimate`; ``batches`` are the new data
        (labels are not needed).
    eps : float, default 0.0
        Added to both variances of a pair before comparing, as batch
        normalization adds it: pass your layers' epsilon to measure what
        the normalization sees. With 0, a unit whose variance is 0 on one
        side only (a pixel that never varied in training) drifts by inf.
    mode : str or Mode, optional
        Compilation mode of the estimation function.
    match : {"structure", "name"}, default "structure"
        How statistics are matched to ``stats``, as in :func:`rewrite`.
    compare : {"auto", "divergence"}, default "auto"
        ``"auto"``: a divergence for each mean/variance pair (role
        ``"mean"`` and ``"var"`` or ``"std"`` with one ``group``, in one
        loop), a standardized difference for any other statistic;
        ``"divergence"``: refuse statistics outside such pairs.
    worst : int, default 5
        How many of the most-moved units each record lists.
    dtypes, accumulate : str
        As for :func:`~popstats.estimate`: the dtype policy for batch values,
        and where the new data's batches are added up (``"host"``,
        ``"graph"``; with a JAX mode the device pass). The estimators and
        time modes are those of ``stats``.
    upstream : {"batch", "population"}, default "batch"
        What the layers upstream of each statistic normalize with on the new
        data: their batch statistics (the training graph), or the
        population values of ``stats`` (the inference graph: what each
        layer's input is when the model is deployed with ``stats``). With
        ``"population"`` over the estimation data itself, the records
        measure the *estimation shift* (see :doc:`/upstream`): 0 where a
        statistic is its layer's inference-time input's own, as after
        ``estimate(..., upstream="population")``. ``Drift.statistics`` are
        then the new data's statistics under that inference graph (marked
        ``upstream="given"``); for statistics consistent on the new data,
        estimate on it with ``upstream="population"``.
    against : {"estimator", "moments"}, default "estimator"
        What the new data's side is: estimated as ``stats`` were (their
        estimators), or the exact moments of the layers' inputs over the
        new data (``"pooled"`` for counted means, variances and stds of a
        group, the statistics' own estimators for the rest). With
        ``upstream="population"``, ``"moments"`` measures how far each
        population value is from the moments of its layer's input at
        inference (:func:`~popstats.shift`).
    checkpoint, checkpoint_every
        As for :func:`~popstats.estimate`: the pass over the new data saves
        its state there and resumes from it. Only where every statistic is in
        a mean/variance pair: the batch-to-batch spread of the others (for
        their standardized difference) is not part of an estimation state.
        Statistics outside pairs are also always added up on the host, where
        their per-batch values are (the numbers are the same).
    progress : bool or "auto"
        A progress bar over the batches, as for :func:`estimate`.

    Returns
    -------
    Drift
        One :class:`StatisticDrift` per pair or statistic, in graph order
        (a statistic after every one it depends on); printing it gives a
        table sorted by drift. ``Drift.statistics`` holds the population
        statistics of the new data: a second statistic set for
        :func:`rewrite` (``select=``) -- the remedy (AdaBN).

    Examples
    --------
    >>> import numpy as np, pytensor.tensor as pt, popstats
    >>> x = pt.matrix("x")
    >>> m = popstats.bn_statistic(x.mean(0), "m", role="mean", group="bn")
    >>> v = popstats.bn_statistic(x.var(0), "v", role="var", group="bn")
    >>> y = (x - m) / pt.sqrt(v + 1e-5)
    >>> rng = np.random.default_rng(0)
    >>> data = rng.normal(size=(4000, 2))
    >>> stats = popstats.estimate([x], y, [{"x": data}])
    >>> moved = popstats.drift(stats, [x], y, [{"x": data + [2.0, 0.0]}])
    >>> record = moved["bn"]
    >>> record.kind, record.names
    ('divergence', ('m', 'v'))
    >>> # a shift of 2 moves unit 0 by (2 / its standard deviation) squared
    >>> np.allclose(record.per_unit, [4 / data[:, 0].var(), 0.0], rtol=1e-12)
    True
    """
    if not isinstance(stats, PopulationStatistics):
        raise PopstatsError(
            f"{CALL}(stats=...): expected PopulationStatistics (from "
            f"popstats.estimate or popstats.load), got {describe_value(stats)}."
        )
    check_match(match, CALL)
    options = EstimationOptions.check(
        CALL, {"mode": mode, "dtypes": dtypes, "accumulate": accumulate,
               "upstream": upstream})
    check_choice(compare, COMPARE, f"{CALL}(compare=...)")
    check_choice(against, AGAINST, f"{CALL}(against=...)")
    worst = check_int(worst, f"{CALL}(worst=...)", what="units listed per record")
    eps = check_number(eps, f"{CALL}(eps=...)", minimum=0, what="the epsilon your "
                       "batch normalization adds to variances")
    run, found = _estimation(stats, inputs, outputs, options, match, against)
    pairs, single = _pairs(run, compare)
    if checkpoint is not None and single:
        names = [run.sites[i].name for i in single]
        raise PopstatsError(
            f"{CALL}(checkpoint=...): {names} are not in a mean/variance pair, "
            f"and the batch-to-batch spread their standardized difference needs "
            f"is not part of a checkpoint, so a resumed pass would lose the "
            f"batches before it. Drop checkpoint=..., or mark these statistics' "
            f"means and variances with role='mean'/'var' and one group."
        )
    new, spread = _pass(run, batches, single, progress=progress,
                        checkpoint=checkpoint, checkpoint_every=checkpoint_every)
    for site, old in zip(run.sites, found, strict=True):
        have, got = old.value.shape[site.time_axes:], new[site.name].value.shape[
            site.time_axes:]
        if have != got:
            raise PopstatsError(
                f"{CALL}(batches=...): statistic {site.name!r} has shape {got} "
                f"in the new data but {have} in stats. Drift compares data of "
                f"the same feature sizes: check that the new batches have the "
                f"shapes the model was estimated with."
            )
    records = []
    for var_i, mean_i in pairs:
        records.append(_pair_record(run, new, found, var_i, mean_i, int(worst),
                                    float(eps)))
    for k, i in enumerate(single):
        records.append(_single_record(run, new, found, spread[k],
                                      spread[k + len(single)], i, int(worst)))
    records.sort(key=lambda r: r.order)
    taken = [r.name for r in records]
    records = [r if taken.count(r.name) == 1 else r.renamed("/".join(r.names))
               for r in records]
    return Drift(tuple(records), new)


def _estimation(stats: PopulationStatistics, inputs, outputs,
                options: EstimationOptions, match: str, against: str):
    """The pass over new data, built as ``stats`` were (estimators, time
    modes; every step kept, whatever their max_steps) with ``options``
    (drift's ``mode``); and per statistic its population record."""
    graph = export_checked(as_variables(outputs, CALL), CALL, "step")
    looked_up = [stats.lookup(site.id, match) for site in graph.sites]
    missing = [s.name for s, f in zip(graph.sites, looked_up, strict=True)
               if f is None]
    if missing:
        raise PopstatsError(
            f"{CALL}(stats=...): no statistic in stats matches {missing} of "
            f"these outputs (stats holds {sorted(stats)}). Pass the population "
            f"statistics estimated for this graph; if the graph was rebuilt "
            f"with other code or another PyTensor version, try "
            f"match='name' (see rewrite)."
        )
    found = [f for f in looked_up if f is not None]  # all (none missing)
    caps = {f.max_steps for f in found}
    if len(caps) > 1:
        raise PopstatsError(
            f"{CALL}(stats=...): the statistics were estimated with different "
            f"max_steps ({sorted(caps, key=str)}); compare statistics of one "
            f"estimation pass."
        )
    # names escaped: a label may hold fnmatch's special characters; names
    # with '#k' first, so that 'bn' does not take 'bn#1' by its label
    order = sorted(range(len(found)), key=lambda i: "#" not in graph.sites[i].name)
    sides = [_new_side(f.estimator) if against == "estimator"
             else _moments_side(site, f.estimator)
             for site, f in zip(graph.sites, found, strict=True)]
    estimator = {glob.escape(graph.sites[i].name): sides[i] for i in order}
    time = {glob.escape(graph.sites[i].name): found[i].site.time for i in order
            if found[i].site.time}
    # every step of the new data: steps beyond a max_steps cap are compared
    # with the last kept one, which inference repeats
    options = dataclasses.replace(options, estimator=estimator, time=time or "step")
    if options.upstream == "population":  # the inference graph of stats
        outs = as_variables(outputs, CALL)
        exported = inference_export(outs, stats, options.time, CALL, match)
        run = inference_pass(None, inputs, outs, exported, stats, options, CALL)
    else:
        run = Estimation.of(EstimationPlan(inputs, outputs, options, CALL))
    for site, estimator_i, f, side in zip(run.sites, run.estimators, found, sides,
                                          strict=True):
        if (estimator_i != side
                or site.time != f.site.time):  # pragma: no cover
            raise PopstatsError(
                f"{CALL}(stats=...): could not rebuild the pass of "
                f"{site.name!r} as stats were made ({f.estimator}, time "
                f"{f.site.time}); please report this."
            )
    return run, found


def _new_side(estimator: est.Estimator) -> est.Estimator:
    """The estimator of the new data's pass: that of the statistic, except
    ``"ema"``: over a few new batches a running average is still mostly its
    starting value (0 for a mean), so the new side is their plain average
    (``"unbiased"`` for an unbiased ema)."""
    if estimator.name != "ema":
        return estimator
    return est.Estimator("unbiased" if estimator.unbiased else "mean")


def _moments_side(site, estimator: est.Estimator) -> est.Estimator:
    """The exact moments of all the data (``"pooled"``) for a mean, variance
    or std; the statistic's own estimator for any other."""
    if site.role not in ("mean", "var", "std"):
        return _new_side(estimator)
    if not site.counted or site.group is None:
        missing = "count" if not site.counted else "group"
        raise PopstatsError(
            f"{CALL}(against='moments'): statistic {site.name!r} (role "
            f"{site.role!r}) has no {missing}, so the exact moments of its "
            f"layer's input cannot be computed (they need the elements behind "
            f"each batch's value, and its pair). Mark it with "
            f"bn_statistic(..., role={site.role!r}, group='layer', "
            f"count=h.shape[0]) (popstats.nn's and pytensor-ml's layers do), or "
            f"compare with its own estimator (against='estimator')."
        )
    return est.Estimator("pooled")


def _pairs(run: Estimation, compare: str):
    """(variance index, mean index) pairs (:meth:`Pairs.pair`: one mean of
    its group in its loop, same time modes), and the statistics outside pairs."""
    sites = run.sites
    rule = Pairs([key_of_site(site) for site in sites])
    pairs = [(i, j) for i in range(len(sites)) if (j := rule.pair(i)) is not None]
    paired = {j for pair in pairs for j in pair}
    single = [i for i in range(len(sites)) if i not in paired]
    if compare == "divergence" and single:
        names = [sites[i].name for i in single]
        raise PopstatsError(
            f"{CALL}(compare='divergence'): {names} are not in a mean/variance "
            f"pair, so no divergence between distributions can be computed for "
            f"them. Mark the mean and variance of a layer with "
            f"role='mean' and role='var' (or 'std') and one group, or use "
            f"compare='auto' (a standardized difference for these)."
        )
    return pairs, single


def _pass(run: Estimation, batches, single: list[int], **run_options):
    """The new data's population statistics, and for each statistic of
    ``single`` the mean, then the mean square, of its per-batch values (for
    the batch-to-batch spread): ``moments[k]`` and ``moments[k + len(single)]``
    for ``single[k]``, added up from :meth:`Estimation.run`'s ``on_batch``."""
    sites = [run.sites[i] for i in single] * 2
    slots = [run.slots[i] for i in single] * 2
    spread = HostAccumulator(sites, (_MEAN,) * len(sites), (None,) * len(sites),
                             slots, run.max_steps, CALL)
    moments: list = [{} for _ in sites]
    # per cell, the value of the first batch that reached it: the values are
    # added up as differences from it, so that the spread (mean square less
    # squared mean) keeps its digits when the values are far from 0 relative
    # to their spread; a cell's shift never changes once set
    shifts: list = [None] * len(single)

    def observe(index: int, per_site: list) -> None:
        picked = []
        for k, i in enumerate(single):
            value, count, weight = per_site[i]
            axes = run.sites[i].time_axes
            shifts[k] = first_seen(shifts[k], np.asarray(value, np.float64), axes)
            cells = tuple(slice(0, n) for n in value.shape[:axes])
            picked.append((value - shifts[k][cells], count, weight))
        squares = [(v * v, c, w) for v, c, w in picked]
        spread.add(moments, [*picked, *squares], index)

    state = run.run(batches, on_batch=observe if single else None, **run_options)
    new = run.finalize(state)
    if run.spec.upstream != "batch":  # measured under the given values
        new = PopulationStatistics(tuple(dataclasses.replace(s, upstream="given")
                                         for s in new.values()))
    return new, moments


def _record(run, new, i, order, kind, names, per_unit, worst) -> StatisticDrift:
    site = run.sites[i]
    coverage = new[site.name].coverage
    axes = site.time_axes
    reached = coverage > 0
    per_unit = np.where(align_cells(reached, per_unit), per_unit, np.nan)
    units = per_unit.reshape((*per_unit.shape[:axes], -1))
    per_step = nan_reduce(np.nanmean, units, axis=-1)
    by_unit = nan_reduce(np.nanmax, units.reshape(-1, units.shape[-1]), axis=0)
    ranked = [u for u in np.argsort(-np.nan_to_num(by_unit, nan=-np.inf),
                                    kind="stable") if not np.isnan(by_unit[u])]
    unit_shape = per_unit.shape[axes:]
    worst_units = tuple(
        (tuple(int(k) for k in np.unravel_index(u, unit_shape)), float(by_unit[u]))
        for u in ranked[:worst]
    )
    peak = None
    if axes and not np.all(np.isnan(per_step)):
        flat = np.nan_to_num(per_step, nan=-np.inf)
        peak = tuple(int(k) for k in np.unravel_index(np.argmax(flat), flat.shape))
    return StatisticDrift(
        name=_layer_name(site.group) if kind == "divergence" else site.name,
        names=names, label=site.label, kind=kind, where=site.where, order=order,
        per_unit=per_unit, per_step=per_step,
        # NaN when a unit's drift is undefined (standardized, a single batch)
        mean=float(np.mean(units[reached])) if reached.any() else np.nan,
        max=float(np.max(units[reached])) if reached.any() else np.nan,
        worst=worst_units, peak_step=peak, coverage=coverage.copy(),
        n_batches=new[site.name].n_batches,
    )


def _layer_name(group: str) -> str:
    """The name a pair's record answers to: its group, less the ``@`` and 8
    hex digits that :func:`popstats.nn.batch_norm` and the recognizers add to
    keep each application's group apart (``"fc1@1a2b3c4d"`` -> ``"fc1"``);
    two records left with one name are told apart by their statistics'
    names (see :func:`drift`)."""
    stem, at, tail = group.rpartition("@")
    hexdigits = set("0123456789abcdef")
    return stem if at and stem and len(tail) == 8 and set(tail) <= hexdigits else group


def _pair_record(run, new, found, var_i, mean_i, worst, eps) -> StatisticDrift:
    var_site, mean_site = run.sites[var_i], run.sites[mean_i]
    cells = new[var_site.name].coverage.shape
    m0, s0 = aligned(found[mean_i], cells), aligned(found[var_i], cells)
    m1, s1 = new[mean_site.name].value, new[var_site.name].value
    if var_site.role == "std":
        s0, s1 = s0**2, s1**2
    per_unit = jeffreys(m0, s0 + eps, m1, s1 + eps)
    return _record(run, new, mean_i, min(var_i, mean_i), "divergence",
                   (mean_site.name, var_site.name), per_unit, worst)


def _single_record(run, new, found, first, second, i, worst) -> StatisticDrift:
    site = run.sites[i]
    stat = new[site.name]
    cells = stat.coverage.shape
    old = aligned(found[i], cells)
    mean = est.finalize(_MEAN, None, first)
    square = est.finalize(_MEAN, None, second)
    m = stat.coverage.astype(np.float64)
    bessel = np.where(m > 1, fm.bessel(fm.safe_counts(np, m)), np.nan)
    variance = np.maximum(square - mean**2, 0.0) * align_cells(bessel, mean)
    sd = np.sqrt(variance)
    diff = np.abs(stat.value - old)
    # 0 where nothing moved; inf where it moved but no batch varied; NaN
    # where one batch alone reached the cell (no spread to measure)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(diff == 0, 0.0, diff / sd)
    return _record(run, new, i, i, "standardized", (site.name,), z, worst)
