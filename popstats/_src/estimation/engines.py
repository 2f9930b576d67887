"""The engines of an estimation pass: where its batches are computed and added.

An :class:`~popstats.Estimation` chooses its engine once, when it is built
(:func:`choose_engine`), from its mode and ``accumulate=``:

- :class:`HostEngine` -- a compiled function returns each batch's
  statistics, added on the host
  (:class:`~popstats._src.estimation.passes.HostPass`);
- :class:`GraphEngine` -- the compiled function adds them to accumulators in
  shared variables itself
  (:mod:`~popstats._src.estimation.accumulate_graph`,
  :class:`~popstats._src.estimation.passes.GraphPass`);
- :class:`DeviceEngine` -- JAX: a jitted call whose parameters and
  accumulators stay on the device
  (:class:`~popstats._src.estimation.device_pass.DevicePass`), or, with
  ``accumulate="host"``, whose statistics are added on the host.

Each is an :class:`Engine`: it compiles once (``compile``; deferred with
``Estimation(compile_now=False)``), computes one batch's statistics for the
host (``evaluate``: the host path, ``on_batch`` and the explanation of a
failed check), and makes the runs of its passes (``pass_for``).

Stage: estimation. Members: :class:`Engine`, :class:`HostEngine`,
:class:`GraphEngine`, :class:`DeviceEngine`, :func:`choose_engine`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, cast

import pytensor
from pytensor.graph.basic import Variable
from pytensor.tensor.variable import TensorVariable

from popstats._src.estimation import estimators as est
from popstats._src.estimation.accumulate_graph import GraphAccumulator
from popstats._src.estimation.device_function import DeviceFunction, is_jax
from popstats._src.estimation.device_pass import DevicePass
from popstats._src.estimation.passes import (
    GraphPass,
    HostPass,
    Occupancy,
    Pass,
    PassContext,
)
from popstats._src.estimation.state import EstimationState
from popstats._src.export.sites import Site

__all__ = ["DeviceEngine", "Engine", "GraphEngine", "HostEngine", "choose_engine"]

#: per statistic its (value, count or None, weight or None) outputs
Trios = Sequence[
    tuple[TensorVariable, TensorVariable | None, TensorVariable | None]
]


class Engine(Protocol):
    """How an Estimation computes and adds its batches (chosen once)."""

    #: ``"graph"`` or ``"host"``: where its passes add the batches
    accumulate: str

    @property
    def compiled(self) -> bool:
        """Whether :meth:`compile` has run."""
        ...

    def compile(self) -> Engine:
        """Compile (once); returns the engine to use from now on: itself,
        or the host engine a device engine falls back to."""
        ...

    def evaluate(self, values: list, params: list | None) -> Sequence[Any]:
        """The estimation function's outputs for one batch (``params``: the
        parameters on the device, from :meth:`parameters`, or None)."""
        ...

    def parameters(self) -> list | None:
        """The parameters a host pass gives :meth:`evaluate` (once per pass)."""
        ...

    def pass_for(self, context: PassContext, state: EstimationState) -> Pass:
        """A run from ``state`` adding its batches where this engine does."""
        ...


class HostEngine:
    """A compiled function returning each batch's statistics (on the host)."""

    accumulate = "host"

    def __init__(self, inputs: Sequence[Variable], outputs: Sequence[Variable],
                 mode: Any, function: Callable[..., Any] | None = None) -> None:
        self.inputs, self.outputs, self.mode = list(inputs), list(outputs), mode
        self.function = function

    @property
    def compiled(self) -> bool:
        return self.function is not None

    def compile(self) -> HostEngine:
        self._function()
        return self

    def _function(self) -> Callable[..., Any]:
        """The compiled function (compiled on the first call)."""
        if self.function is None:
            self.function = pytensor.function(self.inputs, self.outputs,
                                              mode=self.mode,
                                              on_unused_input="ignore")
        return self.function

    def evaluate(self, values: list, params: list | None) -> Sequence[Any]:
        return self._function()(*values)

    def parameters(self) -> list | None:
        return None

    def pass_for(self, context: PassContext, state: EstimationState) -> Pass:
        return HostPass(context, state)


