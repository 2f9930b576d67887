"""The estimation state, its file, and checkpoints of a run.

An :class:`EstimationState` holds a pass's accumulators with the
:class:`~popstats._src.estimation.spec.PassSpec` of the
:class:`~popstats.Estimation` that made it. :func:`save_state` /
:func:`load_state` write and read it (``.npz``, through
:mod:`~popstats._src.estimation.persistence`); the digests
:func:`state_digest` and :func:`parameters_digest` identify a state and the
model's parameters.

A checkpoint is a state file that also records where its run started
(:class:`Checkpoint`: the starting state's batch count and digest, the
parameters' digest, a digest of the batches counted); :func:`load_checkpoint`
reads both. Resuming is exact only when the run is called again as it was
first called: the same batches, from the same starting state.
:func:`open_checkpoint` checks what it can before any batch is computed: the
file's pass spec against this pass's, and the starting state (none, or the
one given again); the run (:class:`CheckpointedRun`) checks the batches the
checkpoint counts against its digest of them, and at its end that the
batches covered what the checkpoint already counts.

Stage: estimation. Members: :class:`EstimationState`, :func:`save_state`,
:func:`load_state`, :func:`state_digest`, :func:`parameters_digest`;
:class:`Checkpoint`, :func:`load_checkpoint`, :class:`CheckpointedRun`,
:func:`open_checkpoint`, :func:`check_every`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from popstats._src.errors import PopstatsError, check_int
from popstats._src.estimation.persistence import (
    STATE,
    check_target,
    read,
    remove_stale_temporaries,
    write,
)
from popstats._src.estimation.spec import PassSpec
from popstats._src.estimation.stopping import Stopping

log = logging.getLogger("popstats")

__all__ = [
    "Checkpoint",
    "CheckpointedRun",
    "EstimationState",
    "check_every",
    "load_checkpoint",
    "load_state",
    "open_checkpoint",
    "parameters_digest",
    "save_state",
    "state_digest",
]


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
    stopping : Stopping or None
        With the option ``target_error``: why and when the pass that made
        the state ended (a checkpoint's: the pass so far); None otherwise
        (and for a merged state).
    """

    spec: PassSpec
    states: tuple[dict[str, np.ndarray], ...]
    n_batches: int = 0
    stopping: Stopping | None = None

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
    if state.stopping is not None:
        meta["stopping"] = state.stopping.to_json()
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
        record = meta.get("stopping")  # older files: none
        stopping = None if record is None else Stopping.from_json(record)
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
    return EstimationState(spec, tuple(states), n_batches, stopping), checkpoint


def check_every(every: object, where: str) -> int:
    """``checkpoint_every`` if it is a positive int, else a PopstatsError."""
    return check_int(every, where, what="save every so many batches")


@dataclass
class CheckpointedRun:
    """A run's checkpoint: where to save, how often, and what to skip.

    ``skip`` is the number of this run's batches the checkpoint already
    counts: they are passed over, not computed, but their data is checked
    against the checkpoint's digest of them (``counts``) before any other
    batch is added. ``digest_batch(batch, index)`` gives one batch's digest.
    """

    path: str
    every: int
    start: Checkpoint
    skip: int
    where: str
    digest_batch: Callable[[Any, int], bytes] | None = None
    counts: str = ""
    _chain: Any = field(default_factory=lambda: hashlib.blake2b(digest_size=16),
                        repr=False)

    def count(self, batch: Any, position: int) -> None:
        """Add batch ``position`` of this run to the digest of its data; after
        the batches the checkpoint counts, check they are the same."""
        if self.digest_batch is None:
            return
        self._chain.update(self.digest_batch(batch, self.start.start_batches
                                             + position))
        if position + 1 == self.skip and self._chain.hexdigest() != self.counts:
            raise PopstatsError(self._other_data())

    def _other_data(self) -> str:
        if not self.counts:
            return (
                f"{self.where}: the checkpoint {self.path!r} records no digest of "
                f"the batches it counts (it was written by an earlier popstats), "
                f"so whether the given batches are those is unknown. Delete it "
                f"to start the pass over."
            )
        return (
            f"{self.where}: the first {_batches(self.skip)} given are not those "
            f"the checkpoint {self.path!r} counts (their data differ), so "
            f"resuming would return statistics of other data. A checkpoint "
            f"resumes one pass over the same batches: pass those again, or use "
            f"another checkpoint path (or delete this one) for a pass over "
            f"other data."
        )

    def due(self, n_batches: int) -> bool:
        """Whether to save after the state counts ``n_batches``: every
        ``every`` batches of this run."""
        return (n_batches - self.start.start_batches) % self.every == 0

    def save(self, state: EstimationState) -> None:
        data = self._chain.hexdigest() if self.digest_batch is not None else ""
        save_state(state, self.path, self.where,
                   dataclasses.replace(self.start, data=data))

    def check_consumed(self, consumed: int) -> None:
        """Raise if the run ended before passing the checkpoint's batches."""
        if consumed < self.skip:
            raise PopstatsError(
                f"{self.where}: the checkpoint {self.path!r} already counts "
                f"{_batches(self.skip)} of this run, but only {consumed} "
                f"{'was' if consumed == 1 else 'were'} given. Pass the same "
                f"batches again (those the checkpoint counts are skipped, not "
                f"computed), or delete the checkpoint to start over."
            )


