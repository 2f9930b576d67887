"""The recognizer for pytensor-ml's batch norms.

Registered in :mod:`popstats._src.graph.recognize`.

pytensor-ml (>= 0.3) applies ``BatchNorm`` as a ``SymbolicOp``:
``BatchNormLayer`` (running statistics tracked) or
``NoRunningStatsBatchNormLayer``. Both take ``X``, then ``loc`` and
``scale`` when ``affine``, and ``BatchNormLayer`` then the running mean and
variance. The batch mean and biased variance over every axis but the last
(batch and spatial axes of a channels-last input) exist only in the op's
inner graph, accumulated in float32 for float16/bfloat16 inputs. Output 0 is
the normalized input; outputs 1 and 2 are the updated running averages
(``BatchNormLayer``) or the statistics cast to the input's dtype.

:func:`expand` recomputes the three outputs from the node's inputs, the
same way, with the float32 (or input-dtype) mean and variance marked. This
module never imports pytensor_ml: ops are recognized by class name and
module, so popstats works without it installed.

Stage: graph (:mod:`popstats._src.graph`). Members: :class:`Application`,
:func:`collect_applications`, :func:`describe`, :func:`expand`,
:func:`layer_name`, :func:`matches`, :func:`warn_dropout` (an estimation
pass through pytensor-ml's dropout).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, cast

import pytensor.tensor as pt
from pytensor.graph.basic import Apply, Variable
from pytensor.tensor.variable import TensorVariable

from popstats._src.errors import PopstatsWarning
from popstats._src.graph.moments import mark_moments
from popstats._src.graph.surgery import walk_nodes

__all__ = ["Application", "collect_applications", "describe", "expand",
           "layer_name", "matches", "warn_dropout"]

_MODULE = "pytensor_ml.layers.norm"
_TRACKING = "BatchNormLayer"
_NO_RUNNING = "NoRunningStatsBatchNormLayer"
#: suffixes pytensor-ml gives a norm layer's parameters (``<layer>_<suffix>``)
_SUFFIXES = ("_running_mean", "_running_var", "_loc", "_scale")
#: pytensor-ml's default layer name, used when nothing names the layer
_DEFAULT_NAME = "BatchNorm"


@dataclass(frozen=True)
class Application:
    """One recognized application, as :func:`collect_applications` records it.

    ``running`` is ``(mean, var)``: the variables its running statistics
    come from (update chain and loops followed out), or None for a
    ``NoRunningStatsBatchNormLayer``. ``elements`` is the number of
    elements per batch row it reduces over (product of the static spatial
    axes; None when one is unknown).
    """

    layer: str
    running: tuple[Variable, Variable] | None
    elements: int | None


#: while :func:`collect_applications` runs: statistic group -> application
_COLLECTING: ContextVar[dict[str, Application] | None] = ContextVar(
    "popstats_ptml_applications", default=None)


@contextmanager
def collect_applications() -> Iterator[dict[str, Application]]:
    """Record every application :func:`expand` sees, by statistic group."""
    found: dict[str, Application] = {}
    token = _COLLECTING.set(found)
    try:
        yield found
    finally:
        _COLLECTING.reset(token)


def _record(node: Apply, context: Any, group: str, name: str) -> None:
    found = _COLLECTING.get()
    if found is None:
        return
    X = node.inputs[0]
    running = None
    if _kind(node.op) == _TRACKING:
        mean, var = node.inputs[-2:]
        running = (_follow_updates(mean, context), _follow_updates(var, context))
    spatial = X.type.shape[1:-1]
    elements = None if None in spatial else int(math.prod(spatial))
    found[group] = Application(name, running, elements)


def _kind(op: object) -> str | None:
    for cls in type(op).__mro__:
        if cls.__module__ == _MODULE and cls.__name__ in (_TRACKING, _NO_RUNNING):
            return cls.__name__
    return None


def _dropouts(outputs) -> Iterator[Apply]:
    """pytensor-ml's ``DropoutLayer`` applications, in loops and bodies too."""
    for _, node in walk_nodes(list(outputs)):
        cls = type(node.op)
        if cls.__name__ == "DropoutLayer" and cls.__module__.startswith("pytensor_ml"):
            yield node


