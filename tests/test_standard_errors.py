"""Standard errors and the trend statistic of every estimator.

Every expected number is recomputed in NumPy from the list of per-batch
values of each cell (the batch statistics, their counts and paired means),
by the formulas of ``docs/estimators.rst`` ("Standard errors") written
directly: the sample variance of the batch values over ``n`` for the plain
averages, the ratio estimator's ``n / (n - 1) sum w^2 (x - R)^2 / W^2``, the
pooled variance's first-order residuals, the moving average's weights
``lam (1 - lam)^(n - k)`` summed as they are; never from popstats' state.
Levels: the accumulators on arrays (every estimator and role, cells a batch
did not reach, merge of two parts), and :func:`popstats.estimate` outside
and inside a Scan loop (with the host's fast path for plain means).
"""

from __future__ import annotations

import numpy as np
import pytest
from shared import MODE
from test_estimators import (
    FF_STATS,
    MASKED_ROLES,
    PAIRS,
    STAT,
    ff_batches,
    ff_model,
    masked_batches,
    masked_elements,
    masked_model,
)

import popstats
from popstats import Estimator
from popstats._src.estimation import estimators as est
from popstats._src.estimation import formulas as fm

F = 2


# --------------------------------------------------------------------------
# the NumPy reference, from the per-batch values of one cell
# --------------------------------------------------------------------------


def batch_inputs(estimator, role, elements):
    """(x_b, w_b) per batch: the value each batch gives the estimator."""
    counts = np.array([len(e) for e in elements], dtype=np.float64)
    bessel = counts / (counts - 1) if len(elements) and counts.min() > 1 else None
    stats = np.array([STAT[role](e) for e in elements])
    if estimator.name == "unbiased" and role in ("var", "std"):
        stats = np.array([e.var(axis=0, ddof=1) for e in elements])
    if estimator.unbiased and role in ("var", "std"):
        factor = bessel if role == "var" else np.sqrt(bessel)
        stats = stats * factor[:, None]
    return stats, counts


def reference_se(estimator, role, elements):
    """The standard error of one cell, per unit, from its batches' elements."""
    n = len(elements)
    if n < 2:
        return np.full(F, np.inf)
    x, w = batch_inputs(estimator, role, elements)
    name = estimator.name
    if name == "ema":
        lam = estimator.momentum
        c = lam * (1 - lam) ** (n - np.arange(1, n + 1))
        se = np.sqrt(x.var(axis=0, ddof=1) * np.sum(c**2))
        return se / (1 - (1 - lam) ** n) if estimator.debias else se
    if name in ("mean", "unbiased"):
        se = x.std(axis=0, ddof=1) / np.sqrt(n)
        if name == "unbiased" and role == "std":
            se = se / (2 * np.sqrt(x.mean(axis=0)))
        return se
    total = w.sum()
    if name == "pooled" and role in ("var", "std"):
        mu = np.array([e.mean(axis=0) for e in elements])
        v = np.array([e.var(axis=0) for e in elements])
        big_m = (w[:, None] * mu).sum(0) / total
        big_v = (w[:, None] * (v + (mu - big_m) ** 2)).sum(0) / total
        r = v + (mu - big_m) ** 2 - big_v
        se = np.sqrt(n / (n - 1) * (w[:, None] ** 2 * r**2).sum(0)) / total
        return se / (2 * np.sqrt(big_v)) if role == "std" else se
    ratio = (w[:, None] * x).sum(0) / total  # "weighted", "pooled" means
    return np.sqrt(n / (n - 1) * (w[:, None] ** 2 * (x - ratio) ** 2).sum(0)) / total


def reference_trend(estimator, role, elements):
    """The t-statistic of the least-squares slope of x_b on k_b = 1..n."""
    n = len(elements)
    if n < 3:
        return np.zeros(F)
    x, _ = batch_inputs(estimator, role, elements)
    if estimator.name == "pooled" and role == "std":
        x = x**2  # the pooled std's batch input is the batch variance
    k = np.arange(1, n + 1, dtype=np.float64)
    kc = k - k.mean()
    slope = (kc[:, None] * (x - x.mean(0))).sum(0) / (kc**2).sum()
    resid = x - x.mean(0) - slope * kc[:, None]
    se = np.sqrt((resid**2).sum(0) / (n - 2) / (kc**2).sum())
    return slope / se


ESTIMATORS = {
    "mean": Estimator("mean"),
    "weighted": Estimator("weighted"),
    "pooled": Estimator("pooled"),
    "unbiased": Estimator("unbiased"),
    "ema": Estimator("ema", momentum=0.3),
}
EMA_VARIANTS = [Estimator("ema", momentum=0.3, debias=True),
                Estimator("ema", momentum=0.2, unbiased=True)]


