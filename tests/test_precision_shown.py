"""Precision shown where a user looks: ``describe``, the report, ``popstats summary``.

The numbers expected here are computed from each Statistic's own arrays
(``standard_error``, ``value``, ``coverage``) with NumPy: the largest of
``SE / scale`` over units and the steps reached by at least ``min_batches``
batches (the scale of a variance its value, of a paired mean the square
root of its variance), not through ``Statistic.relative_error`` or the
inspection code. A statistic without standard errors (a file of an older
popstats) still describes, reports and summarizes.
"""

from __future__ import annotations

import dataclasses
import html
import re

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest

import popstats
from popstats._src.estimation import statistics as statistics_module
from popstats._src.inspection import cli
from popstats._src.inspection.precision import precision_of
from popstats._src.inspection.report import all_warnings, render_report

MODE = "FAST_COMPILE"
FEATURES = 3


def loop_graph():
    x = pt.tensor3("x")  # (time, batch, features)

    def step(xt):
        mu = popstats.bn_statistic(xt.mean(0), "h.mean", role="mean", group="h")
        var = popstats.bn_statistic(xt.var(0), "h.var", role="var", group="h")
        return (xt - mu) / pt.sqrt(var + 1e-5)

    y = pytensor.scan(step, sequences=[x], name="rnn", return_updates=False)
    return x, y


# 30 batches of 8 examples: 25 of 3 steps, 5 of 4, so step 3 is reached by
# 5 batches: left out with min_batches 10, counted with min_batches 5.
LENGTHS = [3] * 25 + [4] * 5


def loop_batches(seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.normal(1.0, 2.0, (t, 8, FEATURES))} for t in LENGTHS]


@pytest.fixture(scope="module")
def graph():
    return loop_graph()


@pytest.fixture(scope="module")
def stats(graph):
    x, y = graph
    return popstats.estimate([x], y, loop_batches(), mode=MODE, progress=False)


def expected_relative(stats, name: str, least: int) -> float:
    """The largest SE / scale over units and the steps reached by ``least``
    batches, from the arrays alone."""
    stat = stats[name]
    scale = (np.sqrt(stats["h.var"].value) if stat.site.role == "mean"
             else np.abs(stat.value))
    rel = stat.standard_error / scale
    counted = stat.coverage >= least
    return float(rel[counted].max())


def test_describe_statistics_shows_the_largest_relative_error(stats):
    assert list(stats["h.var"].coverage) == [30, 30, 30, 5]
    table = popstats.describe(stats)
    for name in ("h.var", "h.mean"):
        precision = table[name].precision
        want = expected_relative(stats, name, 10)
        assert precision.relative_error == pytest.approx(want, rel=1e-12)
        assert precision.n_batches == 30 and precision.estimator == "mean"
        assert precision.left_out == 1 and precision.min_batches == 10
        # the standard error at the largest relative one, and where it is
        assert precision.at[0] < 3  # step 3 (5 batches) left out
        assert precision.standard_error == stats[name].standard_error[precision.at]
        assert table[name].to_dict()["relative_error"] == precision.relative_error
    # step 3's own error is larger: leaving it out changes the number
    assert expected_relative(stats, "h.var", 5) > expected_relative(stats, "h.var", 10)
    text = str(table)
    assert "estimator  batches  rel. SE" in text.splitlines()[0]
    row = next(line for line in text.splitlines() if line.startswith("h.var"))
    assert row.split()[-1] == f"{expected_relative(stats, 'h.var', 10):.3g}"
    assert "rel. SE" in table._repr_html_()


def test_describe_graph_with_stats_matches_describe_stats(graph, stats):
    _, y = graph
    plain = popstats.describe(y)
    assert all(r.precision is None for r in plain)
    assert "rel. SE" not in str(plain)
    with_stats = popstats.describe(y, stats=stats)
    alone = popstats.describe(stats)
    assert [r.precision for r in with_stats] == [alone[r.name].precision
                                                 for r in with_stats]
    with pytest.raises(popstats.PopstatsError, match=r"describe\(stats=\.\.\.\)"):
        popstats.describe(y, stats={"h.var": 1})
    with pytest.raises(popstats.PopstatsError, match=r"describe\(outputs=\.\.\.\)"):
        popstats.describe(stats, time="pooled")


def test_describe_follows_the_stopping_rule(graph):
    """With target_error, the column is the pass's own norm (its min_batches)."""
    x, y = graph
    stats = popstats.estimate([x], y, loop_batches(1), mode=MODE, progress=False,
                              target_error=1e-6, min_batches=5)
    record = stats.stopping
    assert record.reason == "batches ended"
    table = popstats.describe(stats)
    for name in ("h.var", "h.mean"):
        want = expected_relative(stats, name, 5)  # step 3 counted now
        assert table[name].precision.relative_error == pytest.approx(want, rel=1e-12)
        assert record.norm[name] == pytest.approx(want, rel=1e-9)
        assert table[name].precision.left_out == 0


