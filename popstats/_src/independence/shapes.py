"""Sizes of axes as products of atoms: how :mod:`~.flow` follows reshapes.

Stage: independence. ``tensordot`` (hence ``dot`` of a 3-d value) folds the
leading axes into one for a matrix product and splits them back after;
the batch axis is followed through such folds when the sizes tell where
it goes (:class:`Shapes`, :func:`resolve`, :func:`find`).

Members: :data:`PASS`, :data:`WILD`, :class:`Shapes`, :func:`const`,
:func:`find`, :func:`resolve`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import cast

import numpy as np
from pytensor.compile.ops import DeepCopyOp, ViewOp
from pytensor.graph.basic import Apply, Constant, Variable
from pytensor.raise_op import CheckAndRaise
from pytensor.tensor.blockwise import Blockwise
from pytensor.tensor.elemwise import DimShuffle, Elemwise
from pytensor.tensor.math import Dot
from pytensor.tensor.shape import Reshape, Shape, Shape_i, SpecifyShape
from pytensor.tensor.subtensor import Subtensor
from pytensor.tensor.variable import TensorVariable

from popstats._src.graph.marker import BNStat
from popstats._src.graph.recognize import acts_per_example

__all__ = ["PASS", "WILD", "Shapes", "const", "find", "resolve"]

#: Operations whose output is their first input (marks, views, checks).
PASS = (BNStat, ViewOp, DeepCopyOp, SpecifyShape, CheckAndRaise)
#: A reshape's -1.
WILD = "*"


def const(var: Variable | None) -> int | float | None:
    """The value of a scalar constant (through casts), else None."""
    if var is None or isinstance(var, int | np.integer):
        return None if var is None else int(var)
    while not isinstance(var, Constant) and var.owner is not None and (
        (isinstance(var.owner.op, Elemwise) and len(var.owner.inputs) == 1
        and type(var.owner.op.scalar_op).__name__ in ("Cast", "Identity"))
        or type(var.owner.op).__name__ in ("ScalarFromTensor", "TensorFromScalar")
    ):
        var = var.owner.inputs[0]
    return np.asarray(var.data).item() if isinstance(var, Constant) and np.ndim(
        var.data) == 0 else None


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

    def atoms(self, var: TensorVariable, dim: int) -> tuple:
        key = (id(var), dim)
        if key not in self.memo:
            if self.depth >= self.MAX_DEPTH:
                return (("v", id(var), dim),)
            self.depth += 1
            try:
                self.memo[key] = self._atoms(var, dim)
            finally:
                self.depth -= 1
        return self.memo[key]

    def _atoms(self, var: TensorVariable, dim: int) -> tuple:
        static = var.type.shape[dim]
        if static is not None:
            return () if static == 1 else (int(static),)
        node, own = var.owner, ("v", id(var), dim)
        if node is None:
            return (own,)
        op = node.op
        if isinstance(op, PASS):
            return self.atoms(node.inputs[0], dim)
        if isinstance(op, DimShuffle):
            src = op.new_order[dim]
            return () if src == "x" else self.atoms(node.inputs[0], src)
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
        if isinstance(op, Blockwise) and _is_dot(op.core_op):  # matmul
            out_ndim, a, b = var.ndim, node.inputs[0], node.inputs[1]
            if dim == out_ndim - 2 and a.ndim >= 2:
                return self.atoms(a, a.ndim - 2)
            if dim == out_ndim - 1 and b.ndim >= 2:
                return self.atoms(b, b.ndim - 1)
        if dim == 0 and acts_per_example(op):  # e.g. pytensor-ml's Im2Col
            return self.atoms(node.inputs[0], 0)
        return (own,)

    def factors(self, scalar: Variable) -> tuple:
        """The atoms of an integer scalar expression (a size)."""
        value = const(scalar)
        if value is not None:
            return () if value == 1 else (int(value),)
        node = scalar.owner
        if node is not None:
            op = node.op
            if isinstance(op, Shape_i):
                return self.atoms(node.inputs[0], op.i)
            if isinstance(op, Subtensor) and node.inputs[0].owner is not None and (
                isinstance(node.inputs[0].owner.op, Shape) and len(node.inputs) == 2
            ):
                k = const(node.inputs[1])
                if k is not None:
                    shaped = node.inputs[0].owner.inputs[0]
                    return self.atoms(shaped, int(k) % shaped.ndim)
            if isinstance(op, Elemwise) and type(op.scalar_op).__name__ == "Mul":
                return tuple(a for inp in node.inputs for a in self.factors(inp))
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
        if shape.owner is None or type(shape.owner.op).__name__ != "MakeVector":
            return None
        sizes = []
        for item in shape.owner.inputs[:ndim]:
            sizes.append(WILD if const(item) == -1 else self.factors(item))
        return sizes


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