def cases():
    out = [(ESTIMATORS[name], role) for name, role in PAIRS]
    out += [(e, role) for e in EMA_VARIANTS for role in ("mean", "var", "std")]
    return out


CASES = cases()
IDS = [f"{e!r}-{role}" for e, role in CASES]


# --------------------------------------------------------------------------
# accumulators on arrays
# --------------------------------------------------------------------------

STEPS = 4


def cell_data(seed=0, batches=9):
    """Per batch: its elements per step, and which steps it reached."""
    rng = np.random.default_rng(seed)
    data = []
    for b in range(batches):
        reached = rng.random(STEPS) < 0.7
        reached[0] = True  # step 0: every batch
        reached[3] = b == 1  # step 3: one batch only (SE inf, trend 0)
        elements = [rng.normal(0.5 + 0.1 * t, 1.0 + 0.3 * t,
                               (int(rng.integers(2, 9)), F)) for t in range(STEPS)]
        data.append((elements, reached))
    return data


def run_cells(estimator, role, data):
    """A depth-1 state over ``data``, garbage in the cells not reached."""
    state = est.init(estimator, role, (F,), 1)
    for elements, reached in data:
        value = np.stack([STAT[role](e) for e in elements])
        mean = np.stack([e.mean(axis=0) for e in elements])
        count = np.array([len(e) for e in elements], dtype=np.float64)
        value[~reached] = 1e6
        mean[~reached] = -1e6
        count[~reached] = 0.0
        state = est.grow(state, (STEPS,))
        state = est.update(estimator, role, state, value, count, reached, mean)
    return state


def cell_elements(data, t):
    return [elements[t] for elements, reached in data if reached[t]]


@pytest.mark.parametrize(("estimator", "role"), CASES, ids=IDS)
def test_standard_error_and_trend_match_numpy_per_cell(estimator, role):
    data = cell_data()
    state = run_cells(estimator, role, data)
    se = est.standard_error(estimator, role, state)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = fm.trend(np, state)
    assert se.shape == (STEPS, F) and se.dtype == np.float64
    for step in range(STEPS):
        elements = cell_elements(data, step)
        np.testing.assert_allclose(se[step], reference_se(estimator, role, elements),
                                   rtol=1e-9)
        np.testing.assert_allclose(t[step], reference_trend(estimator, role, elements),
                                   rtol=1e-7, atol=1e-9)
    assert np.isinf(se[3]).all() and (t[3] == 0).all()  # one batch reached step 3


@pytest.mark.parametrize(("estimator", "role"), CASES, ids=IDS)
def test_merge_of_two_parts_equals_the_state_over_all(estimator, role):
    data = cell_data(seed=5, batches=11)
    whole = run_cells(estimator, role, data)
    for cut in (1, 4, 7):
        merged = est.merge(estimator, role, run_cells(estimator, role, data[:cut]),
                           run_cells(estimator, role, data[cut:]))
        assert set(merged) == set(whole) == set(est.fields(estimator, role))
        for field, array in whole.items():
            np.testing.assert_allclose(merged[field], array, rtol=1e-9, atol=1e-9,
                                       err_msg=field)
        np.testing.assert_allclose(est.standard_error(estimator, role, merged),
                                   est.standard_error(estimator, role, whole),
                                   rtol=1e-9)


def test_value_fields_unchanged_bit_for_bit_by_the_new_fields():
    """The new fields do not enter the value: a state without them (the
    arithmetic of the value fields alone) gives the same value."""
    data = cell_data(seed=2)
    for estimator, role in CASES:
        state = run_cells(estimator, role, data)
        value = est.finalize(estimator, role, state)
        kept = {k: v for k, v in state.items() if k in ("n", "w", "mean", "m2",
                                                         "acc", "decay")}
        np.testing.assert_array_equal(fm.finalize(np, estimator, role, kept), value)


def test_ema_weights_in_closed_form():
    lam, n = 0.15, np.arange(0, 40)
    decay = fm.ema_decay(lam, n)
    direct = [np.sum((lam * (1 - lam) ** (k - np.arange(1, k + 1))) ** 2) for k in n]
    np.testing.assert_allclose(lam * (1 - decay**2) / (2 - lam), direct, rtol=1e-12)


def test_trend_fires_on_a_drift_and_is_zero_below_three_batches():
    estimator = Estimator("mean")
    state = est.init(estimator, None, (1,), 0)
    rng = np.random.default_rng(3)
    for k in range(30):
        state = est.update(estimator, None, state, np.array([k + rng.normal()]),
                           None, None, None)
        t = fm.trend(np, state)
        if k < 2:
            assert t == 0
    assert t > 20
    exact = est.init(estimator, None, (1,), 0)
    for k in range(4):
        exact = est.update(estimator, None, exact, np.array([2.0 * k]), None, None,
                           None)
    assert fm.trend(np, exact) == np.inf  # an exact line


