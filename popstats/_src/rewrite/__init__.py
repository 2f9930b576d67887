"""Stage 4, rewrite: batch statistics replaced by population values.

- :mod:`~popstats._src.rewrite.rewriter` -- :func:`rewrite`, :func:`bind`,
  :func:`population_variables`;
- :mod:`~popstats._src.rewrite.matching` -- which estimated value belongs to
  which statistic of a graph (``match=``);
- :mod:`~popstats._src.rewrite.api` -- :func:`get_inference_graph`, estimate
  then rewrite.
"""

from popstats._src.rewrite.api import get_inference_graph
from popstats._src.rewrite.rewriter import bind, population_variables, rewrite

__all__ = ["bind", "get_inference_graph", "population_variables", "rewrite"]
