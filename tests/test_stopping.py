"""Stopping an estimation pass once every statistic is precise enough.

The option ``target_error`` (with ``min_batches``) ends a pass at the first
check of its geometric schedule where every statistic's norm (the largest
relative standard error over its units and its cells reached by at least
``min_batches`` batches) is below the target. Proven here against a NumPy
recomputation of the norm from the batches' own statistics, in and out of
a Scan loop, on the host and graph engines, with checkpoints (a resumed run
stops where an uninterrupted one does), on Dask (fewer partitions computed)
and with ``upstream="population"`` (every pass takes the first pass's
batches); the record is saved with the statistics, and bad values are
refused with errors naming the call.
"""

from __future__ import annotations

import functools
import math
import os

import numpy as np
import pytensor.tensor as pt
import pytest
from shared import MODE, Interrupted, bn_pair, fails, interrupted_after, pair_loop

import popstats
from popstats._src.estimation.stop_rule import due, next_check
from popstats._src.estimation.stopping import StopCheck, Stopping

TARGET = 0.1


def _model():
    x = pt.matrix("x")
    return [x], bn_pair(pt.tanh(bn_pair(x, "a")) * 2.0 + 1.0, "b")


def _batches(n: int, rows: int = 8, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.normal(size=(rows, 3)) * [1.0, 2.0, 0.5] + 3.0}
            for _ in range(n)]


def _reference_norms(per_batch: dict[str, list[np.ndarray]], n: int) -> dict:
    """NumPy: each statistic's norm over its first ``n`` batch values, for the
    default estimator ("mean"): SE^2 = sum (x_b - mean)^2 / (n (n - 1)),
    relative to |value| (a var) or to the paired var's sqrt (a mean)."""
    values, errors = {}, {}
    for name, xs in per_batch.items():
        x = np.stack(xs[:n])
        values[name] = x.mean(0)
        errors[name] = np.sqrt(((x - x.mean(0)) ** 2).sum(0) / (n * (n - 1)))
    norms = {}
    for name in per_batch:
        group, role = name.split(".")
        scale = (np.sqrt(values[f"{group}.var"]) if role == "mean"
                 else np.abs(values[name]))
        norms[name] = float(np.max(errors[name] / scale))
    return norms


# -- the schedule -------------------------------------------------------------


def test_schedule_is_geometric_from_min_batches():
    checks = [n for n in range(1, 100_000) if due(n, 10)]
    assert checks[:3] == [10, 11, 13]
    assert len(checks) < 120  # O(log n): about log(10^4) / log(1.1)
    ratios = np.array(checks[20:]) / np.array(checks[19:-1])
    assert ratios.max() < 1.11 and ratios.min() >= 1.1 - 1e-12  # a tenth, rounded up
    assert all(next_check(n, 10) == n for n in checks)
    assert not any(due(n, 10) for n in range(10))


# -- the rule against NumPy ---------------------------------------------------


@pytest.mark.parametrize("accumulate", ["host", "graph"])
def test_stops_at_first_check_below_target(accumulate):
    inputs, y = _model()
    batches = _batches(300)
    seen: dict[str, list[np.ndarray]] = {}

    def keep(index, per_site):
        for site, (value, _, _) in zip(run.sites, per_site, strict=True):
            seen.setdefault(site.name, []).append(value)

    run = popstats.Estimation(inputs, y, mode=MODE)
    run.run(batches, on_batch=keep)  # every batch's statistics, for NumPy
    stats = popstats.estimate(inputs, y, batches, target_error=TARGET,
                              accumulate=accumulate, mode=MODE)
    record = stats.stopping
    checks = [n for n in range(1, 301) if due(n, 10)]
    reference = {n: _reference_norms(seen, n) for n in checks}
    first = next(n for n in checks if max(reference[n].values()) < TARGET)
    assert record.reason == "target" and record.reached
    assert record.n_batches == first < 300
    assert {s.n_batches for s in stats.values()} == {first}
    assert [c.n_batches for c in record.trace] == [n for n in checks if n <= first]
    for check in record.trace:
        for name, norm in check.norm.items():
            assert norm == pytest.approx(reference[check.n_batches][name], rel=1e-9)
    before = record.trace[-2]
    assert max(before.norm.values()) >= TARGET
    assert record.left_out == dict.fromkeys(stats, 0) and record.imprecise == ()
    # the values are those of a pass over exactly those first batches
    plain = popstats.estimate(inputs, y, batches[:first], mode=MODE)
    for name, stat in stats.items():
        np.testing.assert_allclose(stat.value, plain[name].value, rtol=1e-12)
    assert plain.stopping is None


