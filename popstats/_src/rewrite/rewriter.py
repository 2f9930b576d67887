"""Rewrite: replace every batch statistic by its population value.

In the outer graph a statistic is replaced by a shared variable holding its
population value. Inside a Scan, the rebuilt loop gets a step-index sequence
and the population array as a non-sequence; the statistic becomes
``population[min(t, T - 1)]`` (steps past the longest sequence seen reuse
the last one, the rule of recurrent batch normalization, Cooijmans et al.
2016), recursively for nested loops. One walk over the graph: nothing is
cloned per statistic.

Stage: rewrite (:mod:`popstats._src.rewrite`). Members: :func:`rewrite`,
:func:`rewrite_as` (errors naming another call), :func:`population_array`
and :func:`check_stats` (shared with :mod:`popstats._src.rewrite.bind`),
:class:`RewriteLevel` (the visitor, which
:mod:`popstats._src.upstream.inference_export` combines with the exporter's).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast, overload

import numpy as np
import pytensor
import pytensor.tensor as pt
from pytensor.graph.basic import Apply, Variable
from pytensor.raise_op import CheckAndRaise
from pytensor.tensor.variable import TensorVariable

from popstats._src.errors import PopstatsError, describe_value
from popstats._src.estimation.statistics import PopulationStatistics, Statistic
from popstats._src.export.exporter import as_variables, restructure
from popstats._src.graph.surgery import ScanEdit
from popstats._src.graph.walk import LoopStep, SiteId, transform
from popstats._src.independence.mixing import mixing_operations, warn_mixing
from popstats._src.rewrite.matching import Matcher, check_match

__all__ = ["RewriteLevel", "check_finite", "check_fits", "check_stats", "known_shapes",
           "population_array", "rewrite", "rewrite_as", "step_index"]


class RewriteLevel:
    """One graph level; lends each statistic's value to the level below."""

    call = "rewrite"  # named in errors

    def __init__(
        self,
        matcher: Matcher,
        select: TensorVariable | None,
        parent: RewriteLevel | None = None,
        step: Variable | None = None,
        level: int = -1,
    ):
        self.matcher = matcher
        self.select = select
        self.parent = parent
        self.step = step
        self.level = level  # index of this loop among the enclosing ones
        self.values: dict[str, TensorVariable] = {}
        self.non_seqs: list[tuple[Variable, Variable]] = []
        #: outside loops: each statistic of the graph and the value it gets,
        #: checked by :func:`check_fits` once the pass is over
        self.placed: list[tuple[Variable, Statistic]] = []

    def value(self, group: list[Statistic], site: SiteId) -> TensorVariable:
        """The population value at this level (remaining time axes first).

        ``group`` holds the statistic's value in each set; ``site`` is the
        graph's statistic it replaces.
        """
        stat = group[0]
        if stat.name in self.values:
            return self.values[stat.name]
        if self.parent is None:
            value = _root_value(group, self.select, site)
        else:
            outer = self.parent.value(group, site)
            inner = outer.type()
            inner.name = outer.name
            self.non_seqs.append((outer, inner))
            if stat.site.time[self.level] == "pooled":
                value = inner  # one value for every step of this loop
            else:
                value = inner[pt.minimum(self.step, inner.shape[0] - 1)]
        self.values[stat.name] = value
        return value

    def statistic(self, var: Variable, site: SiteId) -> Variable | None:
        group = self.matcher.find(site, var)
        if group is None:
            return None  # reported by Matcher.check after the walk
        stat = group[0]
        expected = stat.value.shape[stat.depth :]
        static = var.type.shape
        if len(static) != len(expected) or any(
            s is not None and s != e for s, e in zip(static, expected, strict=True)
        ):
            raise PopstatsError(
                f"rewrite(stats=...): statistic {stat.name!r} has shape {static} "
                f"in the graph but {expected} in stats. Estimate again on this "
                f"graph."
            )
        for member in group:
            check_finite(member, self.call)
        if self.parent is None:
            self.placed.append((var, stat))
        value = self.value(group, site)
        dtype = cast(TensorVariable, var).dtype  # statistics mark tensors
        if value.dtype != dtype:
            value = value.astype(dtype)
        return var.type.filter_variable(value)

    def scan(
        self, node: Apply, inputs: list[Variable], path: tuple[LoopStep, ...]
    ) -> list[Variable]:
        edit = ScanEdit(node, inputs)
        step = pt.scalar(f"{node.op.name}_step", dtype="int64")
        inner = RewriteLevel(
            self.matcher, self.select, parent=self, step=step, level=len(path) - 1
        )
        edit.set_inner_outputs(
            transform(edit.inner_inputs, edit.inner_outputs, inner, path)
        )
        edit.add_sequence(step_index(edit.n_steps), step)
        for outer_value, inner_value in inner.non_seqs:
            edit.add_non_sequence(outer_value, inner_value)
        replaced, _ = edit.build()
        return replaced


