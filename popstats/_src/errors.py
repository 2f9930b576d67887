"""The one exception family of popstats."""

from __future__ import annotations

__all__ = ["PopstatsError"]


class PopstatsError(ValueError):
    """Raised for every input popstats cannot work with.

    Messages name the call, the argument, what was received, what is allowed
    and how to fix it. Being a ``ValueError``, it can be caught as one.
    """


def describe_value(value: object, limit: int = 60) -> str:
    """A short ``repr`` of ``value`` for error messages."""
    text = " ".join(repr(value).split())  # one line, whatever the repr
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{text} ({type(value).__name__})"
