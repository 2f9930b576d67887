"""The one-call estimation entry point: :func:`estimate`.

Stage: estimation. :func:`estimate_as` is :func:`estimate` whose errors name
another public call (:func:`popstats.get_inference_graph`, drift).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

import pytensor
from pytensor.graph.basic import Variable

from popstats._src.estimation.estimation import Estimation
from popstats._src.estimation.statistics import PopulationStatistics

__all__ = ["estimate", "estimate_as"]


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
    from popstats._src.estimation.checkpoint import check_every
    from popstats._src.estimation.persistence import check_target
    from popstats._src.estimation.progress import check_progress

    check_progress(progress, call)
    check_every(checkpoint_every, f"{call}(checkpoint_every=...)")
    if checkpoint is not None:
        check_target(checkpoint, f"{call}(checkpoint=...)")
    run = Estimation(inputs, outputs, call=call, **options)
    state = run.run(batches, checkpoint=checkpoint,
                    checkpoint_every=checkpoint_every, progress=progress)
    return run.finalize(state)
