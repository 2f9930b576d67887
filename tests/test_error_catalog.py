"""The error catalog: every raise site is reached, and docs/errors.rst is current.

The scenarios and the page are in ``error_catalog.py`` (its docstring says
how raise sites are counted). Run once per module, the scenarios give one
:class:`error_catalog.Result` each; the tests check them against the raise
sites found by parsing ``popstats/`` and against the page. Set
``POPSTATS_REGENERATE_DOCS=1`` to rewrite the page instead of comparing.
"""

from __future__ import annotations

import os
from collections import Counter

import error_catalog as cat
import pytest

import popstats


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> list[cat.Result]:
    return cat.run_all(lambda name: tmp_path_factory.mktemp(name, numbered=True))


@pytest.fixture(scope="module")
def sites() -> list[cat.Site]:
    found, _ = cat.scan_sites()
    return found


def test_the_scan_finds_the_sites(sites: list[cat.Site]) -> None:
    kinds = Counter(site.kind for site in sites)
    assert kinds["raise"] > 50 and kinds["raise built"] and kinds["check"], kinds
    _, builders = cat.scan_sites()
    raised = {site.source.split("(")[0].removeprefix("self.") for site in sites
              if site.kind == "raise built"}
    assert builders <= raised, f"error builders never raised: {builders - raised}"


def test_scenarios_are_unique() -> None:
    names = [s.name for s in cat.SCENARIOS]
    titles = [s.title for s in cat.SCENARIOS]
    assert len(set(names)) == len(names)
    assert [t for t, n in Counter(titles).items() if n > 1] == []


def test_each_scenario_raises_a_popstats_error(results: list[cat.Result]) -> None:
    wrong = [
        f"{r.scenario.name}: "
        + ("no error" if r.exc is None else f"{type(r.exc).__name__}: {r.exc}")
        for r in results
        if type(r.exc) is not popstats.PopstatsError
    ]
    assert not wrong, "scenarios that do not raise a PopstatsError:\n" + "\n".join(
        wrong
    )


def test_each_error_comes_from_a_raise_site(
    results: list[cat.Result], sites: list[cat.Site]
) -> None:
    lost = [
        f"{r.scenario.name}: raised at {r.file}:{r.line}"
        for r in results
        if r.exc is not None and cat.site_of(r, sites) is None
    ]
    assert not lost, "errors not raised at a site the scan found:\n" + "\n".join(lost)


def test_every_raise_site_is_reached(
    results: list[cat.Result], sites: list[cat.Site]
) -> None:
    if not cat.HAVE_DASK:  # their scenarios did not run
        sites = [s for s in sites if s.file not in cat.DASK_FILES]
    if not cat.HAVE_PTML:
        sites = [s for s in sites if s.file not in cat.PTML_FILES]
    reached = {cat.site_of(r, sites) for r in results}
    allowed = [s for s in sites if any(s.matches(k) for k in cat.UNREACHABLE)]
    missing = [s for s in sites if s not in reached and s not in allowed]
    assert not missing, (
        "raise sites no scenario reaches; add a scenario to tests/error_catalog.py "
        "(or, if the public API cannot reach it, an UNREACHABLE entry saying "
        "why):\n" + "\n".join(f"{s}: {s.source[:90]}" for s in missing)
    )
    stale = [k for k in cat.UNREACHABLE
             if not any(s.matches(k) for s in sites)
             or any(s.matches(k) for s in reached if s is not None)]
    assert not stale, f"UNREACHABLE entries that are gone or reached: {stale}"


def test_messages_start_with_the_call(results: list[cat.Result]) -> None:
    bad = [
        f"{r.scenario.name}: {r.message[:80]}"
        for r in results
        if r.exc is not None
        and r.scenario.name not in cat.NO_CALL_PREFIX
        and not cat.CALL_PREFIX.match(r.message)
    ]
    assert not bad, "messages that do not start with call(...):\n" + "\n".join(bad)
    names = {s.name for s in cat.SCENARIOS}
    assert set(cat.NO_CALL_PREFIX) <= names


def test_messages_are_deterministic(results: list[cat.Result]) -> None:
    # object addresses and temporary paths would change from run to run
    for r in results:
        assert " at 0x" not in r.message, (r.scenario.name, r.message)
        assert "pytest-" not in r.message, (r.scenario.name, r.message)


def test_command_line_prints_the_message(results: list[cat.Result]) -> None:
    for r in results:
        if r.scenario.cli:
            assert r.cli_status == 2, (r.scenario.name, r.cli_status)
            assert r.cli_output == f"popstats: error: {r.message}", r.scenario.name
            assert not r.notes, (r.scenario.name, r.notes)


def test_every_error_has_a_section(results: list[cat.Result]) -> None:
    orphans = [f"{r.scenario.name}: {r.file}" for r in results
               if r.file is not None and cat.section_of(r.file) is None]
    assert not orphans, f"add these files to SECTIONS: {orphans}"


def test_the_preamble_runs() -> None:
    cat.run_preamble()


def test_page_is_current(results: list[cat.Result]) -> None:
    if not cat.HAVE_DASK:
        pytest.skip("the page lists popstats.dask's errors: install the dask extra")
    if not cat.HAVE_PTML:
        pytest.skip("the page lists pytensor-ml's errors: install pytensor-ml")
    broken = [r.scenario.name for r in results
              if type(r.exc) is not popstats.PopstatsError or r.file is None]
    assert not broken, f"fix these scenarios before writing the page: {broken}"
    page = cat.render_page(results)
    assert ">>>" not in page  # the page is collected as a doctest file
    if os.environ.get(cat.REGENERATE) == "1":
        cat.PAGE.write_text(page, encoding="utf-8")
        return
    current = cat.PAGE.read_text(encoding="utf-8") if cat.PAGE.exists() else ""
    if current != page:
        pytest.fail(
            "docs/errors.rst differs from what the error scenarios give (a "
            "message, a scenario or a raise site changed). Check the change, "
            f"then rewrite the page with\n\n    {cat.REGENERATE}=1 python -m "
            "pytest tests/test_error_catalog.py\n\n"
            + cat.page_diff(current, page),
            pytrace=False,
        )
