"""Checks of the options an estimation pass is built with."""

from __future__ import annotations

import numpy as np
import pytensor

from popstats._src.errors import PopstatsError, describe_value

__all__ = ["check_max_steps", "check_mode"]


def check_max_steps(max_steps: object, call: str) -> int | None:
    """``max_steps`` as an int or None, or a PopstatsError."""
    if max_steps is None:
        return None
    if (isinstance(max_steps, bool | np.bool_)
            or not isinstance(max_steps, int | np.integer) or max_steps < 1):
        raise PopstatsError(
            f"{call}(max_steps=...): expected a positive int or None, got "
            f"{describe_value(max_steps)}."
        )
    return int(max_steps)


def check_mode(mode: object, call: str) -> None:
    """Raise a PopstatsError for a mode PyTensor does not know."""
    try:
        if not isinstance(mode, str | pytensor.compile.Mode | None):
            raise TypeError("a mode is a name, a Mode or None")
        pytensor.compile.mode.get_mode(mode)
    except (ValueError, TypeError, KeyError) as exc:
        raise PopstatsError(
            f"{call}(mode=...): PyTensor does not know the mode "
            f"{describe_value(mode)} ({exc}). Use None (the default), "
            f"'FAST_COMPILE', 'CVM', 'NUMBA', 'JAX', 'PYTORCH' or a Mode."
        ) from exc
