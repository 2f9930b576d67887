"""Batches that do not fit the graph, and calls around them (issue 9).

Every case gets a PopstatsError naming the call, the batch, the input and
the fix; conversions that lose nothing are made, and their results equal
those of data given in the input's dtype.
"""

from __future__ import annotations

import collections
import os

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from shared import MODE, fails

import popstats

RNG = np.random.default_rng(5)


def float32_model():
    x = pt.matrix("x", dtype="float32")
    mean = popstats.bn_statistic(x.mean(0), "m")
    return x, x - mean


def embedding_model():
    """int32 indices into a table, as in an embedding lookup."""
    idx = pt.vector("idx", dtype="int32")
    table = pytensor.shared(np.arange(12.0).reshape(6, 2), name="table")
    rows = table[idx]
    return idx, rows - popstats.bn_statistic(rows.mean(0), "emb.mean")


def test_float64_data_for_a_float32_graph_is_converted():
    x, y = float32_model()
    data = [RNG.normal(size=(4, 3)) for _ in range(3)]
    got = popstats.estimate([x], y, [{"x": d} for d in data], mode=MODE)
    same = popstats.estimate([x], y, [{"x": d.astype("float32")} for d in data],
                             mode=MODE)
    np.testing.assert_array_equal(got["m"].value, same["m"].value)


def test_unaligned_arrays_are_copied_for_the_c_backend():
    # Dask passes arrays between processes as views of a buffer, which may
    # be unaligned; PyTensor's C code refuses those ("not aligned").
    data = RNG.normal(size=(4, 3))
    raw = np.zeros(data.nbytes + 1, np.uint8)
    raw[1:] = np.frombuffer(data.tobytes(), np.uint8)
    unaligned = np.frombuffer(raw.data, np.float64, offset=1).reshape(4, 3)
    assert not unaligned.flags.aligned
    x = pt.matrix("x")
    y = x - popstats.bn_statistic(x.mean(0), label="m")
    got = popstats.estimate([x], y, [{"x": unaligned}], mode="CVM")
    np.testing.assert_array_equal(got["m"].value, data.mean(0))


def test_int64_indices_for_an_int32_input_are_converted():
    idx, y = embedding_model()
    batches = [{"idx": np.array([0, 5, 2])}, {"idx": np.array([1, 1])}]
    assert batches[0]["idx"].dtype == np.int64
    stats = popstats.estimate([idx], y, batches, mode=MODE)
    table = np.arange(12.0).reshape(6, 2)
    expected = np.mean([table[[0, 5, 2]].mean(0), table[[1, 1]].mean(0)], 0)
    np.testing.assert_allclose(stats["emb.mean"].value, expected)


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (np.array([0, 2**40]), "out of range"),
        (np.array([0.5, 1.0]), "fractions"),
    ],
)
def test_conversion_that_loses_values_is_refused(value, why):
    idx, y = embedding_model()
    with fails("estimate(batches=...)", "batch 1", "input 'idx'",
               f"dtype {value.dtype}", "int32", why, "astype('int32')"):
        popstats.estimate([idx], y, [{"idx": np.array([0, 1])}, {"idx": value}],
                          mode=MODE)


def test_float_overflow_is_refused():
    x, y = float32_model()
    with fails("batch 0", "input 'x'", "float64", "float32", "overflow"):
        popstats.estimate([x], y, [{"x": np.full((2, 3), 1e300)}], mode=MODE)


def test_strict_dtypes_refuse_any_other_dtype():
    x, y = float32_model()
    data = {"x": np.ones((2, 3))}
    with fails("estimate(batches=...)", "batch 0", "float64", "float32",
               "dtypes='strict'"):
        popstats.estimate([x], y, [data], dtypes="strict", mode=MODE)
    with fails("estimate(dtypes=...)", "'convert'", "'strict'", "'loose'"):
        popstats.estimate([x], y, [data], dtypes="loose", mode=MODE)
    ok = popstats.estimate([x], y, [{"x": np.ones((2, 3), "float32")}],
                           dtypes="strict", mode=MODE)
    np.testing.assert_array_equal(ok["m"].value, np.ones(3))


@pytest.mark.parametrize(
    ("value", "parts"),
    [
        (np.ones((2, 3, 1)), ("a 3-d array of shape (2, 3, 1)", "is 2-d")),
        (np.ones(3), ("a 1-d array", "is 2-d")),
        (np.array([["a", "b", "c"]]), ("dtype <U1", "expected numbers")),
        (np.array([[object(), 1, 2]], dtype=object), ("dtype object",)),
        ([[1.0, 2.0], [3.0]], ("NumPy cannot make an array",)),
    ],
)
def test_values_that_are_no_fitting_numbers(value, parts):
    x, y = float32_model()
    good = {"x": np.ones((2, 3), "float32")}
    with fails("estimate(batches=...)", "batch 2", "input 'x'", *parts):
        popstats.estimate([x], y, [good, good, {"x": value}], mode=MODE)


