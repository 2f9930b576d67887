"""Does an inference graph still mix the examples of a batch?

Stage: independence (called by :func:`~popstats.rewrite`, hence
:func:`~popstats.get_inference_graph`, and by
:func:`~popstats.describe_rewrite`). Two walks of
:class:`~popstats._src.independence.scan_rule.LoopFlow`:

1. over the training graph, following every axis of every input: the axes
   each marked statistic reduces over, traced back to the inputs, say which
   axis of each input holds the examples (:func:`batch_axes`);
2. over the inference graph, following those axes only: every operation
   that still mixes them is reported (:func:`mixing_operations`).

The rules are documented in ``docs/independence.rst``.

Two kinds of finding: an operation that mixes examples (``"where: op
reduces over the batch axis of input 'x' (axis 0)"``) and one the rules
could not follow (``"where: could not follow op (why) on the batch axis
..."``; :func:`unfollowed` tells them apart), which may or may not mix and
is left to :func:`~popstats.check_batch_independence`.

Members: :func:`batch_axes`, :func:`check_batch_axes`, :func:`data_inputs`,
:func:`mixing_operations`, :func:`unfollowed`, :func:`warn_mixing`.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Mapping, Sequence

from pytensor.compile import SharedVariable
from pytensor.graph.basic import Constant, Variable
from pytensor.graph.traversal import graph_inputs
from pytensor.tensor.variable import TensorVariable

from popstats._src.errors import PopstatsError, PopstatsWarning, as_int, describe_value
from popstats._src.independence.flow import Event, walk_back
from popstats._src.independence.rules import UNFOLLOWED
from popstats._src.independence.scan_rule import LoopFlow

__all__ = ["batch_axes", "check_batch_axes", "data_inputs", "mixing_operations",
           "unfollowed", "warn_mixing"]


def data_inputs(outputs: Sequence[Variable]) -> list[TensorVariable]:
    """The free tensor inputs of a graph (no shared variables, no constants)."""
    return [v for v in graph_inputs(list(outputs))
            if isinstance(v, TensorVariable) and not isinstance(
                v, SharedVariable | Constant)]


def _label(var: Variable, k: int) -> str:
    return var.name if var.name is not None else f"<unnamed input {k}>"


def check_batch_axes(
    batch_axes: object, inputs: Sequence[TensorVariable], call: str
) -> dict[int, int | None]:
    """``batch_axes`` (input name or variable -> axis or None) by input index."""
    if batch_axes is None:
        return {}
    where = f"{call}(batch_axes=...)"
    if not isinstance(batch_axes, Mapping):
        raise PopstatsError(
            f"{where}: expected a dict from input name (or input variable) to its "
            f"batch axis (an int, or None for an input without one), e.g. "
            f"batch_axes={{'x': 1}}; got {describe_value(batch_axes)}."
        )
    names = [v.name for v in inputs]
    chosen: dict[int, int | None] = {}
    for key, axis in batch_axes.items():
        if isinstance(key, Variable):
            index = next((k for k, v in enumerate(inputs) if v is key), None)
        else:
            index = names.index(key) if key in names else None
        if index is None:
            known = ", ".join(repr(n) for n in names if n is not None) or "none named"
            raise PopstatsError(
                f"{where}: key {describe_value(key)} names no input of the graph "
                f"(its inputs: {known}). Use the name of an input, or the input "
                f"variable itself."
            )
        ndim = inputs[index].ndim
        number = as_int(axis)
        if axis is not None and (number is None or not -ndim <= number < ndim):
            raise PopstatsError(
                f"{where}: input {_label(inputs[index], index)!r} has {ndim} "
                f"axes, so its batch axis must be an int in [{-ndim}, {ndim}) or "
                f"None (no batch axis); got {describe_value(axis)}."
            )
        chosen[index] = None if number is None else number % ndim
    return chosen


def batch_axes(
    training: Sequence[Variable],
    inputs: Sequence[TensorVariable],
    given: Mapping[int, int | None],
) -> dict[int, tuple[frozenset[int], str]]:
    """Per input index, its candidate batch axes and where they come from.

    The rule: an axis given in ``given`` wins; otherwise the axes that every
    marked statistic reducing over some axis of the input reduces over (their
    intersection; when they disagree, the axes most of them reduce over);
    otherwise axis 0 for inputs with at least one axis (none for scalars).
    """
    flow = LoopFlow({v: {(k, a): (a, 0) for a in range(v.ndim)}
                     for k, v in enumerate(inputs)}, "<graph>")
    flow.run(list(training))
    reduced: list[set] = [walk_back(f, mark) for f in flow.all_flows()
                          for mark in f.marks]
    result = {}
    for k, var in enumerate(inputs):
        if k in given:
            axis = given[k]
            result[k] = (frozenset(() if axis is None else (axis,)), "given")
            continue
        sets = [frozenset(a for kk, a in hyps if kk == k) for hyps in reduced]
        sets = [s for s in sets if s]
        if sets:
            common = frozenset.intersection(*sets)
            if not common:
                counts = Counter(a for s in sets for a in s)
                top = max(counts.values())
                common = frozenset(a for a, n in counts.items() if n == top)
            result[k] = (common, "from the marked statistics")
        else:
            result[k] = (frozenset((0,) if var.ndim else ()),
                         "by default: no marked statistic reduces over it")
    return result


def _message(event: Event, inputs: Sequence[Variable], k: int, axes: frozenset) -> str:
    axis = min(axes)
    kind = event.kinds[(k, axis)]
    node = event.node
    named = [o.name for o in node.outputs if o.name]
    what = f"{node.op}" + (f" (output {named[0]!r})" if named else "")
    which = ", ".join(map(str, sorted(axes)))
    tail = f"the batch axis of input {_label(inputs[k], k)!r} (axis {which})"
    if kind.startswith(UNFOLLOWED):
        return f"{event.where}: {UNFOLLOWED} {what} {kind[len(UNFOLLOWED):].strip()} " \
               f"on {tail}"
    return f"{event.where}: {what} {kind} {tail}"


def unfollowed(text: str) -> bool:
    """Whether a finding of :func:`mixing_operations` is an operation the
    rules could not follow (not one that mixes examples)."""
    return f": {UNFOLLOWED} " in text


def mixing_operations(
    training: Sequence[Variable],
    inference: Sequence[Variable],
    *,
    batch_axes_arg: object = None,
    call: str = "rewrite",
) -> tuple[list[str], str]:
    """Operations of ``inference`` that mix examples, and the axes assumed.

    Returns the messages (``"where: op kind the batch axis of input 'x'
    (axis a)"``, in graph order, loops after the graph; those that mix
    first, then those not followed) and a line naming the batch axis taken
    for each input.
    """
    inputs = data_inputs(list(training) + list(inference))
    given = check_batch_axes(batch_axes_arg, inputs, call)
    axes = batch_axes(training, inputs, given)
    flow = LoopFlow({v: {(k, a): (a, 0) for a in axes[k][0]}
                     for k, v in enumerate(inputs)}, "<graph>")
    flow.run(list(inference))
    found: list[str] = []
    for event in flow.all_events():
        for k, (chosen, _) in axes.items():
            mixed = {a for kk, a in event.kinds if kk == k}
            if chosen and chosen <= mixed:
                text = _message(event, inputs, k, chosen)
                if text not in found:
                    found.append(text)
    found = [t for t in found if not unfollowed(t)] + [t for t in found
                                                       if unfollowed(t)]
    assumed = "; ".join(
        f"{_label(inputs[k], k)!r}: "
        + (f"axis {', '.join(map(str, sorted(chosen)))}" if chosen else "none")
        + f" ({origin})"
        for k, (chosen, origin) in axes.items())
    return found, assumed


def warn_mixing(found: list[str], assumed: str, call: str, stacklevel: int) -> None:
    """Warn with a :class:`~popstats.PopstatsWarning` naming each operation:
    those that mix examples first, then those the rules could not follow."""
    if not found:
        return
    mixing = [t for t in found if not unfollowed(t)]
    unknown = [t for t in found if unfollowed(t)]
    parts = []
    if mixing:
        parts.append(
            f"{call}: {len(mixing)} operation(s) of the inference graph still mix "
            f"the examples of a batch, so its outputs depend on the other examples "
            f"(at batch size 1 they are wrong):\n"
            + "\n".join(f"  - {text}" for text in mixing))
    if unknown:
        parts.append(
            ("Besides, the analysis " if mixing else f"{call}: the analysis ")
            + f"could not follow {len(unknown)} operation(s) of the inference "
            f"graph on the batch axis (it does not know what they do with it: "
            f"they may or may not mix examples):\n"
            + "\n".join(f"  - {text}" for text in unknown))
    advice = (
        "A batch statistic left unmarked? Mark it with popstats.bn_statistic "
        "and estimate again. If the batch axis is another one, pass "
        "batch_axes={'name': axis} (None: no batch axis); if the mixing is "
        "meant, filter the warning (category popstats.PopstatsWarning). "
        "popstats.check_batch_independence tests the graph on data."
    ) if mixing else (
        "Run popstats.check_batch_independence(inputs, outputs, batch) to "
        "check on data; if it passes, filter the warning (category "
        "popstats.PopstatsWarning). If the batch axis is another one, pass "
        "batch_axes={'name': axis} (None: no batch axis)."
    )
    parts.append(f"Batch axes taken: {assumed}.\n{advice}")
    warnings.warn(PopstatsWarning("\n".join(parts)), stacklevel=stacklevel)
