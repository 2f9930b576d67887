"""Bias and trend warnings, and the batch sizes behind them (issue 29).

The two cases of the issue, as a user meets them: batches of one example give
the default estimator a variance of 0, and one 1-row batch among ten 64-row
batches lowers every variance by about 10%; both now warn (a
``PopstatsWarning`` and a record on ``PopulationStatistics.warnings``),
naming the statistic and suggesting ``"pooled"``. Equal-size batches of a
reasonable size give no warning for any estimator; a drifting stream warns of
a trend and i.i.d. batches almost never do. The batch sizes are O(1) sums in
the state, checked against NumPy, merged, saved and resumed.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from shared import MODE, scan

import popstats
from popstats import Estimator
from popstats._src.estimation.bias import TREND_LEVEL, trend_bound
from popstats._src.estimation.combine import without_coverage_warnings
from popstats._src.estimation.state import BatchSizes

D = 3
ESTIMATORS = ("mean", "weighted", "pooled", "unbiased", Estimator("ema"))


def model():
    """A batch norm over the rows of ``x``, counted by the batch size."""
    x = pt.matrix("x")
    mean, var = popstats.mark_moments(x.mean(0), x.var(0), "bn", count=x.shape[0])
    return [x], (x - mean) / pt.sqrt(var + 1e-5)


def std_model():
    """A (mean, std) pair: the std's warnings too."""
    x = pt.matrix("x")
    mean = popstats.bn_statistic(x.mean(0), "sd.mean", role="mean", group="sd",
                                 count=x.shape[0])
    std = popstats.bn_statistic(x.std(0), "sd.std", role="std", group="sd",
                                count=x.shape[0])
    return [x], (x - mean) / (std + 1e-5)


def loop_model():
    """A Scan over x (time, batch, feature): the batch axis is axis 1."""
    x = pt.tensor3("x")

    def step(xt):
        mean, var = popstats.mark_moments(xt.mean(0), xt.var(0), "rnn",
                                          count=xt.shape[0])
        return (xt - mean) / pt.sqrt(var + 1e-5)

    return [x], scan(step, sequences=[x])


def rows(sizes, seed=0, loc=3.0, scale=2.0):
    rng = np.random.default_rng(seed)
    return [{"x": rng.normal(loc, scale, (m, D))} for m in sizes]


def estimate(batches, make=model, **options):
    """``estimate`` with its PopstatsWarnings caught: (statistics, warned)."""
    inputs, y = make()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stats = popstats.estimate(inputs, y, batches, mode=MODE, **options)
    warned = [str(w.message) for w in caught
              if issubclass(w.category, popstats.PopstatsWarning)]
    return stats, warned


def kinds(stats):
    return [(w.statistic, w.kind) for w in stats.warnings]


# -- the cases --------------------------------------------------------


def test_batches_of_one_example_warn_and_suggest_pooled():
    stats, warned = estimate(rows([1] * 50))
    np.testing.assert_array_equal(stats["bn.var"].value, 0.0)  # the case
    assert kinds(stats) == [("bn.var", "small-batches")]
    note = stats.warnings[0]
    assert warned == [note.message]
    for part in ("'bn.var'", "50 batches of 1 example each", "variance 0",
                 "100% below", "estimator='pooled'"):
        assert part in note.message, part
    pooled, warned = estimate(rows([1] * 50), estimator="pooled")
    assert pooled.warnings == () and warned == []
    assert (pooled["bn.var"].value > 1.0).all()  # the variance of all rows


def test_one_small_batch_among_large_ones_warns():
    """One 1-row batch among ten 64-row batches: every variance about 10%
    low (mean(1/m) = 0.105 of it), and a warning saying so."""
    batches = rows([64] * 10 + [1], seed=3)
    stats, warned = estimate(batches)
    pooled, _ = estimate(batches, estimator="pooled")
    low = 1.0 - stats["bn.var"].value / pooled["bn.var"].value
    assert ((low > 0.05) & (low < 0.15)).all()
    assert kinds(stats) == [("bn.var", "small-batches")]
    message = stats.warnings[0].message
    assert "11 batches of 1 to 64 examples" in message
    assert "about 10% below" in message and "'pooled'" in message
    assert warned == [message]


