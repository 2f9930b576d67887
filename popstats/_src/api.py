"""The one-call entry point: estimate, then rewrite."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, overload

import pytensor
from pytensor.graph.basic import Variable

from popstats._src.estimator import estimate
from popstats._src.exporter import as_variables
from popstats._src.rewriter import rewrite

__all__ = ["get_inference_graph"]


@overload
def get_inference_graph(
    inputs: Sequence[Variable],
    outputs: Variable,
    batches: Iterable[Any],
    *,
    mode: str | pytensor.compile.Mode | None = ...,
    return_stats: bool = ...,
) -> Variable: ...
@overload
def get_inference_graph(
    inputs: Sequence[Variable],
    outputs: Sequence[Variable],
    batches: Iterable[Any],
    *,
    mode: str | pytensor.compile.Mode | None = ...,
    return_stats: bool = ...,
) -> list[Variable]: ...
def get_inference_graph(inputs, outputs, batches, *, mode=None, return_stats=False):
    """Estimate population statistics over ``batches`` and rewrite ``outputs``.

    Equivalent to ``rewrite(outputs, estimate(inputs, outputs, batches))``.

    Parameters
    ----------
    inputs : sequence of Variable
        The graph's free inputs, which the batches give values for.
    outputs : Variable or sequence of Variable
        The training graph's outputs (built from marked statistics).
    batches : iterable
        Training batches: dicts keyed by input name (or input variable), or
        tuples/lists in the order of ``inputs``. Any iterable, including a
        one-shot generator; it is consumed once.
    mode : str or Mode, optional
        PyTensor compilation mode for the estimation pass.
    return_stats : bool, default False
        Also return the :class:`~popstats.PopulationStatistics`.

    Returns
    -------
    Variable or list of Variable
        The inference outputs, in the structure of ``outputs``; with
        ``return_stats=True``, a pair ``(outputs, stats)``.

    Examples
    --------
    >>> import numpy as np, pytensor, pytensor.tensor as pt, popstats
    >>> x = pt.matrix("x")
    >>> mean = popstats.bn_statistic(x.mean(axis=0), label="mean")
    >>> var = popstats.bn_statistic(x.var(axis=0), label="var")
    >>> y = (x - mean) / pt.sqrt(var + 1e-5)
    >>> rng = np.random.default_rng(0)
    >>> batches = ({"x": rng.normal(3.0, 2.0, (64, 2))} for _ in range(50))
    >>> y_inf = popstats.get_inference_graph([x], y, batches)
    >>> out = pytensor.function([x], y_inf)(np.array([[3.0, 5.0]]))
    >>> np.round(out, 1)  # one example, normalized with population statistics
    array([[0., 1.]])
    """
    outs = as_variables(outputs, "get_inference_graph")
    stats = estimate(inputs, outs, batches, mode=mode)
    result = rewrite(outputs, stats)
    return (result, stats) if return_stats else result

