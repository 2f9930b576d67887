"""The rules of :class:`~popstats._src.independence.flow.Flow` for operations
that move, reduce or contract axes.

Stage: independence. Each method takes an apply node whose inputs hold
hypotheses (``state``) and returns its outputs' states, recording with
``mix`` what mixes examples. The rules, in words, are in
``docs/independence.rst``.

Two kinds of event: an operation that provably mixes examples (``mix``
with what it does: "reduces over", "works along"...), and one whose effect
on the batch axis the rules cannot tell (``unfollowed``: an unknown
operation, a reshape whose sizes do not say where the batch goes), which
may or may not mix; its kind starts with :data:`UNFOLLOWED`.

Members: :data:`Hyp`, :data:`PAD_MODES`, :data:`Place`, :class:`Rules`,
:data:`State`, :data:`UNFOLLOWED`, :func:`tensor_inputs`,
:func:`tensor_outputs`.
"""

from __future__ import annotations

from typing import cast

import numpy as np
from pytensor.graph.basic import Apply, Constant
from pytensor.tensor.basic import Split
from pytensor.tensor.math import Dot
from pytensor.tensor.sort import ArgSortOp, SortOp
from pytensor.tensor.subtensor import get_idx_list
from pytensor.tensor.variable import TensorVariable

from popstats._src.independence.shapes import Shapes, const, find, resolve

__all__ = [
    "PAD_MODES", "UNFOLLOWED", "Hyp", "Place", "Rules", "State", "tensor_inputs",
    "tensor_outputs",
]

#: how the kind of an event the rules cannot follow starts (the rest, in
#: parentheses, says why)
UNFOLLOWED = "could not follow"

#: the modes of ``pytensor.tensor.pad`` that only move values along the
#: padded axes (``"mean"``, ``"maximum"``... read statistics: not these)
PAD_MODES = ("constant", "edge", "reflect", "symmetric", "wrap")

Hyp = tuple[int, int]  # (root index, axis)
Place = tuple[int, int]  # (dim, part of a folded dim)
State = dict[Hyp, Place]


def tensor_inputs(node: Apply) -> list[TensorVariable]:
    """A node's inputs (a copy): the operations with rules here take tensors."""
    return cast(list[TensorVariable], list(node.inputs))


def tensor_outputs(node: Apply) -> list[TensorVariable]:
    """A node's outputs: the operations with rules here give tensors."""
    return cast(list[TensorVariable], node.outputs)


