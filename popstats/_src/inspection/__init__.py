"""Inspection: describe, draw, plot and report on population statistics.

Everything here is read-only: it looks at graphs and estimates, never
changes them. Drawing needs the ``graphviz`` package (``pip install
popstats[draw]``), plots and reports need matplotlib (``popstats[plot]``).
"""

from __future__ import annotations

from popstats._src.inspection.describe import (
    Description,
    RewriteDescription,
    StatisticRecord,
    describe,
    describe_rewrite,
)
from popstats._src.inspection.drawing import draw, draw_rewrite, render
from popstats._src.inspection.optional import require, unknown_label

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
