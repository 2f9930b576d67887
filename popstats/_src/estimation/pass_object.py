"""The :class:`Estimation` object: the estimation graph compiled once, run over batches.

Stage: estimation. :class:`Estimation` compiles the estimation graph once
and keeps, per statistic, the state of its estimator
(:mod:`~popstats._src.estimation.estimators`): streaming, float64, memory
independent of the number of batches. In the style of Optax, ``init`` /
``update`` / ``merge`` / ``finalize`` work on an :class:`EstimationState`,
which can be saved mid-pass and resumed. Its options are an
:class:`~popstats._src.estimation.options.EstimationOptions`.

Built one way: ``Estimation(inputs, outputs, **options)`` makes an
:class:`~popstats._src.estimation.plan.EstimationPlan` of its arguments,
and the calls that check the options themselves, or give the estimation
graph of a later stage, build it with :meth:`Estimation.of` of a plan. Its
engine (host, graph or device, :mod:`~popstats._src.estimation.engines`) is
chosen then, once; each pass
(:meth:`Estimation.run_pass`) is a run of that engine
(:mod:`~popstats._src.estimation.passes`), given a
:class:`~popstats._src.estimation.passes.PassContext`.

With ``upstream="population"``, :meth:`Estimation.run` hands its passes to
a :class:`PassDriver`, the class attribute :attr:`Estimation.driver`:
estimation never imports the stage that runs them, and
``popstats/__init__.py`` is the one place that sets it (to
:class:`~popstats._src.upstream.fixed_point.FixedPointDriver`). A driver
uses only public members: :attr:`~Estimation.call`,
:attr:`~Estimation.options`, :attr:`~Estimation.given`,
:meth:`~Estimation.where`, :meth:`~Estimation.batch_digest`,
:meth:`~Estimation.run_pass`, :meth:`~Estimation.finalize`.

Inside loops the estimate is per time step, over the batches that reached
each step (coverage); cells no batch reached are filled from the nearest
covered earlier step (:func:`fill_uncovered`).

Members: :class:`Estimation`, :class:`PassDriver`, :class:`DrivenRun`;
re-exported: :class:`EstimationState`, :func:`fill_uncovered`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np
from pytensor.graph.basic import Variable
from pytensor.graph.traversal import graph_inputs
from pytensor.tensor.sharedvar import TensorSharedVariable

from popstats._src.errors import PopstatsError, check_bool, describe_value
from popstats._src.estimation import estimators as est
from popstats._src.estimation import upstream as up
from popstats._src.estimation.accumulate_host import HostAccumulator
from popstats._src.estimation.batches import (
    batch_digest,
    batch_values,
    check_inputs,
    iterate,
    run_error,
)
from popstats._src.estimation.combine import check_state, finalize_state, merge_states
from popstats._src.estimation.engines import choose_engine
from popstats._src.estimation.estimators import fill_uncovered
from popstats._src.estimation.examples_count import example_axis, examples_statistics
from popstats._src.estimation.options import EstimationOptions, takes_options
from popstats._src.estimation.partners import check_counts, find_partners
from popstats._src.estimation.passes import (
    BatchCallback,
    HostPass,
    Pass,
    PassContext,
    RunArguments,
)
from popstats._src.estimation.plan import EstimationPlan
from popstats._src.estimation.progress import check_progress, progress_bar
from popstats._src.estimation.spec import PassSpec, StatisticSpec
from popstats._src.estimation.state import (
    EstimationState,
    check_every,
    open_checkpoint,
    parameters_digest,
)
from popstats._src.estimation.statistics import PopulationStatistics
from popstats._src.estimation.stop_rule import StopRule
from popstats._src.estimation.upstream import one_batch_error
from popstats._src.export.exporter import Site, as_variables, export_checked
from popstats._src.export.time_modes import check_patterns
from popstats._src.graph.pytensor_ml import warn_dropout

if TYPE_CHECKING:
    from typing import Unpack

    from popstats._src.estimation.options import OptionKeywords

__all__ = ["DrivenRun", "Estimation", "EstimationState", "PassDriver", "fill_uncovered"]


@dataclass(frozen=True)
class DrivenRun:
    """What a :class:`PassDriver` returns: its last pass (which finalizes and
    merges that pass's states), the state of that pass, and the record of
    the passes."""

    final: Estimation
    state: EstimationState
    fixed_point: up.FixedPoint


class PassDriver(Protocol):
    """Runs :meth:`Estimation.run` for an Estimation of
    ``upstream="population"`` (:attr:`Estimation.driver`)."""

    def run(self, estimation: Estimation, batches: Iterable[Any],
            arguments: RunArguments) -> DrivenRun:
        """The passes over ``batches`` (``arguments``: the rest of what
        ``run`` was given), each an :meth:`Estimation.run_pass`."""
        ...


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
    carries the :class:`~popstats._src.estimation.spec.PassSpec` of the pass that made
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

    #: what :meth:`run` hands its passes to with ``upstream="population"``
    #: (a :class:`~popstats._src.estimation.pass_object.PassDriver`);
    #: ``popstats/__init__.py`` sets it to the fixed point's passes
    #: (:class:`~popstats._src.upstream.fixed_point.FixedPointDriver`)
    driver: ClassVar[PassDriver] = up.NO_DRIVER

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
        self._setup(EstimationPlan(inputs, outs, EstimationOptions.check(call, options),
                                   call, compile_now))

    @classmethod
    def of(cls, plan: EstimationPlan) -> Estimation:
        """The Estimation of ``plan``: how the calls that check the options
        themselves, and the later stages, build one (``Estimation(...)``
        makes its plan of its arguments)."""
        new = cls.__new__(cls)
        new._setup(plan)
        return new

    def _setup(self, plan: EstimationPlan) -> None:
        call, options = plan.call, plan.options
        compile_now = check_bool(plan.compile_now, f"{call}(compile_now=...)")
        outs = as_variables(plan.outputs, call)
        graph = plan.graph
        if graph is None:
            graph = export_checked(outs, call, options.time)
            warn_dropout(outs, call, options.upstream)
        inputs = plan.inputs
        if isinstance(inputs, Variable):  # one input needs no list
            inputs = [inputs]
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
            max_steps, plan.upstream,
        )
        self.partners = find_partners(self.sites, self.estimators, call)
        check_counts(self.sites, self.estimators, call)
        trios = list(zip(graph.outputs, graph.counts, graph.weights, strict=True))
        #: per statistic, its value and count in the exported graph (None: none)
        self._graph_outputs = tuple(graph.outputs)
        self._graph_counts = tuple(graph.counts)
        #: the statistics whose elements are the examples (see _per_example)
        self._found: dict[str, str | None] | None = None
        self._engine, slots = choose_engine(
            self.inputs, trios, options.mode, options.accumulate, self.sites,
            self.estimators, self.partners, max_steps)
        #: per statistic, the positions of (value, count, weight) among the
        #: estimation function's outputs (None: not marked)
        self.slots: tuple[tuple[int | None, ...], ...] = slots
        #: the model's parameters: a checkpoint records their digest
        self._shared = [v for v in graph_inputs([v for t in trios for v in t
                                                 if v is not None])
                        if isinstance(v, TensorSharedVariable)]
        #: (input index, axis) whose length counts a batch's examples; found
        #: with the first batch ((-1, 0): no input has a batch axis)
        self._example_axis: tuple[int, int] | None = None
        self._host = HostAccumulator(self.sites, self.estimators, self.partners,
                                     self.slots, max_steps, call)
        if compile_now:
            self._compile()

    @property
    def accumulate(self) -> str:
        """``"graph"`` or ``"host"``: where this pass accumulates."""
        return self._engine.accumulate

    @property
    def compiled(self) -> bool:
        """Whether the estimation function is compiled (see ``compile_now``)."""
        return self._engine.compiled

    def _compile(self) -> None:
        """Compile the function this pass runs its batches with (once)."""
        self._engine = self._engine.compile()

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
            raise one_batch_error(self.where("update", "batch"))
        state = self.check_state(
            state, self.where("update", "state"),
            "Pass a state made by this Estimation (or one of the same graph and "
            "options).",
        )
        return self._pass(state).run([batch])

    def batch_digest(self, batch: Any, index: int) -> bytes:
        """What identifies batch ``index``'s data (checkpoints record it; the
        passes of ``upstream="population"`` check every pass sees the same)."""
        return batch_digest(batch, self.inputs, index, self.call)

    def _values(self, batch: Any, index: int) -> list:
        """A batch's values, checked and converted for the inputs."""
        return batch_values(batch, self.inputs, index, self.call, self.dtypes)

    def _examples(self, values: list) -> int | None:
        """The number of examples in a batch: the length of the batch axis of
        its first input that has one (None: none has)."""
        if self._example_axis is None:
            self._example_axis = example_axis(self.given[1], self.inputs)
        index, axis = self._example_axis
        if index < 0:
            return None
        shape = np.shape(values[index])
        return int(shape[axis]) if axis < len(shape) else None

    def _statistics(self, values: list, index: int, params: Any = None) -> list:
        """Per statistic (value, count, weight) of a batch, on the host."""
        try:
            results = self._engine.evaluate(values, params)
        except Exception as exc:
            raise run_error(self.call, exc, values, index, self.inputs,
                            self.sites) from exc
        # NumPy arrays: an in-place NumPy update with a JAX operand does nothing
        return [tuple(None if k is None else np.asarray(results[k]) for k in slot)
                for slot in self.slots]

    def _pass(self, state: EstimationState,
              on_batch: BatchCallback | None = None) -> Pass:
        """A run from ``state``: where the engine accumulates, or on the host
        (always, with ``on_batch``: it is given each batch's statistics)."""
        self._compile()
        context = PassContext(
            self.call, self.spec, self.sites, self.estimators, self.max_steps,
            self._host, self._values, self._statistics, self._examples,
        )
        if on_batch is not None:
            return HostPass(context, state, on_batch, self._engine.parameters())
        return self._engine.pass_for(context, state)

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

        With the option ``target_error``, the run stops at the first check
        where every statistic is precise enough and takes no further batch
        from ``batches`` (a generator can go on from there); the state's
        :attr:`~EstimationState.stopping` records why and when. A
        checkpointed run resumed stops where an uninterrupted one does, and a
        run continuing a ``state`` continues toward the target.

        With ``upstream="population"``, ``run`` takes the passes to the fixed
        point (:doc:`/upstream`; :attr:`fixed_point` records them) and
        returns the last pass's state; ``state`` and ``on_batch`` are refused.
        """
        arguments = RunArguments(state, checkpoint, checkpoint_every, progress,
                                 on_batch)
        if self.options.upstream == "population" and self.spec.upstream == "batch":
            # the passes to the fixed point, each a run_pass (see driver)
            driven = self.driver.run(self, batches, arguments)
            self._final, self.fixed_point = driven.final, driven.fixed_point
            return driven.state
        return self.run_pass(batches, arguments)

    def run_pass(self, batches: Iterable[Any],
                 arguments: RunArguments | None = None) -> EstimationState:
        """One pass over ``batches``, as :meth:`run` describes, whatever the
        ``upstream`` option: what :meth:`run` does with ``upstream="batch"``,
        and what a :class:`PassDriver` runs for each of its passes.
        ``arguments`` are the rest of what :meth:`run` takes (by default
        its defaults)."""
        arguments = RunArguments() if arguments is None else arguments
        state, checkpoint, checkpoint_every, progress, on_batch = (
            arguments.state, arguments.checkpoint, arguments.checkpoint_every,
            arguments.progress, arguments.on_batch)
        show = check_progress(progress, self.where("run", "progress")[:-len(
            "(progress=...)")])
        if on_batch is not None and not callable(on_batch):
            raise PopstatsError(
                f"{self.where('run', 'on_batch')}: expected a callable "
                f"on_batch(index, per_site) or None, got {describe_value(on_batch)}."
            )
        given = None
        if state is not None:
            given = self.check_state(
                state, self.where("run", "state"),
                "Pass a state made by an Estimation of the same graph and options.",
            )
        saver = None
        if checkpoint is None:
            check_every(checkpoint_every, self.where("run", "checkpoint_every"))
            state = self.init() if given is None else given
        else:
            saver, state = open_checkpoint(
                checkpoint, checkpoint_every, given, self.init(), self.check_state,
                self.where("run", "checkpoint"), self.parameters_digest(),
                self.batch_digest,
            )
        skip = 0 if saver is None else saver.skip
        stream = progress_bar(iterate(batches, self.call), batches, show)
        rule = None
        if self.options.target_error is not None:
            rule = StopRule(self.options.target_error, self.options.min_batches,
                            self.sites, self.estimators, state)
        return self._pass(state, on_batch).run(stream, skip, saver, rule)

    def where(self, method: str, argument: str) -> str:
        """How errors name an argument of a method of this pass:
        ``Estimation.run(state=...)``, or, for a pass a public call built,
        that call's (``estimate(state=...)``)."""
        if self.call == "Estimation":
            return f"Estimation.{method}({argument}=...)"
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
        self.check_state(a, self.where("merge", "a"), fix)
        self.check_state(b, self.where("merge", "b"), fix)
        return merge_states(self.sites, self.estimators, a, b)

    def finalize(self, state: EstimationState) -> PopulationStatistics:
        """The population statistics of a state."""
        if self._final is not None and getattr(getattr(state, "spec", None),
                                               "upstream", "batch") != "batch":
            return self._final.finalize(state).with_fixed_point(self.fixed_point)
        self.check_state(
            state, self.where("finalize", "state"),
            up.fix_for(state, "Finalize a state made by an Estimation of the same "
                           "graph."),
        )
        return finalize_state(self.call, self.sites, self.estimators,
                              self.max_steps, state, self._per_example())

    def _per_example(self) -> dict[str, str | None]:
        """The statistics whose elements per batch are, provably, the
        batch's examples (the length of the batch axis :func:`example_axis`
        finds), each with the spread its graph computes (None: none found):
        only those get the batch-size warnings, whose bias follows from the
        examples per batch (:mod:`~popstats._src.estimation.examples_count`).
        Read once, at the first finalize."""
        if self._found is None:
            if self._example_axis is None:
                self._example_axis = example_axis(self.given[1], self.inputs)
            index, axis = self._example_axis
            found = {} if index < 0 else examples_statistics(
                self._graph_outputs, self._graph_counts, self.inputs[index], axis)
            self._found = {self.sites[k].name: role for k, role in found.items()}
        return self._found
