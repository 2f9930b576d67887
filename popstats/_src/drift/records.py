"""The records :func:`~popstats.drift` returns: one per layer or statistic.

Stage: drift (:mod:`popstats._src.drift`). Members: :class:`Drift`,
:class:`StatisticDrift`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np

from popstats._src.errors import PopstatsError, check_number
from popstats._src.estimation.statistics import PopulationStatistics
from popstats._src.inspection.optional import unknown_label
from popstats._src.inspection.tables import html_table, text_table

__all__ = ["Drift", "StatisticDrift"]

COLUMNS = ("name", "kind", "order", "where", "mean", "max", "worst units",
           "peak step", "batches")


@dataclass(frozen=True, eq=False)
class StatisticDrift:
    """How far new data moved one layer (a mean/variance pair) or statistic.

    Attributes
    ----------
    name : str
        The pair's ``group`` (its mean and variance names if the group is
        not unique), or the statistic's name.
    names : tuple of str
        The statistics compared: (mean, variance) or (statistic,).
    label, where : str
        Of the first of :attr:`names`, the mean of a pair (``where``: the
        loops it is in).
    kind : {"divergence", "standardized"}
        Symmetric KL divergence of the two normal distributions (a pair), or
        standardized difference (see :func:`~popstats.drift`).
    order : int
        Position in the graph: a statistic comes after every statistic it
        depends on (a topological order), so lower is earlier.
    per_unit : numpy.ndarray
        The drift per cell and unit (leading axes: the time steps of the new
        data); NaN where no new batch reached the cell, or (standardized)
        where a single batch did, so that no spread is known.
    per_step : numpy.ndarray
        Mean over units per cell (0-d outside loops).
    mean, max : float
        Over every compared cell and unit; NaN if a unit's drift is
        undefined there (standardized over a single batch).
    worst : tuple of (unit index, value)
        The units that moved most (their largest drift over the steps).
    peak_step : tuple of int or None
        The cell (time step per loop) where the mean drift is largest; None
        outside loops.
    coverage : numpy.ndarray
        Batches of the new data that reached each cell.
    n_batches : int
        Batches of the new data behind the comparison.
    """

    name: str
    names: tuple[str, ...]
    label: str
    kind: str
    where: str
    order: int
    per_unit: np.ndarray
    per_step: np.ndarray
    mean: float
    max: float
    worst: tuple[tuple[tuple[int, ...], float], ...]
    peak_step: tuple[int, ...] | None
    coverage: np.ndarray
    n_batches: int

    def renamed(self, name: str) -> StatisticDrift:
        return dataclasses.replace(self, name=name)

    def steps_above(self, threshold: float) -> np.ndarray:
        """The cells (time steps) whose mean drift exceeds ``threshold``, in
        order: where a loop's drift starts and grows."""
        threshold = _threshold(threshold, "StatisticDrift.steps_above")
        if not self.per_step.ndim:
            return np.zeros((0, 0), dtype=np.int64)
        return np.argwhere(np.nan_to_num(self.per_step, nan=-np.inf) > threshold)


def _threshold(value: object, call: str) -> float:
    return check_number(value, f"{call}(threshold=...)", finite=False,
                        what="a drift level")


def _fmt(x: float) -> str:
    return "-" if np.isnan(x) else f"{x:.4g}"


class Drift(Mapping[str, StatisticDrift]):
    """The result of :func:`popstats.drift`: records by name, in graph order.

    ``str(drift)`` is a table sorted by mean drift (largest first);
    :meth:`to_dicts` the same for programs; :meth:`report` an HTML page
    with the table and plots. :attr:`statistics` holds the population
    statistics of the new data.
    """

    #: the table's columns
    columns = COLUMNS

    def __init__(self, records: tuple[StatisticDrift, ...],
                 statistics: PopulationStatistics) -> None:
        self._records = {r.name: r for r in records}
        #: population statistics of the new data (a second set for rewrite)
        self.statistics = statistics

    def __getitem__(self, name: str) -> StatisticDrift:
        try:
            return self._records[name]
        except (KeyError, TypeError):
            raise unknown_label("Drift[...]", str(name), list(self._records)) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._records)

    def __len__(self) -> int:
        return len(self._records)

    def sorted(self) -> list[StatisticDrift]:
        """The records by mean drift, largest first (NaN last)."""
        return sorted(self._records.values(),
                      key=lambda r: (np.isnan(r.mean), -np.nan_to_num(r.mean)))

    def first_moved(self, threshold: float) -> StatisticDrift | None:
        """The earliest record in the graph whose mean drift exceeds
        ``threshold``: where the drift starts."""
        threshold = _threshold(threshold, "Drift.first_moved")
        for record in self._records.values():
            if record.mean > threshold:
                return record
        return None

    def _rows(self) -> list[list[object]]:
        rows = []
        for r in self.sorted():
            worst = ", ".join(f"{u if len(u) != 1 else u[0]}: {_fmt(v)}"
                              for u, v in r.worst[:3])
            rows.append([r.name, r.kind, r.order, r.where, _fmt(r.mean),
                         _fmt(r.max), worst or "-",
                         "-" if r.peak_step is None else r.peak_step, r.n_batches])
        return rows

    def to_dicts(self) -> list[dict[str, object]]:
        """The records as plain values, sorted by drift (largest first)."""
        return [
            {"name": r.name, "names": list(r.names), "kind": r.kind,
             "order": r.order, "where": r.where, "mean": r.mean, "max": r.max,
             "worst": [[list(u), v] for u, v in r.worst],
             "peak_step": None if r.peak_step is None else list(r.peak_step),
             "n_batches": r.n_batches}
            for r in self.sorted()
        ]

    def __str__(self) -> str:
        return text_table(COLUMNS, self._rows())

    def __repr__(self) -> str:
        return f"Drift({len(self)} records; largest first)\n{self}"

    def _repr_html_(self) -> str:
        return html_table(COLUMNS, self._rows())

    def report(self, path: str | os.PathLike, *,
               title: str = "popstats drift report") -> str:
        """Write an HTML page: the table, per-layer bars and, for loops, a
        step-by-layer heat map (the plots need ``popstats[plot]``).
        Returns the path written."""
        from popstats._src.drift.report import write_drift_report

        if not isinstance(title, str):
            raise PopstatsError(
                f"Drift.report(title=...): expected a str, got {type(title).__name__}."
            )
        return write_drift_report(self, path, title)
