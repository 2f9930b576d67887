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
        The ``upstream_tol`` of the passes (with ``rule="tol"``, the last
        change is at most this).
    rule : {"tol", "se"}
        What stopped the passes: ``"tol"``, the largest relative change
        (``changes``) at most ``tol``; ``"se"``, every value's change at
        most ``se`` of its standard error (``se_changes``).
    se : float or None
        The ``upstream_se`` of the passes (None with ``rule="tol"``).
    se_changes : tuple of float
        Per pass after the first (whatever the rule), the largest change of
        any value from the pass before in units of its standard error (the
        pass's own): ``max |new - old| / standard_error`` over every
        statistic, cell and unit whose standard error is finite; a change
        within ``tol`` of its statistic's largest magnitude (rounding)
        counts as 0. NaN where no value has a finite standard error. Empty
        in a record saved by a popstats without it.
    se_worst : tuple of str
        Per pass after the first, the statistic of that largest change.
    unjudged : tuple of (str, int)
        Per statistic with any, the cells and units of the last pass with
        no finite standard error (reached by fewer than 2 batches, or by
        none): the rule ``"se"`` does not judge them.
    """

    passes: int
    changes: tuple[float, ...]
    worst: tuple[str, ...]
    tol: float
    rule: str = "tol"
    se: float | None = None
    se_changes: tuple[float, ...] = ()
    se_worst: tuple[str, ...] = ()
    unjudged: tuple[tuple[str, int], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"passes": self.passes, "changes": list(self.changes),
                "worst": list(self.worst), "tol": self.tol, "rule": self.rule,
                "se": self.se, "se_changes": list(self.se_changes),
                "se_worst": list(self.se_worst),
                "unjudged": [list(u) for u in self.unjudged]}

    @classmethod
    def from_json(cls, meta: dict[str, Any]) -> FixedPoint:
        """The record of :meth:`to_json` (a record saved before the rule
        ``"se"`` existed has no standard-error fields: rule ``"tol"``)."""
        se = meta.get("se")
        rule = str(meta.get("rule", "tol"))
        if rule not in ("tol", "se"):
            raise ValueError(f"unknown fixed-point rule {rule!r}")
        return cls(int(meta["passes"]), tuple(float(c) for c in meta["changes"]),
                   tuple(str(w) for w in meta["worst"]), float(meta["tol"]), rule,
                   None if se is None else float(se),
                   tuple(float(c) for c in meta.get("se_changes", ())),
                   tuple(str(w) for w in meta.get("se_worst", ())),
                   tuple((str(n), int(c)) for n, c in meta.get("unjudged", ())))

    def __str__(self) -> str:
        if self.rule == "se":
            shown = _shown(self.se_changes, self.se_worst, ".2g")
            return (f"fixed point to {self.se:g} standard error in {self.passes} "
                    f"passes (largest change per pass in standard errors: "
                    f"{shown})")
        return (f"fixed point in {self.passes} passes (largest relative change "
                f"per pass: {_shown(self.changes, self.worst, '.1e')}; tolerance "
                f"{self.tol:g})")


def _shown(changes: tuple[float, ...], worst: tuple[str, ...], form: str) -> str:
    """The changes per pass with their statistics, the middle elided."""
    shown = [f"{c:{form}} ({w})" if c else "0" for c, w in
             zip(changes, worst, strict=True)]
    if len(shown) > 6:
        shown = [*shown[:3], "...", *shown[-3:]]
    return ", ".join(shown)


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
