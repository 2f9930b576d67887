"""Split, interrupted and resumed passes equal one uninterrupted pass.

Property-based (hypothesis). :class:`PassMachine` (stateful) builds a pass
out of random steps over random batches (the state accumulated in the
compiled graph or on the host, drawn too): runs continuing the state, single
updates, checkpointed runs interrupted at a random batch and resumed, save
and load of the state, and merges of separately estimated parts (as a
chain or a small tree). After every step the state must give what one
uninterrupted pass over the same batches gives: bit for bit while no merge
was used, to 1e-12 (coverage exactly) after a merge, which reorders the
floating-point sums. Every estimator, both time modes and a ``max_steps``
cap are drawn (``pass_models.CONFIGS``). Mismatched combinations (a state
or checkpoint of another pass) are tried on the way and must be refused.

:func:`test_killed_and_resumed_processes_equal_one_pass` does it with real
processes: ``pass_worker.py`` is killed with SIGKILL at random points (some
in the middle of writing its checkpoint) and started again, until it
finishes; its statistics must equal this process's uninterrupted pass bit
for bit, and no temporary file may be left.

The default run draws 12 machine runs and 2 kill scenarios; the long run
(``POPSTATS_LONG=1``) 400 and 50, which pass on both PyTensor lines.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pass_models
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from shared import MODE, Interrupted, interrupted_after, sized

import popstats

EXAMPLES = sized(12, 400)
KILL_EXAMPLES = max(2, EXAMPLES // 8)
WORKER = Path(__file__).with_name("pass_worker.py")


def estimation(config, accumulate: str = "host") -> popstats.Estimation:
    """One compiled pass per config and accumulation for the whole session
    (shared with ``test_accumulate_graph.py``)."""
    return pass_models.shared_estimation(config, MODE, accumulate)


def assert_same(got, want, exact: bool) -> None:
    assert list(got) == list(want)
    for name in want:
        a, b = got[name], want[name]
        assert a.n_batches == b.n_batches
        np.testing.assert_array_equal(a.coverage, b.coverage)
        if exact:
            np.testing.assert_array_equal(a.value, b.value)
        else:
            np.testing.assert_allclose(a.value, b.value, rtol=1e-12, atol=1e-13)


class PassMachine(RuleBasedStateMachine):
    """A pass built from random steps over the batches, in their order."""

    @initialize(
        config=st.sampled_from(pass_models.CONFIGS),
        n=st.integers(3, 9),
        seed=st.integers(0, 2**16),
        accumulate=st.sampled_from(["graph", "host"]),
    )
    def setup(self, config, n, seed, accumulate):
        self.config = config
        self.accumulate = accumulate
        self.run = estimation(config, accumulate)
        self.batches = pass_models.make_batches(seed, n)
        self.position = 0
        self.state = self.run.init()
        self.exact = True
        self.folder = Path(tempfile.mkdtemp(prefix="popstats-machine-"))
        self.files = 0

    def teardown(self):
        folder = getattr(self, "folder", None)
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)

    def left(self) -> int:
        return len(self.batches) - self.position

    def take(self, k: int) -> list:
        k = min(k, self.left())
        chunk = self.batches[self.position : self.position + k]
        self.position += k
        return chunk

    def path(self, stem: str) -> Path:
        self.files += 1
        return self.folder / f"{stem}{self.files}.npz"

    @precondition(lambda self: self.left() > 0)
    @rule(k=st.integers(1, 3))
    def continue_run(self, k):
        self.state = self.run.run(self.take(k), state=self.state, progress=False)

    @precondition(lambda self: self.left() > 0)
    @rule()
    def update_one(self):
        self.state = self.run.update(self.state, self.take(1)[0])

    @precondition(lambda self: self.left() > 0)
    @rule(k=st.integers(1, 4), stop=st.integers(0, 4), every=st.integers(1, 3),
          again=st.booleans())
    def checkpointed_run(self, k, stop, every, again):
        chunk = self.take(k)
        path = self.path("checkpoint")
        stop = min(stop, len(chunk) - 1)
        with pytest.raises(Interrupted):
            self.run.run(interrupted_after(chunk, stop), state=self.state,
                         checkpoint=path, checkpoint_every=every, progress=False)
        if again:  # interrupted twice
            with pytest.raises(Interrupted):
                self.run.run(interrupted_after(chunk, stop), state=self.state,
                             checkpoint=path, checkpoint_every=every,
                             progress=False)
        resumed = self.run.run(chunk, state=self.state, checkpoint=path,
                               checkpoint_every=every, progress=False)
        assert resumed.n_batches == self.state.n_batches + len(chunk)
        self.state = resumed
        leftovers = [p for p in os.listdir(self.folder) if p.endswith("-tmp")]
        assert not leftovers

    @rule()
    def save_and_load(self):
        path = self.path("state")
        self.state.save(path)
        self.state = popstats.load_state(path)

    @precondition(lambda self: self.left() > 0)
    @rule(k=st.integers(1, 4), split=st.integers(0, 4))
    def merge_parts(self, k, split):
        chunk = self.take(k)
        split = min(split, len(chunk))
        first = self.run.run(chunk[:split], progress=False)
        second = self.run.run(chunk[split:], progress=False)
        part = self.run.merge(first, second)
        self.state = self.run.merge(self.state, part)
        self.exact = False

    @rule(other=st.sampled_from(pass_models.CONFIGS))
    def other_pass_is_refused(self, other):
        if other == self.config:
            return
        run = estimation(other, self.accumulate)
        with pytest.raises(popstats.PopstatsError, match="another estimation pass"):
            run.merge(run.init(), self.state)
        with pytest.raises(popstats.PopstatsError, match="another estimation pass"):
            run.run([], state=self.state)
        path = self.path("mine")
        self.run.run([], state=self.state, checkpoint=path, progress=False)
        with pytest.raises(popstats.PopstatsError, match="another estimation pass"):
            run.run(self.batches, checkpoint=path, progress=False)

    @invariant()
    def equals_one_pass(self):
        if getattr(self, "position", 0) == 0 or self.state.n_batches == 0:
            return
        assert self.state.n_batches == self.position
        want = self.run.finalize(self.run.run(self.batches[: self.position],
                                              progress=False))
        assert_same(self.run.finalize(self.state), want, self.exact)


def _settings(examples: int, steps: int | None = None):
    extra = {} if steps is None else {"stateful_step_count": steps}
    return settings(
        derandomize=True, max_examples=examples, deadline=None, database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        **extra,
    )


def test_split_interrupted_and_resumed_passes_equal_one_pass():
    run_state_machine_as_test(PassMachine, settings=_settings(EXAMPLES, 10))


# --------------------------------------------------------------------------
# Real processes killed with SIGKILL
# --------------------------------------------------------------------------


def _environment() -> dict:
    env = dict(os.environ)
    root = str(Path(popstats.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def _attempt(spec: dict, kill_at: int | None, delay: float) -> str:
    """Run the worker; kill it ``delay`` s after it announces batch ``kill_at``.

    Returns ``"killed"`` or ``"done"``.
    """
    with tempfile.TemporaryFile("w+") as errors, subprocess.Popen(
        [sys.executable, str(WORKER), json.dumps(spec)], env=_environment(),
        stdout=subprocess.PIPE, stderr=errors, text=True,
    ) as proc:
        try:
            for line in proc.stdout:
                if kill_at is not None and line.strip() == f"batch {kill_at}":
                    time.sleep(delay)
                    proc.send_signal(signal.SIGKILL)
                    proc.wait(timeout=60)
                    return "killed"
            proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if proc.returncode != 0:
            errors.seek(0)
            pytest.fail(f"pass_worker.py exited with {proc.returncode}:\n"
                        f"{errors.read()[-3000:]}")
    return "done"


@settings(derandomize=True, max_examples=KILL_EXAMPLES, deadline=None,
          database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    config=st.sampled_from(pass_models.CONFIGS),
    n=st.integers(4, 8),
    seed=st.integers(0, 2**16),
    every=st.integers(1, 3),
    kills=st.lists(st.tuples(st.integers(0, 7), st.floats(0.0, 0.02)),
                   min_size=1, max_size=3),
)
def test_killed_and_resumed_processes_equal_one_pass(config, n, seed, every, kills):
    folder = Path(tempfile.mkdtemp(prefix="popstats-kill-"))
    try:
        spec = {"config": list(config), "seed": seed, "n": n, "every": every,
                "checkpoint": str(folder / "checkpoint.npz"),
                "out": str(folder / "stats.npz")}
        outcomes = [_attempt(spec, min(at, n - 1), delay) for at, delay in kills]
        assert outcomes == ["killed"] * len(kills)
        assert _attempt(spec, None, 0.0) == "done"
        run = estimation(config)
        want = run.finalize(run.run(pass_models.make_batches(seed, n),
                                    progress=False))
        assert_same(popstats.load(spec["out"]), want, exact=True)
        assert sorted(os.listdir(folder)) == ["checkpoint.npz", "stats.npz"]
        assert popstats.load_state(spec["checkpoint"]).n_batches == n
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_kill_harness_kills():
    # the harness itself: a kill at the first batch leaves no finished output
    folder = Path(tempfile.mkdtemp(prefix="popstats-kill-"))
    try:
        spec = {"config": ["mean", "step", None], "seed": 1, "n": 3, "every": 1,
                "checkpoint": str(folder / "c.npz"), "out": str(folder / "s.npz")}
        assert _attempt(spec, 0, 0.0) == "killed"
        assert not (folder / "s.npz").exists()
        assert _attempt(spec, None, 0.0) == "done"
        assert (folder / "s.npz").exists()
    finally:
        shutil.rmtree(folder, ignore_errors=True)