def test_batches_ended_when_data_does_not_suffice():
    inputs, y = _model()
    batches = _batches(25)
    seen: dict[str, list[np.ndarray]] = {}
    run = popstats.Estimation(inputs, y, mode=MODE)
    run.run(batches, on_batch=lambda i, per: [
        seen.setdefault(s.name, []).append(v) for s, (v, _, _) in
        zip(run.sites, per, strict=True)])
    stats = popstats.estimate(inputs, y, batches, target_error=0.001, mode=MODE)
    record = stats.stopping
    assert record.reason == "batches ended" and not record.reached
    assert record.n_batches == 25
    assert record.trace[-1].n_batches == 25  # measured at the end (off-schedule)
    for name, norm in _reference_norms(seen, 25).items():
        assert record.norm[name] == pytest.approx(norm, rel=1e-9)
    assert "not reached after 25 batches" in str(record)


def test_fewer_batches_than_min_batches():
    inputs, y = _model()
    stats = popstats.estimate(inputs, y, _batches(5), target_error=TARGET,
                              mode=MODE)
    record = stats.stopping
    assert record.reason == "batches ended" and record.n_batches == 5
    assert all(math.isnan(v) for v in record.norm.values())  # no cell counts
    assert set(record.imprecise) == set(stats)
    assert record.worst() is None


# -- loops --------------------------------------------------------------------


def _sequences(n: int, long_every: int, seed: int = 1) -> list[dict]:
    """Batches of 3 steps, and every ``long_every``-th of 6."""
    rng = np.random.default_rng(seed)
    return [{"x": rng.normal(size=(6 if i % long_every == long_every - 1 else 3,
                                   8, 2)) + 2.0}
            for i in range(n)]


@pytest.mark.parametrize("accumulate", ["host", "graph"])
def test_loop_steps_reached_by_few_batches_are_left_out(accumulate):
    inputs, y = pair_loop()
    batches = _sequences(400, long_every=40)
    stats = popstats.estimate(inputs, y, batches, target_error=TARGET,
                              accumulate=accumulate, mode=MODE)
    record = stats.stopping
    # the steps 3..5 (few batches) neither hold the pass nor count as precise
    assert record.reason == "target" and record.n_batches < 400
    coverage = stats["bn.var"].coverage
    assert coverage[:3].min() == record.n_batches
    assert 0 < coverage[3:].max() < 10
    assert record.left_out == {"bn.mean": 3, "bn.var": 3}
    assert set(record.imprecise) == {"bn.mean", "bn.var"}


def test_loop_norm_is_over_counted_steps():
    inputs, y = pair_loop()
    batches = _sequences(60, long_every=4)  # steps 3..5 reached by a quarter
    seen: list[list] = []
    run = popstats.Estimation(inputs, y, mode=MODE)
    run.run(batches, on_batch=lambda i, per: seen.append([v for v, _, _ in per]))
    names = [s.name for s in run.sites]
    stats = popstats.estimate(inputs, y, batches, target_error=1e-4,
                              min_batches=12, mode=MODE)
    record = stats.stopping
    assert record.reason == "batches ended"
    # NumPy, per step over the batches that reached it; cells of >= 12 batches
    per_name = {name: [b[i] for b in seen] for i, name in enumerate(names)}
    values, errors = {}, {}
    for name, xs in per_name.items():
        cells = []
        for t in range(6):
            at = np.stack([x[t] for x in xs if x.shape[0] > t])
            k = len(at)
            se = (np.sqrt(((at - at.mean(0)) ** 2).sum(0) / (k * (k - 1)))
                  if k > 1 else np.full(at.shape[1:], np.inf))
            cells.append((k, at.mean(0), se))
        values[name], errors[name] = cells, cells
    for name in names:
        role = name.split(".")[1]
        worst = 0.0
        for t, (k, value, se) in enumerate(values[name]):
            if k < 12:
                continue
            scale = (np.sqrt(values["bn.var"][t][1]) if role == "mean"
                     else np.abs(value))
            worst = max(worst, float(np.max(se / scale)))
        assert record.norm[name] == pytest.approx(worst, rel=1e-9)
        assert record.left_out[name] == sum(1 for k, _, _ in values[name] if k < 12)


