"""Graph accumulation: the estimators' updates inside the compiled function.

:class:`GraphAccumulator` keeps every statistic's estimator state (the
arrays of :func:`~popstats._src.estimation.estimators.fields`: ``n``, ``w``,
``mean``, ``m2``, ``acc``, ``decay``) in shared variables, float64, and
builds their update for one batch as PyTensor expressions: the compiled
estimation function computes the batch's statistics and adds them to the
accumulators in the same call, so a batch costs one call whatever the number
of statistics, and no statistic is copied back to the host. The function
returns only a small vector of checks (values finite, counts valid:
:mod:`~popstats._src.estimation.checks`; shapes as earlier batches); a
failed check is explained by
:class:`~popstats._src.estimation.accumulate_host.HostAccumulator`
on the same batch, so errors read as with host accumulation.

Arrays grow inside the graph: a batch with more time steps than seen so
far widens every time axis (new cells start empty), and the statistic's own
shape is taken from the first batch. Growing and padding are lazy branches
(``ifelse``): a batch with the steps and shape known so far (the usual case)
updates the fields as they are, without copying each into an array of its
own size first -- with the fields behind the standard errors, most of what
a batch cost here. There are two such branches for all statistics together
(fields grown, batches padded), not two per statistic: PyTensor runs an
``ifelse`` in Python. Cells a batch does not reach (beyond
its steps, count 0, or a pooled loop with no step) are left unchanged. The
formulas are :func:`~popstats._src.estimation.formulas.update`'s, with
PyTensor as the array namespace, as the host's are with NumPy.

Stage: estimation (:mod:`popstats._src.estimation`).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import NamedTuple, cast

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


def _unless(
    keep: TensorVariable, changed: dict, kept: dict
) -> dict:
    """``kept`` where ``keep`` holds, else ``changed``: a lazy ``ifelse``
    (the virtual machine evaluates one branch only), so that arrays that
    already fit are not copied into arrays of their own size."""
    keys = list(changed)
    same = [pt.as_tensor(kept[k]) for k in keys]
    other = [_like(pt.as_tensor(changed[k]), t) for k, t in zip(keys, same,
                                                                 strict=True)]
    # the changed arrays as the first branch: with the kept ones first,
    # PyTensor's C virtual machine (3.3) computes the other branch as well
    # when the kept arrays are the outputs of an earlier node
    out = _ifelse(~keep, other, same)
    return dict(zip(keys, out if isinstance(out, list | tuple) else [out],
                    strict=True))


def _unless_all(
    keep: Sequence[TensorVariable], changed: Sequence[dict], kept: Sequence[dict]
) -> list[dict]:
    """Per statistic, ``kept[i]`` where every ``keep`` holds, else
    ``changed[i]``: one lazy ``ifelse`` for them all."""
    if not keep:
        return []
    flat_changed = {(i, k): v for i, d in enumerate(changed) for k, v in d.items()}
    flat_kept = {(i, k): v for i, d in enumerate(kept) for k, v in d.items()}
    out = _unless(pt.all(pt.stack(list(keep))), flat_changed, flat_kept)
    split: list[dict] = [{} for _ in keep]
    for (i, k), v in out.items():
        split[i][k] = v
    return split


class _Step(NamedTuple):
    """One statistic's part of a batch's update, before the lazy branches."""

    ok: TensorVariable
    live: TensorVariable
    kept: TensorVariable
    grow: dict
    old: dict
    fits: TensorVariable
    padded: dict
    batch: dict


def _like(var: TensorVariable, other: TensorVariable) -> TensorVariable:
    """``var`` with ``other``'s static type (the same dtype and rank; ifelse
    needs equal types in both branches)."""
    if var.type == other.type:
        return var
    return cast(TensorVariable, other.type.filter_variable(var, allow_convert=True))


def _ifelse(cond: TensorVariable, then: list, other: list) -> list:
    """PyTensor's lazy ``ifelse`` (``pytensor.conditional`` from 3.1 on,
    where ``pytensor.ifelse`` is deprecated)."""
    try:
        module = importlib.import_module("pytensor.conditional.op")
    except ImportError:  # pragma: no cover - older PyTensor
        module = importlib.import_module("pytensor.ifelse")
    return module.ifelse(cond, then, other)


def _empty(field: str, ndim: int, dtype: str) -> np.ndarray:
    """A field before any batch: no cells (a 0-d field holds its start value,
    as ``estimators.init`` gives: 1 for ``decay``, else 0)."""
    if ndim:
        return np.zeros((0,) * ndim, dtype=dtype)
    return np.array(fm.field_start(field), dtype=dtype)


class _Cells:
    """One statistic's batch arrays, capped and padded to the grown cells."""

    def __init__(self, value, count, weight, axes, max_steps, n):
        cap = (slice(0, max_steps),) * axes if max_steps is not None else ()
        self.value = value[cap].astype("float64")
        self.count = None if count is None else count[cap].astype("float64")
        self.weight = None if weight is None else weight[cap]
        steps = [self.value.shape[j] for j in range(axes)]
        self.reached = reached_cells(pt, steps, self.count, self.weight)
        self.own = [self.value.shape[j] for j in range(axes, self.value.ndim)]
        self.cells = [pt.maximum(n.shape[j], steps[j]) for j in range(axes)]
        self.axes = axes

    def pad(
        self, array: TensorVariable, fill: float = 0.0, own=None
    ) -> TensorVariable:
        """A batch array (cells first) padded to the grown cells (and to
        ``own`` trailing sizes, default its own)."""
        if own is None:
            own = [array.shape[j] for j in range(self.axes, array.ndim)]
        return _fit(array, [*self.cells, *own], fill)