def test_debiased_ema_is_named_everywhere(graph, tmp_path, capsys, monkeypatch):
    x, y = graph
    stats = popstats.estimate([x], y, loop_batches(), mode=MODE, progress=False,
                              estimator=popstats.Estimator("ema", debias=True))
    assert popstats.describe(stats)["h.var"].precision.estimator == (
        "ema(0.1, debiased)")
    assert "ema(0.1, debiased)" in str(popstats.describe(stats))
    assert "30 batches, ema debiased" in repr(stats)
    assert "<td>ema(0.1, debiased)</td>" in render_report(stats, plots=False)
    monkeypatch.setattr(statistics_module, "load", lambda path: stats)
    assert cli.main(["summary", "stats.npz"]) == 0
    out = capsys.readouterr().out
    assert out.count("ema(0.1, debiased)") == 2


def summary_of(stats, capsys, monkeypatch) -> str:
    monkeypatch.setattr(statistics_module, "load", lambda path: stats)
    assert cli.main(["summary", "stats.npz"]) == 0
    return capsys.readouterr().out


def test_summary_prints_relative_errors_and_stopping(graph, capsys, monkeypatch):
    x, y = graph
    stats = popstats.estimate([x], y, loop_batches(2), mode=MODE, progress=False,
                              target_error=1e-6)
    out = summary_of(stats, capsys, monkeypatch)
    header, _, *rows = out.splitlines()
    assert header.split()[-2:] == ["rel.", "SE"]
    for name in ("h.var", "h.mean"):
        row = next(r for r in rows if r.startswith(name + " "))
        assert row.split()[-1] == f"{expected_relative(stats, name, 10):.3g}"
    assert f"{stats.stopping}." in out
    assert "the batches ended before the target was reached" in out
    assert "'h.var': 1 step(s) reached by fewer than 10 batches" in out


def test_summary_and_report_show_the_warnings_of_the_statistics(tmp_path, capsys):
    """Batches of one example: the small-batches records, the same list in
    ``stats.warnings``, the summary of the saved file and the report."""
    x = pt.matrix("x")
    mean, var = popstats.mark_moments(x.mean(0), x.var(0), "h", count=x.shape[0])
    y = (x - mean) / pt.sqrt(var + 1e-5)
    rng = np.random.default_rng(3)
    batches = [{"x": rng.normal(size=(1, FEATURES))} for _ in range(12)]
    with pytest.warns(popstats.PopstatsWarning, match="h.var"):
        stats = popstats.estimate([x], y, batches, mode=MODE, progress=False)
    assert any(w.kind == "small-batches" for w in stats.warnings)
    path = str(tmp_path / "one.npz")
    stats.save(path)
    assert cli.main(["summary", path]) == 0
    out = capsys.readouterr().out
    printed = [line[len("warning: "):] for line in out.splitlines()
               if line.startswith("warning: ")]
    messages = [w.message for w in stats.warnings]
    assert printed[:len(messages)] == messages
    assert printed == all_warnings(popstats.load(path))
    page = render_report(stats, plots=False)
    items = re.findall(r'<li class="warning">(.*?)</li>', page)
    assert [html.unescape(i) for i in items][:len(messages)] == messages


def test_no_false_alarm_on_equal_iid_batches(capsys, monkeypatch):
    x = pt.matrix("x")
    mu = popstats.bn_statistic(x.mean(0), "bn.mean", role="mean", group="bn")
    var = popstats.bn_statistic(x.var(0), "bn.var", role="var", group="bn")
    y = (x - mu) / pt.sqrt(var + 1e-5)
    rng = np.random.default_rng(4)
    batches = [{"x": rng.normal(0.0, 1.0, (32, 6))} for _ in range(40)]
    stats = popstats.estimate([x], y, batches, mode=MODE, progress=False)
    assert stats.warnings == () and all_warnings(stats) == []
    out = summary_of(stats, capsys, monkeypatch)
    assert "warning" not in out
    # the mean is near 0: its error is against its spread, not blown up
    rel = popstats.describe(stats)["bn.mean"].precision.relative_error
    assert rel == pytest.approx(float(np.max(stats["bn.mean"].standard_error
                                             / np.sqrt(stats["bn.var"].value))))
    assert rel < 0.1
    assert "No warnings." in render_report(stats, plots=False)


def test_coverage_is_warned_once(graph):
    """A coverage record of the pass is not repeated by the report's own
    check (step 3 reached by 2 of 27 batches: thin)."""
    x, y = graph
    rng = np.random.default_rng(6)
    batches = [{"x": rng.normal(size=(t, 8, FEATURES))} for t in [3] * 25 + [4] * 2]
    stats = popstats.estimate([x], y, batches, mode=MODE, progress=False)
    records = [w for w in stats.warnings if w.kind == "coverage"]
    assert {w.statistic for w in records} == {"h.var", "h.mean"}
    found = all_warnings(stats)
    for record in records:
        assert sum(repr(record.statistic) in w and "10%" in w for w in found) == 1
    assert found[:len(stats.warnings)] == [w.message for w in stats.warnings]


