"""Batches and inputs: what the estimator is fed, checked with clear errors.

Each value a batch gives an input is checked against the input's type: a
number array (not strings or objects), the input's number of dimensions and
its static sizes. Its dtype is converted when nothing that matters is lost
(``dtypes="convert"``, the default, as PyTorch and JAX users expect):
booleans to numbers; integers to another integer type when every value is
in range, or to a float type that holds them exactly; finite floats to
another float type (a narrower one rounds, as a float32 model does) unless a
value overflows it. Everything else (floats to integers, complex numbers,
overflow) is refused naming the input, the batch, both dtypes and the fix.
``dtypes="strict"`` refuses any dtype other than the input's (the policies:
:data:`~popstats._src.estimation.options.DTYPE_POLICIES`).

Stage: estimation (:mod:`popstats._src.estimation`). Members:
:func:`batch_values`, :func:`check_inputs`, :func:`describe_batch`,
:func:`iterate`, :func:`run_error`.

Members: :func:`batch_digest`, :func:`batch_values`, :func:`check_inputs`,
:func:`describe_batch`, :func:`iterate`, :func:`run_error`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, cast

import numpy as np
from pytensor.compile.sharedvalue import SharedVariable
from pytensor.graph.basic import Constant, Variable
from pytensor.graph.traversal import graph_inputs
from pytensor.tensor.variable import TensorVariable

from popstats._src.errors import PopstatsError, describe_value
from popstats._src.export.exporter import EstimationGraph, as_variables

__all__ = ["batch_digest", "batch_values", "check_inputs", "describe_batch", "iterate",
           "run_error"]


def _lossless(array: np.ndarray, target: np.dtype) -> np.ndarray | None:
    """``array`` as ``target`` if that loses nothing that matters, else None."""
    kind, want = array.dtype.kind, target.kind
    if kind == "b" and want in "biuf":
        return array.astype(target)
    if kind in "iu" and want in "iu":
        info = np.iinfo(target)
        if array.size and (array.min() < info.min or array.max() > info.max):
            return None
        return array.astype(target)
    if kind in "iu" and want == "f":
        exact = 2 ** (np.finfo(target).nmant + 1)
        if array.size and np.abs(array.astype(np.float64)).max() > exact:
            return None
        return array.astype(target)
    if kind == "f" and want == "f":
        with np.errstate(over="ignore"):
            converted = array.astype(target)
        if not np.array_equal(np.isfinite(converted), np.isfinite(array)):
            return None  # a finite value overflows the target
        return converted
    return None


def _convert(
    value: Any, var: TensorVariable, index: int, call: str, policy: str
) -> Any:
    """``value`` checked (and converted) for input ``var`` of batch ``index``."""
    where = f"{call}(batches=...): batch {index} gives input {str(var)!r}"
    try:
        array = np.asarray(value)
    except Exception as exc:  # ragged lists and the like
        raise PopstatsError(
            f"{where} a value NumPy cannot make an array of "
            f"({type(exc).__name__}: {exc}); expected a {var.ndim}-d array of "
            f"{var.dtype}."
        ) from exc
    want = np.dtype(var.dtype)
    if array.dtype.kind not in "biufc":
        raise PopstatsError(
            f"{where} an array of dtype {array.dtype} ({describe_value(value)}); "
            f"expected numbers ({want}). Convert the data to numbers first."
        )
    if array.ndim != var.ndim:
        raise PopstatsError(
            f"{where} a {array.ndim}-d array of shape {array.shape}; {str(var)!r} "
            f"is {var.ndim}-d (static shape {var.type.shape}). Give each input "
            f"an array with its number of dimensions (e.g. a batch axis)."
        )
    static = var.type.shape
    if any(s is not None and s != n for s, n in zip(static, array.shape, strict=True)):
        raise PopstatsError(
            f"{where} shape {array.shape}, but its static shape is {static} "
            f"(None: any size)."
        )
    if array.dtype == want:
        # arrays read from a buffer (as Dask passes them between processes)
        # may be unaligned, which PyTensor's C code refuses: copy those
        return array if array.flags.aligned else array.copy()
    converted = None if policy == "strict" else _lossless(array, want)
    if converted is None:
        why = (
            "dtypes='strict' refuses any other dtype"
            if policy == "strict"
            else "converting would lose values (out of range, fractions, "
            "overflow or complex parts)"
        )
        raise PopstatsError(
            f"{where} dtype {array.dtype}, but the input is {want}: {why}. "
            f"Convert the data yourself (e.g. value.astype('{want}')) or build "
            f"the input with the data's dtype."
        )
    return converted


def describe_batch(values: Sequence[Any], inputs: Sequence[Variable]) -> str:
    """``name: shape dtype`` of every value of a batch, for error messages."""
    parts = []
    for var, value in zip(inputs, values, strict=True):
        array = np.asarray(value)
        parts.append(f"{str(var)!r}: shape {array.shape} {array.dtype}")
    return ", ".join(parts)


def _input_names(inputs: Sequence[Variable]) -> dict[str, int]:
    names: dict[str, int] = {}
    for i, var in enumerate(inputs):
        if var.name is not None:
            names.setdefault(var.name, i)
    return names


def check_inputs(
    inputs: object,
    eg: EstimationGraph,
    outputs: Sequence[Variable],
    call: str = "estimate",
) -> list[TensorVariable]:
    inputs = as_variables(inputs, call, "inputs")
    in_graph = set(graph_inputs(outputs))
    strangers = [str(v) for v in inputs if v not in in_graph]
    if strangers:
        raise PopstatsError(
            f"{call}(inputs=...): {', '.join(map(repr, strangers))} "
            f"{'is' if len(strangers) == 1 else 'are'} not in the graph of "
            f"outputs. Pass only inputs the outputs depend on (remove the others "
            f"from inputs; extra keys in the batch dicts are ignored anyway)."
        )
    needed = [
        v
        for v in graph_inputs(eg.outputs)
        if v.owner is None and not isinstance(v, Constant | SharedVariable)
    ]
    missing = [v for v in needed if v not in inputs]
    if missing:
        raise PopstatsError(
            f"{call}(inputs=...): the statistics depend on "
            f"{', '.join(repr(str(v)) for v in missing)}, which "
            f"{'is' if len(missing) == 1 else 'are'} not in inputs "
            f"{[str(v) for v in inputs]}. Add "
            f"{'it' if len(missing) == 1 else 'them'} to inputs."
        )
    return cast(list[TensorVariable], list(inputs))  # inputs a batch feeds: tensors


def batch_values(
    batch: Any,
    inputs: Sequence[TensorVariable],
    index: int,
    call: str = "estimate",
    dtypes: str = "convert",
) -> list:
    """The values of one batch, in the order of ``inputs``, checked."""
    values = _raw_values(batch, inputs, index, call)
    return [
        _convert(value, var, index, call, dtypes)
        for value, var in zip(values, inputs, strict=True)
    ]


def batch_digest(batch: Any, inputs: Sequence[Variable], index: int,
                 call: str = "estimate") -> bytes:
    """What identifies one batch's data: a digest of each input's value (its
    dtype, shape and bytes, in the order of ``inputs``), as given."""
    h = hashlib.blake2b(digest_size=16)
    for value in _raw_values(batch, inputs, index, call):
        array = np.ascontiguousarray(np.asarray(value))
        h.update(f"{array.dtype.str}{array.shape}".encode())
        h.update(array.tobytes() if array.dtype != object else repr(value).encode())
    return h.digest()


def _raw_values(batch: Any, inputs: Sequence[Variable], index: int, call: str) -> list:
    if isinstance(batch, Mapping):
        names = _input_names(inputs)
        values: list = [None] * len(inputs)
        found = [False] * len(inputs)
        for key, value in batch.items():
            pos = names.get(key) if isinstance(key, str) else None
            if pos is None and isinstance(key, Variable):
                pos = next((i for i, v in enumerate(inputs) if v is key), None)
            if pos is not None:
                values[pos], found[pos] = value, True
        lacking = [i for i, ok in enumerate(found) if not ok]
        if lacking:
            unnamed = [i for i in lacking if inputs[i].name is None]
            hint = ""
            if unnamed:
                hint = (f" Input(s) {unnamed} (positions in inputs) have no name, "
                        f"so no string key can name them: create them with a "
                        f"name (pt.matrix('x')), key the batch by the variable "
                        f"itself ({{x: array}}), or give tuples in the order of "
                        f"inputs.")
            shown = [str(inputs[i]) if inputs[i].name is not None
                     else f"input {i} (unnamed, {inputs[i].type})" for i in lacking]
            raise PopstatsError(
                f"{call}(batches=...): batch {index} lacks "
                f"{', '.join(map(repr, shown))}; it has keys "
                f"{sorted(map(str, batch))}. Key each batch by input name (or "
                f"input variable), one entry per input.{hint}"
            )
        return values
    if isinstance(batch, list | tuple):
        if len(batch) != len(inputs):
            raise PopstatsError(
                f"{call}(batches=...): batch {index} has {len(batch)} values but "
                f"inputs has {len(inputs)}: {[str(v) for v in inputs]}. Give "
                f"one value per input, in the order of inputs, or a dict."
            )
        return list(batch)
    raise PopstatsError(
        f"{call}(batches=...): batch {index} is {describe_value(batch)}; "
        f"expected a dict keyed by input name or variable, or a tuple/list in "
        f"the order of inputs."
    )


def iterate(batches: Any, call: str = "estimate") -> Iterator:
    if isinstance(batches, np.ndarray):
        raise PopstatsError(
            f"{call}(batches=...): got a NumPy array ({describe_value(batches)}); "
            f"iterating it would give its rows, not batches. Pass batches keyed "
            f"by input: batches=[{{'x': array}}] for one batch, or a list or "
            f"generator of such dicts (e.g. [{{'x': array[i:i + 64]}} for i in "
            f"range(0, len(array), 64)])."
        )
    if isinstance(batches, Mapping) or not isinstance(batches, Iterable):
        raise PopstatsError(
            f"{call}(batches=...): expected an iterable of batches (a list or a "
            f"generator of dicts), got {describe_value(batches)}. Wrap a single "
            f"batch in a list: batches=[batch]."
        )
    return iter(batches)


def run_error(call: str, exc: Exception, values: list, index: int,
              inputs: Sequence[Variable], sites: Sequence) -> PopstatsError:
    """The error of a batch the compiled graph failed on (chain the cause)."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    message = (
        f"{call}(batches=...): running the estimation graph failed on "
        f"batch {index} ({type(exc).__name__}: {first}). The batch has "
        f"{describe_batch(values, inputs)}. Check that its shapes fit "
        f"the model (the cause is shown above this error)."
    )
    nested = [s.name for s in sites if s.time_axes >= 2]
    if nested:
        message += (
            f" The graph has statistics in nested loops ({', '.join(nested)}): "
            f"if an inner loop's length varies between outer steps, its "
            f"per-step statistics cannot be stacked into one array. Pool the "
            f"inner loop over time (time=('step', 'pooled')), or pad the inner "
            f"sequences to one length within each batch."
        )
    return PopstatsError(message)
