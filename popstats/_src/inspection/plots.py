"""Plots of population statistics (matplotlib, an optional dependency).

Figures are made with :class:`matplotlib.figure.Figure` directly, not
through ``pyplot``: no global state, no window, any backend.

Stage: inspection (:mod:`popstats._src.inspection`). Members: :func:`plot`,
:func:`plot_statistic`, :func:`plot_convergence` (the trace of a pass with
``target_error``).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from popstats._src.errors import PopstatsError, check_int, describe_value
from popstats._src.estimation.statistics import Statistic
from popstats._src.estimation.stopping import Stopping
from popstats._src.inspection.tables import escape_text

__all__ = ["plot", "plot_convergence", "plot_statistic"]


def _figure(rows: int, what: str):
    from popstats._src.inspection.optional import require

    figure_module = require("matplotlib.figure", what)
    fig = figure_module.Figure(figsize=(6.4, 2.4 + 2.2 * rows), layout="constrained")
    return fig, fig.subplots(rows, 1, squeeze=False)[:, 0]


def _integer_ticks(*axes, both: bool = False) -> None:
    """Integer ticks on the step axes (x; y too with ``both``)."""
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if both:
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))


def _units(value: np.ndarray, axes: int) -> np.ndarray:
    """The value with its time axes first and one axis of units (maybe empty)."""
    return value.reshape(*value.shape[:axes], int(np.prod(value.shape[axes:])))


def _check_units(units: object, call: str) -> int:
    """``units`` as an int if it is a positive integer, else a PopstatsError."""
    return check_int(units, f"{call}(units=...)",
                     what="how many units to draw over time", fix="Pass e.g. units=8.")


def _title(ax, text: str) -> None:
    """Set a title as plain text (a ``$`` in a label is no math)."""
    ax.set_title(text, parse_math=False)


def _note(ax, text: str) -> None:
    """Write ``text`` in the middle of an empty panel (no ticks)."""
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center",
            wrap=True, color="tab:red", parse_math=False)
    ax.set_xticks([])
    ax.set_yticks([])


def _name(stat: Statistic) -> str:
    return escape_text(stat.name)


def _where(stat: Statistic) -> str:
    return escape_text(stat.site.where)


def _unit_shape(stat: Statistic) -> tuple[int, ...]:
    return tuple(stat.value.shape[stat.depth:])


def _no_units(stat: Statistic) -> str:
    return (f"no units to show: the statistic has shape {_unit_shape(stat)} "
            f"(no element)")


def _no_steps(stat: Statistic) -> str:
    return f"no steps to show: its time axes have lengths {stat.steps}"


def _histogram(ax, stat: Statistic) -> None:
    """Histogram of the finite values of a statistic outside loops."""
    values = stat.value.ravel()
    finite = values[np.isfinite(values)]
    title = f"{_name(stat)}: {values.size} values ({_where(stat)})"
    if finite.size < values.size:
        title += f", {values.size - finite.size} not finite"
    if not stat.coverage.any():
        title += "; no batch computed it"
    _title(ax, title)
    if values.size == 0:
        _note(ax, _no_units(stat))
        return
    if finite.size == 0:
        _note(ax, f"no finite value to show: all {values.size} are NaN or infinite")
        return
    ax.hist(finite, bins=min(30, finite.size), color="tab:blue")
    ax.set_xlabel("value")
    ax.set_ylabel("units")


def _over_time(ax, cov, stat: Statistic, units: int) -> None:
    """Up to ``units`` units over the steps of one loop, coverage underneath."""
    where = _where(stat)
    series = _units(stat.value, 1)
    steps = np.arange(series.shape[0])
    total = series.shape[1]
    if total == 0:
        _title(ax, f"{_name(stat)}: 0 units over time ({where})")
        _note(ax, _no_units(stat))
    elif steps.size == 0:
        _title(ax, f"{_name(stat)}: {total} units over time ({where})")
        _note(ax, _no_steps(stat))
    else:
        pick = np.unique(np.linspace(0, total - 1, min(units, total)).round()
                         .astype(int))
        for j in pick:
            ax.plot(steps, series[:, j], label=f"unit {j}")
        _title(ax, f"{_name(stat)}: {len(pick)} of {total} units over "
                   f"time ({where})")
        ax.set_xlabel("step")
        ax.set_ylabel("value")
        if len(pick) <= 10:  # beside the axes, never over the lines
            ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
        _integer_ticks(ax)
    _title(cov, "coverage: batches that reached each step")
    if steps.size == 0:
        _note(cov, _no_steps(stat))
        return
    cov.bar(steps, stat.coverage, color="tab:gray")
    cov.axhline(0.1 * stat.n_batches, color="tab:red", lw=1, ls="--",
                label="10% of batches")
    cov.set_xlabel("step")
    cov.set_ylabel("batches")
    cov.set_ylim(0, max(1, int(stat.coverage.max()), stat.n_batches) * 1.05)
    if not stat.coverage.any():
        _title(cov, f"coverage: no batch reached any of the {steps.size} steps")
    cov.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _integer_ticks(cov, both=True)  # whole batches


def _heat_maps(fig, ax, cov, stat: Statistic) -> None:
    """Mean over units and coverage over the first two time axes."""
    where = _where(stat)
    _title(ax, f"{_name(stat)}: mean over units ({where})")
    _title(cov, f"coverage (batches) ({where})")
    if 0 in stat.coverage.shape:
        _note(ax, _no_steps(stat))
        _note(cov, _no_steps(stat))
        return
    coverage = stat.coverage
    while coverage.ndim > 2:  # deeper loops: sum the inner time axes
        coverage = coverage.sum(axis=-1)
    # coverage colours from 0 batches (all-zero coverage too)
    panels = [(cov, coverage, {"vmin": 0, "vmax": max(1, int(coverage.max()))})]
    values = _units(stat.value, stat.depth)
    if values.shape[-1] == 0:
        _note(ax, _no_units(stat))
    else:
        mean = values.mean(axis=-1)
        while mean.ndim > 2:  # deeper loops: average the inner time axes too
            mean = mean.mean(axis=-1)
        panels.insert(0, (ax, mean, {}))
    for target, data, scale in panels:
        image = target.imshow(data, aspect="auto", origin="lower",
                              interpolation="nearest", **scale)
        fig.colorbar(image, ax=target)
        target.set_xlabel("inner step")
        target.set_ylabel("outer step")
        _integer_ticks(target, both=True)
    if not stat.coverage.any():
        _title(cov, f"coverage: no batch reached any of the "
                    f"{stat.coverage.size} steps ({where})")


def plot_statistic(stat: Statistic, *, units: int = 8):
    """A figure of one population statistic.

    Outside loops: a histogram of its values across units (elements).
    Per step of one loop: the values of up to ``units`` units over time,
    with the coverage (batches that reached each step) underneath. Per step
    of two or more loops: heat maps over the first two time axes of the
    mean over units and of the coverage.

    A statistic with nothing to draw in a panel (no units, e.g. of shape
    ``(0,)``; no steps; no finite value) gets a note saying so in that
    panel instead, so that a report on many statistics still renders.
    Non-finite values are left out of histograms (the title counts them).

    Parameters
    ----------
    stat : Statistic
        One entry of :class:`~popstats.PopulationStatistics`.
    units : int, default 8
        How many units to draw over time (evenly spaced).

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    PopstatsError
        If matplotlib is missing (``pip install 'popstats[plot]'``), or
        ``units`` is not a positive int.

    Examples
    --------
    >>> import numpy as np, pytensor.tensor as pt, popstats
    >>> x = pt.matrix("x")
    >>> y = x - popstats.bn_statistic(x.mean(axis=0), label="mean")
    >>> stats = popstats.estimate([x], y, [{"x": np.eye(3)}])
    >>> fig = stats.plot("mean")
    >>> fig.axes[0].get_title()
    'mean: 3 values (<graph>)'
    """
    if not isinstance(stat, Statistic):
        raise PopstatsError(
            f"plot_statistic(stat=...): expected a popstats Statistic, got "
            f"{describe_value(stat)}."
        )
    units = _check_units(units, "plot_statistic")
    if stat.depth == 0:
        fig, (ax,) = _figure(1, "plotting")
        _histogram(ax, stat)
        return fig
    fig, (ax, cov) = _figure(2, "plotting")
    if stat.depth == 1:
        _over_time(ax, cov, stat, units)
    else:
        _heat_maps(fig, ax, cov, stat)
    return fig


def plot(stats: Mapping[str, Statistic], name: str, *, units: int = 8):
    """:func:`plot_statistic` of ``stats[name]``, with a helpful unknown-name error.

    ``units`` is checked first, as ``PopulationStatistics.plot(units=...)``.
    """
    units = _check_units(units, "PopulationStatistics.plot")
    if name not in stats:
        from popstats._src.inspection.optional import unknown_label

        raise unknown_label(f"plot({name!r})", str(name), list(stats))
    return plot_statistic(stats[name], units=units)


#: the interval drawn around the estimate: about 95% for a normal error
INTERVAL_Z = 1.96


def convergence_points(stopping: Stopping, name: str) -> tuple[np.ndarray, ...]:
    """The trace of ``name`` in ``stopping``: batches, value, standard error
    and norm at each check (NaN where no cell of the statistic counted)."""
    trace = stopping.trace
    batches = np.array([c.n_batches for c in trace], dtype=np.int64)
    columns = [np.array([getattr(c, field).get(name, np.nan) for c in trace],
                        dtype=np.float64)
               for field in ("value", "standard_error", "norm")]
    return (batches, *columns)


def plot_convergence(stopping: Stopping, name: str):
    """A figure of how one statistic converged in a pass with ``target_error``.

    Top: the estimate (its value averaged over units and over the steps
    reached by at least ``min_batches`` batches) against the batches counted
    at each check of the pass, with the band ``value +/- 1.96 SE``, SE the
    standard error averaged likewise: the 95% interval of a typical unit
    (the average over units is more precise than that). Bottom: the norm
    (the largest relative standard error) against the batches, on a log
    scale, with the target; it may rise where a step starts to count.

    Examples
    --------
    >>> from popstats._src.estimation.stopping import StopCheck, Stopping
    >>> checks = tuple(StopCheck(n, {"v": 0.2 / n ** 0.5}, {"v": 1.0},
    ...                          {"v": 0.2 / n ** 0.5}) for n in (10, 11, 13))
    >>> record = Stopping("batches ended", 13, 0.01, 10, {"v": 0.055},
    ...                   {"v": 0}, checks)
    >>> fig = plot_convergence(record, "v")
    >>> [ax.get_xlabel() for ax in fig.axes]
    ['batches', 'batches']
    """
    batches, value, se, norm = convergence_points(stopping, name)
    fig, (top, bottom) = _figure(2, "plotting the convergence")
    shown = escape_text(name)
    if not np.isfinite(value).any():
        _note(top, f"{shown}: no check counted a cell of this statistic (every "
                   f"step reached by fewer than {stopping.min_batches} batches)")
        _note(bottom, "no norm measured")
        return fig
    top.plot(batches, value, marker=".", color="tab:blue", label="estimate")
    top.fill_between(batches, value - INTERVAL_Z * se, value + INTERVAL_Z * se,
                     color="tab:blue", alpha=0.25,
                     label="+/- 1.96 SE (a typical unit's 95% interval)")
    _title(top, f"{shown}: estimate, mean over units")
    top.set_xlabel("batches")
    top.legend(loc="best", fontsize="small")
    positive = np.isfinite(norm) & (norm > 0)
    bottom.plot(batches[positive], norm[positive], marker=".", color="tab:orange",
                label="largest relative SE")
    bottom.axhline(stopping.target, color="tab:green", linestyle="--",
                   label=f"target {stopping.target:g}")
    if positive.any():
        bottom.set_yscale("log")
    _title(bottom, f"{shown}: norm against the target ({stopping.reason})")
    bottom.set_xlabel("batches")
    bottom.legend(loc="best", fontsize="small")
    _integer_ticks(top, bottom)
    return fig
