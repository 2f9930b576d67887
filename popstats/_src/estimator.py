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

from popstats._src import estimators as est
from popstats._src.batches import (
    batch_values,
    check_dtypes,
    check_inputs,
    describe_batch,
    iterate,
)
from popstats._src.errors import PopstatsError, describe_value
from popstats._src.estimators import fill_uncovered
from popstats._src.exporter import Site, as_variables, check_patterns, export_checked
from popstats._src.state import (
    EstimationState,
    PassSpec,
    StatisticSpec,
    spec_differences,
)
from popstats._src.statistics import PopulationStatistics, Statistic

__all__ = ["Estimation", "EstimationState", "estimate", "estimate_as", "fill_uncovered"]

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

    States are values: :meth:`update`, :meth:`run` and :meth:`merge` return
    new states and never change the ones they are given (``run`` copies a
    given state once, then updates its own copy batch by batch). A state
    carries the :class:`~popstats._src.state.PassSpec` of the pass that made
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
        call: str = "Estimation",
    ):
        outs = as_variables(outputs, call)
        self.dtypes = check_dtypes(dtypes, call)
        if max_steps is not None and (
            isinstance(max_steps, bool) or not isinstance(max_steps, int)
            or max_steps < 1
        ):
            raise PopstatsError(
                f"{call}(max_steps=...): expected a positive int or None, got "
                f"{describe_value(max_steps)}."
            )
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
            tuple(
                StatisticSpec(
                    s.name, s.label,
                    tuple((step.name, step.fingerprint) for step in s.id.path),
                    s.id.fingerprint, s.role, s.time, e,
                )
                for s, e in zip(self.sites, self.estimators, strict=True)
            ),
            max_steps,
        )
        self.partners = tuple(self._partner(i) for i in range(len(self.sites)))
        self._check_counts()
        flat, self._slots = [], []
        for trio in zip(graph.outputs, graph.counts, graph.weights, strict=True):
            slot = []
            for var in trio:
                slot.append(None if var is None else len(flat))
                if var is not None:
                    flat.append(var)
            self._slots.append(tuple(slot))
        self._fn = pytensor.function(
            self.inputs, flat, mode=mode, on_unused_input="ignore"
        )
        # Statistics outside loops with the plain mean and no count: updated
        # together (see _add_plain).
        self._plain = tuple(
            i
            for i, (site, estimator) in enumerate(
                zip(self.sites, self.estimators, strict=True)
            )
            if site.time_axes == 0
            and estimator.name == "mean"
            and self._slots[i][1:] == (None, None)  # no count to check, no weight
        )
        self._flat: tuple | None = None

    def _run_error(self, exc: Exception, values: list, index: int) -> PopstatsError:
        """The error of a batch the compiled graph failed on (cause chained)."""
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        message = (
            f"{self.call}(batches=...): running the estimation graph failed on "
            f"batch {index} ({type(exc).__name__}: {first}). The batch has "
            f"{describe_batch(values, self.inputs)}. Check that its shapes fit "
            f"the model (the cause is shown above this error)."
        )
        nested = [s.name for s in self.sites if s.time_axes >= 2]
        if nested:
            message += _nested_hint(nested)
        return PopstatsError(message)

    def _partner(self, i: int) -> int | None:
        site, estimator = self.sites[i], self.estimators[i]
        if estimator.name != "pooled":
            return None
        if site.role not in ("mean", "var", "std"):
            raise PopstatsError(
                f"{self.call}(estimator=...): 'pooled' needs to know what "
                f"statistic {site.name!r} is, but it has no role. Mark it with "
                f"bn_statistic(..., role='mean'|'var'|'std', group=...), or "
                f"choose another estimator for it, e.g. "
                f"estimator={{{site.label!r}: 'mean', '*': 'pooled'}}."
            )
        if site.role == "mean":
            return None
        partners = [
            j
            for j, other in enumerate(self.sites)
            if other.role == "mean"
            and site.group is not None
            and other.group == site.group
            and other.id.path == site.id.path
        ]
        if len(partners) != 1:
            problem = "no" if not partners else f"{len(partners)}"
            raise PopstatsError(
                f"{self.call}(estimator=...): 'pooled' combines the {site.role} "
                f"{site.name!r} with its paired mean, but {problem} statistic with "
                f"role='mean' and group={site.group!r} is in the same loop. Give "
                f"the mean and the {site.role} the same group (bn_statistic(..., "
                f"group='layer1')), or choose another estimator for {site.name!r}."
            )
        if self.sites[partners[0]].time != site.time:
            raise PopstatsError(
                f"{self.call}(time=...): {site.name!r} and its mean "
                f"{self.sites[partners[0]].name!r} must use the same time modes "
                f"for 'pooled'; got {site.time} and {self.sites[partners[0]].time}."
            )
        return partners[0]

    def _check_counts(self) -> None:
        for site, estimator in zip(self.sites, self.estimators, strict=True):
            if _uses_count(estimator, site.role) and not site.counted:
                raise PopstatsError(
                    f"{self.call}(estimator=...): {estimator.name!r} needs the "
                    f"number of elements behind statistic {site.name!r}, which "
                    f"has none. Pass count=... to bn_statistic (e.g. "
                    f"count=x.shape[0]), or choose another estimator for it."
                )

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
        return self._step(_copy(state), batch)

    def _step(self, state: EstimationState, batch: Any) -> EstimationState:
        """:meth:`update` on a state this pass owns (updated in place)."""
        index = state.n_batches
        values = batch_values(batch, self.inputs, index, self.call, self.dtypes)
        try:
            results = self._fn(*values)
        except Exception as exc:
            raise self._run_error(exc, values, index) from exc
        per_site = [
            tuple(None if k is None else results[k] for k in slot)
            for slot in self._slots
        ]
        states = list(state.states)
        done = self._add_plain(states, per_site)
        for i, (value, count, weight) in enumerate(per_site):
            if i in done:
                continue
            partner = self.partners[i]
            mean = None if partner is None else self._cap(per_site[partner][0], i)
            states[i] = self._add(i, states[i], value, count, weight, mean, index)
        if self._plain and not done:
            self._link_plain(states)
        return EstimationState(state.spec, tuple(states), index + 1)

    def _add_plain(self, states: list, per_site: list) -> frozenset[int]:
        """Update every plain-mean statistic outside loops in one go.

        Statistics outside loops estimated with ``"mean"`` share one flat
        float64 buffer (their state arrays are views into it), so a batch
        costs a few NumPy calls instead of several per statistic. Returns the
        indices handled; none when the states are not linked to the buffer
        (first batch, a loaded or merged state) or anything needs the checks
        of the per-statistic path (a non-finite value, a changed shape).
        """
        flat = self._flat
        plain = self._plain
        if flat is None or not all(
            states[i].get("mean") is view
            for i, view in zip(plain, flat[0], strict=True)
        ):
            return frozenset()
        values = [np.asarray(per_site[i][0]) for i in plain]
        if any(v.shape != shape for v, shape in zip(values, flat[4], strict=True)):
            return frozenset()
        joined = np.concatenate([v.ravel() for v in values])
        if not np.isfinite(joined).all():
            return frozenset()
        _, mean, n, w, _, sizes = flat
        n += 1
        w += 1.0
        mean += (joined - mean) * np.repeat(1.0 / w, sizes)
        return frozenset(plain)

    def _link_plain(self, states: list) -> None:
        """Point the plain statistics' state arrays into one flat buffer."""
        plain = self._plain
        arrays = [states[i] for i in plain]
        if any(not arrays_i for arrays_i in arrays):
            return
        shapes = tuple(a["mean"].shape for a in arrays)
        sizes = np.array([int(np.prod(shape)) for shape in shapes])
        mean = np.concatenate([a["mean"].ravel() for a in arrays])
        n = np.array([int(a["n"]) for a in arrays], dtype=np.int64)
        w = np.array([float(a["w"]) for a in arrays], dtype=np.float64)
        views, start = [], 0
        for j, (a, shape, size) in enumerate(zip(arrays, shapes, sizes, strict=True)):
            a["mean"] = mean[start : start + size].reshape(shape)
            a["n"] = n[j : j + 1].reshape(())
            a["w"] = w[j : j + 1].reshape(())
            views.append(a["mean"])
            start += size
        self._flat = (tuple(views), mean, n, w, shapes, sizes)

    def _cap(self, array: np.ndarray | None, i: int) -> np.ndarray | None:
        if array is None or self.max_steps is None:
            return array
        axes = self.sites[i].time_axes
        return array[(slice(0, self.max_steps),) * axes]

    def _add(self, i, state, value, count, weight, mean, index):
        site, estimator = self.sites[i], self.estimators[i]
        axes = site.time_axes
        value = self._cap(np.asarray(value), i)
        count = self._cap(None if count is None else np.asarray(count, "float64"), i)
        weight = self._cap(None if weight is None else np.asarray(weight), i)
        if count is not None and not (np.isfinite(count) & (count >= 0)).all():
            raise PopstatsError(
                f"{self.call}(batches=...): the count of statistic {site.name!r} "
                f"is {count.min():g} in batch {index}; counts are numbers of "
                f"elements and must be finite and not negative. Check the count "
                f"given to bn_statistic."
            )
        # cells with count 0, or pooled loops that ran no step: not reached
        reached = None if count is None else count > 0
        if weight is not None:
            reached = weight > 0 if reached is None else reached & (weight > 0)
        finite = np.isfinite(value)
        if reached is not None:
            finite |= ~est.expand(reached, value)
        if not finite.all():
            raise PopstatsError(
                f"{self.call}(batches=...): statistic {site.name!r} (in "
                f"{site.where}) is not finite in batch {index}. Check that batch "
                f"for NaN/inf inputs or empty reductions (a mean over zero "
                f"elements; give bn_statistic a count, e.g. the mask's sum, so "
                f"that steps with no element count as not reached)."
            )
        if _bessel_corrected(estimator, site.role) and not (
            (count > 1) | ~reached
        ).all():
            raise PopstatsError(
                f"{self.call}(batches=...): {estimator.name!r} (unbiased) scales "
                f"{site.name!r} by "
                f"m/(m-1), but its count is {count[count > 0].min():g} in batch "
                f"{index}. Use batches of at least 2 elements, or another "
                f"estimator."
            )
        steps, shape = value.shape[:axes], value.shape[axes:]
        if not state:
            state = est.init(estimator, site.role, shape, axes)
        elif _stat_shape(state, axes) != shape:
            raise _shape_error(self.call, site, shape, _stat_shape(state, axes), index)
        if state["n"].shape != steps:
            state = est.grow(state, steps)
        return est.update(estimator, site.role, state, value, count, reached, mean)

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
        "Checkpoints").

        ``progress`` shows a tqdm bar (batches, rate, and time left when
        ``batches`` has a ``len``): True, False, or ``"auto"`` (only when
        stderr is a terminal). Without tqdm (``pip install
        popstats[progress]``) there is no bar.
        """
        from popstats._src.checkpoint import check_every, open_checkpoint
        from popstats._src.inspection.progress import check_progress, progress_bar

        show = check_progress(progress, self.call)
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
                self._method("run", "checkpoint"),
            )
        state = _copy(state)
        skip = 0 if saver is None else saver.skip
        consumed = 0
        stream = progress_bar(iterate(batches, self.call), batches, show)
        for position, batch in enumerate(stream):
            consumed = position + 1
            if position < skip:
                continue
            state = self._step(state, batch)
            if saver is not None:
                saver.saved_after(state)
        if saver is not None:
            saver.check_consumed(consumed)
            saver.save(state)
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
            if arrays and not _fits(arrays, site, estimator):
                raise PopstatsError(
                    f"{where}: the arrays of statistic {site.name!r} in the state "
                    f"({_describe_arrays(arrays)}) do not fit a {estimator.name!r} "
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
            shape_a = _stat_shape(sa, site.time_axes)
            shape_b = _stat_shape(sb, site.time_axes)
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
            raise PopstatsError(
                f"{self.call}(batches=...): no batches. Pass a non-empty iterable "
                f"of training batches (a generator that was already consumed is "
                f"empty)."
            )
        stats = []
        for site, estimator, arrays in zip(
            self.sites, self.estimators, state.states, strict=True
        ):
            coverage = arrays["n"]
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


def _copy(state: EstimationState) -> EstimationState:
    """A state with arrays of its own."""
    states = tuple(
        {k: np.array(v, copy=True) for k, v in fields.items()}
        for fields in state.states
    )
    return EstimationState(state.spec, states, state.n_batches)


def _fits(arrays: dict[str, np.ndarray], site: Site, estimator: est.Estimator) -> bool:
    """Whether a statistic's state arrays are those of its estimator and shape."""
    if set(arrays) != set(est.fields(estimator, site.role)):
        return False
    axes = site.time_axes
    steps = np.shape(arrays["n"])
    if len(steps) != axes:
        return False
    for field, array in arrays.items():
        shape = np.shape(array)
        if shape[:axes] != steps:
            return False
        if field in ("mean", "m2", "acc"):
            own = shape[axes:]
            if len(own) != len(site.shape) or any(
                s is not None and s != o for s, o in zip(site.shape, own, strict=True)
            ):
                return False
        elif len(shape) != axes:
            return False
    return True


