"""Tables of the statistics of a graph, and of what a rewrite changed.

Stage: inspection. :func:`describe` gives a :class:`Description`, one
:class:`StatisticRecord` (a table row built on its
:class:`~popstats.Site`) per statistic; :func:`describe_rewrite` a
:class:`RewriteDescription` (population variables read by
:func:`~popstats._src.rewrite.bind.population_copies`; nodes walked by
:func:`~popstats._src.graph.surgery.walk_nodes`). :func:`leftover_statistics`
is shared with
:mod:`popstats._src.inspection.drawing`, :func:`shift_records` with
:mod:`popstats._src.inspection.report`; tables are drawn by
:mod:`popstats._src.inspection.tables`, the precision of estimated
statistics read by :mod:`popstats._src.inspection.precision`.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import overload

from pytensor.graph.basic import Variable
from pytensor.scan.op import Scan

from popstats._src.errors import PopstatsError, describe_value
from popstats._src.estimation.statistics import PopulationStatistics
from popstats._src.export.exporter import Site, as_variables, export_checked
from popstats._src.graph.identity import digest
from popstats._src.graph.marker import BNStat, is_statistic, statistic_label
from popstats._src.graph.surgery import walk_nodes
from popstats._src.independence.mixing import mixing_operations
from popstats._src.inspection.precision import Precision, format_error, precisions
from popstats._src.inspection.tables import escape_text, html_table, text_table
from popstats._src.rewrite.bind import population_copies

__all__ = [
    "Description",
    "RewriteDescription",
    "StatisticRecord",
    "describe",
    "describe_rewrite",
    "shift_records",
]

#: what a record shows of its site, in the order of :meth:`StatisticRecord.to_dict`
FIELDS = ("name", "label", "role", "group", "where", "depth", "time", "shape",
          "dtype", "counted", "fingerprint")
#: the columns of a table (the fingerprint only when a label repeats)
_COLUMNS = tuple(name for name in FIELDS if name != "group")
#: the columns added by estimated statistics (``describe(stats)``, ``stats=``)
PRECISION_COLUMNS = ("estimator", "batches", "rel. SE")


def _of_site(field: str) -> property:
    """A read-only attribute of a record: that of its site."""
    return property(lambda self: getattr(self.site, field), doc=f"``site.{field}``")


@dataclass(frozen=True)
class StatisticRecord:
    """One statistic of a graph, as :func:`describe` lists it: a row of its site.

    Attributes
    ----------
    site : Site
        The statistic, as :func:`~popstats.export` finds it; every attribute
        below reads it.
    name, label, role, group : str or None
        As in :class:`~popstats.Site`.
    where : str
        The chain of Scans holding it by name, e.g. ``"outer/inner"``
        (``"<graph>"`` outside loops).
    depth : int
        Number of enclosing loops.
    time : tuple of str
        Per enclosing loop, ``"step"`` or ``"pooled"``.
    shape : tuple
        Static shape of the statistic (None for unknown lengths).
    dtype : str
        Its dtype.
    counted : bool
        Whether an element count was given.
    fingerprint : str
        The first 8 hex digits of the structural fingerprint of where it is
        computed (loops included): two applications of one layer share
        name stem and label but not this (see :doc:`/names`).
    """

    site: Site
    #: with ``describe(..., shift=...)``: the mean estimation shift of the
    #: statistic's layer (see :func:`~popstats.shift`), else None
    shift: float | None = None
    #: for estimated statistics (``describe(stats)`` or ``stats=``): how
    #: precise the estimate is (estimator, batches, the largest relative
    #: standard error), else None
    precision: Precision | None = None

    name = _of_site("name")
    label = _of_site("label")
    role = _of_site("role")
    group = _of_site("group")
    where = _of_site("where")
    depth = _of_site("depth")
    time = _of_site("time")
    shape = _of_site("shape")
    dtype = _of_site("dtype")
    counted = _of_site("counted")

    @property
    def fingerprint(self) -> str:
        """A short fingerprint of the site: its own and its loops' together."""
        site_id = self.site.id
        return digest(*(step.fingerprint for step in site_id.path),
                      site_id.fingerprint)[:8]

    @property
    def time_axes(self) -> int:
        """Leading time axes of its estimated value (loops not pooled)."""
        return self.site.time_axes

    def to_dict(self) -> dict[str, object]:
        """The record as a dict of :data:`FIELDS` (and ``shift`` when
        measured; ``estimator``, ``n_batches``, ``relative_error`` and
        ``standard_error`` for an estimated statistic)."""
        out = {name: getattr(self, name) for name in FIELDS}
        if self.shift is not None:
            out["shift"] = self.shift
        if self.precision is not None:
            p = self.precision
            out.update(estimator=p.estimator, n_batches=p.n_batches,
                       relative_error=p.relative_error,
                       standard_error=p.standard_error)
        return out

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items())
        return f"StatisticRecord({shown})"


