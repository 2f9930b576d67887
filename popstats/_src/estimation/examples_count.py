"""Which statistics have a batch's examples as elements: the size warnings' reach.

Stage: estimation (reads graphs with the independence analysis's
:class:`~popstats._src.independence.scan_rule.LoopFlow`). The batch-size
warnings of :mod:`~popstats._src.estimation.bias` (``"small-batches"``,
``"unequal-batches"``) follow from the examples per batch, so they are given
only to a statistic whose elements per batch are, provably, those examples:

- one with a ``count``: the count is the length of the batch axis of a value
  that holds the examples there, unfolded (``x.shape[0]``; in a loop body
  ``xt.shape[0]`` of the slice of a ``(time, batch, ...)`` sequence, at any
  depth; a count a loop is given as a non-sequence is read outside); a
  count that is anything else (a mask's sum, a product of axes) is not the
  examples;
- one without a count: every sum it is computed from (through elementwise
  operations, dimshuffles, casts and marks) reduces exactly the batch axis
  (``x.mean(0)``, ``x.var(0)``, ``x.std(0)``, ``((x - m) ** 2).mean(0)``),
  and nothing else it reads holds the examples.

Where a batch axis goes is what the independence analysis follows: one walk
of the exported graph (:func:`~popstats._src.export.exporter.export`, its
statistics as outputs) with one hypothesis, the batch axis
:func:`example_axis` finds, through loops (an inner sequence's axis ``k`` is
the outer one's ``k + 1``; non-sequences and shared inputs keep theirs; a
recurrent state holds them only where the analysis proves it holds them on
one axis at every step, as an RNN's hidden state does) and ``OpFromGraph``
bodies, in frozen inner graphs (PyTensor >= 3.1) too. A statistic pooled
over a loop's steps (``time="pooled"``), reduced over more than the examples
(a convolution's positions), or one the walk cannot follow gets no size
warning: when unsure, none.

A statistic without a role is a variance (``"var"``) or std for the
warnings when its graph is one (:func:`spread_of`): the sum over exactly the
examples of the square of ``values - a batch statistic``, divided by the
number of examples (Bessel's ``m - 1`` is not), its square root for a std.

Members: :obj:`Levels`, :func:`example_axis`, :func:`examples_statistics`,
:func:`reduces_examples`, :func:`spread_of`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from pytensor.graph.basic import Constant, Variable
from pytensor.scalar import Add, Cast, Mul, Pow, Sqr, Sqrt, Sub, TrueDiv
from pytensor.scan.op import Scan
from pytensor.tensor.elemwise import CAReduce, DimShuffle, Elemwise
from pytensor.tensor.shape import Shape, Shape_i
from pytensor.tensor.subtensor import Subtensor, get_idx_list

from popstats._src.graph.marker import BNStat, is_statistic
from popstats._src.graph.walk import scan_outer_input
from popstats._src.independence.flow import Flow, Hyp, scan_args
from popstats._src.independence.mixing import batch_axes
from popstats._src.independence.scan_rule import LoopFlow
from popstats._src.independence.shapes import PASS, const

__all__ = ["Levels", "example_axis", "examples_statistics", "reduces_examples",
           "spread_of"]

#: the hypothesis followed: "axis a of the root holds the examples"
_ROOT = 0


def example_axis(outputs: Sequence[Variable],
                 inputs: Sequence[Any]) -> tuple[int, int]:
    """Which input and axis count a batch's examples: the first input whose
    batch axis the marked statistics reduce over (:func:`~popstats._src.
    independence.mixing.batch_axes`, as :func:`~popstats.rewrite` finds
    it), else the first input with an axis (axis 0); ``(-1, 0)``: none.

    A graph the rules cannot follow falls back to axis 0 of the first input
    with one: the sizes only inform the bias warnings.
    """
    try:
        found = batch_axes(list(outputs), list(inputs), {})
    except Exception:  # any rule failure: the default below
        found = {}
    for k, (axes, source) in sorted(found.items()):
        if axes and source == "from the marked statistics":
            return k, min(axes)
    for k, var in enumerate(inputs):
        if var.ndim:
            return k, 0
    return -1, 0


def _op(var: Variable, kind: type) -> Any:
    """The scalar op of ``var``'s Elemwise owner if of ``kind``, else None."""
    node = var.owner
    if node is not None and isinstance(node.op, Elemwise) and isinstance(
            node.op.scalar_op, kind):
        return node.op.scalar_op
    return None


