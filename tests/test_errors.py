"""Bad input: every error is a PopstatsError naming call, argument, value and fix.

Each test also checks that nothing is lost: after the error the user's graph
is the same graph (same nodes), still compiles and gives the NumPy values.
"""

from __future__ import annotations

import re
from contextlib import contextmanager

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from pytensor.graph.traversal import toposort
from shared import PT_VERSION

import popstats

MODE = "FAST_COMPILE"  # errors do not depend on the backend; keep compiles cheap
EPS = 1e-3
FROZEN_SCAN = PT_VERSION >= (3, 1)  # Scan inner graphs frozen, tags dropped


# --------------------------------------------------------------------- helpers


@contextmanager
def fails(*parts: str, pattern: str | None = None):
    """Expect a PopstatsError (a ValueError) whose message has every part."""
    with pytest.raises(popstats.PopstatsError) as info:
        yield info
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    for part in parts:
        assert part in message, f"{part!r} not in message: {message}"
    if pattern is not None:
        assert re.search(pattern, message), f"{pattern!r} not in message: {message}"


# Both statistics of Model are affected by a bad batch; either may be reported.
EITHER_STAT = r"statistic '(mean|var)' \(in <graph>\)"


def snapshot(outputs):
    """The identity of every node of a graph, to show it was not modified."""
    return [(node, node.op, tuple(node.inputs)) for node in toposort(outputs)]


def numpy_bn(x, scale=1.0):
    h = x * scale
    return (h - h.mean(axis=0)) / np.sqrt(h.var(axis=0) + EPS)


class Model:
    """A batch-norm layer with a scale input: y = BN(x * s)."""

    def __init__(self):
        self.x = pt.matrix("x")
        self.s = pt.vector("s")
        h = self.x * self.s
        self.mean = popstats.bn_statistic(h.mean(axis=0), label="mean")
        self.var = popstats.bn_statistic(h.var(axis=0), label="var")
        self.y = (h - self.mean) / pt.sqrt(self.var + EPS)
        self.inputs = [self.x, self.s]
        self.before = snapshot([self.y])

    def batches(self, n=3, seed=0, width=3):
        rng = np.random.default_rng(seed)
        return [
            {"x": rng.normal(1.0, 2.0, (5, width)), "s": np.linspace(1.0, 2.0, width)}
            for _ in range(n)
        ]

    def check_intact(self):
        """Same graph, compiles, NumPy values; estimating still works."""
        assert snapshot([self.y]) == self.before
        fn = pytensor.function(self.inputs, self.y, mode=MODE)
        batch = self.batches(1, seed=7)[0]
        np.testing.assert_allclose(
            fn(batch["x"], batch["s"]), numpy_bn(batch["x"], batch["s"]), rtol=1e-10
        )
        batches = self.batches()
        stats = popstats.estimate(self.inputs, self.y, batches, mode=MODE)
        h = [b["x"] * b["s"] for b in batches]
        np.testing.assert_allclose(
            stats["mean"].value, np.mean([v.mean(0) for v in h], axis=0)
        )
        np.testing.assert_allclose(
            stats["var"].value, np.mean([v.var(0) for v in h], axis=0)
        )


@pytest.fixture
def model():
    m = Model()
    yield m
    m.check_intact()


@pytest.fixture(scope="module")
def stats():
    m = Model()
    return popstats.estimate(m.inputs, m.y, m.batches(), mode=MODE)


# ------------------------------------------------------------ no statistic


@pytest.mark.parametrize("call", ["export", "estimate", "get_inference_graph"])
def test_no_statistic_in_plain_graph(call):
    x = pt.matrix("x")
    y = (x - x.mean(axis=0)) * 2.0
    before = snapshot([y])
    run = {
        "export": lambda: popstats.export(y),
        "estimate": lambda: popstats.estimate([x], y, [{"x": np.ones((2, 2))}]),
        "get_inference_graph": lambda: popstats.get_inference_graph(
            [x], y, [{"x": np.ones((2, 2))}]
        ),
    }[call]
    with fails(
        "(outputs=...)", "no batch statistic found", "popstats.bn_statistic("
    ) as e:
        run()
    message = str(e.value)
    assert re.match(rf"({call}|estimate)\(outputs=\.\.\.\)", message), message
    assert "Scan" not in message  # no loop hint for a graph without loops
    assert snapshot([y]) == before
    xv = np.arange(6.0).reshape(3, 2)
    fn = pytensor.function([x], y, mode=MODE)
    np.testing.assert_allclose(fn(xv), (xv - xv.mean(0)) * 2.0)


