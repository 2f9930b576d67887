"""Device accumulation in JAX (``accumulate="graph"``, ``device_pass.py``).

Against the host's float64 accumulation of the same batches: every
estimator, time mode and ``max_steps`` cap with JAX's 64-bit floats; float32
accumulators (JAX without x64) over 1,000 batches, folded into float64;
parameters put on the device once per pass and taken again at the next;
errors, deferred checks and rollback; states and checkpoints.

By default every estimator meets every time mode and cap at least once
(5 of the 15 combinations); ``POPSTATS_LONG=1`` runs all 15, and the
float32 accumulation over 10,000 batches.
"""

from __future__ import annotations

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from shared import (
    VALUE_STATE_FIELDS,
    assert_same_state,
    chosen,
    error_fields_scale,
    pair_loop,
    sized,
)

import popstats

jax = pytest.importorskip("jax")
import pytensor.link.jax.dispatch  # noqa: E402 - sets x64 from floatX

from popstats._src.estimation import device_pass  # noqa: E402

EMA = popstats.Estimator("ema", momentum=0.3)


def rnn(dtype="float64"):
    """A loop with a (mean, var) pair per step, and a mean outside it."""
    return pair_loop("s", outer="o", dtype=dtype, count_dtype=dtype)


def sequences(seed, lengths, dtype="float64"):
    rng = np.random.default_rng(seed)
    return [{"x": rng.normal(2.0, 3.0, size=(t, 4, 3)).astype(dtype)}
            for t in lengths]


#: time axes that grow, shrink and grow again past the longest so far; few
#: distinct lengths, as JAX traces and compiles the pass once per shape
LENGTHS = (2, 3, 1, 3, 4, 2, 4, 1, 3, 2, 2, 1, 4, 3)
ALL_CONFIGS = [(e, t, cap) for e in ("mean", "weighted", "unbiased", "pooled", EMA)
               for t, cap in (("step", None), ("pooled", 3), ("step", 3))]
#: each estimator once, each time mode and cap at least once
CONFIGS = chosen(ALL_CONFIGS, [("mean", "step", None), ("weighted", "pooled", 3),
                               ("unbiased", "step", 3), ("pooled", "pooled", 3),
                               (EMA, "step", None)])
#: batches of the float32 accumulation
FLOAT32_BATCHES = sized(1_000, 10_000)


def pair(config, **options):
    estimator, time, cap = config
    inputs, outputs = rnn()
    kwargs = dict(estimator=estimator, time=time, max_steps=cap, **options)
    device = popstats.Estimation(inputs, outputs, mode="JAX", accumulate="graph",
                                 **kwargs)
    host = popstats.Estimation(inputs, outputs, mode="FAST_COMPILE",
                               accumulate="host", **kwargs)
    engine = device._engine
    assert engine.device is not None and engine.device.dtype == "float64"
    return device, host


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}")
def test_device_equals_host(config):
    device, host = pair(config)
    batches = sequences(0, LENGTHS)  # time axes grow, shrink, and grow again
    a, b = device.run(batches, progress=False), host.run(batches, progress=False)
    assert_same_state(a, b, exact=False)
    # continued from a state: the start is merged with the device's part
    more = sequences(1, (5, 2, 3))  # longer than any before
    assert_same_state(device.run(more, a, progress=False),
                      host.run(more, b, progress=False), exact=False)


@pytest.mark.parametrize("accumulate", ["graph", "host"])
def test_parameters_cross_once_per_pass_and_are_taken_again(monkeypatch, accumulate):
    x = pt.matrix("x")
    w = pytensor.shared(np.eye(3), name="w")
    h = x @ w
    y = h - popstats.bn_statistic(h.mean(0), "m")
    run = popstats.Estimation([x], y, mode="JAX", accumulate=accumulate)
    puts, args = [], []
    device = run._engine.device
    put, jit = device.put_parameters, device.jit
    monkeypatch.setattr(device, "put_parameters",
                        lambda: puts.append(1) or put())
    monkeypatch.setattr(device, "jit",
                        lambda *a: args.append(a) or jit(*a))
    # 0..9 shuffled (3 i mod 10): in order they would warn of a trend
    batches = [{"x": np.full((4, 3), float(3 * i % 10))} for i in range(10)]
    first = run.finalize(run.run(batches, progress=False))
    assert puts == [1] and len(args) == 10
    # the batch crosses per call; the parameter is the same device array
    assert all(isinstance(a[1], jax.Array) and a[1] is args[0][1] for a in args)
    np.testing.assert_allclose(first["m"].value, np.full(3, 4.5), rtol=1e-15)
    # new weights between passes are used by the next pass
    w.set_value(2 * np.eye(3))
    second = run.finalize(run.run(batches, progress=False))
    assert puts == [1, 1]
    np.testing.assert_allclose(second["m"].value, np.full(3, 9.0), rtol=1e-15)


def test_host_accumulation_of_jax_outputs_is_right():
    # JAX returns its own arrays: a pooled variance added on the host with
    # its paired mean as a JAX array stayed 0 (in-place NumPy updates with a
    # JAX operand update nothing)
    inputs, outputs = rnn()
    batches = sequences(2, (3, 2, 4))
    runs = [popstats.Estimation(inputs, outputs, estimator="pooled", mode=mode,
                                accumulate="host") for mode in ("JAX", "FAST_COMPILE")]
    jax_state, reference = (r.run(batches, progress=False) for r in runs)
    assert_same_state(jax_state, reference, exact=False)
    assert np.all(runs[0].finalize(jax_state)["s.var"].value > 1.0)


