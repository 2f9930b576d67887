"""The record of a pass that stops once its statistics are precise enough.

Stage: estimation. With the option ``target_error``, an estimation pass ends
at the first check where every statistic's relative standard error is below
the target (:mod:`~popstats._src.estimation.stop_rule` decides); what it
did is a :class:`Stopping` record, carried by the state the pass returns
(:attr:`~popstats.EstimationState.stopping`), by the statistics finalized
from it (:attr:`~popstats.PopulationStatistics.stopping`) and saved in
both their files. Each check is a :class:`StopCheck`, the points of a
convergence plot.

Members: :data:`REASONS`, :class:`StopCheck`, :class:`Stopping`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["REASONS", "StopCheck", "Stopping"]

#: why a pass with ``target_error`` ended (reason -> meaning)
REASONS = {
    "target": "every statistic's relative standard error fell below the target",
    "batches ended": "the batches ended before the target was reached",
}


def _number(value: float) -> float | None:
    """A float for JSON: NaN (nothing measured) as None."""
    return None if math.isnan(value) else float(value)


def _floats(meta: Mapping[str, Any]) -> dict[str, float]:
    return {str(k): math.nan if v is None else float(v) for k, v in meta.items()}


@dataclass(frozen=True)
class StopCheck:
    """One check of a pass with ``target_error``: the state after
    ``n_batches`` batches.

    Attributes
    ----------
    n_batches : int
        Batches the state counted at the check.
    norm : dict
        Per statistic (by name) its norm: the largest relative standard
        error over its units and its cells reached by at least
        ``min_batches`` batches (NaN: no cell was).
    value, standard_error : dict
        Per statistic the value and the standard error averaged over its
        units and those cells (NaN: no cell was): the points of a
        convergence plot (the estimate, and the width of its interval).
    """

    n_batches: int
    norm: dict[str, float]
    value: dict[str, float]
    standard_error: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        return {"n_batches": self.n_batches,
                "norm": {k: _number(v) for k, v in self.norm.items()},
                "value": {k: _number(v) for k, v in self.value.items()},
                "standard_error": {k: _number(v)
                                   for k, v in self.standard_error.items()}}

    @classmethod
    def from_json(cls, meta: Mapping[str, Any]) -> StopCheck:
        return cls(int(meta["n_batches"]), _floats(meta["norm"]),
                   _floats(meta["value"]), _floats(meta["standard_error"]))


@dataclass(frozen=True)
class Stopping:
    """Why and when a pass with ``target_error`` ended.

    Attributes
    ----------
    reason : {"target", "batches ended"}
        ``"target"``: at a check every statistic's norm was below
        :attr:`target`, and the pass took no more batches;
        ``"batches ended"``: the batches ended first (:attr:`norm` is then
        measured on the whole pass).
    n_batches : int
        Batches the pass counted when it ended.
    target : float
        The ``target_error`` (a relative standard error).
    min_batches : int
        The batches a cell needed for its error to count.
    norm : dict
        Per statistic (by name) its norm at the end: the largest relative
        standard error over its units and its cells reached by at least
        ``min_batches`` batches (NaN: no cell was; the statistic was left
        out of the rule).
    left_out : dict
        Per statistic, the cells (time steps, or step tuples inside nested
        loops) reached by fewer than ``min_batches`` batches at the end:
        left out of the rule, so not shown to be precise. 0 outside loops.
    trace : tuple of StopCheck
        Every check, in order (the last is the end).

    Examples
    --------
    >>> from popstats._src.estimation.stopping import StopCheck, Stopping
    >>> check = StopCheck(20, {"v": 0.008}, {"v": 1.5}, {"v": 0.012})
    >>> record = Stopping("target", 20, 0.01, 10, {"v": 0.008}, {"v": 0}, (check,))
    >>> record.reached, record.imprecise
    (True, ())
    >>> print(record)
    Stopping: target 0.01 reached after 20 batches (largest norm 0.008, 'v')
    """

    reason: str
    n_batches: int
    target: float
    min_batches: int
    norm: dict[str, float]
    left_out: dict[str, int]
    trace: tuple[StopCheck, ...] = ()

    @property
    def reached(self) -> bool:
        """Whether the pass stopped because the target was reached."""
        return self.reason == "target"

    @property
    def imprecise(self) -> tuple[str, ...]:
        """The statistics with cells left out of the rule (see
        :attr:`left_out`), or measured nowhere."""
        return tuple(name for name in self.norm
                     if self.left_out.get(name, 0) or math.isnan(self.norm[name]))

    def worst(self) -> tuple[str, float] | None:
        """The statistic with the largest norm at the end, and that norm
        (None: no statistic was measured)."""
        measured = [(v, k) for k, v in self.norm.items() if not math.isnan(v)]
        if not measured:
            return None
        value, name = max(measured)
        return name, value

    def __str__(self) -> str:
        worst = self.worst()
        largest = ("" if worst is None
                   else f" (largest norm {worst[1]:.3g}, {worst[0]!r})")
        verb = "reached" if self.reached else "not reached"
        text = (f"Stopping: target {self.target:g} {verb} after "
                f"{self.n_batches} batches{largest}")
        if self.imprecise:
            text += f"; cells left out in {', '.join(map(repr, self.imprecise))}"
        return text

    def to_json(self) -> dict[str, Any]:
        return {"reason": self.reason, "n_batches": self.n_batches,
                "target": self.target, "min_batches": self.min_batches,
                "norm": {k: _number(v) for k, v in self.norm.items()},
                "left_out": dict(self.left_out),
                "trace": [check.to_json() for check in self.trace]}

    @classmethod
    def from_json(cls, meta: Mapping[str, Any]) -> Stopping:
        reason = str(meta["reason"])
        if reason not in REASONS:
            raise ValueError(f"unknown stopping reason {reason!r}")
        return cls(reason, int(meta["n_batches"]), float(meta["target"]),
                   int(meta["min_batches"]), _floats(meta["norm"]),
                   {str(k): int(v) for k, v in meta["left_out"].items()},
                   tuple(StopCheck.from_json(c) for c in meta["trace"]))
