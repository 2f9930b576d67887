"""Estimation passes on a Dask cluster (``pip install 'popstats[dask]'``).

:func:`estimate` runs one estimation pass over partitions of data loaded
on the workers of a ``distributed`` cluster (a ``LocalCluster``, SLURM or
PBS through dask-jobqueue, Kubernetes: only the cluster object changes) and
gives what :func:`popstats.estimate` gives over the same batches.
:func:`estimate_groups` does it for several statistic sets, one per group
of partitions, in one pass. See :doc:`/distributed`.

``import popstats`` does not import Dask; importing this module needs the
``dask`` extra.
"""

try:
    import dask  # noqa: F401
    import distributed  # noqa: F401
except ImportError as exc:  # pragma: no cover - tested in a subprocess
    raise ImportError(
        f"popstats.dask needs the optional packages dask and distributed "
        f"({exc}). Install them with `pip install 'popstats[dask]'`."
    ) from exc

from popstats._src.distributed.entry import estimate, estimate_groups

__all__ = ["estimate", "estimate_groups"]