def older(stats):
    """The statistics as a file written before standard errors holds them."""
    return popstats.PopulationStatistics(tuple(
        dataclasses.replace(s, standard_error=None, spread=None)
        for s in stats.values()))


def test_statistics_without_standard_errors_still_show(stats, tmp_path, capsys):
    path = str(tmp_path / "old.npz")
    older(stats).save(path)
    loaded = popstats.load(path)
    assert all(s.standard_error is None for s in loaded.values())
    for source in (older(stats), loaded):
        table = popstats.describe(source)
        assert table["h.var"].precision.relative_error is None
        assert str(table).splitlines()[2].split()[-1] == "-"
        page = render_report(source, plots=False)
        assert "have no standard error" in page
        assert "Pass target_error=0.01" in page
    assert cli.main(["summary", path]) == 0
    out = capsys.readouterr().out
    assert "2 statistic(s) have no standard error" in out
    assert all(line.split()[-1] == "-" for line in out.splitlines()[2:4])


def test_one_batch_measures_no_error():
    x = pt.matrix("x")
    v = popstats.bn_statistic(x.var(0), "v", role="var")
    stats = popstats.estimate([x], x / v, [{"x": np.arange(6.0).reshape(3, 2)}],
                              mode=MODE, progress=False)
    precision = precision_of(stats["v"])
    assert precision.min_batches == 2 and not precision.measured
    assert str(popstats.describe(stats)).splitlines()[2].split()[-1] == "-"


def test_report_draws_convergence_from_the_trace(graph, stats):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    from popstats._src.inspection.plots import plot_convergence

    x, y = graph
    stopped = popstats.estimate([x], y, loop_batches(5), mode=MODE, progress=False,
                                target_error=1e-6)
    page = render_report(stopped)
    assert page.count('alt="convergence of') == 2
    assert "<h2>Stopping</h2>" in page and "norm at the end" in page
    plain = render_report(stats)
    assert 'alt="convergence of' not in plain and "Pass target_error=0.01" in plain
    record = stopped.stopping
    fig = plot_convergence(record, "h.var")
    top, bottom = fig.axes
    batches = [c.n_batches for c in record.trace]
    value = np.array([c.value["h.var"] for c in record.trace])
    se = np.array([c.standard_error["h.var"] for c in record.trace])
    line = top.lines[0]
    assert list(line.get_xdata()) == batches
    np.testing.assert_allclose(line.get_ydata(), value)
    (band,) = top.collections
    ys = band.get_paths()[0].vertices[:, 1]
    np.testing.assert_allclose([ys.min(), ys.max()],
                               [(value - 1.96 * se).min(), (value + 1.96 * se).max()])
    np.testing.assert_allclose(bottom.lines[0].get_ydata(),
                               [c.norm["h.var"] for c in record.trace])
    assert bottom.lines[1].get_ydata()[0] == record.target


def test_saved_file_keeps_standard_errors_and_summary_shows_them(stats, tmp_path,
                                                                 capsys):
    path = str(tmp_path / "s.npz")
    stats.save(path)
    loaded = popstats.load(path)
    for name in ("h.var", "h.mean"):
        np.testing.assert_array_equal(loaded[name].standard_error,
                                      stats[name].standard_error)
    # the mean's spread is paired again on load
    np.testing.assert_allclose(loaded["h.mean"].spread,
                               np.sqrt(stats["h.var"].value))
    assert cli.main(["summary", path]) == 0
    out = capsys.readouterr().out
    assert "no standard error" not in out
    for name in ("h.var", "h.mean"):
        row = next(r for r in out.splitlines() if r.startswith(name + " "))
        assert row.split()[-1] == f"{expected_relative(stats, name, 10):.3g}"


def _rewritten(src, dst, drop: str = "", **changes) -> str:
    with np.load(src, allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files if not (drop and
                                                                k.startswith(drop))}
    arrays.update(changes)
    with open(dst, "wb") as handle:
        np.savez(handle, **arrays)
    return str(dst)


def test_file_without_standard_error_arrays_loads_and_bad_ones_are_refused(
        stats, tmp_path, capsys):
    path = tmp_path / "s.npz"
    stats.save(path)
    old = _rewritten(path, tmp_path / "old.npz", drop="standard_error/")
    loaded = popstats.load(old)
    assert all(s.standard_error is None and s.relative_error is None
               for s in loaded.values())
    np.testing.assert_array_equal(loaded["h.var"].value, stats["h.var"].value)
    assert str(popstats.describe(loaded)).splitlines()[2].split()[-1] == "-"
    assert cli.main(["summary", old]) == 0
    assert "have no standard error" in capsys.readouterr().out
    negative = -np.ones_like(stats["h.var"].standard_error)
    bad = _rewritten(path, tmp_path / "bad.npz", **{"standard_error/0": negative})
    with pytest.raises(popstats.PopstatsError, match=r"corrupted.*standard error"):
        popstats.load(bad)
