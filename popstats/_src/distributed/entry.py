"""The entry points of :mod:`popstats.dask`: estimate on a Dask cluster.

Stage: distributed. Members: :func:`estimate` and :func:`estimate_groups`;
they take the estimation options as keywords
(:class:`~popstats._src.estimation.options.EstimationOptions`) and plan and
run the pass with :mod:`popstats._src.distributed.cluster`.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any, Unpack

from pytensor.graph.basic import Variable

from popstats._src.distributed.cluster import finalize_groups, plan_pass, run_pass
from popstats._src.distributed.upstream import fixed_point_groups
from popstats._src.errors import PopstatsError, check_bool, describe_value
from popstats._src.estimation.options import (
    EstimationOptions,
    OptionKeywords,
    takes_options,
)
from popstats._src.estimation.progress import check_progress
from popstats._src.estimation.state import EstimationState
from popstats._src.estimation.statistics import PopulationStatistics

__all__ = ["estimate", "estimate_groups"]


@takes_options
def estimate(
    inputs: Sequence[Variable],
    outputs: Variable | Sequence[Variable],
    partitions: Any,
    *,
    client: Any = None,
    state: EstimationState | None = None,
    return_state: bool = False,
    split_every: int = 8,
    progress: bool | str = "auto",
    **options: Unpack[OptionKeywords],
) -> PopulationStatistics | tuple[PopulationStatistics, EstimationState]:
    """Estimate population statistics over partitions loaded on a Dask cluster.

    One estimation pass, as :func:`popstats.estimate` makes, over the batches
    of every partition, in partition order; each partition is loaded and
    run on a worker, and only its state (whose size depends on the
    statistics, not on the data) comes back, merged with the others by a
    tree reduction. The result equals :func:`popstats.estimate` over the
    same batches in the same order: coverage and batch counts exactly,
    values to rounding (merges add in another order; see
    :doc:`/distributed`).

    Parameters
    ----------
    inputs, outputs
        As for :func:`popstats.estimate`. The graph is pickled once and sent
        to the workers; each worker compiles it once and keeps it for later
        partitions and later calls with the same graph and options.
    partitions : dask.bag.Bag or sequence
        A ``dask.bag.Bag`` whose elements are batches (dicts keyed by input
        name, or tuples in the order of ``inputs``), one partition per bag
        partition; or a sequence whose items each give one partition's
        batches: a zero-argument callable returning an iterable of batches
        (a generator is fine; e.g. ``functools.partial(load, path)``),
        called on the worker, or a ``dask.delayed`` object (or a
        ``distributed.Future``) whose value is such an iterable. The client
        never holds the data: lists of batches are refused.
    client : distributed.Client, optional
        The cluster to run on; default: the current client
        (``distributed.default_client()``).
    state : EstimationState, optional
        A state of an earlier pass of the same graph and options (from
        ``return_state=True``, :meth:`popstats.Estimation.run` or
        :func:`popstats.load_state`): the pass continues it, its batches
        first.
    return_state : bool, default False
        Also return the pass's final :class:`~popstats.EstimationState`
        (to save, continue, or merge with other passes).
    split_every : int, default 8
        How many states one merge task combines (as in ``dask.bag``'s
        reductions): the tree has ``log(partitions) / log(split_every)``
        levels.
    [estimation options]
    progress : bool or "auto", default "auto"
        Show a progress bar of partitions done (needs tqdm); ``"auto"``:
        only on a terminal. Dask's dashboard shows the tasks
        (``popstats-partition``, ``popstats-merge``) too.

    Returns
    -------
    PopulationStatistics or (PopulationStatistics, EstimationState)
        As :func:`popstats.estimate` returns; with ``return_state=True``,
        with the final state.

    Raises
    ------
    PopstatsError
        For arguments popstats cannot use (checked before anything is
        sent), a partition that is not a loader, a graph that does not
        pickle, and a partition whose task raises: the error names the
        partition and chains the worker's exception (a batch that does not
        fit, a loader that fails) as its cause, with its traceback.

    Notes
    -----
    **Mode.** With ``mode=None``, the workers compile in this process's
    ``pytensor.config.mode``.

    **Order.** A distributed pass is the pass over partition 0's batches
    (in the order its loader gives them), then partition 1's, and so on:
    states are merged in partition order, whichever worker finishes first.
    Only ``"ema"`` depends on that order (a running average weighs later
    batches more); every other estimator gives the same value in any order.

    **upstream="population".** Every round of the fixed point
    (:doc:`/upstream`) is a distributed pass: the workers build the pass
    over the inference graph holding the previous round's values (sent with
    the graph) and load their partitions again, so a loader must give the
    same batches every time it is called. ``state`` is refused.

    **target_error.** The partitions are submitted in order, a few more
    than the workers' threads at a time; their states are merged in
    partition order as they finish, and the rule checks the merged state at
    each partition's end. Once every statistic is precise enough no more
    partitions are submitted (those running are cancelled): the result is
    that of the first partitions, ``stats.stopping`` says how many batches.
    With ``upstream="population"`` every later round runs those partitions.
    No progress bar is shown in this mode.

    **Faults.** A partition's task is a pure function of its loader: when a
    worker dies, Dask runs its partitions again on another worker, and
    their states replace the lost ones, so no batch is counted twice or
    lost. An exception raised inside a partition is not retried: the pass
    stops and raises.

    Examples
    --------
    Three partitions, each loaded by ``load(i)`` on a worker (here a cluster
    inside this process; ``Client()`` starts worker processes):

    >>> import functools, numpy as np, pytensor.tensor as pt, popstats
    >>> import popstats.dask
    >>> from distributed import Client
    >>> x = pt.matrix("x")
    >>> y = x - popstats.bn_statistic(x.mean(axis=0), label="mean")
    >>> def load(i):  # runs on a worker: read partition i there
    ...     return [{"x": np.full((4, 2), i + k)} for k in range(2)]
    >>> parts = [functools.partial(load, i) for i in range(3)]
    >>> with Client(processes=False, n_workers=1, dashboard_address=":0") as client:
    ...     stats = popstats.dask.estimate([x], y, parts, client=client)
    >>> stats["mean"].value
    array([1.5, 1.5])
    >>> stats["mean"].n_batches
    6
    """
    call = "popstats.dask.estimate"
    checked = EstimationOptions.check(call, options)
    return_state = check_bool(return_state, f"{call}(return_state=...)")
    check_progress(progress, call)
    given: dict[Hashable, object] = {} if state is None else {None: state}
    if checked.upstream == "population":
        found, states = fixed_point_groups(call, inputs, outputs, {None: partitions},
                                           given, split_every, checked, client,
                                           progress)
        return (found[None], states[None]) if return_state else found[None]
    plan = plan_pass(call, inputs, outputs, {None: partitions}, given, split_every,
                     checked)
    states = run_pass(call, plan, client, progress)
    stats = finalize_groups(call, plan.run, states)[None]
    return (stats, states[None]) if return_state else stats


@takes_options
def estimate_groups(
    inputs: Sequence[Variable],
    outputs: Variable | Sequence[Variable],
    groups: Mapping[Hashable, Any],
    *,
    client: Any = None,
    states: Mapping[Hashable, EstimationState] | None = None,
    return_states: bool = False,
    split_every: int = 8,
    progress: bool | str = "auto",
    **options: Unpack[OptionKeywords],
) -> (dict[Hashable, PopulationStatistics]
      | tuple[dict[Hashable, PopulationStatistics], dict[Hashable, EstimationState]]):
    """One statistic set per group of partitions, in one pass on a Dask cluster.

    For models that keep several statistic sets (one per domain, task or
    data source; :func:`popstats.rewrite` with ``select=`` picks one at run
    time): every group's partitions run in one Dask graph, sharing the
    graph each worker compiled once, and each group's states are merged
    into its own set. Each set equals :meth:`estimate` over that group's
    partitions alone.

    Parameters
    ----------
    inputs, outputs
        As for :func:`popstats.estimate`.
    groups : dict
        Group key (any hashable: a domain name, an int) to its partitions,
        each as ``partitions`` of :func:`estimate` (a ``dask.bag.Bag`` or a
        sequence of loaders). Results keep this order.
    client : distributed.Client, optional
        The cluster to run on; default: the current client.
    states : dict, optional
        Group key to a state to continue (its batches first), for some or
        all groups.
    return_states : bool, default False
        Also return each group's final :class:`~popstats.EstimationState`.
    split_every, progress
        As for :func:`estimate` (one progress bar for all partitions).
    [estimation options]

    Returns
    -------
    dict or (dict, dict)
        Group key to its :class:`~popstats.PopulationStatistics`; with
        ``return_states=True``, also group key to its final state.

    Raises
    ------
    PopstatsError
        As :func:`estimate`; errors name the group.

    Notes
    -----
    As for :func:`estimate`: with ``mode=None`` the workers compile in this
    process's ``pytensor.config.mode``; states merge in partition order.

    Examples
    --------
    Two domains, each with its own statistics, then a graph that selects
    one by an integer input:

    >>> import functools, numpy as np, pytensor, pytensor.tensor as pt, popstats
    >>> import popstats.dask
    >>> from distributed import Client
    >>> x = pt.matrix("x")
    >>> y = x - popstats.bn_statistic(x.mean(axis=0), label="mean")
    >>> def load(loc):  # runs on a worker
    ...     return [{"x": np.full((4, 2), loc)}]
    >>> groups = {"day": [functools.partial(load, 1.0)],
    ...           "night": [functools.partial(load, v) for v in (-1.0, -3.0)]}
    >>> with Client(processes=False, n_workers=1, dashboard_address=":0") as client:
    ...     sets = popstats.dask.estimate_groups([x], y, groups, client=client)
    >>> {name: stats["mean"].value.tolist() for name, stats in sets.items()}
    {'day': [1.0, 1.0], 'night': [-2.0, -2.0]}
    >>> domain = pt.iscalar("domain")
    >>> y_inf = popstats.rewrite(y, list(sets.values()), select=domain)
    """
    call = "popstats.dask.estimate_groups"
    checked = EstimationOptions.check(call, options)
    return_states = check_bool(return_states, f"{call}(return_states=...)")
    if not isinstance(groups, Mapping) or not groups:
        raise PopstatsError(
            f"{call}(groups=...): expected a non-empty dict from group key to "
            f"that group's partitions (a dask.bag.Bag or a sequence of "
            f"loaders), got {describe_value(groups)}. For one group, use "
            f"popstats.dask.estimate."
        )
    states = {} if states is None else states
    unknown = set(states) - set(groups) if isinstance(states, Mapping) else set()
    if not isinstance(states, Mapping) or unknown:
        got = (f"states of {', '.join(sorted(map(repr, unknown)))}, not in groups "
               f"({', '.join(map(repr, groups))})" if unknown
               else describe_value(states))
        raise PopstatsError(
            f"{call}(states=...): expected a dict from group key (of groups) to "
            f"a state to continue that group's pass, got {got}."
        )
    check_progress(progress, call)
    if checked.upstream == "population":
        stats, finals = fixed_point_groups(call, inputs, outputs, dict(groups),
                                           dict(states), split_every, checked,
                                           client, progress)
        return (stats, finals) if return_states else stats
    plan = plan_pass(
        call, inputs, outputs, dict(groups), dict(states), split_every, checked,
    )
    finals = run_pass(call, plan, client, progress)
    stats = finalize_groups(call, plan.run, finals)
    return (stats, finals) if return_states else stats
