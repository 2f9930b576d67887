"""A self-contained HTML report on population statistics.

Stage: inspection (:mod:`popstats._src.inspection`). Members:
:func:`find_warnings`, :func:`summary_rows`, :func:`write_report`,
:func:`render_report`, :func:`upstream_text` (how the statistics were
estimated), :func:`shift_rows` (a :func:`popstats.shift` measurement).
"""

from __future__ import annotations

import html
import os
from collections.abc import Mapping

import numpy as np

from popstats._src.errors import PopstatsError
from popstats._src.estimation.statistics import Statistic
from popstats._src.inspection.describe import shift_records
from popstats._src.inspection.tables import (
    escape_text,
    html_table,
    page_start,
    png_image,
    write_page,
    written_at,
)

__all__ = [
    "find_warnings",
    "render_report",
    "shift_rows",
    "summary_rows",
    "upstream_text",
    "write_report",
]

#: A variance below this (a std below its square root) is reported as near zero.
NEAR_ZERO_VAR = 1e-8

SUMMARY_COLUMNS = ("name", "label", "role", "where", "shape", "steps", "batches",
                   "estimator", "min", "mean", "max")



def _fmt(x: float) -> str:
    return f"{x:.4g}"


def summary_rows(stats: Mapping[str, Statistic]) -> list[list[object]]:
    """One row per statistic, in :data:`SUMMARY_COLUMNS` order."""
    rows: list[list[object]] = []
    for s in stats.values():
        finite = s.value[np.isfinite(s.value)]
        lo, mid, hi = ((_fmt(finite.min()), _fmt(finite.mean()), _fmt(finite.max()))
                       if finite.size else ("-", "-", "-"))
        rows.append([s.name, s.label, s.site.role, s.site.where,
                     tuple(s.value.shape[s.depth:]), s.steps or "-", s.n_batches,
                     s.estimator.name, lo, mid, hi])
    return rows


def find_warnings(stats: Mapping[str, Statistic]) -> list[str]:
    """Problems worth a look, one sentence each.

    Steps reached by under 10% of the batches (thin coverage), steps no
    batch reached (statistics no batch reached at all too: a file can hold
    them, though :func:`~popstats.estimate` refuses to make them),
    variances (role ``"var"``) below ``1e-8`` or standard deviations (role
    ``"std"``) below ``1e-4`` (normalizing by them blows values up),
    non-finite values, and an estimate from a single batch (no
    batch-to-batch spread to judge it by).

    Examples
    --------
    >>> import numpy as np, pytensor.tensor as pt, popstats
    >>> from popstats._src.inspection.report import find_warnings
    >>> x = pt.matrix("x")
    >>> v = popstats.bn_statistic(x.var(axis=0), label="v", role="var")
    >>> stats = popstats.estimate([x], x / v, [{"x": np.ones((3, 2))}] * 2)
    >>> find_warnings(stats)
    ["'v' (in <graph>): 2 of 2 variance values are near zero (< 1e-08)."]
    """
    found = []
    for s in stats.values():
        at = f"{s.name!r} (in {escape_text(s.site.where)})"
        if s.n_batches == 1:
            found.append(f"{at}: estimated from 1 batch, so there is no "
                         f"batch-to-batch spread to judge it by; estimate over "
                         f"more batches.")
        if s.thin_steps:
            found.append(f"{at}: {s.thin_steps} step(s) reached by under 10% of "
                         f"the {s.n_batches} batches (thin coverage).")
        if s.depth == 0 and s.uncovered_steps:
            found.append(f"{at}: no batch computed it (coverage 0); its values "
                         f"were not estimated from any batch.")
        elif s.uncovered_steps and s.uncovered_steps == s.coverage.size:
            found.append(f"{at}: all {s.uncovered_steps} step(s) never reached (no "
                         f"batch reached any); its values were not estimated "
                         f"from any batch.")
        elif s.uncovered_steps:
            found.append(f"{at}: {s.uncovered_steps} step(s) never reached "
                         f"(filled from earlier steps).")
        bad = int((~np.isfinite(s.value)).sum())
        if bad:
            found.append(f"{at}: {bad} non-finite value(s).")
        if s.site.role in ("var", "std"):
            limit = NEAR_ZERO_VAR if s.site.role == "var" else NEAR_ZERO_VAR**0.5
            small = int((np.abs(s.value[np.isfinite(s.value)]) < limit).sum())
            if small:
                kind = "variance" if s.site.role == "var" else "std"
                found.append(f"{at}: {small} of {s.value.size} {kind} values are "
                             f"near zero (< {limit:g}).")
    return found


def _coverage_rows(stats: Mapping[str, Statistic]) -> list[list[object]]:
    rows = []
    for s in stats.values():
        if s.depth == 0:
            continue
        reached = s.coverage[s.coverage > 0]
        rows.append([s.name, s.steps, s.n_batches,
                     int(reached.min()) if reached.size else "-",
                     int(reached.max()) if reached.size else "-",
                     s.thin_steps, s.uncovered_steps])
    return rows


