"""States of an estimation pass: checked, merged and finalized.

Stage: estimation. Members, the arithmetic behind
:meth:`popstats.Estimation.check_state`, :meth:`~popstats.Estimation.merge`
and :meth:`~popstats.Estimation.finalize`:

- :func:`check_state` -- a state of this pass (same spec, arrays that fit),
  or an error naming what differs;
- :func:`merge_states` -- two states as one, exactly
  (:func:`~popstats._src.estimation.estimators.merge` per statistic);
- :func:`finalize_state` -- the population statistics of a state (with
  their standard errors), cells no batch reached filled from earlier steps
  (:func:`~popstats._src.estimation.estimators.fill_uncovered`), with a
  warning on the ``popstats`` logger for steps reached by few batches or
  none (:data:`COVERAGE_WARNING`), and the bias and trend warnings of
  :mod:`~popstats._src.estimation.bias`: kept on
  :attr:`~popstats.PopulationStatistics.warnings` and warned as
  :class:`~popstats.PopstatsWarning` (:func:`without_coverage_warnings`
  holds both back for a while, nothing else).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from popstats._src.errors import PopstatsError, PopstatsWarning, describe_value
from popstats._src.estimation import estimators as est
from popstats._src.estimation.accumulate_host import describe_arrays, fits, stat_shape
from popstats._src.estimation.bias import find_warnings, trend_tests
from popstats._src.estimation.estimators import fill_uncovered
from popstats._src.estimation.spec import PassSpec, spec_differences
from popstats._src.estimation.state import EstimationState
from popstats._src.estimation.statistics import (
    PopulationStatistics,
    Statistic,
    StatisticWarning,
    with_spreads,
)
from popstats._src.export.exporter import Site

__all__ = ["COVERAGE_WARNING", "check_state", "finalize_state", "merge_states",
           "without_coverage_warnings"]

log = logging.getLogger("popstats")

#: the warning :func:`finalize_state` logs per statistic with thin coverage
COVERAGE_WARNING = ("statistic %r: %d step(s) never reached (filled from earlier "
                    "steps), %d reached by under 10%% of the batches")


class _NoCoverageWarnings(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg is not COVERAGE_WARNING


_HELD = [0]  # blocks holding back the warnings of finalize_state
_PACKAGE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _users_level() -> int:
    """The ``stacklevel`` (for a warning of the caller) of the first frame
    outside popstats: the user's call is named, not popstats' own lines."""
    frame, level = sys._getframe(1), 1
    while frame.f_back is not None and os.path.abspath(
            frame.f_code.co_filename).startswith(_PACKAGE + os.sep):
        frame, level = frame.f_back, level + 1
    return level


@contextlib.contextmanager
def without_coverage_warnings() -> Iterator[None]:
    """Hold back :data:`COVERAGE_WARNING` on the ``popstats`` logger while the
    block runs (a filter on those records only; removed after it), and the
    :class:`~popstats.PopstatsWarning` of the bias and trend warnings (still
    recorded on the statistics)."""
    drop = _NoCoverageWarnings()
    log.addFilter(drop)
    _HELD[0] += 1
    try:
        yield
    finally:
        _HELD[0] -= 1
        log.removeFilter(drop)


def check_state(spec: PassSpec, sites: Sequence[Site],
                estimators: Sequence[est.Estimator], state: object, where: str,
                fix: str) -> EstimationState:
    """``state`` if it is a state of the pass of ``spec``, else raise.

    ``where`` names the call and argument, ``fix`` says what to pass.
    """
    if not isinstance(state, EstimationState):
        raise PopstatsError(
            f"{where}: expected an EstimationState (from Estimation.init, run, "
            f"update or merge, or popstats.load_state), got "
            f"{describe_value(state)}."
        )
    differences = spec_differences(state.spec, spec)
    if differences:
        raise PopstatsError(
            f"{where}: the state was made by another estimation pass: "
            f"{'; '.join(differences)}. Its arrays would be read as this "
            f"pass's and give wrong numbers. {fix}"
        )
    if len(state.states) != len(sites):
        raise PopstatsError(
            f"{where}: the state holds {len(state.states)} statistics' "
            f"arrays for {len(sites)} statistics; it is damaged. {fix}"
        )
    for site, estimator, arrays in zip(sites, estimators, state.states, strict=True):
        if arrays and not fits(arrays, site, estimator):
            raise PopstatsError(
                f"{where}: the arrays of statistic {site.name!r} in the state "
                f"({describe_arrays(arrays)}) do not fit a {estimator.name!r} "
                f"state of shape {site.shape} with {site.time_axes} time "
                f"axes; the state is damaged. {fix}"
            )
    return state


def merge_states(sites: Sequence[Site], estimators: Sequence[est.Estimator],
                 a: EstimationState, b: EstimationState) -> EstimationState:
    """The state over the batches of ``a`` and ``b`` (both checked) together."""
    states = []
    for i, (sa, sb) in enumerate(zip(a.states, b.states, strict=True)):
        if not sa or not sb:
            states.append({k: v.copy() for k, v in (sa or sb).items()})
            continue
        site = sites[i]
        shape_a = stat_shape(sa, site.time_axes)
        shape_b = stat_shape(sb, site.time_axes)
        if shape_a != shape_b:
            raise PopstatsError(
                f"Estimation.merge(b=...): statistic {site.name!r} (in "
                f"{site.where}) has shape {shape_b} in b but {shape_a} in a. "
                f"States of one statistic must come from batches with the same "
                f"feature sizes; merge states of the same model and data."
            )
        states.append(est.merge(estimators[i], site.role, sa, sb))
    return EstimationState(a.spec, tuple(states), a.n_batches + b.n_batches,
                           sizes=a.sizes.merge(b.sizes))


def finalize_state(call: str, sites: Sequence[Site],
                   estimators: Sequence[est.Estimator], max_steps: int | None,
                   state: EstimationState,
                   per_example: Mapping[str, str | None] | None = None,
                   ) -> PopulationStatistics:
    """The population statistics of a (checked) state; errors name ``call``.

    ``per_example``: the statistics whose elements per batch are the
    batch's examples, which alone get the batch-size warnings
    (:mod:`~popstats._src.estimation.bias`), each with the spread its graph
    computes (``"var"``, ``"std"``; None: none found), which stands for the
    role of a statistic marked without one
    (:mod:`~popstats._src.estimation.examples_count`).
    """
    per_example = {} if per_example is None else per_example
    if state.n_batches == 0:
        if call == "Estimation":  # the pass's own API: a state given
            raise PopstatsError(
                "Estimation.finalize(state=...): the state counts no "
                "batches. Add batches first (Estimation.run or update; a "
                "generator that was already consumed is empty)."
            )
        raise PopstatsError(
            f"{call}(batches=...): no batches. Pass a non-empty iterable "
            f"of training batches (a generator that was already consumed is "
            f"empty)."
        )
    stats = []
    for site, estimator, arrays in zip(sites, estimators, state.states, strict=True):
        coverage = arrays.get("n", np.zeros(0, np.int64))
        if coverage.size == 0 or not coverage.any():
            raise PopstatsError(
                f"{call}(batches=...): statistic {site.name!r} (in "
                f"{site.where}) was never computed: every batch ran its loop "
                f"for zero steps, or its count was 0 (a mask left no "
                f"element). Give batches with non-empty sequences."
            )
        value = fill_uncovered(est.finalize(estimator, site.role, arrays), coverage)
        stats.append(
            Statistic(site.name, site.label, site, value, coverage.copy(),
                      int(coverage.max()), estimator, max_steps,
                      standard_error=est.standard_error(estimator, site.role,
                                                        arrays))
        )
    result = PopulationStatistics(with_spreads(tuple(stats)),
                                  stopping=state.stopping)
    sizes = state.sizes if state.sizes.known(state.n_batches) else None
    notes: list[StatisticWarning] = []
    tests = sum(trend_tests(stat) for stat in result.values())
    for stat, arrays in zip(result.values(), state.states, strict=True):
        if stat.uncovered_steps or stat.thin_steps:
            log.warning(COVERAGE_WARNING, stat.name, stat.uncovered_steps,
                        stat.thin_steps)
            notes.append(StatisticWarning(stat.name, "coverage", (
                f"statistic {stat.name!r} (in {stat.site.where}): "
                f"{stat.uncovered_steps} step(s) never reached (filled from "
                f"earlier steps), {stat.thin_steps} reached by under 10% of the "
                f"batches.")))
        found = find_warnings(stat, arrays,
                              sizes if stat.name in per_example else None, tests,
                              per_example.get(stat.name))
        notes.extend(found)
        if found and not _HELD[0]:
            level = _users_level()
            for note in found:
                warnings.warn(note.message, PopstatsWarning, stacklevel=level)
    return PopulationStatistics(tuple(result.values()), None, state.stopping,
                                tuple(notes))
