"""One run of an estimation pass over batches: where its state lives.

Stage: estimation. Members:

- :class:`PassContext` -- what a run uses of its
  :class:`~popstats.Estimation` (a frozen record the Estimation makes;
  the handles of an engine, :mod:`~popstats._src.estimation.engines`, are
  given to the runs of that engine), and :class:`Occupancy`, which lets one
  shared-variable run hold the accumulators at a time;
- :class:`HostPass` keeps the state as NumPy arrays and adds each batch's
  statistics on the host
  (:class:`~popstats._src.estimation.accumulate_host.HostAccumulator`); it
  gives each batch's statistics to an ``on_batch`` callback, the hook of
  :meth:`popstats.Estimation.run` that :func:`~popstats.drift` uses;
- :class:`GraphPass` keeps the state in the shared variables of the compiled
  function, which adds each batch itself
  (:mod:`~popstats._src.estimation.accumulate_graph`), and reads it back
  only when a state is wanted: a checkpoint, or the end of the run;
- :func:`explain` -- the host's error for a batch that failed the graph's
  checks.

Every pass (these and :class:`~popstats._src.estimation.device_pass.DevicePass`)
skips the batches a checkpoint already counts and saves checkpoints as the
run goes (:meth:`Pass.run`, the one batch loop), and, with the option
``target_error``, stops where its
:class:`~popstats._src.estimation.stop_rule.StopRule` says.

Members: :data:`BatchCallback`, :class:`GraphPass`, :class:`HostPass`,
:class:`Occupancy`, :class:`Pass`, :class:`PassContext`,
:class:`RunArguments` (what a run is given), :func:`explain`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from popstats._src.errors import PopstatsError
from popstats._src.estimation import estimators as est
from popstats._src.estimation.accumulate_host import HostAccumulator, copy_state
from popstats._src.estimation.spec import PassSpec
from popstats._src.estimation.state import BatchSizes, EstimationState
from popstats._src.export.exporter import Site

if TYPE_CHECKING:
    from popstats._src.estimation.accumulate_graph import GraphAccumulator
    from popstats._src.estimation.state import CheckpointedRun
    from popstats._src.estimation.stop_rule import StopRule

__all__ = ["BatchCallback", "GraphPass", "HostPass", "Occupancy", "Pass",
           "PassContext", "RunArguments", "explain"]

#: ``on_batch(index, per_site)``: batch ``index`` was added; ``per_site[i]``
#: is statistic ``i``'s (value, count, weight) of it, NumPy arrays (count
#: and weight None where not marked)
BatchCallback = Callable[[int, list], None]


@dataclass(frozen=True)
class RunArguments:
    """What :meth:`~popstats.Estimation.run` is given besides the batches, as
    one record: ``run`` makes it, and hands it to
    :meth:`~popstats.Estimation.run_pass` or to the driver of
    ``upstream="population"`` (the meaning of each field is ``run``'s)."""

    state: EstimationState | None = None
    checkpoint: str | os.PathLike | None = None
    checkpoint_every: int = 100
    progress: bool | str = "auto"
    on_batch: BatchCallback | None = None


class Occupancy:
    """Whether a run holds an Estimation's shared-variable accumulators."""

    def __init__(self) -> None:
        self.busy = False

    def take(self, call: str) -> None:
        """Hold the accumulators, or raise if a run holds them already."""
        if self.busy:
            raise PopstatsError(
                f"{call}(batches=...): this Estimation is already running a "
                f"pass (a "
                f"batch generator that runs it again?). Its accumulators hold "
                f"that pass's state: run one pass at a time, or use a second "
                f"Estimation."
            )
        self.busy = True

    def release(self) -> None:
        self.busy = False


@dataclass(frozen=True)
class PassContext:
    """What a run of an estimation pass uses of its Estimation, whatever its
    engine (:mod:`~popstats._src.estimation.engines` gives each run the
    handles of its own).

    Attributes
    ----------
    call : str
        The public call, named in errors.
    spec : PassSpec
        The spec of the states the run makes.
    sites, estimators, max_steps
        As in :class:`~popstats.Estimation`.
    host : HostAccumulator
        Adds a batch's statistics to states on the host.
    values : callable
        ``values(batch, index)``: the batch's input values, checked.
    statistics : callable
        ``statistics(values, index, params=None)``: per statistic (value,
        count, weight) of a batch, NumPy arrays (``params``: the
        parameters on the device, in JAX mode).
    examples : callable
        ``examples(values)``: the number of examples in a batch (None: not
        known), counted in the state's
        :class:`~popstats._src.estimation.state.BatchSizes`.
    """

    call: str
    spec: PassSpec
    sites: tuple[Site, ...]
    estimators: tuple[est.Estimator, ...]
    max_steps: int | None
    host: HostAccumulator
    values: Callable[[Any, int], list]
    statistics: Callable[..., list]
    examples: Callable[[list], int | None] = lambda values: None  # not known


class Pass:
    """A run building a state from a starting one, batch by batch.

    Each run counts its batches' sizes (:attr:`sizes`, from its starting
    state's) as it takes their values (:meth:`take`); :meth:`state` gives
    them with the arrays.
    """

    context: PassContext
    sizes: BatchSizes

    def take(self, batch: Any, index: int) -> list:
        """Batch ``index``'s values, its size counted."""
        values = self.context.values(batch, index)
        self.sizes = self.sizes.add(self.context.examples(values))
        return values

    def with_sizes(self, state: EstimationState) -> EstimationState:
        """``state`` with the sizes this run counted."""
        return dataclasses.replace(state, sizes=self.sizes)

    def step(self, batch: Any) -> int:  # pragma: no cover - abstract
        """Add one batch; returns the number of batches the state counts."""
        raise NotImplementedError

    def state(self) -> EstimationState:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:
        """Release what the run holds (called however it ends)."""

    def run(self, batches: Iterable[Any], skip: int = 0,
            saver: CheckpointedRun | None = None,
            rule: StopRule | None = None) -> EstimationState:
        """Add ``batches`` after the first ``skip``; checkpoint with ``saver``;
        with ``rule`` (``target_error``), stop at the first check of its
        schedule that reaches the target: no later batch is taken from
        ``batches``."""
        try:
            consumed = 0
            stopped = rule is not None and rule.finished
            iterator = iter(batches)
            while not (stopped and consumed >= skip):
                try:
                    batch = next(iterator)
                except StopIteration:
                    break
                position, consumed = consumed, consumed + 1
                if saver is not None:
                    saver.count(batch, position)
                if position < skip:
                    continue
                n = self.step(batch)
                if rule is not None and rule.due(n):
                    stopped = rule.check(self.state())
                if saver is not None and saver.due(n) and not stopped:
                    current = self.state()
                    saver.save(current if rule is None else rule.mark(current))
            final = self.state()
            if rule is not None:
                final = rule.mark(final, final=True, reached=stopped)
            if saver is not None:
                saver.check_consumed(consumed)
                saver.save(final)
            return final
        finally:
            self.close()


class HostPass(Pass):
    """The state as NumPy arrays this run owns, updated batch by batch.

    ``on_batch`` (a :data:`BatchCallback`) is called after each batch is
    added, with its statistics.
    """

    def __init__(self, context: PassContext, state: EstimationState,
                 on_batch: BatchCallback | None = None,
                 params: list | None = None) -> None:
        self.context = context
        self.on_batch = on_batch
        self.current = copy_state(state)
        self.sizes = state.sizes
        # JAX: the parameters on the device, put there once per pass
        self.params = params

    def step(self, batch: Any) -> int:
        context, index = self.context, self.current.n_batches
        per_site = context.statistics(self.take(batch, index), index,
                                      self.params)
        states = context.host.add(list(self.current.states), per_site, index)
        self.current = EstimationState(self.current.spec, tuple(states), index + 1)
        if self.on_batch is not None:
            self.on_batch(index, per_site)
        return index + 1

    def state(self) -> EstimationState:
        return self.with_sizes(self.current)


class GraphPass(Pass):
    """The state in the compiled function's accumulators.

    An :class:`~popstats.Estimation` has one set of accumulators, so it runs
    one such pass at a time (``occupancy``, its engine's). ``function`` is
    the compiled function that adds a batch to ``graph`` and returns its
    checks.
    """

    def __init__(self, context: PassContext, state: EstimationState,
                 graph: GraphAccumulator, function: Callable[..., Any],
                 occupancy: Occupancy) -> None:
        self.context = context
        self.graph = graph
        self.function = function
        self.occupancy = occupancy
        occupancy.take(context.call)
        try:
            self.graph.load(state)
            self.n = state.n_batches
            self.sizes = state.sizes
            self.own = self.graph.own_shapes()
        except BaseException:
            occupancy.release()
            raise

    def step(self, batch: Any) -> int:
        values = self.take(batch, self.n)
        try:
            checks, fit, *returned = self.function(*values)
        except Exception:
            # The accumulators are written only when the whole call succeeds:
            # let the host path add this batch, or raise its error for it (a
            # loop of zero steps, whose outputs PyTensor shapes unlike their
            # static shape, takes this way too).
            self._on_host(values)
            return self.n
        if not fit:
            # the first batch, or more time steps than so far: the
            # accumulators are unchanged and the batch's statistics returned;
            # the host grows the state (or raises the error of a batch of
            # another shape)
            self._on_host(values, self.graph.per_site(returned))
            return self.n
        if not np.all(checks):
            explain(self.context, values, self.own, self.n)
        self.n += 1
        return self.n

    def _on_host(self, values: list, per_site: list | None = None) -> None:
        """Add one batch on the host, to the state read from the graph
        (``per_site``: its statistics, if already computed)."""
        context = self.context
        if per_site is None:
            per_site = context.statistics(values, self.n)
        current = self.state()  # read from the graph: arrays of its own
        states = context.host.add(list(current.states), per_site, self.n)
        self.n += 1
        self.graph.load(EstimationState(current.spec, tuple(states), self.n))
        self.own = self.graph.own_shapes()

    def state(self) -> EstimationState:
        return self.with_sizes(self.graph.read(self.context.spec, self.n))

    def close(self) -> None:
        self.occupancy.release()


def explain(context: PassContext, values: list,
            own: Sequence[tuple[int, ...] | None], index: int) -> None:
    """Raise the error the host checks give for batch ``index``, which failed
    the checks of a graph pass (``own``: per statistic its shape so far)."""
    states = [
        {} if shape is None else est.init(estimator, site.role, shape,
                                          site.time_axes)
        for site, estimator, shape in zip(context.sites, context.estimators, own,
                                          strict=True)
    ]
    context.host.add(states, context.statistics(values, index), index)
    raise PopstatsError(  # pragma: no cover - the host checks raise first
        f"{context.call}(batches=...): batch {index} failed the estimation "
        f"graph's checks (values finite, counts valid, shapes as earlier "
        f"batches). Run it with Estimation(..., accumulate='host') to see "
        f"which statistic."
    )
