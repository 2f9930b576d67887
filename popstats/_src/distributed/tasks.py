"""The tasks of a distributed estimation pass, as they run on a Dask worker.

Stage: distributed. :mod:`popstats.dask`
(:mod:`popstats._src.distributed.cluster`) builds a Dask graph whose tasks
call the functions here, through the public methods of
:class:`~popstats.Estimation` (``run``, ``merge``). Nothing here imports
Dask: a task is a plain function of plain arguments.

The graph and the pass's options travel once per call as one
:class:`GraphPayload` (one node of the Dask graph, on which every task
depends): a pickle of ``(inputs, outputs, options, call)`` and its digest.
Each worker process keeps the :class:`~popstats.Estimation` it builds from
a payload, keyed by that digest, for its later tasks and for later calls
with the same graph: the estimation function is compiled once per worker
(once per worker *thread* that runs partitions at the same time: a compiled
PyTensor function runs one call at a time, so a busy one is never shared).

:func:`run_partition` runs one partition's batches into an
:class:`~popstats.EstimationState`, whose size depends on the statistics,
not on the data; :func:`merge_states` combines states in the given order
(the tree reduction's nodes).

Members: :class:`GraphPayload`, :class:`Source`, :func:`build_pass`,
:func:`merge_states`,
:func:`run_partition`, :func:`span_text`, :func:`worker_info`.
"""

from __future__ import annotations

import dataclasses
import pickle
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from popstats._src.errors import PopstatsError, describe_value
from popstats._src.estimation.pass_object import Estimation
from popstats._src.estimation.plan import EstimationPlan
from popstats._src.estimation.state import EstimationState
from popstats._src.export.exporter import as_variables
from popstats._src.upstream.fixed_point import inference_pass
from popstats._src.upstream.inference_export import inference_export

__all__ = [
    "GraphPayload",
    "Source",
    "build_pass",
    "merge_states",
    "run_partition",
    "span_text",
    "worker_info",
]

#: the most graphs a worker keeps compiled (least recently used ones go)
KEEP = 4


class GraphPayload:
    """The estimation graph and options of one pass, pickled once.

    Attributes
    ----------
    token : str
        Digest of ``data``: the key of the workers' cache.
    data : bytes
        ``pickle`` (cloudpickle) of ``(inputs, outputs, options, call,
        upstream)`` (``upstream``: None, or the values a round of
        ``upstream="population"`` holds upstream),
        ``options`` an
        :class:`~popstats._src.estimation.options.EstimationOptions`
        (checked on the client).
    call : str
        The public call, for messages (``"popstats.dask.estimate"``).
    """

    __slots__ = ("call", "data", "token")

    def __init__(self, token: str, data: bytes, call: str) -> None:
        self.token, self.data, self.call = token, data, call

    def __reduce__(self) -> tuple:
        return GraphPayload, (self.token, self.data, self.call)

    def __repr__(self) -> str:
        return f"GraphPayload({self.token!r}, <{len(self.data)} bytes>)"


class Source:
    """A partition's loader: a zero-argument callable returning its batches.

    A plain class (not a dataclass, not a tuple) so that Dask passes it to
    the task as it is instead of reading it as a task of its own.
    """

    __slots__ = ("load",)

    def __init__(self, load: Callable[[], Iterable[Any]]) -> None:
        self.load = load

    def __reduce__(self) -> tuple:
        return Source, (self.load,)


class _Entry:
    """What a worker keeps for one graph."""

    def __init__(self) -> None:
        self.built: list[Estimation] = []  # every Estimation of this graph
        self.idle: list[Estimation] = []  # those no partition is running now
        self.partitions = 0  # partitions run with this graph


_CACHE: OrderedDict[str, _Entry] = OrderedDict()
_LOCK = threading.Lock()


def _entry(token: str) -> _Entry:
    """The cache entry of ``token`` (made if new); call with ``_LOCK`` held."""
    entry = _CACHE.get(token)
    if entry is None:
        entry = _CACHE[token] = _Entry()
        while len(_CACHE) > KEEP:
            _CACHE.popitem(last=False)
    _CACHE.move_to_end(token)
    return entry