def _describe_arrays(arrays: dict[str, np.ndarray]) -> str:
    return ", ".join(f"{k} {np.shape(v)}" for k, v in sorted(arrays.items()))


def _stat_shape(state: dict[str, np.ndarray], axes: int) -> tuple[int, ...]:
    """The statistic's own shape in an estimator state (after its time axes)."""
    value = state["acc"] if "acc" in state else state["mean"]
    return value.shape[axes:]


def _bessel_corrected(estimator: est.Estimator, role: str | None) -> bool:
    """Whether ``estimator`` scales a variance (or std) by m/(m-1)."""
    return role in ("var", "std") and (
        estimator.name == "unbiased" or estimator.unbiased  # ema, unbiased=True
    )


def _uses_count(estimator: est.Estimator, role: str | None) -> bool:
    """Whether ``estimator`` weighs or scales a statistic by its count."""
    return estimator.name in ("weighted", "pooled") or _bessel_corrected(
        estimator, role
    )


def _shape_error(call, site, shape, known, index) -> PopstatsError:
    return PopstatsError(
        f"{call}(batches=...): statistic {site.name!r} (in {site.where}) has "
        f"shape {shape} in batch {index} but {known} in earlier batches. A "
        f"population statistic needs the same shape in every batch (apart from "
        f"time axes): check that feature sizes do not depend on the batch."
    )


