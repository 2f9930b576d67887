"""The estimators' formulas, written once for every array namespace.

Estimation stage. The arithmetic of the estimators of
:mod:`~popstats._src.estimation.estimators`, written against an array
namespace ``xp``: NumPy (``numpy``) for host accumulation
(:mod:`~popstats._src.estimation.accumulate_host`), PyTensor
(``pytensor.tensor``) for graph accumulation
(:mod:`~popstats._src.estimation.accumulate_graph`) and training-time
running averages (:mod:`~popstats._src.nn.running`), JAX (``jax.numpy``) for
device accumulation (:mod:`~popstats._src.estimation.accumulate_device`).
The three namespaces share what the formulas use (``where``, ``sqrt``,
``all``, arithmetic, ``astype``); :func:`_constant` is the one place they
differ. A per-cell array is broadcast against a value with the statistic's
shape by :func:`~popstats._src.export.time_modes.align_cells`.

Members:

- :func:`mask` -- a batch's arrays with the cells it did not reach zeroed;
- :func:`update` -- the fields of one statistic's state after one batch;
- :func:`merge` -- the state over the data of two states (exact);
- :func:`finalize` -- the population value per cell;
- :func:`mean_step` -- a weighted mean moved towards a value;
- :func:`ema_step` -- one step of the exponential moving average;
- :func:`ema_decay` -- the weight left to the start after ``n`` steps;
- :func:`ema_debiased` -- the moving average without its start-up bias;
- :func:`ema_start` -- where a moving average starts (0, or 1 for a spread);
- :func:`field_start` -- the value of a state field that counts nothing;
- :func:`bessel` -- the correction ``m / (m - 1)``;
- :func:`safe_counts` -- counts made safe for :func:`bessel` where unused;
- :func:`bessel_counts_ok` -- whether every reached cell has a count above 1;
- :func:`scale_bessel` -- a variance times :func:`bessel`, a std times its
  square root.

The states' fields are those of
:func:`~popstats._src.estimation.estimators.fields`. The functions here are
pure: they return new arrays and never raise; the callers check the batch
first (and explain a failed check).

Stage: estimation (:mod:`popstats._src.estimation`).
"""

from __future__ import annotations

from typing import Any

from popstats._src.export.time_modes import align_cells

__all__ = [
    "bessel",
    "bessel_counts_ok",
    "ema_debiased",
    "ema_decay",
    "ema_start",
    "ema_step",
    "field_start",
    "finalize",
    "mask",
    "mean_step",
    "merge",
    "safe_counts",
    "scale_bessel",
    "update",
]

Array = Any
Fields = dict[str, Any]
SPREADS = ("var", "std")


def _constant(xp: Any, number: float, dtype: Any) -> Any:
    """``number`` as the formulas use it next to arrays of ``dtype``.

    JAX gets an array of ``dtype`` (a Python number is weakly typed there,
    and would be float64 beside float32 arrays with x64 on); NumPy and
    PyTensor get the number as it is.
    """
    if xp.__name__.startswith("jax"):
        return xp.asarray(number, dtype)
    return number


def field_start(field: str) -> float:
    """The value of a state field over no batch: 1 for ``decay``, else 0."""
    return 1.0 if field == "decay" else 0


def ema_decay(momentum: float, n: Array) -> Array:
    """``(1 - momentum) ** n``: the ``decay`` field after ``n`` batches, in
    closed form (the product of :func:`update`'s factors)."""
    return (1.0 - momentum) ** n


def ema_debiased(xp: Any, acc: Array, decay: Array) -> Array:
    """The zero-debiased moving average ``acc / (1 - decay)`` (Kingma & Ba
    2015, Adam's bias correction), ``decay`` being ``(1 - momentum) ** n``
    per cell; 0 where no batch reached (``decay`` 1).

    ``acc`` holds the batches' terms without the start value, with weights
    ``momentum (1 - momentum) ** (n - k)`` that sum to ``1 - decay``; the
    quotient is their weighted average.
    """
    weight = 1.0 - decay
    return acc / align_cells(xp.where(weight > 0, weight, 1.0), acc)


def ema_start(role: str | None) -> float:
    """Where a moving average starts: 1 for a variance or std, else 0
    (PyTorch's running mean and variance)."""
    return 1.0 if role in SPREADS else 0.0


def bessel(m: Array) -> Array:
    """Bessel's correction ``m / (m - 1)``, ``m`` the number of elements."""
    return m / (m - 1)


def safe_counts(xp: Any, count: Array) -> Array:
    """``count`` where above 1, else 2: cells where :func:`bessel` is not
    used (not reached) get a finite factor."""
    return xp.where(count > 1, count, 2.0)


def bessel_counts_ok(xp: Any, count: Array, reached: Array) -> Array:
    """Whether every reached cell has a count above 1 (:func:`bessel` finite)."""
    return xp.all((count > 1) | ~reached)


def scale_bessel(xp: Any, value: Array, m: Array, role: str) -> Array:
    """A batch variance times ``m / (m - 1)``, a std times its square root.

    ``m`` has the statistic's time axes (if any); it is broadcast over the
    statistic's own axes.
    """
    factor = bessel(m)
    return value * align_cells(factor if role == "var" else xp.sqrt(factor), value)


def mean_step(mean: Array, value: Array, frac: Array) -> Array:
    """``mean`` moved towards ``value`` by ``frac`` (a batch's share of the
    weight so far, broadcast against ``value``)."""
    return mean + (value - mean) * frac


