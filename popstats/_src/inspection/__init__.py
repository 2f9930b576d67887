"""Inspection: describe, draw, plot and report on population statistics.

Everything here is read-only: it looks at graphs and estimates, never
changes them. Drawing needs the ``graphviz`` package (``pip install
popstats[draw]``), plots and reports need matplotlib (``popstats[plot]``).

- :mod:`~popstats._src.inspection.describe` -- :func:`describe`,
  :func:`describe_rewrite` (tables of a graph's statistics, of a rewrite);
- :mod:`~popstats._src.inspection.drawing` -- :func:`draw`, :func:`draw_rewrite`;
- :mod:`~popstats._src.inspection.plots`, :mod:`~popstats._src.inspection.report`
  -- figures and HTML reports of :class:`~popstats.PopulationStatistics`
  (registered here as its ``plot`` and ``report`` methods);
- :mod:`~popstats._src.inspection.cli` -- the ``popstats`` command;
- :mod:`~popstats._src.inspection.optional` -- optional packages, unknown names.

Re-exported: :obj:`Description`, :obj:`RewriteDescription`,
:obj:`StatisticRecord`, :obj:`describe`, :obj:`describe_rewrite`, :obj:`draw`,
:obj:`draw_rewrite`, :obj:`render`, :obj:`require`, :obj:`unknown_label`.
"""

from __future__ import annotations

from popstats._src.estimation.statistics import register_view
from popstats._src.inspection.describe import (
    Description,
    RewriteDescription,
    StatisticRecord,
    describe,
    describe_rewrite,
)
from popstats._src.inspection.drawing import draw, draw_rewrite, render
from popstats._src.inspection.optional import require, unknown_label
from popstats._src.inspection.plots import plot
from popstats._src.inspection.report import write_report

register_view("plot", plot)
register_view("report", write_report)

__all__ = [
    "Description",
    "RewriteDescription",
    "StatisticRecord",
    "describe",
    "describe_rewrite",
    "draw",
    "draw_rewrite",
    "render",
    "require",
    "unknown_label",
]
