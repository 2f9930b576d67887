"""What an estimation state is a state *of*: the pass's spec, and the state.

An :class:`EstimationState` carries, beside its accumulators, the
:class:`PassSpec` of the :class:`~popstats.Estimation` that made it: per
statistic a :class:`StatisticSpec` (a site's name, identity, role and
time modes, with its estimator: :meth:`StatisticSpec.of`), and the pass's
``max_steps``. Everything that combines states
(resume, merge, finalize, a checkpoint) compares specs first and refuses,
naming what differs, when they are not the same pass: the arrays of a
``"mean"`` state read as ``"weighted"`` ones, or steps kept under another
``max_steps``, would give wrong numbers without any error.

Stage: estimation. Also :func:`spec_differences`, :func:`save_state`,
:func:`load_state` / :func:`load_checkpoint`, :class:`Checkpoint` and the
digests :func:`state_digest`, :func:`parameters_digest`.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from popstats._src.errors import PopstatsError
from popstats._src.estimation.estimators import Estimator
from popstats._src.estimation.persistence import STATE, read, write
from popstats._src.export.sites import Site
from popstats._src.graph.walk import LoopStep, SiteId

log = logging.getLogger("popstats")

__all__ = [
    "Checkpoint",
    "EstimationState",
    "PassSpec",
    "StatisticSpec",
    "load_checkpoint",
    "load_state",
    "parameters_digest",
    "save_state",
    "spec_differences",
    "state_digest",
]


@dataclass(frozen=True)
class StatisticSpec:
    """What determines the meaning of one statistic's accumulators.

    A :class:`~popstats.Site`'s identity, role and time modes, with the
    estimator of the pass (:meth:`of`); the rest of a site (shape, dtype,
    group, count) does not change what the arrays mean.

    Attributes
    ----------
    name : str
        As in :class:`~popstats.Site`.
    id : SiteId
        Its identity (loops, label, fingerprint), as ``Site.id``.
    role : str or None
        ``"mean"``, ``"var"``, ``"std"`` or None.
    time : tuple of str
        Per enclosing loop, ``"step"`` or ``"pooled"``.
    estimator : Estimator
        How its batches are combined.
    label : str
        ``id.label`` (a property, as are the two below).
    path : tuple of (str, str)
        The enclosing loops, outermost first, as (name, fingerprint).
    fingerprint : str
        Where the statistic is computed (see :doc:`/names`).
    """

    name: str
    id: SiteId
    role: str | None
    time: tuple[str, ...]
    estimator: Estimator

    @classmethod
    def of(cls, site: Site, estimator: Estimator) -> StatisticSpec:
        """The spec of ``site`` estimated by ``estimator``."""
        return cls(site.name, site.id, site.role, site.time, estimator)

    @property
    def label(self) -> str:
        return self.id.label

    @property
    def path(self) -> tuple[tuple[str, str], ...]:
        return tuple((step.name, step.fingerprint) for step in self.id.path)

    @property
    def fingerprint(self) -> str:
        return self.id.fingerprint

    def to_json(self) -> dict[str, Any]:
        """The spec as files write it; a statistics file's entry extends it."""
        e = self.estimator
        return {
            "name": self.name, "label": self.label,
            "path": [list(step) for step in self.path],
            "fingerprint": self.fingerprint, "role": self.role,
            "time": list(self.time),
            "estimator": {"name": e.name, "momentum": e.momentum,
                          "unbiased": e.unbiased},
        }

    @classmethod
    def from_json(cls, meta: dict[str, Any]) -> StatisticSpec:
        """The spec written by :meth:`to_json` (``key``, informative, if given)."""
        e = meta["estimator"]
        path = tuple(LoopStep(str(n), str(f)) for n, f in meta["path"])
        return cls(
            str(meta["name"]),
            SiteId(path, str(meta["label"]), str(meta["fingerprint"]),
                   str(meta.get("key", ""))),
            None if meta["role"] is None else str(meta["role"]),
            tuple(str(t) for t in meta["time"]),
            Estimator(str(e["name"]), e["momentum"], unbiased=bool(e["unbiased"])),
        )


