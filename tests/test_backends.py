"""Backends agree: estimation and inference in every compilation mode.

Per mode, one graph holding many loop variants side by side (a "zoo": a BN
RNN over variable-length batches, mit_sot, a random generator in the loop,
a while-loop, symbolic n_steps, go_backwards, an outer statistic used
inside, two nested loops) is estimated and rewritten once; statistics and
inference outputs must equal the NumPy references. PyTensor's JAX backend
cannot compile while-loops, symbolic n_steps, this mit_sot loop (symbolic
initial state) nor a loop over another loop's output (the user's own graph
fails for these too), so its zoo holds the other variants plus a constant
n_steps loop and two independent loops. PYTORCH has no Scan: feed-forward
only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytensor
import pytest
from conftest import Case, build_case, build_zoo
from reference import fgraph_nodes, iter_nodes
from shared import DEFAULT_MODE

import popstats
from popstats import BNStat

pytestmark = pytest.mark.filterwarnings(
    # JAX: PyTensor drops shape assertions and copies shared generators.
    "ignore:Skipping Assert:UserWarning",
    "ignore:The RandomType SharedVariables:UserWarning",
    # PYTORCH: PyTensor hands read-only constants to torch.
    "ignore:The given NumPy array is not writable:UserWarning",
    "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning",
)

ZOO = [
    "rnn",
    "mit_sot",
    "rng",
    "while",
    "n_steps",
    "backwards",
    "outer_stat",
    "nested2",
]
JAX_ZOO = ["rnn", "n_steps_const", "backwards", "outer_stat", "nested2", "two_scans"]

MODES = [
    pytest.param(DEFAULT_MODE, id="default"),
    pytest.param("CVM", id="CVM"),
    pytest.param("FAST_COMPILE", id="FAST_COMPILE"),
    pytest.param("JAX", id="JAX"),
]


def _needs(mode):
    if mode == "JAX":
        pytest.importorskip("jax")
    if mode == "PYTORCH":
        pytest.importorskip("torch")


@dataclass
class Run:
    """One (graph, mode): its estimation (on the host, as ``estimate`` runs
    it: ``Estimation(...).run`` then ``finalize``), the final state and
    statistics, the compiled inference function and the NumPy reference."""

    case: Case
    host: popstats.Estimation
    state: popstats.EstimationState
    stats: popstats.PopulationStatistics
    infer: Callable
    reference: dict


class _Runs:
    """Estimate + rewrite + compile once per (graph, mode): the estimation
    function is compiled once, and its host state is what graph
    accumulation is compared with."""

    def __init__(self) -> None:
        self.done: dict = {}

    def __call__(self, kind: str, mode) -> Run:
        key = (kind, mode)
        if key not in self.done:
            if kind == "ff":
                case = build_case("ff")
            else:
                case = build_zoo(JAX_ZOO if mode == "JAX" else ZOO)
            host = popstats.Estimation(case.inputs, case.outputs, mode=mode)
            state = host.run(case.batches, progress=False)
            stats = host.finalize(state)
            inference = popstats.rewrite(case.outputs, stats)
            infer = pytensor.function(case.inputs, inference, mode=mode)
            self.done[key] = Run(case, host, state, stats, infer,
                                 case.reference_stats())
        return self.done[key]


@pytest.fixture(scope="module")
def runs():
    return _Runs()


def _check_stats(stats, reference):
    assert set(stats) == set(reference)
    for name, (value, coverage) in reference.items():
        np.testing.assert_allclose(stats[name].value, value, rtol=1e-9, atol=1e-12)
        np.testing.assert_array_equal(stats[name].coverage, coverage)


def _check_inference(case, infer, reference):
    population = {name: value for name, (value, _) in reference.items()}
    for batch in (case.test_batch, case.batches[1]):
        got = case.checked_outputs(infer(*case.values(batch)))
        want = case.infer_forward(batch, population)
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            assert g.shape == w.shape
            np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-11)


def _bnstat_nodes(fn):
    return [
        node for _, node in fgraph_nodes(fn.maker.fgraph) if isinstance(node.op, BNStat)
    ]


@pytest.mark.parametrize("mode", [*MODES, pytest.param("PYTORCH", id="PYTORCH")])
def test_feed_forward(runs, mode):
    _needs(mode)
    run = runs("ff", mode)
    _check_stats(run.stats, run.reference)
    _check_inference(run.case, run.infer, run.reference)


@pytest.mark.parametrize("mode", MODES)
def test_loops_estimate(runs, mode):
    _needs(mode)
    run = runs("zoo", mode)
    _check_stats(run.stats, run.reference)


@pytest.mark.parametrize("mode", MODES)
def test_loops_inference(runs, mode):
    _needs(mode)
    run = runs("zoo", mode)
    _check_inference(run.case, run.infer, run.reference)


#: FAST_COMPILE's graph accumulation is proven in test_accumulate_graph.py,
#: for every estimator and time mode, bit for bit
ACCUMULATION_MODES = [m for m in MODES if m.id != "FAST_COMPILE"]
#: The loops graph accumulation is compared on in Numba and C. It adds the
#: statistics a loop exports, whatever the loop's kind (which
#: test_loops_estimate covers per mode); what it depends on is their cells:
#: per-step statistics whose number of steps varies between batches (the
#: fields grow, shorter batches are padded: "rnn", and "while", whose steps
#: the data decides), a statistic outside a loop beside one inside
#: ("outer_stat") and two time axes ("nested2"): 8 of the zoo's 12
#: statistics. The accumulators' updates were most of these modes' compile
#: time on a machine with no compile cache (Numba: 171-188 s of
#: test_backends' 520 s; 90 s with these loops).
ACCUMULATION_ZOO = ["rnn", "while", "outer_stat", "nested2"]


def _accumulation_case(run: Run, mode) -> Case:
    """The case graph accumulation runs in ``mode``: the run's own, or, in
    Numba and C, the ``ACCUMULATION_ZOO`` part of the zoo fed the zoo's
    batches (so that its host state is the zoo's, statistic by statistic)."""
    if mode in ("JAX", "PYTORCH"):
        return run.case
    case = build_zoo(ACCUMULATION_ZOO)
    names = [v.name for v in case.inputs]
    case.batches = [{k: batch[k] for k in names} for batch in run.case.batches]
    return case


@pytest.mark.parametrize("mode", [*ACCUMULATION_MODES,
                                  pytest.param("PYTORCH", id="PYTORCH")])
def test_graph_accumulation_equals_host_accumulation(runs, mode):
    """The estimators' updates inside the compiled function give what NumPy's
    on the host give, per statistic and step, counts exactly (on JAX: the
    device pass, here over nested and side-by-side loops)."""
    _needs(mode)
    run = runs("ff" if mode == "PYTORCH" else "zoo", mode)
    case, stats = _accumulation_case(run, mode), run.stats
    estimation = popstats.Estimation(case.inputs, case.outputs, mode=mode,
                                     accumulate="graph")
    assert estimation.accumulate == "graph" and run.host.accumulate == "host"
    graph_state = estimation.run(case.batches, progress=False)
    host_states = dict(zip(run.state.names, run.state.states, strict=True))
    assert set(graph_state.names) <= set(host_states)
    if mode not in ("JAX", "PYTORCH"):
        assert set(graph_state.names) == {
            "rnn.mean", "rnn.var", "while.mean", "outer.mean", "inner.mean",
            "out.mean", "in.mean", "in.var"}
    for name, a in zip(graph_state.names, graph_state.states, strict=True):
        b = host_states[name]
        assert set(a) == set(b), name
        for field in a:
            assert a[field].shape == b[field].shape, (name, field)
            np.testing.assert_allclose(a[field], b[field], rtol=1e-12, atol=1e-14,
                                       err_msg=f"{name}.{field}")
    got = estimation.finalize(graph_state)
    for name in got:
        np.testing.assert_array_equal(got[name].coverage, stats[name].coverage)


@pytest.mark.parametrize("mode", MODES)
def test_markers_vanish_at_compile_time(mode):
    """Compiling the training graph removes every BNStat (inner graphs too).

    Only the compiled graph is inspected: nothing is run, so no JIT cost.
    """
    _needs(mode)
    ff = build_case("ff")
    zoo = build_zoo(JAX_ZOO if mode == "JAX" else ZOO)
    for case in (ff, zoo):
        marked = [n for _, n in iter_nodes(case.outputs) if isinstance(n.op, BNStat)]
        assert len(marked) >= len(case.depths)
        fn = pytensor.function(case.inputs, case.outputs, mode=mode)
        assert _bnstat_nodes(fn) == []


def test_jax_inference_with_a_generator_in_the_loop():
    """The loop's random generator is used in the JAX inference graph."""
    pytest.importorskip("jax")
    case = build_case("rng")
    stats = popstats.estimate(
        case.inputs, case.outputs, case.batches, mode="FAST_COMPILE"
    )
    infer = pytensor.function(
        case.inputs, popstats.rewrite(case.outputs, stats), mode="JAX"
    )
    _check_inference(case, infer, case.reference_stats())


@pytest.mark.xfail(
    raises=ValueError,
    reason="PyTensor's JAX linker fails on a shared generator that the compiled "
    "outputs do not use (the estimation graph needs only the statistics); "
    "the user's graph with only the deterministic output fails the same way",
)
def test_jax_estimate_with_an_unused_generator_in_the_loop():
    pytest.importorskip("jax")
    case = build_case("rng")
    popstats.estimate(case.inputs, case.outputs, case.batches, mode="JAX")