def _strip(var: Variable, dimshuffles: bool = True) -> Variable:
    """``var`` without the casts, marks and views (and dimshuffles) around it."""
    while var.owner is not None:
        op = var.owner.op
        if isinstance(op, PASS) or _op(var, Cast) is not None or (
                dimshuffles and isinstance(op, DimShuffle)):
            var = var.owner.inputs[0]
        else:
            return var
    return var


def _example_dim(flow: Flow, var: Variable, hyp: Hyp) -> int | None:
    """The axis of ``var`` that is exactly the examples (not folded with
    another axis), or None."""
    place = flow.state(var).get(hyp)
    if place is None or place[1] != 0:
        return None
    atoms = flow.shapes.atoms(var, place[0])
    return place[0] if len(atoms) == 1 else None


def _reads_sizes(node: Any) -> bool:
    source = node.inputs[0].owner if node.inputs else None
    return isinstance(node.op, Shape_i) or (
        isinstance(node.op, Subtensor) and source is not None
        and isinstance(source.op, Shape))


def _holds_examples(flow: Flow, var: Variable, hyp: Hyp) -> bool:
    """Whether ``var``'s values hold the examples: on an axis, or as an
    aggregate of them (the batch size read as a value is not one)."""
    made = flow.taint.get(var, {}).get(hyp, frozenset())
    return hyp in flow.state(var) or any(not _reads_sizes(n) for n in made)


def _sum_axes(node: Any) -> set[int] | None:
    """The axes a sum reduces (None: not a sum)."""
    op = node.op
    if not isinstance(op, CAReduce) or not isinstance(op.scalar_op, Add):
        return None
    ndim = max(node.inputs[0].ndim, 1)
    axis = getattr(op, "axis", None)
    return set(range(ndim)) if axis is None else {int(a) % ndim for a in axis}


def reduces_examples(flow: Flow, var: Variable, hyp: Hyp) -> bool:
    """Whether ``var`` is computed, through elementwise operations,
    dimshuffles and marks, from sums over exactly the examples (at least
    one) and from values that do not hold the examples."""
    found = False
    stack, seen = [var], set()
    while stack:
        v = stack.pop()
        if id(v) in seen:
            continue
        seen.add(id(v))
        node = v.owner
        if node is None or isinstance(v, Constant):
            if hyp in flow.state(v):
                return False
            continue
        axes = _sum_axes(node)
        if axes is not None:
            x = node.inputs[0]
            dim = _example_dim(flow, x, hyp)
            if dim is not None and axes == {dim}:
                found = True
            elif dim is not None and dim not in axes:
                stack.append(x)  # a sum within each example
            elif _holds_examples(flow, x, hyp):
                return False  # over more than the examples, or of aggregates
            continue
        if isinstance(node.op, (Elemwise, DimShuffle, *PASS)):
            stack.extend(node.inputs[:1] if isinstance(node.op, BNStat)
                         else node.inputs)
        elif _holds_examples(flow, v, hyp):
            return False  # an operation whose effect on the examples is not read here
    return found


def _examples_count(flow: Flow, var: Variable, hyp: Hyp) -> int | None:
    """The axis whose length ``var`` is, when it is an axis that is exactly
    the examples of a value (``h.shape[d]``, through casts), else None."""
    var = _strip(var)
    node = var.owner
    if node is None:
        return None
    if isinstance(node.op, Shape_i):
        dim = _example_dim(flow, node.inputs[0], hyp)
        return dim if dim == node.op.i else None
    if not isinstance(node.op, Subtensor):
        return None
    entries = get_idx_list(node.inputs, node.op.idx_list)
    source = _strip(node.inputs[0])
    if len(entries) != 1 or isinstance(entries[0], slice) or source.owner is None \
            or not isinstance(source.owner.op, Shape):
        return None
    index = const(entries[0])
    dim = _example_dim(flow, source.owner.inputs[0], hyp)
    return dim if index is not None and dim == int(index) else None


def _counts_examples(levels: Sequence[tuple[Flow, Any]], var: Variable,
                     hyp: Hyp) -> bool:
    """Whether ``var``, in the innermost of ``levels`` (each a flow and the
    Scan whose body it follows, outermost first), is the number of examples
    (:func:`_examples_count`); a count a loop is given as a non-sequence is
    read where it is computed, outside."""
    flow, node = levels[-1]
    var = _strip(var)
    if var.owner is None and node is not None:
        inner = node.op.inner_inputs
        position = next((k for k, v in enumerate(inner) if v is var), None)
        outer = None if position is None else scan_outer_input(node, position,
                                                               len(inner))
        return outer is not None and _counts_examples(levels[:-1], outer, hyp)
    return _examples_count(flow, var, hyp) is not None


