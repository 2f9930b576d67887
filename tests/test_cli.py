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
