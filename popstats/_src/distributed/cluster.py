"""One estimation pass over partitions spread across a Dask cluster.

The public module is :mod:`popstats.dask`. The client checks the options
and the graph (an :class:`~popstats.Estimation` that compiles nothing),
pickles the graph once, and submits one Dask graph:

* ``popstats-graph-<digest>``: the pickled graph and options, one node;
* ``popstats-partition-<group>-<i>-<tag>``: partition ``i`` of a group,
  loaded and run on a worker into an :class:`~popstats.EstimationState`
  (:func:`~popstats._src.distributed.tasks.run_partition`; the worker
  compiles the graph once and keeps it);
* ``popstats-merge-<group>-<level>-<j>-<tag>``: a node of the tree
  reduction, merging up to ``split_every`` states in partition order.

Only the small final state per group comes back to the client, which
finalizes it. With ``target_error`` the client submits the partitions in
order instead, merges their states as they finish and stops submitting
once a group's statistics are precise enough (:func:`run_to_target`).
``Estimation.merge`` is exact and associative, so the result
is that of one pass over all the batches in partition order, whatever the
number of workers, the tree's shape or the order tasks finish in.

Stage: distributed (:mod:`popstats._src.distributed`). Members: :class:`Plan`,
:func:`finalize_groups`, :func:`group_text`, :func:`plan_pass`,
:func:`run_pass`, :func:`run_to_target`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
import uuid
import weakref
from collections.abc import Hashable, Iterable, Mapping
from typing import Any, NoReturn, cast

import cloudpickle
import dask
import pytensor
from dask.bag import Bag
from dask.delayed import Delayed
from distributed import Client, Future, as_completed, default_client, wait

from popstats._src.distributed.tasks import (
    KEEP,
    GraphPayload,
    Source,
    build_pass,
    merge_states,
    run_partition,
)
from popstats._src.errors import PopstatsError, check_int, describe_value
from popstats._src.estimation.options import EstimationOptions
from popstats._src.estimation.pass_object import Estimation
from popstats._src.estimation.progress import check_progress, progress_bar
from popstats._src.estimation.state import EstimationState
from popstats._src.estimation.statistics import PopulationStatistics
from popstats._src.estimation.stop_rule import StopRule
from popstats._src.export.exporter import as_variables

__all__ = ["Plan", "finalize_groups", "group_text", "plan_pass", "run_pass",
           "run_to_target"]

_LOADERS = (
    "a dask.bag.Bag whose elements are batches, or a sequence of partitions, "
    "each a zero-argument callable returning an iterable of batches (e.g. "
    "functools.partial(load, i)) or a dask.delayed object computing one"
)


def _client(client: object, call: str) -> Client:
    if client is None:
        try:
            return default_client()
        except ValueError:
            raise PopstatsError(
                f"{call}(client=None): no Dask client is running in this process. "
                f"Start one (`distributed.Client()` starts a LocalCluster on this "
                f"machine; `Client('scheduler-address:8786')` connects to a "
                f"cluster) or pass client=..."
            ) from None
    if not isinstance(client, Client):
        raise PopstatsError(
            f"{call}(client=...): expected a distributed.Client or None (the "
            f"current client), got {describe_value(client)}."
        )
    return client


def _sources(partitions: object, call: str, where: str) -> list:
    """A group's partitions as what its tasks take: Delayed, Future or Source."""
    if isinstance(partitions, Bag):
        return list(partitions.to_delayed(optimize_graph=True))
    if isinstance(partitions, str | bytes | Mapping) or not isinstance(
        partitions, Iterable
    ):
        hint = ""
        if isinstance(partitions, Mapping) and not where:
            hint = " For a dict of partitions per group: popstats.dask.estimate_groups."
        raise PopstatsError(
            f"{call}(partitions=...): expected {_LOADERS}; got "
            f"{describe_value(partitions)}{where}.{hint}"
        )
    out: list = []
    for i, item in enumerate(partitions):
        if isinstance(item, Delayed | Future):
            out.append(item)
        elif callable(item):
            out.append(Source(item))
        else:
            raise PopstatsError(
                f"{call}(partitions=...): partition {i}{where} is "
                f"{describe_value(item)}, not a loader. Partitions are loaded on "
                f"the workers, so that the client never holds the data: give "
                f"{_LOADERS}."
            )
    if not out:
        raise PopstatsError(
            f"{call}(partitions=...): no partitions{where}. Give at least one: "
            f"{_LOADERS}."
        )
    return out