def _square_base(var: Variable) -> Variable | None:
    """``d`` when ``var`` is ``d ** 2``, ``sqr(d)`` or ``d * d``."""
    node = var.owner
    if _op(var, Sqr) is not None:
        return node.inputs[0]
    if _op(var, Pow) is not None:
        power = _strip(node.inputs[1])
        if isinstance(power, Constant) and np.all(np.asarray(power.data) == 2):
            return node.inputs[0]
    if _op(var, Mul) is not None and len(node.inputs) == 2 and (
            node.inputs[0] is node.inputs[1]):
        return node.inputs[0]
    return None


def spread_of(flow: Flow, var: Variable, hyp: Hyp) -> str | None:
    """``"var"`` when ``var`` is the variance of the examples without
    Bessel's correction (``sum((h - b) ** 2 over the examples) / m``, ``b``
    a statistic of the batch, ``m`` the number of examples), ``"std"`` when
    its square root, else None."""
    role = "var"
    var = _strip(var)
    if _op(var, Sqrt) is not None:
        role, var = "std", _strip(var.owner.inputs[0])
    if _op(var, TrueDiv) is None:
        return None
    total, divisor = (_strip(v) for v in var.owner.inputs)
    axes = None if total.owner is None else _sum_axes(total.owner)
    if axes is None or len(axes) != 1:
        return None
    squares = total.owner.inputs[0]
    dim = _example_dim(flow, squares, hyp)
    base = _square_base(squares)
    if dim is None or axes != {dim} or base is None or _op(base, Sub) is None:
        return None
    values, center = base.owner.inputs
    if _example_dim(flow, values, hyp) != dim or hyp in flow.state(center) or (
            not reduces_examples(flow, center, hyp)):
        return None
    return role if _examples_count(flow, divisor, hyp) is not None else None


#: the graph levels down to a statistic: per level its flow and the Scan
#: whose body it follows (None: the graph), outermost first
Levels = list[tuple[Flow, Any]]


def _inner(flow: Flow, var: Variable) -> tuple[Levels, Variable] | None:
    """Where ``var`` is computed: through the loops whose per-step output it
    is, the levels down to the loop body that computes it, and its variable
    there; None when it is no loop's per-step output or not followed."""
    levels: Levels = [(flow, None)]
    while var.owner is not None and isinstance(var.owner.op, Scan):
        node = var.owner
        bodies = [body for done, body in flow.nested if done is node]
        args = scan_args(node)
        position = next((k for k, out in enumerate(args.outer_out_nit_sot)
                         if out is var), None)
        if not bodies or position is None:
            return None
        flow, var = bodies[-1], args.inner_out_nit_sot[position]
        levels.append((flow, node))
    return levels, var


def examples_statistics(
    outputs: Sequence[Variable], counts: Sequence[Variable | None],
    root: Variable, axis: int,
) -> dict[int, str | None]:
    """Per statistic whose elements per batch are the examples, by position
    in ``outputs`` (an exported graph's statistics, ``counts`` theirs): the
    spread its graph computes (:func:`spread_of`; None: none). The examples
    are axis ``axis`` of input ``root``. A graph the walk cannot read gives
    none (no size warning rather than a wrong one).

    >>> import pytensor.tensor as pt, popstats
    >>> x = pt.matrix("x")
    >>> marked = [popstats.bn_statistic(x.mean(0), "m"),
    ...           popstats.bn_statistic(x.var(0), "v"),
    ...           popstats.bn_statistic(x.var(0, ddof=1), "unbiased"),
    ...           popstats.bn_statistic(x.var(None), "all")]
    >>> examples_statistics(marked, [None] * 4, x, 0)
    {0: None, 1: 'var', 2: None}
    """
    hyp = (_ROOT, axis)
    flow = LoopFlow({root: {hyp: (axis, 0)}}, "<graph>")
    found: dict[int, str | None] = {}
    try:
        flow.run([*outputs, *(c for c in counts if c is not None)])
        for k, (value, count) in enumerate(zip(outputs, counts, strict=True)):
            where = _inner(flow, value)
            if where is None or not is_statistic(where[1]):
                continue  # pooled over a loop's steps, or not followed
            levels, stat = where
            level = levels[-1][0]
            if count is None:
                if not reduces_examples(level, stat, hyp):
                    continue
            else:
                counted = _inner(flow, count)
                if counted is None or counted[0][-1][0] is not level or (
                        not _counts_examples(counted[0], counted[1], hyp)):
                    continue
            found[k] = spread_of(level, stat, hyp)
    except Exception:  # any rule failure: unsure, so no size warning
        return {}
    return found
