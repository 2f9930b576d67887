"""Host accumulation: add a batch's statistics to the estimator states.

:class:`HostAccumulator` takes the values the compiled estimation function
returned for one batch (per statistic: value, count, steps pooled) and
updates each statistic's estimator state
(:func:`~popstats._src.estimation.estimators.update`) in NumPy,
float64, after checking the batch's values: finite, counts valid
(:mod:`~popstats._src.estimation.checks`, shared with the other engines),
the same shape as earlier batches. Statistics outside loops estimated with the plain
mean share flat buffers (their ``mean``, and the ``xx`` and ``xk`` behind
their standard errors), so a batch costs a few NumPy calls for all of them
(:meth:`HostAccumulator._add_plain`).

Stage: estimation (:mod:`popstats._src.estimation`). Members:
:class:`HostAccumulator`, :func:`copy_state`, :func:`describe_arrays`,
:func:`fits`, :func:`shape_error`, :func:`stat_shape`.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import EllipsisType

import numpy as np

from popstats._src.errors import PopstatsError
from popstats._src.estimation import estimators as est
from popstats._src.estimation import in_place
from popstats._src.estimation.checks import check_cells, raise_failed, reached_cells
from popstats._src.estimation.state import EstimationState
from popstats._src.export.exporter import Site

__all__ = ["HostAccumulator", "copy_state", "describe_arrays", "fits", "shape_error",
           "stat_shape"]


class HostAccumulator:
    """Adds batches to estimator states on the host.

    Parameters
    ----------
    sites, estimators, partners
        As in :class:`~popstats.Estimation` (``partners[i]``: the index of
        the mean paired with a ``"pooled"`` variance, else None).
    slots
        Per statistic, the positions of (value, count, weight) among the
        compiled function's outputs (None: absent).
    max_steps : int or None
        Steps kept per time axis.
    call : str
        The public call, named in errors.
    """

    def __init__(
        self,
        sites: Sequence[Site],
        estimators: Sequence[est.Estimator],
        partners: Sequence[int | None],
        slots: Sequence[tuple[int | None, ...]],
        max_steps: int | None,
        call: str,
    ) -> None:
        self.sites = tuple(sites)
        self.estimators = tuple(estimators)
        self.partners = tuple(partners)
        self.max_steps = max_steps
        self.call = call
        # Statistics outside loops with the plain mean (no weight; a count
        # only says whether the batch reached them): updated together (see
        # _add_plain).
        self._plain = tuple(
            i
            for i, (site, estimator) in enumerate(
                zip(self.sites, self.estimators, strict=True)
            )
            if site.time_axes == 0
            and estimator.name == "mean"
            and tuple(slots[i])[2] is None  # no weight
        )
        self._counted = tuple(i for i in self._plain if slots[i][1] is not None)
        self._flat: tuple | None = None
        self._scratch: dict[int, list[np.ndarray]] = {}

    def add(self, states: list, per_site: list, index: int) -> list:
        """Add batch ``index`` (``per_site[i]``: value, count, weight) to
        ``states`` (owned by the pass: updated in place); returns them."""
        done = self._add_plain(states, per_site)
        for i, (value, count, weight) in enumerate(per_site):
            if i in done:
                continue
            partner = self.partners[i]
            mean = None if partner is None else self._cap(per_site[partner][0], i)
            states[i] = self._add(i, states[i], value, count, weight, mean, index)
        if self._plain and not done:
            self._link_plain(states)
        return states

    def _add_plain(self, states: list, per_site: list) -> frozenset[int]:
        """Update every plain-mean statistic outside loops in one go.

        Statistics outside loops estimated with ``"mean"`` share one flat
        float64 buffer (their state arrays are views into it), so a batch
        costs a few NumPy calls instead of several per statistic. Returns the
        indices handled; none when the states are not linked to the buffer
        (first batch, a loaded or merged state) or anything needs the checks
        of the per-statistic path (a non-finite value, a changed shape, a
        count that is not a positive number).
        """
        flat = self._flat
        plain = self._plain
        if flat is None or not all(
            states[i].get("mean") is view
            for i, view in zip(plain, flat[0], strict=True)
        ):
            return frozenset()
        values = [np.asarray(per_site[i][0]) for i in plain]
        if any(v.shape != shape for v, shape in zip(values, flat[4], strict=True)):
            return frozenset()
        if self._counted:  # every count a positive number: the batch reached all
            counts = np.array([per_site[i][1] for i in self._counted], np.float64)
            if not (np.isfinite(counts) & (counts > 0)).all():
                return frozenset()
        joined = np.concatenate([v.ravel() for v in values])
        if not np.isfinite(joined).all():
            return frozenset()
        _, mean, n, w, _, sizes, xx, xk = flat
        n += 1
        w += 1.0
        # fm.mean_step and fm.equal_step, in place (in_place.mean_fields)
        in_place.mean_fields(mean, xx, xk, joined, np.repeat(1.0 / w, sizes),
                             np.repeat((w - 1.0) * 0.5, sizes),
                             self._scratch_of(-1, mean.shape))
        return frozenset(plain)

    def _link_plain(self, states: list) -> None:
        """Point the plain statistics' state arrays into one flat buffer."""
        plain = self._plain
        arrays = [states[i] for i in plain]
        if any(not arrays_i for arrays_i in arrays):
            return
        shapes = tuple(a["mean"].shape for a in arrays)
        sizes = np.array([int(np.prod(shape)) for shape in shapes])
        flat = {k: np.concatenate([a[k].ravel() for a in arrays])
                for k in ("mean", "xx", "xk")}
        n = np.array([int(a["n"]) for a in arrays], dtype=np.int64)
        w = np.array([float(a["w"]) for a in arrays], dtype=np.float64)
        views, start = [], 0
        for j, (a, shape, size) in enumerate(zip(arrays, shapes, sizes, strict=True)):
            for k, buffer in flat.items():
                a[k] = buffer[start : start + size].reshape(shape)
            a["n"] = n[j : j + 1].reshape(())
            a["w"] = w[j : j + 1].reshape(())
            views.append(a["mean"])
            start += size
        self._flat = (tuple(views), flat["mean"], n, w, shapes, sizes, flat["xx"],
                      flat["xk"])

    def _cap(self, array: np.ndarray | None, i: int) -> np.ndarray | None:
        if array is None or self.max_steps is None:
            return array
        axes = self.sites[i].time_axes
        return array[(slice(0, self.max_steps),) * axes]

    def _add(self, i, state, value, count, weight, mean, index):
        site, estimator = self.sites[i], self.estimators[i]
        axes = site.time_axes
        value = self._cap(np.asarray(value), i)
        count = self._cap(None if count is None else np.asarray(count, "float64"), i)
        weight = self._cap(None if weight is None else np.asarray(weight), i)
        reached = reached_cells(np, value.shape[:axes], count, weight)
        raise_failed(check_cells(np, value, count, reached, estimator, site.role),
                     self.call, site, estimator, index, count)
        if not reached.any():
            # no cell reached (count 0, a pooled loop with no step, or a loop
            # of zero steps, whose stacked outputs PyTensor may shape unlike
            # their static shape): its shape may not be the real one
            return state
        steps, shape = value.shape[:axes], value.shape[axes:]
        if not state:
            state = est.init(estimator, site.role, shape, axes)
        elif stat_shape(state, axes) != shape:
            raise shape_error(self.call, site, shape, stat_shape(state, axes), index)
        if state["n"].shape != steps:
            state = est.grow(state, steps)
        scratch = self._scratch_of(i, state["n"].shape + shape, steps,
                                   in_place.scratch_needed(estimator, site.role))
        return est.update(estimator, site.role, state, value, count, reached, mean,
                          scratch)

    def _scratch_of(self, i: int, full: tuple[int, ...], steps: tuple[int, ...] = (),
                    count: int = 2) -> list[np.ndarray]:
        """Statistic ``i``'s scratch arrays for :mod:`in_place` (-1: the
        plain statistics' flat buffer), of its state's shape ``full``, cut
        to the batch's ``steps``. Kept from batch to batch: new arrays of
        this size would be mapped fresh from the system every batch."""
        arrays = self._scratch.get(i)
        if arrays is None or arrays[0].shape != full:
            arrays = [np.empty(full) for _ in range(count)]
            self._scratch[i] = arrays
        cells: tuple[slice | EllipsisType, ...] = (
            *(slice(0, n) for n in steps), Ellipsis)
        return [a[cells] for a in arrays]


