"""Export: find every statistic and make it an output of the graph.

Statistics in the outer graph are outputs as they are. A statistic inside a
Scan becomes an extra ``nit_sot`` output of a rebuilt Scan, recursively: a
statistic two loops deep comes out with two leading time axes (outer steps,
inner steps). Its element count, when given, travels along the same way.

With ``time="pooled"`` for a loop level, the steps of that loop are combined
inside the enclosing graph, right after the loop, so the statistic loses
that time axis (see :func:`pool_steps`); a pooled variance (or std) is
combined with its paired mean, found by the rule of
:mod:`popstats._src.export.pairing`. Combining inside the enclosing step is
what makes a nested loop whose inner length varies between outer steps
estimable. The user's graph is not modified.

Stage: export. :func:`export` (and :func:`export_checked`, for calls that
checked their outputs and name themselves in errors); :func:`as_variables`
and :func:`restructure` check and rebuild the ``outputs`` argument.

Members: :obj:`EstimationGraph`, :class:`ExportLevel` (the visitor),
:obj:`Site`, :func:`as_variables`, :func:`export`, :func:`export_checked`,
:func:`export_with`, :func:`restructure`.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import cast

from pytensor.compile.sharedvalue import SharedVariable
from pytensor.graph.basic import Apply, Constant, Variable
from pytensor.graph.traversal import toposort
from pytensor.scan.op import Scan
from pytensor.tensor.variable import TensorVariable

from popstats._src.errors import PopstatsError, describe_value
from popstats._src.export.pairing import Pairs, PairUse, key_of_found
from popstats._src.export.sites import EstimationGraph, Found, Site
from popstats._src.export.time_modes import (
    check_patterns,
    check_time,
    pool_steps,
    resolve_time,
)
from popstats._src.graph.marker import statistic_count, statistic_group, statistic_role
from popstats._src.graph.surgery import ScanEdit
from popstats._src.graph.walk import LoopStep, SiteId, transform

log = logging.getLogger("popstats")

__all__ = [
    "EstimationGraph",
    "ExportLevel",
    "Site",
    "as_variables",
    "export",
    "export_checked",
    "export_with",
    "restructure",
]


class ExportLevel:
    """The export visitor of one graph level: records each statistic found
    and makes the statistics of loops outputs of the rebuilt loops."""

    def __init__(
        self, call: str, time: object, names: Mapping[SiteId, str] | None = None
    ) -> None:
        self.call = call  # the public call, named in errors
        self.time = time
        self.names = names or {}  # statistic names, for time patterns
        self.found: list[Found] = []

    def statistic(self, var: Variable, site: SiteId) -> Variable | None:
        count = statistic_count(var)
        stat = cast(TensorVariable, var)  # statistics mark tensors
        self.found.append(Found(site, stat, stat, count, None, []))
        return None

    def inner_level(self, path: tuple[LoopStep, ...]) -> ExportLevel:
        """The visitor of a loop's body (a subclass adds to it)."""
        return ExportLevel(self.call, self.time, self.names)

    def extend_scan(self, edit: ScanEdit, inner: ExportLevel) -> None:
        """Add to a rebuilt loop before its statistics become outputs."""

    def scan(
        self, node: Apply, inputs: list[Variable], path: tuple[LoopStep, ...]
    ) -> list[Variable]:
        edit = ScanEdit(node, inputs)
        inner = self.inner_level(path)
        inner_outputs = transform(edit.inner_inputs, edit.inner_outputs, inner, path)
        edit.set_inner_outputs(inner_outputs)
        self.extend_scan(edit, inner)
        slots = []
        for found in inner.found:
            row = []
            for var in (found.value, found.count, found.weight):
                row.append(var is not None)
                if var is not None:
                    edit.add_nit_sot(var)
            slots.append(row)
        replaced, added = edit.build()
        stacked = iter(added)
        for found, row in zip(inner.found, slots, strict=True):
            # the loop's outputs for value (always), count and weight (if any)
            has_count, has_weight = row[1], row[2]
            found.value = cast(TensorVariable, next(stacked))
            found.count = cast(TensorVariable, next(stacked)) if has_count else None
            found.weight = cast(TensorVariable, next(stacked)) if has_weight else None
        level = len(path) - 1
        for found in inner.found:
            modes = resolve_time(self.time, found.site.label, found.site.depth,
                                 self.names.get(found.site))
            found.time.insert(0, modes[level])
        pairs = Pairs([key_of_found(f) for f in inner.found])
        pooled = [i for i, f in enumerate(inner.found) if f.time[0] == "pooled"]
        use = _pooling_use(self.call)
        partners = {i: pairs.partner(i, use, time=False) for i in pooled}
        # A pooled variance reads its partner mean still stacked over steps:
        # keep the stacked values of every pooled statistic before pooling.
        originals = {i: (inner.found[i].value, inner.found[i].count,
                         inner.found[i].weight) for i in pooled}
        for i in pooled:
            f, j = inner.found[i], partners[i]
            partner = None
            if j is not None:
                pairs.check_time(i, j, use)
                partner = inner.found[j]
                if j in originals:
                    partner = Found(partner.site, partner.stat, *originals[j],
                                    partner.time)
            pool_steps(f, partner)
        self.found.extend(inner.found)
        return replaced