#: the last graphs pickled: (weak references to their variables, options,
#: parameters digest, payload). A call with the same graph objects, options
#: and parameter values sends the same payload, so the workers find it
#: compiled: pickling again would not give the same bytes on PyTensor 3.0,
#: which records in the graph's tags each time a graph is built over it.
_RECENT: list[tuple[list[weakref.ref], EstimationOptions, str, GraphPayload]] = []
_RECENT_LOCK = threading.Lock()


def _payload(run: Estimation, outputs: Any, options: EstimationOptions,
             call: str, upstream: PopulationStatistics | None = None) -> GraphPayload:
    """The graph and options (and the upstream values of a round of
    ``upstream="population"``), pickled once for every worker."""
    outs = as_variables(outputs, call)
    variables = [*run.inputs, *outs]
    parameters = run.parameters_digest()
    with _RECENT_LOCK:
        for refs, opts, digest, payload in _RECENT:
            if (digest == parameters and payload.call == call and opts == options
                    and len(refs) == len(variables)
                    and all(r() is v for r, v in zip(refs, variables, strict=True))):
                return payload
    try:
        data = cloudpickle.dumps((list(run.inputs), outs, options, call, upstream))
    except Exception as exc:
        raise PopstatsError(
            f"{call}(outputs=...): the graph cannot be pickled to send it to the "
            f"workers ({type(exc).__name__}: {exc}). Every op, variable tag and "
            f"shared value of the graph must pickle; remove what does not (a "
            f"lock, an open file) or define it in an importable module."
        ) from exc
    payload = GraphPayload(hashlib.blake2b(data, digest_size=16).hexdigest(), data,
                           call)
    with _RECENT_LOCK:
        _RECENT.insert(0, ([weakref.ref(v) for v in variables], options, parameters,
                           payload))
        del _RECENT[KEEP:]
    return payload


def _check_split_every(split_every: object, call: str) -> int:
    return check_int(split_every, f"{call}(split_every=...)", minimum=2,
                     what="how many states one merge task combines")


def group_text(key: Hashable) -> str:
    """How messages name a group (nothing for :func:`estimate`'s one group)."""
    return "" if key is None else f" of group {key!r}"


def _reduce(nodes: list, graph: Delayed, split_every: int, where: str,
            name: str) -> Delayed:
    """The tree reduction of ``nodes`` (``(delayed state, span)``), in order."""
    level = 0
    while len(nodes) > 1:
        merged = []
        for j in range(0, len(nodes), split_every):
            chunk = nodes[j : j + split_every]
            if len(chunk) == 1:
                merged.append(chunk[0])
                continue
            spans = [span for _, span in chunk]
            task = dask.delayed(merge_states, pure=True)(
                graph, where, spans, *(node for node, _ in chunk),
                dask_key_name=f"popstats-merge-{name}-{level}-{j // split_every}",
            )
            merged.append((task, (spans[0][0], spans[-1][1])))
        nodes, level = merged, level + 1
    return nodes[0][0]


def _cause(future: Future) -> BaseException:
    """The exception a task raised, with the worker's traceback."""
    cause = future.exception()
    traceback = future.traceback()
    return cause if traceback is None else cause.with_traceback(traceback)


