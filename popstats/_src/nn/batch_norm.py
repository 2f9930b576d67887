"""Batch normalization whose batch statistics are marked for popstats.

:func:`batch_norm` normalizes with the batch mean and (biased) variance and
marks both with :func:`~popstats.bn_statistic` (role, shared group, element
count), so every popstats estimator, ``"pooled"`` included, works on it, and
so does :func:`~popstats.nn.running_average_updates`.

Stage: nn (:mod:`popstats._src.nn`). Members: :class:`BatchNorm`,
:func:`batch_norm`, :func:`bn_params`.
"""

from __future__ import annotations

import uuid
from typing import Any, NamedTuple

import numpy as np
import pytensor
import pytensor.tensor as pt
from pytensor.tensor.variable import TensorVariable

from popstats._src.errors import PopstatsError, as_int, check_number, describe_value
from popstats._src.graph.marker import bn_statistic

__all__ = ["BatchNorm", "batch_norm", "bn_params"]


class BatchNorm(NamedTuple):
    """The result of :func:`batch_norm`.

    Attributes
    ----------
    output : TensorVariable
        The normalized, scaled and shifted input (same shape as ``x``, and
        same dtype for a float ``x`` whatever ``floatX`` is; parameters of
        a wider dtype upcast it, as PyTensor does).
    mean, var : TensorVariable
        The marked batch mean and biased variance, shaped like the axes of
        ``x`` that are not reduced.
    gamma, beta : TensorVariable
        The scale and shift used.
    params : tuple of SharedVariable
        The parameters :func:`batch_norm` created (empty when both were given).
    """

    output: TensorVariable
    mean: TensorVariable
    var: TensorVariable
    gamma: TensorVariable
    beta: TensorVariable
    params: tuple


def _label_ok(label: object, call: str) -> str:
    if not isinstance(label, str) or not label:
        raise PopstatsError(
            f"{call}(label=...): expected a non-empty string, got "
            f"{describe_value(label)}. Pass e.g. label='layer1'."
        )
    return label


def bn_params(shape: Any, label: str = "bn", dtype: str | None = None) -> tuple:
    """Create a scale (ones) and shift (zeros) for :func:`batch_norm`.

    Use it to create the parameters outside a loop and pass them into the
    step function of a Scan (as ``non_sequences``): shared variables created
    inside a step would be new parameters per call, not trained ones.

    Parameters
    ----------
    shape : int or tuple of int
        Shape of the axes that are not reduced, e.g. ``(channels,)``.
    label : str, default "bn"
        Names the variables ``f"{label}.gamma"`` and ``f"{label}.beta"``.
    dtype : str, optional
        Defaults to ``pytensor.config.floatX``.

    Returns
    -------
    (gamma, beta) : tuple of SharedVariable
        With static shape ``shape``.

    Examples
    --------
    >>> from popstats import nn
    >>> gamma, beta = nn.bn_params(3, label="layer1")
    >>> gamma.name, gamma.get_value().tolist(), beta.get_value().tolist()
    ('layer1.gamma', [1.0, 1.0, 1.0], [0.0, 0.0, 0.0])
    """
    _label_ok(label, "bn_params")
    items = (shape,) if as_int(shape) is not None else shape
    try:
        dims = tuple(items)
    except TypeError:
        dims = (None,)
    if not dims or any((as_int(d) or 0) < 1 for d in dims):
        raise PopstatsError(
            f"bn_params(shape=...): expected positive ints, got "
            f"{describe_value(shape)}. Pass e.g. shape=(64,)."
        )
    dims = tuple(int(d) for d in dims)
    dtype = dtype or pytensor.config.floatX
    gamma = pytensor.shared(np.ones(dims, dtype), name=f"{label}.gamma", shape=dims)
    beta = pytensor.shared(np.zeros(dims, dtype), name=f"{label}.beta", shape=dims)
    return gamma, beta


def _check_axes(axes: Any, ndim: int) -> tuple[int, ...]:
    given = (axes,) if as_int(axes) is not None else axes
    try:
        items = [as_int(a) for a in given]
    except TypeError:  # not iterable
        items = []
    fix = f"Pass an int or a tuple of distinct ints in [-{ndim}, {ndim})"
    ints = [a for a in items if a is not None]
    if not items or len(ints) < len(items):
        raise PopstatsError(
            f"batch_norm(axes=...): expected an int or a non-empty tuple of ints, "
            f"got {describe_value(axes)}. {fix}, e.g. axes=0 (feed-forward) or "
            f"axes=(0, 2, 3) (NCHW)."
        )
    if any(not -ndim <= a < ndim for a in ints):
        raise PopstatsError(
            f"batch_norm(axes=...): axis out of range for a {ndim}-d x: "
            f"{describe_value(axes)}. {fix}."
        )
    norm = tuple(sorted(a % ndim for a in ints))
    if len(set(norm)) != len(norm):
        raise PopstatsError(
            f"batch_norm(axes=...): duplicated axes {describe_value(axes)}. {fix}."
        )
    if len(norm) == ndim:
        raise PopstatsError(
            f"batch_norm(axes=...): all {ndim} axes reduced; keep at least one "
            f"(the features or channels). {fix}."
        )
    return norm