def _tagged_scan():
    x = pt.matrix("x")

    def step(xt):
        m = xt.mean()
        m.tag.bn_statistic = True
        m.tag.bn_label = "row_mean"
        return xt - m

    return x, pytensor.scan(step, sequences=[x], return_updates=False)


def test_only_tags_inside_scan():
    x, ys = _tagged_scan()
    before = snapshot([ys])
    if FROZEN_SCAN:
        with fails(
            "export(outputs=...)",
            "no batch statistic found",
            "Scan",
            "drops the tags",
            "popstats.bn_statistic(var",
        ):
            popstats.export(ys)
        with fails("estimate(outputs=...)", "drops the tags", "bn_statistic("):
            popstats.estimate([x], ys, [{"x": np.ones((2, 2))}], mode=MODE)
    else:  # PyTensor 3.0 keeps tags inside Scan: the statistic is found
        (site,) = popstats.export(ys).sites
        assert (site.name, site.depth) == ("row_mean", 1)
    assert snapshot([ys]) == before
    xv = np.arange(6.0).reshape(2, 3)
    fn = pytensor.function([x], ys, mode=MODE)
    np.testing.assert_allclose(fn(xv), xv - xv.mean(axis=1, keepdims=True))


# ---------------------------------------------------------------- batches


def test_no_batches(model):
    with fails("estimate(batches=...)", "no batches", "non-empty"):
        popstats.estimate(model.inputs, model.y, [], mode=MODE)
    gen = iter(model.batches())
    list(gen)
    with fails("estimate(batches=...)", "no batches", "already consumed"):
        popstats.estimate(model.inputs, model.y, gen, mode=MODE)
    with fails("get_inference_graph(batches=...)", "no batches"):
        popstats.get_inference_graph(model.inputs, model.y, (), mode=MODE)


@pytest.mark.parametrize(
    ("batches", "shown"),
    [(5, "5 (int)"), (None, "None (NoneType)"), (2.5, "2.5 (float)")],
)
def test_batches_not_iterable(model, batches, shown):
    with fails("estimate(batches=...)", "expected an iterable of batches", shown):
        popstats.estimate(model.inputs, model.y, batches, mode=MODE)


def test_single_dict_instead_of_list(model):
    batch = model.batches(1)[0]
    with fails("estimate(batches=...)", "(dict)", "batches=[batch]"):
        popstats.estimate(model.inputs, model.y, batch, mode=MODE)


def test_batch_lacks_an_input(model):
    good, bad = model.batches(2)
    del bad["s"]
    with fails("estimate(batches=...)", "batch 1 lacks 's'", "keys ['x']", "one entry"):
        popstats.estimate(model.inputs, model.y, [good, bad], mode=MODE)
    misspelt = {"X": good["x"], "s": good["s"]}
    with fails("batch 0 lacks 'x'", "keys ['X', 's']"):
        popstats.estimate(model.inputs, model.y, [misspelt], mode=MODE)


def test_tuple_batch_of_wrong_length(model):
    b = model.batches(1)[0]
    with fails(
        "estimate(batches=...)",
        "batch 0 has 1 values",
        "inputs has 2: ['x', 's']",
        "in the order of inputs",
    ):
        popstats.estimate(model.inputs, model.y, [(b["x"],)], mode=MODE)
    with fails("batch 1 has 3 values"):
        popstats.estimate(
            model.inputs,
            model.y,
            [(b["x"], b["s"]), [b["x"], b["s"], b["s"]]],
            mode=MODE,
        )


@pytest.mark.parametrize(
    ("batch", "shown"),
    [(np.ones((5, 3)), "(ndarray)"), ("x", "'x' (str)"), (3, "3 (int)")],
)
def test_batch_of_wrong_kind(model, batch, shown):
    with fails("estimate(batches=...)", "batch 0 is ", shown, "expected a dict"):
        popstats.estimate(model.inputs, model.y, [batch], mode=MODE)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_statistic(model, bad):
    batches = model.batches(3)
    batches[2]["x"][1, 0] = bad
    with fails(
        "estimate(batches=...)", "not finite in batch 2", "NaN", pattern=EITHER_STAT
    ):
        popstats.estimate(model.inputs, model.y, batches, mode=MODE)


