"""Stage 2, export: every marked statistic made an output of a new graph.

- :mod:`~popstats._src.export.exporter` -- :func:`export` finds the sites
  (:class:`Site`) and builds the :class:`EstimationGraph`;
- :mod:`~popstats._src.export.time_modes` -- per-step statistics or one value
  for all steps of a loop (``time=``), and the per-cell broadcast.
"""

from popstats._src.export.exporter import EstimationGraph, Site, export

__all__ = ["EstimationGraph", "Site", "export"]
