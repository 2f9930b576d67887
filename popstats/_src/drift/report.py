"""The drift report: a table and plots of :class:`~popstats.Drift` in HTML.

Two figures: bars of the mean (and max) drift per layer in graph order, so
the first layers that moved stand out; and, for statistics inside loops, a
heat map of the mean drift per step (columns) and layer (rows), showing the
steps where it grows. Made with :class:`matplotlib.figure.Figure`, without
``pyplot``.

Stage: drift (:mod:`popstats._src.drift`). Members: :func:`plot_drift`,
:func:`write_drift_report`.
"""

from __future__ import annotations

import html
import os
import warnings
from typing import Any

import numpy as np

from popstats._src.inspection.tables import (
    escape_text,
    html_table,
    page_start,
    png_image,
    write_page,
    written_at,
)

__all__ = ["plot_drift", "write_drift_report"]


def plot_drift(drift: Any):
    """A figure: per-layer bars (graph order) and, if any statistic is in a
    loop, a step-by-layer heat map of the mean drift (the innermost time
    axis; outer axes averaged)."""
    from popstats._src.inspection.optional import require

    figure_module = require("matplotlib.figure", "Drift.report")
    records = list(drift.values())
    looped = [r for r in records if r.per_step.ndim]
    rows = 2 if looped else 1
    fig = figure_module.Figure(figsize=(7.0, 1.5 + 0.32 * len(records) * rows + 1.5),
                               layout="constrained")
    axes = fig.subplots(rows, 1, squeeze=False)[:, 0]
    names = [escape_text(r.name) for r in records]
    where = np.arange(len(records))
    means = [np.nan_to_num(r.mean, nan=0.0, posinf=0.0) for r in records]
    maxes = [np.nan_to_num(r.max, nan=0.0, posinf=0.0) for r in records]
    ax = axes[0]
    ax.barh(where, maxes, color="#f4b183", label="max over units and steps")
    ax.barh(where, means, color="#c55a11", label="mean")
    ax.set_yticks(where, names)
    ax.invert_yaxis()  # first layer on top
    label = "drift (divergence or standardized difference)"
    positive = [m for m in (*means, *maxes) if m > 0]
    if positive and max(positive) > 100 * min(positive):
        # spans orders of magnitude: linear bars would hide the small ones
        ax.set_xscale("log")  # bars start at the left edge (0 is clipped)
        ax.set_xlim(left=min(positive) / 3)
        label += ", log scale"
    for y, m in zip(where, means, strict=True):  # each layer's mean, readable
        ax.annotate(f"{m:.3g}", (m, y), xytext=(3, 0), textcoords="offset points",
                    va="center", fontsize="x-small")
    ax.set_xlabel(label)
    ax.set_title("Drift per layer, in graph order", parse_math=False)
    ax.legend(loc="lower right", fontsize="small")
    if looped:
        ax = axes[1]
        width = max(r.per_step.shape[-1] for r in looped)
        grid = np.full((len(looped), width), np.nan)
        for k, r in enumerate(looped):
            steps = r.per_step.reshape(-1, r.per_step.shape[-1])
            with warnings.catch_warnings():  # a step no batch reached: NaN
                warnings.simplefilter("ignore", RuntimeWarning)
                row = np.nanmean(steps, axis=0)
            grid[k, : row.size] = row
        image = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", cmap="viridis",
                          interpolation="nearest")
        ax.set_yticks(np.arange(len(looped)), [escape_text(r.name) for r in looped])
        ax.set_xlabel("time step (innermost loop)")
        ax.set_title("Mean drift per step and layer (blank: not reached)",
                     parse_math=False)
        fig.colorbar(image, ax=ax, label="drift")
    return fig


def render_drift_report(drift: Any, title: str) -> str:
    records = drift.sorted()
    first = drift.first_moved(0.0)
    parts = [
        *page_start(title),
        f"<p>{len(records)} layer(s) or statistic(s) compared over "
        f"{max((r.n_batches for r in records), default=0)} new batches; written "
        f"{written_at()}.</p>",
        "<p>Divergence: symmetric KL divergence of the population's and the new "
        "data's normal distributions, per unit (0: no change; a shift of d "
        "standard deviations gives about d&sup2;). Standardized: |new - "
        "population| / the batch-to-batch standard deviation on the new data."
        "</p>",
    ]
    if first is not None:
        parts.append(f"<p>First in the graph to move: <b>"
                     f"{html.escape(escape_text(first.name))}</b> (mean drift "
                     f"{first.mean:.4g}).</p>")
    parts += ["<h2>Drift, largest first</h2>",
              html_table(drift.columns, drift._rows()), "<h2>Plots</h2>",
              png_image(plot_drift(drift), "drift per layer"), "</body></html>"]
    return "\n".join(parts)


def write_drift_report(drift: Any, path: str | os.PathLike, title: str) -> str:
    """Write the drift report to ``path`` (HTML, plots embedded)."""
    from popstats._src.estimation.persistence import check_target
    from popstats._src.inspection.optional import require

    path = check_target(path, "Drift.report(path=...)", "drift.html")
    require("matplotlib", "Drift.report")
    return write_page(path, render_drift_report(drift, title), "Drift.report")
