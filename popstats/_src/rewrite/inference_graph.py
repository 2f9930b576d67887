"""Estimate, then rewrite, in one call: :func:`get_inference_graph`.

Stage: rewrite (it runs :func:`popstats._src.estimation.one_call.estimate_as` and
then :func:`popstats._src.rewrite.rewriter.rewrite`; the estimation options
are :class:`~popstats._src.estimation.options.EstimationOptions`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any, Unpack, overload

from pytensor.graph.basic import Variable

from popstats._src.errors import PopstatsError, describe_value
from popstats._src.estimation.one_call import estimate_as
from popstats._src.estimation.options import (
    EstimationOptions,
    OptionKeywords,
    takes_options,
)
from popstats._src.export.exporter import as_variables
from popstats._src.independence.mixing import check_batch_axes, data_inputs
from popstats._src.rewrite.rewriter import rewrite_as

__all__ = ["get_inference_graph"]


@overload
def get_inference_graph(
    inputs: Sequence[Variable],
    outputs: Variable,
    batches: Iterable[Any],
    *,
    checkpoint: str | os.PathLike | None = ...,
    checkpoint_every: int = ...,
    progress: bool | str = ...,
    return_stats: bool = ...,
    batch_axes: dict | None = ...,
    **options: Unpack[OptionKeywords],
) -> Variable: ...
@overload
def get_inference_graph(
    inputs: Sequence[Variable],
    outputs: Sequence[Variable],
    batches: Iterable[Any],
    *,
    checkpoint: str | os.PathLike | None = ...,
    checkpoint_every: int = ...,
    progress: bool | str = ...,
    return_stats: bool = ...,
    batch_axes: dict | None = ...,
    **options: Unpack[OptionKeywords],
) -> Sequence[Variable]: ...
@takes_options
def get_inference_graph(
    inputs, outputs, batches, *, checkpoint=None, checkpoint_every=100,
    progress="auto", return_stats=False, batch_axes=None, **options,
):
    """Estimate population statistics over ``batches`` and rewrite ``outputs``.

    Equivalent to ``rewrite(outputs, estimate(inputs, outputs, batches,
    **options))``; errors name ``get_inference_graph``.

    Parameters
    ----------
    inputs : sequence of Variable
        The graph's free inputs, which the batches give values for.
    outputs : Variable or sequence of Variable
        The training graph's outputs (built from marked statistics); a list,
        tuple or namedtuple keeps its structure.
    batches : iterable
        Training batches: dicts keyed by input name (or input variable), or
        tuples/lists in the order of ``inputs``. Any iterable, including a
        one-shot generator; it is consumed once.
    [estimation options]
    checkpoint, checkpoint_every, progress
        As for :func:`~popstats.estimate`: checkpointing and a progress bar.
    return_stats : bool, default False
        Also return the :class:`~popstats.PopulationStatistics`.
    batch_axes : dict, optional
        As for :func:`~popstats.rewrite`: input name to its batch axis (None:
        none) where the marked statistics do not tell. The inference graph is
        checked for operations that still mix examples (a batch statistic
        left unmarked); each is named in a :class:`~popstats.PopstatsWarning`.

    Returns
    -------
    Variable or sequence of Variable
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
    call = "get_inference_graph"
    checked = EstimationOptions.check(call, options)
    if not isinstance(return_stats, bool):
        raise PopstatsError(
            f"{call}(return_stats=...): expected True or False, got "
            f"{describe_value(return_stats)}."
        )
    outs = as_variables(outputs, call)
    check_batch_axes(batch_axes, data_inputs(outs), call)
    stats = estimate_as(
        call, inputs, outs, batches, checked, checkpoint=checkpoint,
        checkpoint_every=checkpoint_every, progress=progress,
    )
    result = rewrite_as(call, outputs, stats, None, "structure", batch_axes, 3)
    return (result, stats) if return_stats else result
