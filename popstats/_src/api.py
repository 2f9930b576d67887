"""The one-call entry points: :func:`estimate`, and estimate then rewrite."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any, overload

import pytensor
from pytensor.graph.basic import Variable

from popstats._src.errors import PopstatsError, describe_value
from popstats._src.estimator import Estimation
from popstats._src.exporter import as_variables
from popstats._src.rewriter import rewrite
from popstats._src.statistics import PopulationStatistics

__all__ = ["estimate", "estimate_as", "get_inference_graph"]


def estimate(
    inputs: Sequence[Variable],
    outputs: Variable | Sequence[Variable],
    batches: Iterable[Any],
    *,
    estimator: object = "mean",
    time: object = "step",
    max_steps: int | None = None,
    mode: str | pytensor.compile.Mode | None = None,
    dtypes: str = "convert",
    accumulate: str = "host",
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 100,
    progress: bool | str = "auto",
) -> PopulationStatistics:
    """Estimate population statistics over ``batches``.

    Parameters
    ----------
    inputs : sequence of Variable
        The graph's free inputs (those the batches provide).
    outputs : Variable or sequence of Variable
        Outputs of the training graph; every marked statistic they depend on
        is estimated.
    batches : iterable
        Any iterable (a one-shot generator is fine), each batch a dict keyed
        by input name or input variable, or a tuple/list in the order of
        ``inputs``.
    estimator : str, Estimator or dict, default "mean"
        ``"mean"`` (the plain average over batches, the original tool's),
        ``"weighted"`` (by element count), ``"pooled"`` (exact moments of all
        data, fvcore's PreciseBN), ``"unbiased"`` (variances times m/(m-1),
        PyTorch's ``update_bn``), ``"ema"`` (running average), an
        :class:`~popstats.Estimator` with options, or a dict from label
        pattern to those. See :doc:`/estimators` for which peer each equals.
    time : "step", "pooled", tuple or dict, default "step"
        Inside loops: one value per time step (``"step"``) or one for all
        steps (``"pooled"``: each batch's statistic over all its steps, then
        combined over batches by the estimator; see :doc:`/estimators`); a
        tuple gives the mode per loop level (outermost first), a dict maps
        name or label patterns to either.
    max_steps : int, optional
        Keep at most this many steps per time axis; later steps reuse the
        last kept one at inference.
    mode : str or Mode, optional
        Compilation mode of the estimation function.
    dtypes : {"convert", "strict"}, default "convert"
        Convert batch values to the inputs' dtypes when nothing that matters
        is lost, or refuse any other dtype; see :class:`Estimation`.
    accumulate : {"host", "graph"}, default "host"
        Where the batches are added up: in NumPy after each call, or in the
        compiled function (float64 accumulators in shared variables; a batch
        is one call, nothing copied back); the results are the same. See
        :class:`Estimation`.
    checkpoint, checkpoint_every
        Save the pass's state every so many batches and resume from it; see
        :meth:`Estimation.run`.
    progress : bool or "auto", default "auto"
        Show a progress bar (needs tqdm); ``"auto"``: only on a terminal.

    Returns
    -------
    PopulationStatistics
        Per statistic: the population value (per time step, over the batches
        that reached the step), coverage counts, number of batches.

    Raises
    ------
    PopstatsError
        For arguments popstats cannot use, batches that do not fit the
        inputs, and any failure while running a batch (naming the batch and
        the shapes and dtypes of its values; the cause is chained).

    Examples
    --------
    >>> import numpy as np, pytensor.tensor as pt, popstats
    >>> x = pt.matrix("x")
    >>> y = x - popstats.bn_statistic(x.mean(axis=0), label="mean")
    >>> batches = [{"x": np.full((4, 2), 1.0)}, {"x": np.full((2, 2), 3.0)}]
    >>> stats = popstats.estimate([x], y, batches)
    >>> stats["mean"].value
    array([2., 2.])
    """
    return estimate_as(
        "estimate", inputs, outputs, batches, estimator=estimator, time=time,
        max_steps=max_steps, mode=mode, dtypes=dtypes, accumulate=accumulate,
        checkpoint=checkpoint, checkpoint_every=checkpoint_every, progress=progress,
    )


def estimate_as(
    call: str,
    inputs: Sequence[Variable],
    outputs: Variable | Sequence[Variable],
    batches: Iterable[Any],
    *,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 100,
    progress: bool | str = "auto",
    **options: Any,
) -> PopulationStatistics:
    """:func:`estimate` whose errors name the public ``call``.

    The run's options are checked before the graph is exported or compiled.
    """
    from popstats._src.checkpoint import check_every
    from popstats._src.inspection.progress import check_progress
    from popstats._src.persistence import check_target

    check_progress(progress, call)
    check_every(checkpoint_every, f"{call}(checkpoint_every=...)")
    if checkpoint is not None:
        check_target(checkpoint, f"{call}(checkpoint=...)")
    run = Estimation(inputs, outputs, call=call, **options)
    state = run.run(batches, checkpoint=checkpoint,
                    checkpoint_every=checkpoint_every, progress=progress)
    return run.finalize(state)


@overload
def get_inference_graph(
    inputs: Sequence[Variable],
    outputs: Variable,
    batches: Iterable[Any],
    *,
    estimator: object = ...,
    time: object = ...,
    max_steps: int | None = ...,
    mode: str | pytensor.compile.Mode | None = ...,
    dtypes: str = ...,
    accumulate: str = ...,
    checkpoint: str | os.PathLike | None = ...,
    checkpoint_every: int = ...,
    progress: bool | str = ...,
    return_stats: bool = ...,
) -> Variable: ...
@overload
def get_inference_graph(
    inputs: Sequence[Variable],
    outputs: Sequence[Variable],
    batches: Iterable[Any],
    *,
    estimator: object = ...,
    time: object = ...,
    max_steps: int | None = ...,
    mode: str | pytensor.compile.Mode | None = ...,
    dtypes: str = ...,
    accumulate: str = ...,
    checkpoint: str | os.PathLike | None = ...,
    checkpoint_every: int = ...,
    progress: bool | str = ...,
    return_stats: bool = ...,
) -> Sequence[Variable]: ...
def get_inference_graph(
    inputs, outputs, batches, *, estimator="mean", time="step", max_steps=None,
    mode=None, dtypes="convert", accumulate="host", checkpoint=None,
    checkpoint_every=100, progress="auto", return_stats=False,
):
    """Estimate population statistics over ``batches`` and rewrite ``outputs``.

    Equivalent to ``rewrite(outputs, estimate(inputs, outputs, batches,
    **options))``; errors name ``get_inference_graph``.

    Parameters
    ----------
    inputs : sequence of Variable
        The graph's free inputs, which the batches give values for.
    outputs : Variable or sequence of Variable
        The training graph's outputs (built from marked statistics); a list,
        tuple or namedtuple keeps its structure.
    batches : iterable
        Training batches: dicts keyed by input name (or input variable), or
        tuples/lists in the order of ``inputs``. Any iterable, including a
        one-shot generator; it is consumed once.
    estimator, time, max_steps, mode, dtypes, accumulate, checkpoint, progress
        As for :func:`~popstats.estimate` (and ``checkpoint_every``): the
        estimator (``"mean"``,
        ``"weighted"``, ``"pooled"``, ``"unbiased"``, ``"ema"``, an
        :class:`~popstats.Estimator` or a dict by label pattern), per-step or
        pooled statistics in loops, a cap on steps, the compilation mode of
        the estimation pass, the dtype policy for batch values, where
        batches are added up, checkpointing and a progress bar.
    return_stats : bool, default False
        Also return the :class:`~popstats.PopulationStatistics`.

    Returns
    -------
    Variable or sequence of Variable
        The inference outputs, in the structure of ``outputs``; with
        ``return_stats=True``, a pair ``(outputs, stats)``.

    Examples
    --------
    >>> import numpy as np, pytensor, pytensor.tensor as pt, popstats
    >>> x = pt.matrix("x")
    >>> mean = popstats.bn_statistic(x.mean(axis=0), label="mean")
    >>> var = popstats.bn_statistic(x.var(axis=0), label="var")
    >>> y = (x - mean) / pt.sqrt(var + 1e-5)
    >>> rng = np.random.default_rng(0)
    >>> batches = ({"x": rng.normal(3.0, 2.0, (64, 2))} for _ in range(50))
    >>> y_inf = popstats.get_inference_graph([x], y, batches)
    >>> out = pytensor.function([x], y_inf)(np.array([[3.0, 5.0]]))
    >>> np.round(out, 1)  # one example, normalized with population statistics
    array([[0., 1.]])
    """
    call = "get_inference_graph"
    if not isinstance(return_stats, bool):
        raise PopstatsError(
            f"{call}(return_stats=...): expected True or False, got "
            f"{describe_value(return_stats)}."
        )
    outs = as_variables(outputs, call)
    stats = estimate_as(
        call, inputs, outs, batches, estimator=estimator, time=time,
        max_steps=max_steps, mode=mode, dtypes=dtypes, accumulate=accumulate,
        checkpoint=checkpoint, checkpoint_every=checkpoint_every, progress=progress,
    )
    result = rewrite(outputs, stats)
    return (result, stats) if return_stats else result