def test_errors_read_as_on_the_host_and_roll_back():
    device, host = pair(("unbiased", "step", None))
    good = sequences(3, (2, 3, 2, 4, 3, 2, 2, 3, 4, 2, 3))
    nan = {"x": np.full((2, 4, 3), np.nan)}
    single = {"x": np.ones((2, 1, 3))}  # one element: m/(m-1) undefined
    wide = {"x": np.ones((2, 4, 5))}  # another statistic shape
    # failures inside a group of deferred checks, and at its edges
    for position in (0, 3, device_pass.CHECK_EVERY - 1, device_pass.CHECK_EVERY):
        for bad in (nan, single, wide):
            batches = [*good[:position], bad, *good[position:]]
            with pytest.raises(popstats.PopstatsError) as from_host:
                host.run(batches, progress=False)
            with pytest.raises(popstats.PopstatsError) as from_device:
                device.run(batches, progress=False)
            assert str(from_device.value) == str(from_host.value)
            # (a wide first batch sets the shape: the next one is refused)
            index = position + 1 if bad is wide and position == 0 else position
            assert f"batch {index}" in str(from_device.value)
    assert_same_state(device.run(good, progress=False),
                      host.run(good, progress=False), exact=False)


def test_checkpoints_resume_and_states_are_not_changed(tmp_path):
    device, host = pair(("pooled", "step", None))
    batches = sequences(4, LENGTHS)
    path = tmp_path / "c.npz"

    def interrupted():
        for i, batch in enumerate(batches):
            if i == 9:
                raise KeyboardInterrupt
            yield batch

    with pytest.raises(KeyboardInterrupt):
        device.run(interrupted(), checkpoint=path, checkpoint_every=4, progress=False)
    resumed = device.run(batches, checkpoint=path, checkpoint_every=4,
                         progress=False)
    assert_same_state(resumed, host.run(batches, progress=False), exact=False)
    # the bound docs/estimators.rst states: float64 rounding, not bit for bit
    whole = device.run(batches, progress=False)
    for a, b in zip(resumed.states, whole.states, strict=True):
        for field in a:
            # the standard errors' centred sums: to rounding of their terms
            scale = (1e-300 if field in VALUE_STATE_FIELDS
                     else 1e-14 * error_fields_scale(b))
            np.testing.assert_allclose(a[field], b[field], rtol=1e-14, atol=scale,
                                       err_msg=field)
    start = host.run(batches[:3], progress=False)
    before = [{k: v.copy() for k, v in s.items()} for s in start.states]
    device.run(batches[3:], start, progress=False)
    for s, b in zip(start.states, before, strict=True):
        for k in s:
            np.testing.assert_array_equal(s[k], b[k])


@pytest.fixture
def without_x64():
    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", False)
    yield
    jax.config.update("jax_enable_x64", before)


def float32_model():
    x = pt.matrix("x", dtype="float32")
    n = x.shape[0].astype("float32")
    m = popstats.bn_statistic(x.mean(0), "m", role="mean", group="g", count=n)
    v = popstats.bn_statistic(x.var(0), "v", role="var", group="g", count=n)
    return [x], (x - m) / pt.sqrt(v + 1e-3)


# PyTensor sums float32 with a float64 accumulator; JAX without x64 computes
# it in float32 and says so: the model's business, not the accumulation's.
@pytest.mark.filterwarnings("ignore:Explicitly requested dtype float64")
# The batches have four sizes on purpose (counts vary); over POPSTATS_LONG's
# 10,000 batches the "mean" estimator's bias from unequal sizes is twice its
# standard error, and popstats rightly says so: not this test's subject.
@pytest.mark.filterwarnings("ignore:.*unequal sizes move the estimate")
@pytest.mark.parametrize("estimator", ["mean", "pooled",
                                       popstats.Estimator("ema", momentum=0.001)],
                         ids=["mean", "pooled", "ema"])
def test_float32_accumulators_keep_float64_accuracy_over_many_batches(
        without_x64, monkeypatch, estimator):
    inputs, outputs = float32_model()
    rng = np.random.default_rng(5)
    # batches of four sizes (counts vary; JAX compiles once per shape)
    batches = [{"x": rng.normal(3.0, 1.0, (int(rng.choice([16, 27, 38, 47])), 8))
                .astype("float32")} for _ in range(FLOAT32_BATCHES)]
    # the reference: the same float32 statistics, added in float64 on the host
    host = popstats.Estimation(inputs, outputs, estimator=estimator, mode="JAX",
                               accumulate="host")
    reference = host.finalize(host.run(batches, progress=False))

    def error(fold):
        monkeypatch.setattr(device_pass, "FOLD_EVERY_FLOAT32", fold)
        run = popstats.Estimation(inputs, outputs, estimator=estimator,
                                  mode="JAX", accumulate="graph")
        assert run._engine.device.dtype == "float32"
        stats = run.finalize(run.run(batches, progress=False))
        assert stats["m"].coverage == reference["m"].coverage == FLOAT32_BATCHES
        return max(np.max(np.abs(stats[k].value / reference[k].value - 1))
                   for k in ("m", "v"))

    folded = error(device_pass.FOLD_EVERY_FLOAT32)
    # float32 statistics carry 6e-8; 16 float32 updates stay near that
    assert folded < 3e-7
    # without folding, float32 rounding grows with the batches (about 6e-7
    # to 6e-6 over 1,000 batches, 49 to 55 times the folded error; 2e-6 to
    # 1.4e-5 over 10,000, 127 to 491 times): the test can fail
    assert error(10**9) > 10 * folded
