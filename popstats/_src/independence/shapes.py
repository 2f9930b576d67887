"""Sizes of axes as products of atoms: how :mod:`~.flow` follows reshapes.

Stage: independence. ``tensordot`` (hence ``dot`` of a 3-d value) folds the
leading axes into one for a matrix product and splits them back after;
the batch axis is followed through such folds when the sizes tell where
it goes (:class:`Shapes`, :func:`resolve`, :func:`find`). Sizes are read by
shape arithmetic, not patterns: through ``alloc`` / ``broadcast_to``,
slices of shapes, another value's shape, ``join_dims`` / ``split_dims``
(:data:`JOIN_DIMS`, :data:`SPLIT_DIMS`), inner graphs' inputs, constant
guards, and any other operation's own ``infer_shape``.

Members: :data:`JOIN_DIMS`, :data:`PASS`, :data:`SPLIT_DIMS`, :data:`WILD`,
:class:`Shapes`, :func:`const`, :func:`find`, :func:`resolve`.
"""

from __future__ import annotations

import importlib
import inspect
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, cast

import numpy as np
import pytensor.tensor as pt
from pytensor.compile.builders import OpFromGraph
from pytensor.compile.ops import DeepCopyOp, ViewOp
from pytensor.graph.basic import Apply, Constant, Variable
from pytensor.raise_op import CheckAndRaise
from pytensor.scan.op import Scan
from pytensor.tensor.basic import Alloc
from pytensor.tensor.blockwise import Blockwise
from pytensor.tensor.elemwise import DimShuffle, Elemwise
from pytensor.tensor.math import Dot
from pytensor.tensor.shape import Reshape, Shape, Shape_i, SpecifyShape
from pytensor.tensor.subtensor import Subtensor, get_idx_list
from pytensor.tensor.type import TensorType
from pytensor.tensor.variable import TensorVariable

from popstats._src.graph.marker import BNStat
from popstats._src.graph.recognize import acts_per_example

__all__ = ["JOIN_DIMS", "PASS", "SPLIT_DIMS", "WILD", "Shapes", "const", "find",
           "resolve"]

#: Operations whose output is their first input (marks, views, checks).
PASS = (BNStat, ViewOp, DeepCopyOp, SpecifyShape, CheckAndRaise)
#: A reshape's -1.
WILD = "*"
#: ``pt.join_dims`` / ``pt.split_dims`` (reshapes of consecutive axes)
#: (``pytensor.tensor.reshape`` the attribute is a function: import the module)
_reshape = importlib.import_module("pytensor.tensor.reshape")
JOIN_DIMS: tuple[type[Any], ...] = tuple(
    c for c in (getattr(_reshape, "JoinDims", None),) if c is not None)
SPLIT_DIMS: tuple[type[Any], ...] = tuple(
    c for c in (getattr(_reshape, "SplitDims", None),) if c is not None)


#: scalar operations :func:`const` evaluates on constants (sizes and the
#: guards ``infer_shape`` writes around them)
_FOLD: dict[str, Callable[..., Any]] = {
    "Add": lambda *v: sum(v), "Mul": lambda *v: int(np.prod(v)),
    "Sub": lambda a, b: a - b, "IntDiv": lambda a, b: a // b,
    "EQ": lambda a, b: a == b, "NEQ": lambda a, b: a != b,
    "GE": lambda a, b: a >= b, "GT": lambda a, b: a > b,
    "LE": lambda a, b: a <= b, "LT": lambda a, b: a < b,
    "Switch": lambda c, a, b: a if c else b,
    "ScalarMaximum": max, "ScalarMinimum": min,
}


def const(var: Variable | None, depth: int = 8) -> int | float | None:
    """The value of a constant (through casts, and integer arithmetic on
    constants), else None."""
    if var is None or isinstance(var, int | np.integer):
        return None if var is None else int(var)
    while not isinstance(var, Constant) and var.owner is not None and (
        (isinstance(var.owner.op, Elemwise) and len(var.owner.inputs) == 1
        and type(var.owner.op.scalar_op).__name__ in ("Cast", "Identity"))
        or type(var.owner.op).__name__ in ("ScalarFromTensor", "TensorFromScalar")
    ):
        var = var.owner.inputs[0]
    if isinstance(var, Constant):
        return np.asarray(var.data).item() if np.ndim(var.data) == 0 else None
    node = var.owner
    if node is None or depth == 0 or cast(TensorVariable, var).ndim != 0 or not (
            isinstance(node.op, Elemwise)):
        return None
    fold = _FOLD.get(type(node.op.scalar_op).__name__)
    if fold is None:
        return None
    values = [const(v, depth - 1) for v in node.inputs]
    return None if any(v is None for v in values) else fold(*values)