def test_unequal_sizes_beyond_the_standard_error_warn():
    """Sizes 2 and 200 in turn: the equal-weight average of batch variances
    is low by mean(1/m) - n/sum(m) = 0.24 of the variance, far beyond its
    standard error; "pooled" and "weighted" are suggested and do not warn."""
    batches = rows([2, 200] * 20, seed=1)
    stats, warned = estimate(batches)
    assert kinds(stats) == [("bn.var", "unequal-batches")]
    message = stats.warnings[0].message
    for part in ("'bn.var'", "40 batches of 2 to 200", "(m-1)/m", "'pooled'",
                 "'weighted'", "standard error"):
        assert part in message, part
    assert warned == [message]
    shift = 0.5 * (1 / 2 + 1 / 200) - 2 / 202
    assert f"about {100 * shift:.2g}%" in message
    for other in ("pooled", "weighted", "unbiased"):
        assert estimate(batches, estimator=other)[0].warnings == ()


def test_unequal_sizes_within_the_standard_error_do_not_warn():
    """A last batch of 30 rows after 22 of 64 (a data set that does not
    divide): the shift is 0.04% of the variance, far inside its error."""
    stats, warned = estimate(rows([64] * 22 + [30], seed=2))
    assert stats.warnings == () and warned == []


def test_a_std_warns_too():
    stats, _ = estimate(rows([1] * 20), make=std_model)
    assert kinds(stats) == [("sd.std", "small-batches")]
    assert "standard deviation" in stats.warnings[0].message
    stats, _ = estimate(rows([2, 200] * 20, seed=4), make=std_model)
    assert kinds(stats) == [("sd.std", "unequal-batches")]


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=str)
def test_equal_batches_of_reasonable_size_do_not_warn(estimator):
    inputs, y = model()
    run = popstats.Estimation(inputs, y, mode=MODE, estimator=estimator)
    for seed in range(10):
        with warnings.catch_warnings():
            warnings.simplefilter("error", popstats.PopstatsWarning)
            stats = run.finalize(run.run(rows([32] * 40, seed=seed)))
        assert stats.warnings == ()


def test_a_scan_counts_examples_on_its_batch_axis():
    rng = np.random.default_rng(0)
    batches = [{"x": rng.normal(size=(4, 1, D))} for _ in range(6)]
    inputs, y = loop_model()
    state = popstats.Estimation(inputs, y, mode=MODE).run(batches)
    # batches of one example (axis 1), not of 4 time steps (axis 0)
    assert (state.sizes.n, state.sizes.smallest, state.sizes.largest) == (6, 1, 1)


def readme_model():
    """README's model: marked without role or count."""
    x = pt.matrix("x")
    mean = popstats.bn_statistic(x.mean(axis=0), label="bn.mean")
    var = popstats.bn_statistic(x.var(axis=0), label="bn.var")
    return [x], (x - mean) / pt.sqrt(var + 1e-5)


def uncounted_loop_model():
    """README's statistics per step of a Scan over x (time, batch, feature)."""
    x = pt.tensor3("x")

    def step(xt):
        mean = popstats.bn_statistic(xt.mean(axis=0), label="bn.mean")
        var = popstats.bn_statistic(xt.var(axis=0), label="bn.var")
        return (xt - mean) / pt.sqrt(var + 1e-5)

    return [x], scan(step, sequences=[x])


def nested_loop_model():
    """Two loops: x (outer time, inner time, batch, feature), the variance
    written out (its mean subtracted, squared, averaged), no count."""
    x = pt.tensor4("x")

    def outer(xs):
        def inner(xt):
            mean = popstats.bn_statistic(xt.mean(0), label="in.mean")
            var = popstats.bn_statistic(((xt - mean) ** 2).mean(0), label="in.var")
            return (xt - mean) / pt.sqrt(var + 1e-5)

        return scan(inner, sequences=[xs])

    return [x], scan(outer, sequences=[x])


def steps(sizes, seed=0, time=(4,)):
    rng = np.random.default_rng(seed)
    return [{"x": rng.normal(3.0, 2.0, (*time, m, D))} for m in sizes]


def test_readme_model_without_a_count_warns_on_batches_of_one():
    """The headline case of issue 29: README's model (no role, no count) on
    batches of one example has every variance 0, and now says so; its
    structure (a sum of squares over exactly the examples, divided by their
    number) makes it a variance of the examples."""
    stats, warned = estimate(rows([1] * 20), make=readme_model)
    np.testing.assert_array_equal(stats["bn.var"].value, 0.0)
    assert kinds(stats) == [("bn.var", "small-batches")]
    message = stats.warnings[0].message
    assert warned == [message]
    assert "estimator='pooled'" in message and "mark_moments" in message
    stats, _ = estimate(rows([2, 200] * 20, seed=1), make=readme_model)
    assert kinds(stats) == [("bn.var", "unequal-batches")]