@dataclass(frozen=True)
class PassSpec:
    """The options of an estimation pass that its states depend on.

    Attributes
    ----------
    statistics : tuple of StatisticSpec
        In the order of :attr:`Estimation.sites`.
    max_steps : int or None
        The pass's cap on steps per time axis.
    upstream : str
        ``"batch"`` (the training graph's statistics), or, for a pass of
        ``upstream="population"``, ``"population:<digest>"``: the digest of
        what the pass's graph read, the population values the layers
        upstream of the statistics normalized with included (states of
        passes over other values do not mix).
    """

    statistics: tuple[StatisticSpec, ...]
    max_steps: int | None
    upstream: str = "batch"

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.statistics)

    def to_json(self) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "statistics": [s.to_json() for s in self.statistics],
            "max_steps": self.max_steps}
        if self.upstream != "batch":  # files of batch passes stay as they were
            meta["upstream"] = self.upstream
        return meta

    @classmethod
    def from_json(cls, meta: dict[str, Any]) -> PassSpec:
        cap = meta["max_steps"]
        return cls(tuple(StatisticSpec.from_json(s) for s in meta["statistics"]),
                   None if cap is None else int(cap),
                   str(meta.get("upstream", "batch")))


def _estimator_text(e: Estimator) -> str:
    if e.name != "ema":
        return repr(e.name)
    return f"'ema' (momentum {e.momentum}{', unbiased' if e.unbiased else ''})"


def _upstream_text(upstream: str) -> str:
    if upstream == "batch":
        return "batch statistics"
    return f"population values (digest {upstream.partition(':')[2]})"


def spec_differences(have: PassSpec, want: PassSpec, limit: int = 6) -> list[str]:
    """What differs between the spec of a state (``have``) and a pass's.

    Empty when they are the same pass. Each entry is a phrase such as
    ``"'bn.var': estimator 'mean' in the state, 'weighted' here"``.
    """
    out: list[str] = []
    if have.names != want.names:
        missing = [n for n in want.names if n not in have.names]
        extra = [n for n in have.names if n not in want.names]
        if missing:
            out.append(f"statistics {missing} are not in the state")
        if extra:
            out.append(f"the state has statistics {extra} this graph has not")
        if not missing and not extra:
            out.append(f"statistics in another order: {list(have.names)} in the "
                       f"state, {list(want.names)} here")
        return out
    if have.max_steps != want.max_steps:
        out.append(f"max_steps {have.max_steps} in the state, {want.max_steps} here")
    if have.upstream != want.upstream:
        out.append(f"upstream layers normalized with {_upstream_text(have.upstream)} "
                   f"in the state, {_upstream_text(want.upstream)} here")
    for a, b in zip(have.statistics, want.statistics, strict=True):
        if a.id != b.id:
            out.append(f"{a.name!r}: computed differently (another graph, or other "
                       f"loops or inputs)")
        elif a.role != b.role:
            out.append(f"{a.name!r}: role {a.role!r} in the state, {b.role!r} here")
        if a.time != b.time:
            out.append(f"{a.name!r}: time modes {a.time} in the state, {b.time} here")
        if a.estimator != b.estimator:
            out.append(f"{a.name!r}: estimator {_estimator_text(a.estimator)} in "
                       f"the state, {_estimator_text(b.estimator)} here")
    if len(out) > limit:
        out = [*out[:limit], f"and {len(out) - limit} more differences"]
    return out


@dataclass(frozen=True, eq=False)
class EstimationState:
    """The accumulators of an estimation pass, with what they belong to.

    Attributes
    ----------
    spec : PassSpec
        The statistics (identity, time modes, estimator) and ``max_steps`` of
        the :class:`~popstats.Estimation` that made the state; operations
        that combine states refuse states of another spec.
    states : tuple of dict
        Per statistic, its estimator's arrays (empty before the first batch).
        A state is a value: :class:`~popstats.Estimation` never changes the
        arrays of a state it is given (``update``, ``run`` and ``merge``
        return new states).
    n_batches : int
        Batches seen.
    """

    spec: PassSpec
    states: tuple[dict[str, np.ndarray], ...]
    n_batches: int = 0

    @property
    def names(self) -> tuple[str, ...]:
        """The statistics, in the order of :attr:`Estimation.sites`."""
        return self.spec.names

    def save(self, path: str | os.PathLike) -> None:
        """Save to ``.npz`` (atomically); see :func:`popstats.load_state`."""
        save_state(self, path)


