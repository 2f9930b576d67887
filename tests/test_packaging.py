"""The sdist and the wheel carry what a package others depend on needs.

``python -m build`` (the ``build`` package, in the ``test`` extra) makes the
sdist of a copy of the checkout, then the wheel from that sdist, without
build isolation (no download: the setuptools of this environment builds;
without setuptools >= 70.1 or ``wheel`` the tests skip).
The wheel must hold the ``py.typed`` marker, the licence and the ``popstats``
command; the sdist the licence, the changelog and the marker.

``.ci/run`` builds the two files once (isolated) and names their folder in
``POPSTATS_DIST``: the tests then check those files and build nothing (the
package is built once per CI run, not once per Python line). ``.ci/run`` also
installs the wheel into a fresh environment and runs it.
"""

from __future__ import annotations

import email
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import popstats

ROOT = Path(__file__).resolve().parents[1]
#: Not part of a source tree: build outputs, environments, caches.
IGNORE = shutil.ignore_patterns(
    ".git", ".venv*", ".ci-venv*", "build", "dist", "*.egg-info", "__pycache__",
    ".pytest_cache", ".ruff_cache", ".mypy_cache", "_build", "output",
)


#: Run in a clean directory: ``build`` is PyPA's package, and a ``build/``
#: folder of setuptools' in the checkout would shadow it on ``sys.path``.
PROBE = """
import build.__main__
import setuptools
try:
    from setuptools.command.bdist_wheel import bdist_wheel  # setuptools >= 70.1
except ImportError:
    import wheel
"""


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if os.environ.get("POPSTATS_DIST"):
        return found(Path(os.environ["POPSTATS_DIST"]))
    out = tmp_path_factory.mktemp("dist")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    probe = subprocess.run([sys.executable, "-c", PROBE], cwd=out, env=env,
                           capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        pytest.skip("cannot build without isolation here (needs the build package "
                    "of the test extra, and setuptools >= 70.1 or wheel; .ci/run "
                    f"builds with isolation): {probe.stderr.strip().splitlines()[-1]}")
    source = tmp_path_factory.mktemp("source") / "popstats"
    shutil.copytree(ROOT, source, ignore=IGNORE)
    done = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--skip-dependency-check",
         "--outdir", str(out), str(source)],
        cwd=out, env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return found(out)


def found(out: Path) -> dict[str, Path]:
    """The one wheel and the one sdist in ``out``."""
    wheels, sdists = list(out.glob("*.whl")), list(out.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, sorted(p.name for p in out.iterdir())
    return {"wheel": wheels[0], "sdist": sdists[0]}


def test_wheel_contents(dists):
    version = popstats.__version__
    assert dists["wheel"].name == f"popstats-{version}-py3-none-any.whl"
    with zipfile.ZipFile(dists["wheel"]) as wheel:
        names = set(wheel.namelist())
        info = f"popstats-{version}.dist-info"
        assert "popstats/py.typed" in names
        assert "popstats/__init__.py" in names
        assert "popstats/_src/estimation/one_call.py" in names
        assert f"{info}/licenses/LICENSE" in names, sorted(names)
        licence = wheel.read(f"{info}/licenses/LICENSE").decode()
        entry_points = wheel.read(f"{info}/entry_points.txt").decode()
        metadata = email.message_from_bytes(wheel.read(f"{info}/METADATA"))
    assert licence == (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "MIT License" in licence
    assert "popstats = popstats._src.inspection.cli:main" in entry_points
    assert metadata["Version"] == version
    assert not any(n.startswith(("tests/", "examples/", "benchmarks/")) for n in names)


def test_sdist_contents(dists):
    version = popstats.__version__
    top = f"popstats-{version}"
    with tarfile.open(dists["sdist"]) as sdist:
        names = set(sdist.getnames())
    for name in ["LICENSE", "CHANGELOG.rst", "README.rst", "setup.cfg",
                 "pyproject.toml", "MANIFEST.in", "popstats/py.typed",
                 "popstats/__init__.py"]:
        assert f"{top}/{name}" in names, name


def test_changelog_has_the_current_version():
    text = (ROOT / "CHANGELOG.rst").read_text(encoding="utf-8")
    headings = [line for line, rule in zip(text.splitlines(), text.splitlines()[1:],
                                           strict=False)
                if rule and set(rule) == {"-"} and len(rule) == len(line)]
    assert headings[:2] == ["Unreleased", popstats.__version__]
