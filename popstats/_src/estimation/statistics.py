"""The record passed from estimation to rewrite, and its file.

Stage: estimation. :class:`PopulationStatistics` maps names to
:class:`Statistic` records; :func:`save_statistics` and :func:`load` write and
read them (the layout of the file is documented in
:mod:`popstats._src.estimation.persistence`; a statistic's entry extends
the JSON of its :class:`~popstats._src.estimation.spec.StatisticSpec`).
Its ``plot`` and ``report`` methods call views that
:mod:`popstats._src.inspection` registers (:func:`register_view`), so this
module imports nothing above estimation.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, overload

import numpy as np

from popstats._src.errors import PopstatsError
from popstats._src.estimation.estimators import Estimator, relative_error
from popstats._src.estimation.persistence import STATISTICS, read, write
from popstats._src.estimation.spec import StatisticSpec
from popstats._src.estimation.stopping import Stopping
from popstats._src.estimation.upstream import FixedPoint
from popstats._src.export.exporter import Site
from popstats._src.export.pairing import Pairs, key_of_site
from popstats._src.graph.walk import SiteId

__all__ = ["PopulationStatistics", "Statistic", "load", "save_statistics",
           "with_spreads"]

_T = TypeVar("_T")

_MEAN = Estimator("mean")  # frozen, safe to share


@dataclass(frozen=True, eq=False)
class Statistic:
    """The population estimate of one batch statistic.

    Attributes
    ----------
    name, label : str
        As in :class:`~popstats.Site`.
    site : Site
        Where the statistic was found.
    value : numpy.ndarray
        float64; leading axes are time steps (one per enclosing loop whose
        time is not pooled, outermost first).
    coverage : numpy.ndarray
        int64, shape ``value.shape[:depth]``: how many batches reached each
        step (for a statistic outside loops, a 0-d array: the batch count).
    n_batches : int
        Batches that contributed.
    estimator : Estimator
        How the value was estimated.
    max_steps : int or None
        The ``max_steps`` of the estimation pass (None: every step kept).
    upstream : str
        What the layers upstream normalized with while it was estimated:
        ``"batch"`` (their batch statistics), ``"population"`` (their
        population values: the fixed point of ``upstream="population"``) or
        ``"given"`` (population values given to the pass, not its own:
        :func:`~popstats.drift` with ``upstream="population"``).
    standard_error : numpy.ndarray or None
        float64, the shape of :attr:`value`: the standard error of each
        cell's value, per unit, from the spread of the batches' statistics
        (the formula of each estimator is in ``docs/estimators.rst``,
        "Standard errors"). ``inf`` where fewer than 2 batches reached the
        cell (never reached included). It measures the estimate's noise
        across i.i.d. batches, not a bias (the default estimator's
        ``(m - 1) / m`` on a variance, the moving average's start). None for
        a statistic read from a file written before popstats kept standard
        errors, and for running averages read from a model.
    spread : numpy.ndarray or None
        For a statistic of role ``"mean"`` paired with a variance or std
        (the pairing rule of :func:`~popstats.bn_statistic`'s ``group``):
        that spread's population std per cell and unit, the scale of
        :attr:`relative_error`; else None.

    Examples
    --------
    >>> import numpy as np, pytensor.tensor as pt, popstats
    >>> x = pt.matrix("x")
    >>> mu = popstats.bn_statistic(x.mean(0), "mu", role="mean", group="bn")
    >>> var = popstats.bn_statistic(x.var(0), "var", role="var", group="bn")
    >>> y = (x - mu) / pt.sqrt(var + 1e-5)
    >>> rng = np.random.default_rng(0)
    >>> batches = [{"x": rng.normal(3.0, 2.0, (64, 2))} for _ in range(50)]
    >>> stats = popstats.estimate([x], y, batches)
    >>> se = stats["mu"].standard_error      # the mean's: about 2 / sqrt(3200)
    >>> bool(np.all((0.02 < se) & (se < 0.06)))
    True
    >>> rel = stats["mu"].relative_error     # against the spread (2), not the mean
    >>> bool(np.allclose(rel, se / np.sqrt(stats["var"].value)))
    True
    """

    name: str
    label: str
    site: Site
    value: np.ndarray
    coverage: np.ndarray
    n_batches: int
    estimator: Estimator = _MEAN
    max_steps: int | None = None
    upstream: str = "batch"
    standard_error: np.ndarray | None = None
    spread: np.ndarray | None = None

    @property
    def relative_error(self) -> np.ndarray | None:
        """The standard error relative to the value's scale, per cell and unit.

        ``standard_error / |value|``, except for a mean with a
        :attr:`spread`: ``standard_error / spread`` (a mean near 0 has no
        relative precision of its own; against the spread of what it
        averages it has). 0 where the standard error is 0, ``inf`` where the
        scale is 0 and it is not, or where fewer than 2 batches reached.
        None when :attr:`standard_error` is.

        Examples
        --------
        >>> import numpy as np, pytensor.tensor as pt, popstats
        >>> x = pt.vector("x")
        >>> v = popstats.bn_statistic(x.var(), "v", role="var")
        >>> batches = [{"x": np.array([0.0, 2.0 + b % 2])} for b in range(10)]
        >>> stat = popstats.estimate([x], x / v, batches)["v"]
        >>> float(stat.value), round(float(stat.standard_error), 4)
        (1.625, 0.2083)
        >>> round(float(stat.relative_error), 4)     # 0.2083 / 1.625
        0.1282
        """
        if self.standard_error is None:
            return None
        return relative_error(self.value, self.standard_error, self.site.role,
                              self.spread)

    @property
    def depth(self) -> int:
        """Number of time axes of :attr:`value`."""
        return self.site.time_axes

    @property
    def uncovered_steps(self) -> int:
        """Cells of the per-step table that no batch reached (filled)."""
        return int((self.coverage == 0).sum())

    @property
    def thin_steps(self) -> int:
        """Cells reached by fewer than 10% of the batches (but some)."""
        reached = self.coverage[self.coverage > 0]
        return int((reached < 0.1 * self.n_batches).sum())

    @property
    def steps(self) -> tuple[int, ...]:
        """Length of each time axis (the longest run seen per loop)."""
        return tuple(self.coverage.shape)


def with_spreads(stats: tuple[Statistic, ...]) -> tuple[Statistic, ...]:
    """``stats`` with each paired mean's :attr:`Statistic.spread` set: the
    population std of its variance or std (by the pairing rule of
    :mod:`popstats._src.export.pairing`; the first spread of a mean, of the
    mean's shape)."""
    pairs = Pairs([key_of_site(stat.site) for stat in stats])
    spreads: dict[int, np.ndarray] = {}
    for j, stat in enumerate(stats):
        i = pairs.pair(j)
        if i is None or i in spreads or stats[i].value.shape != stat.value.shape:
            continue
        var = stat.site.role == "var"
        spreads[i] = np.sqrt(np.maximum(stat.value, 0.0)) if var else np.abs(
            stat.value)
    return tuple(dataclasses.replace(stat, spread=spreads[i]) if i in spreads
                 else stat for i, stat in enumerate(stats))


#: Views of :class:`PopulationStatistics` that a higher folder provides
#: (inspection registers ``plot`` and ``report`` when it is imported, which
#: ``import popstats`` does), so that this record never imports inspection.
VIEWS: dict[str, Callable[..., Any]] = {}


def register_view(name: str, function: Callable[..., Any]) -> None:
    """Make ``function(stats, ...)`` the implementation of ``stats.<name>(...)``."""
    VIEWS[name] = function


def _view(name: str) -> Callable[..., Any]:
    try:
        return VIEWS[name]
    except KeyError:  # pragma: no cover - popstats/__init__ imports inspection
        raise PopstatsError(
            f"PopulationStatistics.{name}: the inspection layer is not loaded; "
            "`import popstats` loads it."
        ) from None


class PopulationStatistics(Mapping[str, Statistic]):
    """Population statistics by name; the estimator's result.

    A read-only mapping from statistic name to :class:`Statistic`, in the
    order the statistics were found. Pass it to :func:`~popstats.rewrite`
    (as many times as needed, for any graph holding these statistics).
    """

    def __init__(self, statistics: tuple[Statistic, ...],
                 fixed_point: FixedPoint | None = None,
                 stopping: Stopping | None = None):
        #: with ``upstream="population"``: the passes that made these values
        self.fixed_point = fixed_point
        #: with ``target_error``: why and when the pass ended (a
        #: :class:`~popstats._src.estimation.stopping.Stopping`; None without
        #: a target, and for a file saved by an older popstats)
        self.stopping = stopping
        self._by_name = {s.name: s for s in statistics}
        self._by_id: dict[SiteId, Statistic] = {s.site.id: s for s in statistics}
        self._by_base: dict[tuple, list[Statistic]] = {}
        for s in statistics:
            self._by_base.setdefault((s.site.id.chain, s.label), []).append(s)

    def __getitem__(self, name: str) -> Statistic:
        try:
            return self._by_name[name]
        except (KeyError, TypeError):
            close = difflib.get_close_matches(str(name), list(self._by_name), n=3,
                                              cutoff=0.5)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise PopstatsError(
                f"PopulationStatistics[{name!r}]: no such statistic.{hint} Known: "
                f"{sorted(self._by_name)}."
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def with_fixed_point(self, record: FixedPoint | None) -> PopulationStatistics:
        """These values, marked as made by the passes of ``record`` (the
        fixed point of ``upstream="population"``)."""
        return PopulationStatistics(
            tuple(dataclasses.replace(s, upstream="population") for s in self.values()),
            record, self.stopping,
        )

    @overload
    def get(self, name: str, /) -> Statistic | None: ...
    @overload
    def get(self, name: str, default: Statistic | _T, /) -> Statistic | _T: ...
    def get(self, name: str, default: object = None) -> object:
        return self._by_name.get(name, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_name)

    def __len__(self) -> int:
        return len(self._by_name)

    def lookup(self, site: SiteId, match: str = "structure") -> Statistic | None:
        """The statistic estimated for ``site``, or None.

        ``match="structure"``: the same identity (loops, label and the
        structural fingerprint of where it is computed; see
        :doc:`/names`). ``match="name"`` also accepts the only statistic
        with the same loops and label when the fingerprints differ.
        """
        found = self._by_id.get(site)
        if found is None and match == "name":
            candidates = self.named_like(site)
            if len(candidates) == 1:
                found = candidates[0]
        return found

    def named_like(self, site: SiteId) -> list[Statistic]:
        """The statistics with the loops and label of ``site``."""
        return list(self._by_base.get((site.chain, site.label), ()))

    def save(self, path: str | os.PathLike) -> None:
        """Save to a ``.npz`` file (no pickle); see :func:`popstats.load`.

        The file is written to a temporary name and renamed, so an
        interrupted save leaves any earlier file intact.
        """
        save_statistics(self, path)

    def plot(self, name: str, *, units: int = 8):
        """A matplotlib Figure of one statistic (``pip install 'popstats[plot]'``).

        See :func:`popstats._src.inspection.plots.plot_statistic`.
        """
        return _view("plot")(self, name, units=units)

    def report(self, path: str | os.PathLike, *, title: str = "popstats report",
               plots: bool = True, shift: Any = None) -> str:
        """Write a self-contained HTML report; return its path.

        See :func:`popstats._src.inspection.report.write_report` (``shift``:
        a :func:`popstats.shift` measurement to show).
        """
        return _view("report")(self, path, title=title, plots=plots, shift=shift)

    def __repr__(self) -> str:
        rows = []
        for s in self._by_name.values():
            row = (
                f"  {s.name!r}: shape {s.value.shape[s.depth:]}, steps {s.steps}, "
                f"in {s.site.where}, {s.n_batches} batches"
            )
            if s.estimator.name != "mean":
                row += f", {s.estimator.name}"
            if s.upstream != "batch":
                row += f", upstream {s.upstream}"
            if s.uncovered_steps:
                row += f", {s.uncovered_steps} steps never reached"
            rows.append(row)
        if self.fixed_point is not None:
            rows.append(f"  {self.fixed_point}")
        if self.stopping is not None:
            rows.append(f"  {self.stopping}")
        return "PopulationStatistics(\n" + "\n".join(rows) + "\n)"


def _site_meta(
    site: Site, estimator: Estimator, n_batches: int, max_steps: int | None,
    upstream: str = "batch",
) -> dict[str, Any]:
    """A statistic's entry: the spec of its accumulators, the rest of its
    site, and what the pass gave."""
    return {
        "upstream": upstream,
        **StatisticSpec.of(site, estimator).to_json(),
        "key": site.id.key,
        "shape": list(site.shape),
        "dtype": site.dtype,
        "group": site.group,
        "counted": site.counted,
        "max_steps": max_steps,
        "n_batches": n_batches,
    }


def _site_from_meta(
    meta: dict[str, Any],
) -> tuple[Site, Estimator, int, int | None]:
    spec = StatisticSpec.from_json(meta)  # the identity and the estimator
    site = Site(  # the rest as written: a name that is not a str is refused
        meta["name"],
        meta["label"],
        spec.id,
        tuple(None if s is None else int(s) for s in meta["shape"]),
        meta["dtype"],
        role=meta["role"],
        group=meta["group"],
        counted=bool(meta["counted"]),
        time=tuple(meta["time"]),
    )
    cap = meta["max_steps"]
    return (site, spec.estimator, int(meta["n_batches"]),
            None if cap is None else int(cap))


def save_statistics(
    stats: PopulationStatistics,
    path: str | os.PathLike,
    where: str = "PopulationStatistics.save(path=...)",
) -> None:
    """Write ``stats`` to ``path`` (format above)."""
    metas, arrays = [], {}
    for i, stat in enumerate(stats.values()):
        metas.append(_site_meta(stat.site, stat.estimator, stat.n_batches,
                                stat.max_steps, stat.upstream))
        arrays[f"value/{i}"] = np.asarray(stat.value, dtype=np.float64)
        arrays[f"coverage/{i}"] = np.asarray(stat.coverage, dtype=np.int64)
        if stat.standard_error is not None:
            arrays[f"standard_error/{i}"] = np.asarray(stat.standard_error,
                                                       dtype=np.float64)
    meta: dict[str, Any] = {"statistics": metas}
    if stats.fixed_point is not None:
        meta["fixed_point"] = stats.fixed_point.to_json()
    if stats.stopping is not None:
        meta["stopping"] = stats.stopping.to_json()
    write(path, STATISTICS, meta, arrays, where)


def _check_loaded(site: Site, value: np.ndarray) -> None:
    """A loaded value is finite and of the shape its record gives (where the
    record knows it): a file edited or damaged since it was saved is not."""
    own = value.shape[site.time_axes:]
    if len(own) != len(site.shape) or any(
            s is not None and s != v for s, v in zip(site.shape, own, strict=True)):
        raise ValueError(
            f"statistic {site.name!r} has a value of shape {own}, but was saved "
            f"with shape {tuple(site.shape)}")
    bad = ~np.isfinite(value)
    if bad.any():
        raise ValueError(
            f"statistic {site.name!r} holds NaN or infinity ({int(bad.sum())} of "
            f"{value.size} values); a population value is finite")


def _check_error(site: Site, value: np.ndarray, error: np.ndarray) -> np.ndarray:
    """A loaded standard error: the value's shape, no NaN, none negative
    (``inf`` is one: a cell fewer than 2 batches reached)."""
    if error.shape != value.shape:
        raise ValueError(
            f"statistic {site.name!r} has a standard error of shape "
            f"{error.shape} for a value of shape {value.shape}")
    if np.isnan(error).any() or (error < 0).any():
        raise ValueError(
            f"statistic {site.name!r} has a standard error holding NaN or a "
            f"negative number; a standard error is 0 or more (inf: unknown)")
    return error


def _check_groups(stats: list[Statistic]) -> None:
    """The moments of one normalization (a group) have one shape: a file in
    which one was replaced by a value of another length is corrupted."""
    shapes: dict[tuple, tuple[str, tuple]] = {}
    for stat in stats:
        if stat.site.group is None or stat.site.role not in ("mean", "var", "std"):
            continue
        key = (stat.site.id.path, stat.site.group)
        own = stat.value.shape[stat.depth:]
        first = shapes.setdefault(key, (stat.name, own))
        if first[1] != own:
            raise ValueError(
                f"statistic {stat.name!r} has shape {own} but {first[0]!r} of "
                f"its group {stat.site.group!r} has {first[1]}")


def load(path: str | os.PathLike) -> PopulationStatistics:
    """Load population statistics saved by :meth:`PopulationStatistics.save`.

    Examples
    --------
    >>> import os, tempfile, numpy as np, pytensor.tensor as pt, popstats
    >>> x = pt.matrix("x")
    >>> y = x - popstats.bn_statistic(x.mean(axis=0), label="mean")
    >>> stats = popstats.estimate([x], y, [{"x": np.ones((3, 2))}])
    >>> path = os.path.join(tempfile.mkdtemp(), "stats.npz")
    >>> stats.save(path)
    >>> popstats.load(path)["mean"].value
    array([1., 1.])
    """
    meta, archive = read(path, STATISTICS, "load")
    stats = []
    try:
        for i, entry in enumerate(meta["statistics"]):
            site, estimator, n_batches, max_steps = _site_from_meta(entry)
            value = np.array(archive[f"value/{i}"], dtype=np.float64)
            coverage = np.array(archive[f"coverage/{i}"], dtype=np.int64)
            if coverage.shape != value.shape[: site.time_axes]:
                raise ValueError(f"coverage of {site.name!r} does not fit its value")
            _check_loaded(site, value)
            upstream = str(entry.get("upstream", "batch"))  # older files: batch
            if upstream not in ("batch", "population", "given"):
                raise ValueError(f"unknown upstream {upstream!r}")
            error = archive.get(f"standard_error/{i}")  # older files: none
            if error is not None:
                error = _check_error(site, value, np.array(error, dtype=np.float64))
            stats.append(
                Statistic(site.name, site.label, site, value, coverage, n_batches,
                          estimator, max_steps, upstream, error)
            )
        _check_groups(stats)
        record = meta.get("fixed_point")
        stopping = meta.get("stopping")  # older files: none
        # names and identities index the result: they must be hashable
        return PopulationStatistics(
            with_spreads(tuple(stats)),
            None if record is None else FixedPoint.from_json(record),
            None if stopping is None else Stopping.from_json(stopping))
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        raise PopstatsError(
            f"load(path=...): {os.fspath(path)!r} is corrupted ({type(exc).__name__}: "
            f"{exc}). Save it again."
        ) from None
