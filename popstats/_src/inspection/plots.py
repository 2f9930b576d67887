"""Plots of population statistics (matplotlib, an optional dependency).

Figures are made with :class:`matplotlib.figure.Figure` directly, not
through ``pyplot``: no global state, no window, any backend.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from popstats._src.errors import PopstatsError, describe_value
from popstats._src.statistics import Statistic

__all__ = ["plot", "plot_statistic"]


def _figure(rows: int, what: str):
    from popstats._src.inspection import require

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
    """The value with its time axes first and one axis of units."""
    return value.reshape(*value.shape[:axes], -1)


def plot_statistic(stat: Statistic, *, units: int = 8):
    """A figure of one population statistic.

    Outside loops: a histogram of its values across units (elements).
    Per step of one loop: the values of up to ``units`` units over time,
    with the coverage (batches that reached each step) underneath. Per step
    of two or more loops: heat maps over the first two time axes of the
    mean over units and of the coverage.

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
        If matplotlib is missing (``pip install popstats[plot]``).

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
    if not isinstance(units, int) or isinstance(units, bool) or units < 1:
        raise PopstatsError(
            f"plot(units=...): expected a positive int, got {describe_value(units)}."
        )
    axes = stat.depth
    where = stat.site.where
    if axes == 0:
        fig, (ax,) = _figure(1, "plotting")
        values = stat.value.ravel()
        ax.hist(values, bins=min(30, max(1, values.size)), color="tab:blue")
        ax.set_title(f"{stat.name}: {values.size} values ({where})")
        ax.set_xlabel("value")
        ax.set_ylabel("units")
        return fig
    if axes == 1:
        fig, (ax, cov) = _figure(2, "plotting")
        series = _units(stat.value, 1)
        pick = np.unique(np.linspace(0, series.shape[1] - 1, units).round().astype(int))
        steps = np.arange(series.shape[0])
        for j in pick:
            ax.plot(steps, series[:, j], label=f"unit {j}")
        ax.set_title(f"{stat.name}: {len(pick)} of {series.shape[1]} units over "
                     f"time ({where})")
        ax.set_ylabel("value")
        if len(pick) <= 10:
            ax.legend(fontsize="small", ncols=2)
        cov.bar(steps, stat.coverage, color="tab:gray")
        cov.axhline(0.1 * stat.n_batches, color="tab:red", lw=1, ls="--",
                    label="10% of batches")
        cov.set_xlabel("step")
        cov.set_ylabel("batches")
        cov.set_title("coverage")
        cov.legend(fontsize="small")
        _integer_ticks(ax, cov)
        return fig
    fig, (ax, cov) = _figure(2, "plotting")
    mean = _units(stat.value, 2).mean(axis=-1)
    while mean.ndim > 2:  # deeper loops: average the inner time axes too
        mean = mean.mean(axis=-1)
    coverage = stat.coverage
    while coverage.ndim > 2:
        coverage = coverage.sum(axis=-1)
    for target, data, title in ((ax, mean, f"{stat.name}: mean over units"),
                                (cov, coverage, "coverage (batches)")):
        image = target.imshow(data, aspect="auto", origin="lower",
                              interpolation="nearest")
        fig.colorbar(image, ax=target)
        target.set_title(f"{title} ({where})")
        target.set_xlabel("inner step")
        target.set_ylabel("outer step")
    _integer_ticks(ax, cov, both=True)
    return fig


def plot(stats: Mapping[str, Statistic], name: str, *, units: int = 8):
    """:func:`plot_statistic` of ``stats[name]``, with a helpful unknown-name error."""
    if name not in stats:
        from popstats._src.inspection import unknown_label

        raise unknown_label(f"plot({name!r})", str(name), list(stats))
    return plot_statistic(stats[name], units=units)