class Plan:
    """The Dask graph of a pass, before it is submitted.

    Attributes
    ----------
    run : Estimation
        The client's (uncompiled) Estimation, to finalize states with.
    payload : GraphPayload
        The pickled graph and options (one node every task depends on).
    partitions : list of Delayed
        One task per partition, all groups in order.
    labels : list of (group key, index)
        Which partition each task is.
    finals : dict
        Group key to the Delayed of its final state.
    """

    def __init__(self, run: Estimation, payload: GraphPayload) -> None:
        self.run, self.payload = run, payload
        self.partitions: list[Delayed] = []
        self.labels: list[tuple[Hashable, int]] = []
        self.finals: dict[Hashable, Delayed] = {}
        #: group key to the state its pass continues
        self.given: dict[Hashable, EstimationState] = {}
        #: ``target_error`` and ``min_batches`` (the workers run whole
        #: partitions; the client stops submitting, :func:`run_pass`)
        self.target: float | None = None
        self.min_batches = 10
        #: after :func:`run_pass`: group key to the partitions its state counts
        self.used: dict[Hashable, int] = {}


def plan_pass(
    call: str,
    inputs: Any,
    outputs: Any,
    groups: dict[Hashable, object],
    states: dict[Hashable, object],
    split_every: object,
    options: EstimationOptions,
    upstream: PopulationStatistics | None = None,
) -> Plan:
    """Check everything and build the Dask graph of a pass (nothing runs).

    ``groups`` maps a key (None for :func:`estimate`) to its partitions,
    ``states`` a key to a state to continue, ``options`` the estimation
    options (checked, naming ``call``); ``upstream``: the values of the
    previous round of ``upstream="population"``, for a pass over the
    inference graph that holds them.
    """
    split_every = _check_split_every(split_every, call)
    if options.mode is None:  # the workers compile in this process's mode
        options = dataclasses.replace(options, mode=pytensor.config.mode)
    target, least = options.target_error, options.min_batches
    # the workers run whole partitions: the client stops (run_pass)
    options = dataclasses.replace(options, target_error=None, min_batches=10)
    run = build_pass(inputs, outputs, options, call, upstream, compile_now=False)
    argument = "state" if list(groups) == [None] else "states"
    given = {
        key: run.check_state(
            state, f"{call}({argument}=...){group_text(key)}",
            "Pass a state made by a pass of the same graph and options.",
        )
        for key, state in states.items()
    }
    sources = {key: _sources(parts, call, group_text(key))
               for key, parts in groups.items()}
    plan = Plan(run, _payload(run, outputs, options, call, upstream))
    plan.given, plan.target, plan.min_batches = given, target, least
    graph = dask.delayed(plan.payload, name=f"popstats-graph-{plan.payload.token}",
                         traverse=False)
    tag = uuid.uuid4().hex[:12]
    for g, (key, group) in enumerate(sources.items()):
        nodes = []
        if key in given:
            nodes.append((dask.delayed(given[key], name=f"popstats-state-{g}-{tag}",
                                       traverse=False), (-1, 0)))
        for i, source in enumerate(group):
            task = dask.delayed(run_partition, pure=True)(
                graph, source, dask_key_name=f"popstats-partition-{g}-{i}-{tag}")
            plan.partitions.append(task)
            plan.labels.append((key, i))
            nodes.append((task, (i, i + 1)))
        plan.finals[key] = _reduce(nodes, graph, split_every, group_text(key),
                                   f"{g}-{tag}")
    return plan


def _failed(call: str, plan: Plan, position: int, future: Future) -> NoReturn:
    """Raise the error of a partition whose task raised."""
    key, index = plan.labels[position]
    cause = _cause(future)
    raise PopstatsError(
        f"{call}(partitions=...): partition {index}{group_text(key)} "
        f"failed: {type(cause).__name__}: {cause} (the cause is "
        f"chained below, with the worker's traceback). Fix the "
        f"partition's loader or its batches and call again; Dask "
        f"reruns a partition elsewhere only when its worker dies."
    ) from cause


