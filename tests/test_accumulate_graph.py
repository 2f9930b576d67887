"""Graph accumulation (``accumulate="graph"``) against host accumulation.

The estimators' updates built as PyTensor expressions must give the host's
(NumPy) numbers for every estimator, time mode and ``max_steps``, with time
axes growing and shrinking between batches; its errors must read as the
host's; a failed or re-entered pass must leave the Estimation usable. The
other backends are compared in ``test_backends.py`` (one estimator, many
loops) and ``test_device_pass.py`` (JAX); under ``POPSTATS_LONG=1`` every
estimator and time mode here runs in PyTensor's default (Numba) and C (CVM)
modes too. The state machine of ``test_pass_machine.py`` draws both
accumulations.
"""

from __future__ import annotations

import numpy as np
import pass_models
import pytensor
import pytensor.tensor as pt
import pytest
from shared import DEFAULT_MODE, MODE, assert_same_state, chosen, fails

import popstats

#: the modes of the every-estimator proof: the test mode; the long run adds
#: PyTensor's default (Numba) and C (CVM) modes
MODES = list(dict.fromkeys(chosen([MODE, DEFAULT_MODE, "CVM"], [MODE])))


def both(config, mode=MODE, **options):
    inputs, outputs = pass_models.model()
    kwargs = dict(estimator=pass_models.estimator_spec(config[0]), time=config[1],
                  max_steps=config[2], mode=mode, **options)
    graph = popstats.Estimation(inputs, outputs, accumulate="graph", **kwargs)
    host = popstats.Estimation(inputs, outputs, accumulate="host", **kwargs)
    return graph, host


@pytest.mark.parametrize("mode", MODES,
                         ids=lambda m: "default" if m is DEFAULT_MODE else m)
@pytest.mark.parametrize("config", pass_models.CONFIGS,
                         ids=["-".join(map(str, c)) for c in pass_models.CONFIGS])
def test_graph_equals_host_for_every_estimator_and_time_mode(config, mode):
    # compiled once for the session: test_pass_machine.py draws them again
    graph, host = (pass_models.shared_estimation(config, mode, accumulate)
                   for accumulate in ("graph", "host"))
    assert graph.accumulate == "graph" and host.accumulate == "host"
    batches = pass_models.make_batches(11, 8)  # 1 to 6 steps, some unreached
    exact = mode == "FAST_COMPILE"  # the same operations in the same order
    a, b = graph.run(batches, progress=False), host.run(batches, progress=False)
    assert_same_state(a, b, exact)
    # continuing, one update, a merge: states are interchangeable
    more = pass_models.make_batches(12, 3)
    a2 = graph.update(graph.run(more[:2], a, progress=False), more[2])
    b2 = host.update(host.run(more[:2], b, progress=False), more[2])
    assert_same_state(a2, b2, exact)
    assert_same_state(graph.merge(a, b2), host.merge(b, a2), exact=False)


def test_only_a_batch_that_does_not_fit_is_added_on_the_host(monkeypatch):
    """The accumulators grow on the host: the first batch and each batch with
    more steps than any before are added there (from the statistics the
    compiled function returned); every other batch, shorter ones included,
    in the compiled function, which holds no ``ifelse`` (Numba evaluates
    both branches of one, and compiles one of many arrays for minutes)."""
    graph, host = both(("pooled", "step", None))
    batches = pass_models.make_batches(11, 8)
    steps = [b["x"].shape[0] for b in batches]
    longer = [i for i, t in enumerate(steps) if i == 0 or t > max(steps[:i])]
    assert 1 < len(longer) < len(batches) - 1  # the data has both kinds
    on_host = []
    add = graph._host.add
    monkeypatch.setattr(graph._host, "add", lambda states, per_site, index: (
        on_host.append(index), add(states, per_site, index))[1])
    state = graph.run(batches, progress=False)
    assert on_host == longer
    assert_same_state(state, host.run(batches, progress=False))
    nodes = graph._engine.function.maker.fgraph.apply_nodes
    assert not [n for n in nodes if type(n.op).__name__ == "IfElse"]


def test_a_state_given_is_not_changed():
    graph, _ = both(("pooled", "step", None))
    batches = pass_models.make_batches(3, 4)
    state = graph.run(batches[:2], progress=False)
    before = [{k: v.copy() for k, v in s.items()} for s in state.states]
    graph.run(batches[2:], state, progress=False)
    graph.update(state, batches[3])
    for s, b in zip(state.states, before, strict=True):
        for k in s:
            np.testing.assert_array_equal(s[k], b[k])


def test_errors_read_as_on_the_host():
    graph, host = both(("unbiased", "step", None))
    good = pass_models.make_batches(4, 3)
    nan = dict(good[1], x=np.full_like(good[1]["x"], np.nan))
    single = dict(good[1], mask=good[1]["mask"].copy())
    single["mask"][:, 1:] = 0.0  # one element per step: m/(m-1) undefined
    wide = {"x": np.zeros((2, 2, 3)), "mask": np.ones((2, 2))}
    cases = [[good[0], nan], [good[0], single], [good[0], wide],
             [good[0], {"x": np.zeros((2, 2, 2)), "mask": np.ones((2, 3))}]]
    for batches in cases:
        with pytest.raises(popstats.PopstatsError) as from_host:
            host.run(batches, progress=False)
        with pytest.raises(popstats.PopstatsError) as from_graph:
            graph.run(batches, progress=False)
        assert str(from_graph.value) == str(from_host.value)
    # the Estimation still works after a failed pass
    assert_same_state(graph.run(good, progress=False), host.run(good, progress=False))


