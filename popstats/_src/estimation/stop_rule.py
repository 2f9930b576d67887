"""When a pass with ``target_error`` stops: the norm, the schedule, the record.

Stage: estimation. A :class:`StopRule` is made per pass by
:meth:`popstats.Estimation.run_pass` when the option ``target_error`` is
set, and consulted by the one batch loop
(:meth:`~popstats._src.estimation.passes.Pass.run`):

* **the norm** of a statistic is the largest relative standard error
  (:func:`~popstats._src.estimation.estimators.relative_error`) over its
  units and its cells reached by at least ``min_batches`` batches; a
  mean's error is relative to its paired spread (the pairing rule of
  :mod:`popstats._src.export.pairing`) when it has one. Cells reached by
  fewer batches are left out (counted in
  :attr:`~popstats._src.estimation.stopping.Stopping.left_out`), so a step
  few batches reach neither holds the pass forever nor is called precise;
  a statistic with no counted cell has no norm (NaN) and does not hold the
  pass either;
* **the schedule** (:func:`due`): a check after ``min_batches`` batches,
  then each time the count has grown by a tenth (rounded up), so a pass of
  n batches reads its state O(log n) times (on the graph and device
  engines each check reads the accumulators back); the schedule depends on
  the state's batch count only, so a resumed run checks where an
  uninterrupted one does;
* the pass stops at the first check where every norm is below the target.

Members: :class:`StopRule`, :func:`due`, :func:`measure`, :func:`next_check`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from popstats._src.estimation import estimators as est
from popstats._src.estimation.state import EstimationState
from popstats._src.estimation.stopping import StopCheck, Stopping
from popstats._src.export.pairing import Pairs, key_of_site
from popstats._src.export.sites import Site

__all__ = ["StopRule", "due", "measure", "next_check"]


def next_check(n_batches: int, min_batches: int) -> int:
    """The first check at or after ``n_batches`` batches.

    >>> [next_check(n, 10) for n in (0, 10, 11, 12, 22, 100)]
    [10, 10, 11, 13, 24, 104]
    """
    check = min_batches
    while check < n_batches:
        check += -(-check // 10)  # a tenth more, rounded up (at least 1)
    return check


def due(n_batches: int, min_batches: int) -> bool:
    """Whether the schedule checks the state after ``n_batches`` batches."""
    return n_batches >= min_batches and next_check(n_batches, min_batches) == n_batches


def _spreads(sites: Sequence[Site]) -> dict[int, int]:
    """Per mean (index) its paired variance or std (index)."""
    pairs = Pairs([key_of_site(site) for site in sites])
    found: dict[int, int] = {}
    for i, site in enumerate(sites):
        if site.role in ("var", "std"):
            mean = pairs.pair(i)
            if mean is not None:
                found.setdefault(mean, i)
    return found


def measure(sites: Sequence[Site], estimators: Sequence[est.Estimator],
            state: EstimationState,
            min_batches: int) -> tuple[StopCheck, dict[str, int]]:
    """The check of ``state``: per statistic its norm, its unit-averaged
    value and standard error over the counted cells; and per statistic the
    cells left out (reached by fewer than ``min_batches`` batches)."""
    values: list[np.ndarray | None] = []
    errors: list[np.ndarray | None] = []
    for site, estimator, arrays in zip(sites, estimators, state.states, strict=True):
        if not arrays or not np.any(arrays["n"]):
            values.append(None)
            errors.append(None)
            continue
        values.append(est.finalize(estimator, site.role, arrays))
        errors.append(np.asarray(est.standard_error(estimator, site.role, arrays),
                                 dtype=np.float64))
    spreads = _spreads(sites)
    norm: dict[str, float] = {}
    value: dict[str, float] = {}
    error: dict[str, float] = {}
    left_out: dict[str, int] = {}
    for i, (site, arrays) in enumerate(zip(sites, state.states, strict=True)):
        v, se = values[i], errors[i]
        coverage = arrays["n"] if arrays else np.zeros((0,) * site.time_axes, np.int64)
        left_out[site.name] = int((coverage < min_batches).sum())
        norm[site.name] = value[site.name] = error[site.name] = math.nan
        if v is None or se is None:
            continue
        spread = None
        j = spreads.get(i)
        other = None if j is None else values[j]
        if j is not None and other is not None and other.shape == v.shape:
            spread = other if sites[j].role == "std" else np.sqrt(np.maximum(other, 0))
        with np.errstate(divide="ignore", invalid="ignore"):
            relative = np.asarray(est.relative_error(v, se, site.role, spread),
                                  dtype=np.float64)
        relative = np.where(se == 0, 0.0, relative)  # exact (0/0 too)
        counted = (coverage >= min_batches).reshape(
            coverage.shape + (1,) * (v.ndim - coverage.ndim))
        counted = np.broadcast_to(counted, v.shape)
        if counted.any():
            norm[site.name] = float(np.max(relative[counted]))
            value[site.name] = float(np.mean(v[counted]))
            error[site.name] = float(np.mean(se[counted]))
    return StopCheck(state.n_batches, norm, value, error), left_out


class StopRule:
    """The stopping rule of one pass (see the module's text).

    ``start`` is the state the pass continues (a checkpoint's, a given one,
    or an empty one): its record's checks on this schedule (same target and
    ``min_batches``) begin the trace, so a resumed run's record is that of
    an uninterrupted one.
    """

    def __init__(self, target: float, min_batches: int, sites: Sequence[Site],
                 estimators: Sequence[est.Estimator], start: EstimationState) -> None:
        self.target, self.min_batches = target, min_batches
        self.sites, self.estimators = tuple(sites), tuple(estimators)
        self.trace: list[StopCheck] = []
        self.left_out: dict[str, int] = {s.name: 0 for s in self.sites}
        record = start.stopping
        same = (record is not None and record.target == target
                and record.min_batches == min_batches)
        if same and record is not None:
            self.trace = [c for c in record.trace
                          if c.n_batches <= start.n_batches
                          and due(c.n_batches, min_batches)]
            self.left_out = dict(record.left_out)
        #: the state continued already reached the target (a finished run's
        #: checkpoint): the pass takes no batch
        self.finished = bool(same and record is not None and record.reached
                             and record.n_batches == start.n_batches)

    def due(self, n_batches: int) -> bool:
        return due(n_batches, self.min_batches)

    def _measure(self, state: EstimationState) -> StopCheck:
        check, self.left_out = measure(self.sites, self.estimators, state,
                                       self.min_batches)
        self.trace = [c for c in self.trace if c.n_batches < check.n_batches]
        self.trace.append(check)
        return check

    def reached(self, check: StopCheck) -> bool:
        """Whether every statistic with a norm is below the target (and one
        has a norm)."""
        norms = [v for v in check.norm.values() if not math.isnan(v)]
        return bool(norms) and all(v < self.target for v in norms)

    def check(self, state: EstimationState) -> bool:
        """Measure ``state`` (a check of the schedule); whether to stop."""
        return self.reached(self._measure(state))

    def mark(self, state: EstimationState, *, final: bool = False,
             reached: bool = False) -> EstimationState:
        """``state`` with the record so far (``final``: the pass ended;
        without reaching the target, ``state`` is measured once more unless
        the last check was of it)."""
        if final and not reached and state.n_batches and (
                not self.trace or self.trace[-1].n_batches != state.n_batches):
            self._measure(state)
        last = self.trace[-1] if self.trace else None
        norm = dict(last.norm) if last is not None else {
            s.name: math.nan for s in self.sites}
        record = Stopping("target" if reached else "batches ended", state.n_batches,
                          self.target, self.min_batches, norm, dict(self.left_out),
                          tuple(self.trace))
        return dataclasses.replace(state, stopping=record)
