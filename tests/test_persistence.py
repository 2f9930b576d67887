"""Saving and loading (``.npz``, no pickle), checkpoints and resuming.

Round trips must be exact (values, coverage, estimator, site identity,
role, group, time modes); loaded statistics must rewrite and bind like the
originals; a resumed pass must give the numbers of an uninterrupted one,
bit for bit; bad files must raise PopstatsError; saving must be atomic.
"""

from __future__ import annotations

import os

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from shared import MODE, Interrupted, fails, interrupted_after, mark, nested_loop, scan

import popstats
from popstats import Estimator

EPS = 1e-3
F = 2


# --------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------


class FF:
    """Feed-forward: y = (x - mean) / sqrt(var + EPS) * scale."""

    def __init__(self):
        self.x = pt.matrix("x")
        n = self.x.shape[0]
        m = mark(self.x.mean(0), "ff.mean", "mean", "ff", n)
        v = mark(self.x.var(0), "ff.var", "var", "ff", n)
        s = mark(abs(self.x).max(0), "ff.scale")
        self.inputs = [self.x]
        self.outputs = [(self.x - m) / pt.sqrt(v + EPS) * s]

    @staticmethod
    def batches(seed, sizes=(5, 3, 8)):
        rng = np.random.default_rng(seed)
        return [{"x": rng.normal(1.0, 2.0, (b, F))} for b in sizes]

    @staticmethod
    def infer(x, pop):
        return [(x - pop["ff.mean"]) / np.sqrt(pop["ff.var"] + EPS) * pop["ff.scale"]]

    def test_input(self):
        return [np.random.default_rng(99).normal(size=(4, F))]


class Masked:
    """A Scan with mask-based counts (variable lengths)."""

    def __init__(self):
        x = pt.tensor3("x")
        mask = pt.matrix("mask")

        def step(xt, mt, h):
            c = mt.sum()
            w = mt[:, None]
            mean = (xt * w).sum(0) / c
            var = (((xt - mean) ** 2) * w).sum(0) / c
            m = mark(mean, "s.mean", "mean", "s", c)
            v = mark(var, "s.var", "var", "s", c)
            mx = mark(pt.switch(w > 0, xt, -1e9).max(0), "s.max", count=c)
            return h + (xt - m) / pt.sqrt(v + EPS) + mx

        self.inputs = [x, mask]
        h0 = pt.zeros_like(x[0])
        self.outputs = [scan(step, sequences=[x, mask], outputs_info=[h0])]

    @staticmethod
    def batches(seed, lengths=(3, 2, 5, 4)):
        rng = np.random.default_rng(seed)
        out = []
        for t in lengths:
            b = int(rng.integers(3, 7))
            mask = (rng.random((t, b)) < 0.6).astype(np.float64)
            mask[:, :2] = 1.0
            out.append({"x": rng.normal(0.5, 1.5, (t, b, F)), "mask": mask})
        return out

    def test_input(self):
        rng = np.random.default_rng(98)
        return [rng.normal(size=(7, 3, F)), np.ones((7, 3))]


class Nested:
    """Two loop levels, with statistics at both."""

    def __init__(self):
        self.inputs, y = nested_loop(EPS)
        self.outputs = [y]

    @staticmethod
    def batches(seed, shapes=((2, 3, 4), (3, 2, 3), (1, 4, 5))):
        rng = np.random.default_rng(seed)
        return [{"x4": rng.normal(0.5, 1.5, (*s, F))} for s in shapes]

    def test_input(self):
        return [np.random.default_rng(97).normal(size=(4, 5, 3, F))]


#: (model, estimate options) whose statistics exercise every saved field
SETUPS = {
    "ff": (FF, {"estimator": {"ff.scale": Estimator("ema", momentum=0.25),
                              "*": "pooled"}}),
    "masked": (Masked, {"estimator": {"s.max": "unbiased", "*": "pooled"},
                        "time": {"s.max": "pooled"}}),
    "nested": (Nested, {"estimator": {"out.*": Estimator("ema"), "*": "weighted"},
                        "time": ("step", "pooled"), "max_steps": 2}),
    "nested_uncovered": (Nested, {}),  # cell (2, 2)... of in.mean never reached
}


def estimate(model, batches, **options):
    return popstats.estimate(model.inputs, model.outputs, batches, mode=MODE, **options)