class GraphAccumulator:
    """Estimator states in shared variables, updated by the compiled pass.

    Parameters
    ----------
    sites, estimators, partners, max_steps
        As in :class:`~popstats.Estimation`.
    outputs
        Per statistic (value, count or None, weight or None): the estimation
        graph's symbolic outputs for one batch.
    """

    def __init__(
        self,
        sites: Sequence[Site],
        estimators: Sequence[est.Estimator],
        partners: Sequence[int | None],
        outputs: Sequence[
            tuple[TensorVariable, TensorVariable | None, TensorVariable | None]
        ],
        max_steps: int | None,
    ) -> None:
        self.sites = tuple(sites)
        self.estimators = tuple(estimators)
        self.shared: list[dict[str, TensorSharedVariable]] = []
        self.updates: list[tuple[TensorSharedVariable, TensorVariable]] = []
        checks = []
        cells = []
        for site, estimator, (value, count, weight) in zip(
            self.sites, self.estimators, outputs, strict=True
        ):
            fields = self._fields(site, estimator, value.ndim)
            self.shared.append(fields)
            cells.append(
                _Cells(value, count, weight, site.time_axes, max_steps, fields["n"])
            )
        steps = []
        for i, (site, estimator) in enumerate(
            zip(self.sites, self.estimators, strict=True)
        ):
            partner = partners[i]
            mean = None if partner is None else cells[partner].value
            steps.append(self._prepare(site, estimator, self.shared[i], cells[i], mean))
        # One lazy branch for all statistics' grown fields and one for their
        # padded batches (not two per statistic: PyTensor runs each IfElse
        # in Python, a fixed cost per node and batch). A statistic that
        # already fits takes the other branch as an exact copy (its arrays
        # fitted to their own shape), so the values are the same either way.
        grown = _unless_all([p.kept for p in steps], [p.grow for p in steps],
                            [p.old for p in steps])
        batches = _unless_all([p.fits for p in steps], [p.padded for p in steps],
                              [p.batch for p in steps])
        for i, (site, estimator) in enumerate(
            zip(self.sites, self.estimators, strict=True)
        ):
            p, batch = steps[i], batches[i]
            count = batch.get("count", cells[i].count)
            value, count, mean = fm.mask(pt, p.live, batch["value"], count,
                                         batch.get("mean"))
            new = fm.update(pt, estimator, site.role, grown[i], value, count, p.live,
                            mean)
            self.updates.extend((self.shared[i][k], new[k]) for k in new)
            checks.append(p.ok)
        self.checks = pt.stack(checks).astype("int8")

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
        """One statistic's checks, and both branches of its grown fields and
        of its padded batch, with the conditions that pick them."""
        role, axes = site.role, site.time_axes
        live = c.pad(c.reached, False) if axes else c.reached
        value = c.value
        # checks (on the batch's own cells), and the shape as earlier batches
        ok = passed(check_cells(pt, value, c.count, c.reached, estimator, role))
        value_field = old["acc"] if "acc" in old else old["mean"]
        empty = pt.eq(value_field.size, 0)
        known = [value_field.shape[j] for j in range(axes, value.ndim)]
        same = pt.all(pt.eq(pt.stack(known or [0]), pt.stack(c.own or [0])))
        anywhere = pt.any(c.reached)
        ok = ok & (empty | same | ~anywhere)
        # a batch that reaches no cell keeps the shape known so far (its own
        # may not be the statistic's: a loop of zero steps)
        own = [pt.switch(anywhere | empty, b, k) for b, k in
               zip(c.own, known, strict=True)]
        # grown state and padded batch; lazily, so that a batch that fits
        # the cells and shape known so far (the usual case) copies nothing
        shape = [*c.cells, *own]
        n_old = old["n"]
        kept = ~empty & same & _all_equal(
            [n_old.shape[j] for j in range(axes)], c.cells)
        grow = {
            k: _fit(v, shape if k in est.VALUE_FIELDS else c.cells,
                    fm.field_start(k))
            for k, v in old.items()
        }
        batch = {"value": value}
        if partner_mean is not None:
            batch["mean"] = partner_mean
        fits = _all_equal([v.shape[j] for v in batch.values() for j in range(v.ndim)],
                          shape * len(batch))
        padded = {k: c.pad(v, own=own) if axes else _fit(v, own, 0.0)
                  for k, v in batch.items()}
        if c.count is not None and axes:
            batch["count"], padded["count"] = c.count, c.pad(c.count)
        return _Step(ok, live, kept, grow, dict(old), fits, padded, batch)

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
