"""The Estimation object's structure: its engine, its driver hook, quiet finalizing.

``Estimation`` chooses its engine once (host, graph); its passes are that
engine's runs; with ``upstream="population"`` ``run`` hands the passes to
the declared ``Estimation.driver`` (set once, in ``popstats/__init__.py``);
the fixed point's passes finalize without coverage warnings, holding back
those records only.
"""

from __future__ import annotations

import logging

import numpy as np
import pytensor.tensor as pt
import pytest
from shared import MODE

import popstats
from popstats._src.estimation import engines, passes
from popstats._src.estimation.combine import (
    COVERAGE_WARNING,
    without_coverage_warnings,
)
from popstats._src.estimation.pass_object import DrivenRun
from popstats._src.estimation.passes import RunArguments
from popstats._src.estimation.upstream import FixedPoint
from popstats._src.upstream.fixed_point import FixedPointDriver


def layer():
    x = pt.matrix("x")
    return x, x - popstats.bn_statistic(x.mean(0), "m")


BATCHES = [{"x": np.full((2, 3), float(i))} for i in range(4)]


@pytest.mark.parametrize(("accumulate", "engine", "run"), [
    ("host", engines.HostEngine, passes.HostPass),
    ("graph", engines.GraphEngine, passes.GraphPass),
])
def test_the_engine_is_chosen_once_and_makes_the_passes(accumulate, engine, run):
    x, y = layer()
    estimation = popstats.Estimation([x], y, mode=MODE, accumulate=accumulate,
                                     compile_now=False)
    chosen = estimation._engine
    assert type(chosen) is engine and not estimation.compiled
    assert estimation.accumulate == accumulate
    state = estimation.run(BATCHES, progress=False)
    assert estimation._engine is chosen and estimation.compiled
    one = estimation._pass(estimation.init())
    one.close()  # releases the graph's accumulators
    assert type(one) is run
    # on_batch always runs on the host, whatever the engine
    assert type(estimation._pass(estimation.init(), print)) is passes.HostPass
    np.testing.assert_allclose(estimation.finalize(state)["m"].value, 1.5)


class Recorder:
    """A PassDriver that records its call and runs one plain pass."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def run(self, estimation, batches, arguments) -> DrivenRun:
        self.calls.append((estimation, arguments))
        last = estimation.run_pass(batches, RunArguments(progress=False))
        return DrivenRun(estimation, last, FixedPoint(1, (), (), 0.5))


def test_run_hands_population_passes_to_the_declared_driver():
    assert isinstance(popstats.Estimation.driver, FixedPointDriver)
    recorder = Recorder()

    class Driven(popstats.Estimation):
        driver = recorder

    x, y = layer()
    run = Driven([x], y, mode=MODE, upstream="population")
    state = run.run(BATCHES, checkpoint_every=7, progress=False)
    assert recorder.calls == [(run, RunArguments(state=None, checkpoint=None,
                                                 checkpoint_every=7, progress=False,
                                                 on_batch=None))]
    assert run.fixed_point == FixedPoint(1, (), (), 0.5)
    np.testing.assert_allclose(run.finalize(state)["m"].value, 1.5)
    # upstream="batch" never reaches the driver
    plain = Driven([x], y, mode=MODE)
    plain.run(BATCHES, progress=False)
    assert len(recorder.calls) == 1


def test_public_members_name_the_call_and_the_batch():
    x, y = layer()
    run = popstats.Estimation([x], y, mode=MODE)
    assert run.where("run", "state") == "Estimation.run(state=...)"
    later = popstats.Estimation([x], y, mode=MODE, call="estimate")
    assert later.where("run", "state") == "estimate(state=...)"
    a, b = run.batch_digest(BATCHES[0], 0), run.batch_digest(BATCHES[1], 1)
    assert a == run.batch_digest(BATCHES[0], 0) and a != b


def test_finalizing_quietly_holds_back_coverage_warnings_only(caplog):
    log = logging.getLogger("popstats")
    filters = list(log.filters)
    with caplog.at_level(logging.INFO, logger="popstats"):
        with without_coverage_warnings():
            log.warning(COVERAGE_WARNING, "s", 1, 0)
            log.info("another message")
        log.warning(COVERAGE_WARNING, "t", 2, 0)
    assert log.filters == filters and not log.disabled
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["another message",
                        "statistic 't': 2 step(s) never reached (filled from "
                        "earlier steps), 0 reached by under 10% of the batches"]
