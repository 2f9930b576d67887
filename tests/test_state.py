"""States, checkpoints and bindings that cannot be combined wrongly.

A state carries the spec of the pass that made it (statistics, time modes,
estimators, ``max_steps``); every operation that combines states, or a
checkpoint with a run, or statistics with a graph, checks it and refuses
with an error naming what differs. Options are checked before any batch.
Each test here failed on the main branch before these checks (issue 10):
most of them returned wrong numbers without an error.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from shared import MODE, fails, mark, nested_loop, pair_loop, scan

import popstats
from popstats import Estimator
from popstats._src.estimation import persistence
from popstats._src.estimation.state import state_digest

EPS = 1e-3
F = 2


def rnn():
    """A loop over x (time, batch, feature) with a (mean, var) pair counted by
    the batch size."""
    return pair_loop("bn", eps=EPS)


def batches(seed=0, lengths=(3, 5, 2, 4, 3, 4), size=4):
    rng = np.random.default_rng(seed)
    return [{"x": rng.normal(size=(t, size, F)) + 3.0 * np.arange(t)[:, None, None]}
            for t in lengths]


def same(a, b):
    assert list(a) == list(b)
    for name in a:
        np.testing.assert_array_equal(a[name].value, b[name].value)
        np.testing.assert_array_equal(a[name].coverage, b[name].coverage)


def never(reason="a batch was computed before the options were checked"):
    raise AssertionError(reason)
    yield  # pragma: no cover


def untouched():
    """Batches that fail the test if any is taken."""
    return never()


# --------------------------------------------------------------------------
# run(state=s, checkpoint=path): continuing a pass and adding a checkpoint
# --------------------------------------------------------------------------


@pytest.fixture
def continued(tmp_path):
    """A pass over 6 batches, the state of its first 2, a checkpoint path."""
    inputs, y = rnn()
    data = batches()
    run = popstats.Estimation(inputs, y, mode=MODE)
    return run, data, run.finalize(run.run(data)), run.run(data[:2]), tmp_path / "c.npz"


def test_continuing_a_state_with_a_new_checkpoint_skips_nothing(continued):
    run, data, whole, first, path = continued
    state = run.run(data[2:], state=first, checkpoint=path, checkpoint_every=1)
    same(whole, run.finalize(state))
    assert state.n_batches == len(data)


def test_resuming_a_checkpoint_that_continued_a_state(continued):
    run, data, whole, first, path = continued

    def stopped(items, n):
        for i, item in enumerate(items):
            if i == n:
                raise KeyboardInterrupt
            yield item

    with pytest.raises(KeyboardInterrupt):
        run.run(stopped(data[2:], 3), state=first, checkpoint=path,
                checkpoint_every=1)
    assert popstats.load_state(path).n_batches == 2 + 3
    # called again as it was first called: exact
    state = run.run(data[2:], state=first, checkpoint=path, checkpoint_every=1)
    same(whole, run.finalize(state))
    # without the starting state: refused (it would skip 5, not 3, batches)
    with fails("Estimation.run(checkpoint=...)", "continued a state of 2 batches",
               "no state is given", "state=..."):
        run.run(data[2:], checkpoint=path)
    # with another starting state: refused
    with fails("Estimation.run(checkpoint=...)", "continued a state of 2 batches",
               "a state of 3 batches is given"):
        run.run(data[3:], state=run.run(data[:3]), checkpoint=path)
    # with the checkpoint's own state: refused, saying so
    with fails("Estimation.run(checkpoint=...)", "the checkpoint's own state"):
        run.run(data[2:], state=popstats.load_state(path), checkpoint=path)


def test_checkpoint_from_nothing_with_a_state_given(tmp_path):
    inputs, y = rnn()
    data = batches()
    run = popstats.Estimation(inputs, y, mode=MODE)
    path = tmp_path / "ck.npz"
    run.run(data[:3], checkpoint=path)
    with fails("Estimation.run(checkpoint=...)", "started from nothing",
               "a state of 1 batch is given", "without state="):
        run.run(data[1:], state=run.run(data[:1]), checkpoint=path)
    # an empty state given is the same start as none
    same(run.finalize(run.run(data)),
         run.finalize(run.run(data, state=run.init(), checkpoint=path)))


def test_a_saved_state_is_not_a_checkpoint(tmp_path):
    inputs, y = rnn()
    data = batches()
    run = popstats.Estimation(inputs, y, mode=MODE)
    path = tmp_path / "state.npz"
    run.run(data[:2]).save(path)
    with fails("Estimation.run(checkpoint=...)", "saved with EstimationState.save",
               "state=popstats.load_state(path)"):
        run.run(data, checkpoint=path)


def test_resuming_with_fewer_batches_than_the_checkpoint_counts(tmp_path):
    inputs, y = rnn()
    data = batches()
    path = tmp_path / "ck.npz"
    popstats.estimate(inputs, y, data, checkpoint=path, mode=MODE, progress=False)
    with fails("estimate(checkpoint=...)", "already counts 6 batches",
               "only 4 were given", "same batches again"):
        popstats.estimate(inputs, y, data[:4], checkpoint=path, mode=MODE)
    # the same number again is fine (nothing to compute)
    same(popstats.estimate(inputs, y, data, mode=MODE),
         popstats.estimate(inputs, y, data, checkpoint=path, mode=MODE))


# --------------------------------------------------------------------------
# Resuming and merging with other options
# --------------------------------------------------------------------------

#: (options, what differs, as the default pass says it, as the other says it)
OTHER_OPTIONS = [
    ({"estimator": "weighted"}, "estimator", "'mean'", "'weighted'"),
    ({"estimator": "unbiased"}, "estimator", "'mean'", "'unbiased'"),
    ({"estimator": "pooled"}, "estimator", "'mean'", "'pooled'"),
    ({"estimator": "ema"}, "estimator", "'mean'", "'ema' (momentum 0.1)"),
    ({"max_steps": 2}, "max_steps", "None", "2"),
    ({"time": "pooled"}, "time modes", "('step',)", "('pooled',)"),
]
IDS = [str(o[0]) for o in OTHER_OPTIONS]


def difference(field, in_state, here):
    return f"{field} {in_state} in the state, {here} here"


@pytest.mark.parametrize(("options", "field", "default", "other"), OTHER_OPTIONS,
                         ids=IDS)
def test_resume_with_other_options_is_refused(tmp_path, options, field, default,
                                              other):
    inputs, y = rnn()
    data = batches()
    path = tmp_path / "ck.npz"
    popstats.estimate(inputs, y, data[:3], checkpoint=path, mode=MODE)
    with fails("estimate(checkpoint=...)", "another estimation pass",
               difference(field, default, other), "delete the checkpoint"):
        popstats.estimate(inputs, y, untouched(), checkpoint=path, mode=MODE,
                          **options)


@pytest.mark.parametrize(("options", "field", "default", "other"), OTHER_OPTIONS,
                         ids=IDS)
def test_states_of_other_options_are_refused(options, field, default, other):
    inputs, y = rnn()
    data = batches()
    mean = popstats.Estimation(inputs, y, mode=MODE)
    changed = popstats.Estimation(inputs, y, mode=MODE, **options)
    a, b = mean.run(data[:2]), changed.run(data[2:])
    theirs = difference(field, other, default)
    with fails("Estimation.merge(b=...)", theirs):
        mean.merge(a, b)
    with fails("Estimation.merge(a=...)", difference(field, default, other)):
        changed.merge(a, b)
    with fails("Estimation.run(state=...)", theirs):
        mean.run(data, state=b)
    with fails("Estimation.update(state=...)", theirs):
        mean.update(b, data[0])
    with fails("Estimation.finalize(state=...)", theirs):
        mean.finalize(b)


def test_momentum_and_unbiased_are_part_of_the_estimator():
    inputs, y = rnn()
    data = batches()
    a = popstats.Estimation(inputs, y, estimator=Estimator("ema", momentum=0.2),
                            mode=MODE)
    b = popstats.Estimation(inputs, y, estimator=Estimator("ema", momentum=0.3),
                            mode=MODE)
    with fails("Estimation.merge(b=...)", "'ema' (momentum 0.3) in the state",
               "'ema' (momentum 0.2) here"):
        a.merge(a.run(data[:2]), b.run(data[2:]))


def test_a_state_of_another_graph_names_the_statistics():
    inputs, y = rnn()
    x = pt.matrix("x")
    ff = popstats.Estimation([x], x - mark(x.mean(0), "ff.mean"), mode=MODE)
    loop = popstats.Estimation(inputs, y, mode=MODE)
    with fails("Estimation.merge(a=...)", "'bn.mean'", "'bn.var'",
               "are not in the state", "['ff.mean'] this graph has not"):
        loop.merge(ff.init(), loop.init())


def test_a_damaged_state_is_refused():
    inputs, y = rnn()
    run = popstats.Estimation(inputs, y, mode=MODE)
    state = run.run(batches()[:2])
    broken = popstats.EstimationState(
        state.spec, ({"n": state.states[0]["n"]}, state.states[1]), 2
    )
    with fails("Estimation.finalize(state=...)", f"{state.names[0]!r}", "do not fit",
               "damaged"):
        run.finalize(broken)


def test_state_digest_sees_every_array():
    inputs, y = rnn()
    run = popstats.Estimation(inputs, y, mode=MODE)
    state = run.run(batches()[:2])
    digest = state_digest(state)
    assert state_digest(run.run(batches()[:2])) == digest  # deterministic
    changed = [{k: v.copy() for k, v in s.items()} for s in state.states]
    changed[1]["mean"][0, 0] += 1e-15
    other = popstats.EstimationState(state.spec, tuple(changed), state.n_batches)
    assert state_digest(other) != digest


# --------------------------------------------------------------------------
# max_steps with time pooled at the outer level
# --------------------------------------------------------------------------


def nested():
    """Two loop levels (in.mean, in.var inside, out.mean outside)."""
    return nested_loop(EPS)


def test_max_steps_with_the_outer_loop_pooled():
    inputs, y = nested()
    rng = np.random.default_rng(2)
    data = [{"x4": rng.normal(size=(a, b, 3, F))} for a, b in ((2, 4), (3, 2), (1, 5))]
    for estimator in ("mean", "pooled"):
        stats = popstats.estimate(inputs, y, data, time=("pooled", "step"),
                                  max_steps=3, mode=MODE,
                                  estimator={"out.*": "mean", "*": estimator})
        var = stats["in.var"]
        assert var.value.shape == (3, F) and var.max_steps == 3
        np.testing.assert_array_equal(var.coverage, [3, 3, 2])
        for t2 in range(3):
            # per batch: all outer steps at inner step t2 together
            joint = [d["x4"][:, t2].reshape(-1, F) for d in data
                     if d["x4"].shape[1] > t2]
            if estimator == "mean":
                want = np.mean([e.var(0) for e in joint], axis=0)
            else:
                want = np.concatenate(joint).var(0)
            np.testing.assert_allclose(var.value[t2], want, rtol=1e-12)


# --------------------------------------------------------------------------
# bind with other time modes
# --------------------------------------------------------------------------


def test_bind_refuses_statistics_of_other_time_modes():
    # (step, pooled) and (pooled, step) give arrays of the same shape when the
    # outer and inner loops have the same length: bind must not mix them up
    inputs, y = nested()
    rng = np.random.default_rng(3)
    data = [{"x4": rng.normal(size=(3, 3, 4, F)) * (1 + np.arange(3))[:, None, None,
                                                                      None]}]
    by_outer = popstats.estimate(inputs, y, data, time={"in.*": ("step", "pooled")},
                                 mode=MODE)
    by_inner = popstats.estimate(inputs, y, data, time={"in.*": ("pooled", "step")},
                                 mode=MODE)
    assert by_outer["in.var"].value.shape == by_inner["in.var"].value.shape
    graph = popstats.rewrite(y, by_outer)
    f = pytensor.function(inputs, graph, mode=MODE)
    before = f(data[0]["x4"])
    with fails("bind(stats=...)", "statistic 'in.", "time modes ('pooled', 'step') in "
               "stats", "built for ('step', 'pooled')"):
        popstats.bind(graph, by_inner)
    np.testing.assert_array_equal(f(data[0]["x4"]), before)  # nothing changed
    popstats.bind(graph, by_outer)  # the same modes are fine


def test_loaded_statistics_keep_their_time_modes_and_max_steps(tmp_path):
    inputs, y = nested()
    rng = np.random.default_rng(3)
    data = [{"x4": rng.normal(size=(3, 3, 4, F))}]
    stats = popstats.estimate(inputs, y, data, time=("pooled", "step"), max_steps=2,
                              mode=MODE)
    stats.save(tmp_path / "s.npz")
    loaded = popstats.load(tmp_path / "s.npz")
    assert loaded["in.var"].site.time == ("pooled", "step")
    assert loaded["in.var"].max_steps == 2
    graph = popstats.rewrite(y, popstats.estimate(inputs, y, data, mode=MODE))
    with fails("bind(stats=...)", "time modes ('pooled'", "built for ('step'"):
        popstats.bind(graph, loaded)


# --------------------------------------------------------------------------
# time= dict patterns match names, as estimator= does
# --------------------------------------------------------------------------


def twice(groups=("bn0", "bn1")):
    """One layer applied at two places: names bn.mean#0, bn.mean#1, ..."""
    x = pt.tensor3("x")

    def layer(v, group):
        n = v.shape[0]
        m = mark(v.mean(0), "bn.mean", "mean", group, n)
        s = mark(v.var(0), "bn.var", "var", group, n)
        return (v - m) / pt.sqrt(s + EPS)

    def step(xt, h):
        return h + layer(xt, groups[0]) + layer(2.0 * xt + 1.0, groups[1])

    return [x], scan(step, sequences=[x], outputs_info=[pt.zeros_like(x[0])])


