"""The Sphinx documentation builds without warnings and documents every public name.

The build runs ``python -m sphinx -W`` in a subprocess (so Sphinx's own
deprecation warnings do not meet pytest's ``filterwarnings = error``) into a
temporary directory, once per session (``.ci/run`` builds them on one of its
two Python lines: ``POPSTATS_DOCS_BUILT_ELSEWHERE`` skips this module on the
other). The ``>>>`` examples of the pages
themselves run through pytest's ``--doctest-glob=*.rst``.
"""

from __future__ import annotations

import html
import importlib
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

if os.environ.get("POPSTATS_DOCS_BUILT_ELSEWHERE"):
    # .ci/run builds the docs once, on its newest Python line: the pages and
    # the API reference do not depend on the line (their examples, which do,
    # run as doctests on every line)
    pytest.skip("the Sphinx build runs on the other Python line of .ci/run "
                "(POPSTATS_DOCS_BUILT_ELSEWHERE is set)", allow_module_level=True)
pytest.importorskip("sphinx")
pytest.importorskip("numpydoc")

import popstats

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
#: Modules whose ``__all__`` the API reference must cover (optional ones may be absent).
PUBLIC_MODULES = ["popstats", "popstats.nn", "popstats.dask"]


def public_names() -> list[tuple[str, str]]:
    names = []
    for modname in PUBLIC_MODULES:
        try:
            module = importlib.import_module(modname)
        except ImportError:
            if modname == "popstats":
                raise
            continue
        names += [(modname, name) for name in module.__all__]
    return names


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("html")
    doctrees = tmp_path_factory.mktemp("doctrees")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-W",
            "--keep-going",
            "-q",
            "-b",
            "html",
            "-d",
            str(doctrees),
            str(DOCS),
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(
            f"sphinx-build -W failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return out


def test_docs_build_without_warnings(built: Path) -> None:
    for page in [
        "index",
        "newcomers",
        "tutorial",
        "how-it-works",
        "estimators",
        "migration",
        "pytensor-versions",
        "distributed",
        "api",
        "reference",
    ]:
        assert (built / f"{page}.html").is_file(), page


def test_every_rst_page_is_built(built: Path) -> None:
    # -W already fails on a page missing from the toctree; this guards the test itself.
    for source in DOCS.glob("*.rst"):
        assert (built / f"{source.stem}.html").is_file(), source.name


def test_reference_documents_every_public_name(built: Path) -> None:
    reference = (built / "reference.html").read_text(encoding="utf-8")
    anchors = set(re.findall(r'id="([^"]+)"', reference))
    wanted = [f"{mod}.{name}" for mod, name in public_names()]
    missing = [name for name in wanted if name not in anchors]
    assert not missing, f"not in the API reference: {missing}"


def test_reference_shows_docstrings(built: Path) -> None:
    page = (built / "reference.html").read_text("utf-8")
    # Compare words only: Sphinx renders quotes and dashes typographically.
    text = " ".join(re.findall(r"\w+", html.unescape(re.sub(r"<[^>]+>", " ", page))))
    for modname, name in public_names():
        obj = getattr(importlib.import_module(modname), name)
        doc = inspect.getdoc(obj)
        assert doc and doc.strip(), f"{modname}.{name} has no docstring"
        first_line = doc.strip().splitlines()[0]
        # The summary is rendered: roles aside, its first words appear.
        plain = re.sub(r":(func|class|meth|attr|mod|doc):", " ", first_line)
        words = " ".join(re.findall(r"\w+", plain)[:4])
        assert words in text, f"{modname}.{name}: {first_line!r}"


def test_newcomers_page_cites_the_papers(built: Path) -> None:
    text = (built / "newcomers.html").read_text(encoding="utf-8")
    assert "Ioffe" in text and "Szegedy" in text and "2015" in text
    assert "Cooijmans" in text and "2016" in text


def test_migration_page_links_the_pytensor_tag_behaviour(built: Path) -> None:
    text = (built / "migration.html").read_text(encoding="utf-8")
    assert 'href="pytensor-versions.html"' in text
    for name in [
        "bn_statistic",
        "get_inference_graph",
        "get_batch_normalization_updates",
        "BatchNormLayer",
        "population_stdev",
    ]:
        assert name in text, name


def test_public_names_are_the_documented_package() -> None:
    # The reference is generated from ``__all__``: every listed name must exist.
    for modname, name in public_names():
        assert hasattr(importlib.import_module(modname), name), f"{modname}.{name}"
    assert popstats.__all__


def test_estimator_accuracy_tables_are_tables(built: Path) -> None:
    # docs/estimator-accuracy.txt (written by benchmarks/estimator_accuracy.py
    # --rst) renders as two HTML tables, not as Markdown in a code block.
    page = (built / "estimators.html").read_text(encoding="utf-8")
    tables = re.findall(r"<table.*?</table>", page, re.S)
    accuracy = [t for t in tables if "ema(0.01)" in t and "pooled" in t]
    assert len(accuracy) == 2, len(accuracy)
    for table in accuracy:
        rows = re.findall(r"<tr", table)
        assert len(rows) >= 4  # a header and at least three counts of batches
    assert "|---|" not in page and "| batches |" not in page