def _pooling_use(call: str) -> PairUse:
    """Pairing for time pooling: without its mean, a variance's steps could
    only be averaged, which is not the variance of the batch over its steps
    (the documented meaning); with several (a layer applied twice under one
    group) popstats cannot tell which is this application's."""
    return PairUse(
        call, "time",
        "the {role} {name!r} is pooled over time, which combines each step's "
        "{role} with its paired mean (the {role} of the batch over all its steps)",
        "keep it per step (time={{{name!r}: 'step'}})",
        "to be pooled over time",
    )


#: per argument of :func:`as_variables`: what it takes, and how to pass it
#: as a whole and element by element
_VARIABLES = {
    "outputs": ("a PyTensor variable or a non-empty list, tuple or namedtuple of "
                "them", " Pass the symbolic output(s) of the model, e.g. "
                "outputs=y or [y, loss].", "Pass the symbolic outputs of the model "
                "(nested lists are not accepted: flatten them)."),
    "inputs": ("a list of input variables", "", "Pass the symbolic inputs, e.g. "
               "[x, mask]."),
}


def as_variables(value: object, call: str, argument: str = "outputs"
                 ) -> list[Variable]:
    """Check ``value`` is a variable or a sequence of them; return a list.

    The one check of a list of variables: ``argument`` is ``"outputs"`` (the
    outputs of a model: at least one; a list, tuple or namedtuple, see
    :func:`restructure`) or ``"inputs"`` (the free inputs batches give values
    for: none computed, constant or shared, each given once and no two of
    one name, since batches are keyed by name).
    """
    what, fix, element = _VARIABLES[argument]
    where = f"{call}({argument}=...)"
    seq = [value] if isinstance(value, Variable) else value
    if not isinstance(seq, list | tuple) or (argument == "outputs" and not seq):
        hint = (
            " A dict is not accepted: pass list(d.values()) and rebuild the dict "
            "from the result."
            if isinstance(value, Mapping)
            else ""
        )
        raise PopstatsError(
            f"{where}: expected {what}, got {describe_value(value)}.{fix}{hint}"
        )
    for i, var in enumerate(seq):
        if not isinstance(var, Variable):
            raise PopstatsError(
                f"{where}: element {i} is {describe_value(var)}, not a PyTensor "
                f"variable. {element}"
            )
        if argument == "inputs" and (
                var.owner is not None or isinstance(var, Constant | SharedVariable)):
            raise PopstatsError(
                f"{where}: {var} is not a free input of the graph (it is computed, "
                f"constant or shared). Pass the root variables the batches provide "
                f"values for."
            )
    if argument == "inputs":
        _check_distinct(seq, where)
    return list(seq)


def _check_distinct(inputs: Sequence[Variable], where: str) -> None:
    """Refuse an input given twice, or two inputs of one name."""
    twice = sorted({str(v) for i, v in enumerate(inputs)
                    if any(v is w for w in inputs[:i])})
    if twice:
        raise PopstatsError(
            f"{where}: {', '.join(map(repr, twice))} "
            f"{'is' if len(twice) == 1 else 'are'} given more than once. Give "
            f"each input once (a batch has one value per input), e.g. [x] rather "
            f"than [x, x]."
        )
    alike = sorted({v.name for i, v in enumerate(inputs) if v.name is not None
                    and any(v.name == w.name for w in inputs[:i])})
    if alike:
        raise PopstatsError(
            f"{where}: several inputs are named {', '.join(map(repr, alike))}, "
            f"so batches keyed by name cannot tell them apart. Give each input "
            f"its own name, e.g. pt.matrix('x2')."
        )


def restructure(outputs: object, new: Sequence[Variable]) -> object:
    """``new`` in the structure of ``outputs`` (checked by :func:`as_variables`).

    A variable gives a variable; a namedtuple the same namedtuple type; any
    other tuple a tuple; a list a list.
    """
    if isinstance(outputs, Variable):
        return new[0]
    if isinstance(outputs, tuple):
        make = getattr(type(outputs), "_make", None)
        return make(new) if make is not None else tuple(new)
    return list(new)


def _unique(found: Sequence[Found], call: str) -> list[Found]:
    """One entry per statistic; refuse applications that cannot be told apart.

    The same marked computation reached twice with the same inputs (e.g. an
    ``OpFromGraph`` applied twice to one variable) is one statistic: its
    value is the same. Reached with inputs that differ only by unnamed
    variables or large constants, the applications have the same identity
    but compute different values: which is which could not be recognised in
    another process or another graph, so popstats refuses.
    """
    seen: dict[SiteId, Found] = {}
    kept = []
    for f in found:
        first = seen.get(f.site)
        if first is None:
            seen[f.site] = f
            kept.append(f)
        elif first.site.instance != f.site.instance:
            raise PopstatsError(
                f"{call}(outputs=...): statistic {f.site.label!r} (in "
                f"{f.site.where}) is computed at two places that popstats cannot "
                f"tell apart: the same marked computation applied to inputs that "
                f"differ only by unnamed variables or by the values of large "
                f"constants. Its estimate could go to the wrong application. Name "
                f"the inputs and weights they differ by (pt.matrix('x2'), "
                f"pytensor.shared(..., name='W2')), or give each application its "
                f"own label (bn_statistic(..., label='branch2.mean'))."
            )
    return kept