def test_time_patterns_match_names():
    inputs, y = twice()
    data = batches()
    stats = popstats.estimate(inputs, y, data, time={"bn.*#1": "pooled"}, mode=MODE)
    assert stats["bn.mean#0"].site.time == ("step",)
    assert stats["bn.var#0"].site.time == ("step",)
    assert stats["bn.mean#1"].site.time == ("pooled",)
    assert stats["bn.var#1"].site.time == ("pooled",)
    # #1 is pooled and #0 per step, whichever application each is (graph order)
    applications = [lambda v: v, lambda v: 2.0 * v + 1.0]
    pooled = [np.mean([f(d["x"]).reshape(-1, F).var(0) for d in data], axis=0)
              for f in applications]
    which = [np.allclose(stats["bn.var#1"].value, p, rtol=1e-12) for p in pooled]
    assert sum(which) == 1
    other = applications[which.index(False)]
    np.testing.assert_allclose(stats["bn.var#0"].value[0],
                               np.mean([other(d["x"][0]).var(0) for d in data], 0),
                               rtol=1e-12)


def test_a_variance_pooled_without_its_own_mean_is_refused():
    # one group for two applications: which mean is this variance's? (before:
    # the last one found, silently, 49.7 instead of 187.8)
    inputs, y = twice(groups=("bn", "bn"))
    with fails("estimate(time=...)", "the var 'bn.var' is pooled over time",
               "2 statistics with role='mean' share group='bn'", "its own group"):
        popstats.estimate(inputs, y, untouched(), time="pooled", mode=MODE)
    with fails("estimate(time=...)", "2 statistics with role='mean' share group='bn'"):
        popstats.estimate(inputs, y, untouched(), time={"bn.*#0": "pooled"},
                          mode=MODE)
    # no group: the steps' variances could only be averaged (before: silently)
    x = pt.tensor3("x")
    v = scan(lambda xt: mark(xt.var(0), "v", "var"), sequences=[x])
    with fails("estimate(time=...)", "the var 'v' is pooled", "has no group",
               "role='mean' and the same group"):
        popstats.estimate([x], v, untouched(), time="pooled", mode=MODE)
    # per step, both are fine
    popstats.estimate(inputs, y, batches()[:2], mode=MODE)


