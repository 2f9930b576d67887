"""The estimation pass: run the estimation graph over batches.

Stage: estimation. :class:`Estimation` compiles the estimation graph once
and keeps, per statistic, the state of its estimator
(:mod:`~popstats._src.estimation.estimators`): streaming, float64, memory
independent of the number of batches. In the style of Optax, ``init`` /
``update`` / ``merge`` / ``finalize`` work on an :class:`EstimationState`,
which can be saved mid-pass and resumed. Its options are an
:class:`~popstats._src.estimation.options.EstimationOptions`; a run gets a
:class:`~popstats._src.estimation.passes.PassContext` of it.

Inside loops the estimate is per time step, over the batches that reached
each step (coverage); cells no batch reached are filled from the nearest
covered earlier step (:func:`fill_uncovered`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pytensor
from pytensor.graph.basic import Variable
from pytensor.graph.traversal import graph_inputs
from pytensor.tensor.sharedvar import TensorSharedVariable

from popstats._src.errors import PopstatsError, check_bool, describe_value
from popstats._src.estimation import estimators as est
from popstats._src.estimation import upstream as up
from popstats._src.estimation.accumulate_graph import GraphAccumulator
from popstats._src.estimation.accumulate_host import HostAccumulator
from popstats._src.estimation.batches import (
    batch_digest,
    batch_values,
    check_inputs,
    iterate,
    run_error,
)
from popstats._src.estimation.combine import check_state, finalize_state, merge_states
from popstats._src.estimation.device_function import DeviceFunction, is_jax
from popstats._src.estimation.device_pass import DevicePass
from popstats._src.estimation.estimators import fill_uncovered
from popstats._src.estimation.options import EstimationOptions, takes_options
from popstats._src.estimation.partners import check_counts, find_partners
from popstats._src.estimation.passes import (
    BatchCallback,
    GraphPass,
    HostPass,
    Occupancy,
    Pass,
    PassContext,
)
from popstats._src.estimation.state import (
    EstimationState,
    PassSpec,
    StatisticSpec,
    parameters_digest,
)
from popstats._src.estimation.statistics import PopulationStatistics
from popstats._src.estimation.upstream import one_batch_error
from popstats._src.export.exporter import Site, as_variables, export_checked
from popstats._src.export.sites import EstimationGraph
from popstats._src.export.time_modes import check_patterns
from popstats._src.graph.pytensor_ml import warn_dropout

if TYPE_CHECKING:
    from typing import Unpack

    from popstats._src.estimation.options import OptionKeywords

__all__ = ["Estimation", "EstimationState", "fill_uncovered"]


@takes_options
class Estimation:
    """An estimation pass over a graph, compiled once.

    Parameters
    ----------
    inputs, outputs
        As for :func:`estimate`.
    [estimation options]
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
        compile_now: bool = True,
        call: str = "Estimation",
        **options: Unpack[OptionKeywords],
    ):
        outs = as_variables(outputs, call)
        self._build(inputs, outs, EstimationOptions.check(call, options),
                    compile_now, call)

    @classmethod
    def from_options(
        cls,
        inputs: Sequence[Variable],
        outputs: Variable | Sequence[Variable],
        options: EstimationOptions,
        *,
        compile_now: bool = True,
        call: str = "Estimation",
    ) -> Estimation:
        """An Estimation with ``options`` checked already (by
        :meth:`EstimationOptions.check
        <popstats._src.estimation.options.EstimationOptions.check>`, naming
        ``call``): how the public calls that take the options build it."""
        new = cls.__new__(cls)
        new._build(inputs, as_variables(outputs, call), options, compile_now, call)
        return new

    @classmethod
    def of_graph(
        cls, inputs: Sequence[Variable], outputs: Sequence[Variable],
        graph: EstimationGraph, options: EstimationOptions, call: str,
        upstream: str, compile_now: bool = True,
    ) -> Estimation:
        """The pass over an estimation graph made by a later stage (the
        inference graph's, :mod:`popstats._src.upstream.inference_export`);
        ``upstream`` goes into its :class:`PassSpec`."""
        new = cls.__new__(cls)
        new._build(inputs, list(outputs), options, compile_now, call, graph,
                   upstream)
        return new

    def _build(self, inputs: Sequence[Variable], outs: list[Variable],
               options: EstimationOptions, compile_now: bool, call: str,
               graph: EstimationGraph | None = None,
               upstream: str = "batch") -> None:
        compile_now = check_bool(compile_now, f"{call}(compile_now=...)")
        if graph is None:
            graph = export_checked(outs, call, options.time)
            warn_dropout(outs, call, options.upstream)
        #: the inputs and outputs it was built from
        self.given = (tuple(inputs), tuple(outs))
        #: with ``upstream="population"``, the passes of the last :meth:`run`
        self.fixed_point: up.FixedPoint | None = None
        self._final: Estimation | None = None
        #: the options this pass was built with
        self.options = options
        self.dtypes = options.dtypes
        self.call = call
        self.sites: tuple[Site, ...] = graph.sites
        self.inputs = check_inputs(inputs, graph, outs, call)
        estimator, max_steps = options.estimator, options.max_steps
        if isinstance(estimator, Mapping):
            check_patterns(estimator, self.sites, call, "estimator")
        self.estimators = tuple(
            est.resolve_estimator(estimator, s.name, s.label, call) for s in self.sites
        )
        self.max_steps = max_steps
        self.spec = PassSpec(
            tuple(StatisticSpec.of(s, e)
                  for s, e in zip(self.sites, self.estimators, strict=True)),
            max_steps, upstream,
        )
        self.partners = find_partners(self.sites, self.estimators, call)
        check_counts(self.sites, self.estimators, call)
        flat, slots = [], []
        for trio in zip(graph.outputs, graph.counts, graph.weights, strict=True):
            slot = []
            for var in trio:
                slot.append(None if var is None else len(flat))
                if var is not None:
                    flat.append(var)
            slots.append(tuple(slot))
        #: per statistic, the positions of (value, count, weight) among the
        #: estimation function's outputs (None: not marked)
        self.slots: tuple[tuple[int | None, ...], ...] = tuple(slots)
        self._flat_outputs, self._mode = flat, options.mode
        #: the model's parameters: a checkpoint records their digest
        self._shared = [v for v in graph_inputs(flat)
                        if isinstance(v, TensorSharedVariable)]
        self._host = HostAccumulator(self.sites, self.estimators, self.partners,
                                     self.slots, max_steps, call)
        self._fn = self._graph = self._gfn = self._device = None
        self._jax = is_jax(options.mode)  # params on the device once per pass
        if options.accumulate == "graph" and not self._jax:
            trios = zip(graph.outputs, graph.counts, graph.weights, strict=True)
            self._graph = GraphAccumulator(self.sites, self.estimators,
                                           self.partners, list(trios), max_steps)
        #: "graph" or "host": where this pass accumulates
        self.accumulate = options.accumulate
        self._occupancy = Occupancy()
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
                self._device = DeviceFunction(
                    self.inputs, self._flat_outputs, self._mode, self.sites,
                    self.estimators, self.partners, self.max_steps)
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

    def parameters_digest(self) -> str:
        """The digest of the model parameters' current values.

        A checkpoint records it (a run resumes only with the same values);
        :mod:`popstats.dask` sends a graph again when it changes.
        """
        return parameters_digest(self._shared)

    def init(self) -> EstimationState:
        """An empty state."""
        return EstimationState(self.spec, ({},) * len(self.sites))

    def update(self, state: EstimationState, batch: Any) -> EstimationState:
        """Run one batch and add its statistics; returns a new state.

        ``state`` is not changed (its arrays are copied first; :meth:`run`
        copies once per pass instead).
        """
        if self.options.upstream == "population":
            raise one_batch_error(self._method("update", "batch"))
        state = self.check_state(
            state, self._method("update", "state"),
            "Pass a state made by this Estimation (or one of the same graph and "
            "options).",
        )
        return self._pass(state).run([batch])

    def _batch_digest(self, batch: Any, index: int) -> bytes:
        """What identifies a batch's data (checkpoints record it)."""
        return batch_digest(batch, self.inputs, index, self.call)

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
                for slot in self.slots]

    def _context(self) -> PassContext:
        """What a run uses of this pass (compiled first)."""
        self._compile()
        return PassContext(
            self.call, self.spec, self.sites, self.estimators, self.max_steps,
            self.slots, self._host, self._values, self._statistics,
            self._occupancy, self._graph, self._gfn, self._device,
        )

    def _pass(self, state: EstimationState,
              on_batch: BatchCallback | None = None) -> Pass:
        """A run from ``state``: in the graph's accumulators, or on the host
        (always, with ``on_batch``: it is given each batch's statistics)."""
        context = self._context()
        if on_batch is not None:
            return HostPass(context, state, on_batch)
        if self._device is not None and self.accumulate == "graph":
            return DevicePass(context, state)
        if self._graph is not None:
            return GraphPass(context, state)
        return HostPass(context, state)

    def run(
        self,
        batches: Iterable[Any],
        state: EstimationState | None = None,
        *,
        checkpoint: str | os.PathLike | None = None,
        checkpoint_every: int = 100,
        progress: bool | str = "auto",
        on_batch: BatchCallback | None = None,
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
        stderr is a terminal). Without tqdm (``pip install tqdm``) there is
        no bar.

        ``on_batch(index, per_site)``, if given, is called after each batch
        is added: ``index`` counts the batches of the state (from those of
        ``state``), ``per_site[i]`` is the batch's ``(value, count,
        weight)`` of statistic ``i`` (in :attr:`sites` order; NumPy arrays,
        count and weight None where not marked). The run then adds the
        batches on the host, where their statistics are (the same numbers
        as ``accumulate="graph"``); batches a checkpoint already counts are
        skipped, so they are not given to ``on_batch``.

        >>> import numpy as np, pytensor.tensor as pt, popstats
        >>> x = pt.vector("x")
        >>> y = x - popstats.bn_statistic(x.mean(), label="m")
        >>> run = popstats.Estimation([x], y)
        >>> seen = []
        >>> state = run.run([{"x": [1.0, 3.0]}, {"x": [5.0]}],
        ...                 on_batch=lambda i, stats: seen.append(float(stats[0][0])))
        >>> seen, float(run.finalize(state)["m"].value)
        ([2.0, 5.0], 3.5)

        With ``upstream="population"``, ``run`` takes the passes to the fixed
        point (:doc:`/upstream`; :attr:`fixed_point` records them) and
        returns the last pass's state; ``state`` and ``on_batch`` are refused.
        """
        from popstats._src.estimation.checkpoint import check_every, open_checkpoint
        from popstats._src.estimation.progress import check_progress, progress_bar

        if self.options.upstream == "population" and self.spec.upstream == "batch":
            # the passes to the fixed point (popstats._src.upstream.fixed_point)
            self._final, last, self.fixed_point = up.fixed_point_driver(self.call)(
                self, batches, state, on_batch, checkpoint, checkpoint_every,
                progress)
            return last
        show = check_progress(progress, self._method("run", "progress")[:-len(
            "(progress=...)")])
        if on_batch is not None and not callable(on_batch):
            raise PopstatsError(
                f"{self._method('run', 'on_batch')}: expected a callable "
                f"on_batch(index, per_site) or None, got {describe_value(on_batch)}."
            )
        given = None
        if state is not None:
            given = self.check_state(
                state, self._method("run", "state"),
                "Pass a state made by an Estimation of the same graph and options.",
            )
        saver = None
        if checkpoint is None:
            check_every(checkpoint_every, self._method("run", "checkpoint_every"))
            state = self.init() if given is None else given
        else:
            saver, state = open_checkpoint(
                checkpoint, checkpoint_every, given, self.init(), self.check_state,
                self._method("run", "checkpoint"), self.parameters_digest(),
                self._batch_digest,
            )
        skip = 0 if saver is None else saver.skip
        stream = progress_bar(iterate(batches, self.call), batches, show)
        return self._pass(state, on_batch).run(stream, skip, saver)

    def _method(self, name: str, argument: str) -> str:
        """How errors name a method's argument: ``Estimation.run(state=...)``."""
        if self.call == "Estimation":
            return f"Estimation.{name}({argument}=...)"
        return f"{self.call}({argument}=...)"

    def check_state(self, state: object, where: str, fix: str) -> EstimationState:
        """``state`` if it is a state of this pass (same spec), else raise.

        ``where`` names the call and argument in the error
        (``"Estimation.run(state=...)"``), ``fix`` says what to pass instead.
        """
        return check_state(self.spec, self.sites, self.estimators, state, where,
                           fix)

    def merge(self, a: EstimationState, b: EstimationState) -> EstimationState:
        """The state over the batches of ``a`` and ``b`` together (exact)."""
        fix = up.fix_for(a, "Merge states made by Estimations of the same graph and "
                         "options.")
        if self._final is not None and a.spec.upstream != "batch":
            return self._final.merge(a, b)
        self.check_state(a, self._method("merge", "a"), fix)
        self.check_state(b, self._method("merge", "b"), fix)
        return merge_states(self.sites, self.estimators, a, b)

    def finalize(self, state: EstimationState) -> PopulationStatistics:
        """The population statistics of a state."""
        if self._final is not None and getattr(getattr(state, "spec", None),
                                               "upstream", "batch") != "batch":
            return self._final.finalize(state).with_fixed_point(self.fixed_point)
        self.check_state(
            state, self._method("finalize", "state"),
            up.fix_for(state, "Finalize a state made by an Estimation of the same "
                           "graph."),
        )
        return finalize_state(self.call, self.sites, self.estimators,
                              self.max_steps, state)
