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
  square root;
- :func:`equal_step` -- the equal-weight moments behind a standard error
  after one more batch;
- :func:`standard_error` -- the standard error of the value per cell;
- :func:`trend` -- the t-statistic of a trend along the batches per cell.

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
    "equal_step",
    "field_start",
    "finalize",
    "mask",
    "mean_step",
    "merge",
    "safe_counts",
    "scale_bessel",
    "standard_error",
    "trend",
    "update",
]

Array = Any
Fields = dict[str, Any]
SPREADS = ("var", "std")
INF = float("inf")


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
        _equal_fields(xp, old, new, value, reached)
        return new
    if reached is None and name == "mean":
        # Unit weights: w_total == w + 1 > 0. The arithmetic below (so the
        # same result, bit for bit) without building weights per batch: on the
        # host this runs per statistic and batch.
        new["w"] = old["w"] + 1.0
        new["mean"] = mean_step(old["mean"], value, align_cells(1.0 / new["w"], value))
        new["xx"], new["xk"] = equal_step(old["mean"], new["mean"], old["xx"],
                                          old["xk"], value, new["w"])
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
        # the batch's terms first: PyTensor flattens ``a + (b + c)`` into
        # ``a + b + c``, which would round otherwise than NumPy does
        new["m2"] = (
            align_cells(w, value) * variance
            + delta**2 * align_cells(old["w"] * w / safe, value)
        ) + old["m2"]
        new["mean"] = old["mean"] + delta * align_cells(w / safe, value)
        new["w"] = w_total
        _equal_fields(xp, old, new, variance, reached)
        _pooled_step(xp, old, new, variance, mean, w)
        return new
    # mean_step's arithmetic
    new["mean"] = old["mean"] + (value - old["mean"]) * align_cells(w / safe, value)
    new["w"] = w_total
    if name in ("weighted", "pooled"):
        _equal_fields(xp, old, new, value, reached)
        _ratio_step(xp, old, new, value, w)
    else:  # "mean", "unbiased": the mean is the equal-weight mean itself
        xx, xk = equal_step(old["mean"], new["mean"], old["xx"], old["xk"], value,
                            new["w"])
        new["xx"], new["xk"] = _keep(xp, reached, (xx, xk), (old["xx"], old["xk"]))
    return new


# -- standard errors: the fields behind them ----------------------------------


def equal_step(xm: Array, xm_new: Array, xx: Array, xk: Array, x: Array,
               n_new: Array) -> tuple[Array, Array]:
    """Welford's update of ``xx`` (the sum of squared deviations of the
    batches' inputs ``x_b`` from their mean ``xm``) and ``xk`` (their
    co-moment with the batch ordinal ``k_b = 1..n``) for one more batch;
    ``xm`` and ``xm_new`` the mean before and after it, ``n_new`` the
    batches after it, per cell.

    The ordinal's deviation from its new mean ``(n + 1) / 2`` is
    ``(n - 1) / 2`` for the newest batch.
    """
    delta = x - xm
    return (xx + delta * (x - xm_new),
            xk + delta * align_cells((n_new - 1.0) * 0.5, x))


def _keep(xp: Any, reached: Array | None, new: tuple, old: tuple) -> tuple:
    """``new`` where the batch reached, ``old`` elsewhere."""
    if reached is None:
        return new
    return tuple(xp.where(align_cells(reached, a), a, b)
                 for a, b in zip(new, old, strict=True))


def _equal_fields(xp: Any, old: Fields, new: Fields, x: Array,
                  reached: Array | None) -> None:
    """The equal-weight fields ``xm``, ``xx``, ``xk`` after one batch of
    input ``x`` (estimators whose value is not the equal-weight mean)."""
    n_new = new["n"].astype(x.dtype)
    # a division, not a product with 1 / n: PyTensor rewrites the latter
    # into the former, which would not give the host's bits
    xm = old["xm"] + (x - old["xm"]) / align_cells(xp.where(n_new > 0, n_new, 1.0), x)
    xx, xk = equal_step(old["xm"], xm, old["xx"], old["xk"], x, n_new)
    new["xm"], new["xx"], new["xk"] = _keep(
        xp, reached, (xm, xx, xk), (old["xm"], old["xx"], old["xk"]))