def test_unmatched_patterns_are_logged(caplog):
    inputs, y = rnn()
    with caplog.at_level(logging.WARNING, logger="popstats"):
        popstats.Estimation(inputs, y, time={"bn.mena": "pooled"},
                            estimator={"bn.vra": "pooled", "*": "mean"}, mode=MODE)
    text = caplog.text
    assert "time=...): the pattern 'bn.mena' matches no statistic" in text
    assert "estimator=...): the pattern 'bn.vra' matches no statistic" in text
    assert "bn.mean, bn.var" in text
    assert "'*'" not in text


# --------------------------------------------------------------------------
# Options checked before any batch is computed
# --------------------------------------------------------------------------


@pytest.mark.parametrize("every", [0, -2, 1.5, True, "10", None])
def test_checkpoint_every_is_checked_first(tmp_path, every):
    inputs, y = rnn()
    with fails("estimate(checkpoint_every=...)", "positive int"):
        popstats.estimate(inputs, y, untouched(), checkpoint=tmp_path / "c.npz",
                          checkpoint_every=every, mode=MODE)
    run = popstats.Estimation(inputs, y, mode=MODE)
    with fails("Estimation.run(checkpoint_every=...)", "positive int"):
        run.run(untouched(), checkpoint=tmp_path / "c.npz", checkpoint_every=every)
    with fails("Estimation.run(checkpoint_every=...)", "positive int"):
        run.run(untouched(), checkpoint_every=every)
    assert not os.listdir(tmp_path)


