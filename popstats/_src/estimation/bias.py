"""The bias and trend warnings of a pass's statistics.

Stage: estimation. :func:`find_warnings` reads, per statistic, its state
and the batch sizes of the pass (:class:`~popstats._src.estimation.state.
BatchSizes`) and returns what makes its estimate doubtful, as
:class:`~popstats._src.estimation.statistics.StatisticWarning` records
(:func:`~popstats._src.estimation.combine.finalize_state` keeps them on
:attr:`~popstats.PopulationStatistics.warnings` and warns them):

- ``"small-batches"`` -- a variance or std averaged over batches without
  Bessel's correction, given a batch of one example (variance 0);
- ``"unequal-batches"`` -- the default estimator on a variance or std, with
  batch sizes unequal enough that ``|mean(1/m) - n / sum m| * value``
  exceeds the standard error (the median over the statistic's units and
  steps): weighing every batch alike moves the result beyond its noise;
- ``"trend"`` -- the ``t`` of the slope of the batch statistics against the
  batch's position (:func:`~popstats._src.estimation.formulas.trend`)
  beyond a Bonferroni bound at :data:`TREND_LEVEL` over the units and steps
  of every statistic of the pass (:func:`trend_tests`), in cells of at
  least :data:`TREND_BATCHES` batches.

The two size warnings go only to a statistic whose elements per batch are
the batch's examples (:mod:`~popstats._src.estimation.examples_count`: its
count is the length of the batch axis, or without a count every sum it reads
reduces exactly that axis; in the outer graph and in loop bodies at any
depth), and a statistic marked without a role is a variance or std when its
graph computes one (:func:`~popstats._src.estimation.examples_count.spread_of`).
A statistic reduced over more than the examples (a convolution's positions,
``count = B*H*W``), pooled over a loop's steps, or one whose count is
anything else (a mask's sum) gets neither, deliberately: a batch of one
image does not give variance 0, and the correlation of positions within an
image makes the ``(m - 1) / m`` rule wrong. When the graph cannot be read:
no size warning (a false alarm is a bug).

Members: :data:`TREND_BATCHES`, :data:`TREND_LEVEL`, :func:`find_warnings`,
:func:`trend_bound`, :func:`trend_tests`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from popstats._src.estimation import formulas as fm
from popstats._src.estimation.state import BatchSizes
from popstats._src.estimation.statistics import Statistic, StatisticWarning

__all__ = ["TREND_BATCHES", "TREND_LEVEL", "find_warnings", "trend_bound",
           "trend_tests"]

#: the family-wise false-alarm rate of the trend warning, per pass
TREND_LEVEL = 0.001

_SPREADS = ("var", "std")
#: the fewest batches of a cell whose trend is tested (fewer say little
#: about a trend, and their slope's t is at the mercy of one batch)
TREND_BATCHES = 10
#: batch values closer than this (relative) are equal: no trend is tested
_ROUNDING = 1e-10


def _spread(stat: Statistic, spread: str | None) -> str | None:
    """The statistic's role, or for one marked without a role the spread its
    graph computes (``spread``: ``"var"``, ``"std"`` or None)."""
    return stat.site.role if stat.site.role is not None else spread


def _as_averaged(stat: Statistic, spread: str | None) -> str | None:
    """The estimator as it treats a variance or std whose batch values it
    averages as they are (each low by ``(m - 1) / m``): ``"mean"``,
    ``"weighted"`` or ``"ema"``; None when it corrects them, or the
    statistic is no spread. A statistic marked without its role is corrected
    by none (``"pooled"`` weighs it by its count, ``"unbiased"`` averages
    it)."""
    if _spread(stat, spread) not in _SPREADS:
        return None
    name = stat.estimator.name
    if stat.site.role is None:
        return {"pooled": "weighted", "unbiased": "mean"}.get(name, name)
    if name in ("pooled", "unbiased") or (name == "ema" and stat.estimator.unbiased):
        return None
    return name


def _averages_batches(stat: Statistic, spread: str | None = None) -> bool:
    """Whether the statistic's estimator averages batch variances as they
    are: a variance or std with ``"mean"``, ``"weighted"`` or ``"ema"``
    without ``unbiased=True`` (see :func:`_as_averaged`)."""
    return _as_averaged(stat, spread) is not None


def _equal_weights(stat: Statistic, spread: str | None = None) -> bool:
    """The default estimator, or the moving average (equal weights per batch,
    whatever its size), on a variance or std without Bessel's correction."""
    return _as_averaged(stat, spread) in ("mean", "ema")


