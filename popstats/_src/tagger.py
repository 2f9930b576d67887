"""Tagger: mark a variable as a batch statistic.

The mark is an identity ``Op`` (:class:`BNStat`) whose props carry a unique
key and the label. PyTensor >= 3.1 freezes Scan inner graphs, dropping
``.tag`` and ``.name`` of inner variables and interning structurally equal
nodes; an op with a unique key in its props survives all of that. Being a
:class:`~pytensor.compile.ops.ViewOp`, it is removed by the
``canonicalize`` rewrites (before elemwise fusion), so it costs nothing at
run time, and its gradient is the identity.

The original Theano tool's convention, ``var.tag.bn_statistic = True`` with
an optional ``var.tag.bn_label``, is recognised by :func:`is_statistic`
wherever PyTensor keeps tags.
"""

from __future__ import annotations

import uuid
from typing import Any

from pytensor.compile.ops import ViewOp
from pytensor.graph.basic import Variable

from popstats._src.errors import PopstatsError, describe_value

__all__ = ["BNStat", "bn_statistic", "is_statistic", "statistic_key", "statistic_label"]


class BNStat(ViewOp):
    """Identity op marking its input as a batch statistic.

    ``key`` is unique per :func:`bn_statistic` call; ``label`` is the
    user-facing name. Both are props, so two marks never merge.
    """

    __props__ = ("key", "label")

    def __init__(self, key: str, label: str):
        self.key = key
        self.label = label

    def __str__(self) -> str:
        return f"BNStat{{{self.label}}}"


def bn_statistic(var: Any, label: str | None = None) -> Variable:
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

    Returns
    -------
    TensorVariable
        ``var`` wrapped in a :class:`BNStat` marker.

    Raises
    ------
    PopstatsError
        If ``var`` is not a PyTensor variable or ``label`` is not a string.

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
    """
    if not isinstance(var, Variable):
        raise PopstatsError(
            f"bn_statistic(var=...): expected a PyTensor variable, got "
            f"{describe_value(var)}. Mark the symbolic statistic, e.g. "
            f"bn_statistic(x.mean(axis=0), label='mean')."
        )
    if label is None:
        label = var.name or "bn_stat"
    if not isinstance(label, str) or not label:
        raise PopstatsError(
            f"bn_statistic(label=...): expected a non-empty string, got "
            f"{describe_value(label)}. Pass e.g. label='layer1.mean'."
        )
    marked = BNStat(uuid.uuid4().hex, label)(var)
    marked.name = var.name
    return marked


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
