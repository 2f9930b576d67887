"""Batch independence proven on data: :func:`check_batch_independence`.

Stage: independence. The structural analysis of :mod:`~.mixing` tells
which operations mix examples; this runs the graph and compares.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

import numpy as np
import pytensor
from pytensor.graph.basic import Variable
from pytensor.graph.traversal import ancestors
from pytensor.tensor.variable import TensorVariable

from popstats._src.errors import PopstatsError, check_number, describe_value
from popstats._src.export.exporter import as_variables
from popstats._src.independence.mixing import batch_axes as find_batch_axes
from popstats._src.independence.mixing import check_batch_axes, data_inputs

__all__ = ["check_batch_independence"]

_CALL = "check_batch_independence"


def _inputs(inputs: object, outputs: Sequence[Variable]) -> list[TensorVariable]:
    inputs = as_variables(inputs, _CALL, "inputs")
    missing = [str(v) for v in data_inputs(outputs) if v not in inputs]
    if missing:
        raise PopstatsError(
            f"{_CALL}(inputs=...): the outputs depend on {', '.join(missing)}, "
            f"which inputs lacks. Add every free input of the outputs."
        )
    return cast(list[TensorVariable], list(inputs))  # data inputs: tensors


def _batch_axes(outputs: Sequence[Variable], inputs: list[TensorVariable],
                given: dict[int, int | None]) -> tuple[dict[int, int | None], str]:
    """Each input's batch axis, and a line saying which and why.

    Given ones win; then, for outputs made by :func:`~popstats.rewrite` (or
    computed from them), the axes the rewrite found from the marked
    statistics of the training graph (recorded on its outputs); then axis
    0 of every input with an axis.
    """
    records: list[tuple[Sequence[TensorVariable], object]] = []
    for var in ancestors(list(outputs)):
        record = getattr(var.tag, "popstats_training", None)
        if record is not None and not any(record is r for r in records):
            records.append(record)
    found: dict[int, tuple[frozenset[int], str]] = {}
    if len(records) == 1:
        training, argument = records[0]
        known = [v for v in inputs if v in set(data_inputs(training))]
        try:
            recorded = check_batch_axes(argument, known, _CALL)
        except PopstatsError:  # pragma: no cover - checked by rewrite already
            recorded = {}
        from_rewrite = find_batch_axes(training, known, recorded)
        for k, var in enumerate(inputs):
            if var in known:
                chosen, origin = from_rewrite[known.index(var)]
                if origin != "by default: no marked statistic reduces over it":
                    found[k] = (chosen, f"as rewrite found: {origin}")
    axes: dict[int, int | None] = {}
    why: list[str] = []
    for k, var in enumerate(inputs):
        if k in given:
            axes[k], origin = given[k], "given"
        elif k in found:
            chosen, origin = found[k]
            axes[k] = min(chosen) if chosen else None
        else:
            axes[k] = 0 if var.ndim else None
            origin = "by default" if var.ndim else "a scalar, passed whole"
        label = var.name if var.name is not None else f"<unnamed input {k}>"
        why.append(f"{label!r}: {'none' if axes[k] is None else f'axis {axes[k]}'} "
                   f"({origin})")
    return axes, "; ".join(why)


def _values(batch: object, inputs: list[TensorVariable]) -> list[np.ndarray]:
    if isinstance(batch, Mapping):
        values = []
        for var in inputs:
            hits = [v for k, v in batch.items() if k is var or k == var.name]
            if not hits:
                raise PopstatsError(
                    f"{_CALL}(batch=...): the batch lacks input {str(var)!r}; it "
                    f"has keys {sorted(map(str, batch))}. Key it by input name "
                    f"(or variable), one entry per input."
                )
            values.append(hits[0])
    elif isinstance(batch, list | tuple) and len(batch) == len(inputs):
        values = list(batch)
    else:
        raise PopstatsError(
            f"{_CALL}(batch=...): expected one batch, a dict keyed by input name "
            f"or a tuple in the order of inputs ({len(inputs)} values); got "
            f"{describe_value(batch)}."
        )
    return [np.asarray(v, dtype=var.dtype) for v, var in zip(values, inputs,
                                                              strict=True)]


def _size(values: list[np.ndarray], axes: dict[int, int | None],
          inputs: list[TensorVariable]) -> int:
    sizes = {str(inputs[k]): values[k].shape[a] for k, a in axes.items()
             if a is not None}
    if not sizes or len(set(sizes.values())) != 1 or min(sizes.values()) < 2:
        raise PopstatsError(
            f"{_CALL}(batch=...): the inputs' batch axes must hold one number of "
            f"examples, at least 2; got {sizes or 'no input with a batch axis'}. "
            f"Give a batch of a few examples, and batch_axes={{'name': axis}} "
            f"(None: none) for inputs whose batch axis is not axis 0."
        )
    return next(iter(sizes.values()))


def _axis(one: np.ndarray, full: np.ndarray, n: int) -> int | str | None:
    """An output's batch axis: length ``n`` for the batch, 1 for one example
    (None: no batch axis; ``"shape"``: the shapes differ otherwise)."""
    if one.shape == full.shape:
        return None
    differ = [a for a in range(full.ndim) if one.ndim == full.ndim
              and one.shape[a] != full.shape[a]]
    if len(differ) == 1 and full.shape[differ[0]] == n and one.shape[differ[0]] == 1:
        return differ[0]
    return "shape"


def _gap(part: np.ndarray, whole: np.ndarray) -> float:
    """The largest difference, NaN against NaN counting as equal."""
    a = np.atleast_1d(np.asarray(part, dtype=np.float64))
    b = np.atleast_1d(np.asarray(whole, dtype=np.float64))
    diff = np.abs(a - b)
    diff[np.isnan(a) & np.isnan(b)] = 0.0
    return float(np.nanmax(np.where(np.isnan(diff), np.inf, diff), initial=0.0))


def check_batch_independence(
    inputs: Sequence[Variable],
    outputs: Variable | Sequence[Variable],
    batch: Any,
    *,
    batch_axes: dict | None = None,
    rtol: float = 1e-6,
    mode: str | pytensor.compile.Mode | None = None,
) -> float:
    """Prove on data that each example's outputs depend on that example alone.

    Compiles ``outputs``, runs the whole ``batch``, each example alone and
    the batch in a permuted order, and requires each example's outputs to
    equal its row of the whole batch's (the output's batch axis is the one
    whose length is the number of examples, 1 for one example; an output
    without one must be the same for every run). Differences count relative
    to the largest magnitude of the whole batch's output.

    Parameters
    ----------
    inputs : sequence of Variable
        The graph's free inputs.
    outputs : Variable or sequence of Variable
        The graph to check, typically from :func:`~popstats.rewrite`.
    batch : dict or tuple
        One batch of a few examples (2 to 8 keep it fast), keyed by input
        name (or variable), or in the order of ``inputs``.
    batch_axes : dict, optional
        Input name (or variable) to the axis holding its examples; None for
        an input without one (passed whole to every run). Default: axis 0 of
        every input with at least one axis; scalars are passed whole.
    rtol : float, default 1e-6
        Largest difference allowed, relative to the output's largest value.
    mode : str or Mode, optional
        Compilation mode (PyTensor's default if None).

    Returns
    -------
    float
        The largest relative difference found (below ``rtol``).

    Raises
    ------
    PopstatsError
        Naming each output that depends on other examples, with its largest
        difference.

    Examples
    --------
    >>> import numpy as np, pytensor.tensor as pt, popstats
    >>> x = pt.matrix("x")
    >>> batch = {"x": np.arange(6.0).reshape(3, 2)}
    >>> popstats.check_batch_independence([x], pt.tanh(x * 2.0), batch) < 1e-12
    True
    >>> try:  # subtracting the batch mean mixes examples
    ...     popstats.check_batch_independence([x], x - x.mean(axis=0), batch)
    ... except popstats.PopstatsError as error:
    ...     print(str(error).split(": ", 2)[1])
    1 output(s) depend on other examples of the batch
    """
    outs = as_variables(outputs, _CALL)
    ins = _inputs(inputs, outs)
    rtol = check_number(rtol, f"{_CALL}(rtol=...)", minimum=0)
    given = check_batch_axes(batch_axes, ins, _CALL)
    axes, taken = _batch_axes(outs, ins, given)
    values = _values(batch, ins)
    n = _size(values, axes, ins)
    fn = pytensor.function(ins, outs, mode=mode, on_unused_input="ignore")

    def run(rows: np.ndarray, what: str = "the whole batch") -> list[np.ndarray]:
        taken = [v if axes[k] is None else np.take(v, rows, axis=axes[k])
                 for k, v in enumerate(values)]
        try:
            return [np.asarray(o) for o in fn(*taken)]
        except Exception as exc:  # the graph's own error, on a smaller batch
            if what == "the whole batch":
                raise PopstatsError(
                    f"{_CALL}(batch=...): the outputs cannot be computed on the "
                    f"batch given ({type(exc).__name__}: "
                    f"{str(exc).splitlines()[0] if str(exc) else ''}). Give a "
                    f"batch the graph runs on (shapes "
                    f"{[np.shape(v) for v in values]})."
                ) from exc
            raise PopstatsError(
                f"{_CALL}(outputs=...): the outputs cannot be computed for "
                f"{what} ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}), though they "
                f"can for the whole batch of {n}: they depend on other examples "
                f"of the batch (e.g. index a fixed row of the batch, y[1], or "
                f"need a batch of a given size). Compute each example from "
                f"itself alone, or give batch_axes={{'name': axis}} if the "
                f"batch axis is not axis 0."
            ) from exc

    whole = run(np.arange(n))
    order = np.roll(np.arange(n)[::-1], 1)  # a permutation moving every example
    runs = [(f"example {i} alone", np.array([i])) for i in range(n)]
    worst: dict[int, tuple[float, float, str]] = {}
    problems: dict[int, str] = {}
    found = [run(rows, what) for what, rows in runs]
    batch_axis = [_axis(one, full, n) for one, full in zip(found[0], whole,
                                                           strict=True)]
    runs.append(("the permuted batch", order))
    found.append(run(order, "the permuted batch"))
    for (what, rows), got_outs in zip(runs, found, strict=True):
        for j, (got, full) in enumerate(zip(got_outs, whole, strict=True)):
            axis = batch_axis[j]  # an int, None or "shape"
            want = np.take(full, rows, axis=axis) if isinstance(axis, int) else full
            if axis == "shape" or got.shape != want.shape:
                problems.setdefault(j, f"output {j}: shape {got.shape} for {what} "
                                       f"but {full.shape} for the whole batch")
                continue
            gap = _gap(got, want)
            scale = float(np.max(np.abs(full), initial=0.0)) if full.size else 0.0
            rel = gap / scale if scale > 0 and np.isfinite(scale) else gap
            if rel > worst.get(j, (-1.0,))[0]:
                worst[j] = (rel, gap, what)
    for j, (rel, gap, what) in worst.items():
        if rel > rtol and j not in problems:
            problems[j] = (f"output {j}: {what} differs from its row of the whole "
                           f"batch by {gap:.3g} (relative {rel:.3g}; rtol {rtol:g})")
    if problems:
        listed = "; ".join(problems[j] for j in sorted(problems))
        raise PopstatsError(
            f"{_CALL}(outputs=...): {len(problems)} output(s) depend on other "
            f"examples of the batch: {listed}. Something still mixes examples: a "
            f"batch statistic left unmarked (rewrite warns naming the operation), "
            f"or the batch axis taken is the wrong one. Batch axes taken: "
            f"{taken}; if the examples are along another axis, pass "
            f"batch_axes={{'name': axis}} (None: no batch axis)."
        )
    return max((rel for rel, _, _ in worst.values()), default=0.0)
