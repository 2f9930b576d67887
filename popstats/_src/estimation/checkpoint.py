"""Checkpoints of an estimation pass: save every so often, resume exactly.

A checkpoint file holds the pass's state and the state the run started from
(its batch count and digest, see :mod:`popstats._src.estimation.state`).
Resuming is exact only when the run is called again as it was first called: the
same batches, from the same starting state. :func:`open_checkpoint` checks what
it can before any batch is computed: the file's pass spec against this pass's,
and the starting state (none, or the one given again); the run checks at its
end that the batches covered what the checkpoint already counts.

Stage: estimation (:mod:`popstats._src.estimation`). Members:
:class:`CheckpointedRun`, :func:`check_every`, :func:`open_checkpoint`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from popstats._src.errors import PopstatsError, check_int
from popstats._src.estimation.persistence import check_target, remove_stale_temporaries
from popstats._src.estimation.state import (
    Checkpoint,
    EstimationState,
    load_checkpoint,
    save_state,
    state_digest,
)

__all__ = ["CheckpointedRun", "check_every", "open_checkpoint"]

log = logging.getLogger("popstats")


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
