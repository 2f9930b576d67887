"""The rounds of ``upstream="population"``: estimate until the values are a fixed point.

Wanted: values P such that, over the estimation data, every statistic of
the graph rewritten with P equals its own value in P -- each layer
normalizes its inference-time input. The rounds iterate ``P_k =
E(inference graph of P_{k-1})`` (Jacobi iteration), starting from ``P_0``,
today's estimate on the training graph. A round is one estimation pass
over the batches; the public option ``upstream_passes`` and
``FixedPoint.passes`` count rounds.

* a statistic whose upstream holds no statistic is exact after round 0; one
  whose upstream statistics are exact after round k is exact after round k+1.
  A feed-forward graph whose statistics lie at most d deep (d statistics on
  the longest path to one) is therefore exact after round d, and round d+1
  changes nothing: the change is 0 and the rounds stop (d + 2 rounds);
* inside a loop, a per-step statistic of step t reads the earlier steps'
  values through the recurrence: step t is exact after at most about t
  rounds, and in practice the change falls geometrically long before;
* a statistic pooled over time (``time="pooled"``) reads its own value at
  earlier steps: there is no finite number of rounds, the change falls
  geometrically.

The rounds stop when the largest change of any value (relative to the
largest magnitude of its statistic) is at most ``upstream_tol`` -- or, with
``upstream_se``, when every value moved by at most that fraction of its
standard error (:func:`se_change`; cells without a finite standard error
are not judged) -- and fail with a clear error after ``upstream_passes``.
One mechanism covers every model kind popstats rewrites (loops, nested
loops, time pooling, every estimator): each round is an ordinary
estimation pass, over the graph of
:func:`~popstats._src.upstream.inference_export.inference_export`, compiled once;
its population values are shared variables set before each round.

Every round must see the same data (the fixed point is that of a data set):
the batches are hashed in round 0 and each later round is checked
against it. With ``checkpoint``, round k checkpoints to its own file
(``run.npz`` -> ``run.pass0.npz``, ``run.pass1.npz``, ...); calling again as
first called replays the finished rounds from their files (their data is
checked, not computed) and resumes the interrupted one. A round's checkpoint
records the population values it ran with (in its parameters' digest), so a
checkpoint of another round is refused.

With ``target_error``, round 0 stops where its rule says (its record is the
result's :attr:`~popstats.PopulationStatistics.stopping`) and every later
round takes exactly the batches round 0 took, the first ones: the rounds
are passes over one data set.

Stage: upstream. Members: :class:`FixedPointDriver` (what
:meth:`popstats.Estimation.run` hands the passes to), :func:`run_fixed_point`
(the passes);
:func:`iterate` (the loop of passes, given how to run one),
:func:`inference_pass`, :func:`largest_change`, :func:`se_change`,
:func:`check_change`, :class:`Trace`, :func:`not_converged`,
:func:`no_standard_errors`, :func:`quiet`,
:data:`STILL` (shared with :mod:`popstats.dask`'s passes); :func:`pass_path`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import os
from collections.abc import Iterable, Iterator, Sized
from typing import Any, cast

import numpy as np

from popstats._src.errors import PopstatsError, describe_value
from popstats._src.estimation.combine import without_coverage_warnings
from popstats._src.estimation.pass_object import DrivenRun, Estimation
from popstats._src.estimation.passes import RunArguments
from popstats._src.estimation.plan import EstimationPlan
from popstats._src.estimation.state import EstimationState
from popstats._src.estimation.statistics import PopulationStatistics
from popstats._src.estimation.upstream import FixedPoint
from popstats._src.upstream.inference_export import inference_export

__all__ = [
    "STILL",
    "FixedPointDriver",
    "Trace",
    "check_change",
    "inference_pass",
    "iterate",
    "largest_change",
    "no_standard_errors",
    "not_converged",
    "pass_path",
    "quiet",
    "run_fixed_point",
    "se_change",
]

log = logging.getLogger("popstats")


def pass_path(checkpoint: str | os.PathLike | None, k: int) -> str | None:
    """Round ``k``'s checkpoint file: ``run.npz`` -> ``run.pass<k>.npz``."""
    if checkpoint is None:
        return None
    root, ext = os.path.splitext(os.fspath(checkpoint))
    return f"{root}.pass{k}{ext}"


def _relative(old: np.ndarray, new: np.ndarray) -> float:
    """How far ``new`` moved from ``old``, relative to ``old``'s largest
    magnitude (inf for a non-finite value: NaN compares False)."""
    a, b = np.asarray(old), np.asarray(new)
    if a.shape != b.shape or not np.isfinite(b).all():
        return float("inf")  # shapes differ only if the data did
    if not a.size:
        return 0.0
    scale, change = float(np.max(np.abs(a))), float(np.max(np.abs(b - a)))
    return change / scale if scale > 0 else change


