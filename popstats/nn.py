"""Batch normalization blocks with marked statistics, and running averages.

See :func:`batch_norm`, :func:`bn_params` and :func:`running_average_updates`.
"""

from popstats._src.nn.batch_norm import BatchNorm, batch_norm, bn_params
from popstats._src.nn.running import RunningAverages, running_average_updates

__all__ = [
    "BatchNorm",
    "RunningAverages",
    "batch_norm",
    "bn_params",
    "running_average_updates",
]