def assert_same_statistics(a, b):
    assert list(a) == list(b)
    for name in a:
        sa, sb = a[name], b[name]
        assert (sa.name, sa.label, sa.n_batches) == (sb.name, sb.label, sb.n_batches)
        assert sa.site == sb.site  # id (path, key, occurrence), shape, dtype, ...
        assert (sa.site.role, sa.site.group, sa.site.time, sa.site.counted) == (
            sb.site.role, sb.site.group, sb.site.time, sb.site.counted
        )
        assert sa.estimator == sb.estimator
        assert sb.value.dtype == np.float64 and sb.coverage.dtype == np.int64
        np.testing.assert_array_equal(sa.value, sb.value)
        np.testing.assert_array_equal(sa.coverage, sb.coverage)
        assert sa.value.shape == sb.value.shape
        assert sa.coverage.shape == sb.coverage.shape
        assert sa.uncovered_steps == sb.uncovered_steps
        assert sa.thin_steps == sb.thin_steps


# --------------------------------------------------------------------------
# Round trips
# --------------------------------------------------------------------------


@pytest.mark.parametrize("setup", list(SETUPS))
def test_save_load_round_trip_is_exact(setup, tmp_path):
    cls, options = SETUPS[setup]
    model = cls()
    stats = estimate(model, cls.batches(1), **options)
    path = tmp_path / "stats.npz"
    stats.save(path)
    loaded = popstats.load(path)
    assert isinstance(loaded, popstats.PopulationStatistics)
    assert_same_statistics(stats, loaded)
    assert repr(loaded) == repr(stats)
    if setup == "nested_uncovered":
        assert loaded["in.mean"].uncovered_steps > 0
    # str paths too, and overwriting an existing file
    stats.save(str(path))
    assert_same_statistics(stats, popstats.load(str(path)))
    # the loaded statistics rewrite the graph exactly as the originals
    fn_a = pytensor.function(model.inputs, popstats.rewrite(model.outputs, stats),
                             mode=MODE, on_unused_input="ignore")
    fn_b = pytensor.function(model.inputs, popstats.rewrite(model.outputs, loaded),
                             mode=MODE, on_unused_input="ignore")
    for got, want in zip(fn_b(*model.test_input()), fn_a(*model.test_input()),
                         strict=True):
        np.testing.assert_array_equal(got, want)


def test_saved_file_is_plain_npz_without_pickle(tmp_path):
    model = FF()
    stats = estimate(model, FF.batches(2), estimator=Estimator("ema", momentum=0.5))
    path = tmp_path / "stats.npz"
    stats.save(path)
    with np.load(path, allow_pickle=False) as archive:
        assert str(archive["popstats_format"]) == "popstats.statistics"
        assert int(archive["format_version"]) == 3
        assert all(archive[k].dtype != object for k in archive.files)
    assert popstats.load(path)["ff.var"].estimator == Estimator("ema", momentum=0.5)


def test_bind_loaded_statistics_onto_a_graph_built_earlier(tmp_path):
    model = FF()
    first = estimate(model, FF.batches(3))
    inference = popstats.rewrite(model.outputs, first)
    fn = pytensor.function(model.inputs, inference, mode=MODE)
    x = model.test_input()[0]
    pop = {k: s.value for k, s in first.items()}
    np.testing.assert_allclose(fn(x)[0], FF.infer(x, pop)[0], rtol=1e-12)
    # later: other statistics are saved, loaded, and bound in place
    second = estimate(model, FF.batches(4, sizes=(9, 2)), estimator={"ff.s*": "mean",
                                                                     "*": "pooled"})
    second.save(tmp_path / "second.npz")
    loaded = popstats.load(tmp_path / "second.npz")
    popstats.bind(inference, loaded)
    pop = {k: s.value for k, s in second.items()}
    assert not np.allclose(pop["ff.var"], first["ff.var"].value)
    np.testing.assert_allclose(fn(x)[0], FF.infer(x, pop)[0], rtol=1e-12)


def test_state_round_trip_and_continuing_from_it(tmp_path):
    model = Masked()
    batches = Masked.batches(5, lengths=(3, 5, 2, 4, 1))
    spec = {"s.max": Estimator("ema", momentum=0.3), "*": "pooled"}
    run = popstats.Estimation(model.inputs, model.outputs, estimator=spec, mode=MODE)
    state = run.run(batches[:3])
    state.save(tmp_path / "state.npz")
    loaded = popstats.load_state(tmp_path / "state.npz")
    assert isinstance(loaded, popstats.EstimationState)
    assert loaded.names == state.names and loaded.n_batches == 3
    for sa, sb in zip(state.states, loaded.states, strict=True):
        assert set(sa) == set(sb)
        for field in sa:
            assert sa[field].dtype == sb[field].dtype
            np.testing.assert_array_equal(sa[field], sb[field])
    resumed = run.finalize(run.run(batches[3:], state=loaded))
    whole = run.finalize(run.run(batches))
    assert_same_statistics(whole, resumed)


