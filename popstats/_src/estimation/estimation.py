"""Estimator: run the estimation graph over batches into population values.

:class:`Estimation` compiles the estimation graph once and keeps, per
statistic, the state of its estimator (see ``estimators.py``): streaming,
float64, memory independent of the number of batches. In the style of
Optax, ``init`` / ``update`` / ``merge`` / ``finalize`` work on an
:class:`EstimationState`, which can be saved mid-pass and resumed.

Inside loops the estimate is per time step, over the batches that reached
each step (coverage); cells no batch reached are filled from the nearest
covered earlier step (:func:`fill_uncovered`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pytensor
from pytensor.graph.basic import Variable
from pytensor.graph.traversal import graph_inputs
from pytensor.tensor.sharedvar import TensorSharedVariable

from popstats._src.errors import PopstatsError, check_bool, check_choice, describe_value
from popstats._src.estimation import estimators as est
from popstats._src.estimation.accumulate_graph import GraphAccumulator
from popstats._src.estimation.accumulate_host import (
    HostAccumulator,
    describe_arrays,
    fits,
    stat_shape,
)
from popstats._src.estimation.batches import (
    batch_values,
    check_dtypes,
    check_inputs,
    iterate,
    run_error,
)
from popstats._src.estimation.device_pass import DeviceFunction, DevicePass, is_jax
from popstats._src.estimation.estimators import fill_uncovered
from popstats._src.estimation.options import check_max_steps, check_mode
from popstats._src.estimation.partners import check_counts, find_partners
from popstats._src.estimation.passes import GraphPass, HostPass
from popstats._src.estimation.state import (
    EstimationState,
    PassSpec,
    StatisticSpec,
    parameters_digest,
    spec_differences,
)
from popstats._src.estimation.statistics import PopulationStatistics, Statistic
from popstats._src.export.exporter import Site, as_variables, export_checked
from popstats._src.export.time_modes import check_patterns

__all__ = ["ACCUMULATE", "Estimation", "EstimationState", "fill_uncovered"]

#: where an estimation pass adds up its batches (option -> meaning)
ACCUMULATE = {
    "graph": "in the compiled function, float64 accumulators in shared variables",
    "host": "in NumPy after each batch",
}

log = logging.getLogger("popstats")


class Estimation:
    """An estimation pass over a graph, compiled once.

    Parameters
    ----------
    inputs, outputs
        As for :func:`estimate`.
    estimator : str, Estimator or dict, default "mean"
        ``"mean"``, ``"weighted"``, ``"pooled"``, ``"unbiased"``, ``"ema"``,
        an :class:`~popstats.Estimator`, or a dict from label pattern
        (``fnmatch``) to those; first match wins, unmatched use ``"mean"``.
    time : "step", "pooled", tuple or dict, default "step"
        Per-step statistics inside loops, or one value for all steps; see
        :func:`~popstats.export`; a dict's patterns match names or labels.
        Pooled over a loop's steps, each batch's statistic is that of all
        its elements over those steps (steps weighed by ``count`` when
        given, else equally; a variance with its paired mean exactly, the
        between-step spread included), and every estimator combines these
        per-batch values as it combines batches: so ``"unbiased"`` is
        ``"mean"`` times M/(M-1), M the elements per batch (see
        :doc:`/estimators`).
    max_steps : int, optional
        Keep at most this many steps per time axis; later steps are not
        estimated and, at inference, use the last kept one. Pooled loops
        combine all their steps.
    mode : str or Mode, optional
        Compilation mode of the estimation function.
    dtypes : {"convert", "strict"}, default "convert"
        Batch values of another dtype than their input's are converted when
        nothing that matters is lost (integers in range, finite floats; see
        ``batches.py``), otherwise refused; ``"strict"`` refuses any other
        dtype.
    accumulate : {"host", "graph"}, default "host"
        ``"host"``: the function returns the statistics and NumPy adds them
        (float64). ``"graph"``: the compiled function adds them to float64
        accumulators in shared variables (``accumulate_graph.py``): one call
        per batch whatever the number of statistics, nothing copied back per
        batch, the state read once per run (and per checkpoint); the same
        numbers. On CPU ``"host"`` is as fast or faster
        (``benchmarks/estimation_cost.py --accumulate``); ``"graph"`` is for
        devices. In JAX mode the model's parameters (taken when the pass
        starts) go to the device once per pass, and ``"graph"`` keeps the
        accumulators there too; without 64-bit floats (``floatX="float32"``) the
        accumulators are float32, folded into float64 on the host every 16
        batches (see :doc:`/pytensor-versions`, "Estimation in each
        backend"). One Estimation runs one shared-variable graph pass at a
        time (its accumulators hold it).
    compile_now : bool, default True
        Compile the estimation function now; False defers it to the first
        batch, for a process that only merges and finalizes states (the
        client of :mod:`popstats.dask`, whose workers run the batches).

    States are values: :meth:`update`, :meth:`run` and :meth:`merge` return
    new states and never change the ones they are given (``run`` copies a
    given state once, then updates its own copy batch by batch). A state
    carries the :class:`~popstats._src.estimation.state.PassSpec` of the pass that made
    it (statistics, time modes, estimators, ``max_steps``); resuming,
    merging and finalizing refuse states of another spec, naming what
    differs.

    Examples
    --------
    Two halves of the data, estimated apart and merged, give the estimate of
    all of it:

    >>> import numpy as np, pytensor.tensor as pt, popstats
    >>> x = pt.matrix("x")
    >>> n = x.shape[0]
    >>> m = popstats.bn_statistic(x.mean(0), "m", role="mean", group="g", count=n)
    >>> v = popstats.bn_statistic(x.var(0), "v", role="var", group="g", count=n)
    >>> run = popstats.Estimation([x], (x - m) / pt.sqrt(v + 1e-5), estimator="pooled")
    >>> data = np.random.default_rng(0).normal(size=(100, 3))
    >>> a = run.run([{"x": data[:30]}, {"x": data[30:45]}])
    >>> b = run.run([{"x": data[45:]}])
    >>> stats = run.finalize(run.merge(a, b))
    >>> np.allclose(stats["v"].value, data.var(0), rtol=1e-10)
    True
    """

    def __init__(
        self,
        inputs: Sequence[Variable],
        outputs: Variable | Sequence[Variable],
        *,
        estimator: object = "mean",
        time: object = "step",
        max_steps: int | None = None,
        mode: str | pytensor.compile.Mode | None = None,
        dtypes: str = "convert",
        accumulate: str = "host",
        compile_now: bool = True,
        call: str = "Estimation",
    ):
        outs = as_variables(outputs, call)
        self.dtypes = check_dtypes(dtypes, call)
        compile_now = check_bool(compile_now, f"{call}(compile_now=...)")
        accumulate = check_choice(accumulate, ACCUMULATE, f"{call}(accumulate=...)")
        max_steps = check_max_steps(max_steps, call)
        check_mode(mode, call)
        est.check_estimator_spec(estimator, call)
        graph = export_checked(outs, call, time)
        self.call = call
        self.sites: tuple[Site, ...] = graph.sites
        self.inputs = check_inputs(inputs, graph, outs, call)
        if isinstance(estimator, Mapping):
            check_patterns(estimator, self.sites, call, "estimator")
        self.estimators = tuple(
            est.resolve_estimator(estimator, s.name, s.label, call) for s in self.sites
        )
        self.max_steps = max_steps
        self.spec = PassSpec(
            tuple(StatisticSpec.of(s, e)
                  for s, e in zip(self.sites, self.estimators, strict=True)),
            max_steps,
        )
        self.partners = find_partners(self.sites, self.estimators, call)
        check_counts(self.sites, self.estimators, call)
        flat, self._slots = [], []
        for trio in zip(graph.outputs, graph.counts, graph.weights, strict=True):
            slot = []
            for var in trio:
                slot.append(None if var is None else len(flat))
                if var is not None:
                    flat.append(var)
            self._slots.append(tuple(slot))
        self._flat_outputs, self._mode = flat, mode
        #: the model's parameters: a checkpoint records their digest
        self._shared = [v for v in graph_inputs(flat)
                        if isinstance(v, TensorSharedVariable)]
        self._host = HostAccumulator(self.sites, self.estimators, self.partners,
                                     self._slots, max_steps, call)
        self._fn = self._graph = self._gfn = self._device = None
        self._jax = is_jax(mode)  # params on the device once per pass (passes.py)
        if accumulate == "graph" and not self._jax:
            trios = zip(graph.outputs, graph.counts, graph.weights, strict=True)
            self._graph = GraphAccumulator(self.sites, self.estimators,
                                           self.partners, list(trios), max_steps)
        #: "graph" or "host": where this pass accumulates
        self.accumulate = accumulate
        self._busy = False
        if compile_now:
            self._compile()

    @property
    def compiled(self) -> bool:
        """Whether the estimation function is compiled (see ``compile_now``)."""
        return (self._device if self._jax else self._fn if self._graph is None
                else self._gfn) is not None

    def _compile(self) -> None:
        """Compile the function this pass runs its batches with (once)."""
        if self._jax and self._device is None:
            try:
                self._device = DeviceFunction(self, self._mode)
                self._fn = self._device.function
            except TypeError:  # pragma: no cover - another JAX linker layout
                self._jax, self.accumulate = False, "host"
                self._graph = None
        if self._jax:
            return
        if self._graph is None:
            self._host_fn()
        elif self._gfn is None:
            self._gfn = pytensor.function(self.inputs, self._graph.checks,
                                          updates=self._graph.updates,
                                          mode=self._mode, on_unused_input="ignore")

    def _host_fn(self):
        """The function returning the statistics of a batch (compiled once)."""
        if self._fn is None:
            self._fn = pytensor.function(
                self.inputs, self._flat_outputs, mode=self._mode,
                on_unused_input="ignore",
            )
        return self._fn

    def init(self) -> EstimationState:
        """An empty state."""
        return EstimationState(self.spec, ({},) * len(self.sites))

    def update(self, state: EstimationState, batch: Any) -> EstimationState:
        """Run one batch and add its statistics; returns a new state.

        ``state`` is not changed (its arrays are copied first; :meth:`run`
        copies once per pass instead).
        """
        state = self._check_state(
            state, self._method("update", "state"),
            "Pass a state made by this Estimation (or one of the same graph and "
            "options).",
        )
        return self._pass(state).run([batch], self)

    def _values(self, batch: Any, index: int) -> list:
        """A batch's values, checked and converted for the inputs."""
        return batch_values(batch, self.inputs, index, self.call, self.dtypes)

    def _statistics(self, values: list, index: int, params: Any = None) -> list:
        """Per statistic (value, count, weight) of a batch, on the host."""
        try:
            results = (self._host_fn()(*values) if params is None
                       else self._device.jit(*values, *params))
        except Exception as exc:
            raise run_error(self.call, exc, values, index, self.inputs,
                            self.sites) from exc
        # NumPy arrays: an in-place NumPy update with a JAX operand does nothing
        return [tuple(None if k is None else np.asarray(results[k]) for k in slot)
                for slot in self._slots]

    def _pass(self, state: EstimationState) -> DevicePass | GraphPass | HostPass:
        """A run from ``state``: in the graph's accumulators, or on the host."""
        self._compile()
        if self._device is not None and self.accumulate == "graph":
            return DevicePass(self, state)
        if self._graph is not None:
            return GraphPass(self, state)
        return HostPass(self, state)

    def run(
        self,
        batches: Iterable[Any],
        state: EstimationState | None = None,
        *,
        checkpoint: str | os.PathLike | None = None,
        checkpoint_every: int = 100,
        progress: bool | str = "auto",
    ) -> EstimationState:
        """Update over ``batches``; optionally checkpoint and resume.

        With ``checkpoint``, the state is saved there every
        ``checkpoint_every`` batches of this run and at its end. If the file
        exists when the run starts, the run resumes from it: call ``run``
        again as it was first called (the same batches, the same ``state``);
        the batches the checkpoint counts are skipped, not computed, and the
        result equals an uninterrupted run. A checkpoint of another graph or
        other options, of a run from another starting state, or with more
        batches than are given again is refused (:doc:`/estimators`,
        "States and checkpoints").

        ``progress`` shows a tqdm bar (batches, rate, and time left when
        ``batches`` has a ``len``): True, False, or ``"auto"`` (only when
        stderr is a terminal). Without tqdm (``pip install
        popstats[progress]``) there is no bar.
        """
        from popstats._src.estimation.checkpoint import check_every, open_checkpoint
        from popstats._src.estimation.progress import check_progress, progress_bar

        show = check_progress(progress, self._method("run", "progress")[:-len(
            "(progress=...)")])
        given = None
        if state is not None:
            given = self._check_state(
                state, self._method("run", "state"),
                "Pass a state made by an Estimation of the same graph and options.",
            )
        saver = None
        if checkpoint is None:
            check_every(checkpoint_every, self._method("run", "checkpoint_every"))
            state = self.init() if given is None else given
        else:
            saver, state = open_checkpoint(
                checkpoint, checkpoint_every, given, self.init(), self._check_state,
                self._method("run", "checkpoint"), parameters_digest(self._shared),
            )
        skip = 0 if saver is None else saver.skip
        stream = progress_bar(iterate(batches, self.call), batches, show)
        work = self._pass(state)
        state = work.run(stream, self, skip, saver)
        return state

    def _method(self, name: str, argument: str) -> str:
        """How errors name a method's argument: ``Estimation.run(state=...)``."""
        if self.call == "Estimation":
            return f"Estimation.{name}({argument}=...)"
        return f"{self.call}({argument}=...)"

    def _check_state(self, state: object, where: str, fix: str) -> EstimationState:
        """``state`` if it is a state of this pass (same spec), else raise."""
        if not isinstance(state, EstimationState):
            raise PopstatsError(
                f"{where}: expected an EstimationState (from Estimation.init, run, "
                f"update or merge, or popstats.load_state), got "
                f"{describe_value(state)}."
            )
        differences = spec_differences(state.spec, self.spec)
        if differences:
            raise PopstatsError(
                f"{where}: the state was made by another estimation pass: "
                f"{'; '.join(differences)}. Its arrays would be read as this "
                f"pass's and give wrong numbers. {fix}"
            )
        if len(state.states) != len(self.sites):
            raise PopstatsError(
                f"{where}: the state holds {len(state.states)} statistics' "
                f"arrays for {len(self.sites)} statistics; it is damaged. {fix}"
            )
        for site, estimator, arrays in zip(
            self.sites, self.estimators, state.states, strict=True
        ):
            if arrays and not fits(arrays, site, estimator):
                raise PopstatsError(
                    f"{where}: the arrays of statistic {site.name!r} in the state "
                    f"({describe_arrays(arrays)}) do not fit a {estimator.name!r} "
                    f"state of shape {site.shape} with {site.time_axes} time "
                    f"axes; the state is damaged. {fix}"
                )
        return state

    def merge(self, a: EstimationState, b: EstimationState) -> EstimationState:
        """The state over the batches of ``a`` and ``b`` together (exact)."""
        fix = "Merge states made by Estimations of the same graph and options."
        self._check_state(a, self._method("merge", "a"), fix)
        self._check_state(b, self._method("merge", "b"), fix)
        states = []
        for i, (sa, sb) in enumerate(zip(a.states, b.states, strict=True)):
            if not sa or not sb:
                states.append({k: v.copy() for k, v in (sa or sb).items()})
                continue
            site = self.sites[i]
            shape_a = stat_shape(sa, site.time_axes)
            shape_b = stat_shape(sb, site.time_axes)
            if shape_a != shape_b:
                raise PopstatsError(
                    f"Estimation.merge(b=...): statistic {site.name!r} (in "
                    f"{site.where}) has shape {shape_b} in b but {shape_a} in a. "
                    f"States of one statistic must come from batches with the same "
                    f"feature sizes; merge states of the same model and data."
                )
            states.append(est.merge(self.estimators[i], site.role, sa, sb))
        return EstimationState(a.spec, tuple(states), a.n_batches + b.n_batches)

    def finalize(self, state: EstimationState) -> PopulationStatistics:
        """The population statistics of a state."""
        self._check_state(
            state, self._method("finalize", "state"),
            "Finalize a state made by an Estimation of the same graph.",
        )
        if state.n_batches == 0:
            if self.call == "Estimation":  # the pass's own API: a state given
                raise PopstatsError(
                    "Estimation.finalize(state=...): the state counts no "
                    "batches. Add batches first (Estimation.run or update; a "
                    "generator that was already consumed is empty)."
                )
            raise PopstatsError(
                f"{self.call}(batches=...): no batches. Pass a non-empty iterable "
                f"of training batches (a generator that was already consumed is "
                f"empty)."
            )
        stats = []
        for site, estimator, arrays in zip(
            self.sites, self.estimators, state.states, strict=True
        ):
            coverage = arrays.get("n", np.zeros(0, np.int64))
            if coverage.size == 0 or not coverage.any():
                raise PopstatsError(
                    f"{self.call}(batches=...): statistic {site.name!r} (in "
                    f"{site.where}) was never computed: every batch ran its loop "
                    f"for zero steps, or its count was 0 (a mask left no "
                    f"element). Give batches with non-empty sequences."
                )
            value = fill_uncovered(est.finalize(estimator, site.role, arrays), coverage)
            stats.append(
                Statistic(site.name, site.label, site, value, coverage.copy(),
                          int(coverage.max()), estimator, self.max_steps)
            )
        result = PopulationStatistics(tuple(stats))
        for stat in result.values():
            if stat.uncovered_steps or stat.thin_steps:
                log.warning(
                    "statistic %r: %d step(s) never reached (filled from earlier "
                    "steps), %d reached by under 10%% of the batches",
                    stat.name, stat.uncovered_steps, stat.thin_steps,
                )
        return result