def open_checkpoint(
    path: object,
    every: object,
    given: EstimationState | None,
    empty: EstimationState,
    check_state,
    where: str,
    parameters: str = "",
    digest_batch: Callable[[Any, int], bytes] | None = None,
) -> tuple[CheckpointedRun, EstimationState]:
    """The checkpoint of a run and the state to continue from.

    ``given`` is the ``state=`` of the run (None: from ``empty``);
    ``check_state(state, where, fix)`` checks a state belongs to this pass;
    ``parameters`` is the digest of the model's shared variables now;
    ``digest_batch`` identifies a batch's data (the run checks the batches
    a checkpoint counts are the given ones).
    """
    every = check_every(every, where.replace("checkpoint=", "checkpoint_every="))
    path = check_target(path, where)
    start_state = empty if given is None else given
    start = Checkpoint(start_state.n_batches, state_digest(start_state),
                       parameters)
    if not os.path.exists(path):
        remove_stale_temporaries(path)
        return CheckpointedRun(path, every, start, 0, where,
                               digest_batch), start_state
    saved, began = load_checkpoint(path, where.split("(")[0], where)
    if began is None:
        raise PopstatsError(
            f"{where}: {path!r} holds a state saved with EstimationState.save, "
            f"not a checkpoint of Estimation.run, so which of the given batches "
            f"it counts is unknown. Continue from it with "
            f"run(batches, state=popstats.load_state(path)) and another "
            f"checkpoint path."
        )
    check_state(saved, where, "Resume with the same graph and options, or delete "
                "the checkpoint to start over.")
    if (began.start_batches, began.start_digest) != (start.start_batches,
                                                      start.start_digest):
        raise PopstatsError(_start_error(where, path, began, given, saved))
    if began.parameters != parameters:
        raise PopstatsError(
            f"{where}: the model's parameters (its shared variables' values or "
            f"shapes) are not those the checkpoint {path!r} was made with: its "
            f"batches were computed with other weights, and resuming would mix "
            f"them. Restore the weights of that run, or delete the checkpoint "
            f"to start over."
        )
    remove_stale_temporaries(path)
    skip = saved.n_batches - began.start_batches
    log.info("%s: resuming from %r, which counts %d batch(es) of this run: "
             "skipping them", where, path, skip)
    return CheckpointedRun(path, every, start, skip, where, digest_batch,
                           began.data), saved


def _batches(n: int) -> str:
    return f"{n} batch" if n == 1 else f"{n} batches"


def _start_error(where, path, began, given, saved) -> str:
    if given is not None and state_digest(given) == state_digest(saved):
        return (
            f"{where}: the state given (state=...) is the checkpoint's own "
            f"state, not the one the checkpointed run started from. To resume, "
            f"call run again as it was first called: with the same batches and "
            f"the same starting state (state=None if it started from nothing)."
        )
    if began.start_batches == 0 and given is not None:
        return (
            f"{where}: the checkpoint {path!r} is of a run that started from "
            f"nothing, but a state of {_batches(given.n_batches)} is given. Call "
            f"run as it was first called (without state=), or delete the "
            f"checkpoint to start over."
        )
    got = "no state" if given is None else f"a state of {_batches(given.n_batches)}"
    return (
        f"{where}: the checkpoint {path!r} is of a run that continued a state "
        f"of {_batches(began.start_batches)}, but {got} is given"
        f"{' (another one)' if given is not None else ''}. Pass that same "
        f"starting state again (state=...), or delete the checkpoint to start "
        f"over: resuming from another state would count batches twice or not "
        f"at all."
    )
