"""Marking the mean and variance of one normalization as a pair.

Stage: graph (:mod:`popstats._src.graph`). Members: :func:`mark_moments`.
"""

from __future__ import annotations

import uuid
from typing import Any

from pytensor.tensor.variable import TensorVariable

from popstats._src.graph.marker import bn_statistic

__all__ = ["mark_moments"]


def mark_moments(
    mean: TensorVariable, var: TensorVariable, label: str, *, count: Any = None
) -> tuple[TensorVariable, TensorVariable]:
    """Mark the batch mean and variance of one normalization.

    Labels ``f"{label}.mean"`` and ``f"{label}.var"``, roles ``"mean"`` and
    ``"var"``, and one group per call (every application of a layer is its
    own normalization), so the ``"pooled"`` estimator pairs them.

    Parameters
    ----------
    mean, var : TensorVariable
        The batch mean and (biased) variance.
    label : str
        The normalization's name, e.g. the layer's.
    count : int or scalar TensorVariable, optional
        Number of elements each statistic reduces over.

    Returns
    -------
    tuple of TensorVariable
        The marked mean and variance; use them in place of the unmarked.

    Examples
    --------
    >>> import pytensor.tensor as pt, popstats
    >>> x = pt.matrix("x")
    >>> mean, var = popstats.mark_moments(x.mean(0), x.var(0), "bn1",
    ...                                   count=x.shape[0])
    >>> print(mean.owner.op, var.owner.op.role)
    BNStat{bn1.mean} var
    """
    group = f"{label}@{uuid.uuid4().hex[:8]}"
    return (
        bn_statistic(mean, f"{label}.mean", role="mean", group=group, count=count),
        bn_statistic(var, f"{label}.var", role="var", group=group, count=count),
    )