def upstream_text(stats: Mapping[str, Statistic]) -> str:
    """How the statistics' upstream layers normalized while they were
    estimated, in one sentence."""
    modes = sorted({s.upstream for s in stats.values()})
    record = getattr(stats, "fixed_point", None)
    if modes == ["population"] and record is not None:
        return (f"Estimated on the inference graph (upstream='population'): "
                f"{record}.")
    if modes == ["batch"]:
        return ("Estimated on the training graph (upstream='batch'): layers "
                "upstream of each statistic normalized with batch statistics.")
    return f"Upstream layers normalized with: {', '.join(modes)}."


def shift_rows(shift: object, stats: Mapping[str, Statistic]) -> list[list[object]]:
    """One row per layer of a :func:`popstats.shift` measurement."""
    records = shift_records(shift, "PopulationStatistics.report(shift=...)")
    foreign = [n for r in records for n in r.names if n not in stats]
    if foreign:
        raise PopstatsError(
            f"PopulationStatistics.report(shift=...): the measurement holds "
            f"statistics these statistics do not ({foreign[:6]}): it was made "
            f"for another graph or other statistics. Pass popstats.shift(stats, "
            f"...) of these statistics."
        )
    return [[r.name, ", ".join(r.names), r.kind, _fmt(r.mean), _fmt(r.max),
             "-" if r.peak_step is None else r.peak_step] for r in records]


def render_report(stats: Mapping[str, Statistic], *, title: str = "popstats report",
                  plots: bool = True, shift: object = None) -> str:
    """The HTML text of the report (see :func:`write_report`)."""
    from popstats._src.inspection.plots import plot_statistic

    parts = [
        *page_start(title),
        f"<p>{len(stats)} statistic(s); written {written_at()}.</p>",
        f"<p>{html.escape(upstream_text(stats))}</p>",
        "<h2>Summary</h2>", html_table(SUMMARY_COLUMNS, summary_rows(stats)),
    ]
    if shift is not None:
        parts += ["<h2>Estimation shift</h2>",
                  "<p>Per layer, the divergence of the population values from "
                  "the moments of the layer's input in the inference graph "
                  "(popstats.shift; 0: the layer normalizes its inference-time "
                  "input).</p>",
                  html_table(("layer", "statistics", "kind", "mean", "max",
                              "peak step"), shift_rows(shift, stats))]
    parts.append("<h2>Coverage</h2>")
    coverage = _coverage_rows(stats)
    if coverage:
        parts.append(html_table(("name", "steps", "batches", "fewest batches at a "
                                 "reached step", "most", "thin steps",
                                 "never reached"), coverage))
    else:
        parts.append("<p>No statistic inside a loop: every batch covers every "
                     "statistic.</p>")
    parts.append("<h2>Warnings</h2>")
    warnings = find_warnings(stats)
    if warnings:
        parts.append("<ul>" + "".join(f'<li class="warning">{html.escape(w)}</li>'
                                      for w in warnings) + "</ul>")
    else:
        parts.append("<p>No warnings.</p>")
    if plots:
        parts.append("<h2>Plots</h2>")
        for s in stats.values():
            name = html.escape(escape_text(s.name))
            parts.append(f"<h3>{name}</h3>"
                         + png_image(plot_statistic(s), f"plot of {name}"))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(stats: Mapping[str, Statistic], path: str | os.PathLike, *,
                 title: str = "popstats report", plots: bool = True,
                 shift: object = None) -> str:
    """Write one self-contained HTML file about ``stats``; return its path.

    It holds the summary table, the coverage of statistics inside loops,
    warnings (see :func:`find_warnings`) and, with ``plots``, a plot per
    statistic embedded as a PNG (needs matplotlib: ``pip install
    popstats[plot]``); how the statistics were estimated (upstream batch
    statistics, or the passes of ``upstream="population"``) and, with
    ``shift`` (from :func:`popstats.shift`), the estimation shift per layer.

    Examples
    --------
    >>> import os, tempfile, numpy as np, pytensor.tensor as pt, popstats
    >>> x = pt.matrix("x")
    >>> y = x - popstats.bn_statistic(x.mean(axis=0), label="mean")
    >>> stats = popstats.estimate([x], y, [{"x": np.eye(3)}])
    >>> path = stats.report(os.path.join(tempfile.mkdtemp(), "r.html"), plots=False)
    >>> with open(path) as f:
    ...     "<h2>Summary</h2>" in f.read()
    True
    """
    from popstats._src.estimation.persistence import check_target

    path = check_target(path, "report(path=...)", "report.html")
    if plots:
        from popstats._src.inspection.optional import require

        require("matplotlib", "report(plots=True)",
                " Or pass plots=False for a report of tables only.")
    page = render_report(stats, title=title, plots=plots, shift=shift)
    return write_page(path, page, "report")
