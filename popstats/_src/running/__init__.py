"""Above rewrite: estimates written into a model's own running statistics.

- :mod:`~popstats._src.running.update` -- :func:`update_running_stats`,
  :class:`RunningWrite`, :class:`WrittenStatistics`;
- :mod:`~popstats._src.running.ptml_targets` -- pytensor-ml's running
  statistics as its targets (never imports pytensor_ml).
"""

from popstats._src.running.update import (
    RunningWrite,
    WrittenStatistics,
    update_running_stats,
)

__all__ = ["RunningWrite", "WrittenStatistics", "update_running_stats"]