def test_checkpoint_in_a_missing_folder_is_refused_before_compiling(
    tmp_path, monkeypatch
):
    inputs, y = rnn()

    def no_compile(*args, **kwargs):
        raise AssertionError("compiled before checking the checkpoint path")

    monkeypatch.setattr(pytensor, "function", no_compile)
    with fails("estimate(checkpoint=...)", "does not exist", "os.makedirs"):
        popstats.estimate(inputs, y, untouched(),
                          checkpoint=tmp_path / "missing" / "c.npz", mode=MODE)
    with fails("estimate(checkpoint=...)", "is a folder"):
        popstats.estimate(inputs, y, untouched(), checkpoint=tmp_path, mode=MODE)
    with fails("estimate(progress=...)"):
        popstats.estimate(inputs, y, untouched(), progress="yes", mode=MODE)


def test_estimator_and_max_steps_are_checked_before_exporting(monkeypatch):
    inputs, y = rnn()
    import popstats._src.estimation.pass_object as estimator_module

    def no_export(*args, **kwargs):
        raise AssertionError("exported before checking the options")

    monkeypatch.setattr(estimator_module, "export_checked", no_export)
    with fails("estimate(estimator=...)", "unknown estimator 'meen'"):
        popstats.estimate(inputs, y, untouched(), estimator={"*": "meen"})
    with fails("estimate(max_steps=...)", "positive int"):
        popstats.estimate(inputs, y, untouched(), max_steps=0)