_NOUN = {"var": "variance", "std": "standard deviation"}


def _sizes_text(sizes: BatchSizes) -> str:
    batches = "1 batch" if sizes.n == 1 else f"{sizes.n} batches"
    if sizes.smallest == sizes.largest:
        each = "example" if sizes.smallest == 1 else "examples"
        return f"{batches} of {sizes.smallest} {each}{'' if sizes.n == 1 else ' each'}"
    return (f"{sizes.n} batches of {sizes.smallest} to {sizes.largest} "
            f"examples (mean {sizes.total / sizes.n:.3g})")


def _needs(stat: Statistic, lead: str = "") -> str:
    """What the count-aware estimators need of the statistic: its count, and
    for one marked without a role, its role and paired mean too."""
    if stat.site.role is None:
        return (f"{lead + ' ' if lead else ''}its role, its mean and its count: "
                f"mark the pair with popstats.mark_moments(mean, var, label, "
                f"count=x.shape[0])")
    return f"{lead} the statistic's count" if lead else "give the statistic its count"


def _small(stat: Statistic, sizes: BatchSizes, role: str) -> StatisticWarning:
    # expectations over i.i.d. examples: sigma^2 (1 - mean(1/m)) for the
    # equal-weight average, sigma^2 (1 - 1/sum(m)) for the pooled variance
    kept = 0.0 if sizes.total <= 1 else (
        (1.0 - sizes.inverse / sizes.n) / (1.0 - 1.0 / sizes.total))
    low = 1.0 - (kept if role == "var" else np.sqrt(kept))
    noun = _NOUN[role]
    return StatisticWarning(stat.name, "small-batches", (
        f"statistic {stat.name!r} (in {stat.site.where}): {_sizes_text(sizes)}; "
        f"a batch of one example has variance 0, and estimator "
        f"{stat.estimator.name!r} averages the batches' {noun}s "
        f"as they are, so the estimate is about {100 * low:.0f}% below the "
        f"{noun} of all examples. Use estimator='pooled' (the exact "
        f"moments of all examples; {_needs(stat)}), or batches of more "
        f"examples."))


def _unequal(stat: Statistic, sizes: BatchSizes, role: str) -> StatisticWarning | None:
    se = stat.standard_error
    if se is None or sizes.n < 2:
        return None
    factor = 1.0 if role == "var" else 0.5  # sqrt(1 - d) ~ 1 - d / 2
    shift = abs(sizes.size_bias) * factor * np.abs(stat.value)
    covered = np.broadcast_to(
        (stat.coverage >= 2).reshape(stat.coverage.shape + (1,) * (
            stat.value.ndim - stat.coverage.ndim)), stat.value.shape)
    use = covered & np.isfinite(se)
    if not use.any():
        return None
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(se[use] > 0, shift[use] / np.where(se[use] > 0, se[use], 1),
                         np.where(shift[use] > 0, np.inf, 0.0))
    typical = float(np.median(ratio))
    if not typical > 1.0:
        return None
    return StatisticWarning(stat.name, "unequal-batches", (
        f"statistic {stat.name!r} (in {stat.site.where}): {_sizes_text(sizes)}. "
        f"Estimator {stat.estimator.name!r} weighs every batch alike, and each "
        f"batch variance is low by (m-1)/m, so unequal sizes move the "
        f"estimate by about {100 * abs(sizes.size_bias) * factor:.2g}% "
        f"(|mean(1/m) - n/sum(m)|), {typical:.3g} times its standard error "
        f"(median over its units). Use estimator='pooled' (the exact moments "
        f"of all examples) or 'weighted' (batches weighed by their count); "
        f"{_needs(stat, 'both need')}."))


