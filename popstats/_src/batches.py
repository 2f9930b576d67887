"""Batches and inputs: what the estimator is fed, checked with clear errors."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from pytensor.compile.sharedvalue import SharedVariable
from pytensor.graph.basic import Constant, Variable
from pytensor.graph.traversal import graph_inputs

from popstats._src.errors import PopstatsError, describe_value
from popstats._src.exporter import EstimationGraph

__all__ = ["batch_values", "check_inputs", "iterate"]


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
) -> list[Variable]:
    if isinstance(inputs, Variable):
        inputs = [inputs]
    if not isinstance(inputs, list | tuple):
        raise PopstatsError(
            f"{call}(inputs=...): expected a list of input variables, got "
            f"{describe_value(inputs)}."
        )
    for i, var in enumerate(inputs):
        if not isinstance(var, Variable):
            raise PopstatsError(
                f"{call}(inputs=...): element {i} is {describe_value(var)}, not "
                f"a PyTensor variable. Pass the symbolic inputs, e.g. [x, mask]."
            )
        if var.owner is not None or isinstance(var, Constant | SharedVariable):
            raise PopstatsError(
                f"{call}(inputs=...): {var} is not a free input of the graph "
                f"(it is computed, constant or shared). Pass the root variables "
                f"the batches provide values for."
            )
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
    return list(inputs)


def batch_values(
    batch: Any, inputs: Sequence[Variable], index: int, call: str = "estimate"
) -> list:
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
        lacking = [str(inputs[i]) for i, ok in enumerate(found) if not ok]
        if lacking:
            raise PopstatsError(
                f"{call}(batches=...): batch {index} lacks "
                f"{', '.join(map(repr, lacking))}; it has keys "
                f"{sorted(map(str, batch))}. Key each batch by input name (or "
                f"input variable), one entry per input."
            )
        return values
    if isinstance(batch, list | tuple):
        if len(batch) != len(inputs):
            raise PopstatsError(
                f"{call}(batches=...): batch {index} has {len(batch)} values but "
                f"there are {len(inputs)} inputs {[str(v) for v in inputs]}. Give "
                f"one value per input, in the order of inputs, or a dict."
            )
        return list(batch)
    raise PopstatsError(
        f"{call}(batches=...): batch {index} is {describe_value(batch)}; "
        f"expected a dict keyed by input name or variable, or a tuple/list in "
        f"the order of inputs."
    )


def iterate(batches: Any, call: str = "estimate") -> Iterator:
    if isinstance(batches, Mapping) or not isinstance(batches, Iterable):
        raise PopstatsError(
            f"{call}(batches=...): expected an iterable of batches (a list or a "
            f"generator of dicts), got {describe_value(batches)}. Wrap a single "
            f"batch in a list: batches=[batch]."
        )
    return iter(batches)
