"""The measures drift compares with, and the cell arithmetic they need.

Stage: drift. Members: :func:`jeffreys` (the divergence of a mean/variance
pair), :func:`aligned` and :func:`repeat_last` (population values over the
new data's steps), :func:`first_seen` (the shift that keeps a spread's
digits), :func:`nan_reduce`.
"""

from __future__ import annotations

import warnings

import numpy as np

from popstats._src.estimation.statistics import Statistic

__all__ = ["aligned", "first_seen", "jeffreys", "nan_reduce", "repeat_last"]


def jeffreys(m0: np.ndarray, v0: np.ndarray, m1: np.ndarray,
             v1: np.ndarray) -> np.ndarray:
    """The symmetric KL divergence of N(m0, v0) and N(m1, v1), elementwise.

    Two equal distributions give 0; a variance of 0 against a positive one
    gives inf (and two zero variances with equal means, 0).

    >>> float(jeffreys(0.0, 1.0, 2.0, 1.0))  # a shift of 2 standard deviations
    4.0
    """
    m0, v0, m1, v1 = (np.asarray(a, dtype=np.float64) for a in (m0, v0, m1, v1))
    with np.errstate(divide="ignore", invalid="ignore"):
        out = (0.5 * (v0 / v1 + v1 / v0) - 1.0
               + 0.5 * (m1 - m0) ** 2 * (1.0 / v0 + 1.0 / v1))
    both_zero = (v0 == 0) & (v1 == 0)
    out = np.where(both_zero, np.where(m0 == m1, 0.0, np.inf), out)
    return np.where(np.isnan(out), np.inf, out)


def aligned(old: Statistic, cells: tuple[int, ...]) -> np.ndarray:
    """The population value inference uses at each of ``cells``: steps
    beyond the population's repeat its last one."""
    return repeat_last(old.value, cells)


def first_seen(shift: np.ndarray | None, value: np.ndarray,
               axes: int) -> np.ndarray:
    """``shift`` grown to cover the cells of ``value`` (its ``axes`` leading
    time axes): cells it already has keep their values, new ones take
    ``value``'s (0 where neither has the cell)."""
    if shift is None:
        return value.copy()
    shape = tuple(max(a, b) for a, b in zip(shift.shape[:axes], value.shape[:axes],
                                             strict=True))
    if shape == shift.shape[:axes]:
        return shift
    grown = np.zeros(shape + shift.shape[axes:])
    grown[tuple(slice(0, n) for n in value.shape[:axes])] = value
    grown[tuple(slice(0, n) for n in shift.shape[:axes])] = shift
    return grown


def repeat_last(value: np.ndarray, cells: tuple[int, ...]) -> np.ndarray:
    """``value`` over ``cells`` (its leading axes): steps beyond its own
    repeat its last one."""
    for axis, size in enumerate(cells):
        have = value.shape[axis]
        take = np.minimum(np.arange(size), have - 1)
        value = np.take(value, take, axis=axis)
    return value


def nan_reduce(reduce, array: np.ndarray, axis=None) -> np.ndarray:
    """A NaN-ignoring reduction, NaN (without a warning) where all are NaN."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return reduce(array, axis=axis)