# -- checkpoints and states ---------------------------------------------------


@pytest.mark.parametrize("accumulate", ["host", "graph"])
def test_resumed_run_stops_where_uninterrupted_one_does(tmp_path, accumulate):
    inputs, y = _model()
    batches = _batches(300)
    whole = popstats.Estimation(inputs, y, target_error=TARGET,
                                accumulate=accumulate, mode=MODE)
    full = whole.run(batches)
    stop = full.stopping.n_batches
    assert full.stopping.reached and stop > 15
    path = tmp_path / "run.npz"
    run = popstats.Estimation(inputs, y, target_error=TARGET,
                              accumulate=accumulate, mode=MODE)
    with pytest.raises(Interrupted):
        run.run(interrupted_after(batches, stop - 3), checkpoint=path,
                checkpoint_every=5)
    saved = popstats.load_state(path)
    assert saved.stopping is not None and saved.n_batches < stop
    taken = []

    def counted():
        for batch in batches:
            taken.append(1)
            yield batch

    resumed = run.run(counted(), checkpoint=path, checkpoint_every=5)
    assert resumed.n_batches == stop and len(taken) == stop  # no batch more
    assert resumed.stopping == full.stopping
    # a finished checkpoint: called again, nothing is computed, same record
    again = run.run(batches, checkpoint=path)
    assert again.n_batches == stop and again.stopping == full.stopping


def test_state_file_keeps_record_and_continuing_goes_on(tmp_path):
    inputs, y = _model()
    run = popstats.Estimation(inputs, y, target_error=0.05, mode=MODE)
    part = run.run(_batches(30))
    assert part.stopping.reason == "batches ended"
    part.save(tmp_path / "s.npz")
    loaded = popstats.load_state(tmp_path / "s.npz")
    assert loaded.stopping == part.stopping
    more = run.run(_batches(400, seed=5), state=loaded)
    whole = run.run(_batches(30) + _batches(400, seed=5))
    assert more.stopping.reached and more.n_batches == whole.n_batches
    assert [c.n_batches for c in more.stopping.trace] == [
        c.n_batches for c in whole.stopping.trace]


def test_statistics_file_keeps_record(tmp_path):
    inputs, y = _model()
    stats = popstats.estimate(inputs, y, _batches(200), target_error=TARGET,
                              mode=MODE)
    stats.save(tmp_path / "stats.npz")
    loaded = popstats.load(tmp_path / "stats.npz")
    assert loaded.stopping == stats.stopping
    assert "Stopping: target 0.1 reached" in repr(loaded)
    plain = popstats.estimate(inputs, y, _batches(20), mode=MODE)
    plain.save(tmp_path / "plain.npz")  # an older file's layout: no record
    assert popstats.load(tmp_path / "plain.npz").stopping is None


def test_record_json_round_trip():
    check = StopCheck(10, {"v": math.nan}, {"v": 1.0}, {"v": 0.1})
    record = Stopping("batches ended", 12, 0.01, 10, {"v": 0.5}, {"v": 2}, (check,))
    back = Stopping.from_json(record.to_json())
    assert back.trace[0].norm["v"] != back.trace[0].norm["v"]  # NaN kept
    assert (back.reason, back.n_batches, back.left_out) == ("batches ended", 12,
                                                            {"v": 2})
    with pytest.raises(ValueError, match="reason"):
        Stopping.from_json({**record.to_json(), "reason": "tired"})