def ema_step(acc: Array, value: Array, momentum: Any) -> Array:
    """``acc (1 - momentum) + momentum value``: one moving-average step."""
    return acc * (1.0 - momentum) + momentum * value


def mask(xp: Any, reached: Array, value: Array, count: Array | None,
         mean: Array | None = None) -> tuple[Array, Array | None, Array | None]:
    """``value``, ``count`` and the paired ``mean`` with the cells the batch
    did not reach set to 0 (so that they add nothing; their values are not
    read)."""
    value = xp.where(align_cells(reached, value), value, 0.0)
    if mean is not None:
        mean = xp.where(align_cells(reached, mean), mean, 0.0)
    if count is not None:
        count = xp.where(reached, count, 0.0)
    return value, count, mean


def update(xp: Any, estimator: Any, role: str | None, old: Fields, value: Array,
           count: Array | None, reached: Array | None,
           mean: Array | None) -> Fields:
    """The fields of one statistic's state after one batch.

    Parameters
    ----------
    xp : module
        The array namespace of the arrays.
    estimator : Estimator
        The statistic's estimator.
    role : str or None
        The statistic's role.
    old : dict
        The state's fields over the batch's cells (grown to them).
    value, count, mean : array
        The batch's statistic, its element count (None: not given) and, for
        the ``"pooled"`` variance, the paired batch mean; masked
        (:func:`mask`) where the batch did not reach.
    reached : array of bool or None
        The cells the batch reached; None: all of them.

    Returns
    -------
    dict
        The new fields. Every reached cell counts as one batch: with equal
        weight for ``"mean"``, ``"unbiased"`` and ``"ema"``, by its ``count``
        for ``"weighted"`` and ``"pooled"``; a cell not reached is unchanged.
    """
    n = old["n"]
    new = {"n": n + (1 if reached is None else reached.astype(n.dtype))}
    name = estimator.name
    if name == "ema":
        if estimator.unbiased and role in SPREADS:
            value = scale_bessel(xp, value, safe_counts(xp, count), role)
        decay_m = _constant(xp, estimator.momentum, value.dtype)
        m = decay_m
        if reached is not None:
            decay_m = xp.where(reached, decay_m, 0.0)  # cells not reached: unchanged
            m = align_cells(decay_m, value)
        new["acc"] = ema_step(old["acc"], value, m)
        new["decay"] = old["decay"] * (1.0 - decay_m)
        return new
    if reached is None and name == "mean":
        # Unit weights: w_total == w + 1 > 0. The arithmetic below (so the
        # same result, bit for bit) without building weights per batch: on the
        # host this runs per statistic and batch.
        new["w"] = old["w"] + 1.0
        new["mean"] = mean_step(old["mean"], value, align_cells(1.0 / new["w"], value))
        return new
    if name == "unbiased" and role in SPREADS:
        value = scale_bessel(xp, value if role == "var" else value**2,
                             safe_counts(xp, count), "var")
    if name in ("weighted", "pooled"):
        w = count
    elif reached is None:
        w = xp.ones(value.shape[: n.ndim])
    else:
        w = reached.astype(old["w"].dtype)
    w_total = old["w"] + w
    safe = xp.where(w_total > 0, w_total, 1.0)
    if name == "pooled" and role in SPREADS:
        variance = value if role == "var" else value**2
        delta = mean - old["mean"]
        new["m2"] = old["m2"] + (
            align_cells(w, value) * variance
            + delta**2 * align_cells(old["w"] * w / safe, value)
        )
        new["mean"] = old["mean"] + delta * align_cells(w / safe, value)
    else:
        new["mean"] = mean_step(old["mean"], value, align_cells(w / safe, value))
    new["w"] = w_total
    return new


def merge(xp: Any, estimator: Any, a: Fields, b: Fields) -> Fields:
    """The fields over the data of ``a`` and then ``b`` (exact), both over
    the same cells: the parallel combination of Chan, Golub & LeVeque."""
    out = {"n": a["n"] + b["n"]}
    if estimator.name == "ema":
        out["decay"] = a["decay"] * b["decay"]
        out["acc"] = a["acc"] * align_cells(b["decay"], a["acc"]) + b["acc"]
        return out
    w = a["w"] + b["w"]
    frac = xp.where(w > 0, b["w"] / xp.where(w > 0, w, 1.0), 0.0)
    delta = b["mean"] - a["mean"]
    out["w"] = w
    out["mean"] = a["mean"] + delta * align_cells(frac, delta)
    if "m2" in a:
        out["m2"] = a["m2"] + b["m2"] + delta**2 * align_cells(a["w"] * frac, delta)
    return out


def finalize(xp: Any, estimator: Any, role: str | None, state: Fields) -> Array:
    """The population value per cell (cells no batch reached are left as 0).

    A plain mean is the state's own ``mean`` array, not a copy.
    """
    if estimator.name == "ema":
        acc = state["acc"]
        if estimator.debias:
            return ema_debiased(xp, acc, state["decay"])
        return acc + ema_start(role) * align_cells(state["decay"], acc)
    if "m2" in state:
        w = state["w"]
        variance = state["m2"] / align_cells(xp.where(w > 0, w, 1.0), state["m2"])
        return variance if role == "var" else xp.sqrt(variance)
    if estimator.name == "unbiased" and role == "std":
        return xp.sqrt(state["mean"])
    return state["mean"]