def test_a_tagged_statistic_warns_too():
    """The original marking, ``tag.bn_statistic = True``, outer graph."""
    def tagged():
        x = pt.matrix("x")
        var = x.var(0)
        var.tag.bn_statistic = True
        var.tag.bn_label = "t.var"
        return [x], x / pt.sqrt(var + 1e-5)

    stats, _ = estimate(rows([1] * 20), make=tagged)
    assert kinds(stats) == [("t.var", "small-batches")]


@pytest.mark.parametrize("make", [loop_model, uncounted_loop_model],
                         ids=["counted", "uncounted"])
def test_a_loop_statistic_warns(make):
    """Per-step statistics of a Scan (the batch axis is axis 1 of the outer
    sequence, axis 0 of its slice): batches of one example warn, one 1-row
    batch among ten 64-row ones too, and sizes 2 and 200 in turn warn of
    unequal batches."""
    var = "rnn.var" if make is loop_model else "bn.var"
    stats, warned = estimate(steps([1] * 20), make=make)
    np.testing.assert_array_equal(stats[var].value, 0.0)
    assert kinds(stats) == [(var, "small-batches")] and len(warned) == 1
    assert stats[var].site.where != "<graph>"
    assert f"(in {stats[var].site.where})" in stats.warnings[0].message
    stats, _ = estimate(steps([64] * 10 + [1], seed=3), make=make)
    assert kinds(stats) == [(var, "small-batches")]
    stats, _ = estimate(steps([2, 200] * 20, seed=1), make=make)
    assert kinds(stats) == [(var, "unequal-batches")]


def test_a_count_given_to_a_loop_is_read_outside():
    """A count computed outside the loop and given as a non-sequence is read
    where it is computed: the batch axis's length warns, the time axis's
    does not (it is not the examples)."""
    def make(axis):
        def model():
            x = pt.tensor3("x")

            def step(xt, n):
                mean, var = popstats.mark_moments(xt.mean(0), xt.var(0), "nc",
                                                  count=n)
                return (xt - mean) / pt.sqrt(var + 1e-5)

            return [x], scan(step, sequences=[x], non_sequences=[x.shape[axis]])
        return model

    stats, _ = estimate(steps([1] * 10), make=make(1))
    assert kinds(stats) == [("nc.var", "small-batches")]
    stats, warned = estimate(steps([1] * 10), make=make(0))
    assert stats.warnings == () and warned == []


def test_a_statistic_two_loops_deep_warns():
    stats, _ = estimate(steps([1] * 20, time=(2, 3)), make=nested_loop_model)
    np.testing.assert_array_equal(stats["in.var"].value, 0.0)
    assert kinds(stats) == [("in.var", "small-batches")]
    stats, _ = estimate(steps([32] * 20, time=(2, 3)), make=nested_loop_model)
    assert stats.warnings == ()


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=str)
def test_equal_batches_in_a_loop_do_not_warn(estimator):
    """Batches of 32 examples, per step of a loop: no warning for any
    estimator (the uncounted model only for those that need no count)."""
    makes = [loop_model]
    if estimator in ("mean", "unbiased") or isinstance(estimator, Estimator):
        makes.append(uncounted_loop_model)
    for make in makes:
        inputs, y = make()
        run = popstats.Estimation(inputs, y, mode=MODE, estimator=estimator)
        for seed in range(4):
            with warnings.catch_warnings():
                warnings.simplefilter("error", popstats.PopstatsWarning)
                stats = run.finalize(run.run(steps([32] * 40, seed=seed)))
            assert stats.warnings == ()


