"""Stage 4, rewrite: batch statistics replaced by population values.

- :mod:`~popstats._src.rewrite.rewriter` -- :func:`rewrite`;
- :mod:`~popstats._src.rewrite.bind` -- :func:`bind`,
  :func:`population_variables` (values put in place);
- :mod:`~popstats._src.rewrite.matching` -- which estimated value belongs to
  which statistic of a graph (``match=``);
- :mod:`~popstats._src.rewrite.api` -- :func:`get_inference_graph`, estimate
  then rewrite;
- batch independence: :mod:`~popstats._src.rewrite.independence` (the
  warning), :mod:`~popstats._src.rewrite.flow`,
  :mod:`~popstats._src.rewrite.rules`, :mod:`~popstats._src.rewrite.shapes`,
  :mod:`~popstats._src.rewrite.loops` (the analysis) and
  :mod:`~popstats._src.rewrite.check` (:func:`check_batch_independence`);
- :mod:`~popstats._src.rewrite.consistent` -- the estimation graph of an
  inference graph; :mod:`~popstats._src.rewrite.fixed_point` -- the passes
  of ``upstream="population"`` (registered with the estimation stage);
- :mod:`~popstats._src.rewrite.running_stats`,
  :mod:`~popstats._src.rewrite.running_ptml` -- :func:`update_running_stats`.
"""

from popstats._src.rewrite import fixed_point as fixed_point  # registers the passes
from popstats._src.rewrite.api import get_inference_graph
from popstats._src.rewrite.bind import bind, population_variables
from popstats._src.rewrite.rewriter import rewrite

__all__ = ["bind", "get_inference_graph", "population_variables", "rewrite"]
