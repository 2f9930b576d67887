"""Helpers of the inspection modules: optional packages, unknown names.

Stage: inspection (:mod:`popstats._src.inspection`).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from popstats._src.errors import PopstatsError, install_hint

_EXTRAS = {"matplotlib": "plot", "graphviz": "draw", "tqdm": "progress"}


def require(module: str, what: str, instead: str = "") -> ModuleType:
    """Import an optional dependency, or raise a PopstatsError naming its
    extra (and ``instead``, a way to go on without it, if given)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        top = module.split(".")[0]
        extra = _EXTRAS.get(top, top)
        raise PopstatsError(
            f"{what} needs the optional package {top!r}, which is not "
            f"installed. {install_hint(top, extra)}{instead}"
        ) from None


def unknown_label(call: str, name: str, known: list[str]) -> PopstatsError:
    """The error for a statistic name that does not exist, with suggestions."""
    import difflib

    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    return PopstatsError(
        f"{call}: no statistic named {name!r}.{hint} Known: {sorted(known)}."
    )