# --------------------------------------------------------------------------
# Temporary files of a killed save
# --------------------------------------------------------------------------


def dead_writer() -> str:
    """``host-pid`` of a process of this host that has ended."""
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return f"{persistence._writer().rpartition('-')[0]}-{child.pid}"


def test_temporary_files_of_a_killed_save_are_removed_on_resume(tmp_path):
    inputs, y = rnn()
    data = batches()
    path = tmp_path / "ck.npz"
    popstats.estimate(inputs, y, data[:3], checkpoint=path, mode=MODE)
    # what a process killed while writing leaves: a partial temporary file
    stale = tmp_path / f".ck.npz.{dead_writer()}.k1lled_.popstats-tmp"
    stale.write_bytes(b"PK\x03\x04 half an archive")
    # not stale: another file's, a running process's (this one), another host's
    others = [
        tmp_path / f".other.npz.{dead_writer()}.x.popstats-tmp",
        tmp_path / f".ck.npz.{persistence._writer()}.x.popstats-tmp",
        tmp_path / ".ck.npz.otherhost-1.x.popstats-tmp",
    ]
    for other in others:
        other.write_bytes(b"")
    # resuming removes it before its first batch, then saves as usual
    with pytest.raises(KeyboardInterrupt):
        def stop():
            yield from data[:3]
            raise KeyboardInterrupt
        popstats.estimate(inputs, y, stop(), checkpoint=path, mode=MODE)
    assert not stale.exists()
    assert sorted(os.listdir(tmp_path)) == sorted(["ck.npz", *(o.name for o in others)])