def step_index(n_steps: Variable) -> Variable:
    """The step index a rebuilt loop gets as a sequence (``0 .. n_steps - 1``),
    tagged ``popstats_step_index``: the batch-independence analysis does not
    take the loop's length for a number of examples there."""
    index = pt.arange(n_steps, dtype="int64")
    index.tag.popstats_step_index = True
    return index


def check_finite(stat: Statistic, call: str) -> None:
    """Refuse a value holding NaN or infinity (a corrupted file, a diverged
    running average): every output using it would be NaN."""
    value = np.asarray(stat.value)
    bad = ~np.isfinite(value)
    if bad.any():
        kinds = " and ".join(k for k, m in (("NaN", np.isnan(value)),
                                             ("infinity", np.isinf(value))) if m.any())
        raise PopstatsError(
            f"{call}(stats=...): statistic {stat.name!r} holds {kinds} "
            f"({int(bad.sum())} of {value.size} values), which would make every "
            f"output computed from it {kinds}. A population value must be "
            f"finite: estimate it again on finite batches (or, for a file, "
            f"save it again from a finite estimate)."
        )


def known_shapes(variables: Sequence[TensorVariable]) -> list[tuple[int | None, ...]]:
    """Each variable's shape where it follows from the graph alone (weights
    and constants, not the inputs' values); None where it does not, and for
    every axis when PyTensor cannot infer it."""
    from pytensor.compile import SharedVariable
    from pytensor.compile.mode import Mode
    from pytensor.graph.basic import Constant
    from pytensor.graph.rewriting.utils import rewrite_graph
    from pytensor.graph.traversal import graph_inputs
    from pytensor.tensor.basic import MakeVector

    shapes: list[list[int | None]] = [[None] * v.ndim for v in variables]
    try:
        vectors = cast(list[TensorVariable], rewrite_graph(  # a list in, a list out
            [v.shape for v in variables], include=("canonicalize", "ShapeOpt"),
            clone=True))
        wanted, where = [], []
        for k, (var, vec) in enumerate(zip(variables, vectors, strict=True)):
            dims = (vec.owner.inputs if vec.owner is not None and isinstance(
                vec.owner.op, MakeVector) else [vec[a] for a in range(var.ndim)])
            for a, dim in enumerate(dims):
                if all(isinstance(r, SharedVariable | Constant)
                       for r in graph_inputs([dim])):
                    wanted.append(dim)
                    where.append((k, a))
        if wanted:
            fn = pytensor.function([], wanted, mode=Mode(linker="py", optimizer="None"),
                                   on_unused_input="ignore")
            for (k, a), size in zip(where, fn(), strict=True):
                shapes[k][a] = int(size)
    except Exception:  # shape inference is a help, never a failure
        return [(None,) * v.ndim for v in variables]
    return [tuple(s) for s in shapes]


def check_fits(placed: Sequence[tuple[Variable, Statistic]], call: str) -> None:
    """Refuse values whose shape is not the one the graph computes there
    (matched by name in a changed model, or a file edited since): the
    compiled function would fail on a broadcast, or silently broadcast."""
    found = known_shapes([cast(TensorVariable, var)  # statistics mark tensors
                          for var, _ in placed])
    for (_, stat), shape in zip(placed, found, strict=True):
        held = stat.value.shape[stat.depth:]
        if len(shape) == len(held) and any(
                s is not None and s != h for s, h in zip(shape, held, strict=True)):
            raise PopstatsError(
                f"{call}(stats=...): statistic {stat.name!r} has shape {held} in "
                f"stats, but the graph computes it with shape "
                f"{tuple('?' if s is None else s for s in shape)} (from its "
                f"weights). These values were estimated for another graph (or "
                f"the file was edited since): estimate on this graph."
            )


