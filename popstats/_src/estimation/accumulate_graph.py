"""Graph accumulation: the estimators' updates inside the compiled function.

:class:`GraphAccumulator` keeps every statistic's estimator state (the
arrays of :func:`~popstats._src.estimation.estimators.fields`: ``n``, ``w``,
``mean``, ``m2``, ``acc``, ``decay``, and those behind the standard errors)
in shared variables, float64, and builds their update for one batch as
PyTensor expressions: the compiled estimation function computes the batch's
statistics and adds them to the accumulators in the same call, so a batch
costs one call whatever the number of statistics, and no statistic is copied
back to the host. The function returns a small vector of checks (values
finite, counts valid: :mod:`~popstats._src.estimation.checks`; shapes as
earlier batches), whether the batch fitted the accumulators, and the
batch's statistics (which it has computed anyway); a failed check is
explained by
:class:`~popstats._src.estimation.accumulate_host.HostAccumulator` on the
same batch, so errors read as with host accumulation.

The accumulators grow on the host, not in the graph. A batch fits when
every statistic it reaches has the shape known so far and no more time steps
than the accumulators' cells; it is then added in the graph (a batch with
fewer steps is padded to the cells; cells it does not reach -- beyond its
steps, count 0, or a pooled loop with no step -- are left unchanged). A
batch that does not fit -- the first one, whose shapes are not known yet,
and one with more time steps than any before -- leaves the accumulators as
they were, and the pass adds the batch's statistics, which the function
also returns, on the host, where the state grows, and puts the grown state
back (:class:`~popstats._src.estimation.passes.GraphPass`).

No ``ifelse``: the updates keep the old fields through an elementwise
``switch`` on whether the batch fitted, and every array has the
accumulators' shapes whatever the batch (padded, or cropped where it is
longer), so an update that is discarded computes no shape error. Growing
inside the graph, in lazy branches, took an array and a copy per field of
every statistic, and Numba evaluates both branches of an ``ifelse`` and
compiles one of many arrays very slowly (measured, 100 arrays: one
``ifelse`` 150 s, 100 of one array 40 s, none 28 s). On the tests' zoo of
12 statistics (Numba, no compile cache, 3.11) the compiled function had
767 nodes and compiled in 152 s; now 419 nodes and 104 s (52 s with host
accumulation). The formulas are
:func:`~popstats._src.estimation.formulas.update`'s, with PyTensor as the
array namespace, as the host's are with NumPy.

Stage: estimation (:mod:`popstats._src.estimation`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import pytensor
import pytensor.tensor as pt
from pytensor.tensor.sharedvar import TensorSharedVariable
from pytensor.tensor.variable import TensorVariable

from popstats._src.estimation import estimators as est
from popstats._src.estimation import formulas as fm
from popstats._src.estimation.checks import check_cells, passed, reached_cells
from popstats._src.estimation.state import EstimationState
from popstats._src.export.exporter import Site
from popstats._src.graph.alloc import alloc

__all__ = ["GraphAccumulator"]

#: per statistic its (value, count or None, weight or None) for one batch
Trio = tuple[TensorVariable, TensorVariable | None, TensorVariable | None]


def _fit(
    array: TensorVariable, shape: Sequence[TensorVariable], fill: float
) -> TensorVariable:
    """``array`` in the corner of a ``fill``-ed array of ``shape`` (cropped)."""
    if array.ndim == 0:
        return array
    # not pt.alloc: it would fold the sizes through the whole graph above
    out = alloc(np.asarray(fill, dtype=array.dtype), *shape)
    corner = tuple(
        slice(0, pt.minimum(array.shape[j], shape[j])) for j in range(array.ndim)
    )
    return pt.set_subtensor(out[corner], array[corner])


def _all_equal(a: Sequence, b: Sequence) -> TensorVariable:
    """Whether the sizes ``a`` and ``b`` are equal, one by one (True when
    both are empty)."""
    if not a:
        return pt.as_tensor(np.array(True))
    return pt.all(pt.eq(pt.stack(list(a)), pt.stack(list(b))))


def _all(conditions: Sequence[TensorVariable]) -> TensorVariable:
    """Whether every condition holds (True when there is none)."""
    if not conditions:
        return pt.as_tensor(np.array(True))
    return pt.all(pt.stack(list(conditions)))


def _empty(field: str, ndim: int, dtype: str) -> np.ndarray:
    """A field before any batch: no cells (a 0-d field holds its start value,
    as ``estimators.init`` gives: 1 for ``decay``, else 0)."""
    if ndim:
        return np.zeros((0,) * ndim, dtype=dtype)
    return np.array(fm.field_start(field), dtype=dtype)


class _Step(NamedTuple):
    """One statistic's part of a batch's update: its checks, whether it fits
    the accumulators, the cells it reached and its arrays padded to them."""

    ok: TensorVariable
    fit: TensorVariable
    live: TensorVariable
    padded: dict


class _Cells:
    """One statistic's batch arrays, capped at ``max_steps``."""

    def __init__(self, value, count, weight, axes, max_steps):
        cap = (slice(0, max_steps),) * axes if max_steps is not None else ()
        self.value = value[cap].astype("float64")
        self.count = None if count is None else count[cap].astype("float64")
        self.weight = None if weight is None else weight[cap]
        self.steps = [self.value.shape[j] for j in range(axes)]
        self.reached = reached_cells(pt, self.steps, self.count, self.weight)
        self.own = [self.value.shape[j] for j in range(axes, self.value.ndim)]
        self.axes = axes