def test_no_size_warning_where_the_elements_are_not_the_examples():
    """A convolution's statistics (reduced over the batch and its positions,
    with or without a count), one whose count is a mask's sum, and one
    pooled over a loop's steps: a batch of one example is not one element,
    so none warns of batch sizes (no false alarm)."""
    rng = np.random.default_rng(0)

    def conv(counted):
        def make():
            x = pt.tensor4("x")  # (batch, channel, height, width)
            axes = (0, 2, 3)
            count = x.shape[0] * x.shape[2] * x.shape[3] if counted else None
            mean = popstats.bn_statistic(x.mean(axes, keepdims=True), "conv.mean",
                                         role="mean" if counted else None,
                                         group="conv", count=count)
            var = popstats.bn_statistic(x.var(axes, keepdims=True), "conv.var",
                                        role="var" if counted else None,
                                        group="conv", count=count)
            return [x], (x - mean) / pt.sqrt(var + 1e-5)
        return make

    images = [{"x": rng.normal(size=(1, 3, 4, 4))} for _ in range(20)]
    for counted in (True, False):
        stats, warned = estimate(images, make=conv(counted))
        assert stats.warnings == () and warned == []
        assert (stats["conv.var"].value > 0.5).all()  # 16 positions: not 0

    def masked():
        x, mask = pt.matrix("x"), pt.vector("mask")
        n = mask.sum()
        mean = popstats.bn_statistic((x * mask[:, None]).sum(0) / n, "mk.mean",
                                     role="mean", group="mk", count=n)
        var = popstats.bn_statistic((((x - mean) ** 2) * mask[:, None]).sum(0) / n,
                                    "mk.var", role="var", group="mk", count=n)
        return [x, mask], (x - mean) / pt.sqrt(var + 1e-5)

    stats, warned = estimate([{"x": rng.normal(size=(1, D)), "mask": np.ones(1)}
                              for _ in range(20)], make=masked)
    assert stats.warnings == () and warned == []
    stats, warned = estimate(steps([1] * 20), make=loop_model, time="pooled")
    assert stats.warnings == () and warned == []
    assert (stats["rnn.var"].value > 0.5).all()  # 4 steps of one example


def test_which_statistics_count_the_examples():
    """The structural reading itself, outside a pass: the sums each
    statistic reads reduce exactly the batch axis, or its count is that
    axis's length; Bessel's correction, a maximum, a reduction over two
    axes, or a reshape folding the batch with another axis are not; a
    variance with Bessel's correction reduces the examples but is no
    biased spread."""
    from popstats._src.estimation.examples_count import examples_statistics

    x = pt.tensor3("x")  # (batch, time, feature): examples on axis 0
    xt = x[:, 0]
    m = xt.mean(0)
    graphs = {
        "mean": (xt.mean(0), None, None),
        "var": (xt.var(0), None, "var"),
        "std": (xt.std(0), None, "std"),
        "written out": (((xt - m) ** 2).mean(0), None, "var"),
        "per example first": (x.sum(1).var(0), None, "var"),
        "counted": (xt.var(0), xt.shape[0], "var"),
        "counted, cast": (xt.var(0), pt.cast(xt.shape[0], "float32"), "var"),
        "bessel": (xt.var(0, ddof=1), None, None),  # of the examples, unbiased
    }
    refused = {
        "max": (xt.max(0), None),
        "two axes": (x.var((0, 1)), None),
        "folded": (x.reshape((-1, D)).var(0), None),
        "count of time": (xt.var(0), x.shape[1]),
        "count of all": (x.var((0, 1)), x.shape[0] * x.shape[1]),
    }
    marked = [(popstats.bn_statistic(v, k), c) for k, (v, c, _) in graphs.items()]
    marked += [(popstats.bn_statistic(v, k), c) for k, (v, c) in refused.items()]
    found = examples_statistics([v for v, _ in marked], [c for _, c in marked], x, 0)
    assert found == {k: role for k, (_, _, role) in enumerate(graphs.values())}
    # with axis 1 the examples, only the count x.shape[1] says so
    time_count = len(graphs) + list(refused).index("count of time")
    assert examples_statistics([v for v, _ in marked], [c for _, c in marked],
                               x, 1) == {time_count: None}


def test_pytensor_ml_batch_norm_warns_on_dense_not_on_images():
    """pytensor-ml's BatchNorm (recognized): its count on a dense (batch,
    feature) input is the batch size, so batches of one warn; on images
    (batch, height, width, channel) it counts the positions too: none."""
    pytest.importorskip("pytensor_ml")
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    import ptml_models as models

    for make, warns in ((models.mlp, True), (models.conv, False)):
        model = make()
        batches = [{"X": b} for b in models.make_batches(model.shape, model.dtype,
                                                           0, 20, 1)]
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            stats = popstats.estimate([model.X], model.y, batches, mode=MODE)
        expected = [(name, "small-batches") for name in stats
                    if name.endswith(".var")] if warns else []
        assert kinds(stats) == expected and (expected or not warns)


