"""Above rewrite: ``upstream="population"``, statistics as inference sees them.

- :mod:`~popstats._src.upstream.inference_export` -- :func:`inference_export`,
  the estimation graph of the inference graph;
- :mod:`~popstats._src.upstream.fixed_point` -- the rounds of estimation that
  reach the fixed point (registered with the estimation stage when this
  folder is imported; ``import popstats`` does).
"""

from popstats._src.upstream import fixed_point as fixed_point  # registers the rounds

__all__ = ["fixed_point"]
