"""The estimation function as a JAX device runs it.

Stage: estimation. Members: :func:`is_jax` (does a mode compile with
PyTensor's JAX linker), :func:`lacks_float64` (JAX without 64-bit floats)
and :class:`DeviceFunction`, the jitted callable of the estimation function
with its parameters and the jitted accumulator update, which
:class:`~popstats._src.estimation.device_pass.DevicePass` and, in JAX mode,
:class:`~popstats._src.estimation.passes.HostPass` call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytensor
from pytensor.compile.mode import Mode
from pytensor.graph.basic import Variable

from popstats._src.estimation import estimators as est
from popstats._src.estimation.accumulate_device import make_update
from popstats._src.export.exporter import Site

__all__ = ["DeviceFunction", "is_jax", "lacks_float64"]


def is_jax(mode: object) -> bool:
    """Whether ``mode`` compiles with PyTensor's JAX linker."""
    linker = pytensor.compile.mode.get_mode(mode).linker
    return type(linker).__name__ == "JAXLinker"


def lacks_float64(mode: object) -> bool:
    """Whether ``mode`` computes float64 as float32 (JAX without x64)."""
    if not is_jax(mode):
        return False
    import jax

    # (read() refuses this flag on older jax, where it has a context manager)
    return not jax.config.jax_enable_x64  # type: ignore[attr-defined, unused-ignore]  # jax < 0.12 types Config without its flags


class DeviceFunction:
    """The jitted callable of the estimation function, which of its
    arguments are the parameters, and the jitted accumulator update.

    Parameters
    ----------
    inputs, outputs
        The estimation function's inputs and its flat outputs (per
        statistic its value, count and weight, where given).
    mode
        A JAX compilation mode.
    sites, estimators, partners, max_steps
        As in :class:`~popstats.Estimation`: what the update accumulates.

    Raises ``TypeError`` when the compiled function is not laid out as
    expected (the caller then accumulates on the host).
    """

    def __init__(
        self,
        inputs: Sequence[Variable],
        outputs: Sequence[Variable],
        mode: str | Mode | None,
        sites: Sequence[Site],
        estimators: Sequence[est.Estimator],
        partners: Sequence[int | None],
        max_steps: int | None,
    ) -> None:
        fn = pytensor.function(list(inputs), list(outputs), mode=mode,
                               on_unused_input="ignore")
        jit = getattr(fn.vm, "jit_fn", None)
        storage = fn.input_storage[len(inputs):]
        if (
            jit is None
            or len(fn.maker.fgraph.inputs) != len(fn.input_storage)
            or any(not isinstance(c.data, np.ndarray) for c in storage)
        ):
            raise TypeError("not a JAX function with array parameters")
        self.jit = jit
        #: the compiled function (also the host path's)
        self.function = fn
        #: the parameters' containers (the shared variables' own)
        self.parameters = storage
        self.dtype = "float32" if lacks_float64(mode) else "float64"
        self.update = make_update(sites, estimators, partners, max_steps,
                                  self.dtype)

    def put_parameters(self) -> list[Any]:
        """The parameters' current values, on the device (once per pass)."""
        import jax

        return [jax.device_put(c.data) for c in self.parameters]
