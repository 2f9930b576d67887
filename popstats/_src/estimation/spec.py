"""What an estimation state is a state *of*: the spec of its pass.

An :class:`~popstats.EstimationState` carries, beside its accumulators, the
:class:`PassSpec` of the :class:`~popstats.Estimation` that made it: per
statistic a :class:`StatisticSpec` (a site's name, identity, role and
time modes, with its estimator: :meth:`StatisticSpec.of`), and the pass's
``max_steps``. Everything that combines states
(resume, merge, finalize, a checkpoint) compares specs first and refuses,
naming what differs (:func:`spec_differences`), when they are not the same
pass: the arrays of a ``"mean"`` state read as ``"weighted"`` ones, or steps
kept under another ``max_steps``, would give wrong numbers without any error.

Stage: estimation. Members: :class:`PassSpec`, :class:`StatisticSpec`,
:func:`spec_differences`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from popstats._src.estimation.estimators import Estimator
from popstats._src.export.sites import Site
from popstats._src.graph.walk import LoopStep, SiteId

__all__ = ["PassSpec", "StatisticSpec", "spec_differences"]


@dataclass(frozen=True)
class StatisticSpec:
    """What determines the meaning of one statistic's accumulators.

    A :class:`~popstats.Site`'s identity, role and time modes, with the
    estimator of the pass (:meth:`of`); the rest of a site (shape, dtype,
    group, count) does not change what the arrays mean.

    Attributes
    ----------
    name : str
        As in :class:`~popstats.Site`.
    id : SiteId
        Its identity (loops, label, fingerprint), as ``Site.id``.
    role : str or None
        ``"mean"``, ``"var"``, ``"std"`` or None.
    time : tuple of str
        Per enclosing loop, ``"step"`` or ``"pooled"``.
    estimator : Estimator
        How its batches are combined.
    label : str
        ``id.label`` (a property, as are the two below).
    path : tuple of (str, str)
        The enclosing loops, outermost first, as (name, fingerprint).
    fingerprint : str
        Where the statistic is computed (see :doc:`/names`).
    """

    name: str
    id: SiteId
    role: str | None
    time: tuple[str, ...]
    estimator: Estimator

    @classmethod
    def of(cls, site: Site, estimator: Estimator) -> StatisticSpec:
        """The spec of ``site`` estimated by ``estimator``."""
        return cls(site.name, site.id, site.role, site.time, estimator)

    @property
    def label(self) -> str:
        return self.id.label

    @property
    def path(self) -> tuple[tuple[str, str], ...]:
        return tuple((step.name, step.fingerprint) for step in self.id.path)

    @property
    def fingerprint(self) -> str:
        return self.id.fingerprint

    def to_json(self) -> dict[str, Any]:
        """The spec as files write it; a statistics file's entry extends it."""
        e = self.estimator
        estimator: dict[str, Any] = {"name": e.name, "momentum": e.momentum,
                                     "unbiased": e.unbiased}
        if e.debias:  # files without it stay as they were (and read as False)
            estimator["debias"] = True
        return {
            "name": self.name, "label": self.label,
            "path": [list(step) for step in self.path],
            "fingerprint": self.fingerprint, "role": self.role,
            "time": list(self.time),
            "estimator": estimator,
        }

    @classmethod
    def from_json(cls, meta: dict[str, Any]) -> StatisticSpec:
        """The spec written by :meth:`to_json` (``key``, informative, if given)."""
        e = meta["estimator"]
        path = tuple(LoopStep(str(n), str(f)) for n, f in meta["path"])
        return cls(
            str(meta["name"]),
            SiteId(path, str(meta["label"]), str(meta["fingerprint"]),
                   str(meta.get("key", ""))),
            None if meta["role"] is None else str(meta["role"]),
            tuple(str(t) for t in meta["time"]),
            Estimator(str(e["name"]), e["momentum"], unbiased=bool(e["unbiased"]),
                      debias=bool(e.get("debias", False))),
        )


@dataclass(frozen=True)
class PassSpec:
    """The options of an estimation pass that its states depend on.

    Attributes
    ----------
    statistics : tuple of StatisticSpec
        In the order of :attr:`Estimation.sites`.
    max_steps : int or None
        The pass's cap on steps per time axis.
    upstream : str
        ``"batch"`` (the training graph's statistics), or, for a pass of
        ``upstream="population"``, ``"population:<digest>"``: the digest of
        what the pass's graph read, the population values the layers
        upstream of the statistics normalized with included (states of
        passes over other values do not mix).
    """

    statistics: tuple[StatisticSpec, ...]
    max_steps: int | None
    upstream: str = "batch"

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.statistics)

    def to_json(self) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "statistics": [s.to_json() for s in self.statistics],
            "max_steps": self.max_steps}
        if self.upstream != "batch":  # files of batch passes stay as they were
            meta["upstream"] = self.upstream
        return meta

    @classmethod
    def from_json(cls, meta: dict[str, Any]) -> PassSpec:
        cap = meta["max_steps"]
        return cls(tuple(StatisticSpec.from_json(s) for s in meta["statistics"]),
                   None if cap is None else int(cap),
                   str(meta.get("upstream", "batch")))


def _estimator_text(e: Estimator) -> str:
    if e.name != "ema":
        return repr(e.name)
    extra = (", unbiased" if e.unbiased else "") + (", debiased" if e.debias else "")
    return f"'ema' (momentum {e.momentum}{extra})"


def _upstream_text(upstream: str) -> str:
    if upstream == "batch":
        return "batch statistics"
    return f"population values (digest {upstream.partition(':')[2]})"


def spec_differences(have: PassSpec, want: PassSpec, limit: int = 6) -> list[str]:
    """What differs between the spec of a state (``have``) and a pass's.

    Empty when they are the same pass. Each entry is a phrase such as
    ``"'bn.var': estimator 'mean' in the state, 'weighted' here"``.
    """
    out: list[str] = []
    if have.names != want.names:
        missing = [n for n in want.names if n not in have.names]
        extra = [n for n in have.names if n not in want.names]
        if missing:
            out.append(f"statistics {missing} are not in the state")
        if extra:
            out.append(f"the state has statistics {extra} this graph has not")
        if not missing and not extra:
            out.append(f"statistics in another order: {list(have.names)} in the "
                       f"state, {list(want.names)} here")
        return out
    if have.max_steps != want.max_steps:
        out.append(f"max_steps {have.max_steps} in the state, {want.max_steps} here")
    if have.upstream != want.upstream:
        out.append(f"upstream layers normalized with {_upstream_text(have.upstream)} "
                   f"in the state, {_upstream_text(want.upstream)} here")
    for a, b in zip(have.statistics, want.statistics, strict=True):
        if a.id != b.id:
            out.append(f"{a.name!r}: computed differently (another graph, or other "
                       f"loops or inputs)")
        elif a.role != b.role:
            out.append(f"{a.name!r}: role {a.role!r} in the state, {b.role!r} here")
        if a.time != b.time:
            out.append(f"{a.name!r}: time modes {a.time} in the state, {b.time} here")
        if a.estimator != b.estimator:
            out.append(f"{a.name!r}: estimator {_estimator_text(a.estimator)} in "
                       f"the state, {_estimator_text(b.estimator)} here")
    if len(out) > limit:
        out = [*out[:limit], f"and {len(out) - limit} more differences"]
    return out
