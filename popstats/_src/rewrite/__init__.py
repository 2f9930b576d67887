"""Stage 4, rewrite: batch statistics replaced by population values.

- :mod:`~popstats._src.rewrite.rewriter` -- :func:`rewrite`;
- :mod:`~popstats._src.rewrite.bind` -- :func:`bind`,
  :func:`population_variables` (values put in place);
- :mod:`~popstats._src.rewrite.matching` -- which estimated value belongs to
  which statistic of a graph (``match=``);
- :mod:`~popstats._src.rewrite.inference_graph` -- :func:`get_inference_graph`,
  estimate then rewrite.
"""

from popstats._src.rewrite.bind import bind, population_variables
from popstats._src.rewrite.inference_graph import get_inference_graph
from popstats._src.rewrite.rewriter import rewrite

__all__ = ["bind", "get_inference_graph", "population_variables", "rewrite"]