def test_statistic_shape_changes(model):
    batches = model.batches(1, width=3) + model.batches(1, width=4)
    with fails(
        "estimate(batches=...)",
        "shape (4,) in batch 1 but (3,) in earlier batches",
        "same shape in every batch",
        pattern=EITHER_STAT,
    ):
        popstats.estimate(model.inputs, model.y, batches, mode=MODE)


# ------------------------------------------------------------ outputs / inputs


def _calls(model, stats):
    b = model.batches(1)
    return {
        "export": lambda out: popstats.export(out),
        "estimate": lambda out: popstats.estimate(model.inputs, out, b, mode=MODE),
        "rewrite": lambda out: popstats.rewrite(out, stats),
        "get_inference_graph": lambda out: popstats.get_inference_graph(
            model.inputs, out, b, mode=MODE
        ),
        "population_variables": lambda out: popstats.population_variables(out),
    }


@pytest.mark.parametrize(
    "call",
    ["export", "estimate", "rewrite", "get_inference_graph", "population_variables"],
)
def test_outputs_not_variables(model, stats, call):
    run = _calls(model, stats)[call]
    with fails(f"{call}(outputs=...)", "None (NoneType)", "PyTensor variable"):
        run(None)
    with fails("e.g. outputs=y"):
        run(None)
    with fails(f"{call}(outputs=...)", "[] (list)", "non-empty"):
        run([])
    with fails(f"{call}(outputs=...)", "element 1 is 3.0 (float)", "symbolic outputs"):
        run([model.y, 3.0])
    with fails(f"{call}(outputs=...)", "(ndarray)"):
        run(np.ones(3))


def test_inputs_not_variables(model):
    b = model.batches(1)
    with fails("estimate(inputs=...)", "element 0 is 'x' (str)", "symbolic inputs"):
        popstats.estimate(["x", model.s], model.y, b, mode=MODE)
    with fails("estimate(inputs=...)", "list of input variables", "'x' (str)"):
        popstats.estimate("x", model.y, b, mode=MODE)


def test_inputs_computed_constant_or_shared(model):
    b = model.batches(1)
    doubled = model.x * 2
    with fails(
        "estimate(inputs=...)", str(doubled), "not a free input", "root variables"
    ):
        popstats.estimate([doubled, model.s], model.y, b, mode=MODE)
    shared = pytensor.shared(np.ones(3), name="w")
    with fails("estimate(inputs=...)", "w is not a free input"):
        popstats.estimate([model.x, shared], model.y, b, mode=MODE)


def test_statistics_depend_on_missing_input(model):
    with fails(
        "estimate(inputs=...)", "depend on 's'", "not in inputs ['x']", "Add it"
    ):
        popstats.estimate([model.x], model.y, model.batches(1), mode=MODE)


# ------------------------------------------------------------------ loops


def test_nested_inner_length_varies():
    lengths = pt.ivector("lengths")
    data = pt.tensor3("data")  # (outer steps, max inner steps, features)

    def outer_step(length, rows):
        def inner_step(v):
            return v * popstats.bn_statistic(v.mean(), label="inner_mean")

        inner = pytensor.scan(
            inner_step, sequences=[rows[:length]], return_updates=False
        )
        return inner.sum()

    out = pytensor.scan(outer_step, sequences=[lengths, data], return_updates=False)
    before = snapshot([out])
    rng = np.random.default_rng(1)
    values = rng.normal(size=(2, 4, 3))
    same = np.array([3, 3], dtype="int32")
    varying = np.array([2, 4], dtype="int32")
    batches = [(same, values), (varying, values)]
    with fails(
        "estimate(batches=...)",
        "failed on batch 1",
        "nested loops (inner_mean)",
        "inner loop's length varies between outer steps",
        "time=('step', 'pooled')",
        "pad the inner sequences",
    ):
        popstats.estimate([lengths, data], out, batches, mode=MODE)
    # the fix the message gives works: pooled over the inner loop's steps
    stats = popstats.estimate(
        [lengths, data], out, batches, mode=MODE, time=("step", "pooled")
    )
    # per outer step: each batch's inner steps averaged (no count: equal
    # weights), then the average over batches
    expected = [
        np.mean([values[t, :n].mean(axis=1).mean() for n in (same[t], varying[t])])
        for t in range(2)
    ]
    np.testing.assert_allclose(stats["inner_mean"].value, expected, rtol=1e-12)
    # nothing lost: the user's graph runs with varying lengths
    assert snapshot([out]) == before
    fn = pytensor.function([lengths, data], out, mode=MODE)
    expected = [
        sum((v * v.mean()).sum() for v in values[i, :n]) for i, n in enumerate(varying)
    ]
    np.testing.assert_allclose(fn(varying, values), expected, rtol=1e-10)


