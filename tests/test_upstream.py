"""upstream="population" on feed-forward graphs: the statistics inference sees.

Every expected value is computed in NumPy from the raw batches, stage by
stage (``reference.staged_estimate``: layer 1's statistics from the
training batches; layer 2's from its input with layer 1 normalized by
layer 1's population values; and so on), combined over batches as each
estimator is defined (``reference.combine_moments``) -- never by popstats
and never by iterating to a tolerance. Then: the result is a fixed point
(one more pass changes nothing, in NumPy and in popstats), the number of
passes follows the depth, a one-layer model gives today's values, the
backends and accumulation modes agree, the inference graph and saved files
keep what the passes did. Loops: ``test_upstream_loops.py``; checkpoints,
loaders and errors: ``test_upstream_passes.py``.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytensor
import pytest
import reference as ref
import upstream_models as um
from hypothesis import given, settings
from hypothesis import strategies as st
from shared import MODE, fails

import popstats
from popstats import Estimator

ESTIMATORS = ["mean", "weighted", "pooled", "unbiased", Estimator("ema", momentum=0.3)]
IDS = ["mean", "weighted", "pooled", "unbiased", "ema"]


def rule_of(spec) -> ref.MomentRule:
    if isinstance(spec, Estimator):
        return ref.MomentRule(spec.name, spec.momentum)
    return ref.MomentRule(spec)


def estimate(model, **options):
    options.setdefault("mode", MODE)
    return popstats.estimate(model.inputs, model.outputs, model.batches, **options)


# --------------------------------------------------------------------------
# The 3-layer MLP against the staged NumPy values, every estimator
# --------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ESTIMATORS, ids=IDS)
def test_mlp_statistics_are_the_staged_numpy_values(spec):
    model = um.mlp(layers=3)  # batch sizes 4, 7, 3, 6, 5
    rule = rule_of(spec)
    stats = estimate(model, estimator=spec, upstream="population")
    want = ref.staged_estimate(model.forward, model.batches, rule)
    assert sorted(want) == sorted(f"l{i}.{r}" for i in range(3)
                                  for r in ("mean", "var"))
    um.assert_statistics(stats, want, tol=1e-12)
    for stat in stats.values():
        assert stat.upstream == "population"
        assert stat.estimator.name == rule.estimator
        assert stat.n_batches == len(model.batches)
    # the fixed point, checked in NumPy: one more pass over the inference
    # graph of these values gives them again
    again = ref.numpy_pass(model.forward, model.batches, rule, um.tables(stats))
    um.assert_statistics(stats, again, tol=1e-12)
    # and today's estimate is another thing: layer 0 alone has no upstream
    batch = estimate(model, estimator=spec)
    np.testing.assert_allclose(batch["l0.var"].value, want["l0.var"][0], rtol=1e-13)
    assert batch["l0.var"].upstream == "batch" and batch.fixed_point is None
    for name in ("l1.mean", "l2.var"):
        assert np.max(np.abs(batch[name].value - want[name][0])) > 1e-3, name


@pytest.mark.parametrize("spec", ["pooled"])
def test_one_more_pass_of_popstats_changes_nothing(spec):
    model = um.mlp(layers=3)
    stats = estimate(model, estimator=spec, upstream="population")
    again = um.popstats_pass(model, stats, MODE, estimator=spec)
    um.assert_statistics(again, {n: (s.value, s.coverage) for n, s in stats.items()},
                         tol=1e-12)
    # the same pass at today's values does change them: the check can fail
    batch = estimate(model, estimator=spec)
    moved = um.popstats_pass(model, batch, MODE, estimator=spec)
    assert um.largest_relative_change(um.tables(batch), um.tables(moved)) > 1e-3


# --------------------------------------------------------------------------
# Passes and depth
# --------------------------------------------------------------------------

#: layer i reads the layers reads[i] (-1: the input); with the depth
#: (layers on the longest path to a statistic, its own included)
GRAPHS = {
    "one": ([[-1]], 1),
    "chain2": ([[-1], [0]], 2),
    "chain4": ([[-1], [0], [1], [2]], 4),
    "wide": ([[-1], [-1], [-1]], 1),
    "diamond": ([[-1], [-1], [0, 1]], 2),
    "skip": ([[-1], [0], [-1, 0, 1]], 3),
}


@pytest.mark.parametrize("graph", sorted(GRAPHS))
def test_feed_forward_passes_are_depth_plus_one(graph):
    reads, depth = GRAPHS[graph]
    model = um.mlp(len(reads), reads)
    assert model.depth == depth
    stats = estimate(model, upstream="population")
    # a statistic `depth` deep (the layers on the longest path to it, its own
    # included) is exact after pass depth - 1 (pass 0: the training graph);
    # pass `depth` changes nothing and the passes stop: depth + 1 passes
    # (fixed_point.py's "d + 2 passes", its d counting the statistics
    # upstream only)
    record = stats.fixed_point
    assert record.passes == depth + 1
    assert len(record.changes) == len(record.worst) == depth
    assert record.changes[-1] == 0.0
    assert all(c > 1e-6 for c in record.changes[:-1])
    assert set(record.worst) <= set(stats)
    assert record.tol == 1e-10
    um.assert_statistics(stats, ref.staged_estimate(model.forward, model.batches,
                                                    ref.MomentRule()))


@settings(derandomize=True, max_examples=5, deadline=None, database=None)
@given(st.lists(st.integers(0, 2**16), min_size=2, max_size=4))
def test_any_feed_forward_dag_reaches_the_staged_values_in_depth_plus_one(seeds):
    # layer i reads a non-empty set of earlier layers (or the input)
    reads = [sorted({s % (i + 1) - 1 for s in (seed, seed >> 4, seed >> 8)})
             for i, seed in enumerate(seeds)]
    model = um.mlp(len(reads), reads, sizes=(3, 5, 4), seed=seeds[0] % 7)
    stats = estimate(model, upstream="population", estimator="weighted")
    assert stats.fixed_point.passes == model.depth + 1
    um.assert_statistics(stats, ref.staged_estimate(
        model.forward, model.batches, ref.MomentRule("weighted")))


@pytest.mark.parametrize("spec", ESTIMATORS, ids=IDS)
def test_one_layer_gives_todays_values_bit_for_bit_in_two_passes(spec):
    model = um.mlp(layers=1)
    batch = estimate(model, estimator=spec)
    population = estimate(model, estimator=spec, upstream="population")
    for name, stat in batch.items():
        np.testing.assert_array_equal(population[name].value, stat.value)
        np.testing.assert_array_equal(population[name].coverage, stat.coverage)
    assert population.fixed_point.passes == 2
    assert population.fixed_point.changes == (0.0,)


def test_passes_are_logged_with_their_change(caplog):
    model = um.mlp(layers=3)
    with caplog.at_level(logging.INFO, logger="popstats"):
        stats = estimate(model, upstream="population")
    lines = [r.getMessage() for r in caplog.records if "upstream='population' pass"
             in r.getMessage()]
    assert len(lines) == stats.fixed_point.passes - 1 == 3
    assert lines[-1].startswith("popstats: upstream='population' pass 3: largest "
                                "relative change 0")
    text = repr(stats)
    assert "upstream population" in text
    assert "fixed point in 4 passes" in text and "tolerance 1e-10" in text


def test_a_tolerance_stops_earlier_where_the_next_pass_would_change_more():
    model = um.mlp(layers=4)
    exact = estimate(model, upstream="population")
    assert exact.fixed_point.passes == 5
    changes = exact.fixed_point.changes
    assert changes[0] > changes[1] > changes[2] > changes[3] == 0.0
    tol = (changes[0] + changes[1]) / 2  # stop after pass 2 (3 passes)
    loose = estimate(model, upstream="population", upstream_tol=tol)
    assert loose.fixed_point.passes == 3
    assert loose.fixed_point.changes == changes[:2]
    assert loose.fixed_point.tol == tol
    # what is left is the change pass 3 would have made
    left = um.largest_relative_change(um.tables(loose), um.tables(exact))
    assert left == pytest.approx(changes[2], rel=1e-9)


# --------------------------------------------------------------------------
# Backends, accumulation, Estimation
# --------------------------------------------------------------------------


def test_graph_accumulation_gives_the_same_fixed_point():
    model = um.mlp(layers=2)
    host = estimate(model, upstream="population", estimator="pooled")
    graph = estimate(model, upstream="population", estimator="pooled",
                     accumulate="graph")
    um.assert_statistics(graph, {n: (s.value, s.coverage) for n, s in host.items()})
    assert graph.fixed_point.passes == host.fixed_point.passes


def test_jax_gives_the_same_fixed_point():
    pytest.importorskip("jax")
    model = um.mlp(layers=2, sizes=(5, 5, 5))  # one shape: one compile per pass
    default = estimate(model, upstream="population", estimator="unbiased")
    jax = estimate(model, upstream="population", estimator="unbiased", mode="JAX")
    um.assert_statistics(jax, {n: (s.value, s.coverage) for n, s in default.items()})
    assert jax.fixed_point.passes == default.fixed_point.passes == 3


def test_estimation_runs_the_passes_and_refuses_single_batches():
    model = um.mlp(layers=2)
    run = popstats.Estimation(model.inputs, model.outputs, mode=MODE,
                              upstream="population")
    assert run.fixed_point is None
    state = run.run(model.batches)
    stats = run.finalize(state)
    assert run.fixed_point == stats.fixed_point and stats.fixed_point.passes == 3
    assert state.spec.upstream.startswith("population:")
    assert state.n_batches == len(model.batches)
    um.assert_statistics(stats, ref.staged_estimate(model.forward, model.batches,
                                                    ref.MomentRule()))
    with fails("Estimation.update(batch=...)", "upstream='population'",
               "run(batches)"):
        run.update(state, model.batches[0])
    with fails("Estimation.run(state=...)", "not available", "leave state out"):
        run.run(model.batches, state=state)
    with fails("Estimation.run(on_batch=...)", "leave on_batch out"):
        run.run(model.batches, on_batch=lambda i, s: None)


def test_progress_bar_over_a_loader_with_and_without_len(capsys):
    model = um.mlp(layers=2)
    for loader in (um.Loader(model.batches), um.SizedLoader(model.batches)):
        stats = popstats.estimate(model.inputs, model.outputs, loader, mode=MODE,
                                  upstream="population", progress=True)
        assert stats.fixed_point.passes == 3 and loader.epochs == 3
    capsys.readouterr()


# --------------------------------------------------------------------------
# The inference graph and saved statistics
# --------------------------------------------------------------------------


def test_get_inference_graph_at_batch_size_one_matches_numpy():
    model = um.mlp(layers=3)
    graph, stats = popstats.get_inference_graph(
        model.inputs, model.outputs, model.batches, mode=MODE,
        upstream="population", estimator="pooled", return_stats=True)
    assert stats.fixed_point.passes == 4
    want = ref.staged_estimate(model.forward, model.batches, ref.MomentRule("pooled"))
    um.assert_statistics(stats, want)
    infer = pytensor.function(model.inputs, graph, mode=MODE)
    lookup = ref.MomentRule().lookup({n: v for n, (v, _) in want.items()})
    rows = np.random.default_rng(9).normal(0.5, 1.5, (4, 3))
    for row in rows:
        x = row[None, :]  # one example: nothing left to mix
        expected = model.infer({"x": x}, lambda name, steps, a: lookup(name, steps))
        np.testing.assert_allclose(infer(x)[0], expected[0], rtol=1e-12, atol=1e-12)
    # today's inference graph gives another output
    today = pytensor.function(model.inputs, popstats.get_inference_graph(
        model.inputs, model.outputs, model.batches, mode=MODE, estimator="pooled"),
        mode=MODE)
    assert np.max(np.abs(today(rows[:1])[0] - infer(rows[:1])[0])) > 1e-3


def test_saved_statistics_keep_upstream_and_the_passes(tmp_path):
    model = um.mlp(layers=3)
    stats = estimate(model, upstream="population")
    stats.save(tmp_path / "stats.npz")
    loaded = popstats.load(tmp_path / "stats.npz")
    assert loaded.fixed_point == stats.fixed_point
    assert loaded.fixed_point.passes == 4 and len(loaded.fixed_point.changes) == 3
    for name, stat in stats.items():
        assert loaded[name].upstream == "population"
        np.testing.assert_array_equal(loaded[name].value, stat.value)
    assert repr(loaded) == repr(stats)
    # today's statistics say "batch"; so do files written before the key existed
    batch = estimate(model)
    batch.save(tmp_path / "batch.npz")
    assert all(s.upstream == "batch" for s in popstats.load(tmp_path / "batch.npz")
               .values())
    with np.load(tmp_path / "stats.npz") as archive:
        arrays = dict(archive)
    meta = json.loads(str(arrays["meta"]))
    assert all(entry.pop("upstream") == "population" for entry in meta["statistics"])
    assert meta.pop("fixed_point")["passes"] == 4
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(tmp_path / "old.npz", **arrays)
    old = popstats.load(tmp_path / "old.npz")
    assert old.fixed_point is None
    assert all(s.upstream == "batch" for s in old.values())
    np.testing.assert_array_equal(old["l2.var"].value, stats["l2.var"].value)


def test_rewrite_accepts_the_fixed_point_like_any_statistics():
    model = um.mlp(layers=2)
    stats = estimate(model, upstream="population")
    y = popstats.rewrite(model.outputs, stats)
    x = model.batches[0]["x"][:1]
    want = model.infer({"x": x}, lambda name, steps, a: ref.MomentRule().lookup(
        um.tables(stats))(name, steps))
    np.testing.assert_allclose(pytensor.function(model.inputs, y, mode=MODE)(x)[0],
                               want[0], rtol=1e-12)


# --------------------------------------------------------------------------
# pytensor-ml (the 3.12 line)
# --------------------------------------------------------------------------


def test_pytensor_ml_mlp_with_two_batch_norms():
    pytest.importorskip("pytensor_ml")
    import ptml_models

    model = ptml_models.mlp2()
    batches = model.batches(n=4, batch=6)
    feed = [{"X": x} for x in batches]
    stats = popstats.estimate([model.X], model.y, feed, mode=MODE,
                              upstream="population")
    assert stats.fixed_point.passes == 3
    want = ref.staged_estimate(lambda b, bn: model.forward(b["X"], bn), feed,
                               ref.MomentRule())
    um.assert_statistics(stats, want, tol=1e-12)
    infer = pytensor.function([model.X], popstats.rewrite(model.y, stats), mode=MODE)
    lookup = ref.MomentRule().lookup({n: v for n, (v, _) in want.items()})
    x1 = batches[2][:1]
    np.testing.assert_allclose(
        infer(x1), model.forward(x1, lambda name, steps, a: lookup(name, steps)),
        rtol=1e-12, atol=1e-12)


def test_dropout_after_the_last_batch_norm_is_accepted_before_it_refused():
    """Issue 28, decided: upstream='population' refuses random numbers a
    statistic depends on; a dropout after the last batch norm moves none
    (Linear-BatchNorm-ReLU-Dropout-Linear), so it is accepted, and the fixed
    point is that of the graph without it."""
    import pytensor.tensor as pt

    rng = np.random.default_rng(0)
    w1 = pytensor.shared(rng.normal(size=(3, 4)), name="W1")
    w2 = pytensor.shared(rng.normal(size=(4, 2)), name="W2")
    batches = [{"x": rng.normal(size=(6, 3))} for _ in range(4)]

    def model(dropout_at):
        x = pt.matrix("x")
        gen = pytensor.shared(np.random.default_rng(0))

        def draw(h):
            return pt.random.binomial(1, 0.5, size=h.shape, rng=gen,
                                      return_next_rng=True)[1]

        h = x @ w1
        if dropout_at == "before":
            h = h * draw(h)
        n = h.shape[0]
        m = popstats.bn_statistic(h.mean(0), "bn.mean", role="mean", group="bn",
                                  count=n)
        v = popstats.bn_statistic(h.var(0), "bn.var", role="var", group="bn", count=n)
        h = pt.maximum((h - m) / pt.sqrt(v + 1e-5), 0.0)
        if dropout_at == "after":
            h = h * draw(h) * 2.0
        return x, h @ w2

    x, y = model("after")
    after = popstats.estimate([x], y, batches, mode=MODE, upstream="population",
                              progress=False)
    x0, y0 = model(None)
    plain = popstats.estimate([x0], y0, batches, mode=MODE, upstream="population",
                              progress=False)
    for name in ("bn.mean", "bn.var"):
        np.testing.assert_array_equal(after[name].value, plain[name].value)
    xb, yb = model("before")
    with fails("upstream='population'", "depend on random numbers"):
        popstats.estimate([xb], yb, batches, mode=MODE, upstream="population",
                          progress=False)