def _ratio_shift(p: Array, q: Array, u: Array, d: Array) -> tuple[Array, Array]:
    """``p = sum w^2 (x - c)`` and ``q = sum w^2 (x - c)^2`` recentred on
    ``c + d`` (``u = sum w^2``, per cell)."""
    u = align_cells(u, d)
    return p - d * u, q - 2.0 * d * p + d**2 * u


def _first(xp: Any, old: Fields, x: Array, new_value: Array,
           old_value: Array) -> Array:
    """``new_value`` in the cells no earlier batch reached, else
    ``old_value``: a reference is the first batch's value, then fixed."""
    # ``< 1``, not ``== 0``: a PyTensor variable's ``==`` is identity
    return xp.where(align_cells(old["n"] < 1, x), new_value, old_value)


def _ratio_step(xp: Any, old: Fields, new: Fields, x: Array, w: Array) -> None:
    """``u``, ``p``, ``q`` of the ratio estimator ``R = sum w x / sum w``
    after one batch (weight 0 where it did not reach: nothing changes).

    The sums are kept around a fixed reference per cell and unit, ``ref``
    (the first batch's value), so a batch adds three products; they are
    recentred on ``R`` (:func:`_ratio_shift`) only where read
    (:func:`standard_error`, :func:`merge`).
    """
    ref = _first(xp, old, x, x, old["ref"])
    w2 = align_cells(w * w, x)
    e = x - ref
    new["ref"] = ref
    new["u"] = old["u"] + w * w
    new["p"] = old["p"] + w2 * e
    new["q"] = old["q"] + w2 * e**2


#: the pooled variance's sums over ``w_b^2`` of ``r^2, r d, r, d^2, d``
POOLED_SUMS = ("srr", "srd", "sr", "sdd", "sd")


def _pooled_shift(s: Fields, u: Array, a: Array, c: Array) -> Fields:
    """The pooled variance's sums (:data:`POOLED_SUMS`) recentred when the
    reference mean moves by ``a`` and the reference variance by ``c``: each
    residual ``r = v + d^2 - V`` becomes ``r - 2 a d + (a^2 - c)``, each
    ``d = mu - M`` becomes ``d - a``."""
    u = align_cells(u, a)
    e = a * a - c
    srr, srd, sr, sdd, sd = (s[k] for k in POOLED_SUMS)
    return {
        "srr": (srr - 4.0 * a * srd + 2.0 * e * sr + 4.0 * a * a * sdd
                - 4.0 * a * e * sd + e * e * u),
        "srd": srd - a * sr - 2.0 * a * sdd + (2.0 * a * a + e) * sd - e * a * u,
        "sr": sr - 2.0 * a * sd + e * u,
        "sdd": sdd - 2.0 * a * sd + a * a * u,
        "sd": sd - a * u,
    }


def _pooled_variance(xp: Any, m2: Array, w: Array) -> Array:
    return m2 / align_cells(xp.where(w > 0, w, 1.0), m2)


def _pooled_step(xp: Any, old: Fields, new: Fields, v: Array, mu: Array,
                 w: Array) -> None:
    """The pooled variance's sums after one batch (variance ``v``, mean
    ``mu``, weight ``w``; 0 where it did not reach: nothing changes).

    The residuals are taken against a fixed reference per cell and unit,
    the first batch's mean ``ref`` and variance ``refv`` (``d = mu - ref``,
    ``r = v + d^2 - refv``), so a batch adds five products; the sums are
    recentred on the pooled mean and variance (:func:`_pooled_shift`) only
    where read (:func:`standard_error`, :func:`merge`).
    """
    ref = _first(xp, old, v, mu, old["ref"])
    refv = _first(xp, old, v, v, old["refv"])
    d = mu - ref
    r = v + d * d - refv
    w2 = align_cells(w * w, v)
    for key, term in zip(POOLED_SUMS, (r * r, r * d, r, d * d, d), strict=True):
        new[key] = old[key] + w2 * term
    new["ref"], new["refv"] = ref, refv
    new["u"] = old["u"] + w * w