def test_relative_error():
    se = np.array([0.1, 0.0, 0.2, np.inf])
    value = np.array([2.0, 0.0, 0.0, 1.0])
    np.testing.assert_array_equal(est.relative_error(value, se, "var", None),
                                  [0.05, 0.0, np.inf, np.inf])
    spread = np.array([4.0, 1.0, 2.0, 1.0])
    np.testing.assert_array_equal(est.relative_error(value, se, "mean", spread),
                                  [0.025, 0.0, 0.1, np.inf])
    # a mean without a spread: its own magnitude
    np.testing.assert_array_equal(est.relative_error(value, se, "mean", None),
                                  est.relative_error(value, se, None, None))


# --------------------------------------------------------------------------
# estimate(): outside and inside a Scan loop
# --------------------------------------------------------------------------

SPECS = [Estimator("mean"), Estimator("weighted"), Estimator("pooled"),
         Estimator("unbiased"), Estimator("ema", momentum=0.3),
         Estimator("ema", momentum=0.3, debias=True)]
SPEC_IDS = ["mean", "weighted", "pooled", "unbiased", "ema", "ema-debias"]


def for_role(spec, role):
    """The estimator a statistic of ``role`` gets (no role: not pooled)."""
    if spec.name == "pooled" and role is None:
        return Estimator("mean")
    return spec


def as_spec(spec, roles):
    return {name: for_role(spec, role) for name, role in roles.items()}


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_estimate_outside_loops_matches_numpy(spec):
    inputs, y = ff_model()
    batches = ff_batches(sizes=(6, 3, 9, 2, 7, 5, 8))
    roles = {name: role for name, (role, _) in FF_STATS.items()}
    stats = popstats.estimate(inputs, y, batches, estimator=as_spec(spec, roles),
                              mode=MODE)
    for name, (role, elements_of) in FF_STATS.items():
        elements = [elements_of(b["x"]) for b in batches]
        want = reference_se(for_role(spec, role), role, elements)
        np.testing.assert_allclose(stats[name].standard_error, want, rtol=1e-9)
    # a paired mean's relative error is against its spread's std
    np.testing.assert_allclose(
        stats["a.mean"].relative_error,
        stats["a.mean"].standard_error / np.sqrt(stats["a.var"].value))
    np.testing.assert_allclose(stats["b.mean"].spread, stats["b.std"].value)
    np.testing.assert_allclose(
        stats["c.max"].relative_error,
        stats["c.max"].standard_error / np.abs(stats["c.max"].value))


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_estimate_in_a_scan_matches_numpy_per_step(spec):
    inputs, hs = masked_model()
    batches = masked_batches(lengths=(3, 2, 5, 4, 4, 1), sizes=(4, 3, 6, 5, 7, 4))
    stats = popstats.estimate(inputs, hs, batches,
                              estimator=as_spec(spec, MASKED_ROLES), mode=MODE)
    for name, role in MASKED_ROLES.items():
        se = stats[name].standard_error
        assert se.shape == stats[name].value.shape == (5, F)
        for t in range(5):
            elements = [masked_elements(b, t) for b in batches if len(b["x"]) > t]
            want = reference_se(for_role(spec, role), role, elements)
            np.testing.assert_allclose(se[t], want, rtol=1e-9)
        assert np.isinf(se[4]).all()  # one batch reached step 4


def test_plain_means_fast_path_keeps_the_same_fields():
    """Statistics outside loops with the plain mean are updated together
    (flat buffers, from the second batch on): their fields are those of the
    per-statistic update run by hand on the same batch values."""
    inputs, y = ff_model()
    batches = ff_batches(sizes=(6, 3, 9, 2, 7, 5))
    run = popstats.Estimation(inputs, y, mode=MODE)
    state = run.run(batches)
    names = [site.name for site in run.sites]
    for name, (role, elements_of) in FF_STATS.items():
        by_hand = est.init(Estimator("mean"), role, (F,), 0)
        for b in batches:
            e = elements_of(b["x"])
            by_hand = est.update(Estimator("mean"), role, by_hand, STAT[role](e),
                                 np.array(float(len(e))), None, None)
        got = state.states[names.index(name)]
        assert set(got) == set(by_hand)
        for field, array in by_hand.items():
            np.testing.assert_allclose(got[field], array, rtol=1e-12, atol=1e-14,
                                       err_msg=f"{name}.{field}")