# -- the public calls ---------------------------------------------------------


def test_get_inference_graph_and_update_running_stats_take_it():
    inputs, y = _model()
    batches = _batches(300)
    _, stats = popstats.get_inference_graph(inputs, y, batches, target_error=TARGET,
                                            return_stats=True, mode=MODE)
    assert stats.stopping.reached and stats.stopping.n_batches < 300
    from popstats import nn

    x = pt.tensor("x", shape=(None, 3))
    bn = nn.batch_norm(x, axes=0, label="fc")
    out, _, running = nn.running_average_updates(bn.output)
    written = popstats.update_running_stats([x], out, batches, running=running,
                                            target_error=TARGET, min_batches=20)
    record = written.statistics.stopping
    assert record.reached and record.min_batches == 20
    assert record.trace[0].n_batches == 20


def test_upstream_population_rounds_use_the_same_batches():
    inputs, y = _model()
    batches = _batches(300)
    pulls: list[int] = []

    class Loader:
        def __len__(self):
            return len(batches)

        def __iter__(self):
            pulls.append(0)
            for batch in batches:
                pulls[-1] += 1
                yield batch

    stats = popstats.estimate(inputs, y, Loader(), target_error=TARGET,
                              upstream="population", mode=MODE)
    n = stats.stopping.n_batches
    assert stats.stopping.reached and n < 300
    assert stats.fixed_point.passes == len(pulls) >= 2
    assert pulls == [n] * len(pulls)  # every pass took the first n, no more
    assert {s.n_batches for s in stats.values()} == {n}
    first = popstats.estimate(inputs, y, batches[:n], upstream="population",
                              mode=MODE)
    for name, stat in stats.items():
        np.testing.assert_allclose(stat.value, first[name].value, rtol=1e-9)


def _load(i: int, marks: str) -> list[dict]:
    """Partition ``i`` (loaded on a worker: a file in ``marks`` says so)."""
    with open(os.path.join(marks, str(i)), "w"):
        pass
    return _batches(10, seed=100 + i)


def test_dask_stops_submitting_once_reached(tmp_path):
    pytest.importorskip("distributed")
    from distributed import Client

    import popstats.dask

    inputs, y = _model()
    parts = [functools.partial(_load, i, str(tmp_path)) for i in range(60)]
    with Client(processes=False, n_workers=1, threads_per_worker=1,
                dashboard_address=":0") as client:
        stats = popstats.dask.estimate(inputs, y, parts, client=client,
                                       target_error=TARGET, mode=MODE)
    record = stats.stopping
    assert record.reached and record.n_batches % 10 == 0
    used = record.n_batches // 10
    # not every partition was computed: those merged, and at most the few
    # running when the target was reached
    assert used <= len(os.listdir(tmp_path)) < 60
    assert max(record.trace[-2].norm.values()) >= TARGET  # the check before
    serial = popstats.estimate(inputs, y, [b for i in range(used)
                                           for b in _batches(10, seed=100 + i)],
                               mode=MODE)
    for name, stat in stats.items():
        np.testing.assert_allclose(stat.value, serial[name].value, rtol=1e-10)


# -- errors -------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, 1, 1.5, -0.1, float("nan"), "0.01", True])
def test_bad_target_error(bad):
    inputs, y = _model()
    with fails("estimate(target_error=...)", "in (0, 1) or None"):
        popstats.estimate(inputs, y, _batches(2), target_error=bad)


@pytest.mark.parametrize("bad", [1, 0, 2.5, "10", None])
def test_bad_min_batches(bad):
    inputs, y = _model()
    with fails("get_inference_graph(min_batches=...)", "an int >= 2"):
        popstats.get_inference_graph(inputs, y, _batches(2), target_error=0.1,
                                     min_batches=bad)


def test_min_batches_without_target():
    inputs, y = _model()
    with fails("Estimation(min_batches=...)", "applies with target_error only"):
        popstats.Estimation(inputs, y, min_batches=20)