def fits(arrays: dict[str, np.ndarray], site: Site, estimator: est.Estimator) -> bool:
    """Whether a statistic's state arrays are those of its estimator and shape."""
    if set(arrays) != set(est.fields(estimator, site.role)):
        return False
    axes = site.time_axes
    steps = np.shape(arrays["n"])
    if len(steps) != axes:
        return False
    for field, array in arrays.items():
        shape = np.shape(array)
        if shape[:axes] != steps:
            return False
        if field in est.VALUE_FIELDS:
            own = shape[axes:]
            if len(own) != len(site.shape) or any(
                s is not None and s != o for s, o in zip(site.shape, own, strict=True)
            ):
                return False
        elif len(shape) != axes:
            return False
    return True


def describe_arrays(arrays: dict[str, np.ndarray]) -> str:
    return ", ".join(f"{k} {np.shape(v)}" for k, v in sorted(arrays.items()))


def stat_shape(state: dict[str, np.ndarray], axes: int) -> tuple[int, ...]:
    """The statistic's own shape in an estimator state (after its time axes)."""
    value = state["acc"] if "acc" in state else state["mean"]
    return value.shape[axes:]


def shape_error(call, site, shape, known, index) -> PopstatsError:
    return PopstatsError(
        f"{call}(batches=...): statistic {site.name!r} (in {site.where}) has "
        f"shape {shape} in batch {index} but {known} in earlier batches. A "
        f"population statistic needs the same shape in every batch (apart from "
        f"time axes): check that feature sizes do not depend on the batch."
    )


def copy_state(state: EstimationState) -> EstimationState:
    """A state with arrays of its own."""
    states = tuple(
        {k: np.array(v, copy=True) for k, v in fields.items()}
        for fields in state.states
    )
    return EstimationState(state.spec, states, state.n_batches,
                           sizes=state.sizes)
