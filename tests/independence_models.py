"""Generated models with one statistic left unmarked, for the batch
independence tests (``test_independence_generated.py``).

:func:`fake_statistics` gives every statistic of a graph a population value
without estimating (zeros of its shape): enough for :func:`popstats.rewrite`
and its structural analysis, which compiles nothing. :func:`build_unmarked`
builds a description with the marks of one label left out (every
application of it: an ``OpFromGraph`` body and copied branches share marks).
"""

from __future__ import annotations

from contextlib import contextmanager

import generated as gen
import numpy as np

import popstats
from popstats._src.estimation.statistics import PopulationStatistics, Statistic
from popstats._src.rewrite.rewriter import known_shapes


def fake_statistics(outputs) -> PopulationStatistics:
    """Zeros for every statistic of ``outputs`` (one step per loop level)."""
    stats = []
    graph = popstats.export(outputs)
    # outside loops the shape the graph computes (rewrite checks it; a 1
    # that would broadcast is refused), else 1
    known = known_shapes(graph.outputs)
    for site, found in zip(graph.sites, known, strict=True):
        steps = (1,) * site.time.count("step")
        own = found[len(found) - len(site.shape):] if not site.depth else site.shape
        shape = tuple(1 if s is None else s for s in (
            o if o is not None else s for o, s in zip(own, site.shape, strict=True)))
        stats.append(Statistic(site.name, site.label, site, np.zeros(
            steps + shape, dtype=site.dtype), np.ones(steps, dtype=np.int64), 1))
    return PopulationStatistics(tuple(stats))


@contextmanager
def _unmarked(label: str):
    mark = popstats.bn_statistic

    def maybe(var, *args, **kwargs):
        if kwargs.get("label", args[0] if args else None) == label:
            return var
        return mark(var, *args, **kwargs)

    popstats.bn_statistic = maybe
    try:
        yield
    finally:
        popstats.bn_statistic = mark


def build_unmarked(desc: dict, label: str) -> gen.Model:
    """``gen.build(desc)`` with the statistic ``label`` computed, not marked."""
    with _unmarked(label):
        return gen.build(desc)


def labels(model: gen.Model) -> list[str]:
    """The labels of a built model's statistics, sorted."""
    return sorted({site.label for site in popstats.export(model.outputs).sites})
