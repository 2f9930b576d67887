"""Estimator: run the estimation graph over batches, average per time step.

The default estimate is the original tool's: the plain average of each
statistic over batches. For a statistic inside loops the average is taken
per time step over the batches that reached that step (coverage-aware), for
every time axis. Accumulation is streaming, in float64, with a running-mean
update, so memory does not grow with the number of batches.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pytensor
from pytensor.compile.sharedvalue import SharedVariable
from pytensor.graph.basic import Constant, Variable
from pytensor.graph.traversal import graph_inputs

from popstats._src.errors import PopstatsError, describe_value
from popstats._src.exporter import EstimationGraph, Site, as_variables, export_checked
from popstats._src.statistics import PopulationStatistics, Statistic

__all__ = ["estimate"]


class _RunningMean:
    """Per-step running mean of one statistic, growing with the longest run."""

    def __init__(self, site: Site):
        self.site = site
        self.mean: np.ndarray | None = None
        self.count: np.ndarray | None = None
        self.n_batches = 0
        # Per value shape: the cells it updates and the weights' shape, so
        # that a batch shaped like the one before costs only the arithmetic.
        self._shape: tuple[int, ...] | None = None
        self._cells: tuple = ()
        self._weight_shape: tuple[int, ...] = ()

    def update(self, value: np.ndarray, batch_index: int) -> None:
        value = np.asarray(value)
        if not np.isfinite(value).all():
            site = self.site
            raise PopstatsError(
                f"estimate(batches=...): statistic {site.name!r} (in {site.where}) "
                f"is not finite in batch {batch_index}. Check that batch for "
                f"NaN/inf inputs or empty reductions (a mean over zero elements)."
            )
        if value.shape != self._shape:
            self._fit(value.shape, batch_index)
        if self.count.ndim == 0:  # outside loops: one count, a plain scalar weight
            self.count += 1
            self.mean += (value - self.mean) * (1.0 / int(self.count))
        else:
            count = self.count[self._cells]
            count += 1
            mean = self.mean[self._cells]
            mean += (value - mean) * (1.0 / count.reshape(self._weight_shape))
        self.n_batches += 1

    def _fit(self, shape: tuple[int, ...], batch_index: int) -> None:
        """Check a new value shape; grow the time axes to it; cache cells."""
        site, depth = self.site, self.site.depth
        steps, stat_shape = shape[:depth], shape[depth:]
        if self.mean is None:
            self.mean = np.zeros(steps + stat_shape, dtype=np.float64)
            self.count = np.zeros(steps, dtype=np.int64)
        elif self.mean.shape[depth:] != stat_shape:
            raise PopstatsError(
                f"estimate(batches=...): statistic {site.name!r} (in {site.where}) "
                f"has shape {stat_shape} in batch {batch_index} but "
                f"{self.mean.shape[depth:]} in earlier batches. A population "
                f"statistic needs the same shape in every batch (apart from time "
                f"axes): check that feature sizes do not depend on the batch."
            )
        grown = tuple(max(a, b) for a, b in zip(self.count.shape, steps, strict=True))
        if grown != self.count.shape:
            self.mean = _grow(self.mean, grown + stat_shape)
            self.count = _grow(self.count, grown)
        self._shape = shape
        self._cells = (*(slice(0, n) for n in steps), Ellipsis)  # views, even 0-d
        self._weight_shape = steps + (1,) * len(stat_shape)

    def finalize(self) -> Statistic:
        site = self.site
        if self.count is None or self.count.size == 0 or not self.count.any():
            raise PopstatsError(
                f"estimate(batches=...): statistic {site.name!r} (in {site.where}) "
                f"was never computed: every batch ran its loop for zero steps. "
                f"Give batches with non-empty sequences."
            )
        value = _fill_uncovered(self.mean, self.count)
        return Statistic(
            name=site.name,
            label=site.label,
            site=site,
            value=value,
            coverage=self.count.copy(),
            n_batches=self.n_batches,
        )


def _grow(array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    out = np.zeros(shape, dtype=array.dtype)
    out[tuple(slice(0, n) for n in array.shape)] = array
    return out


def _fill_uncovered(mean: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Fill cells no batch reached from the nearest covered earlier step.

    Along the innermost time axis first, then outwards: a cell (t1, t2)
    takes (t1, t2') for the largest covered t2' < t2; a row no batch reached
    at all takes the row before it. This is the clamping rule of recurrent
    batch normalization (repeat the last step) applied per axis.
    """
    value = mean.copy()
    covered = count > 0
    for axis in reversed(range(count.ndim)):
        if covered.all():
            break
        for t in range(1, count.shape[axis]):
            here = (slice(None),) * axis + (t,)
            before = (slice(None),) * axis + (t - 1,)
            holes = ~covered[here]
            if holes.any():
                value[here][holes] = value[before][holes]
                covered[here] |= covered[before]
    return value


def _input_names(inputs: Sequence[Variable]) -> dict[str, int]:
    names: dict[str, int] = {}
    for i, var in enumerate(inputs):
        if var.name is not None:
            names.setdefault(var.name, i)
    return names


