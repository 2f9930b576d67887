"""The progress bar of an estimation pass (``tqdm``, an optional dependency).

Stage: estimation (:mod:`popstats._src.estimation`). Members:
:func:`check_progress`, :func:`progress_bar`.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Iterator, Sized
from typing import Any

from popstats._src.errors import PopstatsError, describe_value, install_hint

__all__ = ["check_progress", "progress_bar"]

log = logging.getLogger("popstats")
_missing_logged = False


def check_progress(progress: object, call: str) -> bool:
    """Whether to show a bar: ``True``, ``False`` or ``"auto"`` (stderr is a tty)."""
    if progress == "auto" and isinstance(progress, str):
        stream = sys.stderr
        isatty = getattr(stream, "isatty", None)
        return bool(isatty is not None and isatty())
    if isinstance(progress, bool):
        return progress
    raise PopstatsError(
        f"{call}(progress=...): expected True, False or 'auto', got "
        f"{describe_value(progress)}."
    )


def progress_bar(items: Iterable[Any], total_of: object, enabled: bool,
                 start: int = 0, unit: str = "batch") -> Iterator[Any]:
    """Yield ``items``, showing a tqdm bar (batches, rate, time left) if enabled.

    ``total_of`` is the user's iterable: its ``len`` (when it has one) gives
    the bar a total, hence a time left. ``unit`` names what an item is.
    Without tqdm there is no bar; that is logged once, at debug level.
    """
    global _missing_logged
    if not enabled:
        yield from items
        return
    try:
        from tqdm import tqdm
    except ImportError:
        if not _missing_logged:
            log.debug("no progress bar: tqdm is not installed. %s",
                      install_hint("tqdm", "progress"))
            _missing_logged = True
        yield from items
        return
    total = len(total_of) if isinstance(total_of, Sized) else None
    with tqdm(total=total, initial=start, unit=unit, desc="popstats",
              file=sys.stderr, dynamic_ncols=True) as bar:
        for item in items:
            yield item
            bar.update(1)
