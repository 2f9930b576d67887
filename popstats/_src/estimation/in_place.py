"""Host accumulation's fast path: the estimators' update on NumPy arrays in place.

:func:`~popstats._src.estimation.formulas.update` is the one statement of
every estimator's update, for NumPy, PyTensor and JAX; on NumPy each of its
expressions makes a new array. With the fields behind the standard errors
a statistic's update is some 10 (``"mean"``) to 40 (the ``"pooled"``
variance) elementwise operations per batch, and new arrays of a few
hundred KB are mapped fresh from the system on every batch (glibc's
``mmap`` threshold is 128 KiB), so their page faults cost more than the
arithmetic (benchmarks/RESULTS.md, "Fixed-reference sums").

:func:`update` does the same operations, on the same operands, in the same
order, into the state's own arrays and a few scratch arrays per statistic
(``out=``), for the batches that reach every cell (all batches but those
where a mask left a step empty or a loop ran shorter than its count; those
take :func:`~popstats._src.estimation.formulas.update`). IEEE arithmetic
gives every operation one result, so the fields are those of
``formulas.update`` bit for bit: tests/test_in_place.py compares the two
for every estimator and role over many batches, and the graph engine's
tests compare host and graph accumulation. A change of a formula in
``formulas.update`` must be made here too; that test fails until it is.
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np

from popstats._src.estimation import formulas as fm
from popstats._src.export.time_modes import align_cells

__all__ = ["handles", "mean_fields", "scratch_needed", "update"]

Fields = dict[str, np.ndarray]


def scratch_needed(estimator: Any, role: str | None) -> int:
    """How many scratch arrays (float64, the value's shape) :func:`update`
    needs: 3 for a ``"pooled"`` variance or std, else 2."""
    return 3 if estimator.name == "pooled" and role in fm.SPREADS else 2


def handles(estimator: Any, role: str | None, reached: np.ndarray | None,
            count: np.ndarray | None) -> bool:
    """Whether :func:`update` takes this batch: every cell reached, and the
    count the estimator weighs by given."""
    if reached is not None:
        return False
    if estimator.name in ("weighted", "pooled"):
        return count is not None
    return estimator.name in ("mean", "unbiased", "ema")


def update(estimator: Any, role: str | None, view: Fields, value: np.ndarray,
           count: np.ndarray | None, mean: np.ndarray | None,
           scratch: list[np.ndarray]) -> None:
    """Add one batch that reached every cell to the fields ``view`` (updated
    in place), as :func:`~popstats._src.estimation.formulas.update` does.

    ``scratch`` holds :func:`scratch_needed` float64 arrays of ``value``'s shape
    (their contents are overwritten). Call only where :func:`handles`.
    """
    name = estimator.name
    first = view["n"] < 1  # cells no earlier batch reached (before n moves)
    view["n"] += 1
    if name == "ema":
        if estimator.unbiased and role in fm.SPREADS:
            value = fm.scale_bessel(np, value, fm.safe_counts(np, count), role)
        momentum = estimator.momentum
        acc, t = view["acc"], scratch[1]
        np.multiply(acc, 1.0 - momentum, out=acc)  # ema_step: acc (1 - m) + m x
        np.multiply(momentum, value, out=t)
        np.add(acc, t, out=acc)
        view["decay"][...] = view["decay"] * (1.0 - momentum)
        _equal_fields(view, value, scratch)
        return
    if name == "unbiased":
        if role in fm.SPREADS:
            value = fm.scale_bessel(np, value if role == "var" else value**2,
                                    fm.safe_counts(np, count), "var")
        name = "mean"  # unit weights: the same operations as "mean"
    if name == "mean":
        w = view["w"]
        w[...] = w + 1.0
        mean_fields(view["mean"], view["xx"], view["xk"], value,
                     align_cells(1.0 / w, value),
                     align_cells((w - 1.0) * 0.5, value), scratch)
        return
    w = cast(np.ndarray, count)  # given: handles() took the batch
    w_old = view["w"]
    w_total = w_old + w
    safe = np.where(w_total > 0, w_total, 1.0)
    d, t = scratch[0], scratch[1]
    if name == "pooled" and role in fm.SPREADS:
        c = scratch[2]
        mean = cast(np.ndarray, mean)  # the paired batch mean, always given
        variance = value if role == "var" else value**2
        np.subtract(mean, view["mean"], out=d)  # delta
        np.multiply(align_cells(w, value), variance, out=c)
        np.square(d, out=t)
        np.multiply(t, align_cells(w_old * w / safe, value), out=t)
        np.add(c, t, out=c)
        np.add(c, view["m2"], out=view["m2"])
        np.multiply(d, align_cells(w / safe, value), out=t)
        np.add(view["mean"], t, out=view["mean"])
        w_old[...] = w_total
        _equal_fields(view, variance, scratch)
        _pooled_sums(view, variance, mean, w, first, scratch)
        return
    # "weighted", and the "pooled" mean
    mean_field = view["mean"]
    np.subtract(value, mean_field, out=t)
    np.multiply(t, align_cells(w / safe, value), out=t)
    np.add(mean_field, t, out=mean_field)
    w_old[...] = w_total
    _equal_fields(view, value, scratch)
    _ratio_sums(view, value, w, first, scratch)


def mean_fields(mean: np.ndarray, xx: np.ndarray, xk: np.ndarray, x: np.ndarray,
                frac: Any, half: Any, scratch: list[np.ndarray]) -> None:
    """``mean`` moved towards ``x`` by ``frac`` (:func:`fm.mean_step`), and
    ``xx``, ``xk`` after it (:func:`fm.equal_step`, ``half`` being
    ``(n_new - 1) / 2``)."""
    d, t = scratch[0], scratch[1]
    np.subtract(x, mean, out=d)  # the delta of both
    np.multiply(d, frac, out=t)
    np.add(mean, t, out=mean)
    np.subtract(x, mean, out=t)
    np.multiply(d, t, out=t)
    np.add(xx, t, out=xx)
    np.multiply(d, half, out=t)
    np.add(xk, t, out=xk)


def _equal_fields(view: Fields, x: np.ndarray, scratch: list[np.ndarray]) -> None:
    """``xm``, ``xx``, ``xk`` after one batch of input ``x``
    (``formulas._equal_fields``; ``view["n"]`` already counts it)."""
    n_new = view["n"].astype(x.dtype)
    xm, d, t = view["xm"], scratch[0], scratch[1]
    np.subtract(x, xm, out=d)
    np.divide(d, align_cells(np.where(n_new > 0, n_new, 1.0), x), out=t)
    np.add(xm, t, out=xm)
    np.subtract(x, xm, out=t)
    np.multiply(d, t, out=t)
    np.add(view["xx"], t, out=view["xx"])
    np.multiply(d, align_cells((n_new - 1.0) * 0.5, x), out=t)
    np.add(view["xk"], t, out=view["xk"])


def _set_reference(target: np.ndarray, first: np.ndarray, x: np.ndarray) -> None:
    """``target`` takes ``x`` in the cells no earlier batch reached
    (``formulas._first``)."""
    if first.any():
        np.copyto(target, x, where=align_cells(first, x))


def _ratio_sums(view: Fields, x: np.ndarray, w: np.ndarray, first: np.ndarray,
                scratch: list[np.ndarray]) -> None:
    """``ref``, ``u``, ``p``, ``q`` after one batch (``formulas._ratio_step``)."""
    ref, e, t = view["ref"], scratch[0], scratch[1]
    _set_reference(ref, first, x)
    w2 = align_cells(w * w, x)
    np.subtract(x, ref, out=e)
    view["u"][...] = view["u"] + w * w
    np.multiply(w2, e, out=t)
    np.add(view["p"], t, out=view["p"])
    np.square(e, out=e)
    np.multiply(w2, e, out=e)
    np.add(view["q"], e, out=view["q"])


def _pooled_sums(view: Fields, v: np.ndarray, mu: np.ndarray, w: np.ndarray,
                 first: np.ndarray, scratch: list[np.ndarray]) -> None:
    """``ref``, ``refv``, ``u`` and the pooled variance's sums after one
    batch (``formulas._pooled_step``)."""
    ref, refv = view["ref"], view["refv"]
    _set_reference(ref, first, mu)
    _set_reference(refv, first, v)
    d, t, r = scratch
    np.subtract(mu, ref, out=d)
    np.multiply(d, d, out=r)
    np.add(v, r, out=r)
    np.subtract(r, refv, out=r)
    w2 = align_cells(w * w, v)
    for key, (a, b) in zip(fm.POOLED_SUMS, ((r, r), (r, d), (r, None), (d, d),
                                            (d, None)), strict=True):
        if b is None:
            np.multiply(w2, a, out=t)
        else:
            np.multiply(a, b, out=t)
            np.multiply(w2, t, out=t)
        np.add(view[key], t, out=view[key])
    view["u"][...] = view["u"] + w * w
