"""Beside the pipeline, below estimation: does a graph mix a batch's examples?

The batch-independence analysis reads graphs only (it imports the graph and
export folders, nothing above):

- :mod:`~popstats._src.independence.mixing` -- :func:`batch_axes`,
  :func:`mixing_operations`, the warning of :func:`~popstats.rewrite`;
- :mod:`~popstats._src.independence.flow` -- :class:`Flow`, the batch axis
  followed through one graph level;
- :mod:`~popstats._src.independence.rules` -- its rules for operations that
  move, reduce or contract axes;
- :mod:`~popstats._src.independence.shapes` -- axis sizes as products, to
  follow reshapes;
- :mod:`~popstats._src.independence.scan_rule` -- :class:`LoopFlow`, its rule
  for ``Scan``;
- :mod:`~popstats._src.independence.check` --
  :func:`check_batch_independence`, the analysis proven on data.
"""

from popstats._src.independence.check import check_batch_independence
from popstats._src.independence.mixing import batch_axes, mixing_operations

__all__ = ["batch_axes", "check_batch_independence", "mixing_operations"]
