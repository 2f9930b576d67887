"""The pairing rule: which mean a variance (or std) belongs to.

Stage: export. A variance or std is paired with the statistic of role
``"mean"`` of the same ``group`` (not None) in the same loop, with the same
time modes. Three stages read pairs: the exporter pools a variance over time
with its mean (:mod:`popstats._src.export.exporter`), the ``"pooled"``
estimator combines them across batches
(:mod:`popstats._src.estimation.partners`), and drift compares a pair as one
distribution (:mod:`popstats._src.drift.comparison`). They all ask this module.

- :class:`PairKey` -- what the rule reads of one statistic; built from a
  finished :class:`~popstats._src.export.sites.Site` by :func:`key_of_site`
  or from the exporter's in-progress
  :class:`~popstats._src.export.sites.Found` by :func:`key_of_found`;
- :class:`PairUse` -- who asks, for what: the public call and argument that
  errors name, and the fix other than marking the mean;
- :class:`Pairs` -- the rule over the statistics of one graph level:
  :meth:`Pairs.means` (the candidates), :meth:`Pairs.pair` (the mean, or
  None, without errors: drift), :meth:`Pairs.partner` and
  :meth:`Pairs.check_time` (the mean, or a PopstatsError that names the
  call, the argument, what was found and the fix).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from popstats._src.errors import PopstatsError
from popstats._src.export.sites import Found, Site
from popstats._src.graph.marker import statistic_group, statistic_role
from popstats._src.graph.walk import SiteId

__all__ = ["PairKey", "PairUse", "Pairs", "key_of_found", "key_of_site"]

#: the roles that pair with a mean
SPREADS = ("var", "std")


@dataclass(frozen=True)
class PairKey:
    """What the pairing rule reads of one statistic.

    Attributes
    ----------
    site : SiteId
        Its identity; ``site.path`` is its loop. One computation reached
        twice (same id) is one mean.
    name : str
        How errors name it (the label while exporting, the name after).
    role, group : str or None
        As given to :func:`~popstats.bn_statistic`.
    time : tuple of str
        Its time modes (while exporting: from the level being built inwards).
    """

    site: SiteId
    name: str
    role: str | None
    group: str | None
    time: tuple[str, ...]


def key_of_site(site: Site) -> PairKey:
    """The key of a finished site (estimation, drift)."""
    return PairKey(site.id, site.name, site.role, site.group, site.time)


def key_of_found(found: Found) -> PairKey:
    """The key of a statistic the exporter is building (names are not known
    yet: errors give the label). An empty group set by tag is no group."""
    return PairKey(found.site, found.site.label, statistic_role(found.stat),
                   statistic_group(found.stat) or None, tuple(found.time))


@dataclass(frozen=True)
class PairUse:
    """Who asks for a statistic's mean, and what they do with it.

    Attributes
    ----------
    call, argument : str
        The public call and the argument at fault when no single mean is
        found, e.g. ``("estimate", "estimator")``; a time-mode mismatch is
        always ``time=``.
    purpose : str
        What needs the mean, a clause formatted with the key's ``role`` and
        ``name``, e.g. ``"'pooled' combines the {role} {name!r} with its
        paired mean"``.
    otherwise : str
        The fix other than pairing, formatted the same way, e.g. ``"choose
        another estimator for {name!r}"``.
    needs_time : str
        Why the time modes must agree, e.g. ``"to be pooled over time"``.
    """

    call: str
    argument: str
    purpose: str
    otherwise: str
    needs_time: str

    def text(self, template: str, key: PairKey) -> str:
        """``template`` (:attr:`purpose` or :attr:`otherwise`) for ``key``."""
        return template.format(role=key.role, name=key.name)


class Pairs:
    """The pairing rule over the statistics of one graph (or graph level).

    Parameters
    ----------
    keys : sequence of PairKey
        Every statistic that may be a mean, in graph order; indices below
        are positions in it.

    Examples
    --------
    >>> def key(label, role, group, time=()):
    ...     return PairKey(SiteId((), label), label, role, group, time)
    >>> pairs = Pairs([key("m", "mean", "bn"), key("v", "var", "bn"),
    ...                key("w", "var", None)])
    >>> pairs.pair(1), pairs.pair(2)
    (0, None)
    >>> use = PairUse("estimate", "estimator", "'pooled' combines the {role} "
    ...               "{name!r} with its paired mean",
    ...               "choose another estimator for {name!r}", "for 'pooled'")
    >>> try:
    ...     pairs.partner(2, use)
    ... except PopstatsError as error:
    ...     print(str(error)[:75])
    estimate(estimator=...): 'pooled' combines the var 'w' with its paired mean
    """

    def __init__(self, keys: Sequence[PairKey]) -> None:
        self.keys = tuple(keys)
        self._means: dict[tuple, dict[SiteId, int]] = {}
        for j, key in enumerate(self.keys):
            if key.role == "mean" and key.group is not None:
                found = self._means.setdefault((key.site.path, key.group), {})
                found.setdefault(key.site, j)  # the first of one computation

    def means(self, i: int) -> list[int]:
        """The statistics that may be the mean of ``keys[i]``: role
        ``"mean"``, its group (not None), its loop; one is a pair."""
        key = self.keys[i]
        if key.group is None:
            return []
        return list(self._means.get((key.site.path, key.group), {}).values())

    def pair(self, i: int) -> int | None:
        """The mean of the variance (or std) ``keys[i]``, or None when it has
        none, several, or one with other time modes (no error)."""
        key = self.keys[i]
        if key.role not in SPREADS:
            return None
        means = self.means(i)
        if len(means) == 1 and self.keys[means[0]].time == key.time:
            return means[0]
        return None

    def partner(self, i: int, use: PairUse, *, time: bool = True) -> int | None:
        """The mean of ``keys[i]`` for ``use`` (None unless a var or std).

        Raises a PopstatsError when the variance has no group, no mean or
        several in its loop, or (``time=True``; else see
        :meth:`check_time`) a mean with other time modes.
        """
        key = self.keys[i]
        if key.role not in SPREADS:
            return None
        means = self.means(i)
        where = "loop" if key.site.path else "graph (outside loops)"
        head = f"{use.call}({use.argument}=...): {use.text(use.purpose, key)}, but"
        if not means:
            problem = ("it has no group" if key.group is None else
                       f"no statistic with role='mean' and group={key.group!r} "
                       f"is in the same {where}")
            raise PopstatsError(
                f"{head} {problem}. Mark its mean with role='mean' and the same "
                f"group (bn_statistic(..., role='mean', group='layer1')), or "
                f"{use.text(use.otherwise, key)}."
            )
        if len(means) > 1:
            raise PopstatsError(
                f"{head} {len(means)} statistics with role='mean' share "
                f"group={key.group!r} in the same {where} (a layer applied "
                f"{len(means)} times under one group), so which is its own is "
                f"unknown. Give each application its own group "
                f"(popstats.nn.batch_norm does), or {use.text(use.otherwise, key)}."
            )
        if time:
            self.check_time(i, means[0], use)
        return means[0]

    def check_time(self, i: int, j: int, use: PairUse) -> None:
        """Raise unless ``keys[i]`` and its mean ``keys[j]`` have the same
        time modes."""
        key, mean = self.keys[i], self.keys[j]
        if key.time != mean.time:
            raise PopstatsError(
                f"{use.call}(time=...): the {key.role} {key.name!r} and its "
                f"paired mean {mean.name!r} (group {key.group!r}) need the same "
                f"time modes {use.needs_time}; got {key.time} and {mean.time}. "
                f"Give both the same mode per loop level in time=...."
            )
