"""Inspection edge cases: statistics with no units, files no batch covered,
labels holding control characters.

Expected values come from the batches and labels as given here (NumPy,
``repr``), never from popstats' own output.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import unicodedata

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest

import popstats
from popstats._src.inspection.plots import plot_statistic
from popstats._src.inspection.tables import text_table

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")

MODE = "FAST_COMPILE"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LENGTHS = [2, 3, 3]  # steps of the loop per batch
FEATURES = 4


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT, MPLBACKEND="Agg")
    return subprocess.run([sys.executable, "-m", "popstats", *args],
                          capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=300)


def _batches(seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.normal(size=(t, 3, FEATURES)), "g": rng.normal(size=(5, 6))}
            for t in LENGTHS]


def _reached(steps: int) -> list[int]:
    """Batches whose loop reached each step."""
    return [sum(t > s for t in LENGTHS) for s in range(steps)]


# -- 1. statistics with no units ------------------------------------------------


def zero_unit_graph():
    """Statistics of shape (0,): outside loops, per step, per nested step."""
    x = pt.tensor3("x")  # (time, batch, features)
    g = pt.matrix("g")
    flat = popstats.bn_statistic(g[:, :0].mean(0), "flat_none")

    def step(xt):
        none = popstats.bn_statistic(xt[:, :0].mean(0), "none")  # (0,) per step
        some = popstats.bn_statistic(xt.mean(0), "some")
        return xt - some + none.sum()

    y = pytensor.scan(step, sequences=[x], name="rnn", return_updates=False)

    def outer(xt):
        def inner(row):
            return row + popstats.bn_statistic(row[:0] * 2.0, "nested_none").sum()

        return pytensor.scan(inner, sequences=[xt], name="rows",
                             return_updates=False)

    z = pytensor.scan(outer, sequences=[x], name="outer", return_updates=False)
    return [x, g], y.sum() + z.sum() + flat.sum() + g.sum()


@pytest.fixture(scope="module")
def zero_units():
    inputs, out = zero_unit_graph()
    batches = _batches()
    return popstats.estimate(inputs, out, batches, mode=MODE, progress=False), batches


def _notes(ax) -> list[str]:
    return [t.get_text() for t in ax.texts]


def test_plot_per_step_statistic_with_no_units(zero_units):
    stats, _ = zero_units
    assert stats["none"].value.shape == (3, 0)
    fig = stats.plot("none")
    values, coverage = fig.axes[:2]
    assert values.get_title() == "none: 0 units over time (rnn)"
    assert values.get_lines() == []
    assert _notes(values) == ["no units to show: the statistic has shape (0,) "
                              "(no element)"]
    assert [p.get_height() for p in coverage.patches] == _reached(3) == [3, 3, 2]


def test_plot_other_statistics_with_no_units(zero_units):
    stats, _ = zero_units
    flat = stats.plot("flat_none")
    assert flat.axes[0].get_title() == "flat_none: 0 values (<graph>)"
    assert len(flat.axes[0].patches) == 0  # no histogram bars
    assert "no units to show" in _notes(flat.axes[0])[0]
    nested = stats.plot("nested_none")
    mean, coverage = nested.axes[:2]
    assert len(mean.images) == 0 and "no units to show" in _notes(mean)[0]
    expected = np.array([[r] * 3 for r in _reached(3)])  # 3 rows per outer step
    np.testing.assert_array_equal(coverage.images[0].get_array(), expected)


def test_plot_units_refused_up_front(zero_units):
    stats, batches = zero_units
    call = re.escape("PopulationStatistics.plot(units=...)")
    for bad in (0, -3, 2.5, True, "4", None):
        with pytest.raises(popstats.PopstatsError,
                           match=rf"^{call}: expected a positive int"):
            stats.plot("some", units=bad)
    with pytest.raises(popstats.PopstatsError, match=call):
        stats.plot("no such statistic", units=0)  # units before the name
    with pytest.raises(popstats.PopstatsError, match=r"^plot_statistic\(units="):
        plot_statistic(stats["some"], units=0)
    fig = stats.plot("some", units=np.int64(2))  # NumPy integers are ints
    lines = fig.axes[0].get_lines()
    assert [line.get_label() for line in lines] == ["unit 0", "unit 3"]
    steps = [[b["x"][t].mean(0) for b in batches if t < len(b["x"])]
             for t in range(3)]
    expected = np.array([np.mean(s, axis=0) for s in steps])
    np.testing.assert_allclose(lines[1].get_ydata(), expected[:, 3], rtol=1e-12)


def test_report_with_zero_unit_statistics(zero_units, tmp_path):
    stats, _ = zero_units
    path = stats.report(tmp_path / "r.html")
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    names = re.findall(r"<h3>(.*?)</h3>", text)
    assert names == list(stats)
    assert sorted(names) == ["flat_none", "nested_none", "none", "some"]
    assert len(re.findall(r'src="data:image/png;base64,', text)) == 4
    assert "<td>none</td><td>none</td><td>-</td><td>rnn</td><td>(0,)</td>" in text


# -- 2. statistics no batch covered ---------------------------------------------


def covered_graph():
    x = pt.tensor3("x")
    g = pt.matrix("g")
    flat = popstats.bn_statistic(g.mean(0), "flat")

    def step(xt):
        return xt - popstats.bn_statistic(xt.mean(0), "per_step")

    y = pytensor.scan(step, sequences=[x], name="rnn", return_updates=False)
    return [x, g], y.sum() + (g - flat).sum()


@pytest.fixture(scope="module")
def uncovered_file(tmp_path_factory):
    """A valid file whose coverage is all zero (estimate never makes one)."""
    inputs, out = covered_graph()
    stats = popstats.estimate(inputs, out, _batches(), mode=MODE, progress=False)
    zero = popstats.PopulationStatistics(tuple(
        dataclasses.replace(s, coverage=np.zeros_like(s.coverage))
        for s in stats.values()
    ))
    path = tmp_path_factory.mktemp("uncovered") / "zero.npz"
    zero.save(path)
    return path


def test_cli_report_on_all_zero_coverage(uncovered_file, tmp_path):
    out = tmp_path / "report.html"
    done = _cli("report", str(uncovered_file), "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert done.stderr == "" and done.stdout == f"wrote {out}\n"
    with open(out, encoding="utf-8") as handle:
        text = handle.read()
    # name, steps, batches, fewest, most, thin steps, never reached
    assert ("<tr><td>per_step</td><td>(3,)</td><td>3</td><td>-</td><td>-</td>"
            "<td>0</td><td>3</td></tr>") in text
    assert ("&#x27;per_step&#x27; (in rnn): all 3 step(s) never reached (no batch "
            "reached any)") in text
    assert "&#x27;flat&#x27; (in &lt;graph&gt;): no batch computed it" in text
    assert len(re.findall(r'src="data:image/png;base64,', text)) == 2


def test_cli_summary_on_all_zero_coverage(uncovered_file):
    done = _cli("summary", str(uncovered_file))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["name", "label", "role", "where", "shape", "steps",
                                "batches", "estimator", "min", "mean", "max",
                                "rel.", "SE"]
    warnings = [line for line in lines if line.startswith("warning: ")]
    assert warnings == [
        "warning: 'flat' (in <graph>): no batch computed it (coverage 0); its "
        "values were not estimated from any batch.",
        "warning: 'per_step' (in rnn): all 3 step(s) never reached (no batch "
        "reached any); its values were not estimated from any batch.",
    ]


def test_plot_all_zero_coverage(uncovered_file):
    stats = popstats.load(uncovered_file)
    fig = stats.plot("per_step")
    coverage = fig.axes[1]
    assert [p.get_height() for p in coverage.patches] == [0, 0, 0]
    assert coverage.get_title() == "coverage: no batch reached any of the 3 steps"
    assert coverage.get_ylim()[1] > 0  # the 10% line stays in view
    assert stats.plot("flat").axes[0].get_title().endswith("; no batch computed it")


def test_cli_unusable_file_is_one_line(uncovered_file, tmp_path):
    """A file ``load`` reads whose names cannot be used: no traceback."""
    with np.load(uncovered_file) as archive:
        arrays = dict(archive)
    meta = json.loads(str(arrays["meta"]))
    meta["statistics"][0]["name"] = ["not", "a", "name"]
    arrays["meta"] = np.array(json.dumps(meta))
    bad = tmp_path / "bad.npz"
    np.savez(bad, **arrays)
    for args in (("summary", str(bad)),
                 ("report", str(bad), "-o", str(tmp_path / "r.html"))):
        done = _cli(*args)
        assert done.returncode == 2
        assert done.stdout == ""
        assert "Traceback" not in done.stderr
        assert len(done.stderr.splitlines()) == 1
        assert done.stderr.startswith(f"popstats: error: load(path=...): {str(bad)!r}"
                                      f" is corrupted (TypeError")
    assert not (tmp_path / "r.html").exists()


def test_cli_unexpected_failure_is_one_line(uncovered_file, monkeypatch, capsys):
    """Any other failure (a bug) still ends in one line and exit status 2."""
    from popstats._src.inspection import cli

    def broken(path):
        raise RuntimeError("something\nunexpected")

    from popstats._src.estimation import statistics

    monkeypatch.setattr(statistics, "load", broken)
    status = cli.main(["summary", str(uncovered_file)])
    err = capsys.readouterr().err
    assert status == 2
    assert len(err.splitlines()) == 1
    assert err.startswith(f"popstats: error: summary of {str(uncovered_file)!r} "
                          f"failed while loading it (RuntimeError: something")
    assert "report this as a popstats bug" in err


# -- 3. labels with control characters ------------------------------------------

LABELS = ["line\nbreak", "tab\there", "esc\x1b[31m", "cr\rlf", "ok"]


def _columns(line: str) -> list[int]:
    """Start offsets of the dash runs of a table's rule line."""
    return [m.start() for m in re.finditer(r"-+", line)]