def build_pass(inputs: Any, outputs: Any, options: Any, call: str,
               upstream: Any, compile_now: bool) -> Estimation:
    """The pass of a payload's contents: over the training graph, or, with
    ``upstream`` values, over the inference graph holding them (a round of
    ``upstream="population"``, :mod:`popstats._src.upstream.fixed_point`)."""
    if upstream is None:
        if options.upstream != "batch":
            options = dataclasses.replace(options, upstream="batch")
        return Estimation.of(EstimationPlan(inputs, outputs, options, call,
                                            compile_now))
    outs = as_variables(outputs, call)
    exported = inference_export(outs, upstream, options.time, call)
    return inference_pass(None, inputs, outs, exported, upstream, options, call,
                          compile_now)


def _build(graph: GraphPayload, compile_now: bool) -> Estimation:
    inputs, outputs, options, call, upstream = pickle.loads(graph.data)
    return build_pass(inputs, outputs, options, call, upstream, compile_now)


def _acquire(graph: GraphPayload) -> Estimation:
    """An Estimation of ``graph`` that no other thread is running."""
    with _LOCK:
        entry = _entry(graph.token)
        entry.partitions += 1
        if entry.idle:
            return entry.idle.pop()
    run = _build(graph, compile_now=True)
    with _LOCK:
        entry.built.append(run)
    return run


def _release(graph: GraphPayload, run: Estimation) -> None:
    with _LOCK:
        entry = _CACHE.get(graph.token)
        if entry is not None and run in entry.built:
            entry.idle.append(run)


def _any(graph: GraphPayload) -> Estimation:
    """An Estimation of ``graph`` to merge with (merging only reads it)."""
    with _LOCK:
        entry = _entry(graph.token)
        if entry.built:
            return entry.built[0]
    run = _build(graph, compile_now=False)  # compiled when a partition needs it
    with _LOCK:
        entry.built.append(run)
        entry.idle.append(run)
    return run


def run_partition(graph: GraphPayload, source: Any) -> EstimationState:
    """The state of one partition's batches (a task of the pass).

    ``source`` is a :class:`Source` (called here, on the worker) or the
    batches themselves (the value of a ``dask.delayed`` object or of a
    ``dask.bag`` partition, computed by Dask before this task runs).
    """
    run = _acquire(graph)
    try:
        batches = source.load() if isinstance(source, Source) else source
        if isinstance(batches, Mapping) or not isinstance(batches, Iterable):
            raise PopstatsError(
                f"{graph.call}(partitions=...): the partition gave "
                f"{describe_value(batches)} instead of its batches. A loader "
                f"returns (or a delayed object computes to) an iterable of "
                f"batches: a list or a generator of dicts; return [batch] for "
                f"a single one."
            )
        return run.run(batches, progress=False)
    finally:
        _release(graph, run)


def span_text(lo: int, hi: int) -> str:
    """Partitions ``lo`` to ``hi - 1`` in words; ``lo == -1``: the given state too."""
    words = []
    if lo < 0:
        words.append("the given state")
        lo = 0
    if hi - lo == 1:
        words.append(f"partition {lo}")
    elif hi > lo:
        words.append(f"partitions {lo}-{hi - 1}")
    return " and ".join(words)


def merge_states(graph: GraphPayload, where: str, spans: list[tuple[int, int]],
                 *states: EstimationState) -> EstimationState:
    """``states`` merged in their order (a node of the reduction tree).

    ``spans[i]`` is the range of partitions ``states[i]`` covers (``lo ==
    -1``: it includes the state given to the call), ``where`` names the
    group (``" of group 'a'"``, or empty); an error names the two parts
    that do not combine.
    """
    run = _any(graph)
    merged = states[0]
    for i in range(1, len(states)):
        try:
            merged = run.merge(merged, states[i])
        except PopstatsError as exc:
            before = span_text(spans[0][0], spans[i - 1][1])
            raise PopstatsError(
                f"{graph.call}(partitions=...): the states of {before} and of "
                f"{span_text(*spans[i])}{where} do not combine: {exc}"
            ) from exc
    return merged


def worker_info() -> dict[str, dict[str, int]]:
    """Per graph digest: Estimations built, compiled, partitions run here.

    For tests and diagnostics: ``client.run(worker_info)`` shows that each
    worker compiled a graph once.
    """
    with _LOCK:
        return {
            token: {
                "estimations": len(entry.built),
                "compiled": sum(run.compiled for run in entry.built),
                "partitions": entry.partitions,
            }
            for token, entry in _CACHE.items()
        }
