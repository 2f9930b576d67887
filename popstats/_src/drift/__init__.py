"""Above the pipeline: drift of new data against population statistics.

- :mod:`~popstats._src.drift.comparison` -- :func:`drift`, the comparison pass;
- :mod:`~popstats._src.drift.shift` -- :func:`shift`, the estimation shift
  (drift on the inference graph against its layers' input moments);
- :mod:`~popstats._src.drift.measures` -- the divergence and cell arithmetic;
- :mod:`~popstats._src.drift.records` -- :class:`Drift`, :class:`StatisticDrift`;
- :mod:`~popstats._src.drift.report` -- its table, plots and HTML report.
"""

from popstats._src.drift.comparison import drift
from popstats._src.drift.records import Drift, StatisticDrift
from popstats._src.drift.shift import shift

__all__ = ["Drift", "StatisticDrift", "drift", "shift"]