def _pooled_centred(xp: Any, state: Fields) -> Fields:
    """The pooled variance's sums recentred on the state's pooled mean and
    variance (from its reference, :func:`_pooled_step`)."""
    return _pooled_shift(state, state["u"], state["mean"] - state["ref"],
                         _pooled_variance(xp, state["m2"], state["w"])
                         - state["refv"])


def merge(xp: Any, estimator: Any, a: Fields, b: Fields) -> Fields:
    """The fields over the data of ``a`` and then ``b`` (exact), both over
    the same cells: the parallel combination of Chan, Golub & LeVeque."""
    out = {"n": a["n"] + b["n"]}
    if estimator.name == "ema":
        out["decay"] = a["decay"] * b["decay"]
        out["acc"] = a["acc"] * align_cells(b["decay"], a["acc"]) + b["acc"]
        _merge_equal(xp, a, b, out)
        return out
    w = a["w"] + b["w"]
    frac = xp.where(w > 0, b["w"] / xp.where(w > 0, w, 1.0), 0.0)
    delta = b["mean"] - a["mean"]
    out["w"] = w
    out["mean"] = a["mean"] + delta * align_cells(frac, delta)
    if "m2" in a:
        out["m2"] = a["m2"] + b["m2"] + delta**2 * align_cells(a["w"] * frac, delta)
    if "xm" not in a:  # "mean", "unbiased": the mean is the equal-weight one
        out["xx"] = (a["xx"] + b["xx"]
                     + delta**2 * align_cells(a["w"] * frac, delta))
        out["xk"] = a["xk"] + b["xk"] + delta * align_cells(
            a["n"].astype(delta.dtype) * b["n"].astype(delta.dtype) * 0.5, delta)
        return out
    _merge_equal(xp, a, b, out)
    out["u"] = a["u"] + b["u"]
    # a's reference where a has batches (its first batch comes first), else
    # b's; b's sums recentred on it
    first = align_cells(a["n"] < 1, a["ref"])
    out["ref"] = xp.where(first, b["ref"], a["ref"])
    if "m2" in a:
        out["refv"] = xp.where(first, b["refv"], a["refv"])
        sb = _pooled_shift(b, b["u"], out["ref"] - b["ref"],
                           out["refv"] - b["refv"])
        out.update({k: xp.where(first, b[k], a[k] + sb[k]) for k in POOLED_SUMS})
        return out
    pb, qb = _ratio_shift(b["p"], b["q"], b["u"], out["ref"] - b["ref"])
    out["p"] = xp.where(first, b["p"], a["p"] + pb)
    out["q"] = xp.where(first, b["q"], a["q"] + qb)
    return out


def _merge_equal(xp: Any, a: Fields, b: Fields, out: Fields) -> None:
    """``xm``, ``xx``, ``xk`` over the batches of ``a`` then ``b`` (b's
    ordinals follow a's, cell by cell: the co-moments add, plus the shift
    of the means times ``n_a n_b / 2``)."""
    delta = b["xm"] - a["xm"]
    na = a["n"].astype(delta.dtype)
    nb = b["n"].astype(delta.dtype)
    n = na + nb
    frac = xp.where(n > 0, nb / xp.where(n > 0, n, 1.0), 0.0)
    out["xm"] = a["xm"] + delta * align_cells(frac, delta)
    out["xx"] = a["xx"] + b["xx"] + delta**2 * align_cells(na * frac, delta)
    out["xk"] = a["xk"] + b["xk"] + delta * align_cells(na * nb * 0.5, delta)


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