class Description(Sequence[StatisticRecord]):
    """The statistics of a graph: a sequence of :class:`StatisticRecord`.

    ``str()`` gives a text table, ``_repr_html_`` an HTML one (notebooks),
    :meth:`to_dicts` plain dicts for programs.
    """

    def __init__(self, records: Iterable[StatisticRecord]):
        self.records = tuple(records)

    @overload
    def __getitem__(self, index: int | str) -> StatisticRecord: ...
    @overload
    def __getitem__(self, index: slice) -> tuple[StatisticRecord, ...]: ...
    def __getitem__(
        self, index: int | str | slice
    ) -> StatisticRecord | tuple[StatisticRecord, ...]:
        if isinstance(index, str):
            for record in self.records:
                if record.name == index:
                    return record
            from popstats._src.inspection.optional import unknown_label

            raise unknown_label("describe(...)[name]", index,
                                [r.name for r in self.records])
        return self.records[index]

    def __len__(self) -> int:
        return len(self.records)

    def to_dicts(self) -> list[dict[str, object]]:
        """The records as a list of dicts (one per statistic)."""
        return [r.to_dict() for r in self.records]

    def _columns(self) -> tuple[str, ...]:
        """The columns shown: the fingerprint only when a label repeats."""
        labels = [r.label for r in self.records]
        columns = _COLUMNS if len(set(labels)) < len(labels) else _COLUMNS[:-1]
        if any(r.shift is not None for r in self.records):
            columns = (*columns, "shift")
        if any(r.precision is not None for r in self.records):
            columns = (*columns, *PRECISION_COLUMNS)
        return columns

    def _rows(self) -> list[list[object]]:
        def cell(r: StatisticRecord, c: str) -> object:
            if c in PRECISION_COLUMNS:
                p = r.precision
                if p is None:
                    return "-"
                return (p.estimator if c == "estimator" else p.n_batches
                        if c == "batches" else format_error(p.relative_error))
            value = getattr(r, c)
            if c == "shift":
                return "-" if value is None else f"{value:.3g}"
            return value

        return [[cell(r, c) for c in self._columns()] for r in self.records]

    def __str__(self) -> str:
        return text_table(self._columns(), self._rows())

    def __repr__(self) -> str:
        return f"<Description of {len(self)} statistic(s)>\n{self}"

    def _repr_html_(self) -> str:
        return html_table(self._columns(), self._rows())