def trend_bound(n: np.ndarray, tests: int) -> np.ndarray:
    """The two-sided Student t bound (``n - 2`` degrees of freedom, ``n`` the
    batches of each cell) at :data:`TREND_LEVEL` shared by ``tests`` tests
    (Bonferroni); ``inf`` where ``n < 3``."""
    from scipy.special import stdtrit  # type: ignore[import-untyped]  # SciPy comes with PyTensor, without stubs

    n = np.asarray(n, dtype=np.float64)
    dof = np.where(n >= 3, n - 2, 1.0)
    # once per distinct count: a statistic's cells share a few (stdtrit costs
    # about a microsecond a call, and a cell of each unit and step is one)
    counts, index = np.unique(dof, return_inverse=True)
    bound = stdtrit(counts, 1.0 - TREND_LEVEL / (2.0 * max(tests, 1)))[index]
    return np.where(n >= 3, bound.reshape(dof.shape), np.inf)


def _cells(coverage: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Each cell's batch count, broadcast to a value of ``shape``."""
    return np.broadcast_to(coverage.reshape(coverage.shape + (1,) * (
        len(shape) - coverage.ndim)), shape)


def trend_tests(stat: Statistic) -> int:
    """How many slopes the trend test of ``stat`` tests: its units times its
    cells reached by at least :data:`TREND_BATCHES` batches."""
    return int((_cells(stat.coverage, stat.value.shape) >= TREND_BATCHES).sum())


def _trend(stat: Statistic, arrays: dict[str, np.ndarray],
           tests: int) -> StatisticWarning | None:
    coverage = np.asarray(arrays["n"])
    if not (coverage >= TREND_BATCHES).any():
        return None
    t = np.abs(np.asarray(fm.trend(np, arrays), dtype=np.float64))
    depth = coverage.ndim
    cells = _cells(coverage, t.shape)
    # batch values equal to rounding (the same batch again): no slope to test
    spread = np.sqrt(np.asarray(arrays["xx"], dtype=np.float64) / np.maximum(cells, 1))
    level = np.abs(np.asarray(arrays["xm"] if "xm" in arrays else arrays["mean"]))
    t = np.where(spread > _ROUNDING * level, t, 0.0)
    bound = np.where(cells >= TREND_BATCHES, trend_bound(cells, tests), np.inf)
    over = np.nan_to_num(t, nan=0.0) > bound
    if not over.any():
        return None
    worst = np.unravel_index(int(np.argmax(np.where(over, t, -1.0))), t.shape)
    steps = worst[:depth]
    unit = worst[depth:]
    where = (f"unit {unit[0] if len(unit) == 1 else unit}" if unit else "its value")
    if steps:
        where += f", step {steps[0] if len(steps) == 1 else steps}"
    return StatisticWarning(stat.name, "trend", (
        f"statistic {stat.name!r} (in {stat.site.where}): its batch values "
        f"drift along the batches ({int(over.sum())} of "
        f"{int((cells >= TREND_BATCHES).sum())} units and steps with |t| of the slope "
        f"over the batch order beyond {float(bound[worst]):.3g}; {where}: "
        f"t = {float(t[worst]):.3g} over {int(cells[worst])} batches). The "
        f"batches are not alike (data in a fixed order, or data that changes), "
        f"so the estimate depends on which batches were seen and its standard "
        f"error does not hold. Shuffle the data into the batches, or estimate "
        f"over data of one distribution."))


def find_warnings(stat: Statistic, arrays: dict[str, Any],
                  sizes: BatchSizes | None, tests: int,
                  spread: str | None = None) -> list[StatisticWarning]:
    """The warnings of one statistic: its record, its state's arrays, the
    pass's batch sizes (None: not known, or the statistic's elements per
    batch are not the examples), the number of slopes the trend test shares
    its false-alarm rate with (:func:`trend_tests` summed over the pass's
    statistics: one false alarm in about 1/:data:`TREND_LEVEL` passes over
    i.i.d. batches) and, for a statistic marked without a role, the spread
    its graph computes (:func:`~popstats._src.estimation.examples_count.
    spread_of`)."""
    found: list[StatisticWarning | None] = []
    role = str(_spread(stat, spread))
    if sizes is not None and _averages_batches(stat, spread) and sizes.smallest == 1:
        found.append(_small(stat, sizes, role))
    elif sizes is not None and _equal_weights(stat, spread):
        found.append(_unequal(stat, sizes, role))
    found.append(_trend(stat, arrays, tests))
    return [w for w in found if w is not None]
