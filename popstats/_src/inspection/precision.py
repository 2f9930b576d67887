"""How precise each estimate is, in one line per statistic.

Stage: inspection (used by :mod:`popstats._src.inspection.describe`,
:mod:`~popstats._src.inspection.report` and
:mod:`~popstats._src.inspection.cli`). :func:`precision_of` reads a
:class:`~popstats._src.estimation.statistics.Statistic`'s own arrays
(``relative_error``, ``standard_error``, ``coverage``) into a
:class:`Precision`: the largest relative standard error over its units and
its well-covered cells, the norm of ``target_error`` (see
:doc:`/estimators`). :func:`estimator_label` names an estimator in a
table cell (``"ema(0.1, debiased)"``).

Members: :class:`Precision`, :func:`estimator_label`, :func:`counted_batches`,
:func:`format_error`, :func:`precision_of`, :func:`precisions`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from popstats._src.estimation.estimators import Estimator
from popstats._src.estimation.options import EstimationOptions
from popstats._src.estimation.statistics import Statistic

__all__ = ["Precision", "counted_batches", "estimator_label", "format_error",
           "precision_of", "precisions"]

#: the ``min_batches`` of a pass without ``target_error``: the option's default
DEFAULT_MIN_BATCHES: int = EstimationOptions.min_batches


def estimator_label(estimator: Estimator) -> str:
    """A short name of ``estimator`` for a table cell.

    >>> estimator_label(Estimator("pooled"))
    'pooled'
    >>> estimator_label(Estimator("ema", debias=True))
    'ema(0.1, debiased)'
    >>> estimator_label(Estimator("ema", momentum=0.01, unbiased=True))
    'ema(0.01, unbiased)'
    """
    if estimator.name != "ema":
        return estimator.name
    parts = [f"{estimator.momentum:g}"]
    if getattr(estimator, "unbiased", False):
        parts.append("unbiased")
    if getattr(estimator, "debias", False):
        parts.append("debiased")
    return f"ema({', '.join(parts)})"


def counted_batches(n_batches: int, min_batches: int) -> int:
    """The batches a cell needs for its error to count: ``min_batches``, or
    every batch of a pass that had fewer (at least 2: one batch gives no
    spread).

    >>> counted_batches(500, 10), counted_batches(4, 10), counted_batches(1, 10)
    (10, 4, 2)
    """
    return max(2, min(min_batches, n_batches))


@dataclass(frozen=True)
class Precision:
    """How precise one statistic's estimate is.

    Attributes
    ----------
    estimator : str
        Its estimator (:func:`estimator_label`: ``"ema(0.1, debiased)"``).
    n_batches : int
        Batches that contributed.
    relative_error : float or None
        The largest relative standard error
        (:attr:`~popstats._src.estimation.statistics.Statistic.relative_error`)
        over its units and its cells reached by at least :attr:`min_batches`
        batches; NaN when no cell was; None when the statistic has no
        standard error (a file of a popstats before standard errors).
    standard_error : float or None
        The standard error where that largest relative error is (None as
        above, NaN when no cell counted).
    at : tuple of int or None
        The index into ``value`` of that cell and unit (None as above).
    min_batches : int
        The batches a cell needed to count (:func:`counted_batches`).
    left_out : int
        Cells (time steps) reached by fewer batches: left out, so not shown
        to be precise (0 outside loops, unless there was one batch).
    """

    estimator: str
    n_batches: int
    relative_error: float | None
    standard_error: float | None
    at: tuple[int, ...] | None
    min_batches: int
    left_out: int

    @property
    def measured(self) -> bool:
        """Whether a relative error was measured (a standard error kept and a
        cell counted)."""
        return self.relative_error is not None and not math.isnan(
            self.relative_error)


def precision_of(stat: Statistic, min_batches: int = DEFAULT_MIN_BATCHES) -> Precision:
    """The :class:`Precision` of ``stat``, counting the cells reached by at
    least :func:`counted_batches` ``(stat.n_batches, min_batches)`` batches
    (with the ``min_batches`` of a pass with ``target_error``, the same
    cells as its norm)."""
    least = counted_batches(stat.n_batches, min_batches)
    coverage = np.asarray(stat.coverage)
    counted = coverage >= least
    left_out = int(counted.size - counted.sum())
    label = estimator_label(stat.estimator)
    rel = stat.relative_error
    if rel is None or stat.standard_error is None:
        return Precision(label, stat.n_batches, None, None, None, least, left_out)
    mask = np.broadcast_to(counted.reshape(counted.shape + (1,) * (rel.ndim
                                                                  - counted.ndim)),
                           rel.shape)
    if not mask.any():
        return Precision(label, stat.n_batches, math.nan, math.nan, None, least,
                         left_out)
    shown = np.where(mask, np.nan_to_num(rel, nan=np.inf), -np.inf)
    flat = int(np.argmax(shown))
    at = tuple(int(i) for i in np.unravel_index(flat, rel.shape))
    return Precision(label, stat.n_batches, float(shown.reshape(-1)[flat]),
                     float(np.asarray(stat.standard_error)[at]), at, least, left_out)


def precisions(stats: Mapping[str, Statistic]) -> dict[str, Precision]:
    """:func:`precision_of` each statistic of ``stats``, with the
    ``min_batches`` of its pass when it stopped at a target."""
    stopping = getattr(stats, "stopping", None)
    least = DEFAULT_MIN_BATCHES if stopping is None else stopping.min_batches
    return {name: precision_of(stat, least) for name, stat in stats.items()}


def format_error(value: float | None) -> str:
    """A relative error for a table: 3 significant digits; ``-`` when none
    was measured.

    >>> format_error(0.012345), format_error(None), format_error(float("nan"))
    ('0.0123', '-', '-')
    """
    if value is None or math.isnan(value):
        return "-"
    return f"{value:.3g}"
