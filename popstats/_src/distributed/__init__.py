"""Above the pipeline: estimation passes on a Dask cluster (the ``dask`` extra).

- :mod:`~popstats._src.distributed.entry` -- :func:`estimate`,
  :func:`estimate_groups` (public as :mod:`popstats.dask`);
- :mod:`~popstats._src.distributed.cluster` -- planning and running a pass
  over partitions, on the client;
- :mod:`~popstats._src.distributed.tasks` -- the tasks as they run on a worker.

Importing this folder imports Dask.
"""

from popstats._src.distributed.entry import estimate, estimate_groups

__all__ = ["estimate", "estimate_groups"]