# --------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------


def test_resume_equals_an_uninterrupted_run(tmp_path):
    # one loop (every estimator, time mode and cap, interrupted anywhere, twice
    # too): test_pass_machine.py; here two loop levels and estimate()'s options
    cls, options = SETUPS["nested"]
    model = cls()
    batches = cls.batches(6, shapes=((2, 3, 2), (3, 1, 3), (1, 2, 2), (3, 2, 2),
                                     (2, 4, 3), (1, 1, 2), (2, 2, 4)))
    path = tmp_path / "checkpoint.npz"
    whole = estimate(model, batches, **options)
    with pytest.raises(Interrupted):
        estimate(model, interrupted_after(batches, 6),
                 checkpoint=path, checkpoint_every=3, **options)
    # saved after batches 3 and 6
    assert popstats.load_state(path).n_batches == 6
    resumed = estimate(model, batches, checkpoint=path, checkpoint_every=3, **options)
    assert_same_statistics(whole, resumed)
    # at the end the checkpoint holds the whole pass; running again adds nothing
    assert popstats.load_state(path).n_batches == len(batches)
    again = estimate(model, iter(batches), checkpoint=path, **options)
    assert_same_statistics(whole, again)


def test_resume_skips_counted_batches_without_computing_them(tmp_path, monkeypatch):
    model = Masked()
    batches = Masked.batches(7, lengths=(3, 5, 2, 4, 3))
    path = tmp_path / "checkpoint.npz"
    whole = estimate(model, batches)
    with pytest.raises(Interrupted):
        estimate(model, interrupted_after(batches, 3), checkpoint=path,
                 checkpoint_every=1)
    # batches already counted are read (their digest is checked against the
    # checkpoint's) but not computed again: count the batches computed
    computed = []
    real = popstats.Estimation._statistics

    def counting(self, values, index, *args, **kwargs):
        computed.append(index)
        return real(self, values, index, *args, **kwargs)

    monkeypatch.setattr(popstats.Estimation, "_statistics", counting)
    resumed = estimate(model, batches, checkpoint=path, checkpoint_every=1)
    assert computed == list(range(3, len(batches)))  # only those after the 3
    assert_same_statistics(whole, resumed)
    # poisoned counted batches are other data now: refused, not used
    poisoned = [
        {"x": np.full_like(b["x"], np.nan), "mask": b["mask"]} if i < 3 else b
        for i, b in enumerate(batches)
    ]
    with fails("not those the checkpoint"):
        estimate(model, poisoned, checkpoint=path, checkpoint_every=1)


def test_checkpoint_of_another_graph(tmp_path):
    path = tmp_path / "checkpoint.npz"
    model = Masked()
    estimate(model, Masked.batches(8), checkpoint=path)
    ff = FF()
    with fails("estimate(checkpoint=...)", "'s.mean'", "'ff.mean'",
               "delete the checkpoint"):
        estimate(ff, FF.batches(8), checkpoint=path)


# --------------------------------------------------------------------------
# Bad files
# --------------------------------------------------------------------------


@pytest.fixture
def saved(tmp_path):
    """Paths of a saved statistics file and a saved state file."""
    model = FF()
    stats = estimate(model, FF.batches(9))
    run = popstats.Estimation(model.inputs, model.outputs, mode=MODE)
    state = run.run(FF.batches(9))
    stats_path, state_path = tmp_path / "stats.npz", tmp_path / "state.npz"
    stats.save(stats_path)
    state.save(state_path)
    return stats, stats_path, state_path


