"""What the estimators need besides a statistic: its paired mean, its count.

Stage: estimation. :func:`find_partners` gives ``"pooled"`` each variance's
(or std's) paired mean, by the one pairing rule of
:mod:`popstats._src.export.pairing` (same ``group``, ``role="mean"``, same
loop, same time modes); :func:`check_counts` refuses an estimator that
weighs or scales by the number of elements on a statistic without a
``count``. Both run when the pass is built.
"""

from __future__ import annotations

from collections.abc import Sequence

from popstats._src.errors import PopstatsError
from popstats._src.estimation.estimators import Estimator, uses_count
from popstats._src.export.pairing import Pairs, PairUse, key_of_site
from popstats._src.export.sites import Site

__all__ = ["check_counts", "find_partners"]


def find_partners(sites: Sequence[Site], estimators: Sequence[Estimator],
                  call: str) -> tuple[int | None, ...]:
    """Per statistic, the index of the mean paired with it for ``"pooled"``
    (by the rule of :mod:`popstats._src.export.pairing`), else None."""
    pairs = Pairs([key_of_site(site) for site in sites])
    use = PairUse(
        call, "estimator", "'pooled' combines the {role} {name!r} with its paired mean",
        "choose another estimator for {name!r}", "for the 'pooled' estimator",
    )
    return tuple(_partner(pairs, sites[i], estimators[i], i, use)
                 for i in range(len(sites)))


def _partner(pairs: Pairs, site: Site, estimator: Estimator, i: int,
             use: PairUse) -> int | None:
    if estimator.name != "pooled":
        return None
    if site.role not in ("mean", "var", "std"):
        raise PopstatsError(
            f"{use.call}(estimator=...): 'pooled' needs to know what "
            f"statistic {site.name!r} is, but it has no role. Mark it with "
            f"bn_statistic(..., role='mean'|'var'|'std', group=...), or "
            f"choose another estimator for it, e.g. "
            f"estimator={{{site.label!r}: 'mean', '*': 'pooled'}}."
        )
    return pairs.partner(i, use)


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
