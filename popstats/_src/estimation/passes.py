"""One run of an estimation pass over batches: where its state lives.

:class:`HostPass` keeps the state as NumPy arrays and adds each batch's
statistics on the host (``accumulate.py``); :class:`GraphPass` keeps it in
the shared variables of the compiled function, which adds each batch itself
(``accumulate_graph.py``), and reads it back only when a state is wanted: a
checkpoint, or the end of the run. Both skip the batches a checkpoint
already counts and save checkpoints as the run goes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from popstats._src.errors import PopstatsError
from popstats._src.estimation import estimators as est
from popstats._src.estimation.accumulate_host import copy_state
from popstats._src.estimation.state import EstimationState

__all__ = ["GraphPass", "HostPass", "explain"]


class _Pass:
    """A run building a state from a starting one, batch by batch."""

    def step(self, batch: Any) -> int:  # pragma: no cover - abstract
        """Add one batch; returns the number of batches the state counts."""
        raise NotImplementedError

    def state(self) -> EstimationState:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:
        """Release what the run holds (called however it ends)."""

    def run(self, batches: Iterable[Any], owner: Any, skip: int = 0,
            saver: Any = None) -> EstimationState:
        """Add ``batches`` after the first ``skip``; checkpoint with ``saver``."""
        try:
            consumed = 0
            for position, batch in enumerate(batches):
                consumed = position + 1
                if position < skip:
                    continue
                n = self.step(batch)
                if saver is not None and saver.due(n):
                    saver.save(self.state())
            final = self.state()
            if saver is not None:
                saver.check_consumed(consumed)
                saver.save(final)
            return final
        finally:
            self.close()


class HostPass(_Pass):
    """The state as NumPy arrays this run owns, updated batch by batch."""

    def __init__(self, owner: Any, state: EstimationState) -> None:
        self.owner = owner
        self.current = copy_state(state)
        # JAX: the parameters cross to the device once per pass, not per call
        device = owner._device
        self.params = None if device is None else device.put_parameters()

    def step(self, batch: Any) -> int:
        owner, index = self.owner, self.current.n_batches
        per_site = owner._statistics(owner._values(batch, index), index,
                                     self.params)
        states = owner._host.add(list(self.current.states), per_site, index)
        self.current = EstimationState(self.current.spec, tuple(states), index + 1)
        return index + 1

    def state(self) -> EstimationState:
        return self.current


class GraphPass(_Pass):
    """The state in the compiled function's accumulators.

    An :class:`~popstats.Estimation` has one set of accumulators, so it runs
    one such pass at a time.
    """

    def __init__(self, owner: Any, state: EstimationState) -> None:
        if owner._busy:
            raise PopstatsError(
                f"{owner.call}(batches=...): this Estimation is already running a "
                f"pass (a "
                f"batch generator that runs it again?). Its accumulators hold "
                f"that pass's state: run one pass at a time, or use a second "
                f"Estimation."
            )
        self.owner = owner
        owner._graph.load(state)
        self.n = state.n_batches
        self.own = owner._graph.own_shapes()
        owner._busy = True

    def step(self, batch: Any) -> int:
        owner = self.owner
        values = owner._values(batch, self.n)
        try:
            checks = owner._gfn(*values)
        except Exception:
            # The accumulators are written only when the whole call succeeds:
            # let the host path add this batch, or raise its error for it (a
            # loop of zero steps, whose outputs PyTensor shapes unlike their
            # static shape, takes this way too).
            self._on_host(values)
            return self.n
        if not np.all(checks):
            self._explain(values)
        if None in self.own:
            self.own = owner._graph.own_shapes()
        self.n += 1
        return self.n

    def _on_host(self, values: list) -> None:
        """Add one batch on the host, to the state read from the graph."""
        owner = self.owner
        per_site = owner._statistics(values, self.n)
        current = self.state()  # read from the graph: arrays of its own
        states = owner._host.add(list(current.states), per_site, self.n)
        self.n += 1
        owner._graph.load(EstimationState(current.spec, tuple(states), self.n))
        self.own = owner._graph.own_shapes()

    def _explain(self, values: list) -> None:
        explain(self.owner, values, self.own, self.n)

    def state(self) -> EstimationState:
        return self.owner._graph.read(self.owner.spec, self.n)

    def close(self) -> None:
        self.owner._busy = False


def explain(owner: Any, values: list, own: list, index: int) -> None:
    """Raise the error the host checks give for batch ``index``, which failed
    the checks of a graph pass (``own``: per statistic its shape so far)."""
    states = [
        {} if shape is None else est.init(estimator, site.role, shape,
                                          site.time_axes)
        for site, estimator, shape in zip(owner.sites, owner.estimators, own,
                                          strict=True)
    ]
    owner._host.add(states, owner._statistics(values, index), index)
    raise PopstatsError(  # pragma: no cover - the host checks raise first
        f"{owner.call}(batches=...): batch {index} failed the estimation "
        f"graph's checks (values finite, counts valid, shapes as earlier "
        f"batches). Run it with Estimation(..., accumulate='host') to see "
        f"which statistic."
    )
