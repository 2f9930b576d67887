"""popstats' implementation, one folder per concept, in pipeline order.

Imports run one way, each folder using only those before it (checked by
``tests/test_layering.py``); :mod:`popstats._src.errors` and
:mod:`popstats._src.version` sit below them all:

1. :mod:`popstats._src.graph` -- graph mechanics: the marker op, structural
   identity, the one recursive walk, all Scan/OpFromGraph surgery;
2. :mod:`popstats._src.export` -- finding sites, time modes, pairing;
3. :mod:`popstats._src.independence` -- the batch-independence analysis and
   :func:`~popstats.check_batch_independence`;
4. :mod:`popstats._src.estimation` -- the :class:`~popstats.Estimation` pass,
   estimators, states, checkpoints, batches, progress, accumulation on the
   host, in the graph and on a device;
5. :mod:`popstats._src.rewrite` -- rewriting, binding, matching,
   :func:`~popstats.get_inference_graph`;
6. :mod:`popstats._src.upstream` -- ``upstream="population"``: the
   estimation graph of the inference graph and the fixed point;
7. :mod:`popstats._src.running` -- :func:`~popstats.update_running_stats`;
8. :mod:`popstats._src.nn` -- layers with marked statistics, running averages;
9. :mod:`popstats._src.inspection` -- describe, drawings, plots, reports,
   the command line;
10. :mod:`popstats._src.drift` -- drift of new data, and its report;
11. :mod:`popstats._src.distributed` -- estimation on a Dask cluster.
"""
