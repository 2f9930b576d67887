"""The per-batch checks of an estimation pass, written once.

Every accumulation engine checks a batch's statistics the same way before
adding them: on the host with NumPy
(:mod:`~popstats._src.estimation.accumulate_host`), inside the compiled
function with PyTensor (:mod:`~popstats._src.estimation.accumulate_graph`)
and in the jitted update with ``jax.numpy``
(:mod:`~popstats._src.estimation.accumulate_device`): each calls
:func:`reached_cells` and :func:`check_cells` with its array namespace
``xp``, on the batch's arrays capped at ``max_steps``. The host raises the
message of the first check that failed (:func:`raise_failed`); the graph and
the device only compute :func:`passed` and, when a batch fails, run it
through the host's checks for the message
(:func:`~popstats._src.estimation.passes.explain`), so the errors read the
same whatever the engine.

Stage: estimation. Members: :class:`BatchChecks`, :func:`reached_cells`,
:func:`check_cells`, :func:`passed`, :func:`raise_failed`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import pytensor.tensor as pt

from popstats._src.errors import PopstatsError
from popstats._src.estimation import estimators as est
from popstats._src.estimation import formulas as fm
from popstats._src.export.sites import Site
from popstats._src.export.time_modes import align_cells
from popstats._src.graph.alloc import alloc

__all__ = ["BatchChecks", "check_cells", "passed", "raise_failed", "reached_cells"]


class BatchChecks(NamedTuple):
    """One statistic's checks of one batch (booleans of ``xp``).

    Attributes
    ----------
    counts
        Every count is finite and not negative (True without a count).
    finite
        Every value of a reached cell is finite.
    enough
        For an estimator with Bessel's correction, every reached cell
        counts more than one element (True otherwise).
    """

    counts: Any
    finite: Any
    enough: Any


def reached_cells(xp: Any, steps: Any, count: Any, weight: Any) -> Any:
    """The cells (time steps) a batch reached: a count above 0 and a weight
    above 0 where given (``steps``: the batch's cells, capped)."""
    # PyTensor's: not pt.ones, which folds the sizes through the graph above
    reached = (alloc(np.array(True), *steps) if xp is pt
               else xp.ones(steps, dtype=bool))
    if count is not None:
        reached = reached & (count > 0)
    if weight is not None:
        reached = reached & (weight > 0)
    return reached


def check_cells(xp: Any, value: Any, count: Any, reached: Any,
                estimator: est.Estimator, role: str | None) -> BatchChecks:
    """The checks of one statistic's batch arrays (cells first)."""
    finite = xp.all(xp.isfinite(value) | ~align_cells(reached, value))
    counts: Any = True
    enough: Any = True
    if count is not None:
        counts = xp.all(xp.isfinite(count) & (count >= 0))
        if est.bessel_corrected(estimator, role):
            enough = fm.bessel_counts_ok(xp, count, reached)
    return BatchChecks(counts, finite, enough)


def passed(checks: BatchChecks) -> Any:
    """Whether every check passed (a boolean of the checks' namespace)."""
    ok = checks.finite
    for check in (checks.counts, checks.enough):
        if check is not True:  # PyTensor takes no Python bool as an operand
            ok = ok & check
    return ok


def raise_failed(checks: BatchChecks, call: str, site: Site,
                 estimator: est.Estimator, index: int, count: Any) -> None:
    """Raise the error of the first failed check of batch ``index`` (NumPy
    checks; ``count``: the batch's counts of the statistic, or None)."""
    if not checks.counts:
        raise PopstatsError(
            f"{call}(batches=...): the count of statistic {site.name!r} "
            f"is {count.min():g} in batch {index}; counts are numbers of "
            f"elements and must be finite and not negative. Check the count "
            f"given to bn_statistic."
        )
    if not checks.finite:
        raise PopstatsError(
            f"{call}(batches=...): statistic {site.name!r} (in "
            f"{site.where}) is not finite in batch {index}. Check that batch "
            f"for NaN/inf inputs or empty reductions (a mean over zero "
            f"elements; give bn_statistic a count, e.g. the mask's sum, so "
            f"that steps with no element count as not reached)."
        )
    if not checks.enough:
        raise PopstatsError(
            f"{call}(batches=...): {estimator.name!r} (unbiased) scales "
            f"{site.name!r} by "
            f"m/(m-1), but its count is {count[count > 0].min():g} in batch "
            f"{index}. Use batches of at least 2 elements, or another "
            f"estimator."
        )
