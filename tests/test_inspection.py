"""Inspection: describe, describe_rewrite, drawings, progress, bad input.

Plots, reports and the command line are in ``test_inspection_report.py``.
Expected values come from the graphs as built here (labels, loops) and
from NumPy, never from popstats' own output.
"""

from __future__ import annotations

import logging
import shutil
import sys

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest

import popstats
from popstats._src.inspection import drawing
from popstats._src.inspection.describe import leftover_statistics

MODE = "FAST_COMPILE"


def feedforward():
    x = pt.matrix("x")
    n = x.shape[0]
    m = popstats.bn_statistic(x.mean(0), "bn1_mean", role="mean", group="bn1", count=n)
    v = popstats.bn_statistic(x.var(0), "bn1_var", role="var", group="bn1", count=n)
    return [x], (x - m) / pt.sqrt(v + 1e-5)


def looped():
    """A loop with a statistic, a nested loop with one, and a plain loop."""
    x = pt.tensor3("x")  # (time, batch, features)

    def step(xt):
        m = popstats.bn_statistic(xt.mean(0), "step_mean", role="mean")
        return xt - m

    y = pytensor.scan(step, sequences=[x], name="rnn", return_updates=False)

    def outer(xt):  # xt: (batch, features); inner loop over features
        def inner(col):
            return col - popstats.bn_statistic(col.mean(), "inner_mean")

        return pytensor.scan(inner, sequences=[xt.T], name="cols",
                             return_updates=False).T

    z = pytensor.scan(outer, sequences=[x], name="outer", return_updates=False)
    plain = pytensor.scan(lambda xt: xt * 2, sequences=[x], name="plain",
                          return_updates=False)
    return [x], y.sum() + z.sum() + plain.sum()


@pytest.fixture(scope="module")
def looped_pipeline():
    inputs, out = looped()
    rng = np.random.default_rng(0)
    batches = [{"x": rng.normal(size=(t, 3, 2))} for t in (2, 4, 3)]
    stats = popstats.estimate(inputs, out, batches, mode=MODE, progress=False)
    return inputs, out, batches, stats, popstats.rewrite(out, stats)


# --- describe ----------------------------------------------------------------


def test_describe_feedforward_records_and_table():
    _, out = feedforward()
    table = popstats.describe(out)
    assert sorted(r.name for r in table) == ["bn1_mean", "bn1_var"]
    mean = table["bn1_mean"]
    assert (mean.role, mean.group, mean.where, mean.depth) == (
        "mean", "bn1", "<graph>", 0)
    assert mean.counted and mean.dtype == "float64" and mean.time == ()
    with pytest.raises(AttributeError):
        mean.name = "other"  # frozen records
    text = str(table)
    assert text.splitlines()[0].split() == [
        "name", "label", "role", "where", "depth", "time", "shape", "dtype", "counted"]
    rows = {line.split()[0]: line.split() for line in text.splitlines()[2:]}
    assert rows["bn1_var"][1:5] == ["bn1_var", "var", "<graph>", "0"]
    html = table._repr_html_()
    assert html.startswith("<table>") and html.count("<tr>") == 3
    assert "<td>&lt;graph&gt;</td>" in html
    dicts = table.to_dicts()
    assert {d["name"]: d["role"] for d in dicts} == {"bn1_mean": "mean",
                                                      "bn1_var": "var"}
    assert all(d["counted"] is True for d in dicts)
    assert "Description of 2 statistic(s)" in repr(table)


def test_describe_loops(looped_pipeline):
    _, out, *_ = looped_pipeline
    table = popstats.describe(out)
    by_name = {r.name: r for r in table}
    assert set(by_name) == {"step_mean", "inner_mean"}
    assert (by_name["step_mean"].where, by_name["step_mean"].depth) == ("rnn", 1)
    inner = by_name["inner_mean"]
    assert (inner.where, inner.depth, inner.time, inner.time_axes) == (
        "outer/cols", 2, ("step", "step"), 2)
    pooled = popstats.describe(out, time="pooled")
    assert pooled["inner_mean"].time_axes == 0


def test_describe_unknown_name_suggests():
    _, out = feedforward()
    with pytest.raises(popstats.PopstatsError, match="Did you mean 'bn1_mean'"):
        popstats.describe(out)["bn1_maen"]


