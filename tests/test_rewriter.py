"""rewrite(): population values in place of batch statistics.

Inference outputs are compared with the NumPy models run with the NumPy
reference estimate (clamped to the last estimated step beyond the longest
training sequence: every case's inference batch is longer than its training
batches). Also: the user's graph is left alone, no marker survives, the
population shared variables are there and live, examples are independent of
their batch, and the rewritten graph is differentiable.
"""

from __future__ import annotations

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from conftest import CASES, build_case
from pytensor.compile.sharedvalue import SharedVariable
from pytensor.scan.op import Scan
from reference import clamp_rows, fingerprint, iter_nodes
from shared import MODE

import popstats


def _reference_population(pl) -> dict:
    return {name: value for name, (value, _) in pl.reference.items()}


def _assert_outputs(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("name", CASES)
def test_inference_matches_numpy_with_population_statistics(pipeline, name):
    pl = pipeline(name)
    case = pl.case
    population = _reference_population(pl)
    for batch in (case.test_batch, case.batches[0]):
        got = pl.infer(*case.values(batch))
        _assert_outputs(
            case.checked_outputs(got), case.infer_forward(batch, population)
        )


def test_inference_beyond_the_longest_sequence_repeats_the_last_step(pipeline):
    pl = pipeline("rnn")  # trained on lengths up to 5, run on 7
    case = pl.case
    batch = case.test_batch
    steps = batch["x"].shape[0]
    assert steps > max(b["x"].shape[0] for b in case.batches)
    # the population spelled out for every step: rows 5 and 6 repeat row 4
    explicit = {
        name: clamp_rows(value, steps)
        for name, value in _reference_population(pl).items()
    }
    np.testing.assert_array_equal(explicit["rnn.mean"][6], explicit["rnn.mean"][4])
    (got,) = pl.infer(*case.values(batch))
    _assert_outputs([got], case.infer_forward(batch, explicit))


def test_nested_inference_clamps_both_time_axes(pipeline):
    pl = pipeline("nested2")  # trained up to (3, 4) steps, run on (5, 6)
    case = pl.case
    batch = case.test_batch
    t1, t2 = batch["x4"].shape[:2]
    pop = _reference_population(pl)
    explicit = {
        "in.mean": np.stack(
            [clamp_rows(r, t2) for r in clamp_rows(pop["in.mean"], t1)]
        ),
        "in.var": np.stack([clamp_rows(r, t2) for r in clamp_rows(pop["in.var"], t1)]),
        "out.mean": clamp_rows(pop["out.mean"], t1),
    }
    _assert_outputs(pl.infer(*case.values(batch)), case.infer_forward(batch, explicit))


@pytest.mark.parametrize("name", CASES)
def test_no_marker_left_and_population_variables_present(pipeline, name):
    pl = pipeline(name)
    for _, node in iter_nodes(pl.inference):
        assert not isinstance(node.op, popstats.BNStat), node
        for var in node.outputs:
            assert not getattr(var.tag, "bn_statistic", False), var
    shared = popstats.population_variables(pl.inference)
    assert set(shared) == set(pl.case.depths)
    for stat_name, var in shared.items():
        assert isinstance(var, SharedVariable)
        assert var.name == stat_name
        np.testing.assert_array_equal(var.get_value(), pl.stats[stat_name].value)
    # the shared variables are inputs of the (possibly inner) graphs
    used = {id(v) for _, node in iter_nodes(pl.inference) for v in node.inputs}
    assert all(id(var) in used for var in shared.values())


def test_population_variables_can_be_changed_without_rebuilding(pipeline):
    pl = pipeline("rnn")
    case = pl.case
    shared = popstats.population_variables(pl.inference)
    old = {name: var.get_value() for name, var in shared.items()}
    new = {"rnn.mean": np.zeros((2, 3)), "rnn.var": np.full((2, 3), 4.0)}
    try:
        for name, value in new.items():
            shared[name].set_value(value)
        (got,) = pl.infer(*case.values(case.test_batch))
    finally:
        for name, value in old.items():
            shared[name].set_value(value)
    _assert_outputs([got], case.infer_forward(case.test_batch, new))


def test_same_scan_op_twice_each_application_uses_its_own_values(pipeline):
    pl = pipeline("twice")
    first, second = (pl.stats[f"twice.mean#{k}"].value for k in (0, 1))
    assert not np.allclose(first, second)
    # swapping the two populations changes both outputs
    case = pl.case
    swapped = {"twice.mean#0": second, "twice.mean#1": first}
    want = case.infer_forward(case.test_batch, swapped)
    got = pl.infer(*case.values(case.test_batch))
    for g, w in zip(got, want, strict=True):
        assert not np.allclose(g, w)


def test_random_generator_in_the_loop_still_draws(pipeline):
    pl = pipeline("rng")
    case = pl.case
    hs, noisy = pl.infer(*case.values(case.test_batch))
    (want,) = case.infer_forward(case.test_batch, _reference_population(pl))
    np.testing.assert_allclose(hs, want, rtol=1e-9, atol=1e-11)
    noise = (noisy - hs) / 0.1
    assert noise.shape == hs.shape
    assert 0.5 < noise.std() < 1.5
    assert len(np.unique(np.round(noise, 8))) == noise.size


def test_rewrite_keeps_scan_options(pipeline):
    pl = pipeline("truncate")
    scans = [
        node.op for _, node in iter_nodes(pl.inference) if isinstance(node.op, Scan)
    ]
    assert scans and all(op.truncate_gradient == 2 for op in scans)
    back = pipeline("backwards")
    scans = [
        node.op for _, node in iter_nodes(back.inference) if isinstance(node.op, Scan)
    ]
    assert scans and all(op.info.as_while is False for op in scans)
    loop = pipeline("while")
    scans = [
        node.op for _, node in iter_nodes(loop.inference) if isinstance(node.op, Scan)
    ]
    assert scans and all(op.info.as_while for op in scans)


def test_get_inference_graph_is_estimate_then_rewrite(pipeline):
    pl = pipeline("ff")
    case = pl.case
    y, stats = popstats.get_inference_graph(
        case.inputs, case.outputs[0], iter(case.batches), mode=MODE, return_stats=True
    )
    assert set(stats) == set(pl.stats)
    got = pytensor.function(case.inputs, y, mode=MODE)(*case.values(case.test_batch))
    (want,) = case.infer_forward(case.test_batch, _reference_population(pl))
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-11)


