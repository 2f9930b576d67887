"""Pairing statistics for the estimators that need a partner or a count.

``"pooled"`` combines a variance (or std) with its paired mean, the
statistic of the same ``group`` with ``role="mean"`` in the same loop;
estimators that weigh or scale by the number of elements need each
statistic's ``count``. Both are checked when the pass is built.
"""

from __future__ import annotations

from collections.abc import Sequence

from popstats._src.errors import PopstatsError
from popstats._src.estimation.estimators import Estimator, uses_count
from popstats._src.export.exporter import Site

__all__ = ["check_counts", "find_partners", "paired_means"]


def find_partners(sites: Sequence[Site], estimators: Sequence[Estimator],
                  call: str) -> tuple[int | None, ...]:
    """Per statistic, the index of the mean paired with it for ``"pooled"``."""
    return tuple(_partner(sites, estimators, i, call) for i in range(len(sites)))


def paired_means(sites: Sequence[Site], i: int) -> list[int]:
    """The statistics that may be the mean of ``sites[i]``: role ``"mean"``,
    the same ``group`` (not None), in the same loop (one is a pair)."""
    site = sites[i]
    return [
        j
        for j, other in enumerate(sites)
        if other.role == "mean"
        and site.group is not None
        and other.group == site.group
        and other.id.path == site.id.path
    ]


def _partner(sites, estimators, i: int, call: str) -> int | None:
    site, estimator = sites[i], estimators[i]
    if estimator.name != "pooled":
        return None
    if site.role not in ("mean", "var", "std"):
        raise PopstatsError(
            f"{call}(estimator=...): 'pooled' needs to know what "
            f"statistic {site.name!r} is, but it has no role. Mark it with "
            f"bn_statistic(..., role='mean'|'var'|'std', group=...), or "
            f"choose another estimator for it, e.g. "
            f"estimator={{{site.label!r}: 'mean', '*': 'pooled'}}."
        )
    if site.role == "mean":
        return None
    partners = paired_means(sites, i)
    where = "loop" if site.id.path else "graph (outside loops)"
    if not partners:
        raise PopstatsError(
            f"{call}(estimator=...): 'pooled' combines the {site.role} "
            f"{site.name!r} with its paired mean, but no statistic with "
            f"role='mean' and group={site.group!r} is in the same {where}. Give "
            f"the mean and the {site.role} the same group (bn_statistic(..., "
            f"group='layer1')), or choose another estimator for {site.name!r}."
        )
    if len(partners) > 1:
        raise PopstatsError(
            f"{call}(estimator=...): 'pooled' combines the {site.role} "
            f"{site.name!r} with its paired mean, but {len(partners)} "
            f"statistics with role='mean' share group={site.group!r} in the "
            f"same {where} (a layer applied {len(partners)} times under one "
            f"group), so which is its own is unknown. Give each application its "
            f"own group (popstats.nn.batch_norm does), or choose another "
            f"estimator for {site.name!r}."
        )
    if sites[partners[0]].time != site.time:
        raise PopstatsError(
            f"{call}(time=...): {site.name!r} and its mean "
            f"{sites[partners[0]].name!r} must use the same time modes "
            f"for 'pooled'; got {site.time} and {sites[partners[0]].time}."
        )
    return partners[0]


def check_counts(sites: Sequence[Site], estimators: Sequence[Estimator],
                 call: str) -> None:
    """Raise for a statistic whose estimator needs a count it has not."""
    for site, estimator in zip(sites, estimators, strict=True):
        if uses_count(estimator, site.role) and not site.counted:
            raise PopstatsError(
                f"{call}(estimator=...): {estimator.name!r} needs the "
                f"number of elements behind statistic {site.name!r}, which "
                f"has none. Pass count=... to bn_statistic (e.g. "
                f"count=x.shape[0]), or choose another estimator for it."
            )
