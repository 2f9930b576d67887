"""Inspection: plots, the HTML report and the ``popstats`` command line.

Expected values are computed here with NumPy from the batches.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import re
import subprocess
import sys

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest

import popstats
from popstats._src.inspection.plots import plot_statistic
from popstats._src.inspection.report import find_warnings

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")

MODE = "FAST_COMPILE"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG = b"\x89PNG\r\n\x1a\n"


def build():
    x = pt.tensor3("x")  # (time, batch, features)
    g = pt.matrix("g")  # (batch, features)
    flat = popstats.bn_statistic(g.mean(0), "flat")

    def step(xt):
        return xt - popstats.bn_statistic(xt.mean(0), "per_step")

    y = pytensor.scan(step, sequences=[x], name="rnn", return_updates=False)

    def outer(xt):
        def inner(row):
            return row - popstats.bn_statistic(row.mean(), "nested")

        return pytensor.scan(inner, sequences=[xt], name="cols", return_updates=False)

    z = pytensor.scan(outer, sequences=[x], name="outer", return_updates=False)
    return [x, g], (g - flat).sum() + y.sum() + z.sum()


# 11 batches: ten of 2 steps, one of 5 -> steps 2..4 reached by 1 of 11 (thin).
LENGTHS = [2] * 10 + [5]


@pytest.fixture(scope="module")
def stats():
    inputs, out = build()
    rng = np.random.default_rng(1)
    batches = [{"x": rng.normal(size=(t, 3, 4)), "g": rng.normal(size=(5, 6))}
               for t in LENGTHS]
    result = popstats.estimate(inputs, out, batches, mode=MODE, progress=False)
    return result, batches


def test_histogram_of_flat_statistic(stats):
    result, batches = stats
    fig = result.plot("flat")
    expected = np.mean([b["g"].mean(0) for b in batches], axis=0)
    ax = fig.axes[0]
    heights = [p.get_height() for p in ax.patches]
    assert sum(heights) == 6  # one count per unit
    lo = min(p.get_x() for p in ax.patches)
    hi = max(p.get_x() + p.get_width() for p in ax.patches)
    assert np.isclose(lo, expected.min()) and np.isclose(hi, expected.max())


def test_per_step_lines_and_coverage(stats):
    result, batches = stats
    fig = result.plot("per_step", units=2)
    values, coverage = fig.axes[0], fig.axes[1]
    per_step = {}
    for b in batches:
        for t, xt in enumerate(b["x"]):
            per_step.setdefault(t, []).append(xt.mean(0))
    expected = np.array([np.mean(per_step[t], axis=0) for t in range(5)])
    lines = values.get_lines()
    assert [line.get_label() for line in lines] == ["unit 0", "unit 3"]
    np.testing.assert_allclose(lines[0].get_ydata(), expected[:, 0], rtol=1e-12)
    np.testing.assert_allclose(lines[1].get_ydata(), expected[:, 3], rtol=1e-12)
    heights = [p.get_height() for p in coverage.patches]
    assert heights == [len(per_step[t]) for t in range(5)] == [11, 11, 1, 1, 1]


def test_nested_heat_map(stats):
    result, batches = stats
    fig = result.plot("nested")
    image = fig.axes[0].images[0].get_array()
    sums = np.zeros((5, 3))
    counts = np.zeros((5, 3))
    for b in batches:
        for t in range(b["x"].shape[0]):
            for s in range(3):
                sums[t, s] += b["x"][t, s].mean()
                counts[t, s] += 1
    np.testing.assert_allclose(image, sums / counts, rtol=1e-12)
    cover = [a for a in fig.axes if a.images][1].images[0].get_array()
    np.testing.assert_array_equal(cover, counts)


def test_plot_unknown_label(stats):
    result, _ = stats
    with pytest.raises(popstats.PopstatsError, match="Did you mean 'per_step'"):
        result.plot("per_stp")
    with pytest.raises(popstats.PopstatsError, match="units"):
        result.plot("flat", units=0)
    with pytest.raises(popstats.PopstatsError, match="Statistic"):
        plot_statistic("flat")


def test_warnings(stats):
    result, _ = stats
    base = result["flat"]
    site = dataclasses.replace(base.site, role="var")
    odd = popstats.PopulationStatistics((
        result["per_step"],
        dataclasses.replace(base, name="nan", value=np.array([np.nan, 1.0])),
        dataclasses.replace(base, name="tiny", site=site,
                            value=np.array([1e-12, 1.0, 2.0])),
        dataclasses.replace(result["per_step"], name="gap",
                            coverage=np.array([11, 0, 3, 1, 1])),
    ))
    found = "\n".join(find_warnings(odd))
    assert "'per_step' (in rnn): 3 step(s) reached by under 10% of the 11" in found
    assert "'nan' (in <graph>): 1 non-finite value(s)" in found
    assert "'tiny' (in <graph>): 1 of 3 variance values are near zero" in found
    assert "'gap' (in rnn): 1 step(s) never reached" in found
    assert find_warnings(popstats.PopulationStatistics((base,))) == []
    single = dataclasses.replace(base, name="single", n_batches=1,
                                 coverage=np.array(1))
    (warning,) = find_warnings(popstats.PopulationStatistics((single,)))
    assert warning.startswith("'single' (in <graph>): estimated from 1 batch")


def _check_report(text: str, names) -> None:
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    for name in names:
        assert f"<td>{name}</td>" in text
    assert "<h2>Coverage</h2>" in text and "<h2>Warnings</h2>" in text
    assert "reached by under 10% of the" in text  # the pass's coverage record
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(images) == len(names)
    assert all(base64.b64decode(i).startswith(PNG) for i in images)
    assert "http://" not in text and "https://" not in text  # self-contained


def test_report(stats, tmp_path):
    result, _ = stats
    path = result.report(tmp_path / "r.html", title="my <run>")
    assert path == os.fspath(tmp_path / "r.html")
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    _check_report(text, list(result))
    assert "<title>my &lt;run&gt;</title>" in text


def test_report_bad_path(stats, tmp_path):
    result, _ = stats
    with pytest.raises(popstats.PopstatsError, match="cannot write"):
        result.report(tmp_path / "missing" / "r.html", plots=False)
    with pytest.raises(popstats.PopstatsError, match="file path"):
        result.report(3)


def _cli(*args, module="popstats._src.inspection.cli"):
    env = dict(os.environ, PYTHONPATH=ROOT, MPLBACKEND="Agg")
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=300)


def test_cli_report(stats, tmp_path):
    result, _ = stats
    result.save(tmp_path / "s.npz")
    out = tmp_path / "report.html"
    done = _cli("report", str(tmp_path / "s.npz"), "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert "wrote" in done.stdout
    with open(out, encoding="utf-8") as handle:
        _check_report(handle.read(), list(result))
    summary = _cli("summary", str(tmp_path / "s.npz"), module="popstats")
    assert summary.returncode == 0, summary.stderr
    assert "per_step" in summary.stdout and "warning:" in summary.stdout


def test_cli_help_and_errors(tmp_path):
    done = _cli("--help", module="popstats")
    assert done.returncode == 0 and "report" in done.stdout
    assert "-o" in _cli("report", "--help").stdout
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    failed = _cli("report", str(bad), "-o", str(tmp_path / "x.html"))
    assert failed.returncode == 2
    assert failed.stderr.startswith("popstats: error:") and "bad.npz" in failed.stderr
    assert not (tmp_path / "x.html").exists()
    assert _cli().returncode == 2  # no command: the help (tests/test_cli.py)


CHROMIUM = "/usr/bin/chromium"


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="chromium not installed")
def test_report_renders_in_chromium(stats, tmp_path):
    result, _ = stats
    path = result.report(tmp_path / "r.html")
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                    f"--screenshot={shot}", "--window-size=1000,1400",
                    f"file://{path}"], capture_output=True, timeout=120, check=False)
    from matplotlib.image import imread

    pixels = imread(shot)
    assert pixels.std() > 0.01  # not blank


def test_per_step_figure_reads_clearly(stats):
    """The step axis is labelled above the coverage panel, whose title says
    what it counts; legends sit beside the axes, never over the lines; the
    coverage axis counts whole batches."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    result, _ = stats
    fig = result.plot("per_step")
    FigureCanvasAgg(fig).draw()
    ax, cov = [a for a in fig.axes if a.get_legend() is not None][:2]
    assert ax.get_xlabel() == "step"
    assert cov.get_title() == "coverage: batches that reached each step"
    for axes in (ax, cov):
        legend = axes.get_legend().get_window_extent()
        assert legend.x0 >= axes.get_window_extent().x1
    ticks = cov.get_yticks()
    assert len(ticks) and np.all(ticks == np.round(ticks))