def parameters_digest(shared: Sequence) -> str:
    """A hash of shared variables' names, dtypes, shapes and values."""
    h = hashlib.blake2b(digest_size=16)
    for var in shared:
        array = np.ascontiguousarray(var.get_value(borrow=True))
        h.update(f"|{var.name}|{array.dtype.str}|{array.shape}|".encode())
        h.update(array.tobytes())
    return h.hexdigest()


def state_digest(state: EstimationState) -> str:
    """A hash of everything in ``state`` (spec, batch count, every array)."""
    import json

    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps(state.spec.to_json(), sort_keys=True).encode())
    h.update(str(state.n_batches).encode())
    for fields in state.states:
        for key in sorted(fields):
            array = np.ascontiguousarray(fields[key])
            h.update(f"|{key}|{array.dtype.str}|{array.shape}|".encode())
            h.update(array.tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class Checkpoint:
    """Where a checkpointed run started: the state it was given.

    ``start_batches`` batches and :func:`~popstats._src.estimation.state.state_digest`
    ``start_digest``; a run from nothing starts at 0 batches.
    ``parameters``: :func:`parameters_digest` of the model's shared
    variables when the run started (the statistics depend on them).
    ``data``: a chained digest of the batches of this run the state counts
    (:func:`~popstats._src.estimation.batches.batch_digest` of each), so
    that a resume over other batches is refused ("": not recorded).
    """

    start_batches: int
    start_digest: str
    parameters: str = ""
    data: str = ""


def save_state(
    state: EstimationState,
    path: str | os.PathLike,
    where: str = "EstimationState.save(path=...)",
    checkpoint: Checkpoint | None = None,
) -> None:
    """Write an estimation state to ``path`` (format above)."""
    arrays = {
        f"state/{i}/{field}": array
        for i, fields in enumerate(state.states)
        for field, array in fields.items()
    }
    meta = {
        "spec": state.spec.to_json(),
        "n_batches": state.n_batches,
        "checkpoint": None if checkpoint is None else {
            "start_batches": checkpoint.start_batches,
            "start_digest": checkpoint.start_digest,
            "parameters": checkpoint.parameters,
            "data": checkpoint.data,
        },
    }
    write(path, STATE, meta, arrays, where)


def load_state(path: str | os.PathLike) -> EstimationState:
    """Load an estimation state saved by :meth:`EstimationState.save`.

    Also reads a checkpoint written by ``Estimation.run(checkpoint=...)``;
    to resume a checkpointed run, pass the checkpoint to ``run`` again
    instead (a warning on the ``popstats`` logger says so: continuing this
    state with the batches it already counts would count them twice).
    """
    state, checkpoint = load_checkpoint(path, "load_state")
    if checkpoint is not None:
        log.warning(
            "load_state(path=...): %r is a checkpoint of Estimation.run that "
            "counts %d batch(es); to resume that run, pass it as "
            "run(batches, checkpoint=path) instead. Continuing this state with "
            "the batches it already counts would count them twice.",
            os.fspath(path), state.n_batches,
        )
    return state


def load_checkpoint(
    path: str | os.PathLike, call: str = "load_state", where: str | None = None
) -> tuple[EstimationState, Checkpoint | None]:
    """A state and, for a checkpoint of ``Estimation.run``, where it started.

    ``where`` names the argument in errors (``"estimate(checkpoint=...)"``).
    """
    meta, archive = read(path, STATE, call, where)
    try:
        spec = PassSpec.from_json(meta["spec"])
        states: list[dict[str, np.ndarray]] = [{} for _ in spec.statistics]
        for key, array in archive.items():
            if key.startswith("state/"):
                _, index, field = key.split("/")
                states[int(index)][field] = array
        n_batches = int(meta["n_batches"])
        start = meta["checkpoint"]
        checkpoint = None if start is None else Checkpoint(
            int(start["start_batches"]), str(start["start_digest"]),
            str(start["parameters"]), str(start.get("data", "")),
        )
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        raise PopstatsError(
            f"{where or call + '(path=...)'}: {os.fspath(path)!r} is corrupted "
            f"({type(exc).__name__}: {exc}). Delete it and start the pass again."
        ) from None
    return EstimationState(spec, tuple(states), n_batches), checkpoint