# --------------------------------------------------------------------------
# files, merge
# --------------------------------------------------------------------------


def _rewrite_npz(path, drop=(), **changes):
    """``path`` rewritten in place: arrays ``drop`` removed, ``changes`` set."""
    with np.load(path, allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files if k not in drop}
    arrays.update(changes)
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)


ERROR_FIELDS = ("xm", "xx", "xk", "u", "ref", "refv", "p", "q", *fm.POOLED_SUMS)


def _as_older_state(path):
    """A state file as the popstats before standard errors wrote it: format
    version 2, only the value's fields."""
    with np.load(path, allow_pickle=False) as archive:
        names = archive.files
    drop = [k for k in names if k.startswith("state/")
            and k.split("/")[2] in ERROR_FIELDS]
    assert drop
    _rewrite_npz(path, drop, format_version=np.array(2))


def scan_run(spec="pooled"):
    inputs, hs = masked_model()
    return popstats.Estimation(inputs, hs, estimator=as_spec(Estimator(spec),
                                                             MASKED_ROLES),
                               mode=MODE)


def test_a_state_or_checkpoint_of_the_older_format_is_refused(tmp_path):
    run = scan_run()
    batches = masked_batches()
    path = tmp_path / "state.npz"
    run.run(batches).save(path)
    assert popstats.load_state(path).states[1].keys() >= {"srr", "xk"}
    _as_older_state(path)
    with pytest.raises(popstats.PopstatsError) as info:
        popstats.load_state(path)
    message = str(info.value)
    for part in ("load_state(path=...)", "state.npz", "format version 2",
                 "older popstats", "standard errors", "run the pass again"):
        assert part in message, message
    checkpoint = tmp_path / "run.ckpt.npz"
    run.run(batches[:2], checkpoint=checkpoint)
    _as_older_state(checkpoint)
    with pytest.raises(popstats.PopstatsError) as info:
        run.run(batches, checkpoint=checkpoint)
    message = str(info.value)
    for part in ("checkpoint=...", "run.ckpt.npz", "older popstats",
                 "Delete the checkpoint and run the pass again"):
        assert part in message, message


def test_statistics_files_keep_standard_errors_and_older_ones_load(tmp_path):
    run = scan_run()
    stats = run.finalize(run.run(masked_batches()))
    path = tmp_path / "stats.npz"
    stats.save(path)
    loaded = popstats.load(path)
    for name, stat in stats.items():
        np.testing.assert_array_equal(loaded[name].standard_error,
                                      stat.standard_error)
        np.testing.assert_array_equal(loaded[name].relative_error,
                                      stat.relative_error)
    assert np.isinf(loaded["s.var"].standard_error[4]).all()
    # the mean's spread is found again on load (the pairing rule)
    np.testing.assert_array_equal(loaded["s.mean"].spread,
                                  np.sqrt(stats["s.var"].value))
    # a file in the layout of a popstats before standard errors: no
    # standard_error/<i> arrays (the same format version)
    with np.load(path, allow_pickle=False) as archive:
        errors = [k for k in archive.files if k.startswith("standard_error/")]
    assert len(errors) == len(stats)
    _rewrite_npz(path, errors)
    older = popstats.load(path)
    for name, stat in stats.items():
        assert older[name].standard_error is None
        assert older[name].relative_error is None
        np.testing.assert_array_equal(older[name].value, stat.value)
    older.save(tmp_path / "again.npz")  # and saves again without them
    assert popstats.load(tmp_path / "again.npz")["s.var"].standard_error is None


def test_a_damaged_standard_error_is_refused(tmp_path):
    run = scan_run("mean")
    path = tmp_path / "stats.npz"
    run.finalize(run.run(masked_batches())).save(path)
    _rewrite_npz(path, **{"standard_error/0": np.full((5, F), np.nan)})
    with pytest.raises(popstats.PopstatsError, match="standard error holding NaN"):
        popstats.load(path)
    _rewrite_npz(path, **{"standard_error/0": np.ones(3)})
    with pytest.raises(popstats.PopstatsError, match="standard error of shape"):
        popstats.load(path)


@pytest.mark.parametrize("spec", ["mean", "pooled", "ema"])
def test_estimation_merge_carries_standard_errors(spec):
    run = scan_run(spec)
    batches = masked_batches(lengths=(3, 2, 5, 4, 4, 1), sizes=(4, 3, 6, 5, 7, 4))
    whole = run.finalize(run.run(batches))
    merged = run.finalize(run.merge(run.run(batches[:2]), run.run(batches[2:])))
    for name in MASKED_ROLES:
        np.testing.assert_allclose(merged[name].standard_error,
                                   whole[name].standard_error, rtol=1e-10)