def run_pass(call: str, plan: Plan, client: object,
             progress: object) -> dict[Hashable, EstimationState]:
    """Run a planned pass on the cluster; the final state of each group
    (with ``target_error``: :func:`run_to_target`)."""
    show = check_progress(progress, call)
    client = _client(client, call)
    if plan.target is not None:
        return run_to_target(plan, client)
    futures = client.compute([*plan.partitions, *plan.finals.values()])
    n = len(plan.partitions)
    partitions, results = futures[:n], futures[n:]
    position = {future.key: n for n, future in enumerate(partitions)}
    try:
        done = as_completed(partitions, loop=client.loop)
        for future in progress_bar(done, partitions, show, unit="partition"):
            if future.status == "error":
                _failed(call, plan, position[future.key], future)
        final = client.gather(results)
    except BaseException:
        client.cancel(futures)
        raise
    plan.used = {key: sum(1 for k, _ in plan.labels if k == key)
                 for key in plan.finals}
    return dict(zip(plan.finals, final, strict=True))


class _Group:
    """One group's partitions in a pass with ``target_error``: its state so
    far (the partitions merged in order) and its rule."""

    def __init__(self, plan: Plan, key: Hashable) -> None:
        run = plan.run
        self.key = key
        self.todo = [p for p, (k, _) in enumerate(plan.labels) if k == key]
        self.done: dict[int, EstimationState] = {}  # position -> its state
        self.merged = 0  # partitions in self.state
        start = plan.given.get(key) or run.init()
        self.state: EstimationState = start
        self.rule = StopRule(cast(float, plan.target), plan.min_batches, run.sites,
                             run.estimators, start)
        self.stopped = self.rule.finished

    def advance(self, run: Estimation) -> None:
        """Merge the partitions done next in order; check after each."""
        while not self.stopped and self.merged < len(self.todo):
            part = self.done.pop(self.todo[self.merged], None)
            if part is None:
                return
            self.state = (part if not self.state.n_batches
                          else run.merge(self.state, part))
            self.merged += 1
            if self.state.n_batches >= self.rule.min_batches:
                self.stopped = self.rule.check(self.state)

    @property
    def finished(self) -> bool:
        return self.stopped or self.merged == len(self.todo)


def run_to_target(plan: Plan, client: Client) -> dict[Hashable, EstimationState]:
    """A planned pass with ``target_error``: the partitions are submitted in
    order, a few more than the workers' threads at a time; each group's
    states are merged in partition order as they finish and its rule checks
    the merged state at each partition's end; once a group reaches its
    target, its partitions not yet merged are cancelled and no more are
    submitted. Each group's state is that of its first partitions."""
    call, run = plan.payload.call, plan.run
    groups = [_Group(plan, key) for key in plan.finals]
    window = max(2, sum(client.nthreads().values()) + 1)
    running: dict[Any, tuple[_Group, int, Future]] = {}
    queue = [(g, p) for g in groups for p in g.todo]
    try:
        while not all(g.finished for g in groups):
            queue = [(g, p) for g, p in queue if not g.stopped]
            while queue and len(running) < window:
                group, position = queue.pop(0)
                future = client.compute(plan.partitions[position])
                running[future.key] = (group, position, future)
            if not running:  # pragma: no cover - every group finished above
                break
            done = wait([f for _, _, f in running.values()],
                        return_when="FIRST_COMPLETED").done
            for future in done:
                group, position, _ = running.pop(future.key)
                if future.status == "error":
                    _failed(call, plan, position, future)
                group.done[position] = future.result()
                group.advance(run)
            for key in [k for k, (g, _, _) in running.items() if g.stopped]:
                client.cancel([running.pop(key)[2]])
    finally:
        client.cancel([f for _, _, f in running.values()])
    plan.used = {g.key: g.merged for g in groups}
    return {g.key: g.rule.mark(g.state, final=True, reached=g.stopped)
            for g in groups}


def finalize_groups(
    call: str, run: Estimation, states: dict[Hashable, EstimationState]
) -> dict[Hashable, PopulationStatistics]:
    """Each group's statistics; an error names the group."""
    out = {}
    for key, state in states.items():
        try:
            out[key] = run.finalize(state)
        except PopstatsError as exc:
            if key is None:
                raise
            detail = str(exc).removeprefix(f"{call}(batches=...): ")
            raise PopstatsError(
                f"{call}(groups=...): in group {key!r}: {detail}"
            ) from exc
    return out