class Rules:
    """Per-operation rules; mixed into :class:`~.flow.Flow`."""

    shapes: Shapes

    def state(self, var) -> State:  # provided by Flow
        raise NotImplementedError

    def mix(self, node: Apply, hyp: Hyp, kind: str) -> None:  # provided by Flow
        raise NotImplementedError

    def unfollowed(self, node: Apply, hyp: Hyp, why: str) -> None:
        """Record that the rules cannot tell what ``node`` does to ``hyp``'s
        axis (it may or may not mix examples)."""
        self.mix(node, hyp, f"{UNFOLLOWED} ({why})")

    def put(self, node: Apply, out: State, hyp: Hyp, place: Place) -> None:
        """Place ``hyp`` in an output; the same one in two places mixes."""
        if out.get(hyp, place) != place:
            self.mix(node, hyp, "combines examples along two different axes")
            out.pop(hyp)
        else:
            out[hyp] = place

    def reduce(self, node: Apply, state: State, axes, kind: str) -> State:
        axes = {int(a) % max(tensor_inputs(node)[0].ndim, 1) for a in axes}
        out = {}
        for hyp, (d, c) in state.items():
            if d in axes:
                self.mix(node, hyp, kind)
            else:
                out[hyp] = (d - sum(a < d for a in axes), c)
        return out

    def along(self, node: Apply) -> State:
        axis = getattr(node.op, "axis", None)
        if isinstance(node.op, SortOp | ArgSortOp) and len(node.inputs) > 1:
            axis = const(node.inputs[1])  # PyTensor 3.0: the axis is an input
        ndim = max(tensor_inputs(node)[0].ndim, 1)
        axes = None if axis is None else {int(a) % ndim for a in np.atleast_1d(axis)}
        out = {}
        for hyp, (d, c) in self.state(node.inputs[0]).items():
            if axes is None or d in axes:
                self.mix(node, hyp, "works along")
            else:
                out[hyp] = (d, c)
        return out

    def subtensor(self, node: Apply) -> State:
        x = tensor_inputs(node)[0]
        entries = get_idx_list(node.inputs, node.op.idx_list)
        keep: dict[int, tuple[int, bool] | None] = {}
        out_dim = 0
        for dim in range(x.ndim):
            entry = entries[dim] if dim < len(entries) else slice(None)
            if isinstance(entry, slice):
                prefix = (entry.start is None or const(entry.start) == 0) and (
                    entry.step is None or const(entry.step) == 1)
                keep[dim] = (out_dim, prefix)
                out_dim += 1
            else:
                keep[dim] = None
        out = {}
        for hyp, (d, c) in self.state(x).items():
            kept = keep[d]
            if kept is None:
                self.mix(node, hyp, "takes single examples (an index) along")
            elif not kept[1]:
                self.mix(node, hyp, "shifts or reorders the examples (a slice) along")
            else:
                out[hyp] = (kept[0], c)
        return out

    def inc_subtensor(self, node: Apply) -> State:
        x, y = tensor_inputs(node)[:2]
        entries = get_idx_list(node.inputs, node.op.idx_list)
        view = []  # x's dims that the view keeps, with whether fully
        for dim in range(x.ndim):
            entry = entries[dim] if dim < len(entries) else slice(None)
            if isinstance(entry, slice):
                view.append((dim, entry == slice(None)))
        out = {}
        for hyp, (d, c) in self.state(x).items():
            entry = entries[d] if d < len(entries) else slice(None)
            if entry != slice(None):
                self.mix(node, hyp, "writes into some examples only along")
            else:
                out[hyp] = (d, c)
        offset = len(view) - y.ndim
        for hyp, (d, c) in self.state(y).items():
            dim, full = view[d + offset]
            if not full:
                self.mix(node, hyp, "writes the examples into a part of")
            else:
                self.put(node, out, hyp, (dim, c))
        return out

    def pad(self, node: Apply) -> list[State] | None:
        """PyTensor's ``Pad`` (an ``OpFromGraph``) by what it means: along an
        axis padded by 0 on both sides every example stays where it is (the
        position-based modes move values along the padded axes only, within
        each example). None (inline its body instead) where the widths are
        not constants, the mode reads statistics, or the pad values carry
        examples."""
        x, widths = tensor_inputs(node)[0], node.inputs[1]
        if getattr(node.op, "pad_mode", None) not in PAD_MODES or not isinstance(
                widths, Constant) or any(self.state(v) for v in node.inputs[2:]):
            return None
        try:
            width = np.broadcast_to(np.asarray(widths.data), (x.ndim, 2))
        except ValueError:
            return None
        out = {}
        for hyp, (d, c) in self.state(x).items():
            if width[d].any():
                self.mix(node, hyp, "pads (moves the examples along)")
            else:
                out[hyp] = (d, c)
        return [out]

    def reshape(self, node: Apply) -> State:
        x = tensor_inputs(node)[0]
        per_dim = [list(self.shapes.atoms(x, d)) for d in range(x.ndim)]
        flat_in = [a for atoms in per_dim for a in atoms]
        sizes = self.shapes.target(node)
        sizes = None if sizes is None else resolve(flat_in, sizes)
        out = {}
        for hyp, (d, c) in self.state(x).items():
            place = None
            if sizes is not None and c < len(per_dim[d]):
                index = sum(len(p) for p in per_dim[:d]) + c
                place = find(flat_in, index, sizes)
            if place is None:
                self.unfollowed(node, hyp, "a reshape whose sizes do not tell "
                                "where the batch axis goes")
            else:
                out[hyp] = place
        return out

    def join_dims(self, node: Apply) -> State:
        """``pt.join_dims``: axes ``start .. start + n - 1`` become one; the
        batch axis among them is that part of the joined axis."""
        x, start, count = node.inputs[0], node.op.start_axis, node.op.n_axes
        out = {}
        for hyp, (d, c) in self.state(x).items():
            if d < start:
                out[hyp] = (d, c)
            elif d >= start + count:
                out[hyp] = (d - count + 1, c)
            else:
                before = sum(len(self.shapes.atoms(x, k)) for k in range(start, d))
                out[hyp] = (start, before + c)
        return out

    def split_dims(self, node: Apply) -> State:
        """``pt.split_dims``: axis ``axis`` becomes several; the batch axis
        split is followed where the sizes tell where it goes."""
        x, out_var, axis = tensor_inputs(node)[0], tensor_outputs(node)[0], node.op.axis
        count = out_var.ndim - x.ndim + 1
        out = {}
        for hyp, (d, c) in self.state(x).items():
            if d != axis:
                out[hyp] = (d if d < axis else d + count - 1, c)
                continue
            atoms = list(self.shapes.atoms(x, axis))
            sizes = [self.shapes.atoms(out_var, axis + k) for k in range(count)]
            place = find(atoms, c, sizes) if c < len(atoms) else None
            if place is None:
                self.unfollowed(node, hyp, "a split whose sizes do not tell where "
                                "the batch axis goes")
            else:
                out[hyp] = (axis + place[0], place[1])
        return out

    def advanced_subtensor(self, node: Apply) -> State:
        """NumPy's advanced indexing (``E[ids]``, ``take``): integer arrays
        along some axes, slices along the others. Examples of ``x`` stay
        along a full (or prefix) slice and are gathered along an indexed
        axis; an index's own batch axis lands in the block of broadcast index
        axes (first when the indexed axes are not adjacent)."""
        x = tensor_inputs(node)[0]
        entries = list(get_idx_list(node.inputs, node.op.idx_list))
        entries += [slice(None)] * (x.ndim - len(entries))
        arrays = [k for k, e in enumerate(entries) if not isinstance(e, slice)]
        if any(entries[k].dtype == "bool" for k in arrays):
            for var in node.inputs:
                for hyp in self.state(var):
                    self.unfollowed(node, hyp, "a boolean index")
            return {}
        width = max(entries[k].ndim for k in arrays)
        adjacent = arrays == list(range(arrays[0], arrays[-1] + 1))
        block = arrays[0] if adjacent else 0
        out: State = {}
        for hyp, (d, c) in self.state(x).items():
            entry = entries[d]
            if not isinstance(entry, slice):
                self.mix(node, hyp, "gathers examples by index along")
            elif not ((entry.start is None or const(entry.start) == 0) and (
                    entry.step is None or const(entry.step) == 1)):
                self.mix(node, hyp, "shifts or reorders the examples (a slice) along")
            else:
                slices_before = sum(isinstance(e, slice) for e in entries[:d])
                after = not adjacent or d > arrays[0]
                self.put(node, out, hyp, (slices_before + width * after, c))
        for k in arrays:
            for hyp, (d, c) in self.state(entries[k]).items():
                self.put(node, out, hyp, (block + width - entries[k].ndim + d, c))
        return out

    def dot(self, node: Apply) -> State:
        left, right = tensor_inputs(node)
        out: State = {}
        for hyp, (d, c) in self.state(left).items():
            if d == left.ndim - 1:
                self.mix(node, hyp, "contracts (a matrix product) over")
            else:
                self.put(node, out, hyp, (d, c))
        for hyp, (d, c) in self.state(right).items():
            if d == 0:
                self.mix(node, hyp, "contracts (a matrix product) over")
            else:
                self.put(node, out, hyp, (left.ndim - 1 + d - 1, c))
        return out

    def join(self, node: Apply) -> list[State]:
        op, ins = node.op, tensor_inputs(node)
        axis = getattr(op, "axis", None)
        if isinstance(op, Split):  # (x, axis, splits) on 3.0, (x, splits) on 3.3
            axis, ins = const(ins[1]) if axis is None else axis, ins[:1]
        elif ins and ins[0].ndim == 0:  # the axis as an input (PyTensor 3.0)
            axis = const(ins.pop(0))
        out: State = {}
        for inp in ins:
            for hyp, (d, c) in self.state(inp).items():
                if axis is None or d == int(axis) % inp.ndim:
                    self.mix(node, hyp, "concatenates or splits along")
                else:
                    self.put(node, out, hyp, (d, c))
        return [out for _ in node.outputs]

    def blockwise(self, node: Apply) -> list[State]:
        op = node.op
        in_sig, out_sig = op.inputs_sig, op.outputs_sig
        n_loop = tensor_outputs(node)[0].ndim - len(out_sig[0])
        is_dot = isinstance(op.core_op, Dot) or type(op.core_op).__name__ == "Dot"
        outs: list[State] = [{} for _ in node.outputs]
        for inp, sig in zip(tensor_inputs(node), in_sig, strict=True):
            loop = inp.ndim - len(sig)
            for hyp, (d, c) in self.state(inp).items():
                if d < loop:
                    for out in outs:
                        self.put(node, out, hyp, (d + n_loop - loop, c))
                    continue
                name = sig[d - loop]
                placed = [(k, s.index(name)) for k, s in enumerate(out_sig)
                          if name in s]
                if is_dot and not placed:
                    self.mix(node, hyp, "contracts (a matrix product) over")
                elif not is_dot:
                    self.unfollowed(node, hyp, "the core axes of a Blockwise")
                for k, pos in placed if is_dot else ():
                    self.put(node, outs[k], hyp, (n_loop + pos, c))
        return outs

    def random(self, node: Apply) -> State:
        op, draw = node.op, tensor_outputs(node)[1]
        n_batch = draw.ndim - op.ndim_supp
        out: State = {}
        params = cast(list[TensorVariable], op.dist_params(node))  # tensors
        for param, core in zip(params, op.ndims_params, strict=True):
            loop = param.ndim - core
            for hyp, (d, c) in self.state(param).items():
                if d >= loop:
                    self.unfollowed(node, hyp, "the core axes of a random variable")
                else:
                    self.put(node, out, hyp, (d + n_batch - loop, c))
        return out