def test_describe_bad_input():
    with pytest.raises(popstats.PopstatsError, match="describe"):
        popstats.describe("not a graph")
    with pytest.raises(popstats.PopstatsError, match="no batch statistic"):
        popstats.describe(pt.matrix("x") * 2)


# --- describe_rewrite -----------------------------------------------------------


def test_describe_rewrite(looped_pipeline):
    _, out, _, _, inference = looped_pipeline
    change = popstats.describe_rewrite(out, inference)
    assert change.replaced == {"step_mean": "step_mean", "inner_mean": "inner_mean"}
    assert set(change.rebuilt) == {"rnn", "outer", "outer/cols"}
    assert change.kept == ("plain",)
    assert change.leftover == () and change.ok
    text = str(change)
    assert "Scans rebuilt" in text and "No batch statistic left." in text
    assert "<pre>" in change._repr_html_()


def test_describe_rewrite_notices_leftovers(looped_pipeline):
    _, out, *_ = looped_pipeline
    change = popstats.describe_rewrite(out, out)  # nothing rewritten
    assert not change.ok
    assert change.replaced == {"step_mean": None, "inner_mean": None}
    assert sorted(change.leftover) == ["outer/cols: inner_mean", "rnn: step_mean"]
    assert "NOT REPLACED" in str(change)


def test_leftover_finds_tags_in_outer_graph():
    x = pt.matrix("x")
    m = x.mean(0)
    m.tag.bn_statistic = True
    m.tag.bn_label = "tagged"
    assert leftover_statistics([x - m]) == ["<graph>: tagged"]


def test_dprint_of_rewritten_graph_is_readable(looped_pipeline):
    _, out, _, _, inference = looped_pipeline
    text = pytensor.dprint(inference, file="str")
    assert "step_mean" in text and "inner_mean" in text
    assert "BNStat" not in text
    assert "BNStat{step_mean}" in pytensor.dprint(out, file="str")


def test_rewritten_graph_computes_population_values(looped_pipeline):
    _, _, batches, _, inference = looped_pipeline
    # Independent check of what describe_rewrite claims: the population
    # variables hold per-step averages over the batches reaching each step.
    pops = popstats.population_variables(inference)
    means = {}
    for b in batches:
        for t, xt in enumerate(b["x"]):
            means.setdefault(t, []).append(xt.mean(0))
    expected = np.array([np.mean(means[t], axis=0) for t in sorted(means)])
    np.testing.assert_allclose(pops["step_mean"].get_value(), expected, rtol=1e-12)


# --- drawings ------------------------------------------------------------------


def test_draw_highlights_statistics_and_clusters(looped_pipeline):
    pytest.importorskip("graphviz")
    _, out, _, _, inference = looped_pipeline
    assert popstats.draw is drawing.draw
    before = drawing.draw(out).source
    assert "BNStat{step_mean}" in before and "BNStat{inner_mean}" in before
    assert before.count("fillcolor=orange") == 2
    for name in ("rnn", "outer", "cols", "plain"):
        assert f"scan {name}" in before
    assert before.count("subgraph cluster_") == 4
    after = drawing.draw(inference).source
    assert "BNStat" not in after and "fillcolor=orange" not in after
    assert after.count("fillcolor=palegreen") == 2
    assert "(population)" in after


def test_draw_summary_past_node_limit(looped_pipeline):
    pytest.importorskip("graphviz")
    _, out, _, _, inference = looped_pipeline
    summary = drawing.draw(out, max_nodes=5).source
    assert "subgraph" not in summary and "BNStat" not in summary
    assert "outer/cols" in summary and "1 statistics" in summary
    assert "summary (over 5 nodes)" in summary
    both = drawing.draw_rewrite(out, inference, max_nodes=5).source
    assert "cluster_before" in both and "cluster_after" in both
    assert "2 population variables" in both


def test_draw_bad_limit():
    pytest.importorskip("graphviz")
    _, out = feedforward()
    with pytest.raises(popstats.PopstatsError, match="max_nodes"):
        drawing.draw(out, max_nodes=-1)


def test_render(tmp_path):
    pytest.importorskip("graphviz")
    _, out = feedforward()
    dot = drawing.draw(out)
    if shutil.which("dot") is None:
        with pytest.raises(popstats.PopstatsError, match="`dot` program"):
            drawing.render(dot, tmp_path / "g.svg")
    else:
        path = drawing.render(dot, tmp_path / "g.svg")
        with open(path) as handle:
            assert "<svg" in handle.read()


