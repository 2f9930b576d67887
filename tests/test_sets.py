"""Statistic sets (``rewrite(outputs, [stats_a, stats_b], select=k)``) and
:func:`popstats.bind`.

Inference with ``select=k`` must equal rewriting with set ``k`` alone (and
the NumPy model with that set's values, clamped at its own number of
steps); an index out of range raises when the compiled function runs; bind
changes the values a compiled function uses without recompiling it.
"""

from __future__ import annotations

import importlib.util
import warnings

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from shared import DEFAULT_MODE, MODE, fails, scan

import popstats

EPS = 1e-3
F = 2


# --------------------------------------------------------------------------
# Models and their NumPy inference
# --------------------------------------------------------------------------


class FF:
    def __init__(self):
        self.x = pt.matrix("x")
        self.g = pytensor.shared(np.array([1.5, -0.5]), name="g")
        m = popstats.bn_statistic(self.x.mean(0), "ff.mean")
        v = popstats.bn_statistic(self.x.var(0), "ff.var")
        self.y = self.g * (self.x - m) / pt.sqrt(v + EPS)

    @staticmethod
    def batches(seed, loc, sizes=(4, 6, 3)):
        rng = np.random.default_rng(seed)
        return [{"x": rng.normal(loc, 1.0 + loc / 4, (b, F))} for b in sizes]

    def infer(self, x, stats):
        m, v = stats["ff.mean"].value, stats["ff.var"].value
        return self.g.get_value() * (x - m) / np.sqrt(v + EPS)


class RNN:
    def __init__(self):
        self.x = pt.tensor3("xs")
        W = np.array([[0.5, -0.3], [0.2, 0.4]])
        self.W = W

        def step(xt, h):
            a = xt + pt.dot(h, W)
            m = popstats.bn_statistic(a.mean(0), "r.mean")
            v = popstats.bn_statistic(a.var(0), "r.var")
            return pt.tanh((a - m) / pt.sqrt(v + EPS))

        self.y = scan(step, sequences=[self.x], outputs_info=[pt.zeros_like(self.x[0])])

    @staticmethod
    def batches(seed, loc, lengths):
        rng = np.random.default_rng(seed)
        return [{"xs": rng.normal(loc, 1.5, (t, 3, F))} for t in lengths]

    def infer(self, x, stats):
        m, v = stats["r.mean"].value, stats["r.var"].value
        steps = len(m)
        h = np.zeros_like(x[0])
        out = []
        for t in range(len(x)):
            a = x[t] + h @ self.W
            s = min(t, steps - 1)  # past the estimated steps: the last one
            h = np.tanh((a - m[s]) / np.sqrt(v[s] + EPS))
            out.append(h)
        return np.stack(out)


def compile_(inputs, outputs, mode=MODE):
    return pytensor.function(inputs, outputs, mode=mode)


@pytest.fixture(scope="module")
def ff():
    model = FF()
    sets = [
        popstats.estimate([model.x], model.y, FF.batches(i, loc), mode=MODE)
        for i, loc in enumerate((0.0, 3.0, -2.0))
    ]
    return model, sets


@pytest.fixture(scope="module")
def rnn():
    model = RNN()
    # estimated over runs of different lengths: 3, 5 and 2 steps
    sets = [
        popstats.estimate([model.x], model.y, RNN.batches(i, loc, lengths), mode=MODE)
        for i, (loc, lengths) in enumerate(
            ((0.0, (2, 3)), (2.0, (4, 5, 3)), (-1.0, (2, 1, 2)))
        )
    ]
    assert [s["r.mean"].value.shape[0] for s in sets] == [3, 5, 2]
    return model, sets


# --------------------------------------------------------------------------
# select
# --------------------------------------------------------------------------


def test_select_equals_each_set_alone_feed_forward(ff):
    model, sets = ff
    k = pt.iscalar("k")
    f = compile_([model.x, k], popstats.rewrite(model.y, sets, select=k))
    x = np.random.default_rng(5).normal(1.0, 2.0, (4, F))
    for i, stats in enumerate(sets):
        alone = compile_([model.x], popstats.rewrite(model.y, stats))(x)
        np.testing.assert_allclose(f(x, i), alone, rtol=1e-12)
        np.testing.assert_allclose(f(x, i), model.infer(x, stats), rtol=1e-12)
    # the sets differ, so the choice matters
    assert not np.allclose(f(x, 0), f(x, 1))


def test_select_with_sets_of_different_lengths(rnn):
    model, sets = rnn
    k = pt.lscalar("k")  # any integer dtype
    f = compile_([model.x, k], popstats.rewrite(model.y, sets, select=k))
    # longer than every set: each set clamps at its own last step
    x = np.random.default_rng(6).normal(0.5, 1.5, (7, 3, F))
    for i, stats in enumerate(sets):
        alone = compile_([model.x], popstats.rewrite(model.y, stats))(x)
        np.testing.assert_allclose(f(x, i), alone, rtol=1e-12)
        np.testing.assert_allclose(f(x, i), model.infer(x, stats), rtol=1e-10)
    # the stacked table is padded by repeating each set's last step
    table = popstats.population_variables(
        popstats.rewrite(model.y, sets, select=k)
    )["r.mean"].get_value()
    assert table.shape == (3, 5, F)
    np.testing.assert_array_equal(table[2, :2], sets[2]["r.mean"].value)
    np.testing.assert_array_equal(table[2, 2:], np.repeat(sets[2]["r.mean"].value[-1:],
                                                          3, axis=0))


