"""Above the pipeline: layers for users who build models with popstats.

- :mod:`~popstats._src.nn.batch_norm` -- :func:`batch_norm` with marked
  statistics, :func:`bn_params`;
- :mod:`~popstats._src.nn.running` -- training-time running averages
  (:func:`running_average_updates`).

Public as :mod:`popstats.nn`.

Re-exported: :obj:`BatchNorm`, :obj:`RunningAverages`, :obj:`batch_norm`,
:obj:`bn_params`, :obj:`running_average_updates`.
"""

from popstats._src.nn.batch_norm import BatchNorm, batch_norm, bn_params
from popstats._src.nn.running import RunningAverages, running_average_updates

__all__ = ["BatchNorm", "RunningAverages", "batch_norm", "bn_params",
           "running_average_updates"]
