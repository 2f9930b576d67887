"""The one-call estimation entry point: :func:`estimate`.

Stage: estimation. :func:`estimate_as` is :func:`estimate` whose errors name
another public call (:func:`popstats.get_inference_graph`). Both take the
estimation options as keywords
(:class:`~popstats._src.estimation.options.EstimationOptions`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any, Unpack

from pytensor.graph.basic import Variable

from popstats._src.estimation.options import (
    EstimationOptions,
    OptionKeywords,
    takes_options,
)
from popstats._src.estimation.pass_object import Estimation
from popstats._src.estimation.plan import EstimationPlan
from popstats._src.estimation.statistics import PopulationStatistics

__all__ = ["estimate", "estimate_as"]


@takes_options
def estimate(
    inputs: Sequence[Variable],
    outputs: Variable | Sequence[Variable],
    batches: Iterable[Any],
    *,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 100,
    progress: bool | str = "auto",
    **options: Unpack[OptionKeywords],
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
    [estimation options]
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
        "estimate", inputs, outputs, batches,
        EstimationOptions.check("estimate", options), checkpoint=checkpoint,
        checkpoint_every=checkpoint_every, progress=progress,
    )


def estimate_as(
    call: str,
    inputs: Sequence[Variable],
    outputs: Variable | Sequence[Variable],
    batches: Iterable[Any],
    options: EstimationOptions,
    *,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 100,
    progress: bool | str = "auto",
) -> PopulationStatistics:
    """:func:`estimate` whose errors name the public ``call``.

    ``options`` are checked already (naming ``call``); the run's other
    arguments are checked before the graph is exported or compiled.
    """
    from popstats._src.estimation.persistence import check_target
    from popstats._src.estimation.progress import check_progress
    from popstats._src.estimation.state import check_every

    check_progress(progress, call)
    check_every(checkpoint_every, f"{call}(checkpoint_every=...)")
    if checkpoint is not None:
        check_target(checkpoint, f"{call}(checkpoint=...)")
    run = Estimation.of(EstimationPlan(inputs, outputs, options, call))
    state = run.run(batches, checkpoint=checkpoint,
                    checkpoint_every=checkpoint_every, progress=progress)
    return run.finalize(state)