# -- trends -----------------------------------------------------------------


def test_a_drifting_stream_warns_of_a_trend():
    rng = np.random.default_rng(5)
    drift = [{"x": rng.normal(3.0 + 0.02 * k, 2.0, (64, D))} for k in range(100)]
    stats, warned = estimate(drift)
    assert ("bn.mean", "trend") in kinds(stats)
    message = dict(((w.statistic, w.kind), w.message) for w in stats.warnings)[
        "bn.mean", "trend"]
    assert "drift along the batches" in message and "Shuffle" in message
    assert message in warned
    # the same batches shuffled: no trend
    order = np.random.default_rng(6).permutation(len(drift))
    stats, _ = estimate([drift[i] for i in order])
    assert "trend" not in [w.kind for w in stats.warnings]


def test_a_spread_that_grows_warns_of_a_trend():
    rng = np.random.default_rng(7)
    growing = [{"x": rng.normal(0.0, 1.0 + 0.01 * k, (64, D))} for k in range(100)]
    stats, _ = estimate(growing)
    assert ("bn.var", "trend") in kinds(stats)


def test_iid_batches_almost_never_warn_of_a_trend():
    """300 passes over i.i.d. batches: the pass-wide false-alarm rate is
    TREND_LEVEL (0.1%), so 3 alarms or more would happen by chance with
    probability 0.0036 (binomial, 300 passes at 0.1%); seeds are fixed."""
    inputs, y = model()
    run = popstats.Estimation(inputs, y, mode=MODE, accumulate="host")
    rng = np.random.default_rng(11)
    alarms = 0
    for _ in range(300):
        n = int(rng.integers(10, 40))
        data = rng.normal(0.0, 1.0, (n, 8, D))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", popstats.PopstatsWarning)
            stats = run.finalize(run.run([{"x": b} for b in data]))
        alarms += any(w.kind == "trend" for w in stats.warnings)
    assert alarms <= 2


def test_the_trend_bound_is_student_t_with_bonferroni():
    from scipy.stats import t as student

    bound = trend_bound(np.array([2, 3, 10]), 4)
    assert bound[0] == np.inf
    np.testing.assert_allclose(bound[1:], student.ppf(1 - TREND_LEVEL / 8, [1, 8]),
                               rtol=1e-10)


def test_few_batches_are_not_tested_for_a_trend():
    """Four batches on an exact line (t infinite): too few to test."""
    batches = [{"x": np.full((2, D), float(i))} for i in range(4)]
    stats, warned = estimate(batches)
    assert stats.warnings == () and warned == []
    stats, _ = estimate([{"x": np.full((2, D), float(i))} for i in range(10)])
    assert ("bn.mean", "trend") in kinds(stats)


def test_the_same_batch_again_is_no_trend():
    """Batch values equal up to rounding have no slope to test."""
    batch = rows([16], seed=8)[0]
    stats, warned = estimate([batch] * 30)
    assert stats.warnings == () and warned == []


# -- the record: Python, files, warnings ---------------------------------------


