"""The one exception family of popstats.

The checks of options every call shares live here too, each rule once:
:func:`check_choice` (a name), :func:`check_bool` (a flag), :func:`check_int`
and :func:`check_number` (ints and numbers, NumPy scalars alike; a bool is
neither). :func:`as_int` and :func:`as_number` are their tests, for checks
with messages of their own (axes, shapes).

Stage: base (below every stage folder). Members: :class:`PopstatsError`,
:class:`PopstatsWarning`, :func:`as_int`, :func:`as_number`,
:func:`check_bool`, :func:`check_choice`, :func:`check_int`,
:func:`check_number`, :func:`describe_value`, :func:`install_hint`.
"""

from __future__ import annotations

from typing import Literal, overload

import numpy as np

__all__ = ["PopstatsError", "PopstatsWarning", "as_int", "as_number", "check_bool",
           "check_choice", "check_int", "check_number", "describe_value",
           "install_hint"]


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


def as_int(value: object) -> int | None:
    """``value`` as a Python int if it is an integer, Python's or NumPy's (a
    bool is not one), else None."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
        return None
    return int(value)


def as_number(value: object) -> float | None:
    """``value`` as a Python float if it is a real number: an int, a float or
    a NumPy integer or floating scalar (a bool is not one; NaN and infinity
    are numbers here), else None."""
    if isinstance(value, bool | np.bool_) or not isinstance(
            value, int | float | np.integer | np.floating):
        return None
    return float(value)


def _detail(what: str, fix: str) -> tuple[str, str]:
    return (f" ({what})" if what else ""), (f" {fix}" if fix else "")


@overload
def check_int(value: object, where: str, *, minimum: int = 1,
              none: Literal[False] = False, what: str = "", fix: str = "") -> int: ...


@overload
def check_int(value: object, where: str, *, minimum: int = 1, none: Literal[True],
              what: str = "", fix: str = "") -> int | None: ...


def check_int(value: object, where: str, *, minimum: int = 1, none: bool = False,
              what: str = "", fix: str = "") -> int | None:
    """``value`` as a Python int if it is an integer >= ``minimum`` (or None
    where ``none``), else raise naming ``where`` (the call and argument, e.g.
    ``"draw(max_nodes=...)"``); ``what`` says what the number counts, ``fix``
    how to pass one.

    >>> check_int(np.int64(3), "f(n=...)")
    3
    >>> check_int(True, "f(n=...)")
    Traceback (most recent call last):
    ...
    popstats._src.errors.PopstatsError: f(n=...): expected a positive int, got True...
    """
    if value is None and none:
        return None
    number = as_int(value)
    if number is not None and number >= minimum:
        return number
    kind = {1: "a positive int", 0: "a non-negative int"}.get(
        minimum, f"an int >= {minimum}")
    what, fix = _detail(what, fix)
    raise PopstatsError(
        f"{where}: expected {kind}{' or None' if none else ''}{what}, got "
        f"{describe_value(value)}.{fix}"
    )


def check_number(value: object, where: str, *, minimum: float | None = None,
                 maximum: float | None = None, above: bool = False,
                 finite: bool = True, what: str = "", fix: str = "") -> float:
    """``value`` as a Python float if it is a number in range, else raise
    naming ``where``.

    The range is ``>= minimum`` (``> minimum`` where ``above``) and
    ``<= maximum``, each bound if given. NaN is never a number here;
    infinity is one only where ``finite`` is False (a level to compare
    with) and no bound excludes it.

    >>> check_number(np.float32(0.5), "f(momentum=...)", minimum=0, maximum=1,
    ...              above=True)
    0.5
    >>> check_number(float("inf"), "f(e=...)", minimum=0)
    Traceback (most recent call last):
    ...
    popstats._src.errors.PopstatsError: f(e=...): expected a finite number >= 0...
    """
    number = as_number(value)
    if number is not None and not (
        np.isnan(number)
        or (finite and np.isinf(number))
        or (minimum is not None and (number <= minimum if above else number < minimum))
        or (maximum is not None and number > maximum)
    ):
        return number
    if maximum is not None:
        low = f"{'(' if above else '['}{-np.inf if minimum is None else minimum:g}"
        kind = f"a number in {low}, {maximum:g}]"
    else:
        kind = "a finite number" if finite else "a number"
        if minimum is not None:
            kind += f" {'>' if above else '>='} {minimum:g}"
    what, fix = _detail(what, fix)
    raise PopstatsError(
        f"{where}: expected {kind}{what}, got {describe_value(value)}.{fix}"
    )


def install_hint(package: str, extra: str) -> str:
    """How to install an optional package: by its own name, or as popstats'
    extra (quoted, so that zsh and a checkout install take it too)."""
    return (f"Install it with `pip install {package}` (or `pip install "
            f"'popstats[{extra}]'`, `pip install '.[{extra}]'` in a checkout).")

