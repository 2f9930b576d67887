"""upstream="population": checkpoints per pass, the same data every pass, errors.

The passes run over the batches again and again, so the batches must be
re-iterable and give the same data each time; each pass checkpoints to its
own file and a resume replays the finished passes from their files (their
data checked, not computed). What is computed is counted by wrapping
``Estimation._statistics`` (the one call that runs a batch through a
compiled function), as ``test_persistence.py`` counts a plain resume.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytensor.tensor as pt
import pytest
import upstream_models as um
from shared import MODE, fails

import popstats
from popstats._src.estimation.state import load_checkpoint


def estimate(model, batches=None, **options):
    options.setdefault("mode", MODE)
    return popstats.estimate(model.inputs, model.outputs,
                             model.batches if batches is None else batches,
                             upstream="population", **options)


@pytest.fixture
def computed(monkeypatch):
    """(pass, batch index) of every batch computed; pass 0 is "batch", the
    others are named by the digest of the values they ran with."""
    calls: list[tuple[str, int]] = []
    real = popstats.Estimation._statistics

    def counting(self, values, index, *args, **kwargs):
        calls.append((self.spec.upstream, index))
        return real(self, values, index, *args, **kwargs)

    monkeypatch.setattr(popstats.Estimation, "_statistics", counting)
    return calls


def passes_of(calls):
    """The passes in order, each as (its spec's upstream, its batch indices):
    a pass starts where the spec changes or the batch index starts again."""
    passes: list[tuple[str, list[int]]] = []
    for name, index in calls:
        if not passes or passes[-1][0] != name or index <= passes[-1][1][-1]:
            passes.append((name, []))
        passes[-1][1].append(index)
    return passes


# --------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------


def test_a_resume_replays_finished_passes_and_computes_only_what_is_left(
        tmp_path, computed):
    model = um.mlp(layers=3)  # 5 batches, 4 passes
    n = len(model.batches)
    whole = estimate(model, um.SizedLoader(model.batches))
    names = [name for name, _ in passes_of(computed)]
    assert passes_of(computed) == [(name, list(range(n))) for name in names]
    # the confirming pass reads what the pass before read (the values it
    # adds, the last layer's, reach no statistic): the same digest
    assert names[0] == "batch" and len(names) == 4 and names[3] == names[2]
    assert len(set(names)) == 3
    computed.clear()

    path = tmp_path / "run.npz"
    stopped = um.SizedLoader(model.batches, stop=(2, 3))  # pass 2, before batch 3
    with pytest.raises(um.Interrupted):
        estimate(model, stopped, checkpoint=path, checkpoint_every=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "run.pass0.npz", "run.pass1.npz", "run.pass2.npz"]
    counted = [load_checkpoint(tmp_path / f"run.pass{k}.npz")[0].n_batches
               for k in range(3)]
    assert counted == [n, n, 3]
    assert [name for name, _ in passes_of(computed)] == names[:3]
    computed.clear()

    loader = um.SizedLoader(model.batches)
    resumed = estimate(model, loader, checkpoint=path, checkpoint_every=1)
    # passes 0 and 1 are read from their files (the loader still gives
    # their batches: the data is checked), pass 2 goes on from batch 3
    assert passes_of(computed) == [(names[2], [3, 4]), (names[3], list(range(n)))]
    assert loader.epochs == 4 and loader.given == 4 * n
    for name, stat in whole.items():
        np.testing.assert_allclose(resumed[name].value, stat.value, rtol=1e-15,
                                   atol=1e-15)
    assert resumed.fixed_point == whole.fixed_point
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"run.pass{k}.npz" for k in range(4)]
    assert not path.exists()

    # every pass finished: nothing is computed again
    computed.clear()
    again = estimate(model, model.batches, checkpoint=path)
    assert computed == []
    np.testing.assert_array_equal(again["l2.var"].value, resumed["l2.var"].value)
    # finished passes over other data are refused, not used
    other = [{"x": b["x"] + (i == 1)} for i, b in enumerate(model.batches)]
    with fails("estimate(checkpoint=...)", "run.pass0.npz", "not those the "
               "checkpoint"):
        estimate(model, other, checkpoint=path)


def test_a_checkpoint_of_another_pass_is_refused(tmp_path):
    model = um.mlp(layers=3)
    path = tmp_path / "run.npz"
    with pytest.raises(um.Interrupted):
        estimate(model, um.Loader(model.batches, stop=(2, 1)), checkpoint=path,
                 checkpoint_every=1)
    shutil.copy(tmp_path / "run.pass1.npz", tmp_path / "run.pass2.npz")
    with fails("estimate(checkpoint=...)", "another estimation pass",
               "population values (digest"):
        estimate(model, checkpoint=path)
    # nor is a pass of upstream="population" a checkpoint of today's pass
    with fails("estimate(checkpoint=...)", "another estimation pass",
               "batch statistics here"):
        popstats.estimate(model.inputs, model.outputs, model.batches, mode=MODE,
                          checkpoint=tmp_path / "run.pass1.npz")


# --------------------------------------------------------------------------
# The same data every pass
# --------------------------------------------------------------------------


class Moving(um.SizedLoader):
    """A loader whose later passes differ: reversed, one batch more or fewer."""

    def __init__(self, batches, how):
        super().__init__(batches)
        self.how = how

    def __iter__(self):
        first = self.epochs == 0
        self.epochs += 1
        if first:
            return iter(self.batches)
        if self.how == "shuffled":
            return iter(self.batches[::-1])
        if self.how == "more":
            return iter([*self.batches, self.batches[0]])
        return iter(self.batches[:-1])


@pytest.mark.parametrize(("how", "what"), [
    ("shuffled", "in pass 1 batch 0 holds other data than in pass 0"),
    ("more", "in pass 1 it gave more than the 5 batches of pass 0"),
    ("fewer", "in pass 1 it gave 4 batches, pass 0 5"),
])
def test_batches_that_move_between_passes_are_refused(how, what):
    model = um.mlp(layers=2)
    with fails("estimate(batches=...)", "same batches in every pass", what,
               "seed the loader"):
        estimate(model, Moving(model.batches, how))


def test_batches_that_can_be_iterated_once_are_refused():
    model = um.mlp(layers=2)
    with fails("estimate(batches=...)", "can be iterated only once", "a list"):
        estimate(model, (b for b in model.batches))
    with fails("get_inference_graph(batches=...)", "can be iterated only once"):
        popstats.get_inference_graph(model.inputs, model.outputs,
                                     iter(model.batches), upstream="population",
                                     mode=MODE)


# --------------------------------------------------------------------------
# Not converged, not finite, options
# --------------------------------------------------------------------------


def test_too_few_passes_for_the_depth_is_an_error_naming_the_changes():
    model = um.mlp(layers=3)  # 4 passes: 3 changes, the last 0
    exact = estimate(model)
    shown = ", ".join(f"{c:.2g}" for c in exact.fixed_point.changes[:2])
    for passes in (2, 3):
        with fails("estimate(upstream_passes=...)",
                   f"did not reach a fixed point in {passes} passes",
                   ", ".join(shown.split(", ")[:passes - 1]), "upstream_tol=1e-10",
                   "Allow more passes"):
            estimate(model, upstream_passes=passes)
    assert estimate(model, upstream_passes=4).fixed_point == exact.fixed_point
    # a tolerance of 0 asks for exactly no change: feed-forward gets there
    assert estimate(model, upstream_tol=0).fixed_point.passes == 4


def overflowing():
    """Two layers; the first has no variance within a batch and an epsilon
    of 1e-300, so at population values its output is ~1e156 and the second
    layer's pooled variance overflows (its batch values are all finite)."""
    x = pt.matrix("x")
    n = x.shape[0]
    m0 = popstats.bn_statistic(x.mean(0), "m0", role="mean", group="a", count=n)
    v0 = popstats.bn_statistic(x.var(0), "v0", role="var", group="a", count=n)
    h = (x - m0) / pt.sqrt(v0 + 1e-300)
    m1 = popstats.bn_statistic(h.mean(0), "m1", role="mean", group="b", count=n)
    v1 = popstats.bn_statistic(h.var(0), "v1", role="var", group="b", count=n)
    y = (h - m1) / pt.sqrt(v1 + 1e-5)
    batches = [{"x": np.full((2, 2), 1e6)}, {"x": np.full((3, 2), -1e6)}]
    return um.Model([x], [y], batches, None)


def test_values_that_are_not_finite_are_an_error_not_a_fixed_point():
    model = overflowing()
    spec = {"m0": "mean", "v0": "mean", "*": "pooled"}
    with np.errstate(over="ignore", invalid="ignore"):
        with fails("estimate(upstream='population')", "pass 1 gave non-finite "
                   "values for statistic 'v1'"):
            estimate(model, estimator=spec)
        # today's single pass is finite here: the second layer's batch
        # statistics see the first normalized by the batch's own
        today = popstats.estimate(model.inputs, model.outputs, model.batches,
                                  estimator=spec, mode=MODE)
    assert np.isfinite(today["v1"].value).all()


@pytest.mark.parametrize(("option", "value", "shown"), [
    ("upstream", "pop", "'batch' (their batch statistics"),
    ("upstream", None, "got None"),
    ("upstream_tol", -1e-3, "finite number >= 0"),
    ("upstream_tol", float("nan"), "got nan"),
    ("upstream_tol", True, "got True (bool)"),
    ("upstream_tol", "1e-8", "got '1e-8' (str)"),
    ("upstream_passes", 1, "an int >= 2"),
    ("upstream_passes", 3.0, "got 3.0 (float)"),
    ("upstream_passes", np.bool_(True), "(bool)"),
])
def test_bad_upstream_options(option, value, shown):
    model = um.mlp(layers=1)
    for call, run in (
        ("estimate", popstats.estimate),
        ("get_inference_graph", popstats.get_inference_graph),
    ):
        with fails(f"{call}({option}=...)", shown):
            run(model.inputs, model.outputs, model.batches, mode=MODE,
                **{option: value})
    with fails(f"Estimation({option}=...)", shown):
        popstats.Estimation(model.inputs, model.outputs, mode=MODE, **{option: value})


def test_upstream_options_take_numpy_scalars():
    model = um.mlp(layers=2)
    stats = estimate(model, upstream_tol=np.float32(1e-6), upstream_passes=np.int64(3))
    assert stats.fixed_point.passes == 3
    assert isinstance(stats.fixed_point.tol, float)
