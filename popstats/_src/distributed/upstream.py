"""``upstream="population"`` on a cluster: every round a distributed pass.

The rounds are those of :mod:`popstats._src.upstream.fixed_point`: round 0
over the training graph, then rounds over the inference graph holding the
previous round's values, until the largest relative change is at most
``upstream_tol``. Each round is one
:func:`~popstats._src.distributed.cluster.plan_pass` / ``run_pass``: its
payload carries the values it holds, so the workers build (and compile,
once per round and worker) the pass over the inference graph themselves.
The partitions are loaded again for every round: a loader must give the
same batches each time it is called (the fixed point is that of one data
set; a loader that shuffles moves it). The workers do not hash the
batches; a statistic with no statistic upstream that moves between rounds
is refused instead (``check_change``). With ``target_error``, round 0
stops submitting partitions once its target is reached, and every later
round runs the partitions round 0 merged.

Stage: distributed. Members: :func:`fixed_point_groups`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Iterator
from typing import Any

from dask.bag import Bag

from popstats._src.distributed.cluster import finalize_groups, plan_pass, run_pass
from popstats._src.errors import PopstatsError
from popstats._src.estimation.options import EstimationOptions
from popstats._src.estimation.state import EstimationState
from popstats._src.estimation.statistics import PopulationStatistics
from popstats._src.export.exporter import as_variables
from popstats._src.upstream.fixed_point import iterate, quiet
from popstats._src.upstream.inference_export import inference_export

__all__ = ["fixed_point_groups"]


def fixed_point_groups(
    call: str, inputs: Any, outputs: Any, groups: dict[Hashable, object],
    states: dict[Hashable, object], split_every: object,
    options: EstimationOptions, client: object, progress: object,
) -> tuple[dict[Hashable, PopulationStatistics], dict[Hashable, EstimationState]]:
    """Each group's fixed point (groups one after another) and its last
    round's state."""
    if states:
        argument = "state" if list(groups) == [None] else "states"
        raise PopstatsError(
            f"{call}({argument}=...): not available with upstream='population', "
            f"whose passes start from nothing and run until their values are a "
            f"fixed point; leave {argument} out (or use upstream='batch')."
        )
    stats, finals = {}, {}
    for key, partitions in groups.items():
        if isinstance(partitions, Iterator):  # loaded again every round
            partitions = list(partitions)
        stats[key], finals[key] = _fixed_point(
            call, inputs, outputs, key, partitions, split_every, options, client,
            progress)
    return stats, finals


def _fixed_point(call, inputs, outputs, key, partitions, split_every, options,
                 client, progress) -> tuple[PopulationStatistics, EstimationState]:
    plans: list[Any] = []
    if isinstance(partitions, Bag):  # listed once, so later rounds can take a prefix
        partitions = list(partitions.to_delayed(optimize_graph=True))
    taken = [partitions]

    def one_round(upstream: PopulationStatistics | None, k: int = 0):
        plan = plan_pass(call, inputs, outputs, {key: taken[0]}, {}, split_every,
                         later if k else first, upstream)
        plans[:] = [plan]
        state = run_pass(call, plan, client, progress)[key]
        with quiet():  # every round sees the same data: the result warns once
            return finalize_groups(call, plan.run, {key: state})[key], state

    first = dataclasses.replace(options, upstream="batch")
    # with target_error, round 0 decides the partitions; the later rounds
    # take those (all their batches)
    later = dataclasses.replace(options, target_error=None, min_batches=10)
    stats, state0 = one_round(None)
    if state0.stopping is not None:
        taken[0] = list(taken[0])[:plans[0].used[key]]
    independent = inference_export(as_variables(outputs, call), stats, options.time,
                                   call).independent
    state, record = iterate(stats, one_round, call, options, independent)
    state = dataclasses.replace(state, stopping=state0.stopping)
    final = finalize_groups(call, plans[0].run, {key: state})[key]  # warns once
    return final.with_fixed_point(record), state
