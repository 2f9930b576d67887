"""The ``popstats`` command without a statistics file: help and version.

Run in real subprocesses (``python -m popstats``), as a user runs it; the
commands on saved files are tested in ``test_inspection_report.py`` and
``test_inspection_edges.py``. No optional dependency is needed here.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytensor

import popstats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "popstats", *args],
                          capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=300)


def test_without_command_prints_the_help():
    done = _cli()
    assert done.returncode == 2
    assert done.stdout == ""
    # The whole help, not only argparse's one-line error: usage, the
    # commands with what they do, the options and an example.
    assert done.stderr.startswith("usage: popstats")
    for command, what in [("report", "HTML report"), ("summary", "summary")]:
        assert re.search(rf"^\s+{command}\s+.*{what}", done.stderr, re.M), command
    assert "--version" in done.stderr and "Example:" in done.stderr
    assert "error" not in done.stderr


def test_help_is_the_same_help():
    done = _cli("--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout == _cli().stderr


def test_version():
    done = _cli("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        f"popstats {popstats.__version__} (PyTensor {pytensor.__version__})"
    )


def test_unknown_command_names_the_commands():
    done = _cli("frobnicate")
    assert done.returncode == 2
    assert "invalid choice: 'frobnicate'" in done.stderr
    assert "report" in done.stderr and "summary" in done.stderr


def _saved(tmp_path, label: str = "bn.mean") -> str:
    import numpy as np
    import pytensor.tensor as pt

    x = pt.matrix("x")
    y = x - popstats.bn_statistic(x.mean(axis=0), label=label)
    stats = popstats.estimate([x], y, [{"x": np.ones((4, 2))}], mode="FAST_COMPILE")
    path = str(tmp_path / "stats.npz")
    stats.save(path)
    return path


def test_a_closed_pipe_ends_quietly(tmp_path):
    path = _saved(tmp_path)
    env = dict(os.environ, PYTHONPATH=ROOT)
    # `popstats summary f.npz | head -1`: the reader leaves after one line
    proc = subprocess.Popen([sys.executable, "-m", "popstats", "summary", path],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=ROOT, env=env)
    proc.stdout.close()  # closed before anything is written: a broken pipe
    with proc.stderr:
        err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 141, err
    assert err == "", err


def test_a_label_the_terminal_cannot_encode_is_escaped(tmp_path):
    path = _saved(tmp_path, label="bn.μ")
    env = dict(os.environ, PYTHONPATH=ROOT, PYTHONIOENCODING="ascii")
    done = subprocess.run([sys.executable, "-m", "popstats", "summary", path],
                          capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=300, encoding="ascii")
    assert done.returncode == 0, done.stderr
    assert "bn.\\u03bc" in done.stdout and "damaged" not in done.stderr


def test_only_a_failed_load_blames_the_file(tmp_path, monkeypatch, capsys):
    from popstats._src.inspection import cli, report

    path = _saved(tmp_path)

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(report, "summary_rows", broken)
    assert cli.main(["summary", path]) == 2
    err = capsys.readouterr().err
    assert "boom" in err and "popstats bug" in err and "damaged" not in err
    (tmp_path / "bad.npz").write_bytes(b"not a zip file")
    assert cli.main(["summary", str(tmp_path / "bad.npz")]) == 2
    assert "popstats: error:" in capsys.readouterr().err


def test_report_without_matplotlib_points_to_no_plots(tmp_path, monkeypatch, capsys):
    from popstats._src.inspection import cli

    path = _saved(tmp_path)
    real = cli.importlib.util.find_spec

    def find_spec(name, *args):
        return None if name == "matplotlib" else real(name, *args)

    monkeypatch.setattr(cli.importlib.util, "find_spec", find_spec)
    assert cli.main(["report", path, "-o", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err
    assert "--no-plots" in err and "pip install matplotlib" in err
    assert cli.main(["report", path, "-o", str(tmp_path / "r.html"), "--no-plots"]) == 0