def largest_change(old: PopulationStatistics,
                   new: PopulationStatistics) -> tuple[float, str]:
    """The largest relative change of any value, and its statistic."""
    worst, where = 0.0, next(iter(new))
    for name, stat in new.items():
        relative = _relative(old[name].value, stat.value)
        if not relative <= worst:  # the first inf is kept
            worst, where = relative, name
            if relative == float("inf"):
                break
    return worst, where


def se_change(old: PopulationStatistics, new: PopulationStatistics,
              tol: float) -> tuple[float, str, tuple[tuple[str, int], ...]]:
    """The largest change of any value from ``old`` to ``new`` in units of
    its standard error (``new``'s), its statistic, and the cells and units
    left out per statistic (no finite standard error).

    A change within ``tol`` of its statistic's largest magnitude (as
    :func:`largest_change` measures) counts as 0: rounding, or a value
    whose batches all agree (standard error 0). NaN (and the first
    statistic) where no value has a finite standard error.
    """
    worst, where = float("nan"), next(iter(new))
    unjudged: list[tuple[str, int]] = []
    for name, stat in new.items():
        before = np.asarray(old[name].value, dtype=np.float64)
        after = np.asarray(stat.value, dtype=np.float64)
        se = (np.full(after.shape, np.inf) if stat.standard_error is None
              else np.asarray(stat.standard_error, dtype=np.float64))
        judged = np.isfinite(se)
        if (left := int(judged.size - np.count_nonzero(judged))):
            unjudged.append((name, left))
        if not judged.any():
            continue
        change = np.abs(after - before)[judged]
        scale = float(np.max(np.abs(before))) if before.size else 0.0
        floor = tol * scale if scale > 0 else tol
        with np.errstate(divide="ignore", invalid="ignore"):
            units = np.where(change <= floor, 0.0, change / se[judged])
        largest = float(np.max(units))
        if not largest <= worst:  # NaN at first: the first judged one is kept
            worst, where = largest, name
    return worst, where, tuple(unjudged)


@dataclasses.dataclass
class Trace:
    """What the rounds measured so far, one entry per round after the
    first: the largest relative change and its statistic, the largest
    change in standard errors and its statistic; the cells the last round
    could not judge in standard errors."""

    changes: list[float] = dataclasses.field(default_factory=list)
    worst: list[str] = dataclasses.field(default_factory=list)
    se_changes: list[float] = dataclasses.field(default_factory=list)
    se_worst: list[str] = dataclasses.field(default_factory=list)
    unjudged: tuple[tuple[str, int], ...] = ()

    def record(self, options: Any) -> FixedPoint:
        """The record of rounds that stopped now (the first included)."""
        return FixedPoint(len(self.changes) + 1, tuple(self.changes),
                          tuple(self.worst), options.upstream_tol,
                          "tol" if options.upstream_se is None else "se",
                          options.upstream_se, tuple(self.se_changes),
                          tuple(self.se_worst), self.unjudged)


class _SameData:
    """The batches, hashed as they pass: round 0 records, the others must
    match (a loader that shuffles or augments would move the target)."""

    def __init__(self, batches: Iterable[Any], call: str):
        # not iter(batches) is batches: starting a loader's epoch costs (a
        # DataLoader starts its workers) and may move it (an epoch counter)
        if isinstance(batches, Iterator):
            raise PopstatsError(
                f"{call}(batches=...): upstream='population' runs several passes "
                f"over the batches, but {describe_value(batches)} can be iterated "
                f"only once (an iterator or generator). Pass a list, or an "
                f"iterable whose __iter__ starts again (a loader), giving the same "
                f"data every time."
            )
        self.batches = batches
        self.call = call
        self.digests: list[bytes] | None = None
        self.recorded: list[bytes] = []  # pass 0's, as they pass
        #: with target_error reached in pass 0: the batches every later pass
        #: takes (the first ones); None: all of them
        self.limit: int | None = None

    def first_done(self, state: EstimationState) -> None:
        """Pass 0 ended with ``state``: the later passes take its batches
        (the first ``state.n_batches`` when its target stopped it)."""
        self.digests = self.recorded[:state.n_batches]
        if state.stopping is not None and state.stopping.reached:
            self.limit = state.n_batches

    def over(self, run: Estimation, k: int) -> _Pass:
        # sized only if the batches are (a progress bar asks len() of Sized)
        sized = isinstance(self.batches, Sized)
        return (_SizedPass if sized else _Pass)(self, run, k)


