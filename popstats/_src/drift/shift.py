"""The estimation shift: how far each population value is from what its layer sees.

Population statistics estimated on the training graph (``upstream="batch"``,
what every peer does) were measured on inputs normalized with *batch*
statistics upstream; at inference the layers upstream normalize with
population values, so a layer's input moves away from the statistics it
holds (Huang et al., *Delving into the Estimation Shift of Batch
Normalization in a Network*, CVPR 2022). :func:`shift` measures it on any
model: a pass over the inference graph of ``stats`` that records, at every
batch norm, the exact moments of its input there, compared with the values
it holds by drift's divergence (per unit and step).

Stage: drift. Members: :func:`shift`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from pytensor.graph.basic import Variable

from popstats._src.drift.comparison import drift
from popstats._src.drift.records import Drift
from popstats._src.errors import PopstatsError
from popstats._src.estimation.statistics import PopulationStatistics

__all__ = ["shift"]


def shift(stats: PopulationStatistics, inputs: Sequence[Variable],
          outputs: Variable | Sequence[Variable], batches: Iterable[Any], *,
          eps: float = 0.0, mode: object = None, match: str = "structure",
          worst: int = 5, dtypes: str = "convert", accumulate: str = "host",
          progress: bool | str = "auto") -> Drift:
    """The estimation shift of ``stats`` over ``batches``, per layer and step.

    ``drift(stats, inputs, outputs, batches, upstream="population",
    against="moments", ...)``: each layer's population mean and variance
    against the exact moments of its input in the graph rewritten with
    ``stats``, by the symmetric KL divergence of the two normal
    distributions, per unit and step (statistics outside mean/variance
    pairs: standardized difference). Over the estimation data, statistics
    from ``estimate(..., upstream="population", estimator="pooled")`` have
    a shift of 0 (up to rounding); ``"mean"``'s keep its small-batch
    variance bias. See :doc:`/upstream`; the arguments are
    :func:`~popstats.drift`'s. Means, variances and stds need a ``count``
    and a ``group`` (the exact moments are computed from them); statistics
    without a role are compared by their standardized difference, and
    ``stats`` holding no mean, variance or std at all is refused (there is
    no moment to measure: use :func:`~popstats.drift` with
    ``upstream="population"``).

    Returns
    -------
    Drift
        One record per layer (``mean``, ``max``, ``per_unit``,
        ``per_step``); pass it to :func:`~popstats.describe` (``shift=``) or
        :meth:`PopulationStatistics.report` (``shift=``) to show it.

    Examples
    --------
    >>> import numpy as np, pytensor, pytensor.tensor as pt, popstats
    >>> rng = np.random.default_rng(0)
    >>> x = pt.matrix("x")
    >>> h = x
    >>> for i in range(3):
    ...     W = pytensor.shared(rng.normal(size=(3, 3)), name=f"W{i}")
    ...     h = h @ W
    ...     n = h.shape[0]
    ...     m = popstats.bn_statistic(h.mean(0), f"bn{i}.mean", role="mean",
    ...                               group=f"bn{i}", count=n)
    ...     v = popstats.bn_statistic(h.var(0), f"bn{i}.var", role="var",
    ...                               group=f"bn{i}", count=n)
    ...     h = pt.tanh((h - m) / pt.sqrt(v + 1e-5))
    >>> batches = [{"x": rng.normal(size=(4, 3))} for _ in range(16)]
    >>> today = popstats.estimate([x], h, batches, estimator="pooled")
    >>> consistent = popstats.estimate([x], h, batches, estimator="pooled",
    ...                                upstream="population")
    >>> before = popstats.shift(today, [x], h, batches, eps=1e-5)
    >>> after = popstats.shift(consistent, [x], h, batches, eps=1e-5)
    >>> before["bn0"].mean == 0.0  # nothing upstream of the first layer
    True
    >>> before["bn2"].mean > 1e-3, after["bn2"].mean < 1e-12
    (True, True)
    """
    if isinstance(stats, PopulationStatistics) and not any(
            s.site.role in ("mean", "var", "std") for s in stats.values()):
        raise PopstatsError(
            f"shift(stats=...): none of the statistics ({', '.join(map(repr, stats))}) "
            f"has a role (mean, var or std), so there are no moments to measure "
            f"the shift of (the result would be zeros that mean nothing). Mark "
            f"the batch norms' moments with bn_statistic(..., role='mean' or "
            f"'var', group='layer', count=h.shape[0]) (popstats.nn's and "
            f"pytensor-ml's layers do), or compare statistics of any kind with "
            f"popstats.drift(..., upstream='population')."
        )
    try:
        return drift(stats, inputs, outputs, batches, eps=eps, mode=mode,
                     match=match, worst=worst, dtypes=dtypes, accumulate=accumulate,
                     upstream="population", against="moments", progress=progress)
    except PopstatsError as exc:  # the same error, naming this call
        message = str(exc)
        if not message.startswith("drift("):
            raise
        raise PopstatsError("shift(" + message.removeprefix("drift(")) from exc