def _check_inputs(
    inputs: object, eg: EstimationGraph, outputs: Sequence[Variable]
) -> list[Variable]:
    if isinstance(inputs, Variable):
        inputs = [inputs]
    if not isinstance(inputs, list | tuple):
        raise PopstatsError(
            f"estimate(inputs=...): expected a list of input variables, got "
            f"{describe_value(inputs)}."
        )
    for i, var in enumerate(inputs):
        if not isinstance(var, Variable):
            raise PopstatsError(
                f"estimate(inputs=...): element {i} is {describe_value(var)}, not "
                f"a PyTensor variable. Pass the symbolic inputs, e.g. [x, mask]."
            )
        if var.owner is not None or isinstance(var, Constant | SharedVariable):
            raise PopstatsError(
                f"estimate(inputs=...): {var} is not a free input of the graph "
                f"(it is computed, constant or shared). Pass the root variables "
                f"the batches provide values for."
            )
    in_graph = set(graph_inputs(outputs))
    strangers = [str(v) for v in inputs if v not in in_graph]
    if strangers:
        raise PopstatsError(
            f"estimate(inputs=...): {', '.join(map(repr, strangers))} "
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
            f"estimate(inputs=...): the statistics depend on "
            f"{', '.join(repr(str(v)) for v in missing)}, which "
            f"{'is' if len(missing) == 1 else 'are'} not in inputs "
            f"{[str(v) for v in inputs]}. Add "
            f"{'it' if len(missing) == 1 else 'them'} to inputs."
        )
    return list(inputs)


def _batch_values(batch: Any, inputs: Sequence[Variable], index: int) -> list:
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
                f"estimate(batches=...): batch {index} lacks "
                f"{', '.join(map(repr, lacking))}; it has keys "
                f"{sorted(map(str, batch))}. Key each batch by input name (or "
                f"input variable), one entry per input."
            )
        return values
    if isinstance(batch, list | tuple):
        if len(batch) != len(inputs):
            raise PopstatsError(
                f"estimate(batches=...): batch {index} has {len(batch)} values but "
                f"there are {len(inputs)} inputs {[str(v) for v in inputs]}. Give "
                f"one value per input, in the order of inputs, or a dict."
            )
        return list(batch)
    raise PopstatsError(
        f"estimate(batches=...): batch {index} is {describe_value(batch)}; "
        f"expected a dict keyed by input name or variable, or a tuple/list in "
        f"the order of inputs."
    )


def _iterate(batches: Any) -> Iterator:
    if isinstance(batches, Mapping) or not isinstance(batches, Iterable):
        raise PopstatsError(
            f"estimate(batches=...): expected an iterable of batches (a list or a "
            f"generator of dicts), got {describe_value(batches)}. Wrap a single "
            f"batch in a list: batches=[batch]."
        )
    return iter(batches)


def estimate(
    inputs: Sequence[Variable],
    outputs: Variable | Sequence[Variable],
    batches: Iterable[Any],
    *,
    mode: str | pytensor.compile.Mode | None = None,
) -> PopulationStatistics:
    """Estimate population statistics over ``batches``.

    Parameters
    ----------
    inputs : sequence of Variable
        The graph's free inputs (those the batches provide).
    outputs : Variable or sequence of Variable
        Outputs of the training graph; every marked statistic they depend on
        is estimated.
    batches : iterable
        Any iterable (a one-shot generator is fine), each batch a dict keyed
        by input name or input variable, or a tuple/list in the order of
        ``inputs``.
    mode : str or Mode, optional
        PyTensor compilation mode for the estimation function.

    Returns
    -------
    PopulationStatistics
        Per statistic: the average over batches (per time step, over the
        batches that reached the step), coverage counts, number of batches.

    Examples
    --------
    >>> import numpy as np, pytensor.tensor as pt, popstats
    >>> x = pt.matrix("x")
    >>> y = x - popstats.bn_statistic(x.mean(axis=0), label="mean")
    >>> batches = [{"x": np.full((4, 2), 1.0)}, {"x": np.full((2, 2), 3.0)}]
    >>> stats = popstats.estimate([x], y, batches)
    >>> stats["mean"].value
    array([2., 2.])
    """
    outs = as_variables(outputs, "estimate")
    eg = export_checked(outs, "estimate")
    inputs = _check_inputs(inputs, eg, outs)
    fn = pytensor.function(
        inputs, list(eg.outputs), mode=mode, on_unused_input="ignore"
    )
    accumulators = [_RunningMean(site) for site in eg.sites]
    n = 0
    for n, batch in enumerate(_iterate(batches), start=1):
        values = _batch_values(batch, inputs, n - 1)
        try:
            results = fn(*values)
        except Exception as exc:
            nested = [site.name for site in eg.sites if site.depth >= 2]
            if not nested:
                raise
            raise _nested_run_error(exc, nested, n - 1) from exc
        for acc, value in zip(accumulators, results, strict=True):
            acc.update(value, n - 1)
    if n == 0:
        raise PopstatsError(
            "estimate(batches=...): no batches. Pass a non-empty iterable of "
            "training batches (a generator that was already consumed is empty)."
        )
    return PopulationStatistics(tuple(acc.finalize() for acc in accumulators))


def _nested_run_error(exc: Exception, nested: list[str], index: int) -> PopstatsError:
    return PopstatsError(
        f"estimate(batches=...): running the estimation graph failed on batch "
        f"{index} ({type(exc).__name__}: {exc}). The graph has statistics in "
        f"nested loops ({', '.join(nested)}): if an inner loop's length varies "
        f"between outer steps, its per-step statistics cannot be stacked into "
        f"one array. Pad the inner sequences to one length within each batch."
    )