def describe(outputs: Variable | Sequence[Variable] | PopulationStatistics, *,
             time: object = "step", shift: Mapping | None = None,
             stats: PopulationStatistics | None = None) -> Description:
    """Every batch statistic of a graph, with where it lives (and, for
    estimated statistics, how precise they are).

    Parameters
    ----------
    outputs : Variable, sequence of Variable, or PopulationStatistics
        Outputs of the training graph; or statistics from
        :func:`~popstats.estimate` (or :func:`~popstats.load`), described
        with their precision as ``stats=`` does (no graph needed).
    time : "step", "pooled", tuple or dict, default "step"
        As for :func:`~popstats.export` (sets the ``time`` column); for
        statistics, their own (leave it out).
    shift : Drift, optional
        From :func:`~popstats.shift` (or :func:`~popstats.drift`): adds a
        ``shift`` column, the mean divergence of each statistic's layer
        (``-`` for a statistic the measurement does not hold).
    stats : PopulationStatistics, optional
        Estimates of these outputs' statistics: adds the columns
        ``estimator`` (``ema(0.1, debiased)`` for ``Estimator("ema",
        debias=True)``), ``batches`` and ``rel. SE``: the largest relative
        standard error over the statistic's units and its steps reached by
        at least ``min_batches`` batches (the norm of ``target_error``; 10,
        or every batch of a shorter pass, without it). ``-`` for a
        statistic ``stats`` does not hold, or whose file was saved by a
        popstats without standard errors.

    Returns
    -------
    Description
        One :class:`StatisticRecord` per statistic, in graph order;
        printable as a table.

    Examples
    --------
    >>> import numpy as np, pytensor.tensor as pt, popstats
    >>> x = pt.matrix("x")
    >>> m = popstats.bn_statistic(x.mean(0), "m", role="mean", count=x.shape[0])
    >>> table = popstats.describe(x - m)
    >>> print(table)
    name  label  role  where    depth  time  shape    dtype    counted
    ----  -----  ----  -------  -----  ----  -------  -------  -------
    m     m      mean  <graph>  0      -     (None,)  float64  yes
    >>> table["m"].counted, table.to_dicts()[0]["where"]
    (True, '<graph>')

    With estimates, their precision (``rel. SE``: here the mean's standard
    error against its own size, about ``1 / (3 sqrt(8 * 40))``):

    >>> rng = np.random.default_rng(0)
    >>> stats = popstats.estimate([x], x - m, [{"x": rng.normal(3, 1, (8, 2))}
    ...                                        for _ in range(40)], progress=False)
    >>> row = popstats.describe(stats)["m"]
    >>> row.precision.estimator, row.precision.n_batches
    ('mean', 40)
    >>> 0.01 < row.precision.relative_error < 0.03
    True
    """
    if isinstance(outputs, PopulationStatistics):
        if stats is not None or time != "step":
            raise PopstatsError(
                f"describe(outputs=...): given statistics ({len(outputs)} "
                f"estimated), which carry their own sites and time modes, and "
                f"also {'stats=' if stats is not None else 'time='}. Pass "
                f"describe(stats) alone, or describe(outputs, stats=stats) "
                f"with the graph's outputs."
            )
        sites: Sequence[Site] = [stat.site for stat in outputs.values()]
        stats = outputs
    else:
        outs = as_variables(outputs, "describe")
        sites = export_checked(outs, "describe", time).sites
    measured = _shift_by_name(shift)
    if measured and not any(s.name in measured for s in sites):
        raise PopstatsError(
            f"describe(shift=...): the measurement holds statistics "
            f"{sorted(measured)[:6]}, none of these outputs' "
            f"({[s.name for s in sites][:6]}). Pass popstats.shift(...) of these "
            f"outputs."
        )
    precise = _precision_by_name(stats, sites)
    return Description(StatisticRecord(s, measured.get(s.name), precise.get(s.name))
                       for s in sites)


def _precision_by_name(stats: object, sites: Sequence[Site]) -> dict[str, Precision]:
    """Statistic name to the precision of its estimate in ``stats`` (found
    by identity, or by loops and label when only one matches)."""
    if stats is None:
        return {}
    if not isinstance(stats, PopulationStatistics):
        raise PopstatsError(
            f"describe(stats=...): expected the result of popstats.estimate(...) "
            f"or popstats.load(...), got {describe_value(stats)}."
        )
    found = {site.name: stat for site in sites
             if (stat := stats.lookup(site.id, match="name")) is not None}
    if sites and not found:
        raise PopstatsError(
            f"describe(stats=...): the statistics hold {sorted(stats)[:6]}, none "
            f"of these outputs' ({[s.name for s in sites][:6]}). Pass the "
            f"statistics estimated for this graph."
        )
    by_stat = precisions(stats)
    return {name: by_stat[stat.name] for name, stat in found.items()}


def shift_records(shift: object, where: str) -> list:
    """The records of a :func:`popstats.shift` (or drift) measurement, or a
    PopstatsError naming ``where`` (``"describe(shift=...)"``)."""
    records = list(shift.values()) if isinstance(shift, Mapping) else None
    if records is None or not all(hasattr(r, "names") and hasattr(r, "mean")
                                  for r in records):
        raise PopstatsError(
            f"{where}: expected the result of popstats.shift(...) (or "
            f"popstats.drift(...)), got {describe_value(shift)}."
        )
    return records


def _shift_by_name(shift: object) -> dict[str, float]:
    """Statistic name to its layer's mean shift, from a Drift (or None)."""
    if shift is None:
        return {}
    records = shift_records(shift, "describe(shift=...)")
    return {name: float(r.mean) for r in records for name in r.names}


def leftover_statistics(outputs: Sequence[Variable]) -> list[str]:
    """Marked statistics (op or tag) anywhere in a graph, as ``where: label``."""
    found = []
    for path, node in walk_nodes(outputs):
        for out in node.outputs:
            if isinstance(node.op, BNStat) or is_statistic(out):
                found.append(f"{'/'.join(path) or '<graph>'}: {statistic_label(out)}")
    return found


def _scans(outputs: Sequence[Variable]) -> list[tuple[str, Scan]]:
    return [("/".join((*p, n.op.name or "scan")), n.op)
            for p, n in walk_nodes(outputs) if isinstance(n.op, Scan)]


