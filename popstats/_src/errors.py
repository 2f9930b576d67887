"""The one exception family of popstats.

Stage: base (below every stage folder). Members: :class:`PopstatsError`,
:class:`PopstatsWarning`, :func:`check_bool`, :func:`check_choice`,
:func:`describe_value`, :func:`install_hint`.
"""

from __future__ import annotations

import numpy as np

__all__ = ["PopstatsError", "PopstatsWarning", "check_bool", "check_choice",
           "describe_value", "install_hint"]


class PopstatsError(ValueError):
    """Raised for every input popstats cannot work with.

    Messages name the call, the argument, what was received, what is allowed
    and how to fix it. Being a ``ValueError``, it can be caught as one.
    """


class PopstatsWarning(UserWarning):
    """Warned when a result is likely wrong though popstats could produce it.

    :func:`~popstats.rewrite` and :func:`~popstats.get_inference_graph` warn
    with it when the inference graph still mixes the examples of a batch
    (e.g. a batch statistic left unmarked). Being a ``UserWarning``, it is
    filtered like one: ``warnings.filterwarnings("ignore",
    category=popstats.PopstatsWarning)``.
    """


def describe_value(value: object, limit: int = 60) -> str:
    """A short ``repr`` of ``value`` for error messages."""
    text = " ".join(repr(value).split())  # one line, whatever the repr
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{text} ({type(value).__name__})"


def check_choice(value: object, choices: dict[str, str], where: str) -> str:
    """``value`` if it is one of ``choices`` (option -> meaning), else raise.

    ``where`` names the call and argument, e.g. ``"rewrite(match=...)"``.
    """
    if isinstance(value, str) and value in choices:
        return value
    allowed = " or ".join(f"{k!r} ({meaning})" for k, meaning in choices.items())
    raise PopstatsError(f"{where}: expected {allowed}, got {describe_value(value)}.")


def check_bool(value: object, where: str) -> bool:
    """``value`` if it is True or False (NumPy's too), else raise naming ``where``."""
    if isinstance(value, bool | np.bool_):
        return bool(value)
    raise PopstatsError(
        f"{where}: expected True or False, got {describe_value(value)}."
    )


def install_hint(package: str, extra: str) -> str:
    """How to install an optional package: by its own name, or as popstats'
    extra (quoted, so that zsh and a checkout install take it too)."""
    return (f"Install it with `pip install {package}` (or `pip install "
            f"'popstats[{extra}]'`, `pip install '.[{extra}]'` in a checkout).")