def _loop_model(recurrent):
    """A batch-normalized loop; recurrent: its gradient loop has mit_mot states."""
    x = pt.matrix("x")
    w = pt.vector("w")

    def normalize(h):
        mean = popstats.bn_statistic(h.mean(), label="step_mean")
        var = popstats.bn_statistic(h.var(), label="step_var")
        return (h - mean) / pt.sqrt(var + EPS)

    if recurrent:
        ys = pytensor.scan(
            lambda xt, prev, w: normalize(xt * w + prev),
            sequences=[x],
            outputs_info=[pt.zeros(3)],
            non_sequences=[w],
            return_updates=False,
        )
    else:
        ys = pytensor.scan(
            lambda xt, w: normalize(xt * w),
            sequences=[x],
            non_sequences=[w],
            return_updates=False,
        )
    cost = (ys**2 * np.array([1.0, 2.0, 3.0])).sum()
    return x, w, ys, pytensor.grad(cost, w)


def numpy_loop(xv, wv, recurrent):
    prev, out = np.zeros(3), []
    for xt in xv:
        h = xt * wv + (prev if recurrent else 0.0)
        prev = (h - h.mean()) / np.sqrt(h.var() + EPS)
        out.append(prev)
    return np.array(out)


@pytest.mark.parametrize("recurrent", [False, True], ids=["feedforward", "recurrent"])
def test_gradient_of_a_loop_in_outputs(recurrent):
    x, w, ys, grad = _loop_model(recurrent)
    xv = np.arange(6.0).reshape(2, 3) ** 1.5
    wv = np.array([1.0, -2.0, 0.5])
    fn = pytensor.function([x, w], [ys, grad], mode=MODE)
    ys_before, grad_before = fn(xv, wv)
    before = snapshot([ys, grad])
    batches = [(xv, wv)]
    stats = popstats.estimate([x, w], ys, batches, mode=MODE)
    calls = {
        "export": lambda: popstats.export([ys, grad]),
        "estimate": lambda: popstats.estimate([x, w], grad, batches, mode=MODE),
        "rewrite": lambda: popstats.rewrite([ys, grad], stats),
        "get_inference_graph": lambda: popstats.get_inference_graph(
            [x, w], [ys, grad], batches, mode=MODE
        ),
    }
    for call, run in calls.items():
        with fails(
            "(outputs=...): the graph contains the gradient of a loop",
            "grad_of_",
            "pytensor.grad",
            "take gradients of the inference graph instead",
        ) as e:
            run()
        assert str(e.value).startswith(f"{call}(")
    # nothing lost: same graph, same values; the forward graph still works
    assert snapshot([ys, grad]) == before
    fn = pytensor.function([x, w], [ys, grad], mode=MODE)
    ys_after, grad_after = fn(xv, wv)
    np.testing.assert_array_equal(ys_after, ys_before)
    np.testing.assert_array_equal(grad_after, grad_before)
    np.testing.assert_allclose(ys_after, numpy_loop(xv, wv, recurrent), rtol=1e-10)
    (site,) = [s for s in popstats.export(ys).sites if s.label == "step_mean"]
    assert site.depth == 1
    assert len(stats) == 2


# ----------------------------------------------------------------- rewrite


def test_rewrite_with_stats_lacking_a_statistic(model, stats):
    other = popstats.bn_statistic(model.x.max(axis=0), label="peak")
    z = model.y + other
    before = snapshot([z])
    with fails(
        "rewrite(stats=...)",
        "statistic 'peak' (in <graph>) has no value in stats",
        "values without a statistic in this graph: none",
        "estimate again",
    ):
        popstats.rewrite(z, stats)
    assert snapshot([z]) == before
    xv, sv = np.ones((2, 3)) * [[1.0], [3.0]], np.ones(3)
    fn = pytensor.function([model.x, model.s], z, mode=MODE)
    np.testing.assert_allclose(fn(xv, sv), numpy_bn(xv) + xv.max(axis=0))