def test_any_save_removes_what_a_killed_save_of_the_file_left(tmp_path):
    x = pt.matrix("x")
    y = x - mark(x.mean(0), "m")
    stats = popstats.estimate([x], y, [{"x": np.ones((2, F))}], mode=MODE)
    stale = tmp_path / f".stats.npz.{dead_writer()}.abc.popstats-tmp"
    stale.write_bytes(b"PK")
    stats.save(tmp_path / "stats.npz")
    assert os.listdir(tmp_path) == ["stats.npz"]


# --------------------------------------------------------------------------
# Found by the state machine (test_pass_machine.py)
# --------------------------------------------------------------------------


def test_update_after_merge_counts_statistics_outside_loops():
    # merge gave 0-d fields as NumPy scalars, which in-place updates missed:
    # the outer statistic stopped counting batches after a merge
    x = pt.matrix("x")
    n = x.shape[0]
    y = x - mark(x.mean(0), "m", "mean", "g", n)
    data = [{"x": np.full((2, F), float(i))} for i in range(4)]
    for estimator in ("mean", "weighted", "ema"):
        run = popstats.Estimation([x], y, estimator=estimator, mode=MODE)
        merged = run.merge(run.run(data[:1]), run.run(data[1:2]))
        state = run.update(run.run(data[2:3], state=merged), data[3])
        got = run.finalize(state)
        want = run.finalize(run.run(data))
        assert int(got["m"].coverage) == 4
        np.testing.assert_allclose(got["m"].value, want["m"].value, rtol=1e-12)


# --------------------------------------------------------------------------
# Found by trying the features as a new user
# --------------------------------------------------------------------------


def test_a_checkpoint_of_other_weights_is_refused(tmp_path, caplog):
    # before: a finished checkpoint returned the old weights' statistics
    x = pt.matrix("x")
    W = pytensor.shared(np.eye(F), name="W")
    y = x @ W - mark((x @ W).mean(0), "m")
    data = [{"x": np.ones((4, F))}] * 3
    path = tmp_path / "c.npz"
    popstats.estimate([x], y, data, checkpoint=path, mode=MODE)
    with caplog.at_level(logging.INFO, logger="popstats"):
        again = popstats.estimate([x], y, data, checkpoint=path, mode=MODE)
    assert "resuming from" in caplog.text and "skipping them" in caplog.text
    np.testing.assert_array_equal(again["m"].value, [1.0, 1.0])
    W.set_value(5.0 * np.eye(F))
    with fails("estimate(checkpoint=...)", "the model's parameters",
               "other weights", "delete the checkpoint"):
        popstats.estimate([x], y, untouched(), checkpoint=path, mode=MODE)
    path.unlink()
    np.testing.assert_array_equal(
        popstats.estimate([x], y, data, checkpoint=path, mode=MODE)["m"].value,
        [5.0, 5.0])


def test_numpy_integers_are_accepted_as_options(tmp_path):
    inputs, y = rnn()
    data = batches()
    want = popstats.estimate(inputs, y, data, max_steps=3, mode=MODE)
    got = popstats.estimate(inputs, y, data, max_steps=np.int64(3), mode=MODE,
                            checkpoint=tmp_path / "c.npz",
                            checkpoint_every=np.int32(2))
    same(want, got)
    assert got["bn.mean"].max_steps == 3 and type(got["bn.mean"].max_steps) is int
    assert popstats.Estimator("ema", np.float32(0.25)).momentum == 0.25


def test_errors_name_the_method_and_argument(tmp_path):
    inputs, y = rnn()
    run = popstats.Estimation(inputs, y, mode=MODE)
    with fails("Estimation.finalize(state=...)", "counts no batches"):
        run.finalize(run.init())
    with fails("Estimation.run(progress=...)"):
        run.run(untouched(), progress=2)
    graph = popstats.rewrite(y, run.finalize(run.run(batches()[:1])))
    with fails("bind(stats=...)", "popstats.load(path)"):
        popstats.bind(graph, "stats.npz")
    with fails("bind(outputs=...)"):
        popstats.bind(None, run.finalize(run.run(batches()[:1])))
    (tmp_path / "bad.npz").write_text("not an archive")
    with fails("estimate(checkpoint=...)", "bad.npz", "not a popstats file",
               "not a NumPy .npz archive", "Delete it"):
        popstats.estimate(inputs, y, untouched(), checkpoint=tmp_path / "bad.npz",
                          mode=MODE)
    with fails("Estimation(mode=...)", "does not know the mode 'FAST'"):
        popstats.Estimation(inputs, y, mode="FAST")


