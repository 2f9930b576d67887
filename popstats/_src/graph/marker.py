"""The marker: a variable marked as a batch statistic.

The mark is an identity ``Op`` (:class:`BNStat`) whose props carry a unique
key, the label, and optionally the statistic's role and group. PyTensor >=
3.1 freezes Scan inner graphs, dropping ``.tag`` and ``.name`` of inner
variables and interning structurally equal nodes; an op with a unique key in
its props survives all of that. A second, optional input carries the number
of elements the statistic reduces over (``count``), so that it travels with
the statistic through loops. The mark's gradient is the identity (the count
is disconnected), and a rewrite registered in ``canonicalize`` (which runs
before elemwise fusion, in every mode including ``FAST_COMPILE``) removes it,
so a compiled graph with marks is the graph without them.

The original Theano tool's convention, ``var.tag.bn_statistic = True`` with
an optional ``var.tag.bn_label`` (and ``bn_role``, ``bn_group``), is
recognised by :func:`is_statistic` wherever PyTensor keeps tags.

Stage: graph (:mod:`popstats._src.graph`). Members: :data:`ROLES`,
:class:`BNStat`, :func:`bn_statistic`, :func:`is_statistic`,
:func:`statistic_count`, :func:`statistic_group`, :func:`statistic_key`,
:func:`statistic_label`, :func:`statistic_role`.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import pytensor.tensor as pt
from pytensor.gradient import disconnected_type
from pytensor.graph.basic import Apply, Variable
from pytensor.graph.op import Op
from pytensor.graph.rewriting.basic import node_rewriter
from pytensor.tensor.rewriting.basic import (
    register_canonicalize,
    register_infer_shape,
    register_useless,
)
from pytensor.tensor.variable import TensorVariable

from popstats._src.errors import PopstatsError, as_number, check_number, describe_value

__all__ = [
    "ROLES",
    "BNStat",
    "bn_statistic",
    "is_statistic",
    "statistic_count",
    "statistic_group",
    "statistic_key",
    "statistic_label",
    "statistic_role",
]

ROLES = ("mean", "var", "std")


class BNStat(Op):
    """Identity op marking its first input as a batch statistic.

    ``key`` is unique per :func:`bn_statistic` call, so two marks never
    merge; ``label`` is the user-facing name; ``role`` (``"mean"``,
    ``"var"``, ``"std"`` or None) and ``group`` pair a mean with its
    variance. The optional second input is the element count.
    """

    __props__ = ("key", "label", "role", "group")
    view_map = {0: [0]}  # noqa: RUF012 - PyTensor's Op attribute

    def __init__(self, key: str, label: str, role: str | None = None,
                 group: str | None = None):
        self.key = key
        self.label = label
        self.role = role
        self.group = group

    def make_node(self, *inputs: Variable) -> Apply:
        x, *count = map(pt.as_tensor_variable, inputs)
        return Apply(self, [x, *count], [x.type()])

    def perform(
        self, node: Apply, inputs: Sequence[Any], output_storage: list[list[Any]]
    ) -> None:
        output_storage[0][0] = inputs[0]

    def infer_shape(self, *args: Any) -> list:
        # (fgraph, node, shapes) on PyTensor 3.0, (node, shapes) on 3.3.
        return [args[-1][0]]

    def connection_pattern(self, node: Apply) -> list[list[bool]]:
        return [[True]] + [[False]] * (len(node.inputs) - 1)

    def pullback(
        self,
        inputs: Sequence[Variable],
        outputs: Sequence[Variable],
        output_grads: Sequence[Variable],
    ) -> list[Variable]:
        return [output_grads[0]] + [disconnected_type() for _ in inputs[1:]]

    def __str__(self) -> str:
        return f"BNStat{{{self.label}}}"


@register_infer_shape
@register_canonicalize("fast_compile")
@register_useless("fast_compile")
@node_rewriter([BNStat])
def remove_bn_statistic(fgraph: Any, node: Apply) -> list[Variable]:
    """Compile-time removal of the mark: the statistic itself remains."""
    return [node.inputs[0]]


def bn_statistic(
    var: Any,
    label: str | None = None,
    *,
    role: str | None = None,
    group: str | None = None,
    count: Any = None,
) -> TensorVariable:
    """Mark ``var`` as a batch statistic and return the marked variable.

    Use the returned variable in place of ``var`` (downstream computations
    must depend on it for the mark to be found). The mark is an identity:
    values and gradients pass through unchanged, and PyTensor removes it when
    compiling, so a marked graph runs exactly as fast as an unmarked one.

    Parameters
    ----------
    var : TensorVariable
        The batch statistic, e.g. ``x.mean(axis=0)``.
    label : str, optional
        A readable name used in tables, errors and for the shared variable
        that holds the population value. Defaults to ``var.name`` or
        ``"bn_stat"``. Labels shown by popstats are made unique by suffixes
        when several statistics share one.
    role : {"mean", "var", "std"}, optional
        What the statistic is. Estimators that treat moments specially
        (``"pooled"``, ``"unbiased"``, ``"ema"``) use it; without a role a
        statistic is averaged.
    group : str, optional
        Ties a ``"mean"`` to the ``"var"`` or ``"std"`` of the same
        normalization (needed by the ``"pooled"`` estimator).
    count : int or scalar TensorVariable, optional
        Number of elements the batch statistic reduces over (e.g. the batch
        size, or the number of unmasked positions). Needed by the
        ``"weighted"``, ``"pooled"`` and ``"unbiased"`` estimators.

    Returns
    -------
    TensorVariable
        ``var`` wrapped in a :class:`BNStat` marker.

    Raises
    ------
    PopstatsError
        If ``var`` is not a PyTensor variable or is already marked, reduces
        nothing (an input, a shared variable or a constant marked itself) or
        does not depend on the batch (computed from shared variables and
        constants alone), or an option has a wrong type or value. Whether a
        computed ``var`` reduces over the batch is left to
        :func:`~popstats.rewrite`'s batch-independence analysis.

    Examples
    --------
    >>> import pytensor.tensor as pt
    >>> import popstats
    >>> x = pt.matrix("x")
    >>> mean = popstats.bn_statistic(x.mean(axis=0), label="mean")
    >>> print(mean.owner.op)
    BNStat{mean}
    >>> popstats.is_statistic(mean)
    True
    >>> var = popstats.bn_statistic(x.var(axis=0), label="var", role="var",
    ...                             group="bn1", count=x.shape[0])
    """
    if not isinstance(var, Variable):
        raise PopstatsError(
            f"bn_statistic(var=...): expected a PyTensor variable, got "
            f"{describe_value(var)}. Mark the symbolic statistic, e.g. "
            f"bn_statistic(x.mean(axis=0), label='mean')."
        )
    if var.owner is not None and isinstance(var.owner.op, BNStat):
        raise PopstatsError(
            f"bn_statistic(var=...): {var} is already marked (label "
            f"{var.owner.op.label!r}). Mark each statistic once."
        )
    _check_computed(var)
    if label is None:
        label = var.name or "bn_stat"
    if not isinstance(label, str) or not label:
        raise PopstatsError(
            f"bn_statistic(label=...): expected a non-empty string, got "
            f"{describe_value(label)}. Pass e.g. label='layer1.mean'."
        )
    if role is not None and role not in ROLES:
        raise PopstatsError(
            f"bn_statistic(role=...): unknown role {role!r}; allowed: "
            f"{', '.join(map(repr, ROLES))} or None."
        )
    if group is not None and (not isinstance(group, str) or not group):
        raise PopstatsError(
            f"bn_statistic(group=...): expected a non-empty string, got "
            f"{describe_value(group)}. Give the mean and the variance of one "
            f"normalization the same group, e.g. group='layer1'."
        )
    extra = []
    if count is not None:
        extra = [_check_count(count)]
    # Op.__call__ is typed for any number of outputs; BNStat has one tensor.
    marked = cast(
        TensorVariable, BNStat(uuid.uuid4().hex, label, role, group)(var, *extra)
    )
    marked.name = var.name
    return marked


def _check_computed(var: Variable) -> None:
    """Refuse what cannot be a batch statistic: a variable no operation
    computes (an input, a weight, a constant: it reduces nothing), or one
    computed from weights and constants alone (it does not depend on the
    batch). Whether a computed value reduces over the batch is not judged
    here: the batch-independence analysis of rewrite does."""
    from pytensor.compile import SharedVariable
    from pytensor.graph.basic import Constant
    from pytensor.graph.traversal import graph_inputs

    fix = ("Mark the statistic computed from the batch, not what it is "
           "computed from, e.g. bn_statistic(h.mean(axis=0), label='mean') "
           "(inside a loop, mark it where the loop computes it).")
    if var.owner is None:
        kind = ("a shared variable (a weight)" if isinstance(var, SharedVariable)
                else "a constant" if isinstance(var, Constant)
                else "an input (no operation computes it)")
        raise PopstatsError(
            f"bn_statistic(var=...): {var} is {kind}, so it reduces nothing "
            f"and is no batch statistic. {fix}"
        )
    if all(isinstance(v, SharedVariable | Constant) for v in graph_inputs([var])):
        raise PopstatsError(
            f"bn_statistic(var=...): {var} is computed from shared variables and "
            f"constants alone, so it is the same for every batch and is no "
            f"batch statistic. {fix}"
        )


def _check_count(count: Any) -> Variable:
    if isinstance(count, bool | np.bool_) or as_number(count) is not None:
        check_number(count, "bn_statistic(count=...)", minimum=0, above=True,
                             what="the number of elements reduced over")
    try:
        count = pt.as_tensor_variable(count)
    except (TypeError, ValueError, NotImplementedError):
        raise PopstatsError(
            f"bn_statistic(count=...): expected an int or a scalar tensor, got "
            f"{describe_value(count)}."
        ) from None
    if count.ndim != 0:
        raise PopstatsError(
            f"bn_statistic(count=...): expected a scalar (the number of elements "
            f"reduced over), got a {count.ndim}-d tensor. Sum it, e.g. "
            f"count=mask.sum()."
        )
    return count


def is_statistic(var: Variable) -> bool:
    """Whether ``var`` is marked as a batch statistic (by op or by tag)."""
    owner = var.owner
    if owner is not None and isinstance(owner.op, BNStat):
        return True
    tag = getattr(var, "tag", None)
    return bool(getattr(tag, "bn_statistic", False))


def statistic_label(var: Variable) -> str:
    """The label of a marked variable (op label, ``tag.bn_label``, or name)."""
    owner = var.owner
    if owner is not None and isinstance(owner.op, BNStat):
        return owner.op.label
    label = getattr(var.tag, "bn_label", None) or var.name or "bn_stat"
    return str(label)


def statistic_role(var: Variable) -> str | None:
    """The role of a marked variable (op prop or ``tag.bn_role``)."""
    owner = var.owner
    if owner is not None and isinstance(owner.op, BNStat):
        return owner.op.role
    role = getattr(var.tag, "bn_role", None)
    if role is not None and role not in ROLES:
        raise PopstatsError(
            f"var.tag.bn_role: unknown role {role!r} on {var}; allowed: "
            f"{', '.join(map(repr, ROLES))} or None."
        )
    return role


def statistic_group(var: Variable) -> str | None:
    """The group of a marked variable (op prop or ``tag.bn_group``)."""
    owner = var.owner
    if owner is not None and isinstance(owner.op, BNStat):
        return owner.op.group
    return getattr(var.tag, "bn_group", None)


def statistic_count(var: Variable) -> TensorVariable | None:
    """The element count given to :func:`bn_statistic`, if any."""
    owner = var.owner
    if owner is not None and isinstance(owner.op, BNStat) and len(owner.inputs) > 1:
        return cast(TensorVariable, owner.inputs[1])  # make_node made it a tensor
    return None


def statistic_key(var: Variable) -> str:
    """The identity of a marked variable within one graph level.

    Marker ops carry a unique key. A variable marked by tag has none; its
    label stands in (``"tag:" + label``), so tagged statistics in one graph
    level need distinct labels or names to be told apart across graphs.
    """
    owner = var.owner
    if owner is not None and isinstance(owner.op, BNStat):
        return owner.op.key
    return "tag:" + statistic_label(var)