# --------------------------------------------------------------------------
# The user's graph is not modified
# --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ff", "rnn", "outer_stat", "nested2", "twice"])
def test_pipeline_does_not_modify_the_users_graph(name):
    case = build_case(name)
    before = fingerprint(case.outputs)
    fn = pytensor.function(case.inputs, case.outputs, mode=MODE)
    values = case.values(case.batches[0])
    first = [np.copy(o) for o in fn(*values)]

    stats = popstats.estimate(case.inputs, case.outputs, case.batches, mode=MODE)
    inference = popstats.rewrite(case.outputs, stats)
    popstats.get_inference_graph(case.inputs, case.outputs, case.batches, mode=MODE)

    assert fingerprint(case.outputs) == before
    # the inference graph is a different graph, sharing no marker
    assert all(
        not isinstance(node.op, popstats.BNStat) for _, node in iter_nodes(inference)
    )
    assert any(
        isinstance(node.op, popstats.BNStat) for _, node in iter_nodes(case.outputs)
    )
    # the original outputs still compute the training pass (batch statistics)
    again = pytensor.function(case.inputs, case.outputs, mode=MODE)(*values)
    want, _ = case.train_forward(case.batches[0])
    for a, b, w in zip(first, again, want, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(a, w, rtol=1e-9, atol=1e-11)


# --------------------------------------------------------------------------
# Inference does not depend on how examples are batched
# --------------------------------------------------------------------------

#: per case: batch axis of each input (by name), of each output
BATCH_AXES = {
    "ff": ({"x": 0}, (0,)),
    "rnn": ({"x": 1}, (1,)),
    "mit_sot": ({"xm": 1, "hm0": 1}, (1,)),
    "nested2": ({"x4": 2}, (1, 2)),
}


@pytest.mark.parametrize("name", list(BATCH_AXES))
def test_inference_is_per_example(pipeline, name):
    pl = pipeline(name)
    case = pl.case
    in_axes, out_axes = BATCH_AXES[name]
    batch = case.test_batch
    size = next(batch[k].shape[a] for k, a in in_axes.items())
    assert size > 1
    whole = pl.infer(*case.values(batch))

    def part(rows):
        sub = {k: np.take(v, rows, axis=in_axes[k]) for k, v in batch.items()}
        return pl.infer(*case.values(sub))

    # one example alone (batch of size 1) gives its row of the batched run
    for i in range(size):
        for out, alone, axis in zip(whole, part([i]), out_axes, strict=True):
            np.testing.assert_allclose(
                np.take(out, [i], axis=axis), alone, rtol=1e-12, atol=1e-14
            )
    # and a reordered batch gives the reordered rows
    order = np.arange(size)[::-1]
    for out, perm, axis in zip(whole, part(order), out_axes, strict=True):
        np.testing.assert_allclose(np.take(out, order, axis=axis), perm, rtol=1e-12)


# --------------------------------------------------------------------------
# Gradients
# --------------------------------------------------------------------------


def _finite_differences(loss, shared, indices, eps=1e-6):
    base = shared.get_value()
    out = []
    try:
        for idx in indices:
            plus, minus = base.copy(), base.copy()
            plus[idx] += eps
            minus[idx] -= eps
            shared.set_value(plus)
            up = loss()
            shared.set_value(minus)
            down = loss()
            out.append((up - down) / (2 * eps))
    finally:
        shared.set_value(base)
    return np.array(out)


@pytest.mark.parametrize(
    ("name", "param"),
    [("ff", "W1"), ("rnn", "Wh"), ("nested2", "Wx"), ("mit_sot", "Wg")],
)
def test_rewritten_graph_is_differentiable(pipeline, name, param):
    pl = pipeline(name)
    case = pl.case
    values = case.values(case.test_batch)
    expected_outs = case.infer_forward(case.test_batch, _reference_population(pl))
    rng = np.random.default_rng(0)
    weights = [rng.normal(size=o.shape) for o in expected_outs]
    loss = sum((out * w).sum() for out, w in zip(pl.inference, weights, strict=True))
    shared = case.params[param]
    fn = pytensor.function(case.inputs, [loss, pytensor.grad(loss, shared)], mode=MODE)
    value, grad = fn(*values)
    want = sum((o * w).sum() for o, w in zip(expected_outs, weights, strict=True))
    np.testing.assert_allclose(value, want, rtol=1e-9)

    def numpy_loss():
        outs = case.infer_forward(case.test_batch, _reference_population(pl))
        return sum((o * w).sum() for o, w in zip(outs, weights, strict=True))

    indices = list(np.ndindex(grad.shape))[:4]
    fd = _finite_differences(numpy_loss, shared, indices)
    np.testing.assert_allclose([grad[i] for i in indices], fd, rtol=1e-5, atol=1e-7)


def test_truncated_gradient_of_the_rewritten_loop(pipeline):
    """The rewritten loop keeps truncate_gradient=2: its gradient equals
    that of the same loop written by hand with the population values."""
    pl = pipeline("truncate")
    case = pl.case
    Wx, Wh = case.params["Wx"], case.params["Wh"]
    x = case.inputs[0]
    pop = pytensor.shared(pl.reference["trunc.mean"][0], name="pop")

    def step(t, xt, h, pop, Wx, Wh):
        a = pt.dot(xt, Wx) + pt.dot(h, Wh)
        return pt.tanh(a - pop[pt.minimum(t, pop.shape[0] - 1)])

    def by_hand(truncate):
        return pytensor.scan(
            step,
            sequences=[pt.arange(x.shape[0]), x],
            outputs_info=[pt.zeros((x.shape[1], 3))],
            non_sequences=[pop, Wx, Wh],
            truncate_gradient=truncate,
            return_updates=False,
        )

    def grad_of(hs):
        return pytensor.grad((hs**2).sum(), Wh)

    fn = pytensor.function(
        [x],
        [grad_of(pl.inference[0]), grad_of(by_hand(2)), grad_of(by_hand(-1))],
        mode=MODE,
    )
    rewritten, truncated, full = fn(*case.values(case.test_batch))
    np.testing.assert_allclose(rewritten, truncated, rtol=1e-10, atol=1e-12)
    assert not np.allclose(rewritten, full)


def _two_rewrites():
    """A prediction and a loss rewritten in two calls: two copies per statistic."""
    x = pt.matrix("x")
    a = x * 2.0
    mean = popstats.bn_statistic(a.mean(axis=0), label="cp.mean", role="mean",
                                 group="cp")
    var = popstats.bn_statistic(a.var(axis=0), label="cp.var", role="var",
                                group="cp")
    y = (a - mean) / pt.sqrt(var + 1e-5)
    loss = (y**2).sum()
    rng = np.random.default_rng(3)
    old = popstats.estimate([x], y, [{"x": rng.normal(0.0, 1.0, (64, 3))}])
    y_inf, loss_inf = popstats.rewrite(y, old), popstats.rewrite(loss, old)
    return x, y_inf, loss_inf, y, rng, loss


def test_bind_sets_every_copy_of_a_statistic():
    x, y_inf, loss_inf, y, rng, _ = _two_rewrites()
    f = pytensor.function([x], [y_inf, loss_inf], mode=MODE)
    data = rng.normal(5.0, 3.0, (256, 3))
    new = popstats.estimate([x], y, [{"x": data}])
    popstats.bind([y_inf, loss_inf], new)
    probe = rng.normal(0.0, 1.0, (4, 3))
    a = 2.0 * data
    want = (2.0 * probe - a.mean(axis=0)) / np.sqrt(a.var(axis=0) + 1e-5)
    got_y, got_loss = f(probe)
    np.testing.assert_allclose(got_y, want, rtol=1e-10)
    np.testing.assert_allclose(got_loss, (want**2).sum(), rtol=1e-10)


def test_population_variables_refuses_a_statistic_held_twice():
    _, y_inf, loss_inf, y, _, loss = _two_rewrites()
    with pytest.raises(popstats.PopstatsError, match=r"separate rewrite calls.*bind"):
        popstats.population_variables([y_inf, loss_inf])
    # one rewrite call: one variable per statistic, as before
    assert sorted(popstats.population_variables(y_inf)) == ["cp.mean", "cp.var"]
    change = popstats.describe_rewrite([y, loss], [y_inf, loss_inf])
    assert change.ok and change.replaced == {"cp.mean": "cp.mean", "cp.var": "cp.var"}
