"""Matching the statistics of a graph with estimated values.

A statistic of the graph being rewritten gets the value whose identity
(:class:`~popstats._src.graph.walk.SiteId`: enclosing loops, label, structural
fingerprint) is its own. With ``match="name"``, the only value with the same
loops and label is accepted even when the fingerprints differ (the model
changed upstream in ways the user vouches for). Either way one value never
goes to two applications that compute different things, and every failure
is reported at once, after the whole graph was seen: the graph's statistics
without a value, the values without a statistic, and the closest names.

Stage: rewrite (:mod:`popstats._src.rewrite`). Members: :data:`MATCH_MODES`,
:class:`Matcher`, :func:`check_match`.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

import numpy as np
from pytensor.compile import SharedVariable
from pytensor.graph.basic import Variable
from pytensor.graph.traversal import graph_inputs

from popstats._src.errors import PopstatsError, check_choice
from popstats._src.estimation.statistics import PopulationStatistics, Statistic
from popstats._src.graph.walk import SiteId

__all__ = ["MATCH_MODES", "Matcher", "check_match"]


def _roots_hint(var: Variable | None) -> str:
    """What the graph's statistic is computed from, by name: a shared
    variable's name is part of where a statistic is computed, so a model
    rebuilt with weights named otherwise (or unnamed) differs there."""
    if var is None:
        return ""
    shared = [v for v in graph_inputs([var]) if isinstance(v, SharedVariable)
              and getattr(v.tag, "popstats_statistic", None) is None]
    unnamed = [v for v in shared if v.name is None]
    if unnamed:
        shapes = ", ".join(str(tuple(np.shape(v.get_value(borrow=True))))
                           for v in unnamed[:4])
        return (
            f"; here it is computed from {len(unnamed)} shared variable(s) "
            f"without a name (shapes {shapes}): a shared variable's name is part "
            f"of where a statistic is computed, so if they were named when the "
            f"values were estimated (e.g. pytensor.shared(value, name='W1')), "
            f"give them those names again"
        )
    if shared:
        names = ", ".join(repr(v.name) for v in shared[:8])
        return (
            f"; here it is computed from the shared variables {names}: a shared "
            f"variable's name is part of where a statistic is computed, so one "
            f"renamed since is enough to differ"
        )
    return ""

#: the ``match`` options of rewrite and bind, and what each means
MATCH_MODES = {
    "structure": "the default: the same label, loops and place in the graph",
    "name": "label and loops only",
}


def check_match(match: object, call: str) -> str:
    """Raise unless ``match`` is a valid ``match`` argument."""
    return check_choice(match, MATCH_MODES, f"{call}(match=...)")


class Matcher:
    """Finds the value of each site in every set; reports what failed.

    Parameters
    ----------
    sets : sequence of PopulationStatistics
        The statistic sets (one, or several chosen by ``select``).
    match : {"structure", "name"}
    call : str
        The public call, named in errors.
    """

    def __init__(
        self, sets: Sequence[PopulationStatistics], match: str, call: str
    ) -> None:
        self.sets = list(sets)
        self.match = match
        self.call = call
        self.missing: list[list[SiteId]] = [[] for _ in self.sets]
        self.used: list[dict[str, list[SiteId]]] = [{} for _ in self.sets]
        #: the graph's variable of each site without a value (for the hint)
        self.variables: dict[SiteId, Variable] = {}

    def find(self, site: SiteId, var: Variable | None = None) -> list[Statistic] | None:
        """The value of ``site`` (the graph's ``var``) in every set, or None
        (recorded)."""
        group = []
        for k, stats in enumerate(self.sets):
            stat = stats.lookup(site, self.match)
            if stat is None:
                self.missing[k].append(site)
                if var is not None:
                    self.variables[site] = var
                continue
            self.used[k].setdefault(stat.name, []).append(site)
            group.append(stat)
        return group if len(group) == len(self.sets) else None

    def check(self) -> None:
        """Raise :class:`PopstatsError` if any site lacks a value or shares one."""
        for k, used in enumerate(self.used):
            for name, sites in used.items():
                if len({s.instance for s in sites}) > 1:
                    raise self._shared_error(k, name, sites)
        for k, missing in enumerate(self.missing):
            if missing:
                raise self._missing_error(k, missing)

    def _which(self, k: int) -> str:
        return "stats" if len(self.sets) == 1 else f"stats[{k}]"

    def _shared_error(self, k: int, name: str, sites: list[SiteId]) -> PopstatsError:
        site = sites[0]
        return PopstatsError(
            f"{self.call}(stats=...): the graph computes statistic "
            f"{site.qualified!r} at {len(sites)} places that differ (e.g. the same "
            f"layer applied to two inputs), but {self._which(k)} holds one value "
            f"for them ({name!r}), so one of them would get a value estimated for "
            f"another. Estimate on this graph, so that each application gets its "
            f"own value; if the places differ only by unnamed variables, name "
            f"them or give each application its own label."
        )

    def _missing_error(self, k: int, missing: list[SiteId]) -> PopstatsError:
        stats = self.sets[k]
        used = self.used[k]
        unused = [s for s in stats.values() if s.name not in used]
        by_qualified = {s.site.id.qualified: s.name for s in unused}
        lines = []
        for site in missing:
            line = (
                f"  statistic {site.qualified!r} (in {site.where}) has no value in "
                f"{self._which(k)}"
            )
            like = stats.named_like(site)
            if like:
                line += (
                    f": it has {', '.join(repr(s.name) for s in like)} "
                    f"with this label and loops, estimated where it is computed "
                    f"differently (other inputs, weights or operations upstream, "
                    f"another application of the same layer, or a graph edited "
                    f"since)"
                ) + _roots_hint(self.variables.get(site))
            else:
                close = difflib.get_close_matches(
                    site.qualified, list(by_qualified), n=3, cutoff=0.5
                )
                if close:
                    line += "; closest without a statistic: " + ", ".join(
                        repr(by_qualified[c]) for c in close
                    )
            lines.append(line)
        spare = ", ".join(repr(s.name) for s in unused) or "none"
        fix = (
            "Statistics are matched by label, enclosing loops (by Scan name) and "
            "where they are computed. Give the statistics the labels they had "
            "when estimated (bn_statistic(..., label=...)), or estimate again "
            "on this graph."
        )
        if any(stats.named_like(site) for site in missing) and self.match != "name":
            fix += (
                " If the model changed only in ways that leave the values "
                "valid, pass match='name' to match by label and loops alone."
            )
        return PopstatsError(
            f"{self.call}(stats=...): {len(missing)} statistic(s) of the graph "
            f"lack a value:\n" + "\n".join(lines) + f"\n"
            f"{self._which(k)} values without a statistic in this graph: {spare}.\n"
            + fix
        )