def test_select_in_nested_loops_with_different_lengths():
    x = pt.tensor4("x4")

    def inner(xt, g):
        m = popstats.bn_statistic(xt.mean(0), "in.mean")
        return g + (xt - m)

    def outer(xs, h):
        gs = scan(inner, sequences=[xs], outputs_info=[h])
        return gs[-1] - popstats.bn_statistic(gs[-1].mean(0), "out.mean")

    y = scan(outer, sequences=[x], outputs_info=[pt.zeros_like(x[0, 0])])
    rng = np.random.default_rng(7)
    sets = [
        popstats.estimate(
            [x], y, [{"x4": rng.normal(loc, 1.0, (*s, 3, F))} for s in shapes],
            mode=MODE,
        )
        for loc, shapes in ((0.0, ((2, 3), (1, 1))), (2.0, ((3, 2),)))
    ]
    k = pt.iscalar("k")
    f = compile_([x, k], popstats.rewrite(y, sets, select=k))
    test = rng.normal(0.5, 1.0, (4, 4, 2, F))
    for i, stats in enumerate(sets):
        alone = compile_([x], popstats.rewrite(y, stats))(test)
        np.testing.assert_allclose(f(test, i), alone, rtol=1e-12)


@pytest.mark.parametrize("mode", [DEFAULT_MODE, "CVM", MODE],
                         ids=["default", "CVM", MODE])
def test_select_out_of_range_raises_at_run_time(ff, mode):
    model, sets = ff
    k = pt.iscalar("k")
    f = compile_([model.x, k], popstats.rewrite(model.y, sets[:2], select=k), mode=mode)
    x = np.ones((3, F))
    np.testing.assert_allclose(f(x, 1), model.infer(x, sets[1]), rtol=1e-12)
    for bad in (2, 3, -1):
        with fails("rewrite(select=...)", "out of range", "number of sets"):
            f(x, bad)
    # still usable afterwards
    np.testing.assert_allclose(f(x, 0), model.infer(x, sets[0]), rtol=1e-12)


def test_select_out_of_range_inside_a_loop(rnn):
    model, sets = rnn
    k = pt.iscalar("k")
    f = compile_([model.x, k], popstats.rewrite(model.y, sets, select=k))
    x = np.ones((4, 3, F))
    for bad in (3, -1):
        with fails("rewrite(select=...)", "out of range"):
            f(x, bad)


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax not installed")
def test_select_on_jax(ff):
    model, sets = ff
    k = pt.iscalar("k")
    inference = popstats.rewrite(model.y, sets, select=k)
    # JAX cannot raise inside a compiled function; PyTensor says so
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Skipping CheckAndRaise", UserWarning)
        f = compile_([model.x, k], inference, mode="JAX")
    x = np.random.default_rng(8).normal(size=(3, F))
    for i, stats in enumerate(sets):
        np.testing.assert_allclose(f(x, i), model.infer(x, stats), rtol=1e-6)


# --------------------------------------------------------------------------
# bind
# --------------------------------------------------------------------------


def test_bind_swaps_values_without_recompiling(ff):
    model, sets = ff
    inference = popstats.rewrite(model.y, sets[0])
    f = compile_([model.x], inference)
    x = np.random.default_rng(9).normal(size=(5, F))
    np.testing.assert_allclose(f(x), model.infer(x, sets[0]), rtol=1e-12)
    for stats in (sets[1], sets[2], sets[0]):
        popstats.bind(inference, stats)
        np.testing.assert_allclose(f(x), model.infer(x, stats), rtol=1e-12)
        shared = popstats.population_variables(inference)
        np.testing.assert_array_equal(shared["ff.var"].get_value(),
                                      stats["ff.var"].value)


def test_bind_in_loops_to_a_set_of_other_length(rnn):
    model, sets = rnn
    inference = popstats.rewrite(model.y, sets[0])  # 3 steps
    f = compile_([model.x], inference)
    x = np.random.default_rng(10).normal(0.5, 1.5, (6, 3, F))
    popstats.bind(inference, sets[1])  # 5 steps
    np.testing.assert_allclose(f(x), model.infer(x, sets[1]), rtol=1e-10)
    popstats.bind(inference, sets[2])  # 2 steps
    np.testing.assert_allclose(f(x), model.infer(x, sets[2]), rtol=1e-10)