def test_warnings_are_saved_and_an_older_file_loads(tmp_path):
    stats, _ = estimate(rows([1] * 10))
    path = tmp_path / "stats.npz"
    stats.save(path)
    loaded = popstats.load(path)
    assert loaded.warnings == stats.warnings
    assert isinstance(loaded.warnings[0], popstats.StatisticWarning)
    # a file written before warnings were kept: none
    with np.load(path, allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    meta = json.loads(str(arrays["meta"]))
    del meta["warnings"]
    arrays["meta"] = np.array(json.dumps(meta))
    older = tmp_path / "older.npz"
    with open(older, "wb") as handle:
        np.savez(handle, **arrays)
    assert popstats.load(older).warnings == ()


def test_a_record_is_frozen_and_prints_its_message():
    stats, _ = estimate(rows([1] * 5))
    note = stats.warnings[0]
    with pytest.raises(AttributeError):
        note.kind = "trend"
    assert str(note) == note.message


def test_held_back_warnings_are_still_recorded():
    inputs, y = model()
    run = popstats.Estimation(inputs, y, mode=MODE)
    state = run.run(rows([1] * 5))
    with warnings.catch_warnings():
        warnings.simplefilter("error", popstats.PopstatsWarning)
        with without_coverage_warnings():
            stats = run.finalize(state)
    assert kinds(stats) == [("bn.var", "small-batches")]


# -- batch sizes in the state ---------------------------------------------------


def sizes_of(ms):
    ms = np.asarray(ms)
    return BatchSizes(len(ms), int(ms.sum()), float((1.0 / ms).sum()),
                      int(ms.min()), int(ms.max()))


def assert_sizes(got, ms):
    want = sizes_of(ms)
    assert (got.n, got.total, got.smallest, got.largest) == (
        want.n, want.total, want.smallest, want.largest)
    assert got.inverse == pytest.approx(want.inverse, rel=1e-12)


@pytest.mark.parametrize("accumulate", ["graph", "host"])
def test_sizes_are_counted_merged_and_saved(tmp_path, accumulate):
    inputs, y = model()
    run = popstats.Estimation(inputs, y, mode=MODE, accumulate=accumulate)
    ms = [5, 9, 2, 30, 7, 7]
    a = run.run(rows(ms[:4]))
    b = run.run(rows(ms[4:], seed=1))
    assert_sizes(a.sizes, ms[:4])
    merged = run.merge(a, b)
    assert_sizes(merged.sizes, ms)
    assert merged.sizes.known(merged.n_batches)
    assert merged.sizes.size_bias == pytest.approx(
        np.mean(1.0 / np.array(ms)) - len(ms) / sum(ms))
    one = run.update(a, rows([11])[0])
    assert_sizes(one.sizes, [*ms[:4], 11])
    path = tmp_path / "state.npz"
    merged.save(path)
    assert popstats.load_state(path).sizes == merged.sizes


def test_a_checkpoint_resumes_its_sizes(tmp_path):
    inputs, y = model()
    run = popstats.Estimation(inputs, y, mode=MODE)
    batches = rows([3, 4, 5, 6, 7, 8])
    path = tmp_path / "ckpt.npz"

    def interrupted():
        for k, batch in enumerate(batches):
            if k == 4:
                raise KeyboardInterrupt
            yield batch

    with pytest.raises(KeyboardInterrupt):
        run.run(interrupted(), checkpoint=path, checkpoint_every=2)
    assert_sizes(popstats.load_state(path).sizes, [3, 4, 5, 6])
    resumed = run.run(batches, checkpoint=path, checkpoint_every=2)
    assert resumed.sizes == run.run(batches).sizes


def test_a_state_without_sizes_loads_and_skips_the_size_warnings(tmp_path):
    """A state file written before sizes were kept: its sizes are not known,
    so no size warning is given (not a wrong one)."""
    inputs, y = model()
    run = popstats.Estimation(inputs, y, mode=MODE)
    path = tmp_path / "state.npz"
    run.run(rows([1] * 6)).save(path)
    with np.load(path, allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    meta = json.loads(str(arrays["meta"]))
    del meta["sizes"]
    arrays["meta"] = np.array(json.dumps(meta))
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)
    state = popstats.load_state(path)
    assert state.sizes == BatchSizes() and not state.sizes.known(state.n_batches)
    assert run.finalize(state).warnings == ()


def test_inputs_without_a_batch_axis_count_no_sizes():
    x = pt.scalar("x")
    y = x - popstats.bn_statistic(x * 1.0, "m", role="mean")
    run = popstats.Estimation([x], y, mode=MODE)
    state = run.run([{"x": 1.0}, {"x": 2.0}])
    assert state.sizes == BatchSizes()
    assert run.finalize(state).warnings == ()


def test_the_digest_of_a_state_covers_its_sizes():
    from popstats._src.estimation.state import state_digest

    inputs, y = model()
    run = popstats.Estimation(inputs, y, mode=MODE)
    state = run.run(rows([4, 4]))
    other = type(state)(state.spec, state.states, state.n_batches,
                        sizes=sizes_of([3, 5]))
    assert state_digest(state) != state_digest(other)


def test_the_inference_graph_of_batches_of_one_warns():
    """get_inference_graph warns too (it estimates), naming the statistic."""
    inputs, y = model()
    with pytest.warns(popstats.PopstatsWarning, match="'bn.var'.*'pooled'"):
        out = popstats.get_inference_graph(inputs, y, rows([1] * 8), mode=MODE)
    f = pytensor.function(inputs, out, mode=MODE)
    assert np.isfinite(f(np.ones((1, D)))).all()  # the call goes on