def _name_sites(found: Sequence[Found]) -> list[Site]:
    """Names: the label, or ``label#k`` (graph order) when a label repeats.

    A generated ``label#k`` never takes a name that is another statistic's
    label: ``k`` skips it.
    """
    counts = Counter(f.site.label for f in found)
    taken = set(counts)
    next_index: Counter = Counter()
    sites = []
    for f in found:
        label = f.site.label
        name = label
        if counts[label] > 1:
            while True:
                name = f"{label}#{next_index[label]}"
                next_index[label] += 1
                if name not in taken:
                    break
            taken.add(name)
        sites.append(
            Site(
                name,
                label,
                f.site,
                tuple(f.stat.type.shape),
                f.stat.dtype,
                role=statistic_role(f.stat),
                group=statistic_group(f.stat),
                counted=f.count is not None,
                time=tuple(f.time),
            )
        )
    return sites


def _no_statistics_error(outputs: Sequence[Variable], call: str) -> PopstatsError:
    has_scan = any(isinstance(n.op, Scan) for n in toposort(outputs))
    hint = (
        " The graph has Scan loops: PyTensor >= 3.1 freezes their inner graphs "
        "and drops the tags of inner variables, so `var.tag.bn_statistic = "
        "True` inside a loop is lost there; mark statistics with "
        "popstats.bn_statistic(var, label=...) instead, which survives."
        if has_scan
        else ""
    )
    return PopstatsError(
        f"{call}(outputs=...): no batch statistic found in the graph of "
        f"{describe_value([str(v) for v in outputs])}. Mark each statistic with "
        "popstats.bn_statistic(var, label=...) (or set var.tag.bn_statistic = "
        "True) and build the outputs from the marked variables." + hint
    )


def export(
    outputs: Variable | Sequence[Variable], *, time: object = "step"
) -> EstimationGraph:
    """Build the estimation graph: every statistic as an output.

    Parameters
    ----------
    outputs : Variable or sequence of Variable
        Outputs of the training graph (e.g. the loss or the predictions).
    time : "step", "pooled", tuple or dict, default "step"
        For statistics inside loops: one value per step (``"step"``) or one
        for all steps (``"pooled"``); a tuple gives the mode per loop level,
        outermost first; a dict maps name or label patterns to either.

    Returns
    -------
    EstimationGraph
        ``outputs[i]`` holds ``sites[i]``, with one leading axis per
        enclosing loop that is not pooled (outermost first).

    Raises
    ------
    PopstatsError
        If no statistic is found, or the graph holds the gradient of a loop.

    Examples
    --------
    >>> import pytensor.tensor as pt
    >>> import popstats
    >>> x = pt.matrix("x")
    >>> mean = popstats.bn_statistic(x.mean(axis=0), label="mean")
    >>> eg = popstats.export(x - mean)
    >>> [site.name for site in eg.sites]
    ['mean']
    """
    return export_checked(as_variables(outputs, "export"), "export", time)


def export_checked(
    outputs: Sequence[Variable], call: str, time: object = "step"
) -> EstimationGraph:
    """:func:`export` of checked outputs; errors name the public ``call``.

    A ``time`` dict may name statistics (``"bn.var#1"``): names are known
    only once every statistic is found, so the graph is first exported with
    every loop per step to learn them.
    """
    return export_with(outputs, call, time, ExportLevel)


def export_with(
    outputs: Sequence[Variable], call: str, time: object,
    make_level: Callable[[str, object, Mapping[SiteId, str] | None], ExportLevel],
) -> EstimationGraph:
    """:func:`export_checked` with the outer level's visitor made by
    ``make_level(call, time, names)``: a subclass of the export visitor that
    also changes the graph (the upstream folder's estimation of the inference
    graph, :mod:`popstats._src.upstream.inference_export`)."""
    check_time(time, call)
    names = None
    if isinstance(time, Mapping):
        first = export_checked(outputs, call)
        names = {site.id: site.name for site in first.sites}
        check_patterns(time, first.sites, call, "time")
    level = make_level(call, time, names)
    replaced = transform((), outputs, level)
    if not level.found:
        raise _no_statistics_error(outputs, call)
    found = _unique(level.found, call)
    return EstimationGraph(
        tuple(f.value for f in found),
        tuple(_name_sites(found)),
        tuple(f.count for f in found),
        tuple(f.weight for f in found),
        tuple(replaced),
    )
