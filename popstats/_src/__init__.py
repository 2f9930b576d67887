"""popstats' implementation, one folder per stage of the pipeline.

Imports run one way, each folder using only those before it (checked by
``tests/test_layering.py``); :mod:`popstats._src.errors` and
:mod:`popstats._src.version` sit below them all:

1. :mod:`popstats._src.graph` -- graph mechanics: the marker op, structural
   identity, the one recursive walk, all Scan/OpFromGraph surgery;
2. :mod:`popstats._src.export` -- finding sites, time modes, pairing;
3. :mod:`popstats._src.estimation` -- the :class:`~popstats.Estimation` pass,
   estimators, states, checkpoints, batches, progress, accumulation on the
   host, in the graph and on a device;
4. :mod:`popstats._src.rewrite` -- rewriting, matching, the one-call entry;
5. :mod:`popstats._src.nn` -- layers with marked statistics, running averages;
6. :mod:`popstats._src.inspection` -- describe, diff, drawings, plots,
   reports, the command line;
7. :mod:`popstats._src.drift` -- drift of new data, and its report;
8. :mod:`popstats._src.distributed` -- estimation passes on a Dask cluster.
"""
