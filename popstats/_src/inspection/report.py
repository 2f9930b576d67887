"""A self-contained HTML report on population statistics.

Stage: inspection (:mod:`popstats._src.inspection`). Members:
:func:`find_warnings`, :func:`all_warnings` (the records of
:attr:`~popstats.PopulationStatistics.warnings`, then these),
:func:`summary_rows`, :func:`write_report`, :func:`render_report`,
:func:`upstream_text` (how the statistics were estimated),
:func:`stopping_lines` (why and when the pass stopped),
:func:`precision_note` (statistics without standard errors),
:func:`shift_rows` (a :func:`popstats.shift` measurement).
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Collection, Mapping

import numpy as np

from popstats._src.errors import PopstatsError
from popstats._src.estimation.statistics import Statistic
from popstats._src.estimation.stopping import REASONS, Stopping
from popstats._src.inspection.describe import shift_records
from popstats._src.inspection.precision import format_error, precisions
from popstats._src.inspection.tables import (
    escape_text,
    html_table,
    page_start,
    png_image,
    write_page,
    written_at,
)

__all__ = [
    "all_warnings",
    "find_warnings",
    "precision_note",
    "render_report",
    "shift_rows",
    "stopping_lines",
    "summary_rows",
    "upstream_text",
    "write_report",
]

#: A variance below this (a std below its square root) is reported as near zero.
NEAR_ZERO_VAR = 1e-8

SUMMARY_COLUMNS = ("name", "label", "role", "where", "shape", "steps", "batches",
                   "estimator", "min", "mean", "max", "rel. SE")


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def summary_rows(stats: Mapping[str, Statistic]) -> list[list[object]]:
    """One row per statistic, in :data:`SUMMARY_COLUMNS` order (``rel. SE``:
    the largest relative standard error over the statistic's units and its
    steps reached by at least ``min_batches`` batches, see
    :func:`~popstats._src.inspection.precision.precision_of`; ``-`` when
    not measured)."""
    rows: list[list[object]] = []
    precise = precisions(stats)
    for s in stats.values():
        finite = s.value[np.isfinite(s.value)]
        lo, mid, hi = ((_fmt(finite.min()), _fmt(finite.mean()), _fmt(finite.max()))
                       if finite.size else ("-", "-", "-"))
        p = precise[s.name]
        rows.append([s.name, s.label, s.site.role, s.site.where,
                     tuple(s.value.shape[s.depth:]), s.steps or "-", s.n_batches,
                     p.estimator, lo, mid, hi, format_error(p.relative_error)])
    return rows


def precision_note(stats: Mapping[str, Statistic]) -> str | None:
    """A sentence when some statistics have no standard error (a file saved
    by a popstats before standard errors), else None."""
    missing = [s.name for s in stats.values() if s.standard_error is None]
    if not missing:
        return None
    return (f"{len(missing)} statistic(s) have no standard error ("
            f"{', '.join(map(repr, missing[:4]))}{', ...' if len(missing) > 4 else ''}"
            f"): saved by a popstats that kept none, or read from a model's "
            f"running averages. Estimate them again to see their precision.")


def stopping_lines(stats: Mapping[str, Statistic]) -> list[str]:
    """Why and when the pass stopped (:attr:`~popstats.PopulationStatistics.
    stopping`), or how to make a pass stop at a target, one sentence each."""
    record = getattr(stats, "stopping", None)
    if record is None:
        return ["The pass took every batch it was given (no target_error). "
                "Pass target_error=0.01 (say) to estimate, get_inference_graph or "
                "Estimation to stop once every statistic's relative standard "
                "error is below it, and to record a convergence trace."]
    lines = [f"{record}.", f"Reason: {REASONS.get(record.reason, record.reason)} "
             f"(checked {len(record.trace)} time(s); steps reached by fewer "
             f"than {record.min_batches} batches are left out of the rule)."]
    for name in record.imprecise:
        left = record.left_out.get(name, 0)
        lines.append(f"{name!r}: " + (f"{left} step(s) reached by fewer than "
                                      f"{record.min_batches} batches, left out "
                                      f"of the rule (not shown to be precise)."
                                      if left else "no step counted."))
    return lines


def _stopping_rows(record: Stopping) -> list[list[object]]:
    return [[name, format_error(norm), record.left_out.get(name, 0),
             "yes" if not math.isnan(norm) and norm < record.target else "no"]
            for name, norm in record.norm.items()]


def all_warnings(stats: Mapping[str, Statistic]) -> list[str]:
    """Every warning on ``stats``, one sentence each: the messages of
    :attr:`~popstats.PopulationStatistics.warnings` (the records the pass
    made: bias, trend, coverage), then what :func:`find_warnings` finds
    that they do not say."""
    records = tuple(getattr(stats, "warnings", ()))
    covered = {w.statistic for w in records if w.kind == "coverage"}
    return [w.message for w in records] + find_warnings(stats, recorded=covered)


def find_warnings(stats: Mapping[str, Statistic], *,
                  recorded: Collection[str] = ()) -> list[str]:
    """Problems worth a look, one sentence each.

    Steps reached by under 10% of the batches (thin coverage), steps no
    batch reached (statistics no batch reached at all too: a file can hold
    them, though :func:`~popstats.estimate` refuses to make them),
    variances (role ``"var"``) below ``1e-8`` or standard deviations (role
    ``"std"``) below ``1e-4`` (normalizing by them blows values up),
    non-finite values, and an estimate from a single batch (no
    batch-to-batch spread to judge it by). The coverage of the statistics
    named in ``recorded`` is left out (a record of
    :attr:`~popstats.PopulationStatistics.warnings` says it).

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
        if s.thin_steps and s.name not in recorded:
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
    from popstats._src.inspection.plots import plot_convergence, plot_statistic

    parts = [
        *page_start(title),
        f"<p>{len(stats)} statistic(s); written {written_at()}.</p>",
        f"<p>{html.escape(upstream_text(stats))}</p>",
        "<h2>Summary</h2>", html_table(SUMMARY_COLUMNS, summary_rows(stats)),
        "<p>rel. SE: the largest relative standard error over a statistic's "
        "units and its steps reached by enough batches (a mean's against its "
        "paired spread); see docs/estimators.rst, \"Standard errors\".</p>",
    ]
    note = precision_note(stats)
    if note:
        parts.append(f"<p>{html.escape(note)}</p>")
    record = getattr(stats, "stopping", None)
    parts.append("<h2>Stopping</h2>")
    parts += [f"<p>{html.escape(line)}</p>" for line in stopping_lines(stats)]
    if record is not None:
        parts.append(html_table(("name", "norm at the end", "steps left out",
                                 "below the target"), _stopping_rows(record)))
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
    warnings = all_warnings(stats)
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
            if record is not None and record.trace and s.name in record.norm:
                parts.append(png_image(plot_convergence(record, s.name),
                                       f"convergence of {name}"))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(stats: Mapping[str, Statistic], path: str | os.PathLike, *,
                 title: str = "popstats report", plots: bool = True,
                 shift: object = None) -> str:
    """Write one self-contained HTML file about ``stats``; return its path.

    It holds the summary table (with each statistic's largest relative
    standard error), why and when the pass stopped (with ``target_error``),
    the coverage of statistics inside loops, warnings (see
    :func:`all_warnings`: :attr:`~popstats.PopulationStatistics.warnings`
    first) and, with ``plots``, a plot per statistic embedded as a PNG
    (needs matplotlib: ``pip install popstats[plot]``) and, for a pass with
    ``target_error``, its convergence (estimate and interval against the
    batches, see :func:`~popstats._src.inspection.plots.plot_convergence`);
    how the statistics were estimated (upstream batch statistics, or the
    passes of ``upstream="population"``) and, with ``shift`` (from
    :func:`popstats.shift`), the estimation shift per layer.

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