class Shapes:
    """Sizes of axes as products of *atoms*, to follow reshapes.

    An atom is an int (a static size) or ``("v", id, dim)``, the unknown
    size of axis ``dim`` of a variable no rule looks through. ``x.shape[0] *
    x.shape[1]`` in a reshape's shape is the atoms of both axes; a reshape
    that keeps the batch atom with equal products before it moves the batch
    there, folded with its neighbours if they share its new axis.
    """

    #: how far back one size is traced (deep graphs: no recursion limit hit;
    #: both sides of a reshape trace the same variables, so they agree)
    MAX_DEPTH = 40

    def __init__(self) -> None:
        self.memo: dict[tuple[int, int], tuple] = {}
        self.depth = 0
        #: placeholders of input sizes given to an op's ``infer_shape``
        #: (id -> (variable, axis)), and what it returned per node (kept
        #: alive: atoms name unknown sizes by ``id``)
        self.holders: dict[int, tuple[Variable, int]] = {}
        self.kept: list[Variable] = []  # the placeholders (their ids stay theirs)
        self.inferred: dict[Apply, list | None] = {}
        #: inner inputs of an ``OpFromGraph`` -> the outer values they stand for
        self.aliases: dict[int, Variable] = {}

    def alias(self, inner: Sequence[Variable], outer: Sequence[TensorVariable]) -> None:
        """Sizes of ``inner`` (an inner graph's inputs) are those of ``outer``."""
        # an OpFromGraph's inner inputs, as its outer ones: tensors
        tensors = cast(Sequence[TensorVariable], inner)
        for var, value in zip(tensors, outer, strict=False):
            if var.ndim == value.ndim and self.aliases.get(id(var), value) is not value:
                self.memo.clear()  # an inner graph applied again: sizes anew
            if var.ndim == value.ndim:
                self.aliases[id(var)] = value

    def atoms(self, var: Variable, dim: int) -> tuple:
        key = (id(var), dim)
        if key not in self.memo:
            if self.depth >= self.MAX_DEPTH:
                return (("v", id(var), dim),)
            self.depth += 1
            try:
                # (the variables whose sizes are asked for are tensors)
                self.memo[key] = self._atoms(cast(TensorVariable, var), dim)
            finally:
                self.depth -= 1
        return self.memo[key]

    def _atoms(self, var: TensorVariable, dim: int) -> tuple:
        static = var.type.shape[dim]
        if static is not None:
            return () if static == 1 else (int(static),)
        node, own = var.owner, ("v", id(var), dim)
        if node is None:
            outer = self.aliases.get(id(var))
            return (own,) if outer is None else self.atoms(outer, dim)
        op = node.op
        if isinstance(op, PASS):
            return self.atoms(node.inputs[0], dim)
        if isinstance(op, DimShuffle):
            src = op.new_order[dim]
            return () if src == "x" else self.atoms(node.inputs[0], src)
        if isinstance(op, Subtensor):  # an axis taken whole keeps its size
            x = node.inputs[0]
            entries = list(get_idx_list(node.inputs, op.idx_list))
            kept = [d for d in range(x.ndim) if d >= len(entries)
                    or isinstance(entries[d], slice)]
            entry = entries[kept[dim]] if kept[dim] < len(entries) else slice(None)
            if entry.stop is None and _from_start(entry):
                return self.atoms(x, kept[dim])
        if isinstance(op, Alloc):  # alloc(value, *sizes): the sizes given
            return self.factors(node.inputs[1 + dim])
        if isinstance(op, JOIN_DIMS):
            start, count, x = op.start_axis, op.n_axes, node.inputs[0]
            if dim < start:
                return self.atoms(x, dim)
            if dim > start or count == 0:
                return self.atoms(x, dim + count - 1)
            return tuple(a for d in range(start, start + count)
                         for a in self.atoms(x, d))
        if isinstance(op, SPLIT_DIMS):
            x, axis = node.inputs[0], op.axis
            count = var.ndim - x.ndim + 1
            if dim < axis:
                return self.atoms(x, dim)
            if dim >= axis + count:
                return self.atoms(x, dim - count + 1)
            found = self.entry(node.inputs[1], dim - axis)
            if found is not None:
                return found
        if isinstance(op, Elemwise):
            for inp in node.inputs:
                if inp.type.shape[dim] != 1:
                    return self.atoms(inp, dim)
        if isinstance(op, Reshape):
            sizes = self.target(node)
            if sizes is not None and sizes[dim] == WILD:  # -1: what it stands for
                x = node.inputs[0]
                sizes = resolve([a for d in range(x.ndim) for a in self.atoms(x, d)],
                                sizes)
            if sizes is not None and sizes[dim] != WILD:
                return sizes[dim]
        if isinstance(op, Dot) and node.inputs[0].ndim == node.inputs[1].ndim == 2:
            return self.atoms(node.inputs[dim], dim)
        if isinstance(op, Blockwise):  # loop axes: broadcast like Elemwise
            n_loop = var.ndim - len(op.outputs_sig[node.outputs.index(var)])
            for inp, sig in zip(node.inputs, op.inputs_sig, strict=True):
                at = dim - (n_loop - (inp.ndim - len(sig)))
                if dim < n_loop and at >= 0 and inp.type.shape[at] != 1:
                    return self.atoms(inp, at)
        if isinstance(op, Blockwise) and _is_dot(op.core_op):  # matmul
            out_ndim, a, b = var.ndim, node.inputs[0], node.inputs[1]
            if dim == out_ndim - 2 and a.ndim >= 2:
                return self.atoms(a, a.ndim - 2)
            if dim == out_ndim - 1 and b.ndim >= 2:
                return self.atoms(b, b.ndim - 1)
        if dim == 0 and acts_per_example(op):  # e.g. pytensor-ml's Im2Col
            return self.atoms(node.inputs[0], 0)
        return self._infer(node, var, dim) or (own,)

    def _infer(self, node: Apply, var: Variable, dim: int) -> tuple | None:
        """Atoms of an output axis by the op's own ``infer_shape``, given
        placeholders for its inputs' sizes (None if it has none, fails, or
        is a loop or an inner graph: those are not traced)."""
        op = node.op
        if node not in self.inferred:
            self.inferred[node] = None
            if not isinstance(op, Scan | OpFromGraph) and hasattr(op, "infer_shape") \
                    and all(isinstance(v.type, TensorType) for v in node.inputs):
                shapes = []
                for inp in cast(list[TensorVariable], node.inputs):  # TensorTypes
                    holders = [pt.lscalar() for _ in range(inp.ndim)]
                    self.kept += holders
                    self.holders.update({id(h): (inp, d)
                                         for d, h in enumerate(holders)})
                    shapes.append(tuple(holders))
                try:  # (node, shapes) on PyTensor 3.3, (fgraph, node, shapes) on 3.0
                    params = inspect.signature(op.infer_shape).parameters
                    args = (node, shapes) if len(params) == 2 else (None, node, shapes)
                    self.inferred[node] = list(op.infer_shape(*args))
                except Exception:  # any failure: not traced
                    self.inferred[node] = None
        found = self.inferred[node]
        if found is None:
            return None
        k = node.outputs.index(var)
        if k >= len(found) or dim >= len(found[k]):
            return None
        size = found[k][dim]
        if not isinstance(size, Variable):
            size = pt.as_tensor(size)
            self.kept.append(size)
        return self.factors(size)

    def entry(self, vec: Variable, k: int) -> tuple | None:
        """The atoms of entry ``k`` of an integer vector of sizes (a shape,
        a slice of one, the sizes listed), None where it cannot tell."""
        node = vec.owner
        if isinstance(vec, Constant):
            data = np.asarray(vec.data).ravel()
            if not -len(data) <= k < len(data):
                return None
            return () if data[k] == 1 else (int(data[k]),)
        if node is None:
            return None
        op = node.op
        if isinstance(op, Shape):
            shaped = node.inputs[0]
            return self.atoms(shaped, k % shaped.ndim) if shaped.ndim else None
        if type(op).__name__ == "MakeVector":
            return self.factors(node.inputs[k]) if -len(node.inputs) <= k < len(
                node.inputs) else None
        if isinstance(op, PASS) or (isinstance(op, Elemwise) and type(
                op.scalar_op).__name__ in ("Cast", "Identity")):
            return self.entry(node.inputs[0], k)
        if isinstance(op, Subtensor) and k >= 0:
            [index] = get_idx_list(node.inputs, op.idx_list)[:1] or [None]
            if isinstance(index, slice) and index.step is None:
                start = 0 if index.start is None else const(index.start)
                if start is not None and start >= 0:
                    return self.entry(node.inputs[0], int(start) + k)
        return None

    def factors(self, scalar: TensorVariable) -> tuple:
        """The atoms of an integer scalar expression (a size)."""
        value = const(scalar)
        if value is not None:
            return () if value == 1 else (int(value),)
        if id(scalar) in self.holders:  # a size given to infer_shape
            return self.atoms(*self.holders[id(scalar)])
        node = scalar.owner
        if node is not None:
            op = node.op
            if isinstance(op, Shape_i):
                return self.atoms(node.inputs[0], op.i)
            if isinstance(op, Subtensor) and len(node.inputs) == 2 and (
                    node.inputs[0].ndim == 1 and scalar.ndim == 0):
                k = const(node.inputs[1])
                found = None if k is None else self.entry(node.inputs[0], int(k))
                if found is not None:
                    return found
            if isinstance(op, Elemwise) and type(op.scalar_op).__name__ == "Mul":
                return tuple(a for inp in node.inputs for a in self.factors(inp))
            if isinstance(op, Elemwise) and type(op.scalar_op).__name__ == "Switch":
                cond = const(node.inputs[0])  # a guard on constants: its branch
                if cond is not None:
                    return self.factors(node.inputs[1 if cond else 2])
            if (isinstance(op, Elemwise) and len(node.inputs) == 1 and type(
                    op.scalar_op).__name__ == "Cast") or type(op).__name__ in (
                    "ScalarFromTensor", "TensorFromScalar"):
                return self.factors(node.inputs[0])
        return (("e", id(scalar)),)

    def target(self, node: Apply) -> list | None:
        """Atoms of each output axis of a reshape (``WILD`` for -1)."""
        shape = node.inputs[1]
        ndim = cast(TensorVariable, node.outputs[0]).ndim  # Reshape's output
        if isinstance(shape, Constant):
            return [() if v == 1 else WILD if v == -1 else (int(v),)
                    for v in np.asarray(shape.data).ravel()]
        if shape.owner is not None and type(shape.owner.op).__name__ == "MakeVector":
            return [WILD if const(item) == -1 else self.factors(item)
                    for item in shape.owner.inputs[:ndim]]
        sizes = [self.entry(shape, k) for k in range(ndim)]  # e.g. another's shape
        if any(size is None for size in sizes):
            return None
        return [WILD if size == (-1,) else size for size in sizes]