def test_dask_groups_stop_each_on_its_own_and_upstream_population(tmp_path):
    pytest.importorskip("distributed")
    from distributed import Client

    import popstats.dask

    inputs, y = _model()
    many = [functools.partial(_load, i, str(tmp_path)) for i in range(40)]
    few = [functools.partial(_load, i, str(tmp_path)) for i in (50, 51)]
    with Client(processes=False, n_workers=1, threads_per_worker=2,
                dashboard_address=":0") as client:
        sets = popstats.dask.estimate_groups(
            inputs, y, {"many": many, "few": few}, client=client,
            target_error=TARGET, mode=MODE)
        population = popstats.dask.estimate(
            inputs, y, many, client=client, target_error=TARGET,
            upstream="population", mode=MODE)
    assert sets["many"].stopping.reached and sets["many"].stopping.n_batches < 400
    assert sets["few"].stopping.reason == "batches ended"
    assert sets["few"].stopping.n_batches == 20
    # upstream="population": round 0 decides the partitions, every round
    # takes those
    n = population.stopping.n_batches
    assert population.stopping.reached and n == sets["many"].stopping.n_batches
    assert {s.n_batches for s in population.values()} == {n}
    assert population.fixed_point.passes >= 2


def test_upstream_population_checkpoint_resumes_toward_the_target(tmp_path):
    inputs, y = _model()
    batches = _batches(300)
    whole = popstats.estimate(inputs, y, batches, target_error=TARGET,
                              upstream="population", mode=MODE)
    n = whole.stopping.n_batches

    class Loader:
        """The batches; with ``fail``, interrupted half-way through pass 1."""

        def __init__(self, fail: bool) -> None:
            self.fail, self.passes = fail, 0

        def __len__(self):
            return len(batches)

        def __iter__(self):
            self.passes += 1
            for i, batch in enumerate(batches):
                if self.fail and self.passes == 2 and i == n // 2:
                    raise Interrupted("in pass 1")
                yield batch

    path = tmp_path / "run.npz"
    options = dict(target_error=TARGET, upstream="population", checkpoint=path,
                   checkpoint_every=5, mode=MODE)
    with pytest.raises(Interrupted):
        popstats.estimate(inputs, y, Loader(fail=True), **options)
    first = popstats.load_state(tmp_path / "run.pass0.npz")  # pass 0 finished
    assert first.stopping == whole.stopping
    resumed = popstats.estimate(inputs, y, Loader(fail=False), **options)
    assert resumed.stopping == whole.stopping
    for name, stat in resumed.items():
        np.testing.assert_allclose(stat.value, whole[name].value, rtol=1e-12)


def test_device_engine_stops_where_the_host_does():
    pytest.importorskip("jax")
    import pytensor.link.jax.dispatch  # noqa: F401 - sets x64 from floatX

    inputs, y = _model()
    batches = _batches(300)
    device = popstats.estimate(inputs, y, batches, target_error=TARGET, mode="JAX",
                               accumulate="graph")
    host = popstats.estimate(inputs, y, batches, target_error=TARGET, mode=MODE)
    assert device.stopping.reached
    assert device.stopping.n_batches == host.stopping.n_batches
    assert [c.n_batches for c in device.stopping.trace] == [
        c.n_batches for c in host.stopping.trace]
    for name, norm in host.stopping.norm.items():
        assert device.stopping.norm[name] == pytest.approx(norm, rel=1e-9)


@pytest.mark.parametrize("estimator", ["weighted", "pooled", "unbiased",
                                       popstats.Estimator("ema", momentum=0.05)],
                         ids=str)
def test_every_estimator_norm_is_its_statistics_relative_error(estimator):
    inputs, y = _model()
    stats = popstats.estimate(inputs, y, _batches(400), target_error=TARGET,
                              estimator=estimator, mode=MODE)
    record = stats.stopping
    assert record.n_batches == stats["a.var"].n_batches
    for name, stat in stats.items():  # the finalized statistics' own errors
        assert record.norm[name] == pytest.approx(
            float(np.max(stat.relative_error)), rel=1e-9)
        assert record.trace[-1].standard_error[name] == pytest.approx(
            float(np.mean(stat.standard_error)), rel=1e-9)