def test_loading_a_checkpoint_as_a_state_warns(tmp_path, caplog):
    # continuing it with the batches it counts would count them twice
    inputs, y = rnn()
    path = tmp_path / "c.npz"
    popstats.estimate(inputs, y, batches()[:2], checkpoint=path, mode=MODE)
    with caplog.at_level(logging.WARNING, logger="popstats"):
        state = popstats.load_state(path)
    assert state.n_batches == 2
    assert "is a checkpoint of Estimation.run that counts 2 batch(es)" in caplog.text
    assert "count them twice" in caplog.text
    caplog.clear()
    run = popstats.Estimation(inputs, y, mode=MODE)
    run.run(batches()[:1]).save(tmp_path / "s.npz")
    with caplog.at_level(logging.WARNING, logger="popstats"):
        popstats.load_state(tmp_path / "s.npz")
    assert caplog.text == ""


def _one_layer():
    x = pt.matrix("x")
    return x, x - popstats.bn_statistic(x.mean(0), "m")


def test_a_checkpoint_reused_for_other_data_is_refused(tmp_path):
    # the case: a finished pass over zeros, then ones with the same path
    x, y = _one_layer()
    ck = tmp_path / "ck.npz"
    zeros = [{"x": np.zeros((3, 2))}] * 4
    first = popstats.estimate([x], y, zeros, mode=MODE, checkpoint=ck)
    with pytest.raises(popstats.PopstatsError, match=r"checkpoint=.*not those the "
                                                     r"checkpoint .* counts"):
        popstats.estimate([x], y, [{"x": np.ones((3, 2))}] * 4, mode=MODE,
                          checkpoint=ck)
    # a finished checkpoint is a finished pass: the same batches give its result
    again = popstats.estimate([x], y, zeros, mode=MODE, checkpoint=ck)
    np.testing.assert_array_equal(again["m"].value, first["m"].value)


def test_a_resume_checks_the_batches_it_skips(tmp_path):
    x, y = _one_layer()
    ck = tmp_path / "ck.npz"
    rng = np.random.default_rng(5)
    batches = [{"x": rng.normal(size=(3, 2))} for _ in range(6)]

    def stopped():
        for i, batch in enumerate(batches):
            if i == 4:
                raise KeyboardInterrupt
            yield batch

    run = popstats.Estimation([x], y, mode=MODE)
    with pytest.raises(KeyboardInterrupt):
        run.run(stopped(), checkpoint=ck, checkpoint_every=2)
    other = [{"x": b["x"] + (k == 1)} for k, b in enumerate(batches)]
    with pytest.raises(popstats.PopstatsError, match="first 4 batches given"):
        run.run(other, checkpoint=ck)
    # batches after the skipped ones may be anything: only those are checked
    resumed = run.finalize(run.run(batches, checkpoint=ck))
    whole = run.finalize(run.run(batches))
    np.testing.assert_array_equal(resumed["m"].value, whole["m"].value)


def test_a_checkpoint_without_a_digest_of_its_batches_is_refused(tmp_path):
    import dataclasses

    from popstats._src.estimation.state import load_checkpoint, save_state

    x, y = _one_layer()
    ck = tmp_path / "ck.npz"
    batches = [{"x": np.full((3, 2), float(k))} for k in range(4)]

    def stopped():
        yield from batches[:2]
        raise KeyboardInterrupt

    run = popstats.Estimation([x], y, mode=MODE)
    with pytest.raises(KeyboardInterrupt):
        run.run(stopped(), checkpoint=ck, checkpoint_every=1)
    state, began = load_checkpoint(ck)
    assert began.data  # recorded
    save_state(state, ck, checkpoint=dataclasses.replace(began, data=""))
    with pytest.raises(popstats.PopstatsError, match="earlier popstats"):
        run.run(batches, checkpoint=ck)