def _nested_hint(nested: list[str]) -> str:
    return (
        f" The graph has statistics in nested loops ({', '.join(nested)}): if "
        f"an inner loop's length varies between outer steps, its per-step "
        f"statistics cannot be stacked into one array. Pool the inner loop over "
        f"time (time=('step', 'pooled')), or pad the inner sequences to one "
        f"length within each batch."
    )


def estimate(
    inputs: Sequence[Variable],
    outputs: Variable | Sequence[Variable],
    batches: Iterable[Any],
    *,
    estimator: object = "mean",
    time: object = "step",
    max_steps: int | None = None,
    mode: str | pytensor.compile.Mode | None = None,
    dtypes: str = "convert",
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 100,
    progress: bool | str = "auto",
) -> PopulationStatistics:
    """Estimate population statistics over ``batches``.

    Parameters
    ----------
    inputs : sequence of Variable
        The graph's free inputs (those the batches provide).
    outputs : Variable or sequence of Variable
        Outputs of the training graph; every marked statistic they depend on
        is estimated.
    batches : iterable
        Any iterable (a one-shot generator is fine), each batch a dict keyed
        by input name or input variable, or a tuple/list in the order of
        ``inputs``.
    estimator : str, Estimator or dict, default "mean"
        ``"mean"`` (the plain average over batches, the original tool's),
        ``"weighted"`` (by element count), ``"pooled"`` (exact moments of all
        data, fvcore's PreciseBN), ``"unbiased"`` (variances times m/(m-1),
        PyTorch's ``update_bn``), ``"ema"`` (running average), an
        :class:`~popstats.Estimator` with options, or a dict from label
        pattern to those. See :doc:`/estimators` for which peer each equals.
    time : "step", "pooled", tuple or dict, default "step"
        Inside loops: one value per time step (``"step"``) or one for all
        steps (``"pooled"``: each batch's statistic over all its steps, then
        combined over batches by the estimator; see :doc:`/estimators`); a
        tuple gives the mode per loop level (outermost first), a dict maps
        name or label patterns to either.
    max_steps : int, optional
        Keep at most this many steps per time axis; later steps reuse the
        last kept one at inference.
    mode : str or Mode, optional
        Compilation mode of the estimation function.
    dtypes : {"convert", "strict"}, default "convert"
        Convert batch values to the inputs' dtypes when nothing that matters
        is lost, or refuse any other dtype; see :class:`Estimation`.
    checkpoint, checkpoint_every
        Save the pass's state every so many batches and resume from it; see
        :meth:`Estimation.run`.
    progress : bool or "auto", default "auto"
        Show a progress bar (needs tqdm); ``"auto"``: only on a terminal.

    Returns
    -------
    PopulationStatistics
        Per statistic: the population value (per time step, over the batches
        that reached the step), coverage counts, number of batches.

    Raises
    ------
    PopstatsError
        For arguments popstats cannot use, batches that do not fit the
        inputs, and any failure while running a batch (naming the batch and
        the shapes and dtypes of its values; the cause is chained).

    Examples
    --------
    >>> import numpy as np, pytensor.tensor as pt, popstats
    >>> x = pt.matrix("x")
    >>> y = x - popstats.bn_statistic(x.mean(axis=0), label="mean")
    >>> batches = [{"x": np.full((4, 2), 1.0)}, {"x": np.full((2, 2), 3.0)}]
    >>> stats = popstats.estimate([x], y, batches)
    >>> stats["mean"].value
    array([2., 2.])
    """
    return estimate_as(
        "estimate", inputs, outputs, batches, estimator=estimator, time=time,
        max_steps=max_steps, mode=mode, dtypes=dtypes, checkpoint=checkpoint,
        checkpoint_every=checkpoint_every, progress=progress,
    )


def estimate_as(
    call: str,
    inputs: Sequence[Variable],
    outputs: Variable | Sequence[Variable],
    batches: Iterable[Any],
    *,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 100,
    progress: bool | str = "auto",
    **options: Any,
) -> PopulationStatistics:
    """:func:`estimate` whose errors name the public ``call``.

    The run's options are checked before the graph is exported or compiled.
    """
    from popstats._src.checkpoint import check_every
    from popstats._src.inspection.progress import check_progress
    from popstats._src.persistence import check_target

    check_progress(progress, call)
    check_every(checkpoint_every, f"{call}(checkpoint_every=...)")
    if checkpoint is not None:
        check_target(checkpoint, f"{call}(checkpoint=...)")
    run = Estimation(inputs, outputs, call=call, **options)
    state = run.run(batches, checkpoint=checkpoint,
                    checkpoint_every=checkpoint_every, progress=progress)
    return run.finalize(state)