def _check_table(text: str, rows: int) -> list[str]:
    """One line per row (header, rule, rows); each cell starts at its column."""
    lines = text.split("\n")
    assert len(lines) == 2 + rows
    starts = _columns(lines[1])
    for line in lines:
        assert line.isprintable()
        for start in starts[1:]:
            assert line[start - 2:start] == "  " and line[start] != " ", line
    return lines


def control_graph():
    x = pt.matrix("x")
    out = x
    for label in LABELS:
        out = out - popstats.bn_statistic(x.mean(0), label, role="mean")
    return [x], out


def test_describe_escapes_control_characters():
    _, out = control_graph()
    table = popstats.describe(out)
    lines = _check_table(str(table), len(LABELS))
    label_at = _columns(lines[1])[1]
    for label in LABELS:
        shown = repr(label)[1:-1]  # as repr writes it
        (line,) = [row for row in lines[2:] if row.startswith(shown + " ")]
        assert line[label_at:].startswith(shown + " ")
    assert repr(table).split("\n", 1)[1] == str(table)
    assert table["line\nbreak"].label == "line\nbreak"  # records keep the text


def test_describe_rewrite_escapes_control_characters():
    inputs, out = control_graph()
    stats = popstats.estimate(inputs, out, [{"x": np.ones((2, 3))}], mode=MODE,
                              progress=False)
    text = str(popstats.describe_rewrite(out, popstats.rewrite(out, stats)))
    _check_table("\n".join(text.splitlines()[: 2 + len(LABELS)]), len(LABELS))
    assert "line\\nbreak" in text and "line\nbreak" not in text