@pytest.mark.parametrize(
    ("bad", "shown"),
    [({"mean": np.zeros(3)}, "(dict)"), (None, "None (NoneType)")],
)
def test_rewrite_with_wrong_stats_object(model, bad, shown):
    with fails(
        "rewrite(stats=...)", "expected PopulationStatistics", shown, "estimate()"
    ):
        popstats.rewrite(model.y, bad)


def test_population_statistics_missing_name(stats):
    with fails(
        "PopulationStatistics['missing']", "no such statistic", "['mean', 'var']"
    ):
        stats["missing"]
    assert "missing" not in stats
    assert stats.get("missing") is None
    assert sorted(stats) == ["mean", "var"]


# ------------------------------------------------------------- bn_statistic


@pytest.mark.parametrize(
    ("var", "shown"),
    [
        (np.ones(3), "(ndarray)"),
        (1.5, "1.5 (float)"),
        (None, "None (NoneType)"),
        ("x", "'x' (str)"),
    ],
)
def test_bn_statistic_non_variable(var, shown):
    with fails(
        "bn_statistic(var=...)", "expected a PyTensor variable", shown, "label="
    ):
        popstats.bn_statistic(var)


@pytest.mark.parametrize(
    ("label", "shown"), [(3, "3 (int)"), ("", "'' (str)"), (b"m", "b'm' (bytes)")]
)
def test_bn_statistic_bad_label(label, shown):
    x = pt.matrix("x")
    m = x.mean(axis=0)
    before = snapshot([m])
    with fails("bn_statistic(label=...)", "non-empty string", shown, "label='"):
        popstats.bn_statistic(m, label=label)
    assert snapshot([m]) == before
    assert not popstats.is_statistic(m)


# ------------------------------------------------- issue 28: errors, not raw ones


def _linear_bn(width: int, name: str | None = "W1", seed: int = 0):
    """x -> x @ W -> batch norm (mean and var marked, grouped, counted)."""
    rng = np.random.default_rng(seed)
    x = pt.matrix("x")
    w = pytensor.shared(np.random.default_rng(99).normal(size=(3, width)), name=name)
    h = x @ w
    n = h.shape[0]
    m = popstats.bn_statistic(h.mean(0), "bn.mean", role="mean", group="bn", count=n)
    v = popstats.bn_statistic(h.var(0), "bn.var", role="var", group="bn", count=n)
    batches = [{"x": rng.normal(size=(8, 3))} for _ in range(3)]
    return x, (h - m) / pt.sqrt(v + EPS), batches


def test_regression_single_input_variable_is_accepted():
    """estimate/get_inference_graph took one variable as inputs before the
    upstream work (TensorType does not support iteration since)."""
    x, y, batches = _linear_bn(4)
    single = popstats.estimate(x, y, batches, mode=MODE)
    listed = popstats.estimate([x], y, batches, mode=MODE)
    np.testing.assert_array_equal(single["bn.var"].value, listed["bn.var"].value)
    y_inf = popstats.get_inference_graph(x, y, batches, mode=MODE, estimator="pooled")
    data = np.concatenate([b["x"] for b in batches])
    h = data @ np.random.default_rng(99).normal(size=(3, 4))
    got = pytensor.function([x], y_inf, mode=MODE)(data[:2])
    np.testing.assert_allclose(got, ((h - h.mean(0)) / np.sqrt(h.var(0) + EPS))[:2],
                               rtol=1e-10)
    population = popstats.estimate(x, y, batches, mode=MODE, upstream="population")
    np.testing.assert_allclose(population["bn.mean"].value, h.mean(0), rtol=1e-12)


def test_check_batch_independence_repeated_input():
    x = pt.matrix("x")
    with fails("check_batch_independence(inputs=...)", "'x' is given more than once",
               "[x]"):
        popstats.check_batch_independence([x, x], x * 2.0, {"x": np.ones((3, 2))})


