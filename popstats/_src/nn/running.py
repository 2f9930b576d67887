"""Running averages of batch statistics, updated while training.

:func:`running_average_updates` is what Lasagne, Blocks, Keras and PyTorch
users do: keep ``v <- (1 - momentum) v + momentum x`` per statistic (per step
inside loops) in shared variables updated by the training function; with
``unbiased=True`` a variance enters as ``m / (m - 1)`` times the batch
variance, as in PyTorch's ``running_var``. The result's
:meth:`RunningAverages.as_statistics` makes them a
:class:`~popstats.PopulationStatistics` for :func:`~popstats.rewrite`.

Stage: nn (:mod:`popstats._src.nn`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytensor
import pytensor.tensor as pt
from pytensor.graph.basic import Variable
from pytensor.tensor.variable import TensorVariable

from popstats._src.errors import (
    PopstatsError,
    check_int,
    check_number,
    describe_value,
)
from popstats._src.estimation import formulas as fm
from popstats._src.estimation.estimators import Estimator, fill_uncovered
from popstats._src.estimation.statistics import PopulationStatistics, Statistic
from popstats._src.export.exporter import Site, export
from popstats._src.export.time_modes import align_cells

__all__ = ["RunningAverages", "running_average_updates"]


class RunningAverages:
    """Running averages of the statistics of a training graph.

    Made by :func:`running_average_updates`. ``variables[name]`` is the
    shared running value of statistic ``name`` (shape ``(max_steps,) * depth
    + shape``), ``coverage[name]`` how many batches reached each step, and
    ``n_batches`` the number of updates applied; ``unbiased`` whether
    variances (and stds) are averaged with the ``m / (m - 1)`` correction.
    """

    def __init__(self, sites: Sequence[Site], variables: dict, coverage: dict,
                 n_batches: Any, momentum: float, max_steps: int | None,
                 unbiased: bool = False):
        self.sites = tuple(sites)
        self.variables = variables
        self.coverage = coverage
        self.n_batches = n_batches
        self.momentum = momentum
        self.max_steps = max_steps
        self.unbiased = unbiased

    def reset(self) -> None:
        """Back to the initial state (means 0, variances 1, no batches)."""
        for site in self.sites:
            var = self.variables[site.name]
            var.set_value(np.full_like(var.get_value(), _initial(site)))
            cov = self.coverage[site.name]
            cov.set_value(np.zeros_like(cov.get_value()))
        self.n_batches.set_value(np.int64(0))

    def as_statistics(self) -> PopulationStatistics:
        """The running values as population statistics (estimator ``"ema"``).

        Per-step values are cut to the steps some batch reached (steps no
        batch reached in between are filled from earlier ones), so
        :func:`~popstats.rewrite` clamps longer sequences to the last one.
        The estimator is ``Estimator("ema", momentum, unbiased=unbiased)``.
        """
        n = int(self.n_batches.get_value())
        if n == 0:
            raise PopstatsError(
                "RunningAverages.as_statistics(): no update was applied yet. Run "
                "the training function compiled with the updates first."
            )
        out = []
        estimator = Estimator("ema", self.momentum, unbiased=self.unbiased)
        for site in self.sites:
            value = np.asarray(self.variables[site.name].get_value(), np.float64)
            if self.unbiased and site.role in ("var", "std") and not np.isfinite(
                value
            ).all():
                raise PopstatsError(
                    f"RunningAverages.as_statistics(): the running {site.role} "
                    f"{site.name!r} is not finite. With unbiased=True each batch "
                    f"{site.role} is scaled by m/(m-1), infinite for a batch of "
                    f"m=1 element (PyTorch refuses such batches too). Train with "
                    f"batches of at least 2 elements, then running.reset() and "
                    f"train again, or use unbiased=False."
                )
            cov = np.asarray(self.coverage[site.name].get_value(), np.int64)
            depth = site.time_axes
            if depth:
                extent = tuple(_extent(cov, k) for k in range(depth))
                cut = tuple(slice(0, e) for e in extent)
                value, cov = fill_uncovered(value[cut], cov[cut]), cov[cut].copy()
            else:
                cov = np.asarray(n, np.int64)
            out.append(Statistic(site.name, site.label, site, value, cov, n,
                                 estimator))
        return PopulationStatistics(tuple(out))

    def __repr__(self) -> str:
        names = ", ".join(s.name for s in self.sites)
        extra = ", unbiased=True" if self.unbiased else ""
        return (f"RunningAverages([{names}], momentum={self.momentum}, "
                f"max_steps={self.max_steps}{extra})")


def _extent(coverage: np.ndarray, axis: int) -> int:
    """One past the last step along ``axis`` that some batch reached."""
    others = tuple(j for j in range(coverage.ndim) if j != axis)
    return int(np.max(np.nonzero(coverage.any(axis=others))[0])) + 1


def _initial(site: Site) -> float:
    return fm.ema_start(site.role)


def running_average_updates(
    outputs: Any,
    momentum: float = 0.1,
    max_steps: int | None = None,
    *,
    unbiased: bool = False,
) -> tuple:
    """Updates keeping running averages of every statistic while training.

    The running average of PyTorch, Lasagne, Blocks and Keras: means start at
    0, variances (and stds) at 1, and each training call applies
    ``v <- (1 - momentum) * v + momentum * batch_value``. Inside loops there
    is one running value per time step, for the first ``max_steps`` steps;
    a call updates only the steps its batch reached (later ones are ignored).

    By default ``batch_value`` is the statistic as the graph computes it, the
    biased batch variance for :func:`batch_norm` (as Keras and Flax average
    it). With ``unbiased=True`` a variance enters as ``m / (m - 1)`` times it
    (``m`` its count), a std as ``sqrt(m / (m - 1))`` times it: PyTorch's
    BatchNorm ``running_var``, exactly.

    Parameters
    ----------
    outputs : Variable or sequence of Variable
        Outputs of the training graph (the loss, say), holding statistics
        marked with :func:`~popstats.bn_statistic` (e.g. by :func:`batch_norm`).
    momentum : float, default 0.1
        In (0, 1]. Keras' ``momentum=0.99`` is ``0.01`` here.
    max_steps : int, optional
        Number of per-step running values per loop; required when a
        statistic is inside a Scan.
    unbiased : bool, default False
        Keyword only. Average variances (role ``"var"``) and stds (role
        ``"std"``) with the ``m / (m - 1)`` correction, as PyTorch does; they
        need a ``count`` (:func:`batch_norm` gives one) and batches of at
        least 2 elements (a batch of 1 makes the running value infinite).
        Means and statistics without a role are not affected.

    Returns
    -------
    (new_outputs, updates, running)
        ``new_outputs``: the outputs rebuilt in the graph that also computes
        the statistics (same structure as ``outputs``); compile them with
        ``updates`` (a dict for ``pytensor.function(updates=...)``) so each
        loop runs once. ``running``: a :class:`RunningAverages`.

    Raises
    ------
    PopstatsError
        For a bad ``momentum``, ``max_steps`` or ``unbiased``, statistics
        inside loops without ``max_steps``, statistics of unknown static
        shape, or, with ``unbiased=True``, a variance or std without a count.

    Examples
    --------
    >>> import numpy as np, pytensor, pytensor.tensor as pt, popstats
    >>> from popstats import nn
    >>> x = pt.tensor("x", shape=(None, 1))
    >>> bn = nn.batch_norm(x, axes=0, label="fc")
    >>> y, updates, running = nn.running_average_updates(bn.output, momentum=0.5)
    >>> train = pytensor.function([x], y, updates=updates)
    >>> _ = train(np.array([[2.0], [4.0]]))
    >>> running.variables["fc.mean"].get_value().tolist()
    [1.5]
    >>> running.variables["fc.var"].get_value().tolist()
    [1.0]
    >>> stats = running.as_statistics()
    >>> infer = pytensor.function([x], popstats.rewrite(bn.output, stats))

    PyTorch's running variance averages the unbiased batch variance (here
    ``2 / (2 - 1)`` times the biased ``1.0``):

    >>> y, updates, running = nn.running_average_updates(
    ...     bn.output, momentum=0.5, unbiased=True)
    >>> train = pytensor.function([x], y, updates=updates)
    >>> _ = train(np.array([[2.0], [4.0]]))
    >>> running.variables["fc.var"].get_value().tolist()
    [1.5]
    """
    momentum = check_number(momentum, "running_average_updates(momentum=...)",
                            minimum=0, maximum=1, above=True,
                            fix="PyTorch's default is 0.1.")
    max_steps = check_int(max_steps, "running_average_updates(max_steps=...)",
                          none=True, fix="Pass the longest sequence length to keep "
                          "per-step averages for, e.g. max_steps=100.")
    if not isinstance(unbiased, bool | np.bool_):
        raise PopstatsError(
            f"running_average_updates(unbiased=...): expected True or False, got "
            f"{describe_value(unbiased)}. True averages each batch variance times "
            f"m/(m-1), as PyTorch's running_var does; False (the default) the "
            f"biased variance, as Keras and Flax do."
        )
    unbiased = bool(unbiased)
    single = isinstance(outputs, Variable)
    eg = export(outputs)
    momentum = float(momentum)
    n_batches = pytensor.shared(np.int64(0), name="running.n_batches")
    updates: dict = {n_batches: n_batches + 1}
    variables, coverage = {}, {}
    for site, stat, count in zip(eg.sites, eg.outputs, eg.counts, strict=True):
        depth = site.time_axes
        if unbiased and site.role in ("var", "std"):
            if count is None:
                raise PopstatsError(
                    f"running_average_updates(unbiased=True): statistic "
                    f"{site.name!r} (role {site.role!r}) has no count, and the "
                    f"m/(m-1) correction needs the number of elements behind it. "
                    f"Pass count=... to bn_statistic (e.g. count=x.shape[0]; "
                    f"batch_norm does), or use unbiased=False."
                )
            # no safe counts: a batch of 1 element makes the running value
            # infinite (as_statistics refuses it), as in PyTorch
            stat = fm.scale_bessel(pt, stat, pt.as_tensor_variable(count), site.role)
        if depth and max_steps is None:
            raise PopstatsError(
                f"running_average_updates(max_steps=None): statistic {site.name!r} "
                f"is inside {site.where}, so it has one value per step. Pass "
                f"max_steps (the longest sequence to keep averages for)."
            )
        if None in site.shape:
            raise PopstatsError(
                f"running_average_updates(outputs=...): statistic {site.name!r} has "
                f"no static shape ({site.shape}). Give the normalized input a "
                f"static shape on the kept axes, e.g. pt.tensor(shape=(None, 64))."
            )
        shape = (max_steps,) * depth + tuple(site.shape)
        run = pytensor.shared(np.full(shape, _initial(site), site.dtype),
                              name=f"running.{site.name}", shape=shape)
        # read by popstats.update_running_stats (which cannot import nn)
        run.tag.popstats_running = site.name
        cov = pytensor.shared(np.zeros(shape[:depth], np.int64),
                              name=f"running.{site.name}.coverage", shape=shape[:depth])
        # a cell whose count is 0 (a mask left no element) is not reached:
        # its running value and coverage stay as they are
        if depth:
            cut = tuple(slice(0, pt.minimum(stat.shape[k], max_steps))
                        for k in range(depth))
            old = run[cut]
            new = fm.ema_step(old, stat[cut], momentum)
            reached = pt.ones(old.shape[:depth], dtype="bool")
            if count is not None:
                reached = pt.gt(count[cut], 0)
            new = pt.switch(align_cells(reached, new), new, old)
            updates[run] = pt.set_subtensor(old, pt.cast(new, run.dtype))
            updates[cov] = pt.inc_subtensor(cov[cut], pt.cast(reached, "int64"))
        else:
            new = fm.ema_step(run, stat, momentum)
            step: int | TensorVariable = 1
            if count is not None:
                reached = pt.gt(count, 0)
                new = pt.switch(reached, new, run)
                step = pt.cast(reached, "int64")
            updates[run] = pt.cast(new, run.dtype)
            updates[cov] = cov + step
        variables[site.name], coverage[site.name] = run, cov
    running = RunningAverages(eg.sites, variables, coverage, n_batches,
                              momentum, max_steps, unbiased)
    new_outputs = eg.replaced[0] if single else list(eg.replaced)
    return new_outputs, updates, running