def test_static_shape_is_checked():
    x = pt.matrix("x", shape=(None, 3))
    y = x - popstats.bn_statistic(x.mean(0), "m")
    with fails("batch 0", "shape (2, 4)", "static shape is (None, 3)"):
        popstats.estimate([x], y, [{"x": np.ones((2, 4))}], mode=MODE)


def test_a_batch_that_breaks_the_graph_names_batch_and_shapes():
    x = pt.matrix("x")
    w = pytensor.shared(np.ones((3, 2)), name="W")
    h = pt.dot(x, w)
    y = h - popstats.bn_statistic(h.mean(0), "m")
    good, bad = {"x": np.ones((4, 3))}, {"x": np.ones((4, 5))}
    with fails("estimate(batches=...)", "failed on batch 1", "ValueError",
               "'x': shape (4, 5) float64") as info:
        popstats.estimate([x], y, [good, bad], mode=MODE)
    assert isinstance(info.value.__cause__, ValueError)  # the real cause, chained
    with fails("get_inference_graph(batches=...)", "failed on batch 0"):
        popstats.get_inference_graph([x], y, [bad], mode=MODE)


def test_update_and_run_never_change_a_given_state():
    x = pt.matrix("x")
    n = x.shape[0]
    y = x - popstats.bn_statistic(x.mean(0), "m", role="mean", group="g", count=n)
    run = popstats.Estimation([x], y, mode=MODE)
    half = run.run([{"x": np.ones((2, 3))}, {"x": np.zeros((2, 3))}])
    frozen = [{k: v.copy() for k, v in fields.items()} for fields in half.states]
    full = run.run([{"x": np.full((2, 3), 4.0)}], state=half)
    one_more = run.update(half, {"x": np.full((2, 3), 4.0)})
    for before, after in zip(frozen, half.states, strict=True):
        assert before.keys() == after.keys()
        for key in before:
            np.testing.assert_array_equal(before[key], after[key])
    assert half.n_batches == 2
    assert full.n_batches == one_more.n_batches == 3
    np.testing.assert_allclose(run.finalize(full)["m"].value, np.full(3, 5 / 3))
    np.testing.assert_allclose(run.finalize(one_more)["m"].value, np.full(3, 5 / 3))
    np.testing.assert_allclose(run.finalize(half)["m"].value, np.full(3, 0.5))


def test_get_inference_graph_takes_the_options_of_estimate(tmp_path):
    x = pt.matrix("x")
    n = x.shape[0]
    m = popstats.bn_statistic(x.mean(0), "m", role="mean", group="g", count=n)
    v = popstats.bn_statistic(x.var(0), "v", role="var", group="g", count=n)
    y = (x - m) / pt.sqrt(v + 1e-5)
    data = [RNG.normal(size=(k, 3)) for k in (2, 5, 3)]
    batches = [{"x": d} for d in data]
    path = tmp_path / "ckpt.npz"
    y_inf, stats = popstats.get_inference_graph(
        [x], y, batches, estimator="pooled", checkpoint=path, progress=False,
        dtypes="strict", mode=MODE, return_stats=True,
    )
    assert path.exists()
    everything = np.concatenate(data)
    np.testing.assert_allclose(stats["v"].value, everything.var(0), rtol=1e-12)
    fn = pytensor.function([x], y_inf, mode=MODE)
    expected = (data[0] - everything.mean(0)) / np.sqrt(everything.var(0) + 1e-5)
    np.testing.assert_allclose(fn(data[0]), expected, rtol=1e-10)
    with fails("get_inference_graph(estimator=...)", "'median'"):
        popstats.get_inference_graph([x], y, batches, estimator="median", mode=MODE)
    with fails("get_inference_graph(return_stats=...)", "True or False"):
        popstats.get_inference_graph([x], y, batches, return_stats="yes", mode=MODE)


def test_outputs_keep_their_structure():
    Out = collections.namedtuple("Out", ["y", "loss"])
    x = pt.matrix("x")
    y = x - popstats.bn_statistic(x.mean(0), "m")
    outs = Out(y, (y**2).sum())
    batches = [{"x": np.ones((2, 3))}]
    got = popstats.get_inference_graph([x], outs, batches, mode=MODE)
    assert type(got) is Out
    stats = popstats.estimate([x], outs, batches, mode=MODE)
    assert type(popstats.rewrite(outs, stats)) is Out
    assert type(popstats.rewrite((y, y), stats)) is tuple
    assert type(popstats.rewrite([y], stats)) is list
    with fails("rewrite(outputs=...)", "namedtuple", "(dict)", "list(d.values())"):
        popstats.rewrite({"y": y}, stats)


