"""Above the pipeline: drift of new data against population statistics.

- :mod:`~popstats._src.drift.drift` -- :func:`drift`, the comparison pass;
- :mod:`~popstats._src.drift.records` -- :class:`Drift`, :class:`StatisticDrift`;
- :mod:`~popstats._src.drift.report` -- its table, plots and HTML report.
"""

from popstats._src.drift.drift import drift
from popstats._src.drift.records import Drift, StatisticDrift

__all__ = ["Drift", "StatisticDrift", "drift"]