class GraphAccumulator:
    """Estimator states in shared variables, updated by the compiled pass.

    Parameters
    ----------
    sites, estimators, partners, max_steps
        As in :class:`~popstats.Estimation`.
    outputs
        Per statistic (value, count or None, weight or None): the estimation
        graph's symbolic outputs for one batch.
    slots
        Per statistic the positions of its (value, count, weight) among
        those of ``outputs`` that are not None, in order (None: not marked).

    Attributes
    ----------
    outputs : list of TensorVariable
        What the compiled function returns: the checks (int8, one per
        statistic), whether the batch fitted the accumulators (int8, 0-d),
        then the batch's statistics as :meth:`per_site` reads them (the
        host's function's outputs).
    updates : list of (shared variable, TensorVariable)
        The accumulators' updates (unchanged where the batch did not fit).
    """

    def __init__(
        self,
        sites: Sequence[Site],
        estimators: Sequence[est.Estimator],
        partners: Sequence[int | None],
        outputs: Sequence[Trio],
        max_steps: int | None,
        slots: Sequence[tuple[int | None, ...]],
    ) -> None:
        self.sites = tuple(sites)
        self.estimators = tuple(estimators)
        self.shared: list[dict[str, TensorSharedVariable]] = []
        cells = []
        for site, estimator, (value, count, weight) in zip(
            self.sites, self.estimators, outputs, strict=True
        ):
            self.shared.append(self._fields(site, estimator, value.ndim))
            cells.append(_Cells(value, count, weight, site.time_axes, max_steps))
        # the batch's own outputs, as the host function returns them: a
        # batch that does not fit is added from them on the host
        flat = [v for trio in outputs for v in trio if v is not None]
        self.slots = tuple(slots)
        steps = []
        for i, (site, estimator) in enumerate(
            zip(self.sites, self.estimators, strict=True)
        ):
            partner = partners[i]
            mean = None if partner is None else cells[partner].value
            steps.append(self._prepare(site, estimator, self.shared[i], cells[i], mean))
        fit = _all([p.fit for p in steps])
        checks = []
        self.updates: list[tuple[TensorSharedVariable, TensorVariable]] = []
        for i, (site, estimator) in enumerate(
            zip(self.sites, self.estimators, strict=True)
        ):
            p = steps[i]
            count = p.padded.get("count", cells[i].count)
            value, count, mean = fm.mask(pt, p.live, p.padded["value"], count,
                                         p.padded.get("mean"))
            old = self.shared[i]
            new = fm.update(pt, estimator, site.role, dict(old), value, count,
                            p.live, mean)
            # a batch that does not fit leaves every accumulator as it was
            # (a switch, not an ifelse: see the module's docstring)
            self.updates.extend((old[k], pt.switch(fit, new[k], old[k]))
                                for k in new)
            checks.append(p.ok)
        self.outputs: list[TensorVariable] = [
            pt.stack(checks).astype("int8"), fit.astype("int8"), *flat]

    @staticmethod
    def _fields(site: Site, estimator: est.Estimator, ndim: int) -> dict:
        axes = site.time_axes
        names = est.fields(estimator, site.role)
        out = {}
        for field in names:
            width = ndim if field in est.VALUE_FIELDS else axes
            dtype = "int64" if field == "n" else "float64"
            out[field] = pytensor.shared(
                _empty(field, width, dtype), name=f"{site.name}.{field}",
                shape=(None,) * width,
            )
        return out

    def _prepare(self, site, estimator, old, c: _Cells, partner_mean) -> _Step:
        """One statistic's checks, whether its batch fits the accumulators,
        and its arrays padded (or cropped) to the accumulators' shapes."""
        role, axes = site.role, site.time_axes
        value = c.value
        # checks (on the batch's own cells), and the shape as earlier batches
        ok = passed(check_cells(pt, value, c.count, c.reached, estimator, role))
        value_field = old["acc"] if "acc" in old else old["mean"]
        empty = pt.eq(value_field.size, 0)
        known = [value_field.shape[j] for j in range(axes, value.ndim)]
        same = _all_equal(known, c.own)
        anywhere = pt.any(c.reached)
        ok = ok & (empty | same | ~anywhere)
        cells = [old["n"].shape[j] for j in range(axes)]
        # it fits: no more steps than the cells so far, and a shape known
        # and its own (or no cell reached: nothing to add, and the shape may
        # not be the statistic's, as in a loop of zero steps)
        within = _all([pt.le(s, k) for s, k in zip(c.steps, cells, strict=True)])
        fit = within & (~anywhere | (~empty & same))
        # the batch padded (cropped where it does not fit) to the
        # accumulators' shapes, which the update then has whatever the batch
        shape = [*cells, *known]
        live = _fit(c.reached, cells, False) if axes else c.reached
        padded = {"value": _fit(value, shape, 0.0)}
        if partner_mean is not None:
            padded["mean"] = _fit(partner_mean, shape, 0.0)
        if c.count is not None and axes:
            padded["count"] = _fit(c.count, cells, 0.0)
        return _Step(ok, fit, live, padded)

    def per_site(self, returned: Sequence[Any]) -> list:
        """Per statistic (value, count, weight) of a batch that did not fit,
        from what the function returned after its two first outputs (NumPy
        arrays)."""
        return [tuple(None if k is None else np.asarray(returned[k]) for k in slot)
                for slot in self.slots]

    # -- the state in the shared variables --------------------------------------

    def load(self, state: EstimationState) -> None:
        """Put ``state``'s arrays into the accumulators (copies)."""
        for fields, arrays in zip(self.shared, state.states, strict=True):
            for k, var in fields.items():
                if arrays:
                    var.set_value(np.array(arrays[k], dtype=var.dtype, copy=True))
                else:
                    var.set_value(_empty(k, var.ndim, var.dtype))

    def own_shapes(self) -> list[tuple[int, ...] | None]:
        """Per statistic, its own shape in the accumulators (None: not yet)."""
        out = []
        for fields, site in zip(self.shared, self.sites, strict=True):
            value = (fields["acc"] if "acc" in fields else fields["mean"]).get_value(
                borrow=True
            )
            # before any batch every axis is 0 (see _empty): shape not known
            empty = not any(np.shape(value))
            out.append(None if empty else tuple(np.shape(value)[site.time_axes:]))
        return out

    def read(self, spec, n_batches: int) -> EstimationState:
        """The accumulators as a state (copies); empty before any batch."""
        states = []
        for fields in self.shared:
            arrays = {k: np.array(v.get_value(borrow=True), copy=True)
                      for k, v in fields.items()}
            value = arrays["acc"] if "acc" in arrays else arrays["mean"]
            # never reached: every axis still 0, as before the first batch
            # (the host keeps such a state empty too)
            untouched = value.size == 0 and not any(value.shape)
            states.append({} if n_batches == 0 or untouched else arrays)
        return EstimationState(spec, tuple(states), n_batches)