def warn_dropout(outputs, call: str, upstream: str = "batch") -> None:
    """Warn when an estimation pass runs through pytensor-ml's ``Dropout``:
    its masks come from generators a plain compiled function does not
    advance (one mask for every batch of a shape), while prediction
    (``compile_predict``, ``Model.predict``) drops the layer.
    (``upstream="population"`` refuses random numbers instead.)"""
    if upstream != "batch":
        return
    found = next(_dropouts(outputs), None)
    if found is None:
        return
    warnings.warn(PopstatsWarning(
        f"{call}: the graph holds pytensor-ml Dropout layers ({found.op}): the "
        f"estimation pass runs them with their generators as they are (the same "
        f"mask for every batch of a shape), so each statistic is that of one "
        f"dropped-out network, while prediction drops the layers. Estimate on "
        f"the model built again without its Dropout layers (new layer objects: "
        f"a BatchNorm applied again chains to its first application), with the "
        f"same weights, as it is predicted."
    ), stacklevel=4)


def matches(op: object) -> bool:
    """Whether ``op`` is one of pytensor-ml's training-mode batch norms."""
    return _kind(op) is not None


def per_example(op: object) -> bool:
    """pytensor-ml's ``Im2Col`` (inside its convolutions and pooling): each
    example's windows, batch axis first; ``Col2Im`` (inside its transposed
    convolutions): each example's windows added back, batch axis first."""
    cls = type(op)
    return cls.__name__ in ("Im2Col", "Col2Im") and cls.__module__.startswith(
        "pytensor_ml")


def describe(op: Any) -> str:
    """The op's class and props; never its ``name`` (equal ops are interned)."""
    props = tuple((p, getattr(op, p)) for p in getattr(op, "__props__", ()))
    return f"{_MODULE}.{_kind(op)}{props!r}"


def _follow_updates(var: Variable, context: Any) -> Variable:
    """The shared variable behind a running-statistic input.

    A layer object applied again reads what its previous application wrote
    (that application's output 1 or 2): follow ``update_map`` back to the
    root, and out of loops through their non-sequences.
    """
    for _ in range(10_000):
        var = context.origin(var)
        owner = var.owner
        if owner is None or _kind(owner.op) != _TRACKING:
            return var
        index = owner.op.update_map().get(owner.outputs.index(var))
        if index is None:
            return var
        var = owner.inputs[index]
    return var


def layer_name(node: Apply, context: Any) -> str:
    """The name of the layer a batch-norm application belongs to.

    From the ``layer_name`` of its parameters (``loc``, ``scale``, running
    statistics), or their names without pytensor-ml's suffix; the op's own
    ``name`` only in the outer graph (in a loop body PyTensor interns equal
    ops, so the name may be another layer's), else ``"BatchNorm"``.
    """
    for var in node.inputs[1:]:
        root = _follow_updates(var, context)
        name = getattr(root, "layer_name", None)
        if isinstance(name, str) and name:
            return name
        shown = root.name or ""
        for suffix in _SUFFIXES:
            if shown.endswith(suffix) and len(shown) > len(suffix):
                return shown[: -len(suffix)]
    if context.depth == 0 and getattr(node.op, "name", None):
        return str(node.op.name)
    return _DEFAULT_NAME


def expand(node: Apply, context: Any) -> list[Variable]:
    """The node's outputs recomputed with its batch mean and variance marked."""
    op = node.op
    # pytensor-ml's batch norm ops take and give tensors
    X, *rest = cast(list[TensorVariable], node.inputs)
    affine = bool(op.affine)
    loc, scale = rest[:2] if affine else (None, None)
    running = rest[2:] if affine else rest
    wide = X.astype("float32") if X.dtype in ("float16", "bfloat16") else X
    axes = tuple(range(X.ndim - 1))
    count = X.shape[0]
    for axis in axes[1:]:
        count = count * X.shape[axis]
    name = layer_name(node, context)
    mean, var = mark_moments(wide.mean(axis=axes), wide.var(axis=axes), name,
                             count=count)
    _record(node, context, mean.owner.op.group, name)
    normalized = ((wide - mean) / pt.sqrt(var + op.epsilon)).astype(X.dtype)
    if affine:
        normalized = normalized * scale + loc
    mean_out, var_out = mean.astype(X.dtype), var.astype(X.dtype)
    if _kind(op) == _TRACKING:
        running_mean, running_var = running
        # typed constants: the op was built under the floatX of its day
        m = pt.constant(op.momentum, dtype=mean_out.dtype)
        rest_m = pt.constant(1 - op.momentum, dtype=mean_out.dtype)
        mean_out = m * mean_out + rest_m * running_mean
        var_out = m * var_out + rest_m * running_var
    body = [normalized, mean_out, var_out]
    outputs = cast(list[TensorVariable], node.outputs)
    return [new.astype(old.dtype) for new, old in zip(body, outputs, strict=True)]