def test_bind_a_new_list_of_sets_to_a_select_graph(rnn):
    model, sets = rnn
    k = pt.iscalar("k")
    inference = popstats.rewrite(model.y, sets[:2], select=k)
    f = compile_([model.x, k], inference)
    x = np.random.default_rng(11).normal(0.5, 1.5, (6, 3, F))
    with fails("out of range"):
        f(x, 2)
    # another number of sets, in another order
    popstats.bind(inference, [sets[2], sets[1], sets[0]])
    for i, stats in enumerate((sets[2], sets[1], sets[0])):
        np.testing.assert_allclose(f(x, i), model.infer(x, stats), rtol=1e-10)
    with fails("out of range"):
        f(x, 3)


# --------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "select",
    [pt.dscalar("kf"), pt.ivector("kv"), 1, np.int64(0), "k"],
    ids=["float", "vector", "int", "numpy-int", "str"],
)
def test_select_must_be_a_symbolic_integer_scalar(ff, select):
    model, sets = ff
    with fails("rewrite(select=...)", "symbolic integer scalar", "pt.iscalar",
               "2 sets"):
        popstats.rewrite(model.y, sets[:2], select=select)


def test_several_sets_need_select(ff):
    model, sets = ff
    with fails("rewrite(select=...)", "3 statistic sets", "no select",
               "select=pt.iscalar"):
        popstats.rewrite(model.y, sets)
    with fails("rewrite(stats=...)", "non-empty list"):
        popstats.rewrite(model.y, [], select=pt.iscalar("k"))
    with fails("rewrite(stats=...)", "PopulationStatistics"):
        popstats.rewrite(model.y, [sets[0], {"ff.mean": 0.0}], select=pt.iscalar("k"))


def test_a_set_missing_a_statistic(ff):
    model, sets = ff
    other = pt.matrix("x")
    foreign = popstats.estimate(
        [other], other - popstats.bn_statistic(other.mean(0), "something.else"),
        FF.batches(0, 0.0), mode=MODE,
    )
    with fails("rewrite(stats=...)", "has no value in stats[1]", "'ff.mean'",
               "'something.else'"):
        popstats.rewrite(model.y, [sets[0], foreign], select=pt.iscalar("k"))


def test_a_set_from_another_build_of_the_same_model(ff):
    """Another build (new marker keys) of the same code: its values apply."""
    model, sets = ff
    other = FF()
    assert other.y is not model.y
    rebuilt = popstats.estimate([other.x], other.y, FF.batches(0, 0.0), mode=MODE)
    k = pt.iscalar("k")
    fn = pytensor.function([model.x, k], popstats.rewrite(model.y, [sets[0], rebuilt],
                                                          select=k), mode=MODE)
    expected = pytensor.function(
        [other.x], popstats.rewrite(other.y, rebuilt), mode=MODE
    )
    x = FF.batches(0, 0.0)[0]["x"]
    np.testing.assert_allclose(fn(x, 1), expected(x), rtol=1e-12)


def test_sets_with_different_time_modes(rnn):
    model, sets = rnn
    pooled = popstats.estimate(
        [model.x], model.y, RNN.batches(0, 0.0, (2, 3)), time="pooled", mode=MODE
    )
    k = pt.iscalar("k")
    parts = ("time modes ('step',)", "('pooled',) and (2,) in stats[1]", "time=")
    with fails("rewrite(stats=...)", "statistic 'r.", *parts):
        popstats.rewrite(model.y, [sets[0], pooled], select=k)
    inference = popstats.rewrite(model.y, sets[:2], select=k)
    built = ("time modes ('pooled',) in stats[1]", "graph was built for ('step',)",
             "time=")
    with fails("bind(stats=...)", "statistic 'r.", *built):
        popstats.bind(inference, [sets[0], pooled])
    # one set alone of the other mode does not fit either
    with fails("bind(stats=...)", "statistic 'r.", "time modes ('pooled',) in stats",
               "built for ('step',)"):
        popstats.bind(popstats.rewrite(model.y, sets[0]), pooled)


def test_bind_onto_a_graph_without_population_variables(ff):
    model, sets = ff
    with fails("bind(outputs=...)", "no population variables", "popstats.rewrite"):
        popstats.bind(model.y, sets[0])


def test_bind_needs_the_structure_the_graph_was_built_with(ff):
    model, sets = ff
    k = pt.iscalar("k")
    with_select = popstats.rewrite(model.y, sets[:2], select=k)
    without = popstats.rewrite(model.y, sets[0])
    with fails("bind(stats=...)", "with select", "a list of PopulationStatistics"):
        popstats.bind(with_select, sets[1])
    with fails("bind(stats=...)", "without select", "one"):
        popstats.bind(without, [sets[0], sets[1]])
    other = FF()
    foreign = popstats.estimate([other.x], other.y, FF.batches(0, 0.0), mode=MODE)
    renamed = popstats.estimate(
        [other.x],
        other.x - popstats.bn_statistic(other.x.mean(0), "something.else"),
        FF.batches(0, 0.0), mode=MODE,
    )
    # a set from another graph binds by name; one without the names fails
    popstats.bind(without, foreign)
    with fails("bind(stats=...)", "'ff.", "has no value", "something.else"):
        popstats.bind(without, renamed)
    with fails("bind(stats=...)", "has no value in stats[1]"):
        popstats.bind(with_select, [sets[0], renamed])
