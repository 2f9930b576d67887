"""Inspection: describe, draw, plot and report on population statistics.

Everything here is read-only: it looks at graphs and estimates, never
changes them. Drawing needs the ``graphviz`` package (``pip install
popstats[draw]``), plots and reports need matplotlib (``popstats[plot]``).
"""

from __future__ import annotations

import importlib
import logging
from types import ModuleType

from popstats._src.errors import PopstatsError

log = logging.getLogger("popstats")

_EXTRAS = {"matplotlib": "plot", "graphviz": "draw", "tqdm": "progress"}


def require(module: str, what: str) -> ModuleType:
    """Import an optional dependency, or raise a PopstatsError naming its extra."""
    try:
        return importlib.import_module(module)
    except ImportError:
        top = module.split(".")[0]
        extra = _EXTRAS.get(top, top)
        raise PopstatsError(
            f"{what} needs the optional package {top!r}, which is not "
            f"installed. Install it with `pip install popstats[{extra}]`."
        ) from None


def unknown_label(call: str, name: str, known: list[str]) -> PopstatsError:
    """The error for a statistic name that does not exist, with suggestions."""
    import difflib

    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    return PopstatsError(
        f"{call}: no statistic named {name!r}.{hint} Known: {sorted(known)}."
    )


from popstats._src.inspection.describe import (  # noqa: E402
    Description,
    RewriteDescription,
    StatisticRecord,
    describe,
    describe_rewrite,
)
from popstats._src.inspection.drawing import draw, draw_rewrite, render  # noqa: E402

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
