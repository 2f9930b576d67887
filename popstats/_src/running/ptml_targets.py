"""pytensor-ml's running statistics as targets of :func:`update_running_stats`.

Stage: running (below ``nn``; never imports pytensor_ml). The recognizer
(:mod:`popstats._src.graph.pytensor_ml`) records, while a graph is exported,
every application of a pytensor-ml batch norm by the group of its statistics,
with the shared variables its running mean and variance come from (update chain
of a reused layer and loops followed out).

One running pair may serve several applications (a layer applied twice)
and, inside a ``Recurrent`` cell, every time step: its statistics are
estimated pooled over the steps (``time="pooled"`` for those labels unless
the caller chose ``time``), and the applications of one pair are pooled
with weights of elements reduced over (batches that reached it times the
static spatial size), the between-application spread included.

Members: :class:`Target`, :func:`check_applications`,
:func:`check_consistent`, :func:`pooled_time`,
:func:`targets`.
"""

from __future__ import annotations

import glob
from collections.abc import Iterable, Mapping, Sequence
from typing import cast

import numpy as np
from pytensor.compile.sharedvalue import SharedVariable
from pytensor.graph.basic import Variable

from popstats._src.errors import PopstatsError
from popstats._src.estimation.statistics import PopulationStatistics, Statistic
from popstats._src.export.sites import Site
from popstats._src.graph.pytensor_ml import Application

__all__ = ["Target", "check_applications", "check_consistent", "pooled_time",
           "targets"]

CALL = "update_running_stats"


class Target:
    """One shared variable to write, the statistics it gets and their weights."""

    def __init__(self, variable: SharedVariable, role: str, source: str,
                 stats: Sequence[Statistic], value: np.ndarray,
                 weights: Iterable[float]):
        self.variable = variable
        self.role = role
        self.source = source
        self.stats = tuple(stats)
        self.value = value
        self.weights = tuple(float(w) for w in weights)


def check_applications(sites: Sequence[Site], found: Mapping[str, Application]) -> None:
    """Refuse layers without running statistics, or whose variables are unsure."""
    for site in sites:
        app = found.get(site.group or "")
        if app is None:
            continue
        if app.running is None:
            raise PopstatsError(
                f"{CALL}(outputs=...): the pytensor-ml BatchNorm {app.layer!r} "
                f"(statistic {site.name!r}) has no running statistics "
                f"(track_running_stats=False, a NoRunningStatsBatchNormLayer): "
                f"there is no variable to write its population statistics into, "
                f"and pytensor-ml normalizes it with each batch's own statistics "
                f"at prediction too. Use popstats.get_inference_graph or "
                f"popstats.rewrite, which give it population statistics in the "
                f"graph, or build the layer with track_running_stats=True."
            )
        unsure = [v for v in app.running if not isinstance(v, SharedVariable)]
        if unsure:
            raise PopstatsError(
                f"{CALL}(outputs=...): the running statistics of the pytensor-ml "
                f"BatchNorm {app.layer!r} (statistic {site.name!r}) are not "
                f"shared variables but {unsure[0]} (computed in the graph), so "
                f"popstats cannot be sure which variable holds them. Apply the "
                f"layer as BatchNorm(...)(x) (it reads its own running_mean and "
                f"running_var), or use popstats.rewrite."
            )


def check_consistent(found: Mapping[str, Application]) -> None:
    """Refuse ``upstream="population"`` where one running pair serves
    several applications of a layer: the statistics would be consistent
    with an inference graph giving each application its own values, while
    pytensor-ml's prediction gives them all the pooled pair."""
    users: dict[tuple[int, int], list[Application]] = {}
    for app in found.values():
        if app.running is not None:
            users.setdefault((id(app.running[0]), id(app.running[1])), []).append(app)
    for apps in users.values():
        if len(apps) > 1:
            raise PopstatsError(
                f"{CALL}(upstream='population'): the pytensor-ml BatchNorm "
                f"{apps[0].layer!r} is applied {len(apps)} times with one running "
                f"pair, which gets the pool of its applications' statistics; "
                f"each application's statistics would be estimated downstream of "
                f"the others' own values, not of the pool pytensor-ml predicts "
                f"with, so they would not be consistent. Use "
                f"popstats.get_inference_graph(..., upstream='population') (each "
                f"application its own values), or upstream='batch' here."
            )


def pooled_time(sites: Sequence[Site], found: Mapping[str, Application]) -> object:
    """``time`` with every pytensor-ml statistic inside a loop pooled over steps."""
    labels = sorted({s.label for s in sites
                     if s.time_axes and (s.group or "") in found})
    if not labels:
        return "step"
    return {glob.escape(label): "pooled" for label in labels} | {"*": "step"}


def _held_shape(variable: Variable) -> tuple[int, ...]:
    """The shape of a running variable (shared: check_applications said)."""
    return cast(SharedVariable, variable).get_value(borrow=True).shape


def _pool(pairs: list[tuple[Statistic, Statistic]], weights: np.ndarray):
    w = weights / weights.sum()
    means = np.stack([np.asarray(m.value, np.float64) for m, _ in pairs])
    variances = np.stack([np.asarray(v.value, np.float64) for _, v in pairs])
    shape = (-1,) + (1,) * (means.ndim - 1)
    mean = (w.reshape(shape) * means).sum(0)
    spread = variances + (means - mean) ** 2
    return mean, (w.reshape(shape) * spread).sum(0)


def targets(stats: PopulationStatistics, found: Mapping[str, Application],
            claimed: set[str]) -> list[Target]:
    """The running variables of the pytensor-ml layers behind ``stats``."""
    by_pair: dict[tuple[int, int], list] = {}
    for group, app in found.items():
        members = {s.site.role: s for s in stats.values() if s.site.group == group}
        if not members:
            continue
        mean, var = members.get("mean"), members.get("var")
        if app.running is None or mean is None or var is None:
            continue  # not written: reported with the unclaimed statistics
        for stat in (mean, var):
            if stat.depth:
                raise PopstatsError(
                    f"{CALL}(time=...): statistic {stat.name!r} of the pytensor-ml "
                    f"BatchNorm {app.layer!r} was estimated per time step (value "
                    f"of shape {stat.value.shape}), but the layer has one running "
                    f"pair ({app.running[0].name!r}, shape "
                    f"{_held_shape(app.running[0])}) for all steps. Leave "
                    f"time unset (those statistics are then pooled over the "
                    f"steps), pass time='pooled', or keep per-step statistics "
                    f"with popstats.rewrite."
                )
        key = (id(app.running[0]), id(app.running[1]))
        weight = int(mean.n_batches) * (app.elements or 1)
        by_pair.setdefault(key, []).append((app, mean, var, weight))
        claimed.update((mean.name, var.name))
    out = []
    for pooled in by_pair.values():
        app = pooled[0][0]
        pairs = [(m, v) for _, m, v, _ in pooled]
        weights = np.array([w for *_, w in pooled], np.float64)
        mean, var = _pool(pairs, weights)
        for variable, value, role, chosen in zip(
            app.running, (mean, var), ("mean", "var"), zip(*pairs, strict=True),
            strict=True,
        ):
            out.append(Target(variable, role, "pytensor-ml", chosen, value, weights))
    return out