def _rewrite_npz(src, dst, **changes):
    with np.load(src, allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    arrays.update(changes)
    with open(dst, "wb") as handle:
        np.savez(handle, **arrays)


def test_other_format_version(saved, tmp_path):
    _, stats_path, state_path = saved
    future = tmp_path / "future.npz"
    _rewrite_npz(stats_path, future, format_version=np.array(4))
    with fails("load(path=...)", "future.npz", "format version 4", "version 3"):
        popstats.load(future)
    _rewrite_npz(stats_path, future, format_version=np.array(1))
    with fails("load(path=...)", "format version 1", "new in every process",
               "Estimate again"):
        popstats.load(future)
    _rewrite_npz(stats_path, future, format_version=np.array(2))
    with fails("load(path=...)", "format version 2", "max_steps", "Estimate again"):
        popstats.load(future)
    _rewrite_npz(state_path, future, format_version=np.array(0))
    with fails("load_state(path=...)", "format version 0", "version 3"):
        popstats.load_state(future)
    _rewrite_npz(state_path, future, format_version=np.array(1))
    with fails("load_state(path=...)", "format version 1", "estimator, time modes "
               "and max_steps", "run the pass again"):
        popstats.load_state(future)


def test_statistics_and_state_files_are_not_interchangeable(saved):
    _, stats_path, state_path = saved
    with fails("load(path=...)", "'popstats.state'", "popstats.load_state"):
        popstats.load(state_path)
    with fails("load_state(path=...)", "'popstats.statistics'", "popstats.load"):
        popstats.load_state(stats_path)


def test_missing_file_and_bad_path(tmp_path):
    missing = tmp_path / "nope.npz"
    with fails("load(path=...)", "no file at", "nope.npz"):
        popstats.load(missing)
    with fails("load_state(path=...)", "no file at", "nope.npz"):
        popstats.load_state(missing)
    with fails("load(path=...)", "expected a file path", "3"):
        popstats.load(3)
    with fails("load(path=...)", "is a folder, not a popstats file"):
        popstats.load(tmp_path)


def test_files_that_are_not_popstats_files(tmp_path):
    text = tmp_path / "notes.npz"
    text.write_text("not an archive")
    with fails("load(path=...)", "notes.npz", "not a popstats file or is corrupted"):
        popstats.load(text)
    other = tmp_path / "other.npz"
    np.savez(other, weights=np.ones(3))
    with fails("load(path=...)", "not a popstats file"):
        popstats.load(other)
    with fails("load_state(path=...)", "not a popstats file"):
        popstats.load_state(other)
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    with fails("load(path=...)", "empty.npz"):
        popstats.load(empty)


def test_corrupted_metadata(saved, tmp_path):
    _, stats_path, state_path = saved
    bad = tmp_path / "bad.npz"
    _rewrite_npz(stats_path, bad, meta=np.array("{not json"))
    with fails("load(path=...)", "corrupted", "Save it again"):
        popstats.load(bad)
    _rewrite_npz(stats_path, bad, meta=np.array('{"statistics": [{"name": "x"}]}'))
    with fails("load(path=...)", "corrupted"):
        popstats.load(bad)
    # a value array missing
    with np.load(stats_path) as archive:
        arrays = {k: archive[k] for k in archive.files if k != "value/1"}
    with open(bad, "wb") as handle:
        np.savez(handle, **arrays)
    with fails("load(path=...)", "corrupted"):
        popstats.load(bad)
    # coverage that does not fit the value
    with np.load(stats_path) as archive:
        cov = archive["coverage/0"]
    _rewrite_npz(stats_path, bad, **{"coverage/0": np.ones((3, *cov.shape), "int64")})
    with fails("load(path=...)", "corrupted", "coverage"):
        popstats.load(bad)
    _rewrite_npz(state_path, bad, meta=np.array('{"names": ["a"]}'))
    with fails("load_state(path=...)", "corrupted"):
        popstats.load_state(bad)


@pytest.mark.parametrize("kind", ["stats", "state"])
def test_truncated_and_garbled_files(saved, tmp_path, kind):
    stats, stats_path, state_path = saved
    path = stats_path if kind == "stats" else state_path
    loader = popstats.load if kind == "stats" else popstats.load_state
    call = "load(path=...)" if kind == "stats" else "load_state(path=...)"
    data = path.read_bytes()
    bad = tmp_path / "bad.npz"
    for keep in (0.1, 0.5, 0.9, 0.99):
        bad.write_bytes(data[: int(len(data) * keep)])
        with fails(call, "bad.npz"):
            loader(bad)
    # overwrite bytes anywhere: either a PopstatsError, or (where the bytes
    # are not checked, e.g. zip timestamps) the same content
    rng = np.random.default_rng(0)
    raised = 0
    for start in range(0, len(data) - 8, max(1, len(data) // 60)):
        garbled = bytearray(data)
        garbled[start : start + 8] = rng.integers(0, 256, 8, dtype=np.uint8).tobytes()
        bad.write_bytes(bytes(garbled))
        try:
            got = loader(bad)
        except popstats.PopstatsError as exc:
            assert call in str(exc)
            raised += 1
            continue
        if kind == "stats":
            assert_same_statistics(stats, got)
        else:
            want = popstats.load_state(state_path)
            assert got.names == want.names and got.n_batches == want.n_batches
            for sa, sb in zip(want.states, got.states, strict=True):
                for field in sa:
                    np.testing.assert_array_equal(sa[field], sb[field])
    assert raised > 40


# --------------------------------------------------------------------------
# Atomic saving
# --------------------------------------------------------------------------


class Abort(BaseException):
    """Like a KeyboardInterrupt in the middle of writing."""


@pytest.mark.parametrize("error", [OSError("disk full"), Abort()])
@pytest.mark.parametrize("kind", ["stats", "state"])
def test_failed_save_leaves_the_existing_file_untouched(saved, monkeypatch, kind,
                                                        error):
    stats, stats_path, state_path = saved
    path = stats_path if kind == "stats" else state_path
    before = path.read_bytes()
    folder = sorted(os.listdir(path.parent))
    model = FF()
    other = estimate(model, FF.batches(10))
    obj = other if kind == "stats" else popstats.Estimation(
        model.inputs, model.outputs, mode=MODE).run(FF.batches(10))

    def failing_savez(file, *args, **kwargs):
        file.write(b"PK\x03\x04 half an archive")
        file.flush()
        raise error

    monkeypatch.setattr(np, "savez", failing_savez)
    # an OSError becomes a PopstatsError naming the user's path (cause chained)
    expected = popstats.PopstatsError if isinstance(error, OSError) else type(error)
    with pytest.raises(expected) as info:
        obj.save(path)
    if isinstance(error, OSError):
        assert str(path) in str(info.value) and "disk full" in str(info.value)
        assert ".popstats-" not in str(info.value)
        assert info.value.__cause__ is error
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(os.listdir(path.parent)) == folder  # no temporary file left
    if kind == "stats":
        assert_same_statistics(stats, popstats.load(path))
    # a failed first save leaves nothing at all
    fresh = path.parent / "fresh.npz"
    monkeypatch.setattr(np, "savez", failing_savez)
    with pytest.raises(expected):
        obj.save(fresh)
    monkeypatch.undo()
    assert not fresh.exists()
    assert sorted(os.listdir(path.parent)) == folder
    # and a save that works replaces the file
    obj.save(path)
    assert path.read_bytes() != before


# --------------------------------------------------------------------------
# Issue 28: values loaded are checked before anything compiles
# --------------------------------------------------------------------------


def _linear_model():
    """x @ W then a batch norm: the statistics' shape follows from W."""
    x = pt.matrix("x")
    w = pytensor.shared(np.random.default_rng(5).normal(size=(F, 4)), name="W")
    h = x @ w
    n = h.shape[0]
    m = mark(h.mean(0), "lin.mean", "mean", "lin", n)
    v = mark(h.var(0), "lin.var", "var", "lin", n)
    return x, (h - m) / pt.sqrt(v + EPS)


def test_loaded_value_of_wrong_length_is_refused_before_compiling(tmp_path):
    x, y = _linear_model()
    stats = popstats.estimate([x], y, FF.batches(3), mode=MODE)
    path, bad = tmp_path / "stats.npz", tmp_path / "bad.npz"
    stats.save(path)
    index = list(stats).index("lin.mean")
    # one moment of a group replaced: the file contradicts itself
    _rewrite_npz(path, bad, **{f"value/{index}": np.zeros(7)})
    with fails("load(path=...)", str(bad), "corrupted", "'lin.mean'", "(7,)",
               "Save it again"):
        popstats.load(bad)
    # both replaced: the file is consistent, the graph's weights are not
    arrays = {f"{kind}/{k}": np.zeros(7) for k in range(2)
              for kind in ("value", "standard_error")}
    _rewrite_npz(path, bad, **arrays)
    with fails("rewrite(stats=...)", "shape (7,) in stats", "shape (4,)",
               "estimate on this graph"):
        popstats.rewrite(y, popstats.load(bad))


def test_loaded_non_finite_value_is_refused(tmp_path):
    x, y = _linear_model()
    stats = popstats.estimate([x], y, FF.batches(3), mode=MODE)
    path, bad = tmp_path / "stats.npz", tmp_path / "bad.npz"
    stats.save(path)
    index = list(stats).index("lin.var")
    value = stats["lin.var"].value.copy()
    value[2] = np.nan
    _rewrite_npz(path, bad, **{f"value/{index}": value})
    with fails("load(path=...)", str(bad), "'lin.var' holds NaN or infinity",
               "1 of 4 values", "Save it again"):
        popstats.load(bad)