def test_check_batch_independence_graph_that_cannot_run_one_example():
    x = pt.matrix("x")
    y = x * 2.0
    with fails("check_batch_independence(outputs=...)", "example 0 alone",
               "IndexError", "depend on other examples", "y[1]"):
        popstats.check_batch_independence([x], y - y[1], {"x": np.ones((3, 2))})


def test_inputs_named_alike_are_refused_naming_them():
    x, x2 = pt.matrix("x"), pt.matrix("x")
    m = popstats.bn_statistic((x + x2).mean(0), label="m")
    out = x + x2 - m
    for batch in ({"x": np.ones((3, 2))}, (np.ones((3, 2)), np.ones((3, 2)))):
        with fails("estimate(inputs=...)", "several inputs are named 'x'",
                   "pt.matrix('x2')"):
            popstats.estimate([x, x2], out, [batch], mode=MODE)
    with fails("check_batch_independence(inputs=...)", "several inputs are named 'x'"):
        popstats.check_batch_independence([x, x2], x + x2, {"x": np.ones((3, 2))})


def test_rewrite_match_name_refuses_statistics_of_another_shape():
    x, y, batches = _linear_bn(4)
    stats = popstats.estimate([x], y, batches, mode=MODE)
    x5, y5, _ = _linear_bn(5)
    before = snapshot([y5])
    with fails("rewrite(stats=...)", "statistic 'bn.", "shape (4,) in stats",
               "shape (5,)", "estimate on this graph"):
        popstats.rewrite(y5, stats, match="name")
    assert snapshot([y5]) == before
    # bind refuses the same values (its own check)
    y5_inf = popstats.rewrite(y5, popstats.estimate([x5], y5, batches, mode=MODE))
    with fails("bind(stats=...)", "estimated for another graph"):
        popstats.bind(y5_inf, stats, match="name")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_rewrite_and_bind_refuse_non_finite_values(bad):
    x, y, batches = _linear_bn(4)
    stats = popstats.estimate([x], y, batches, mode=MODE)
    good = popstats.rewrite(y, stats)
    stats["bn.mean"].value[1] = bad
    kind = "NaN" if np.isnan(bad) else "infinity"
    with fails("rewrite(stats=...)", "statistic 'bn.mean' holds", kind,
               "1 of 4 values", "finite"):
        popstats.rewrite(y, stats)
    with fails("bind(stats=...)", "statistic 'bn.mean' holds", kind):
        popstats.bind(good, stats)


def test_unnamed_weights_message_names_the_shared_variables():
    x, y, batches = _linear_bn(4, name="W1")
    stats = popstats.estimate([x], y, batches, mode=MODE)
    _, y_unnamed, _ = _linear_bn(4, name=None)  # the same values, no name
    with fails("rewrite(stats=...)", "computed differently",
               "1 shared variable(s) without a name (shapes (3, 4))",
               "name='W1'"):
        popstats.rewrite(y_unnamed, stats)
    _, y_renamed, _ = _linear_bn(4, name="W2")
    with fails("rewrite(stats=...)", "the shared variables 'W2'", "renamed"):
        popstats.rewrite(y_renamed, stats)


def test_bn_statistic_refuses_what_reduces_nothing():
    x = pt.matrix("x")
    w = pytensor.shared(np.ones((2, 2)), name="W")
    for var, kind in ((x, "an input"), (w, "a shared variable"),
                      (pt.constant(np.ones(2)), "a constant")):
        with fails("bn_statistic(var=...)", kind, "reduces nothing", "h.mean(axis=0)"):
            popstats.bn_statistic(var)
    with fails("bn_statistic(var=...)", "shared variables and constants alone"):
        popstats.bn_statistic(w.sum(axis=0))
    # no false alarm on real statistics: reductions, moments, masked, in loops
    popstats.bn_statistic(x.mean(0), label="m")
    popstats.bn_statistic(x.var(0), label="v", role="var", group="g", count=x.shape[0])
    popstats.bn_statistic(pt.sqrt(x.var(0) + 1.0), label="s", role="std")
    h = x @ w
    popstats.mark_moments(h.mean(0), h.var(0), "mm", count=h.shape[0])
    popstats.nn.batch_norm(pt.tensor("xs", shape=(None, 2)), 0, label="bn")
    seq = pt.tensor3("seq")
    pytensor.scan(lambda xt: popstats.bn_statistic(xt.mean(0), label="t"),
                  sequences=[seq], return_updates=False)