def standard_error(xp: Any, estimator: Any, role: str | None,
                   state: Fields) -> Array:
    """The standard error of :func:`finalize`'s value, per cell and unit.

    Written for every estimator from its state alone (``docs/estimators.rst``,
    "Standard errors"): batch means for ``"mean"`` and ``"unbiased"``
    (``xx / (n (n - 1))``), the ratio estimator for ``"weighted"`` and
    ``"pooled"`` means (``n / (n - 1) q / W^2``), its first-order
    (delta-method) residuals for the ``"pooled"`` variance, the moving
    average's own weights for ``"ema"``; a std from a variance by the delta
    method (``SE_var / (2 std)``). ``inf`` in cells fewer than 2 batches
    reached (no spread to measure: cells never reached included).
    """
    n = state["n"]
    nf = n.astype(state["xx"].dtype)
    safe = xp.where(n > 1, nf, 2.0)
    xx = xp.maximum(state["xx"], 0.0)
    std = None
    if estimator.name == "ema":
        lam = _constant(xp, estimator.momentum, xx.dtype)
        decay = state["decay"]
        weights = lam * (1.0 - decay * decay) / (2.0 - lam)
        if estimator.debias:
            left = 1.0 - decay
            weights = weights / xp.where(left > 0, left * left, 1.0)
        se = xp.sqrt(xx / align_cells(safe - 1.0, xx) * align_cells(weights, xx))
    elif "p" in state or "m2" in state:
        w = state["w"]
        if "m2" in state:  # the sums around the reference, recentred
            centred = _pooled_centred(xp, state)["srr"]
        else:
            centred = _ratio_shift(state["p"], state["q"], state["u"],
                                   state["mean"] - state["ref"])[1]
        sq = xp.maximum(centred, 0.0)
        factor = safe / (safe - 1.0) / xp.where(w > 0, w * w, 1.0)
        se = xp.sqrt(sq * align_cells(factor, sq))
        if "m2" in state and role == "std":
            std = finalize(xp, estimator, role, state)
    else:
        se = xp.sqrt(xx / align_cells(safe * (safe - 1.0), xx))
        if estimator.name == "unbiased" and role == "std":
            std = finalize(xp, estimator, role, state)
    if std is not None:
        se = xp.where(std > 0, se / (2.0 * xp.where(std > 0, std, 1.0)),
                      xp.where(se > 0, INF, 0.0))
    return xp.where(align_cells(n > 1, se), se, INF)


def trend(xp: Any, state: Fields) -> Array:
    """The t-statistic of the slope of the batches' inputs ``x_b`` against
    their ordinal ``k_b = 1..n`` in each cell, per unit (equal weights,
    least squares; Student t with ``n - 2`` degrees of freedom for i.i.d.
    normal inputs); 0 where fewer than 3 batches reached.

    From the state's ``xx = sum (x - xm)^2`` and ``xk = sum (x - xm)(k - km)``:
    with ``kk = n (n^2 - 1) / 12`` the ordinals' own sum of squares, the
    slope is ``xk / kk``, the residual sum of squares ``xx - xk^2 / kk`` and
    ``t = xk / sqrt(rss kk / (n - 2))`` (``±inf`` on an exact line).
    """
    xx, xk = state["xx"], state["xk"]
    n = state["n"]
    nf = xp.where(n > 2, n.astype(xx.dtype), 3.0)
    kk = align_cells(nf * (nf * nf - 1.0) / 12.0, xx)
    rss = xp.maximum(xx - xk * xk / kk, 0.0)
    scale = xp.sqrt(rss * kk / align_cells(nf - 2.0, xx))
    t = xp.where(scale > 0, xk / xp.where(scale > 0, scale, 1.0),
                 xp.where(xk > 0, INF, xp.where(xk < 0, -INF, 0.0)))
    return xp.where(align_cells(n > 2, t), t, 0.0)