def _check_mask(mask: Any, x: TensorVariable, axes: tuple) -> TensorVariable:
    try:
        mask = pt.as_tensor_variable(mask)
    except (TypeError, ValueError, NotImplementedError):
        raise PopstatsError(
            f"batch_norm(mask=...): expected a 0/1 tensor, got {describe_value(mask)}."
        ) from None
    kept = [a for a in range(x.ndim) if a not in axes]
    fix = (
        f"Give it x's shape over the reduced axes {axes} (ndim {len(axes)}) or "
        f"ndim {x.ndim} with size 1 on the other axes"
    )
    if mask.ndim == len(axes):
        pattern: list[str | int] = ["x"] * x.ndim
        for i, a in enumerate(axes):
            pattern[a] = i
        full = mask.dimshuffle(pattern)
    elif mask.ndim == x.ndim:
        full = mask
        if any(mask.type.shape[a] != 1 for a in kept):
            raise PopstatsError(
                f"batch_norm(mask=...): the mask must not vary over the kept "
                f"axes {tuple(kept)}, got static shape {mask.type.shape}. {fix}."
            )
    else:
        raise PopstatsError(
            f"batch_norm(mask=...): a {mask.ndim}-d mask does not match a "
            f"{x.ndim}-d x reduced over axes {axes}. {fix}."
        )
    for m, n in zip(full.type.shape, x.type.shape, strict=True):
        if m is not None and n is not None and m not in (1, n):
            raise PopstatsError(
                f"batch_norm(mask=...): mask of static shape {mask.type.shape} "
                f"does not broadcast against x of shape {x.type.shape} over "
                f"axes {axes}. {fix}."
            )
    return pt.cast(full, x.dtype)