class GraphEngine:
    """Accumulators in shared variables, updated by the compiled function
    (one :class:`~popstats._src.estimation.passes.GraphPass` at a time: its
    :class:`~popstats._src.estimation.passes.Occupancy`)."""

    accumulate = "graph"

    def __init__(self, host: HostEngine, accumulator: GraphAccumulator) -> None:
        self.host = host  # for evaluate (compiled when first needed)
        self.accumulator = accumulator
        self.function: Callable[..., Any] | None = None
        self.occupancy = Occupancy()

    @property
    def compiled(self) -> bool:
        return self.function is not None

    def compile(self) -> GraphEngine:
        self._function()
        return self

    def _function(self) -> Callable[..., Any]:
        """The compiled update of the accumulators (compiled on the first call)."""
        if self.function is None:
            host = self.host
            self.function = pytensor.function(
                host.inputs, self.accumulator.outputs,
                updates=self.accumulator.updates, mode=host.mode,
                on_unused_input="ignore")
        return self.function

    def evaluate(self, values: list, params: list | None) -> Sequence[Any]:
        return self.host.evaluate(values, params)

    def parameters(self) -> list | None:
        return None

    def pass_for(self, context: PassContext, state: EstimationState) -> Pass:
        return GraphPass(context, state, self.accumulator, self._function(),
                         self.occupancy)


class DeviceEngine:
    """A JAX device: the jitted call of the estimation function
    (:class:`~popstats._src.estimation.device_function.DeviceFunction`)."""

    def __init__(self, inputs: Sequence[Variable], outputs: Sequence[Variable],
                 mode: Any, accumulate: str, sites: Sequence[Site],
                 estimators: Sequence[est.Estimator],
                 partners: Sequence[int | None], max_steps: int | None,
                 slots: Sequence[tuple[int | None, ...]]) -> None:
        self.inputs, self.outputs, self.mode = list(inputs), list(outputs), mode
        self.accumulate = accumulate
        self.accumulated = (tuple(sites), tuple(estimators), tuple(partners),
                            max_steps)
        self.slots = tuple(slots)
        self.device: DeviceFunction | None = None

    @property
    def compiled(self) -> bool:
        return self.device is not None

    def compile(self) -> Engine:
        if self.device is None:
            try:
                self.device = DeviceFunction(self.inputs, self.outputs, self.mode,
                                             *self.accumulated)
            except TypeError:  # pragma: no cover - another JAX linker layout
                return HostEngine(self.inputs, self.outputs, self.mode).compile()
        return self

    def evaluate(self, values: list, params: list | None) -> Sequence[Any]:
        device = self._device()
        return (device.function(*values) if params is None
                else device.jit(*values, *params))

    def parameters(self) -> list | None:
        # the parameters cross to the device once per pass, not per call
        return self._device().put_parameters()

    def pass_for(self, context: PassContext, state: EstimationState) -> Pass:
        if self.accumulate == "graph":
            return DevicePass(context, state, self._device(), self.slots)
        return HostPass(context, state, params=self.parameters())

    def _device(self) -> DeviceFunction:
        """The device function (an Estimation compiles before any run)."""
        return cast(DeviceFunction, self.device)


def choose_engine(inputs: Sequence[Variable], trios: Trios, mode: Any,
                  accumulate: str, sites: Sequence[Site],
                  estimators: Sequence[est.Estimator],
                  partners: Sequence[int | None], max_steps: int | None,
                  ) -> tuple[Engine, tuple[tuple[int | None, ...], ...]]:
    """The engine of a pass, and per statistic the positions of its (value,
    count, weight) among the estimation function's outputs (None: not
    marked)."""
    flat: list[Variable] = []
    slots = []
    for trio in trios:
        slot = []
        for var in trio:
            slot.append(None if var is None else len(flat))
            if var is not None:
                flat.append(var)
        slots.append(tuple(slot))
    if is_jax(mode):
        return DeviceEngine(inputs, flat, mode, accumulate, sites, estimators,
                            partners, max_steps, slots), tuple(slots)
    host = HostEngine(inputs, flat, mode)
    if accumulate == "graph":
        accumulator = GraphAccumulator(sites, estimators, partners, list(trios),
                                       max_steps, slots)
        return GraphEngine(host, accumulator), tuple(slots)
    return host, tuple(slots)