@pytest.mark.parametrize(("module", "extra"), [("graphviz", "draw"),
                                               ("matplotlib", "plot")])
def test_missing_optional_dependency(monkeypatch, module, extra):
    monkeypatch.setitem(sys.modules, module, None)
    monkeypatch.setitem(sys.modules, f"{module}.figure", None)
    from popstats._src.inspection.plots import plot_statistic

    inputs, out = feedforward()
    stats = popstats.estimate(inputs, out, BATCHES, mode=MODE)
    with pytest.raises(popstats.PopstatsError, match=rf"popstats\[{extra}\]"):
        if module == "graphviz":
            drawing.draw(out)
        else:
            plot_statistic(next(iter(stats.values())))


# --- progress ------------------------------------------------------------------


@pytest.fixture(scope="module")
def run():
    inputs, out = feedforward()
    return popstats.Estimation(inputs, out, mode=MODE)


BATCHES = [{"x": np.arange(6.0).reshape(3, 2) + k} for k in range(3)]


def test_progress_bar_shown(run, capsys):
    pytest.importorskip("tqdm")
    state = run.run(BATCHES, progress=True)
    err = capsys.readouterr().err
    assert state.n_batches == 3
    assert "3/3" in err and "batch" in err


def test_progress_bar_without_len(run, capsys):
    pytest.importorskip("tqdm")
    run.run(iter(BATCHES), progress=True)
    err = capsys.readouterr().err
    assert "3batch" in err.replace(" ", "") and "3/3" not in err


@pytest.mark.parametrize("progress", [False, "auto"])
def test_progress_quiet(run, capsys, progress):
    # Under pytest stderr is not a terminal: "auto" shows nothing.
    run.run(BATCHES, progress=progress)
    assert capsys.readouterr().err == ""


def test_progress_bad_value(run):
    with pytest.raises(popstats.PopstatsError, match="progress"):
        run.run(BATCHES, progress="yes")


def test_progress_without_tqdm(run, monkeypatch, caplog, capsys):
    from popstats._src.estimation import progress

    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setattr(progress, "_missing_logged", False)
    with caplog.at_level(logging.DEBUG, logger="popstats"):
        run.run(BATCHES, progress=True)
        run.run(BATCHES, progress=True)
    messages = [r.getMessage() for r in caplog.records if "tqdm" in r.getMessage()]
    assert len(messages) == 1 and "pip install tqdm" in messages[0]
    assert "'popstats[progress]'" in messages[0]
    assert capsys.readouterr().err == ""


def test_estimate_accepts_progress():
    inputs, out = feedforward()
    stats = popstats.estimate(inputs, out, BATCHES, mode=MODE, progress=False)
    data = np.concatenate([b["x"] for b in BATCHES])
    np.testing.assert_allclose(stats["bn1_mean"].value, data.mean(0))


# --- issue 28 ------------------------------------------------------------------


def test_describe_rewrite_with_an_unmarked_variance_is_not_all_fine():
    x = pt.matrix("x")
    m = popstats.bn_statistic(x.mean(0), label="mean")
    y = (x - m) / pt.sqrt(x.var(0) + 1e-5)  # the variance left unmarked
    stats = popstats.estimate([x], y, [{"x": np.random.default_rng(0).normal(
        size=(4, 2))}], mode=MODE, progress=False)
    with pytest.warns(popstats.PopstatsWarning):
        y_inf = popstats.rewrite(y, stats)
    change = popstats.describe_rewrite(y, y_inf)
    text = str(change)
    assert not change.ok and change.mixing
    assert "No batch statistic left." not in text
    assert "still mixes the examples" in text and "not ready for inference" in text
    assert "Operations still mixing examples:" in text


def test_report_without_matplotlib_mentions_plots_false(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    inputs, out = feedforward()
    stats = popstats.estimate(inputs, out, BATCHES, mode=MODE, progress=False)
    with pytest.raises(popstats.PopstatsError,
                       match=r"report\(plots=True\).*popstats\[plot\].*plots=False"):
        stats.report(tmp_path / "r.html")
    with open(stats.report(tmp_path / "r.html", plots=False)) as handle:
        assert "<html" in handle.read().lower()