def population_array(
    stats: Sequence[Statistic], stacked: bool, call: str = "rewrite"
) -> np.ndarray:
    """One statistic's value, or its values in several sets stacked first.

    Sets estimated over runs of different lengths are padded to the longest
    by repeating their last step, which is what indexing with clamping would
    read anyway.
    """
    site = stats[0].site
    values = [np.asarray(s.value, dtype=site.dtype) for s in stats]
    if not stacked:
        return values[0]
    axes = stats[0].depth
    want = values[0].shape[axes:]
    for k, (other, value) in enumerate(zip(stats, values, strict=True)):
        shape = value.shape[other.depth :]
        if other.site.time != site.time:
            raise PopstatsError(
                f"{call}(stats=...): statistic {stats[0].name!r} has time modes "
                f"{site.time} and shape {want} in stats[0] but {other.site.time} "
                f"and {shape} in stats[{k}]. Sets chosen by select must be "
                f"estimated with the same time=... (and max_steps)."
            )
        if shape != want:
            raise PopstatsError(
                f"{call}(stats=...): statistic {stats[0].name!r} has shape {want} "
                f"in stats[0] but {shape} in stats[{k}]. Sets chosen by select "
                f"must be estimated on graphs of the same feature sizes."
            )
    longest = tuple(max(v.shape[a] for v in values) for a in range(axes))
    padded = [
        np.pad(
            v,
            [(0, n - v.shape[a]) for a, n in enumerate(longest)]
            + [(0, 0)] * (v.ndim - axes),
            mode="edge",
        )
        for v in values
    ]
    return np.stack(padded)


def _root_value(
    group: list[Statistic], select: TensorVariable | None, site_id: SiteId
) -> TensorVariable:
    stat = group[0]
    site = stat.site
    stacked = select is not None
    value = population_array(group, stacked)
    shape = (None,) * (stat.depth + stacked) + tuple(site.shape)
    var = pytensor.shared(value, name=stat.name, shape=shape)
    var.tag.popstats_statistic = stat.name
    var.tag.popstats_site = site_id  # the graph's statistic (what bind matches)
    var.tag.popstats_stacked = stacked
    var.tag.popstats_time = site.time  # how the graph indexes its time axes
    if select is None:  # not stacked
        return var
    n_sets = var.shape[0]
    checked = _set_index_check(select, (select >= 0) & (select < n_sets))
    return var[checked]


def _set_index_check(
    select: TensorVariable, in_range: TensorVariable
) -> TensorVariable:
    check = CheckAndRaise(
        PopstatsError,
        "rewrite(select=...): the statistic set index is out of range at run "
        "time; it must be in [0, number of sets). (The JAX backend cannot "
        "raise here: it clamps a too-large index and wraps a negative one.)",
    )
    return cast(TensorVariable, check(select, in_range))  # CheckAndRaise's one output


def _check_select(select: object, n_sets: int) -> TensorVariable:
    if not isinstance(select, TensorVariable) or select.ndim != 0 or not (
        select.dtype.startswith(("int", "uint"))
    ):
        raise PopstatsError(
            f"rewrite(select=...): expected a symbolic integer scalar, e.g. "
            f"pt.iscalar('stats_set'), to choose among the {n_sets} sets; got "
            f"{describe_value(select)}."
        )
    return select