class _Pass:
    def __init__(self, data: _SameData, run: Estimation, k: int):
        self.data, self.run, self.k = data, run, k

    def __iter__(self) -> Iterator[Any]:
        data, first = self.data, self.data.digests  # first: None in pass 0
        seen: list[bytes] = []
        source: Iterable[Any] = data.batches
        if first is not None and data.limit is not None:
            # pass 0 stopped at its target after these batches (no more taken)
            source = itertools.islice(source, data.limit)
        for i, batch in enumerate(source):
            digest = self.run.batch_digest(batch, i)
            if first is None:
                data.recorded.append(digest)
            if first is not None and i >= len(first):
                raise self._moved(f"it gave more than the {len(first)} "
                                  f"batches of pass 0")
            if first is not None and digest != first[i]:
                raise self._moved(f"batch {i} holds other data than in pass 0")
            seen.append(digest)
            yield batch
        if first is not None and len(seen) != len(first):
            raise self._moved(f"it gave {len(seen)} batches, pass 0 "
                              f"{len(first)}")

    def _moved(self, what: str) -> PopstatsError:
        return PopstatsError(
            f"{self.data.call}(batches=...): upstream='population' needs the same "
            f"batches in every pass, but in pass {self.k} {what} (a loader that "
            f"shuffles or augments?). The fixed point is that of one data set: "
            f"seed the loader the same way for every pass, or pass a list."
        )


