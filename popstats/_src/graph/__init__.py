"""Stage 1, graph mechanics: what every later stage builds on.

- :mod:`~popstats._src.graph.marker` -- the marker op :class:`BNStat` and
  :func:`bn_statistic`, with its readers (label, role, group, count);
- :mod:`~popstats._src.graph.identity` -- structural fingerprints that tell
  applications of a statistic apart across processes;
- :mod:`~popstats._src.graph.walk` -- the one pass over a graph that recurses
  into Scan and OpFromGraph inner graphs (:func:`transform`);
- :mod:`~popstats._src.graph.surgery` -- all Scan surgery (:class:`ScanEdit`).

Re-exported: :obj:`BNStat`, :obj:`ScanEdit`, :obj:`SiteId`,
:obj:`bn_statistic`, :obj:`is_statistic`, :obj:`transform`.
"""

from popstats._src.graph.marker import BNStat, bn_statistic, is_statistic
from popstats._src.graph.surgery import ScanEdit
from popstats._src.graph.walk import SiteId, transform

__all__ = ["BNStat", "ScanEdit", "SiteId", "bn_statistic", "is_statistic", "transform"]