@dataclass(frozen=True)
class RewriteDescription:
    """What :func:`~popstats.rewrite` changed in a graph.

    Attributes
    ----------
    replaced : dict
        Statistic name to the name of the population variable replacing it
        (None when the statistic was not replaced).
    rebuilt : tuple of str
        Scans (``"outer/inner"``) of the original graph rebuilt by the rewrite.
    kept : tuple of str
        Scans left as they were (they hold no statistic).
    leftover : tuple of str
        Batch statistics still in the rewritten graph, at any depth; empty
        when the rewrite is complete.
    mixing : tuple of str
        Operations of the rewritten graph that still mix the examples of a
        batch (``"where: operation ... the batch axis of input 'x'"``), then
        those the analysis could not follow (``"where: could not follow
        operation (why) on the batch axis ..."``: check them on data with
        :func:`~popstats.check_batch_independence`), as
        :func:`~popstats.rewrite` warns them (see :doc:`/independence`).
    """

    replaced: dict[str, str | None]
    rebuilt: tuple[str, ...]
    kept: tuple[str, ...]
    leftover: tuple[str, ...]
    mixing: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """Every statistic replaced, none left, and nothing mixing examples."""
        return (not self.leftover and None not in self.replaced.values()
                and not self.mixing)

    def __str__(self) -> str:
        rows = [[name, var or "NOT REPLACED"] for name, var in self.replaced.items()]
        lines = [text_table(("statistic", "population variable"), rows)]
        for title, items in (("Scans rebuilt", self.rebuilt),
                             ("Scans kept", self.kept)):
            lines.append(f"{title}: {escape_text(', '.join(items)) or 'none'}")
        if self.leftover:
            lines.append(f"Batch statistics left: "
                         f"{escape_text(', '.join(self.leftover))}")
        elif self.mixing:  # no marked statistic left, yet not independent
            lines.append("No marked batch statistic left, but the graph still "
                         "mixes the examples of a batch (a batch statistic left "
                         "unmarked?), so it is not ready for inference.")
        else:
            lines.append("No batch statistic left.")
        if self.mixing:
            lines.append("Operations still mixing examples:")
            lines += [f"  {escape_text(item)}" for item in self.mixing]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        return "<pre>" + html.escape(str(self)) + "</pre>"


def describe_rewrite(original: Variable | Sequence[Variable],
                     inference: Variable | Sequence[Variable], *,
                     batch_axes: dict | None = None) -> RewriteDescription:
    """Compare a training graph with its rewritten (inference) version.

    Parameters
    ----------
    original : Variable or sequence of Variable
        Outputs of the training graph given to :func:`~popstats.rewrite`.
    inference : Variable or sequence of Variable
        What :func:`~popstats.rewrite` returned.
    batch_axes : dict, optional
        As for :func:`~popstats.rewrite`: input name to its batch axis (None:
        none), where the marked statistics do not tell.

    Returns
    -------
    RewriteDescription
        Which statistics were replaced by which population variables, which
        Scans were rebuilt, the batch statistics left (none if complete) and
        the operations still mixing examples (none if batch-independent).

    Examples
    --------
    >>> import numpy as np, pytensor.tensor as pt, popstats
    >>> x = pt.matrix("x")
    >>> y = x - popstats.bn_statistic(x.mean(axis=0), label="mean")
    >>> y_inf = popstats.rewrite(y, popstats.estimate([x], y, [{"x": np.ones((3, 2))}]))
    >>> change = popstats.describe_rewrite(y, y_inf)
    >>> change.replaced, change.ok
    ({'mean': 'mean'}, True)
    """
    before = as_variables(original, "describe_rewrite")
    after = as_variables(inference, "describe_rewrite")
    sites = export_checked(before, "describe_rewrite").sites
    pop = population_copies(after, "describe_rewrite")
    replaced = {s.name: (pop[s.name][0].name or s.name) if s.name in pop else None
                for s in sites}
    after_ops = {id(op) for _, op in _scans(after)}
    rebuilt: list[str] = []
    kept: list[str] = []
    for where, op in _scans(before):
        (kept if id(op) in after_ops else rebuilt).append(where)
    mixing, _ = mixing_operations(before, after, batch_axes_arg=batch_axes,
                                  call="describe_rewrite")
    return RewriteDescription(replaced, tuple(rebuilt), tuple(kept),
                              tuple(leftover_statistics(after)), tuple(mixing))
