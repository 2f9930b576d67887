"""Above rewrite: ``upstream="population"``, statistics as inference sees them.

- :mod:`~popstats._src.upstream.inference_export` -- :func:`inference_export`,
  the estimation graph of the inference graph;
- :mod:`~popstats._src.upstream.fixed_point` -- the rounds of estimation that
  reach the fixed point: its ``FixedPointDriver`` is the
  :class:`~popstats._src.estimation.pass_object.PassDriver` that
  ``popstats/__init__.py`` gives :attr:`popstats.Estimation.driver` (the
  one place the two stages are wired; importing this folder wires nothing).
"""

from popstats._src.upstream import fixed_point as fixed_point

__all__ = ["fixed_point"]
