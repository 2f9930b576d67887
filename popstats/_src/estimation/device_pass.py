"""A pass whose state and parameters stay on a JAX device.

PyTensor's JAX backend keeps shared variables as host NumPy arrays and sends
every one to the device on every call, and it copies updated shared values
back to the host: through a compiled :func:`pytensor.function`, each batch
would move all the model's parameters to the device and the accumulators
both ways. :class:`DevicePass` calls the function's jitted JAX callable
itself instead:

* the parameters (the function's shared inputs) are put on the device once
  per pass (they do not change during a pass);
* the accumulators of
  :class:`~popstats._src.estimation.accumulate_graph.GraphAccumulator`
  (``symbolic=True``) are inputs and outputs of the call and stay on the
  device between batches; only each batch's values cross per call;
* the checks (values finite, counts valid, shapes) are read every
  :data:`CHECK_EVERY` batches, so the host does not wait for the device after
  each batch; a failed check rolls back to the accumulators before that
  batch (device arrays are immutable) and raises the host's error for it.

The state is ``base`` (float64 NumPy, on the host) merged with the device's
partial state (:func:`~popstats._src.estimation.estimators.merge`, exact). Without
64-bit floats in JAX (``jax_enable_x64`` off) the accumulators are float32:
their rounding grows with the number of batches they add up, so the
partial state is folded into ``base`` every :data:`FOLD_EVERY_FLOAT32`
batches and restarted; the error stays that of :data:`FOLD_EVERY_FLOAT32`
float32 updates, whatever the length of the pass (tested over 10,000
batches in ``tests/test_device_pass.py``).

Stage: estimation. Members: :class:`DevicePass`, :data:`CHECK_EVERY`,
:data:`FOLD_EVERY_FLOAT32`; the jitted function and the accumulator update
it calls are a
:class:`~popstats._src.estimation.device_function.DeviceFunction`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from popstats._src.estimation import estimators as est
from popstats._src.estimation import formulas as fm
from popstats._src.estimation.accumulate_device import grow_fields, new_fields, to_host
from popstats._src.estimation.accumulate_host import copy_state, stat_shape
from popstats._src.estimation.device_function import DeviceFunction
from popstats._src.estimation.passes import Pass, PassContext, explain
from popstats._src.estimation.state import EstimationState

__all__ = ["CHECK_EVERY", "FOLD_EVERY_FLOAT32", "DevicePass"]

#: batches between two reads of the checks
CHECK_EVERY = 8
#: batches a float32 partial state adds up before it is folded into float64
FOLD_EVERY_FLOAT32 = 16


class DevicePass(Pass):
    """A run whose accumulators and parameters stay on the device.

    Same protocol as :class:`~popstats._src.estimation.passes.HostPass`;
    ``device`` is the engine's jitted function, ``slots`` per statistic the
    positions of its (value, count, weight) among the function's outputs.
    """

    def __init__(self, context: PassContext, state: EstimationState,
                 device: DeviceFunction,
                 slots: Sequence[tuple[int | None, ...]]) -> None:
        self.context = context
        self.device = device
        self.slots = tuple(slots)
        self.fold_every = (FOLD_EVERY_FLOAT32 if self.device.dtype == "float32"
                           else None)
        self.base = copy_state(state)
        self.n = state.n_batches
        self.sizes = state.sizes
        self.params = self.device.put_parameters()
        self.fields: list[dict | None] = [None] * len(context.sites)
        self.added = 0  # batches in the partial state
        self.pending: list[tuple[list, list, Any]] = []  # (values, before, checks)
        self._restart()

    # -- the partial state ----------------------------------------------------

    def _restart(self) -> None:
        """Device fields counting nothing, shaped as ``base``'s (so shapes are
        checked against them); none where ``base`` has no state."""
        fields: list[dict | None] = []
        for site, estimator, arrays in zip(self.context.sites, self.context.estimators,
                                           self.base.states, strict=True):
            if not arrays:
                fields.append(None)
                continue
            fields.append(new_fields(estimator, site.role, np.shape(arrays["n"]),
                                     stat_shape(arrays, site.time_axes),
                                     self.device.dtype))
        self.fields = fields
        self.added = 0

    def _merged(self) -> EstimationState:
        """``base`` merged with the partial state (checks read first)."""
        self._check()
        if not self.added:
            return EstimationState(self.base.spec, self.base.states, self.n)
        states = []
        for site, estimator, old, fields in zip(
            self.context.sites, self.context.estimators, self.base.states,
            self.fields, strict=True,
        ):
            new = None if fields is None else to_host(fields)
            momentum = estimator.momentum  # set for 'ema', the one with a decay
            if (new is not None and "decay" in new and momentum is not None
                    and self.device.dtype == "float32"):
                # (1 - momentum) in float32 is off by up to 3e-8, and its powers
                # compound that over 1/momentum batches: the decay of the
                # partial is (1 - momentum) ** n, n its batches per cell
                new["decay"] = fm.ema_decay(momentum, new["n"])
            if new is None or not np.any(new["n"]):
                states.append(old)
            elif not old:
                states.append(new)
            else:
                states.append(est.merge(estimator, site.role, old, new))
        return EstimationState(self.base.spec, tuple(states), self.n)

    def _fold(self) -> None:
        """Move the partial state into ``base`` and restart it."""
        self.base = self._merged()
        self._restart()

    # -- batches ----------------------------------------------------------------

    def step(self, batch: Any) -> int:
        values = self.take(batch, self.n)
        try:
            flat = self.device.jit(*values, *self.params)
        except Exception:
            # the host path runs the same call again and raises its error
            # for this batch (naming the batch and its shapes)
            self._on_host(values)
            return self.n  # pragma: no cover - the call above raised
        stats = [tuple(None if k is None else flat[k] for k in slot)
                 for slot in self.slots]
        fields = self._fit(stats)
        if fields is None:
            # another statistic shape than earlier batches: the host's checks
            # raise its error, or add the batch if it reaches no cell
            self._on_host(values, [tuple(None if a is None else np.asarray(a)
                                         for a in trio) for trio in stats])
            return self.n
        before = self.fields
        self.fields, checks = self.device.update(fields, stats)
        self.pending.append((values, before, checks))
        self.added += 1
        self.n += 1
        if len(self.pending) >= CHECK_EVERY:
            self._check()
        if self.fold_every is not None and self.added >= self.fold_every:
            self._fold()
        return self.n

    def _fit(self, stats: list) -> list | None:
        """The fields grown to this batch's steps (shapes only: no data
        crosses); None when a statistic's own shape is not the earlier one."""
        cap = self.context.max_steps
        out = []
        for site, estimator, fields, (value, _, _) in zip(
            self.context.sites, self.context.estimators, self.fields, stats,
            strict=True,
        ):
            axes = site.time_axes
            steps = tuple(s if cap is None else min(s, cap)
                          for s in value.shape[:axes])
            own = tuple(value.shape[axes:])
            if fields is None:
                out.append(None if 0 in steps else new_fields(
                    estimator, site.role, steps, own, self.device.dtype))
                continue
            if own != stat_shape(fields, axes) and 0 not in steps:
                return None
            out.append(grow_fields(fields, steps) if 0 not in steps else fields)
        return out

    def _check(self) -> None:
        """Read the pending checks; on a failure, roll back and raise."""
        pending, self.pending = self.pending, []
        for position, (values, before, checks) in enumerate(pending):
            if not np.all(np.asarray(checks)):
                self.fields = before
                self.added -= len(pending) - position
                self.n -= len(pending) - position
                self._explain(values)

    def _explain(self, values: list) -> None:
        """Raise the host checks' error for a batch that failed here."""
        current = self._merged()
        own = [stat_shape(arrays, site.time_axes) if arrays else None
               for arrays, site in zip(current.states, self.context.sites,
                                       strict=True)]
        explain(self.context, values, own, self.n)

    def _on_host(self, values: list, per_site: list | None = None) -> None:
        """Add one batch on the host, to the state so far (``per_site``: its
        statistics, if already computed)."""
        self._fold()
        if per_site is None:
            per_site = self.context.statistics(values, self.n, self.params)
        states = self.context.host.add(
            list(copy_state(self.base).states), per_site, self.n
        )
        self.n += 1
        self.base = EstimationState(self.base.spec, tuple(states), self.n)
        self._restart()

    def state(self) -> EstimationState:
        return self.with_sizes(self._merged())

    def close(self) -> None:
        self.pending = []
