"""popstats: population statistics for batch-normalized PyTensor graphs.

The pipeline, one public verb per stage:

1. tagger -- :func:`bn_statistic` marks a batch statistic;
2. exporter -- :func:`export` makes every statistic (inside nested Scans
   too) an output of an estimation graph;
3. estimator -- :func:`estimate` runs it over batches into
   :class:`PopulationStatistics` (:class:`Estimation` for the pass itself:
   ``init`` / ``update`` / ``merge`` / ``finalize``, checkpoints);
4. rewriter -- :func:`rewrite` replaces the statistics by population values
   (:func:`bind` puts other values into a rewritten graph).

Batch norms of other libraries (pytensor-ml's) are found without marks by
registered recognizers (:func:`register_recognizer`).
:func:`get_inference_graph` runs 3 and 4 in one call;
:func:`update_running_stats` writes 3's results into a model's own running
statistics (pytensor-ml's, :mod:`popstats.nn`'s); :func:`drift` compares
new data with population statistics, per layer and step.
"""

from popstats import nn as nn
from popstats._src.drift.comparison import drift
from popstats._src.drift.records import Drift, StatisticDrift
from popstats._src.drift.shift import shift
from popstats._src.errors import PopstatsError, PopstatsWarning
from popstats._src.estimation.estimators import Estimator
from popstats._src.estimation.one_call import estimate
from popstats._src.estimation.pass_object import Estimation
from popstats._src.estimation.state import EstimationState, load_state
from popstats._src.estimation.statistics import (
    PopulationStatistics,
    Statistic,
    StatisticWarning,
    load,
)
from popstats._src.export.exporter import EstimationGraph, Site, export
from popstats._src.graph.marker import BNStat, bn_statistic, is_statistic
from popstats._src.graph.moments import mark_moments
from popstats._src.graph.recognize import (
    RecognitionContext,
    Recognizer,
    recognizers,
    register_recognizer,
    unregister_recognizer,
)
from popstats._src.independence.check import check_batch_independence
from popstats._src.inspection import describe, describe_rewrite, draw, draw_rewrite
from popstats._src.rewrite.bind import bind, population_variables
from popstats._src.rewrite.inference_graph import get_inference_graph
from popstats._src.rewrite.rewriter import rewrite
from popstats._src.running.update import (
    RunningWrite,
    WrittenStatistics,
    update_running_stats,
)
from popstats._src.upstream.fixed_point import FixedPointDriver as _FixedPointDriver
from popstats._src.version import __version__ as __version__

__all__ = [
    "BNStat",
    "Drift",
    "Estimation",
    "EstimationGraph",
    "EstimationState",
    "Estimator",
    "PopstatsError",
    "PopstatsWarning",
    "PopulationStatistics",
    "RecognitionContext",
    "Recognizer",
    "RunningWrite",
    "Site",
    "Statistic",
    "StatisticDrift",
    "StatisticWarning",
    "WrittenStatistics",
    "bind",
    "bn_statistic",
    "check_batch_independence",
    "describe",
    "describe_rewrite",
    "draw",
    "draw_rewrite",
    "drift",
    "estimate",
    "export",
    "get_inference_graph",
    "is_statistic",
    "load",
    "load_state",
    "mark_moments",
    "population_variables",
    "recognizers",
    "register_recognizer",
    "rewrite",
    "shift",
    "unregister_recognizer",
    "update_running_stats",
]

# upstream="population": Estimation.run hands its passes to this driver (the
# fixed point's, a stage above estimation). The one place the two are wired:
# see popstats._src.estimation.pass_object.PassDriver.
Estimation.driver = _FixedPointDriver()
