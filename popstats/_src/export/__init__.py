"""Stage 2, export: every marked statistic made an output of a new graph.

- :mod:`~popstats._src.export.exporter` -- :func:`export` finds the sites
  (:class:`Site`) and builds the :class:`EstimationGraph`;
- :mod:`~popstats._src.export.time_modes` -- per-step statistics or one value
  for all steps of a loop (``time=``), and the per-cell broadcast;
- :mod:`~popstats._src.export.pairing` -- the one rule pairing a variance (or
  std) with its mean, for time pooling, the ``"pooled"`` estimator and drift;
- :mod:`~popstats._src.export.sites` -- the records :class:`Site`,
  :class:`EstimationGraph` and the exporter's in-progress ``Found``.
"""

from popstats._src.export.exporter import EstimationGraph, Site, export

__all__ = ["EstimationGraph", "Site", "export"]