def test_text_table_aligns_wide_characters():
    rows = [["平均", 1], ["e\u0301t\u00e9", 2], ["plain", 3]]
    lines = text_table(("label", "n"), rows).split("\n")

    def width(s: str) -> int:  # terminal columns
        return sum(0 if unicodedata.combining(c) else
                   2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in s)

    ends = {width(line[: line.rindex(" ") + 1]) for line in lines[2:]}
    assert ends == {len(lines[1].split()[0]) + 2}  # the n column starts together


def test_cli_summary_escapes_control_characters(tmp_path):
    inputs, out = control_graph()
    stats = popstats.estimate(inputs, out, [{"x": np.arange(6.0).reshape(2, 3)}],
                              mode=MODE, progress=False)
    stats.save(tmp_path / "s.npz")
    done = _cli("summary", str(tmp_path / "s.npz"))
    assert done.returncode == 0, done.stderr
    printed = done.stdout.rstrip("\n").split("\n")
    # one batch: one warning per statistic, each on one line, after the table
    warned = [line for line in printed if line.startswith("warning: ")]
    assert len(warned) == len(LABELS) and all("1 batch" in w for w in warned)
    lines = _check_table("\n".join(printed[: 2 + len(LABELS)]), len(LABELS))
    rows = sorted(line.split() for line in lines[2:])
    shown_labels = sorted(repr(label)[1:-1] for label in LABELS)
    for cells, shown in zip(rows, shown_labels, strict=True):
        assert cells == [shown, shown, "mean", "<graph>", "(3,)", "-", "1",
                                "mean", "1.5", "2.5", "3.5", "-"]


def test_report_escapes_html_and_control_characters(tmp_path):
    x = pt.matrix("x")
    label = '<b onclick="x">&\n'
    out = x - popstats.bn_statistic(x.mean(0), label)
    stats = popstats.estimate([x], out, [{"x": np.ones((2, 3))}], mode=MODE,
                              progress=False)
    path = stats.report(tmp_path / "r.html", title="<i>t</i>")
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    shown = "&lt;b onclick=&quot;x&quot;&gt;&amp;\\n"
    assert f"<td>{shown}</td><td>{shown}</td>" in text
    assert f"<h3>{shown}</h3>" in text and f'alt="plot of {shown}"' in text
    assert "<b " not in text and "<i>" not in text
    assert "<title>&lt;i&gt;t&lt;/i&gt;</title>" in text
    html_table = popstats.describe(out)._repr_html_()
    assert f"<td>{shown}</td>" in html_table and "<b " not in html_table
