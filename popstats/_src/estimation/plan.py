"""What an :class:`~popstats.Estimation` is built from: :class:`EstimationPlan`.

Stage: estimation. ``Estimation(inputs, outputs, **options)`` makes a plan
of its arguments; the calls that check the options themselves
(:func:`~popstats.estimate`, :func:`~popstats.drift`, :mod:`popstats.dask`)
and the later stages that give their own estimation graph (the passes of
``upstream="population"``) build one with
:meth:`Estimation.of(plan) <popstats.Estimation.of>`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pytensor.graph.basic import Variable

from popstats._src.estimation.options import EstimationOptions
from popstats._src.export.sites import EstimationGraph

__all__ = ["EstimationPlan"]


@dataclass(frozen=True)
class EstimationPlan:
    """What an :class:`~popstats.Estimation` is built from
    (:meth:`Estimation.of <popstats.Estimation.of>`).

    Attributes
    ----------
    inputs, outputs
        As for :func:`~popstats.estimate` (``outputs`` a variable or a
        sequence of them).
    options : EstimationOptions
        Checked already (by :meth:`EstimationOptions.check
        <popstats._src.estimation.options.EstimationOptions.check>`, naming
        ``call``).
    call : str
        The public call its errors name.
    compile_now : bool
        As for :class:`~popstats.Estimation`.
    graph : EstimationGraph or None
        The estimation graph to run, made by a later stage (the inference
        graph's, :mod:`popstats._src.upstream.inference_export`); None: exported
        from ``outputs``.
    upstream : str
        The ``upstream`` of the pass's
        :class:`~popstats._src.estimation.spec.PassSpec`: ``"batch"``, or,
        for a pass over the inference graph, ``"population..."``.
    """

    inputs: Sequence[Variable]
    outputs: Variable | Sequence[Variable]
    options: EstimationOptions
    call: str = "Estimation"
    compile_now: bool = True
    graph: EstimationGraph | None = None
    upstream: str = "batch"
