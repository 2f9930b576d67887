"""Deployment across processes: estimate and save in one, load in another.

Every user's workflow: process A builds a model, estimates population
statistics, saves them (``stats.save``) and computes its inference outputs;
later a fresh process B rebuilds the same model from the same code,
``popstats.load`` s the file and rewrites its graph (or binds the file into a
graph it rewrote with other statistics), and must get exactly A's outputs.

Both steps run as real subprocesses of ``deploy_worker.py`` (each handles a
list of models from ``deploy_models.py``, compiling in ``FAST_COMPILE`` with
float64); this process only compares their results. The models: a two-layer
BN MLP, a BN-RNN (test sequence longer than any seen), two nested loops,
two statistic sets chosen by ``select``, ``popstats.nn.batch_norm`` outside
and inside a loop, the tag convention, and a layer reused twice (siamese
layer function; one Scan op applied to two inputs) whose branches B also
rewrites alone. A model rebuilt with one label changed must fail with an
error naming both labels.

``test_same_process_*`` run A and B in one process on one build, where no
cross-process identity is needed: they check the harness itself.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytensor
import pytest
from shared import PT_VERSION

import popstats

WORKER = Path(__file__).with_name("deploy_worker.py")
TIMEOUT = 300  # seconds per worker process
#: PyTensor >= 3.1 drops ``.tag`` of variables inside Scan inner graphs
TAGS_IN_LOOPS = PT_VERSION < (3, 1)
tags_in_loops = pytest.mark.skipif(
    not TAGS_IN_LOOPS,
    reason=f"PyTensor {pytensor.__version__} drops tags inside Scan loops "
    "(the tag convention works in loops only on PyTensor 3.0)",
)

SINGLE = ["mlp", "rnn", "nested", "nn_ff", "nn_rnn", "tags_mlp", "tags_rnn"]
REUSED = ["siamese", "twice"]
#: every model step A saves (tags_rnn only where tags survive in loops)
SAVED = [
    name
    for name in (*SINGLE, "sets", *REUSED)
    if name != "tags_rnn" or TAGS_IN_LOOPS
]
#: built with one label changed (reading the files of the model they vary):
#: (the file's label, the graph's label)
RENAMED = {
    "mlp_renamed": ("l2.var", "layer2.var"),
    "nested_renamed": ("inner.var", "inner.variance"),
}


def named(label: str, message: str) -> bool:
    """Whether ``message`` names ``label`` as a whole word (so that
    'inner.var' is not found in 'inner.variance')."""
    return re.search(rf"(?<![\w.]){re.escape(label)}(?![\w])", message) is not None


def _params(names):
    return [
        pytest.param(n, marks=tags_in_loops) if n == "tags_rnn" else n for n in names
    ]


# --------------------------------------------------------------------------
# Running the worker
# --------------------------------------------------------------------------


def run_worker(names, action: str, folder: Path) -> None:
    """Run one fresh process doing ``action`` for every model in ``names``."""
    env = dict(os.environ)
    # the worker imports the popstats this process imports
    root = str(Path(popstats.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (root, env.get("PYTHONPATH")) if p
    )
    proc = subprocess.run(
        [sys.executable, str(WORKER), ",".join(names), action, str(folder)],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(
            f"deploy_worker.py {action} exited with {proc.returncode}:\n"
            f"{proc.stderr[-4000:]}"
        )


def record(folder: Path, name: str, action: str) -> dict:
    path = folder / f"{name}.{action}.json"
    assert path.is_file(), f"the worker wrote no record for {name} {action}"
    return json.loads(path.read_text())


def outputs(folder: Path, name: str, action: str, result: str | None = None) -> dict:
    """The arrays of one model's step; fails with the step's error if any."""
    rec = record(folder, name, action)
    if rec["error"] is not None:
        pytest.fail(
            f"{name}: step {action!r} raised {rec['error']}: {rec['message']}\n"
            f"{rec['traceback']}",
            pytrace=False,
        )
    with np.load(folder / f"{name}.{result or action}.npz") as archive:
        return {key: archive[key] for key in archive.files}


def assert_same(expected: dict, got: dict, what: str = "full") -> None:
    """``got``'s ``{what}.*`` arrays equal ``expected``'s ``full.*`` ones."""
    keys = sorted(k for k in got if k.startswith(what + "."))
    assert keys, f"no {what!r} outputs"
    if what == "full":
        assert keys == sorted(expected), (keys, sorted(expected))
    for key in keys:
        ref = expected["full." + key.split(".", 1)[1]]
        np.testing.assert_allclose(
            got[key], ref, rtol=1e-12, atol=0, err_msg=f"{what}: {key}"
        )


# --------------------------------------------------------------------------
# Steps, each once per module (one process for all models)
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """Step A: estimate, save and evaluate every model."""
    folder = tmp_path_factory.mktemp("deploy")
    run_worker(SAVED, "save", folder)
    return folder


@pytest.fixture(scope="module")
def loaded(saved) -> Path:
    """Step B: load and rewrite every model (and the renamed variants)."""
    run_worker([*SAVED, *RENAMED], "load", saved)
    return saved


@pytest.fixture(scope="module")
def bound(saved) -> Path:
    """Step B: own quick estimate, rewrite, compile; then bind the file."""
    run_worker(SAVED, "bind", saved)
    return saved


@pytest.fixture(scope="module")
def same(tmp_path_factory) -> Path:
    """Steps A and B in one process, on one build."""
    folder = tmp_path_factory.mktemp("deploy_same")
    run_worker(SAVED, "same", folder)
    return folder


# --------------------------------------------------------------------------
# Fresh process B
# --------------------------------------------------------------------------


@pytest.mark.parametrize("name", _params(SINGLE))
def test_load_and_rewrite_in_fresh_process(saved, loaded, name):
    assert_same(outputs(saved, name, "save"), outputs(loaded, name, "load"))


def test_statistic_sets_in_fresh_process(saved, loaded):
    a = outputs(saved, "sets", "save")
    assert {k.split(".")[1] for k in a} == {"k0", "k1"}
    # the two sets differ, so select matters
    assert not np.allclose(a["full.k0.o0"], a["full.k1.o0"])
    assert_same(a, outputs(loaded, "sets", "load"))


@pytest.mark.parametrize("name", REUSED)
def test_reused_layer_in_fresh_process(saved, loaded, name):
    """The whole model, and each branch rewritten alone, get A's values."""
    a = outputs(saved, name, "save")
    b = outputs(loaded, name, "load")
    assert_same(a, b)
    for what in ("branch0", "branch1"):
        assert_same(a, b, what)