def zero_step_model():
    """A loop whose initial state does not index the input: 0 steps run."""
    xs = pt.tensor3("xs")

    def step(x_t, h):
        a = x_t + h
        n = a.shape[0]
        mean = popstats.bn_statistic(a.mean(0), "m", role="mean", group="g", count=n)
        var = popstats.bn_statistic(a.var(0), "v", role="var", group="g", count=n)
        return (a - mean) / pt.sqrt(var + 1e-5)

    hs = pytensor.scan(step, sequences=[xs], outputs_info=[pt.zeros(xs.shape[1:])],
                       return_updates=False)
    return xs, hs


def test_a_loop_of_zero_steps_is_added_on_the_host():
    xs, hs = zero_step_model()
    rng = np.random.default_rng(0)
    batches = [{"xs": np.zeros((0, 3, 2))}, {"xs": rng.normal(size=(4, 3, 2))},
               {"xs": np.zeros((0, 3, 2))}, {"xs": rng.normal(size=(2, 3, 2))}]
    for estimator in ("mean", "pooled"):
        graph, host = (popstats.Estimation([xs], hs, estimator=estimator, mode=MODE,
                                           accumulate=a) for a in ("graph", "host"))
        assert_same_state(graph.run(batches, progress=False),
                          host.run(batches, progress=False))


def test_one_pass_at_a_time():
    graph, _ = both(("mean", "step", None))
    batches = pass_models.make_batches(6, 2)

    def reentering():
        yield batches[0]
        graph.run(batches, progress=False)
        yield batches[1]

    with fails("Estimation(batches=...)", "already running a pass"):
        graph.run(reentering(), progress=False)
    # the failed pass released the accumulators
    graph.run(batches, progress=False)


def test_checkpoints_of_graph_and_host_are_the_same(tmp_path):
    graph, host = both(("ema", "pooled", 3))
    batches = pass_models.make_batches(7, 5)
    a = graph.run(batches, checkpoint=tmp_path / "g.npz", checkpoint_every=2,
                  progress=False)
    b = host.run(batches, checkpoint=tmp_path / "h.npz", checkpoint_every=2,
                 progress=False)
    assert_same_state(a, b, MODE == "FAST_COMPILE")
    # a checkpoint of one resumes in the other (the same pass spec)
    c = host.run(batches, checkpoint=tmp_path / "g.npz", progress=False)
    assert_same_state(a, c)


def test_unknown_accumulate_is_refused():
    x = pt.matrix("x")
    y = x - popstats.bn_statistic(x.mean(0), "m")
    with fails("Estimation(accumulate=...)", "'graph'", "'host'", "'gpu'"):
        popstats.Estimation([x], y, accumulate="gpu")


def test_jax_accumulates_on_the_device_in_float32_without_float64():
    jax = pytest.importorskip("jax")
    # PyTensor sets JAX's 64-bit floats from floatX when its JAX backend loads
    import pytensor.link.jax.dispatch

    x = pt.matrix("x")
    y = x - popstats.bn_statistic(x.mean(0), "m")
    before = jax.config.jax_enable_x64
    try:
        jax.config.update("jax_enable_x64", False)
        run = popstats.Estimation([x], y, mode="JAX", accumulate="graph")
        assert run.accumulate == "graph" and run._engine.device.dtype == "float32"
    finally:
        jax.config.update("jax_enable_x64", before)
    run = popstats.Estimation([x], y, mode="JAX", accumulate="graph")
    assert run._engine.device.dtype == ("float64" if before else "float32")
    assert pytensor.config.floatX == "float64"


def test_a_run_reaching_no_cell_continues_and_merges():
    # a shard of zero-length sequences: the graph's state stays empty, as the
    # host's, so that it merges and continues (before: "damaged" / shapes)
    xs, hs = zero_step_model()
    rng = np.random.default_rng(1)
    empty = {"xs": np.zeros((0, 3, 2))}
    full = [{"xs": rng.normal(size=(t, 3, 2))} for t in (4, 2)]
    for time in ("step", "pooled"):
        results = []
        for accumulate in ("graph", "host"):
            run = popstats.Estimation([xs], hs, time=time, mode=MODE,
                                      accumulate=accumulate)
            nothing = run.run([empty, empty], progress=False)
            assert nothing.states == ({}, {})
            merged = run.merge(nothing, run.run(full[:1], progress=False))
            results.append(run.run([empty, full[1]], merged, progress=False))
        assert_same_state(*results)


def test_building_the_accumulators_does_not_fold_sizes_through_the_loops(monkeypatch):
    """``pt.alloc`` folds its sizes through a clone of every graph above
    them (``infer_static_shape``): with sizes read from a loop's statistic,
    the whole estimation graph, per array built. popstats' arrays
    (accumulators, padding, reached cells, time pooling) are built without
    that fold: no size folded while building an Estimation depends on a
    Scan (the loop model here, every time mode)."""
    import pytensor.tensor.basic as ptb
    from pytensor.graph.traversal import ancestors
    from pytensor.scan.op import Scan

    folded = []
    fold = ptb.infer_static_shape

    def counting(shape):
        sizes = [s for s in shape if hasattr(s, "owner")]
        if any(v.owner is not None and isinstance(v.owner.op, Scan)
               for v in ancestors(sizes)):
            folded.append(shape)
        return fold(shape)

    inputs, outputs = pass_models.model()  # built before: its own scan folds
    monkeypatch.setattr(ptb, "infer_static_shape", counting)
    for name, time in [("pooled", "step"), ("mean", "pooled")]:
        popstats.Estimation(inputs, outputs, accumulate="graph", time=time,
                            estimator=pass_models.estimator_spec(name), mode=MODE)
    assert folded == []