def batch_norm(
    x: Any,
    axes: Any,
    gamma: Any = None,
    beta: Any = None,
    epsilon: float = 1e-5,
    mask: Any = None,
    label: str = "bn",
) -> BatchNorm:
    """Training-mode batch normalization with marked batch statistics.

    Computes ``gamma * (x - mean) / sqrt(var + epsilon) + beta`` where
    ``mean`` and the biased ``var`` are taken over ``axes`` of the batch
    (over the unmasked positions when ``mask`` is given). Both are marked with
    :func:`~popstats.bn_statistic` (labels ``f"{label}.mean"`` and
    ``f"{label}.var"``, roles ``"mean"`` / ``"var"``, one group per call,
    ``count`` = number of elements reduced over), so
    :func:`~popstats.estimate` with any estimator, and
    :func:`running_average_updates`, work on the graph.

    Parameters
    ----------
    x : TensorVariable
        The input, e.g. ``(batch, features)`` or ``(batch, C, H, W)``.
    axes : int or tuple of int
        Axes to reduce: ``0`` feed-forward, ``(0, 2, 3)`` for NCHW
        convolutions, ``0`` inside a Scan step (per-step statistics).
    gamma, beta : TensorVariable, optional
        Scale and shift, shaped like the kept axes (or with ``x.ndim`` axes,
        broadcastable). When None they are created as shared variables of
        ones / zeros (``x`` then needs a static shape on the kept axes).
        Inside a Scan step create them outside with :func:`bn_params` and
        pass them as ``non_sequences``.
    epsilon : float, default 1e-5
        Added to the variance; must be >= 0. It takes the statistics'
        dtype, so a float32 ``x`` stays float32 under ``floatX="float64"``.
    mask : TensorVariable, optional
        1 for real positions, 0 for padding: shaped like ``x`` over ``axes``
        (e.g. ``(time, batch)`` for ``x`` of ``(time, batch, features)`` and
        ``axes=(0, 1)``), or with ``x.ndim`` axes and size 1 on the others.
        Padded positions are excluded from the statistics and the count; the
        output is still computed there. A batch (or a step of a loop) with
        no unmasked position gives NaN batch statistics with a count of 0;
        popstats' estimation counts it as not reached (coverage 0), so
        sequences padded at the end estimate their real steps only.
    label : str, default "bn"
        Prefix of the statistic and parameter names; give each layer its own.

    Returns
    -------
    BatchNorm
        ``(output, mean, var, gamma, beta, params)``.

    Raises
    ------
    PopstatsError
        For a non-variable ``x``, bad ``axes``, a mask that does not fit, a
        negative ``epsilon``, missing static shapes or ill-shaped parameters.

    Examples
    --------
    >>> import numpy as np, pytensor, pytensor.tensor as pt
    >>> from popstats import nn
    >>> x = pt.tensor("x", shape=(None, 2))
    >>> bn = nn.batch_norm(x, axes=0, label="fc1")
    >>> [p.name for p in bn.params]
    ['fc1.gamma', 'fc1.beta']
    >>> f = pytensor.function([x], [bn.output, bn.mean, bn.var])
    >>> y, m, v = f(np.array([[1.0, 2.0], [3.0, 6.0]]))
    >>> m.tolist(), v.tolist()
    ([2.0, 4.0], [1.0, 4.0])
    >>> np.round(y, 3).tolist()
    [[-1.0, -1.0], [1.0, 1.0]]
    """
    if not isinstance(x, TensorVariable):
        raise PopstatsError(
            f"batch_norm(x=...): expected a PyTensor tensor variable, got "
            f"{describe_value(x)}. Build the model symbolically, e.g. "
            f"x = pt.matrix('x')."
        )
    axes = _check_axes(axes, x.ndim)
    _label_ok(label, "batch_norm")
    epsilon = check_number(epsilon, "batch_norm(epsilon=...)", minimum=0,
                           fix="The usual value is 1e-5.")
    kept = [a for a in range(x.ndim) if a not in axes]
    kept_shape = tuple(x.type.shape[a] for a in kept)
    params: list = []
    if gamma is None or beta is None:
        if None in kept_shape:
            raise PopstatsError(
                f"batch_norm(gamma=None): creating the parameters needs the static "
                f"shape of x on the kept axes {tuple(kept)}, but x has shape "
                f"{x.type.shape}. Give x a static shape (e.g. pt.tensor('x', "
                f"shape=(None, 64))) or pass gamma and beta (see bn_params)."
            )
        made = bn_params(kept_shape, label, x.dtype)
        if gamma is None:
            gamma = made[0]
            params.append(gamma)
        if beta is None:
            beta = made[1]
            params.append(beta)
    gamma_b = _broadcast_param(gamma, "gamma", x, axes, kept)
    beta_b = _broadcast_param(beta, "beta", x, axes, kept)
    pattern: list[str | int] = ["x"] * x.ndim
    for i, a in enumerate(kept):
        pattern[a] = i

    if mask is None:
        count = pt.prod(pt.stack([x.shape[a] for a in axes]))
        raw_mean = x.mean(axis=axes)
        raw_var = pt.sqr(x - raw_mean.dimshuffle(pattern)).mean(axis=axes)
    else:
        m = _check_mask(mask, x, axes)
        count = pt.broadcast_to(m, [x.shape[a] if a in axes else 1
                                    for a in range(x.ndim)]).sum()
        raw_mean = (x * m).sum(axis=axes) / count
        raw_var = (pt.sqr(x - raw_mean.dimshuffle(pattern)) * m).sum(axis=axes) / count
    raw_mean, raw_var = (_static(v, kept_shape, gamma) for v in (raw_mean, raw_var))
    group = f"{label}@{uuid.uuid4().hex[:8]}"
    mean = bn_statistic(raw_mean, f"{label}.mean", role="mean", group=group,
                        count=count)
    var = bn_statistic(raw_var, f"{label}.var", role="var", group=group,
                       count=count)
    # epsilon in the statistics' dtype: a Python float is a floatX constant,
    # which would upcast a float32 graph under floatX="float64"
    eps = pt.constant(np.asarray(epsilon, dtype=var.dtype))
    output = (x - mean.dimshuffle(pattern)) * (
        gamma_b / pt.sqrt(var.dimshuffle(pattern) + eps)
    ) + beta_b
    return BatchNorm(output, mean, var, gamma, beta, tuple(params))


def _broadcast_param(
    p: Any, name: str, x: TensorVariable, axes: tuple[int, ...], kept: list[int]
) -> TensorVariable:
    try:
        p = pt.as_tensor_variable(p)
    except (TypeError, ValueError, NotImplementedError):
        p = None
    if p is not None and p.ndim == len(kept):
        pattern: list[str | int] = ["x"] * x.ndim
        for i, a in enumerate(kept):
            pattern[a] = i
        return p.dimshuffle(pattern)
    if p is not None and p.ndim == x.ndim:
        return p
    raise PopstatsError(
        f"batch_norm({name}=...): expected a tensor shaped like the kept axes "
        f"{tuple(kept)} of x (or with {x.ndim} axes), got {describe_value(p)}. "
        f"Create it with bn_params(shape) or leave it None."
    )


def _static(stat: TensorVariable, kept_shape: tuple, gamma: TensorVariable) -> Any:
    """Give the statistic gamma's static shape where x's is unknown."""
    g = pt.as_tensor_variable(gamma).type.shape
    if len(g) != len(kept_shape) or None not in kept_shape:
        return stat
    merged = tuple(s if k is None else k for k, s in zip(kept_shape, g, strict=True))
    return pt.specify_shape(stat, merged) if merged != kept_shape else stat