def _from_start(entry: slice) -> bool:
    """A slice from the first element on, one step at a time."""
    return (entry.start is None or const(entry.start) == 0) and (
        entry.step is None or const(entry.step) == 1)


def _is_dot(core: object) -> bool:
    return isinstance(core, Dot) or type(core).__name__ in ("Dot", "Matmul")


def _sig(atoms: Sequence) -> tuple:
    """A product of atoms, order-free: (constant part, symbolic atoms)."""
    const = int(np.prod([a for a in atoms if isinstance(a, int)] or [1]))
    return const, frozenset(Counter(a for a in atoms if not isinstance(a, int)).items())


def resolve(flat_in: list, sizes: list) -> list | None:
    """Replace a -1 axis by the atoms it stands for (None if unsure)."""
    wild = [k for k, s in enumerate(sizes) if s == WILD]
    if not wild:
        return sizes
    if len(wild) > 1:
        return None
    w = wild[0]
    left = [a for s in sizes[:w] for a in s]
    right = [a for s in sizes[w + 1 :] for a in s]
    starts = [k for k in range(len(flat_in) + 1) if _sig(flat_in[:k]) == _sig(left)]
    ends = [k for k in range(len(flat_in) + 1) if _sig(flat_in[k:]) == _sig(right)]
    if not starts or not ends or starts[0] > ends[-1]:
        return None
    return [*sizes[:w], tuple(flat_in[starts[0] : ends[-1]]), *sizes[w + 1 :]]


def find(flat_in: list, index: int, sizes: list) -> tuple[int, int] | None:
    """Where atom ``index`` of the input lands among the output axes."""
    atom = flat_in[index]
    before = _sig(flat_in[:index])
    seen: list = []
    for dim, atoms in enumerate(sizes):
        for part, other in enumerate(atoms):
            if other == atom and _sig(seen) == before:
                return dim, part
            seen.append(other)
    return None