@pytest.mark.parametrize("name", _params([*SINGLE, "sets", *REUSED]))
def test_bind_in_fresh_process(saved, bound, name):
    """B rewrites with its own quick estimate and compiles; binding A's file
    then gives A's outputs (for a reused layer: also each branch alone)."""
    a = outputs(saved, name, "save")
    b = outputs(bound, name, "bind")
    # the quick estimate gives other outputs, so binding has work to do
    assert any(
        not np.allclose(b["own." + key.split(".", 1)[1]], value)
        for key, value in a.items()
    )
    assert_same(a, b)
    if name in REUSED:
        for what in ("branch0", "branch1"):
            assert_same(a, b, what)


@pytest.mark.parametrize("name", list(RENAMED))
def test_renamed_label_fails_with_both_names(saved, loaded, name):
    old, new = RENAMED[name]
    rec = record(loaded, name, "load")
    assert rec["error"] == "PopstatsError", rec
    message = rec["message"]
    assert named(new, message), message  # the graph's statistic without a value
    assert named(old, message), message  # the file's value without a statistic
    assert "label" in message.lower(), message  # how to fix it


# --------------------------------------------------------------------------
# One process, one build: the harness itself
# --------------------------------------------------------------------------


@pytest.mark.parametrize("name", _params(SAVED))
def test_same_process_rewrite(same, saved, name):
    """A then B in one process gives A's outputs; and step A is reproducible
    across processes (two processes estimating the same model agree)."""
    a = outputs(same, name, "same", "same-a")
    assert_same(a, outputs(same, name, "same", "same-b"))
    assert_same(outputs(saved, name, "save"), a)


@pytest.mark.parametrize("name", REUSED)
def test_same_process_branch_alone(same, name):
    a = outputs(same, name, "same", "same-a")
    b = outputs(same, name, "same", "same-b")
    for what in ("branch0", "branch1"):
        assert_same(a, b, what)