@overload
def rewrite(
    outputs: Variable, stats: PopulationStatistics | Sequence[PopulationStatistics],
    *, select: Variable | None = ..., match: str = ..., batch_axes: dict | None = ...,
) -> Variable: ...
@overload
def rewrite(
    outputs: Sequence[Variable],
    stats: PopulationStatistics | Sequence[PopulationStatistics],
    *, select: Variable | None = ..., match: str = ..., batch_axes: dict | None = ...,
) -> list[Variable]: ...
def rewrite(outputs, stats, *, select=None, match="structure", batch_axes=None):
    """Replace every marked statistic in ``outputs`` by its population value.

    Parameters
    ----------
    outputs : Variable or sequence of Variable
        Graph to rewrite: the training graph, or any graph holding the
        statistics ``stats`` was estimated for.
    stats : PopulationStatistics or sequence of them
        From :func:`~popstats.estimate`. Several sets (per task, domain or
        data source) need ``select``.
    select : integer scalar Variable, optional
        With several sets: a new input of the inference graph choosing the
        set (0-based) at run time; an index out of range raises
        :class:`~popstats.PopstatsError` when the function runs (except on
        JAX, which cannot raise inside a compiled function: it clamps a
        too-large index and wraps a negative one).
    match : {"structure", "name"}, default "structure"
        How a statistic of the graph finds its value (see :doc:`/names`):
        by label, enclosing loops and a fingerprint of where it is computed
        (so each application of a reused layer gets its own value, in any
        process that builds the same model), or by label and loops alone
        (when the model changed upstream but the values still apply).
    batch_axes : dict, optional
        Input name (or variable) to the axis holding its examples, or None
        for an input without one, where the marked statistics do not tell
        (see :doc:`/independence`). The result is checked for operations that
        still mix examples; each is named in a :class:`~popstats.PopstatsWarning`.

    Returns
    -------
    Variable or list of Variable
        The inference outputs, in the structure given. Population values are
        shared variables named after the statistics (see
        :func:`population_variables`; rebind others with :func:`bind`); the
        user's graph is not modified.

    Examples
    --------
    >>> import numpy as np, pytensor, pytensor.tensor as pt, popstats
    >>> x = pt.matrix("x")
    >>> y = x - popstats.bn_statistic(x.mean(axis=0), label="mean")
    >>> stats = popstats.estimate([x], y, [{"x": np.ones((3, 2))}])
    >>> y_inf = popstats.rewrite(y, stats)
    >>> pytensor.function([x], y_inf)(np.zeros((1, 2)))
    array([[-1., -1.]])

    Two statistic sets, chosen by an input:

    >>> other = popstats.estimate([x], y, [{"x": np.full((3, 2), 5.0)}])
    >>> k = pt.iscalar("k")
    >>> y_sets = popstats.rewrite(y, [stats, other], select=k)
    >>> pytensor.function([x, k], y_sets)(np.zeros((1, 2)), 1)
    array([[-5., -5.]])
    """
    return rewrite_as("rewrite", outputs, stats, select, match, batch_axes, 3)


def rewrite_as(call: str, outputs: object, stats: object, select: object,
               match: str, batch_axes: object, stacklevel: int) -> object:
    """:func:`rewrite`, warning in the name of ``call`` (for the stack level)."""
    sets = check_stats(stats, select)
    if select is not None:
        select = _check_select(select, len(sets))
    matcher = Matcher(sets, check_match(match, "rewrite"), "rewrite")
    outs = as_variables(outputs, "rewrite")
    root = RewriteLevel(matcher, select)
    new = transform((), outs, root)
    matcher.check()
    check_fits(root.placed, "rewrite")
    found, assumed = mixing_operations(outs, new, batch_axes_arg=batch_axes, call=call)
    warn_mixing(found, assumed, call, stacklevel + 1)
    record_training(outs, new, batch_axes)
    return restructure(outputs, new)


def record_training(training: Sequence[Variable], inference: Sequence[Variable],
                    batch_axes: object) -> None:
    """Keep, on each new output of a rewrite, the training graph it came from
    and ``batch_axes`` (tag ``popstats_training``):
    :func:`~popstats.check_batch_independence` finds the batch axes the
    rewrite found from the marks there (the inference graph has none left).
    Outputs the rewrite left as they were are the user's: not tagged."""
    record = (tuple(training), batch_axes)
    for old, var in zip(training, inference, strict=True):
        if var is not old:
            var.tag.popstats_training = record


def check_stats(
    stats: object, select: object, call: str = "rewrite"
) -> list[PopulationStatistics]:
    sets = [stats] if isinstance(stats, PopulationStatistics) else stats
    if not isinstance(sets, list | tuple) or not sets or not all(
        isinstance(s, PopulationStatistics) for s in sets
    ):
        hint = (" (a file path: read it with popstats.load(path) first)"
                if isinstance(stats, str) else "")
        raise PopstatsError(
            f"{call}(stats=...): expected PopulationStatistics from "
            f"popstats.estimate() or popstats.load(), or a non-empty list of "
            f"them with select=...; got {describe_value(stats)}{hint}."
        )
    if len(sets) > 1 and select is None:
        raise PopstatsError(
            f"rewrite(select=...): {len(sets)} statistic sets were given but no "
            f"select; pass select=pt.iscalar('stats_set') to choose one at run "
            f"time, or pass a single PopulationStatistics."
        )
    return list(sets)