def test_save_to_a_folder_or_a_missing_folder(tmp_path):
    x = pt.matrix("x")
    y = x - popstats.bn_statistic(x.mean(0), "m")
    run = popstats.Estimation([x], y, mode=MODE)
    state = run.run([{"x": np.ones((2, 3))}])
    stats = run.finalize(state)
    with fails("PopulationStatistics.save(path=...)", repr(str(tmp_path)),
               "is a folder", "stats.npz"):
        stats.save(tmp_path)
    missing = tmp_path / "nope" / "stats.npz"
    with fails("EstimationState.save(path=...)", str(missing), "does not exist",
               "os.makedirs"):
        state.save(missing)
    with fails("estimate(checkpoint=...)", "does not exist"):
        popstats.estimate([x], y, [{"x": np.ones((2, 3))}], checkpoint=missing,
                          mode=MODE)
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")
def test_save_where_nothing_can_be_written():
    x = pt.matrix("x")
    y = x - popstats.bn_statistic(x.mean(0), "m")
    stats = popstats.estimate([x], y, [{"x": np.ones((2, 3))}], mode=MODE)
    with fails("PopulationStatistics.save(path=...)", "cannot write",
               "'/proc/stats.npz'") as info:
        stats.save("/proc/stats.npz")
    assert ".popstats-" not in str(info.value)
    assert isinstance(info.value.__cause__, OSError)


def test_bind_checks_the_statistic_shape():
    x = pt.matrix("x")
    y = x - popstats.bn_statistic(x.mean(0), "m")
    stats = popstats.estimate([x], y, [{"x": np.ones((2, 3))}], mode=MODE)
    inference = popstats.rewrite(y, stats)
    shared = popstats.population_variables(inference)["m"]
    for width in (5, 1):
        z = pt.matrix("x")
        other = popstats.estimate([z], z - popstats.bn_statistic(z.mean(0), "m"),
                                  [{"x": np.full((2, width), 7.0)}], mode=MODE)
        with fails("bind(stats=...)", "'m'", f"statistic shape ({width},)",
                   "statistic shape (3,)", "another graph"):
            popstats.bind(inference, other)
        np.testing.assert_array_equal(shared.get_value(), np.ones(3))
    # the same width binds, in the graph's dtype
    z = pt.matrix("x")
    other = popstats.estimate([z], z - popstats.bn_statistic(z.mean(0), "m"),
                              [{"x": np.full((2, 3), 7.0)}], mode=MODE)
    popstats.bind(inference, other)
    np.testing.assert_array_equal(shared.get_value(), np.full(3, 7.0))


def _layer(x):
    m = popstats.bn_statistic(x.mean(axis=0), "m", role="mean", group="bn")
    v = popstats.bn_statistic(x.var(axis=0), "v", role="var", group="bn")
    return (x - m) / pt.sqrt(v + 1e-5)


def test_an_input_given_twice_is_refused_up_front():
    x = pt.matrix("x")
    y = _layer(x)
    batches = [(np.ones((3, 2)), np.ones((3, 2)))]
    with pytest.raises(popstats.PopstatsError, match=r"inputs=.*'x' is given more "
                                                     r"than once"):
        popstats.estimate([x, x], y, batches, mode=MODE)
    with pytest.raises(popstats.PopstatsError, match="more than once"):
        popstats.Estimation([x, x], y, mode=MODE)
    stats = popstats.estimate([x], y, [{"x": np.ones((3, 2))}], mode=MODE)
    with pytest.raises(popstats.PopstatsError, match="more than once"):
        popstats.drift(stats, [x, x], y, batches, mode=MODE)


def test_an_unnamed_input_is_named_by_position_with_the_fix():
    x = pt.matrix()  # no name: no string key can reach it
    y = _layer(x)
    with pytest.raises(popstats.PopstatsError) as caught:
        popstats.estimate([x], y, [{"x": np.ones((3, 2))}], mode=MODE)
    text = str(caught.value)
    assert "input 0 (unnamed" in text and "pt.matrix('x')" in text
    assert "{x: array}" in text
    # keyed by the variable itself, it works
    stats = popstats.estimate([x], y, [{x: np.ones((3, 2))}], mode=MODE)
    assert sorted(stats) == ["m", "v"]


def test_a_numpy_array_as_batches_gets_the_fix():
    x = pt.matrix("x")
    with pytest.raises(popstats.PopstatsError,
                       match=r"NumPy array.*rows, not batches.*\[\{'x': array\}\]"):
        popstats.estimate([x], _layer(x), np.ones((8, 2)), mode=MODE)
