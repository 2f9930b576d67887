"""``upstream="population"`` as the estimation stage sees it: the record of its passes.

With ``upstream="population"`` each statistic is estimated on the inference
graph: the batch norms upstream of it normalize with population values.
Building that graph is the job of the upstream stage
(:mod:`popstats._src.upstream.inference_export`), and so is the loop of
passes that reaches the fixed point (:mod:`popstats._src.upstream.fixed_point`):
:meth:`~popstats.Estimation.run` hands them to its
:attr:`~popstats.Estimation.driver`, a
:class:`~popstats._src.estimation.pass_object.PassDriver` that
``popstats/__init__.py`` sets; estimation never imports the stage above it.

Stage: estimation. Members: :class:`FixedPoint` (what the passes did,
carried by the statistics they made and saved with them), :data:`NO_DRIVER`
(the driver before it is set), :func:`fix_for` (what to do with a state of
another pass), :func:`one_batch_error`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from popstats._src.errors import PopstatsError

__all__ = ["NO_DRIVER", "FixedPoint", "fix_for", "one_batch_error"]


@dataclass(frozen=True)
class FixedPoint:
    """The passes an ``upstream="population"`` estimation took.

    Attributes
    ----------
    passes : int
        Passes over the batches, the first (in batch mode) included.
    changes : tuple of float
        Per pass after the first, the largest change of any value from the
        pass before, relative to the largest magnitude of its statistic.
    worst : tuple of str
        Per pass after the first, the statistic that changed most.
    tol : float
        The ``upstream_tol`` the passes stopped at (the last change is at
        most this).
    """

    passes: int
    changes: tuple[float, ...]
    worst: tuple[str, ...]
    tol: float

    def to_json(self) -> dict[str, Any]:
        return {"passes": self.passes, "changes": list(self.changes),
                "worst": list(self.worst), "tol": self.tol}

    @classmethod
    def from_json(cls, meta: dict[str, Any]) -> FixedPoint:
        return cls(int(meta["passes"]), tuple(float(c) for c in meta["changes"]),
                   tuple(str(w) for w in meta["worst"]), float(meta["tol"]))

    def __str__(self) -> str:
        shown = [f"{c:.1e} ({w})" if c else "0" for c, w in
                 zip(self.changes, self.worst, strict=True)]
        if len(shown) > 6:
            shown = [*shown[:3], "...", *shown[-3:]]
        steps = ", ".join(shown)
        return (f"fixed point in {self.passes} passes (largest relative change "
                f"per pass: {steps}; tolerance {self.tol:g})")


class _NoDriver:
    """The :attr:`~popstats.Estimation.driver` before ``popstats/__init__.py``
    sets it: refuses to run (see
    :class:`~popstats._src.estimation.pass_object.PassDriver`)."""

    def run(self, estimation: Any, batches: Any, arguments: Any) -> Any:
        raise PopstatsError(
            f"{estimation.call}(upstream='population'): the passes of the fixed "
            f"point are not loaded; `import popstats` loads them."
        )


#: the :attr:`~popstats.Estimation.driver` of an Estimation class nothing
#: has wired yet
NO_DRIVER = _NoDriver()


def fix_for(state: object, default: str) -> str:
    """The fix an error about ``state`` suggests: ``default``, or, for a
    state of a pass of ``upstream="population"``, where such states belong."""
    upstream = getattr(getattr(state, "spec", None), "upstream", "batch")
    if upstream == "batch":
        return default
    return ("This state is from a pass of upstream='population' (it holds the "
            "values of the pass before it upstream): only the Estimation whose "
            "last run made it finalizes or merges it, and each run replaces its "
            "passes. Finalize right after the run, and keep the statistics "
            "(PopulationStatistics.save) rather than the state.")


def one_batch_error(where: str) -> PopstatsError:
    """``Estimation.update`` with ``upstream="population"``: refused."""
    return PopstatsError(
        f"{where}: this Estimation has upstream='population', whose statistics "
        f"are a fixed point over all the batches: one batch cannot be added. "
        f"Call run(batches), or build the Estimation with upstream='batch'."
    )