class _SizedPass(_Pass):
    def __len__(self) -> int:
        total = len(cast(Sized, self.data.batches))  # made for sized batches only
        limit = self.data.limit if self.k else None
        return total if limit is None else min(total, limit)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Finalize a pass without its coverage warnings (those only): every pass
    sees the same batches, and the final statistics warn once when they are
    finalized."""
    with without_coverage_warnings():
        yield


class FixedPointDriver:
    """The :class:`~popstats._src.estimation.pass_object.PassDriver` of
    ``upstream="population"``: :func:`run_fixed_point`
    (``popstats/__init__.py`` makes it :attr:`popstats.Estimation.driver`)."""

    def run(self, estimation: Estimation, batches: Iterable[Any],
            arguments: RunArguments) -> DrivenRun:
        return DrivenRun(*run_fixed_point(estimation, batches, arguments))


def run_fixed_point(
    batch_run: Estimation, batches: Iterable[Any], arguments: RunArguments,
) -> tuple[Estimation, EstimationState, FixedPoint]:
    """The rounds of ``batch_run.run`` (see the module's text); returns the
    last round's pass, its state and the record of the rounds."""
    call, options = batch_run.call, batch_run.options
    for name, value in (("state", arguments.state),
                        ("on_batch", arguments.on_batch)):
        if value is not None:
            where = batch_run.where("run", name)
            raise PopstatsError(
                f"{where}: not available with upstream='population', whose "
                f"passes start from nothing and run until their values are a "
                f"fixed point; leave {name} out (or use upstream='batch')."
            )
    data = _SameData(batches, batch_run.where("run", "batches")[:-len(
        "(batches=...)")])

    def of_pass(k: int) -> RunArguments:
        return dataclasses.replace(arguments,
                                   checkpoint=pass_path(arguments.checkpoint, k))

    # pass 0 is the plain pass of batch_run (its compiled function, its spec)
    state = batch_run.run_pass(data.over(batch_run, 0), of_pass(0))
    data.first_done(state)
    stopping = state.stopping  # pass 0 decides the batches (target_error)
    with quiet():
        stats = batch_run.finalize(state)
    inputs, outputs = batch_run.given
    exported = inference_export(outputs, stats, options.time, call)
    runs: list[Estimation] = []  # one, compiled once, for every round

    def one_round(upstream: PopulationStatistics, k: int):
        exported.hold(upstream, call)
        runs[:] = [inference_pass(runs[0] if runs else None, inputs, outputs,
                                  exported, upstream, options, call)]
        state = runs[0].run_pass(data.over(runs[0], k), of_pass(k))
        with quiet():
            return runs[0].finalize(state), state

    state, record = iterate(stats, one_round, call, options, exported.independent)
    return runs[0], dataclasses.replace(state, stopping=stopping), record


def iterate(stats: PopulationStatistics, one_round, call: str, options,
            independent: frozenset[str]) -> tuple[EstimationState, FixedPoint]:
    """Rounds 1, 2, ... from round 0's ``stats`` until the fixed point:
    ``one_round(upstream, k)`` runs round ``k``'s pass on the inference graph
    holding ``upstream`` and gives its statistics and state. Returns the last
    round's state and the record of the rounds."""
    if options.upstream_se is not None and np.isnan(se_change(stats, stats, 0)[0]):
        raise no_standard_errors(call, options)  # before any pass more
    trace = Trace()
    for k in range(1, options.upstream_passes):
        new, state = one_round(stats, k)
        if check_change(stats, new, k, trace, call, options, independent):
            return state, trace.record(options)
        stats = new
    raise not_converged(trace, call, options)


def inference_pass(run: Estimation | None, inputs, outputs, exported,
                   stats: PopulationStatistics, options, call: str,
                   compile_now: bool = True) -> Estimation:
    """The pass over ``exported`` (holding ``stats``): ``run`` again with
    the spec of these values, or a new Estimation (compiled once).

    The spec records the digest of what the pass's graph reads (the model's
    parameters and the values it holds that reach a statistic: the last
    layers' values reach none), so that passes over the same inputs
    share states, and passes over others refuse them."""
    if run is None:
        # target_error decides pass 0's batches; the later passes take them all
        options = dataclasses.replace(options, target_error=None)
        run = Estimation.of(EstimationPlan(inputs, outputs, options, call,
                                           compile_now, exported.graph, "population"))
    upstream = f"population:{run.parameters_digest()[:20]}"
    run.spec = dataclasses.replace(run.spec, upstream=upstream)
    return run


#: how far (relative) a statistic that reads no population value may move
#: between rounds: rounding only (the graphs of rounds 0 and 1 differ)
STILL = 1e-9


def check_change(stats: PopulationStatistics, new: PopulationStatistics, k: int,
                 trace: Trace, call: str, options,
                 independent: frozenset[str] = frozenset()) -> bool:
    """Record round ``k``'s largest change in ``trace``; whether the rule
    of ``options`` stops the rounds (``upstream_tol``, or ``upstream_se``).

    A statistic of ``independent`` (no statistic upstream) must not move:
    if it does, the data or the graph changed between rounds."""
    for name in sorted(independent):
        moved = _relative(stats[name].value, new[name].value)
        if moved > STILL:
            raise PopstatsError(
                f"{call}(batches=...): upstream='population' needs the same data "
                f"and a deterministic graph in every pass, but statistic "
                f"{name!r}, which no other statistic is upstream of, moved by "
                f"{moved:.2g} (relative) from pass {k - 1} to pass {k}: loaders "
                f"that shuffle or augment, or random numbers in the graph? Give "
                f"every pass the same batches (seed each loader the same way), "
                f"or use upstream='batch'."
            )
    change, name = largest_change(stats, new)
    if not np.isfinite(change):
        raise PopstatsError(
            f"{call}(upstream='population'): pass {k} gave non-finite values "
            f"for statistic {name!r}: the inference graph diverges on these "
            f"batches (a variance near 0 upstream?). Estimate with "
            f"upstream='batch', or check the model's epsilon."
        )
    in_se, se_name, trace.unjudged = se_change(stats, new, options.upstream_tol)
    trace.changes.append(change)
    trace.worst.append(name)
    trace.se_changes.append(in_se)
    trace.se_worst.append(se_name)
    log.info("popstats: upstream='population' pass %d: largest relative "
             "change %.3g (%s), %.3g standard errors (%s)", k, change, name,
             in_se, se_name)
    if options.upstream_se is None:
        return change <= options.upstream_tol
    return in_se <= options.upstream_se  # NaN (nothing judged): refused at round 0


def no_standard_errors(call: str, options) -> PopstatsError:
    """``upstream_se`` over statistics none of which has a standard error."""
    return PopstatsError(
        f"{call}(upstream_se=...): stops the passes of upstream='population' "
        f"when every value moved by at most {options.upstream_se:g} of its "
        f"standard error, but no value has a standard error: one needs a cell "
        f"reached by at least 2 batches, and none is. Pass more batches, or "
        f"leave upstream_se out (upstream_tol, a relative change, then stops "
        f"the passes)."
    )


def not_converged(trace: Trace, call: str, options) -> PopstatsError:
    """The error of rounds that did not reach the fixed point."""
    if options.upstream_se is not None:
        shown = ", ".join(f"{c:.2g}" for c in trace.se_changes[-5:])
        return PopstatsError(
            f"{call}(upstream_passes=...): upstream='population' did not reach "
            f"a fixed point in {options.upstream_passes} passes: the largest "
            f"change of the last passes in standard errors was {shown} "
            f"(statistic {trace.se_worst[-1]!r}), above "
            f"upstream_se={options.upstream_se:g}. Allow more passes "
            f"(upstream_passes=...), a larger upstream_se, or, if the changes do "
            f"not fall, estimate with upstream='batch'."
        )
    shown = ", ".join(f"{c:.2g}" for c in trace.changes[-5:])
    return PopstatsError(
        f"{call}(upstream_passes=...): upstream='population' did not reach a "
        f"fixed point in {options.upstream_passes} passes: the largest relative "
        f"change of the last passes was {shown} (statistic {trace.worst[-1]!r}), "
        f"above upstream_tol={options.upstream_tol:g}. Allow more passes "
        f"(upstream_passes=...), a larger upstream_tol, or, if the changes do not "
        f"fall, estimate with upstream='batch'."
    )
