"""The error catalog: one scenario per place popstats raises, and the page.

``tests/test_error_catalog.py`` runs every scenario here, records the
message and where it was raised, checks that every raise site of
``popstats/`` is reached, and compares :func:`render_page` of the results
with ``docs/errors.rst`` (``POPSTATS_REGENERATE_DOCS=1`` rewrites it).

Raise sites
-----------
:func:`scan_sites` parses ``popstats/`` with :mod:`ast`. It counts:

1. every ``raise PopstatsError(...)`` statement: one site each;
2. every ``raise helper(...)`` where ``helper`` builds and returns the error
   (a function with a ``return PopstatsError(...)``: ``_run_error``,
   ``_shape_error``, ``_no_statistics_error``, ``_shared_error``,
   ``_missing_error``, ``unknown_label``): one site per ``raise`` statement,
   since that is the frame the traceback shows (a helper raised from two
   places counts twice; the helper's own ``return`` is not a site);
3. every ``CheckAndRaise(PopstatsError, message)`` (``rewriter.py``): the Op
   raises inside the compiled function, where no popstats frame is on the
   stack, so such a site is recognised by its message.

``except PopstatsError`` (the command line catches and prints) and bare
``raise`` statements are not sites.

Scenarios
---------
A scenario is a small function registered with :func:`scenario`; its body
is shown on the page, so it is the exact code that raises. It runs with
``mode="FAST_COMPILE"`` and ``floatX="float64"`` as PyTensor defaults, in an
empty working directory of its own (paths in messages are relative to it;
an absolute path to it is written ``/path/to/cwd``). A scenario that takes a
``monkeypatch`` argument gets pytest's (to hide an optional package, say).
A command-line scenario (``cli=True``) runs ``popstats_cli``: the command
catches the error and prints it; the catalog records the exception being
handled when it prints.
"""

# The scenarios unpack the shared models whole (x, y, stats = estimated()),
# which reads better on the page than picking the parts each one uses.
# ruff: noqa: RUF059

from __future__ import annotations

import ast
import contextlib
import difflib
import importlib.util
import inspect
import os
import re
import sys
import tempfile
import textwrap
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from pytensor.compile.builders import OpFromGraph
from pytensor.graph.replace import clone_replace

import popstats
from popstats import nn
from popstats._src.inspection import cli, render

try:  # the popstats.dask scenarios need the dask extra (CI installs it)
    import popstats.dask
except ImportError:  # pragma: no cover
    HAVE_DASK = False
else:
    HAVE_DASK = True
#: the pytensor-ml scenarios need pytensor-ml (the ``pytensor-ml`` extra,
#: Python >= 3.12); only they reach the raise sites of PTML_FILES
HAVE_PTML = importlib.util.find_spec("pytensor_ml") is not None
PTML_FILES = frozenset({"popstats/_src/running/ptml_targets.py"})
#: where the raise sites only popstats.dask reaches are
DASK_FILES = frozenset(f"popstats/_src/distributed/{name}.py"
                       for name in ("entry", "cluster", "tasks", "upstream"))

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "popstats"
PAGE = ROOT / "docs" / "errors.rst"
REGENERATE = "POPSTATS_REGENERATE_DOCS"
#: How an absolute path to a scenario's working directory is written.
CWD = "/path/to/cwd"

#: What the page's examples assume (checked to run by the tests).
PREAMBLE = """\
import os
import sys
import tempfile
import numpy as np
import pytensor
import pytensor.tensor as pt
from pytensor.graph.replace import clone_replace
import popstats
import popstats.dask
from popstats import nn
from popstats._src.inspection import cli, render
"""

#: Sites no scenario reaches from the public API, keyed by (file, function,
#: a piece of the message source), with the reason. Keep it short and true.
UNREACHABLE: dict[tuple[str, str, str], str] = {
    # Estimation checks counts per batch (naming call, statistic and batch)
    # before the estimator scales a variance; the check in _check_bessel guards
    # direct calls of the private estimators.update.
    (
        "popstats/_src/estimation/estimators.py", "_check_bessel",
        "Estimator('ema', unbiased=True)",
    ): (
        "estimators.update is private; Estimation checks the counts first"
    ),
    # PopulationStatistics.plot passes one of its own Statistic objects to
    # plot_statistic; the check guards direct calls of the private function.
    ("popstats/_src/inspection/plots.py", "plot_statistic", "plot_statistic(stat="): (
        "plot_statistic is private; PopulationStatistics.plot always passes "
        "a Statistic"
    ),
    # A batch failing the checks of graph accumulation is run again through
    # the host checks, which raise the specific error first.
    ("popstats/_src/drift/comparison.py", "_estimation",
     "could not rebuild the pass"): (
        "a safety net: the estimators and time modes are given per name, so "
        "the rebuilt pass has those of stats"
    ),
    (
        "popstats/_src/distributed/tasks.py", "run_partition", "instead of its batches",
    ): (
        "raised on a worker; the client raises 'partition k failed' with it "
        "as the cause (as in the scenario of a failing loader)"
    ),
    ("popstats/_src/estimation/statistics.py", "_view", "is not loaded"): (
        "importing any part of popstats runs popstats/__init__.py, which "
        "imports the inspection layer that registers the views"
    ),
    ("popstats/_src/estimation/passes.py", "explain", "failed the estimation"): (
        "the host checks run on the same batch raise first"
    ),
    ("popstats/_src/estimation/upstream.py", "_NoDriver.run", "not loaded"): (
        "importing any part of popstats runs popstats/__init__.py, which sets "
        "Estimation.driver to the passes of the fixed point"
    ),
    ("popstats/_src/upstream/inference_export.py", "InferenceExport.hold",
     "lack statistic"): (
        "the passes hold the values of the pass before, estimated on the same "
        "graph with the same time modes"
    ),
    ("popstats/_src/upstream/inference_export.py", "InferenceExport.hold",
     "has shape"): (
        "the passes hold the values of the pass before, over the same batches"
    ),
}

#: Messages that do not start with ``call(...)``, by scenario, with why.
NO_CALL_PREFIX: dict[str, str] = {
    "tag_role_unknown": "a tag set by hand has no call; it names the tag",
    "statistics_unknown_name": "indexing: names PopulationStatistics[...]",
    "drift_unknown_record": "indexing: names Drift[...]",
    "optional_package_missing": "names the feature ('drawing') and the package",
}

CALL_PREFIX = re.compile(r"^[A-Za-z_][\w.]*\([^()]*\)")

#: Page sections, in order: (title, files under popstats/_src/).
SECTIONS: list[tuple[str, tuple[str, ...]]] = [
    ("Marking statistics: ``bn_statistic``", ("graph/marker.py",)),
    ("Recognizers: ``register_recognizer``", ("graph/recognize.py",)),
    (
        "Finding statistics: ``export``",
        ("export/exporter.py", "export/time_modes.py", "graph/walk.py"),
    ),
    (
        "Pairing a variance with its mean: ``time='pooled'``, "
        "``estimator='pooled'``",
        ("export/pairing.py",),
    ),
    (
        "Estimating: ``estimate``, ``Estimation``, ``Estimator``",
        tuple(f"estimation/{name}.py" for name in (
            "pass_object", "combine", "estimators", "partners", "checks",
            "accumulate_host", "passes", "accumulate_graph", "options",
            "one_call", "progress",
        )),
    ),
    (
        "Estimating on the inference graph: ``upstream='population'``",
        ("estimation/upstream.py", "upstream/inference_export.py",
         "upstream/fixed_point.py"),
    ),
    ("Batches and inputs", ("estimation/batches.py",)),
    (
        "Rewriting: ``rewrite``, ``bind``",
        ("rewrite/rewriter.py", "rewrite/bind.py", "rewrite/matching.py",
         "rewrite/inference_graph.py"),
    ),
    (
        "Running statistics: ``update_running_stats``",
        ("running/update.py", "running/ptml_targets.py"),
    ),
    (
        "Batch independence: ``batch_axes``, ``check_batch_independence``",
        ("independence/mixing.py", "independence/check.py"),
    ),
    (
        "Statistics, saving and loading",
        tuple(f"estimation/{name}.py"
              for name in ("statistics", "state", "persistence")),
    ),
    (
        "Inspection and the ``popstats`` command",
        tuple(f"inspection/{name}.py" for name in (
            "__init__", "optional", "tables", "describe", "drawing", "plots", "report",
            "cli",
        )),
    ),
    (
        "Layers and running averages: ``popstats.nn``",
        ("nn/batch_norm.py", "nn/running.py"),
    ),
    ("Drift: ``drift``, ``shift``",
     ("drift/comparison.py", "drift/records.py", "drift/report.py", "drift/shift.py",
      "drift/measures.py")),
    (
        "Estimating on a cluster: ``popstats.dask``",
        ("distributed/entry.py", "distributed/cluster.py", "distributed/tasks.py",
         "distributed/upstream.py"),
    ),
    ("Options: names, flags, ints and numbers (``match=``, ``dtypes=``, "
     "``max_steps=``, ``eps=``, ...)", ("errors.py",)),
]


# --------------------------------------------------------------------------
# Raise sites
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Site:
    """A place in ``popstats/`` that raises a PopstatsError."""

    file: str  # relative to the repository root
    line: int
    end: int
    function: str  # qualified name of the enclosing function
    kind: str  # "raise", "raise built" or "check"
    source: str  # the message (or the helper call), as written

    def __str__(self) -> str:
        return f"{self.file}:{self.line} ({self.function}, {self.kind})"

    def matches(self, key: tuple[str, str, str]) -> bool:
        file, function, piece = key
        return self.file == file and self.function == function and piece in self.source


def _called_name(call: ast.Call) -> str | None:
    func = call.func
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


def _builders(trees: dict[str, ast.Module]) -> set[str]:
    """Names of functions that return a ``PopstatsError(...)`` they build."""
    names = set()
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                for sub in ast.walk(node):
                    if (
                        isinstance(sub, ast.Return)
                        and isinstance(sub.value, ast.Call)
                        and _called_name(sub.value) == "PopstatsError"
                    ):
                        names.add(node.name)
    return names


class _SiteFinder(ast.NodeVisitor):
    def __init__(self, file: str, text: str, builders: set[str]):
        self.file, self.text, self.builders = file, text, builders
        self.scope: list[str] = []
        self.sites: list[Site] = []

    def _nested(self, node: ast.AST) -> None:
        self.scope.append(node.name)  # type: ignore[attr-defined]
        self.generic_visit(node)
        self.scope.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _nested

    def _add(self, node: ast.AST, kind: str, shown: ast.AST) -> None:
        source = " ".join((ast.get_source_segment(self.text, shown) or "").split())
        self.sites.append(
            Site(self.file, node.lineno, node.end_lineno or node.lineno,
                 ".".join(self.scope) or "<module>", kind, source)
        )

    def visit_Raise(self, node: ast.Raise) -> None:
        exc = node.exc
        if isinstance(exc, ast.Call):
            name = _called_name(exc)
            if name == "PopstatsError":
                self._add(node, "raise", exc.args[0] if exc.args else exc)
            elif name in self.builders:
                self._add(node, "raise built", exc)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        if (
            _called_name(node) == "CheckAndRaise"
            and node.args
            and _called_name_of(node.args[0]) == "PopstatsError"
        ):
            self._add(node, "check", node.args[1] if len(node.args) > 1 else node)
        self.generic_visit(node)


def _called_name_of(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def scan_sites() -> tuple[list[Site], set[str]]:
    """Every raise site of ``popstats/`` and the names of the error builders."""
    texts = {
        path.relative_to(ROOT).as_posix(): path.read_text(encoding="utf-8")
        for path in sorted(PACKAGE.rglob("*.py"))
    }
    trees = {file: ast.parse(text, file) for file, text in texts.items()}
    builders = _builders(trees)
    sites = []
    for file, tree in trees.items():
        finder = _SiteFinder(file, texts[file], builders)
        finder.visit(tree)
        sites += finder.sites
    return sorted(sites, key=lambda s: (s.file, s.line)), builders


def check_message(source: str) -> str | None:
    """The message of a ``check`` site's source (a string literal), if any."""
    try:
        value = ast.literal_eval(source)
    except (ValueError, SyntaxError):
        return None
    return value if isinstance(value, str) else None


# --------------------------------------------------------------------------
# Scenarios
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    fn: Callable
    cli: bool = False
    dask: bool = False  # needs the dask extra
    ptml: bool = False  # needs pytensor-ml


SCENARIOS: list[Scenario] = []


def scenario(title: str, *, cli: bool = False, dask: bool = False,
             ptml: bool = False) -> Callable:
    """Register a scenario under ``title`` (the page's heading for it)."""

    def register(fn: Callable) -> Callable:
        SCENARIOS.append(Scenario(fn.__name__, title, fn, cli, dask, ptml))
        return fn

    return register


# -- models and data the scenarios share (shown on the page) ---------------


def data(rows=3, cols=2):
    """A fixed batch of ``rows`` examples with ``cols`` features."""
    return np.arange(rows * cols, dtype="float64").reshape(rows, cols)


def layer(name="x"):
    """A batch-normalized layer; its statistics are labelled mean and var."""
    x = pt.matrix(name)
    mean = popstats.bn_statistic(x.mean(axis=0), label="mean")
    var = popstats.bn_statistic(x.var(axis=0), label="var")
    return x, (x - mean) / pt.sqrt(var + 1e-5)


class ToyBatchNorm(OpFromGraph):
    """A user's batch norm written as an ``OpFromGraph`` subclass."""


def toy_layer():
    """A ToyBatchNorm applied to a matrix ``x``."""
    x_in = pt.matrix("x_in")
    toy = ToyBatchNorm([x_in], [(x_in - x_in.mean(0)) / pt.sqrt(x_in.var(0) + 1e-5)])
    x = pt.matrix("x")
    return x, toy(x)


@contextlib.contextmanager
def recognizing(expand):
    """A recognizer of ToyBatchNorm, registered for the block."""
    popstats.register_recognizer(popstats.Recognizer(
        "toy", lambda op: isinstance(op, ToyBatchNorm), expand))
    try:
        yield
    finally:
        popstats.unregister_recognizer("toy")


def paired_layer(name="x"):
    """A layer whose mean and variance form a pair (roles and one group)."""
    x = pt.matrix(name)
    mean = popstats.bn_statistic(x.mean(axis=0), label="mean", role="mean",
                                 group="bn")
    var = popstats.bn_statistic(x.var(axis=0), label="var", role="var", group="bn")
    return x, (x - mean) / pt.sqrt(var + 1e-5)


def stacked(layers=3, epsilon=1e-5):
    """``layers`` batch-normalized layers, each on the one before: each
    layer's statistics depend on the statistics of the layers below it."""
    x = h = pt.matrix("x")
    for i in range(layers):
        n = h.shape[0]
        mean = popstats.bn_statistic(h.mean(axis=0), label=f"mean{i}", role="mean",
                                     group=f"bn{i}", count=n)
        var = popstats.bn_statistic(h.var(axis=0), label=f"var{i}", role="var",
                                    group=f"bn{i}", count=n)
        h = pt.tanh((h - mean) / pt.sqrt(var + epsilon))
    return x, h


def estimated(cols=2):
    """``layer()`` and its statistics, estimated on two batches."""
    x, y = layer()
    stats = popstats.estimate([x], y, [{"x": data(3, cols)}, {"x": data(2, cols)}])
    return x, y, stats


def recurrent(counted=False):
    """A recurrent loop (Scan ``rnn``) normalizing its state at every step."""
    xs = pt.tensor3("xs")  # (time, batch, features)

    def step(x_t, h):
        a = x_t + h
        n = a.shape[0] if counted else None
        mean = popstats.bn_statistic(a.mean(axis=0), label="step.mean",
                                     role="mean", group="step", count=n)
        var = popstats.bn_statistic(a.var(axis=0), label="step.var",
                                    role="var", group="step", count=n)
        return (a - mean) / pt.sqrt(var + 1e-5)

    hs = pytensor.scan(step, sequences=[xs], outputs_info=[pt.zeros(xs.shape[1:])],
                       name="rnn", return_updates=False)
    return xs, hs


def popstats_file(path, kind="popstats.statistics", version=3, meta="{}"):
    """Write an .npz file with popstats' header (to show what loading checks)."""
    np.savez(path, popstats_format=np.array(kind),
             format_version=np.array(version), meta=np.array(meta))


def popstats_cli(*args):
    """Run the ``popstats`` command line with ``args``; its exit status."""
    return cli.main(list(args))


def cluster():
    """A Dask client of a cluster inside this process (one worker thread)."""
    from distributed import Client

    return Client(processes=False, n_workers=1, threads_per_worker=1,
                  dashboard_address=":0")


HELPERS = (data, layer, estimated, recurrent, popstats_file, popstats_cli,
           paired_layer, stacked, cluster)


# -- tagger -------------------------------------------------------------------


@scenario("The statistic is not a PyTensor variable")
def bn_statistic_not_a_variable():
    popstats.bn_statistic(np.zeros(3), label="mean")


@scenario("A statistic marked twice")
def bn_statistic_marked_twice():
    x = pt.matrix("x")
    mean = popstats.bn_statistic(x.mean(axis=0), label="mean")
    popstats.bn_statistic(mean, label="mean")


@scenario("An empty label")
def bn_statistic_empty_label():
    x = pt.matrix("x")
    popstats.bn_statistic(x.mean(axis=0), label="")


@scenario("An unknown role")
def bn_statistic_unknown_role():
    x = pt.matrix("x")
    popstats.bn_statistic(x.var(axis=0), label="var", role="variance")


@scenario("A group that is not a string")
def bn_statistic_bad_group():
    x = pt.matrix("x")
    popstats.bn_statistic(x.var(axis=0), label="var", role="var", group=1)


@scenario("A count that is not positive")
def bn_statistic_count_not_positive():
    x = pt.matrix("x")
    popstats.bn_statistic(x.mean(axis=0), label="mean", count=0)


@scenario("A count that is not a number")
def bn_statistic_count_not_a_number():
    x = pt.matrix("x")
    popstats.bn_statistic(x.mean(axis=0), label="mean", count="rows")


@scenario("A count that is not a scalar")
def bn_statistic_count_not_scalar():
    x = pt.matrix("x")
    popstats.bn_statistic(x.mean(axis=0), label="mean", count=x.shape)


@scenario("An unknown role in a tag")
def tag_role_unknown():
    x = pt.matrix("x")
    mean = x.mean(axis=0)
    mean.name = "mean"
    mean.tag.bn_statistic = True  # the original tool's convention
    mean.tag.bn_role = "average"
    popstats.export(x - mean)


# -- exporter -----------------------------------------------------------------


@scenario("Outputs given as a dict")
def export_outputs_dict():
    x, y = layer()
    popstats.export({"y": y})


@scenario("An output that is not a variable")
def export_output_not_a_variable():
    x, y = layer()
    popstats.export([y, 1.0])


@scenario("No statistic in the graph")
def export_no_statistic():
    x = pt.matrix("x")
    popstats.export(x * 2)


@scenario("No statistic in a graph with loops")
def export_no_statistic_in_loops():
    xs = pt.tensor3("xs")
    hs = pytensor.scan(lambda x_t: x_t - x_t.mean(axis=0), sequences=[xs],
                       name="rnn", return_updates=False)
    popstats.export(hs)


@scenario("An unknown time mode")
def export_unknown_time_mode():
    xs, hs = recurrent()
    popstats.export(hs, time="steps")


@scenario("A ``time`` dict keyed by something else than label patterns")
def export_time_dict_bad_key():
    xs, hs = recurrent()
    popstats.export(hs, time={0: "pooled"})


@scenario("Two applications popstats cannot tell apart")
def export_indistinguishable_applications():
    u, v = pt.matrix(), pt.matrix()  # unnamed inputs
    branch = u - popstats.bn_statistic(u.mean(axis=0), label="bn")
    other = clone_replace(branch, {u: v})
    popstats.export([branch, other])


@scenario("The gradient of a loop among the outputs")
def export_gradient_of_a_loop():
    xs, hs = recurrent()
    grad = pytensor.grad(hs.sum(), xs)
    popstats.export([hs, grad])


# -- estimator ----------------------------------------------------------------


@scenario("``max_steps`` that is not a positive int")
def estimate_bad_max_steps():
    x, y = layer()
    popstats.estimate([x], y, [{"x": data()}], max_steps=0)


@scenario("The pooled estimator on a statistic without a role")
def estimate_pooled_without_role():
    x, y = layer()
    popstats.estimate([x], y, [{"x": data()}], estimator="pooled")


@scenario("The pooled estimator on a variance without its mean")
def estimate_pooled_without_mean():
    x = pt.matrix("x")
    n = x.shape[0]
    mean = popstats.bn_statistic(x.mean(axis=0), label="mean", role="mean",
                                 group="layer1", count=n)
    var = popstats.bn_statistic(x.var(axis=0), label="var", role="var",
                                group="layer2", count=n)
    y = (x - mean) / pt.sqrt(var + 1e-5)
    popstats.estimate([x], y, [{"x": data()}], estimator="pooled")


@scenario("A variance pooled over time while its mean is kept per step")
def export_pooled_variance_without_its_mean():
    xs, hs = recurrent(counted=True)
    popstats.estimate([xs], hs, [{"xs": np.ones((4, 3, 2))}],
                      time={"step.var": "pooled"})


@scenario("The pooled estimator with other time modes for a mean and its variance")
def estimate_pooled_time_modes_differ():
    xs, hs = recurrent(counted=True)
    popstats.estimate([xs], hs, [{"xs": np.ones((4, 3, 2))}], estimator="pooled",
                      time={"step.mean": "pooled"})


@scenario("The pooled estimator with a layer applied twice under one group")
def estimate_pooled_group_applied_twice():
    x = pt.matrix("x")
    n = x.shape[0]

    def layer(a):
        mean = popstats.bn_statistic(a.mean(axis=0), label="mean", role="mean",
                                     group="layer", count=n)
        var = popstats.bn_statistic(a.var(axis=0), label="var", role="var",
                                    group="layer", count=n)
        return (a - mean) / pt.sqrt(var + 1e-5)

    y = layer(x) + layer(2.0 * x)
    popstats.estimate([x], y, [{"x": data()}], estimator="pooled")


@scenario("An estimator that needs counts, on a statistic without one")
def estimate_weighted_without_count():
    x, y = layer()
    popstats.estimate([x], y, [{"x": data()}], estimator="weighted")


@scenario("A negative count")
def estimate_negative_count():
    x = pt.matrix("x")
    mean = popstats.bn_statistic(x.mean(axis=0), label="mean",
                                 count=x.shape[0] - 5)
    popstats.estimate([x], x - mean, [{"x": data(rows=3)}])


@scenario("A statistic that is not finite")
def estimate_not_finite():
    x, y = layer()
    batch = data()
    batch[0, 0] = np.nan
    popstats.estimate([x], y, [{"x": data()}, {"x": batch}])


@scenario("The unbiased estimator on a batch of one element")
def estimate_unbiased_count_one():
    x = pt.tensor("x", shape=(None, 2))
    y = nn.batch_norm(x, axes=0, label="bn").output
    popstats.estimate([x], y, [{"x": data(rows=1)}], estimator="unbiased")


@scenario("Resuming with a state of another graph")
def estimation_state_of_another_graph():
    x, y = layer()
    z = pt.matrix("z")
    other = popstats.Estimation([z], z - popstats.bn_statistic(z.mean(axis=0), "m"))
    state = other.run([{"z": data()}])
    popstats.Estimation([x], y).run([{"x": data()}], state=state)


@scenario("A state that is not an EstimationState")
def estimation_state_not_a_state():
    x, y = layer()
    popstats.Estimation([x], y).run([{"x": data()}], state={"m": 1.0})


@scenario("A per-batch callback that is not callable")
def estimation_on_batch_not_callable():
    x, y = layer()
    popstats.Estimation([x], y).run([{"x": data()}], on_batch="print")


@scenario("No batches")
def estimate_no_batches():
    x, y = layer()
    popstats.estimate([x], y, [])


@scenario("A statistic no batch computed")
def estimate_never_computed():
    xs, hs = recurrent()
    popstats.estimate([xs], hs, [{"xs": np.zeros((0, 3, 2))}])  # 0 time steps


@scenario("Running a batch fails")
def estimate_run_fails():
    x = pt.matrix("x")
    w = pytensor.shared(np.ones((3, 2)), name="W")
    h = pt.dot(x, w)
    y = h - popstats.bn_statistic(h.mean(axis=0), label="h.mean")
    popstats.estimate([x], y, [{"x": data(rows=4, cols=5)}])


@scenario("An inner loop whose length varies between outer steps")
def estimate_inner_length_varies():
    xs = pt.tensor4("xs")  # (outer time, inner time, batch, features)

    def inner(x_t):
        return x_t - popstats.bn_statistic(x_t.mean(axis=0), label="inner.mean")

    def outer(x_t, t):  # outer step t loops over the first t + 1 inner steps
        hs = pytensor.scan(inner, sequences=[x_t[: t + 1]], name="inner",
                           return_updates=False)
        return hs.sum(axis=0)

    ys = pytensor.scan(outer, sequences=[xs, pt.arange(xs.shape[0])], name="outer",
                       return_updates=False)
    popstats.estimate([xs], ys, [{"xs": np.ones((2, 3, 4, 5))}])


@scenario("A statistic whose shape changes between batches")
def estimate_shape_changes():
    x, y = layer()
    popstats.estimate([x], y, [{"x": data(cols=2)}, {"x": data(cols=3)}])


@scenario("Merging states of statistics of different shapes")
def estimation_merge_shapes_differ():
    x, y = layer()
    run = popstats.Estimation([x], y)
    a = run.run([{"x": data(cols=2)}])
    b = run.run([{"x": data(cols=3)}])
    run.merge(a, b)


@scenario("An unbiased running average over a batch of one element")
def estimate_ema_unbiased_count_one():
    x = pt.tensor("x", shape=(None, 2))
    y = nn.batch_norm(x, axes=0, label="bn").output
    popstats.estimate([x], y, [{"x": data(rows=1)}],
                      estimator=popstats.Estimator("ema", unbiased=True))


@scenario("An unknown estimator name")
def estimator_unknown_name():
    popstats.Estimator("median")


@scenario("A momentum out of range")
def estimator_momentum_out_of_range():
    popstats.Estimator("ema", momentum=1.5)


@scenario("A momentum for an estimator that takes none")
def estimator_momentum_not_ema():
    popstats.Estimator("mean", momentum=0.1)


@scenario("``unbiased`` that is not True or False")
def estimator_unbiased_not_bool():
    popstats.Estimator("ema", unbiased="yes")


@scenario("``unbiased`` for an estimator that takes none")
def estimator_unbiased_not_ema():
    popstats.Estimator("pooled", unbiased=True)


@scenario("``debias`` that is not True or False")
def estimator_debias_not_bool():
    popstats.Estimator("ema", debias=1)


@scenario("``debias`` for an estimator that takes none")
def estimator_debias_not_ema():
    popstats.Estimator("mean", debias=True)


@scenario("An unknown estimator given to ``estimate``")
def estimate_unknown_estimator():
    x, y = layer()
    popstats.estimate([x], y, [{"x": data()}], estimator="median")


@scenario("An estimator of the wrong type")
def estimate_estimator_wrong_type():
    x, y = layer()
    popstats.estimate([x], y, [{"x": data()}], estimator=0.1)


@scenario("An ``estimator`` dict keyed by something else than label patterns")
def estimate_estimator_dict_bad_key():
    x, y = layer()
    popstats.estimate([x], y, [{"x": data()}], estimator={0: "pooled"})


@scenario("``return_stats`` that is not True or False")
def get_inference_graph_bad_return_stats():
    x, y = layer()
    popstats.get_inference_graph([x], y, [{"x": data()}], return_stats="yes")


@scenario("``progress`` that is not True, False or ``'auto'``")
def estimate_bad_progress():
    x, y = layer()
    popstats.estimate([x], y, [{"x": data()}], progress="yes")


# -- upstream='population' ---------------------------------------------------


@scenario("``upstream`` that is not 'batch' or 'population'")
def estimate_unknown_upstream():
    x, y = stacked()
    popstats.estimate([x], y, [{"x": data()}], upstream="inference")


@scenario("``upstream_tol`` that is not a number >= 0")
def estimate_bad_upstream_tol():
    x, y = stacked()
    popstats.estimate([x], y, [{"x": data()}], upstream="population",
                      upstream_tol=-1e-8)


@scenario("``upstream_passes`` below 2")
def estimate_bad_upstream_passes():
    x, y = stacked()
    popstats.estimate([x], y, [{"x": data()}], upstream="population",
                      upstream_passes=1)


@scenario("``upstream_tol`` without upstream='population'")
def estimate_upstream_tol_without_population():
    x, y = stacked()
    popstats.estimate([x], y, [{"x": data()}], upstream_tol=1e-6)


@scenario("``target_error`` outside (0, 1)")
def estimate_bad_target_error():
    x, y = stacked()
    popstats.estimate([x], y, [{"x": data()}], target_error=1.0)


@scenario("``min_batches`` below 2")
def estimate_bad_min_batches():
    x, y = stacked()
    popstats.estimate([x], y, [{"x": data()}], target_error=0.01, min_batches=1)


@scenario("``min_batches`` without ``target_error``")
def estimate_min_batches_without_target():
    x, y = stacked()
    popstats.estimate([x], y, [{"x": data()}], min_batches=20)


@scenario("upstream='population': a statistic computed from another, no group")
def upstream_statistics_without_groups():
    x = pt.matrix("x")
    mean = popstats.bn_statistic(x.mean(axis=0), label="mean")
    var = popstats.bn_statistic(((x - mean) ** 2).mean(axis=0), label="var")
    y = (x - mean) / pt.sqrt(var + 1e-5)
    popstats.estimate([x], y, [{"x": data()}], upstream="population")


@scenario("upstream='population' with random numbers (dropout) in the graph")
def upstream_random_numbers():
    x = pt.matrix("x")
    rng = pytensor.shared(np.random.default_rng(0))
    _, keep = pt.random.bernoulli(0.5, size=x.shape, rng=rng, return_next_rng=True)
    h = x * keep * 2.0  # dropout
    mean = popstats.bn_statistic(h.mean(axis=0), label="mean", group="bn")
    popstats.estimate([x], h - mean, [{"x": data()}], upstream="population")


@scenario("upstream='population' over batches that can be iterated once")
def upstream_generator():
    x, y = stacked()
    batches = ({"x": data(rows)} for rows in (3, 4))
    popstats.estimate([x], y, batches, upstream="population")


@scenario("upstream='population' over a loader that shuffles between passes")
def upstream_shuffled():
    x, y = stacked()

    class Shuffling:  # a loader whose every pass gives the batches in a new order
        def __init__(self):
            self.rng = np.random.default_rng(0)

        def __iter__(self):
            order = self.rng.permutation(3)
            return iter([{"x": data(3) * (k + 1)} for k in order])

    popstats.estimate([x], y, Shuffling(), upstream="population")


@scenario("upstream='population' over a loader that gives another batch later")
def upstream_more_batches():
    x, y = stacked()

    class Growing:  # a loader whose every pass adds a batch
        def __init__(self):
            self.batches = [{"x": data(3)}, {"x": data(4)}]

        def __iter__(self):
            self.batches.append({"x": data(5)})
            return iter(list(self.batches))

    popstats.estimate([x], y, Growing(), upstream="population")


@scenario("upstream='population' over a loader that drops a batch later")
def upstream_fewer_batches():
    x, y = stacked()

    class Shrinking:  # a loader whose every pass drops its last batch
        def __init__(self):
            self.batches = [{"x": data(rows)} for rows in (3, 4, 5, 6)]

        def __iter__(self):
            given, self.batches = self.batches, self.batches[:-1]
            return iter(given)

    popstats.estimate([x], y, Shrinking(), upstream="population")


@scenario("upstream='population' continuing a state")
def upstream_with_state():
    x, y = stacked()
    run = popstats.Estimation([x], y, upstream="population")
    state = run.run([{"x": data(3)}, {"x": data(4)}])
    run.run([{"x": data(5)}], state=state)


@scenario("Adding one batch with upstream='population'")
def upstream_update():
    x, y = stacked()
    run = popstats.Estimation([x], y, upstream="population")
    run.update(run.init(), {"x": data()})


@scenario("upstream='population' without a fixed point in ``upstream_passes``")
def upstream_not_converged():
    x, y = stacked(layers=3)  # exact after 3 passes, the 4th changes nothing
    popstats.estimate([x], y, [{"x": data(3)}, {"x": data(4) ** 2}],
                      upstream="population", upstream_passes=3)


@scenario("``upstream_se`` with ``upstream_tol``: two stopping rules")
def upstream_se_and_tol():
    x, y = stacked()
    popstats.estimate([x], y, [{"x": data(3)}, {"x": data(4)}],
                      upstream="population", upstream_se=0.1, upstream_tol=1e-6)


@scenario("``upstream_se`` over one batch: no standard error to stop at")
def upstream_se_one_batch():
    x, y = stacked()
    popstats.estimate([x], y, [{"x": data(3)}], upstream="population",
                      upstream_se=0.1)


@scenario("upstream='population' with values that are not finite")
def upstream_not_finite():
    x = pt.matrix("x")
    # no variance within a batch and an epsilon of 1e-300: at inference the
    # layer's output is about 1e156, and the next layer's pooled variance
    # overflows (NumPy's overflow warnings are silenced below)
    n = x.shape[0]
    m = popstats.bn_statistic(x.mean(axis=0), "m", role="mean", group="a", count=n)
    v = popstats.bn_statistic(x.var(axis=0), "v", role="var", group="a", count=n)
    h = (x - m) / pt.sqrt(v + 1e-300)
    m2 = popstats.bn_statistic(h.mean(axis=0), "m2", role="mean", group="b", count=n)
    v2 = popstats.bn_statistic(h.var(axis=0), "v2", role="var", group="b", count=n)
    y = (h - m2) / pt.sqrt(v2 + 1e-5)
    batches = [{"x": np.full((2, 2), 1e6)}, {"x": np.full((3, 2), -1e6)}]
    with np.errstate(over="ignore", invalid="ignore"):
        popstats.estimate([x], y, batches, upstream="population",
                          estimator={"m": "mean", "v": "mean", "*": "pooled"})


# -- batches ------------------------------------------------------------------


@scenario("An unknown dtype policy")
def estimate_unknown_dtypes():
    x, y = layer()
    popstats.estimate([x], y, [{"x": data()}], dtypes="cast")


@scenario("A value NumPy cannot make an array of")
def batch_value_ragged():
    x, y = layer()
    popstats.estimate([x], y, [{"x": [[1.0, 2.0], [3.0]]}])


@scenario("A value that is not numbers")
def batch_value_strings():
    x, y = layer()
    popstats.estimate([x], y, [{"x": np.array([["a", "b"]])}])


@scenario("A value with the wrong number of dimensions")
def batch_value_wrong_ndim():
    x, y = layer()
    popstats.estimate([x], y, [{"x": np.zeros(2)}])


@scenario("A value that does not fit the input's static shape")
def batch_value_static_shape():
    x = pt.tensor("x", shape=(None, 2))
    y = x - popstats.bn_statistic(x.mean(axis=0), label="mean")
    popstats.estimate([x], y, [{"x": data(cols=3)}])


@scenario("A value whose dtype cannot be converted without loss")
def batch_value_lossy_dtype():
    x, y = layer()
    popstats.estimate([x], y, [{"x": data() + 1j}])


@scenario("A value of another dtype with ``dtypes='strict'``")
def batch_value_strict_dtype():
    x, y = layer()
    popstats.estimate([x], y, [{"x": data().astype("int64")}], dtypes="strict")


@scenario("An input given twice in ``inputs``")
def estimate_input_twice():
    x, y = layer()
    popstats.estimate([x, x], y, [(data(), data())])


@scenario("A NumPy array given as ``batches``")
def estimate_batches_array():
    x, y = layer()
    popstats.estimate([x], y, data())


@scenario("``inputs`` that is not a list")
def estimate_inputs_not_a_list():
    x, y = layer()
    popstats.estimate("x", y, [{"x": data()}])


@scenario("An input that is not a variable")
def estimate_input_not_a_variable():
    x, y = layer()
    popstats.estimate([x, "s"], y, [{"x": data()}])


@scenario("An input that is not a free input")
def estimate_input_shared():
    x, y = layer()
    w = pytensor.shared(np.ones(2), name="W")
    popstats.estimate([x, w], y * w, [{"x": data()}])


@scenario("An input the outputs do not depend on")
def estimate_input_not_in_graph():
    x, y = layer()
    z = pt.matrix("z")
    popstats.estimate([x, z], y, [{"x": data(), "z": data()}])


@scenario("An input missing from inputs")
def estimate_input_missing():
    x = pt.matrix("x")
    s = pt.vector("s")
    h = x * s
    y = h - popstats.bn_statistic(h.mean(axis=0), label="mean")
    popstats.estimate([x], y, [{"x": data(), "s": np.ones(2)}])


@scenario("A batch without a value for an input")
def batch_lacks_input():
    x, y = layer()
    popstats.estimate([x], y, [{"X": data()}])


@scenario("A tuple batch with the wrong number of values")
def batch_tuple_wrong_length():
    x, y = layer()
    popstats.estimate([x], y, [(data(), data())])


@scenario("A batch that is neither a dict nor a tuple")
def batch_not_dict_or_tuple():
    x, y = layer()
    popstats.estimate([x], y, [data()])


@scenario("``batches`` that is a single batch")
def estimate_batches_single_dict():
    x, y = layer()
    popstats.estimate([x], y, {"x": data()})


# -- rewriter -----------------------------------------------------------------


@scenario("``stats`` that are not ``PopulationStatistics``")
def rewrite_stats_wrong_type():
    x, y = layer()
    popstats.rewrite(y, {"mean": np.zeros(2), "var": np.ones(2)})


@scenario("Several statistic sets without ``select``")
def rewrite_sets_without_select():
    x, y, stats = estimated()
    popstats.rewrite(y, [stats, stats])


@scenario("``select`` that is not a symbolic integer")
def rewrite_select_not_symbolic():
    x, y, stats = estimated()
    popstats.rewrite(y, [stats, stats], select=0)


@scenario("An unknown match mode")
def rewrite_unknown_match():
    x, y, stats = estimated()
    popstats.rewrite(y, stats, match="label")


@scenario("A statistic of another shape in the graph than in ``stats``")
def rewrite_shape_differs():
    x, y, stats = estimated(cols=2)
    x3 = pt.tensor("x", shape=(None, 3))
    mean = popstats.bn_statistic(x3.mean(axis=0), label="mean")
    var = popstats.bn_statistic(x3.var(axis=0), label="var")
    popstats.rewrite((x3 - mean) / pt.sqrt(var + 1e-5), stats, match="name")


@scenario("Statistic sets that do not fit together")
def rewrite_sets_differ():
    x, y = layer()
    narrow = popstats.estimate([x], y, [{"x": data(cols=2)}])
    wide = popstats.estimate([x], y, [{"x": data(cols=3)}])
    popstats.rewrite(y, [narrow, wide], select=pt.iscalar("k"))


@scenario("Statistic sets estimated with other time modes")
def rewrite_sets_time_modes_differ():
    x, y = recurrent()
    batches = [{"xs": data(3, 4).reshape(3, 2, 2) + np.arange(2.0)}]
    per_step = popstats.estimate([x], y, batches)
    pooled = popstats.estimate([x], y, batches, time="pooled")
    popstats.rewrite(y, [per_step, pooled], select=pt.iscalar("k"))


@scenario("Binding statistics estimated with other time modes")
def bind_time_modes_differ():
    x, y = recurrent()
    batches = [{"xs": data(3, 4).reshape(3, 2, 2) + np.arange(2.0)}]
    y_inf = popstats.rewrite(y, popstats.estimate([x], y, batches))
    popstats.bind(y_inf, popstats.estimate([x], y, batches, time="pooled"))


@scenario("A report file that cannot be written")
def report_name_too_long():
    x, y, stats = estimated()
    stats.report("r" * 300 + ".html", plots=False)


@scenario("A statistic set index out of range, at run time")
def rewrite_select_out_of_range():
    x, y, stats = estimated()
    k = pt.iscalar("k")
    predict = pytensor.function([x, k], popstats.rewrite(y, [stats, stats], select=k))
    predict(data(), 2)


@scenario("Binding onto a graph without population variables")
def bind_training_graph():
    x, y, stats = estimated()
    popstats.bind(y, stats)


@scenario("Binding a list of sets onto a graph built without ``select``")
def bind_list_without_select():
    x, y, stats = estimated()
    y_inf = popstats.rewrite(y, stats)
    popstats.bind(y_inf, [stats])


@scenario("Population variables of outputs rewritten in separate calls")
def population_variables_two_copies():
    x, y, stats = estimated()
    loss = (y**2).sum()
    popstats.population_variables([popstats.rewrite(y, stats),
                                   popstats.rewrite(loss, stats)])


@scenario("Binding values of another shape")
def bind_shape_differs():
    x, y, stats = estimated(cols=2)
    y_inf = popstats.rewrite(y, stats)
    wide = popstats.estimate([x], y, [{"x": data(cols=3)}])
    popstats.bind(y_inf, wide)


@scenario("Statistics of the graph without a value in ``stats``")
def rewrite_missing_statistics():
    x, y, stats = estimated()
    mean = popstats.bn_statistic(x.mean(axis=0), label="bn1.mean")
    var = popstats.bn_statistic(x.var(axis=0), label="bn1.var")
    popstats.rewrite((x - mean) / pt.sqrt(var + 1e-5), stats)


@scenario("One value for a statistic computed at two places")
def rewrite_one_value_two_places():
    def branch(x):
        return x - popstats.bn_statistic(x.mean(axis=0), label="bn")

    x1, x2 = pt.matrix("x1"), pt.matrix("x2")
    stats = popstats.estimate([x1], branch(x1), [{"x1": data()}])
    popstats.rewrite([branch(x1), branch(x2)], stats, match="name")


# -- batch independence ---------------------------------------------------------


@scenario("batch_axes that is not a dict")
def batch_axes_not_a_dict():
    x, y, stats = estimated()
    popstats.rewrite(y, stats, batch_axes=0)


@scenario("batch_axes naming no input of the graph")
def batch_axes_unknown_input():
    x, y, stats = estimated()
    popstats.rewrite(y, stats, batch_axes={"inputs": 0})


@scenario("A batch axis the input does not have")
def batch_axes_out_of_range():
    x, y, stats = estimated()
    popstats.describe_rewrite(y, popstats.rewrite(y, stats), batch_axes={"x": 2})


@scenario("check_batch_independence: inputs that are not free inputs")
def check_independence_bad_inputs():
    x, y, stats = estimated()
    popstats.check_batch_independence([x * 2.0], y, {"x": data()})


@scenario("check_batch_independence: an input missing from inputs")
def check_independence_missing_input():
    x, y = layer()
    n = pt.scalar("n")
    popstats.check_batch_independence([x], y * n, {"x": data()})


@scenario("check_batch_independence: the batch lacks an input")
def check_independence_batch_lacks_input():
    x, y, stats = estimated()
    popstats.check_batch_independence([x], popstats.rewrite(y, stats), {"X": data()})


@scenario("check_batch_independence: not one batch")
def check_independence_not_a_batch():
    x, y, stats = estimated()
    popstats.check_batch_independence([x], y, [{"x": data()}, {"x": data()}])


@scenario("check_batch_independence: a batch of one example")
def check_independence_one_example():
    x, y, stats = estimated()
    popstats.check_batch_independence([x], popstats.rewrite(y, stats),
                                      {"x": data(rows=1)})


@scenario("check_batch_independence: a negative rtol")
def check_independence_bad_rtol():
    x, y, stats = estimated()
    popstats.check_batch_independence([x], y, {"x": data()}, rtol=-1e-6)


@scenario("check_batch_independence: outputs that mix examples")
def check_independence_mixing():
    x, y = layer()  # the training graph: normalized with the batch's statistics
    popstats.check_batch_independence([x], y, {"x": data(rows=4)})


# -- statistics and persistence -----------------------------------------------


@scenario("An unknown statistic name")
def statistics_unknown_name():
    x, y, stats = estimated()
    stats["maen"]


@scenario("Saving to something that is not a path")
def save_not_a_path():
    x, y, stats = estimated()
    stats.save(1)


@scenario("Saving to a folder")
def save_to_folder():
    x, y, stats = estimated()
    os.mkdir("out")
    stats.save("out")


@scenario("Saving into a folder that does not exist")
def save_folder_missing():
    x, y, stats = estimated()
    stats.save("missing/stats.npz")


@scenario("Saving into a folder one cannot write to")
def save_folder_not_writable(monkeypatch):
    x, y, stats = estimated()

    def refuse(*args, **kwargs):  # what the system says in a read-only folder
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    stats.save("stats.npz")


@scenario("Saving fails after writing")
def save_rename_fails():
    x, y, stats = estimated()
    stats.save("s" * 252 + ".npz")  # a file name longer than 255 bytes


@scenario("A checkpoint of another estimation pass")
def resume_other_options():
    x, y = layer()
    popstats.estimate([x], y, [{"x": data()}], checkpoint="pass.npz")
    popstats.estimate([x], y, [{"x": data()}], checkpoint="pass.npz",
                      estimator="ema")


@scenario("Resuming with fewer batches than the checkpoint counts")
def resume_fewer_batches():
    x, y = layer()
    batches = [{"x": data()}, {"x": data() + 1.0}]
    popstats.estimate([x], y, batches, checkpoint="pass.npz")
    popstats.estimate([x], y, batches[:1], checkpoint="pass.npz")


@scenario("A saved state where a checkpoint is expected")
def resume_from_a_saved_state():
    x, y = layer()
    run = popstats.Estimation([x], y)
    run.run([{"x": data()}]).save("state.npz")
    run.run([{"x": data()}], checkpoint="state.npz")


@scenario("Resuming a checkpoint from another starting state")
def resume_other_start():
    x, y = layer()
    run = popstats.Estimation([x], y)
    first = run.run([{"x": data()}])
    run.run([{"x": data()}], state=first, checkpoint="pass.npz")
    run.run([{"x": data()}], checkpoint="pass.npz")  # without state=first


@scenario("A pass started while the same Estimation runs one")
def estimation_reentered():
    x, y = layer()
    run = popstats.Estimation([x], y, accumulate="graph")

    def batches():
        yield {"x": data()}
        run.run([{"x": data()}])  # the same Estimation, inside its own pass
        yield {"x": data()}

    run.run(batches())


@scenario("Resuming a checkpoint after the model's weights changed")
def resume_other_parameters():
    x = pt.matrix("x")
    W = pytensor.shared(np.eye(2), name="W")
    y = popstats.bn_statistic((x @ W).mean(axis=0), label="mean")
    popstats.estimate([x], y, [{"x": data()}], checkpoint="pass.npz")
    W.set_value(2.0 * np.eye(2))
    popstats.estimate([x], y, [{"x": data()}], checkpoint="pass.npz")


@scenario("A mode PyTensor does not know")
def estimate_unknown_mode():
    x, y = layer()
    popstats.estimate([x], y, [{"x": data()}], mode="FAST")


@scenario("Finalizing a state that counts no batch")
def finalize_empty_state():
    x, y = layer()
    run = popstats.Estimation([x], y)
    run.finalize(run.init())


@scenario("A variance pooled over time without a paired mean")
def export_pooled_variance_without_group():
    xs = pt.tensor3("xs")
    hs = pytensor.scan(
        lambda x_t: popstats.bn_statistic(x_t.var(axis=0), label="v", role="var"),
        sequences=[xs], return_updates=False,
    )
    popstats.estimate([xs], hs, [{"xs": np.ones((4, 3, 2))}], time="pooled")


@scenario("An empty checkpoint path")
def checkpoint_empty_path():
    x, y = layer()
    popstats.estimate([x], y, [{"x": data()}], checkpoint="")


@scenario("A checkpoint path under a file")
def checkpoint_under_a_file():
    x, y = layer()
    open("notes.txt", "w").close()
    popstats.estimate([x], y, [{"x": data()}], checkpoint="notes.txt/pass.npz")


@scenario("A checkpoint in a folder one cannot write to")
def checkpoint_folder_not_writable(monkeypatch):
    x, y = layer()
    monkeypatch.setattr(os, "access", lambda *args: False)  # a read-only folder
    popstats.estimate([x], y, [{"x": data()}], checkpoint="pass.npz")


@scenario("A checkpoint reused for a pass over other data")
def checkpoint_other_data():
    x, y = layer()
    popstats.estimate([x], y, [{"x": data()}], checkpoint="pass.npz")
    popstats.estimate([x], y, [{"x": data() + 1.0}], checkpoint="pass.npz")


@scenario("Loading a folder")
def load_a_folder():
    os.mkdir("stats")
    popstats.load("stats")


@scenario("``checkpoint_every`` that is not a positive int")
def checkpoint_every_zero():
    x, y = layer()
    popstats.estimate([x], y, [{"x": data()}], checkpoint="pass.npz",
                      checkpoint_every=0)


@scenario("A state whose arrays do not fit its statistics")
def state_arrays_do_not_fit():
    x, y = layer()
    run = popstats.Estimation([x], y)
    state = run.run([{"x": data()}])
    run.finalize(popstats.EstimationState(state.spec, ({"n": np.zeros(3)}, {}), 1))


@scenario("A state with arrays for another number of statistics")
def state_arrays_missing():
    x, y = layer()
    run = popstats.Estimation([x], y)
    run.finalize(popstats.EstimationState(run.init().spec, (), 0))


@scenario("Loading from something that is not a path")
def load_not_a_path():
    popstats.load(1)


@scenario("Loading a file that does not exist")
def load_missing_file():
    popstats.load("stats.npz")


@scenario("Loading a file that is not popstats'")
def load_foreign_file():
    np.savez("weights.npz", W=np.ones(3))
    popstats.load("weights.npz")


@scenario("Loading a file of format version 1")
def load_version_1():
    popstats_file("stats.npz", version=1)
    popstats.load("stats.npz")


@scenario("Loading a statistics file of format version 2")
def load_version_2():
    popstats_file("stats.npz", version=2)
    popstats.load("stats.npz")


@scenario("Loading an estimation state of format version 1")
def load_state_version_1():
    popstats_file("state.npz", kind="popstats.state", version=1)
    popstats.load_state("state.npz")


@scenario("Loading an estimation state written before standard errors")
def load_state_version_2():
    popstats_file("state.npz", kind="popstats.state", version=2)
    popstats.load_state("state.npz")


@scenario("Loading a file of an unknown format version")
def load_unknown_version():
    popstats_file("stats.npz", version=4)
    popstats.load("stats.npz")


@scenario("Loading an estimation state as statistics")
def load_state_as_statistics():
    x, y = layer()
    popstats.Estimation([x], y).run([{"x": data()}]).save("state.npz")
    popstats.load("state.npz")


@scenario("Loading a file whose metadata cannot be read")
def load_bad_metadata():
    popstats_file("stats.npz", meta="not json")
    popstats.load("stats.npz")


@scenario("Loading statistics from a damaged file")
def load_damaged():
    popstats_file("stats.npz", meta='{"n_batches": 2}')
    popstats.load("stats.npz")


@scenario("Loading an estimation state from a damaged file")
def load_state_damaged():
    popstats_file("state.npz", kind="popstats.state", version=3, meta="{}")
    popstats.load_state("state.npz")


# -- inspection and the command line --------------------------------------------


@scenario("An optional package that is not installed")
def optional_package_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "graphviz", None)  # as if not installed
    x, y = layer()
    popstats.draw(y)


@scenario("``max_nodes`` that is not a non-negative int")
def draw_bad_max_nodes():
    x, y = layer()
    popstats.draw(y, max_nodes=-1)


@scenario("Rendering a drawing without Graphviz's ``dot`` program")
def render_without_dot(monkeypatch):
    x, y = layer()
    drawing = popstats.draw(y)
    monkeypatch.setenv("PATH", "")  # no `dot` to be found
    render(drawing, "graph.svg")


@scenario("Plotting with ``units`` that is not a positive int")
def plot_bad_units():
    x, y, stats = estimated()
    stats.plot("mean", units=0)


@scenario("Plotting an unknown statistic")
def plot_unknown_name():
    x, y, stats = estimated()
    stats.plot("maen")


@scenario("Describing an unknown statistic")
def describe_unknown_name():
    x, y = layer()
    popstats.describe(y)["maen"]


@scenario("Describing with a shift of another graph")
def describe_shift_of_another_graph():
    x, y = stacked(layers=2)
    stats = popstats.estimate([x], y, [{"x": data()}, {"x": data() ** 2}])
    measured = popstats.shift(stats, [x], y, [{"x": data()}])
    z = pt.matrix("z")
    popstats.describe(z - popstats.bn_statistic(z.mean(0), "z.mean"), shift=measured)


@scenario("A report with a shift of other statistics")
def report_shift_of_other_statistics():
    x, y, stats = estimated()
    x2, y2 = stacked(layers=2)
    deep = popstats.estimate([x2], y2, [{"x": data()}, {"x": data() ** 2}])
    stats.report("r.html", plots=False,
                 shift=popstats.shift(deep, [x2], y2, [{"x": data()}]))


@scenario("The shift of statistics without counts")
def shift_without_counts():
    x = pt.matrix("x")
    mean = popstats.bn_statistic(x.mean(axis=0), "mean", role="mean", group="bn")
    var = popstats.bn_statistic(x.var(axis=0), "var", role="var", group="bn")
    y = (x - mean) / pt.sqrt(var + 1e-5)
    stats = popstats.estimate([x], y, [{"x": data()}])
    popstats.shift(stats, [x], y, [{"x": data()}])


@scenario("Drift against the exact moments, without counts")
def drift_moments_without_counts():
    x = pt.matrix("x")
    mean = popstats.bn_statistic(x.mean(axis=0), "mean", role="mean", group="bn")
    var = popstats.bn_statistic(x.var(axis=0), "var", role="var", group="bn")
    y = (x - mean) / pt.sqrt(var + 1e-5)
    stats = popstats.estimate([x], y, [{"x": data()}])
    popstats.drift(stats, [x], y, [{"x": data()}], against="moments")


@scenario("Describing statistics with a time mode")
def describe_statistics_with_time():
    x, y, stats = estimated()
    popstats.describe(stats, time="pooled")


@scenario("Describing with statistics that are not estimates")
def describe_stats_not_statistics():
    x, y = layer()
    popstats.describe(y, stats={"mean": np.zeros(2)})


@scenario("Describing with the statistics of another graph")
def describe_stats_of_another_graph():
    x, y, stats = estimated()
    z = pt.matrix("z")
    popstats.describe(z - popstats.bn_statistic(z.mean(0), "z.mean"), stats=stats)


@scenario("Describing with a shift that is not a measurement")
def describe_shift_not_a_measurement():
    x, y = layer()
    popstats.describe(y, shift=[0.1, 0.2])


@scenario("A report with a shift that is not a measurement")
def report_shift_not_a_measurement():
    x, y, stats = estimated()
    stats.report("r.html", plots=False, shift={"bn": 0.1})


@scenario("A report path that is not a path")
def report_not_a_path():
    x, y, stats = estimated()
    stats.report(1)


@scenario("The command line: a report it cannot write", cli=True)
def cli_report_cannot_write():
    x, y, stats = estimated()
    stats.save("stats.npz")
    popstats_cli("report", "stats.npz", "-o", "missing/report.html", "--no-plots")


@scenario("The command line: a statistics file that does not exist", cli=True)
def cli_summary_missing_file():
    popstats_cli("summary", "stats.npz")


# -- nn -----------------------------------------------------------------------


@scenario("``batch_norm`` of something that is not a tensor variable")
def batch_norm_not_a_variable():
    nn.batch_norm(np.ones((4, 2)), axes=0)


@scenario("``axes`` that are not ints")
def batch_norm_axes_not_ints():
    x = pt.tensor("x", shape=(None, 2))
    nn.batch_norm(x, axes=None)


@scenario("An axis out of range")
def batch_norm_axis_out_of_range():
    x = pt.tensor("x", shape=(None, 2))
    nn.batch_norm(x, axes=2)


@scenario("Duplicated axes")
def batch_norm_duplicated_axes():
    x = pt.tensor("x", shape=(None, 2))
    nn.batch_norm(x, axes=(0, -2))


@scenario("Every axis reduced")
def batch_norm_all_axes():
    x = pt.tensor("x", shape=(None, 2))
    nn.batch_norm(x, axes=(0, 1))


@scenario("An empty label for a layer")
def batch_norm_empty_label():
    x = pt.tensor("x", shape=(None, 2))
    nn.batch_norm(x, axes=0, label="")


@scenario("Parameters of a shape that is not positive ints")
def bn_params_bad_shape():
    nn.bn_params((64, 0), label="layer1")


@scenario("A negative epsilon")
def batch_norm_negative_epsilon():
    x = pt.tensor("x", shape=(None, 2))
    nn.batch_norm(x, axes=0, epsilon=-1e-5)


@scenario("Parameters to create for an input without static shape")
def batch_norm_no_static_shape():
    x = pt.matrix("x")
    nn.batch_norm(x, axes=0)


@scenario("A scale of the wrong shape")
def batch_norm_bad_gamma():
    x = pt.tensor("x", shape=(None, 2))
    nn.batch_norm(x, axes=0, gamma=pt.tensor3("gamma"), beta=pt.vector("beta"))


@scenario("A mask that is not a tensor")
def batch_norm_mask_not_a_tensor():
    x = pt.tensor("x", shape=(None, 2))
    nn.batch_norm(x, axes=0, mask="all")


@scenario("A mask that varies over the kept axes")
def batch_norm_mask_varies_over_kept_axes():
    x = pt.tensor("x", shape=(None, 2))
    nn.batch_norm(x, axes=0, mask=pt.matrix("mask"))


@scenario("A mask with the wrong number of dimensions")
def batch_norm_mask_wrong_ndim():
    x = pt.tensor("x", shape=(None, None, 2))  # (time, batch, features)
    nn.batch_norm(x, axes=(0, 1), mask=pt.vector("mask"))


@scenario("A mask that does not broadcast against x")
def batch_norm_mask_does_not_broadcast():
    x = pt.tensor("x", shape=(4, 2))
    nn.batch_norm(x, axes=0, mask=pt.tensor("mask", shape=(5,)))


@scenario("A running-average momentum out of range")
def running_momentum_out_of_range():
    x = pt.tensor("x", shape=(None, 2))
    bn = nn.batch_norm(x, axes=0)
    nn.running_average_updates(bn.output, momentum=0)


@scenario("Running averages with ``max_steps`` that is not a positive int")
def running_bad_max_steps():
    x = pt.tensor("x", shape=(None, 2))
    bn = nn.batch_norm(x, axes=0)
    nn.running_average_updates(bn.output, max_steps=0)


@scenario("Running averages with ``unbiased`` that is not True or False")
def running_unbiased_not_bool():
    x = pt.tensor("x", shape=(None, 2))
    bn = nn.batch_norm(x, axes=0)
    nn.running_average_updates(bn.output, unbiased="yes")


@scenario("Unbiased running averages of a variance without a count")
def running_unbiased_without_count():
    x = pt.tensor("x", shape=(None, 2))
    var = popstats.bn_statistic(x.var(axis=0), label="var", role="var")
    nn.running_average_updates(x / pt.sqrt(var + 1e-5), unbiased=True)


@scenario("Running averages of a statistic in a loop without ``max_steps``")
def running_loop_without_max_steps():
    xs, hs = recurrent()
    nn.running_average_updates(hs)


@scenario("Running averages of a statistic without static shape")
def running_no_static_shape():
    x, y = layer()
    nn.running_average_updates(y)


@scenario("Running averages read before any update")
def running_as_statistics_too_early():
    x = pt.tensor("x", shape=(None, 2))
    bn = nn.batch_norm(x, axes=0)
    y, updates, running = nn.running_average_updates(bn.output)
    running.as_statistics()


@scenario("Unbiased running averages after a batch of one element")
def running_as_statistics_not_finite():
    x = pt.tensor("x", shape=(None, 2))
    bn = nn.batch_norm(x, axes=0)
    y, updates, running = nn.running_average_updates(bn.output, unbiased=True)
    train = pytensor.function([x], y, updates=updates)
    train(data(rows=1))  # m/(m-1) with m = 1
    running.as_statistics()


# -- drift ---------------------------------------------------------------------


@scenario("Drift of something that is not population statistics")
def drift_stats_not_statistics():
    x, y = paired_layer()
    popstats.drift({"mean": np.zeros(2)}, [x], y, [{"x": data()}])


@scenario("Drift with a checkpoint, for statistics outside mean/variance pairs")
def drift_checkpoint_single():
    x, y, stats = estimated()
    popstats.drift(stats, [x], y, [{"x": data()}], checkpoint="drift.npz")


@scenario("Drift against statistics of another graph")
def drift_stats_of_another_graph():
    x, y, stats = estimated()
    z = pt.matrix("z")
    other = z - popstats.bn_statistic(z.mean(axis=0), label="other.mean")
    popstats.drift(stats, [z], other, [{"z": data()}])


@scenario("Drift against statistics of passes with different ``max_steps``")
def drift_mixed_max_steps():
    xs, hs = recurrent()
    batches = [{"xs": np.ones((3, 2, 2))}, {"xs": np.zeros((2, 2, 2))}]
    capped = popstats.estimate([xs], hs, batches, max_steps=2)
    full = popstats.estimate([xs], hs, batches)
    mixed = popstats.PopulationStatistics((capped["step.mean"], full["step.var"]))
    popstats.drift(mixed, [xs], hs, batches)


@scenario("Drift with a negative ``eps``")
def drift_eps_negative():
    x, y = paired_layer()
    stats = popstats.estimate([x], y, [{"x": data()}])
    popstats.drift(stats, [x], y, [{"x": data()}], eps=-1e-5)


@scenario("A divergence asked for a statistic outside a mean/variance pair")
def drift_divergence_unpaired():
    x, y, stats = estimated()  # layer(): mean and var without roles
    popstats.drift(stats, [x], y, [{"x": data()}], compare="divergence")


@scenario("Drift of new data with other feature sizes")
def drift_other_feature_sizes():
    x, y, stats = estimated(cols=2)
    popstats.drift(stats, [x], y, [{"x": data(cols=3)}])


@scenario("A drift threshold that is not a number")
def drift_threshold_not_a_number():
    x, y, stats = estimated()
    moved = popstats.drift(stats, [x], y, [{"x": data()}])
    moved.first_moved("large")


@scenario("A drift record's step threshold that is not a number")
def drift_steps_threshold_not_a_number():
    x, y = recurrent()
    batches = [{"xs": np.ones((2, 2, 2))}, {"xs": np.zeros((3, 2, 2))}]
    stats = popstats.estimate([x], y, batches)
    popstats.drift(stats, [x], y, batches)["step"].steps_above(None)


@scenario("Drift with ``worst`` not a positive int")
def drift_worst_not_positive():
    x, y, stats = estimated()
    popstats.drift(stats, [x], y, [{"x": data()}], worst=0)


@scenario("A drift record that does not exist")
def drift_unknown_record():
    x, y, stats = estimated()
    moved = popstats.drift(stats, [x], y, [{"x": data()}])
    moved["men"]


@scenario("A drift report with a title that is not text")
def drift_report_title():
    x, y, stats = estimated()
    moved = popstats.drift(stats, [x], y, [{"x": data()}])
    moved.report("drift.html", title=1)


@scenario("A drift report whose file name is too long for the system")
def drift_report_name_too_long():
    x, y, stats = estimated()
    moved = popstats.drift(stats, [x], y, [{"x": data()}])
    moved.report("r" * 300 + ".html")
# -- checked values and inputs (issue 28) -------------------------------------


@scenario("A statistic that reduces nothing: an input marked itself")
def bn_statistic_of_an_input():
    x = pt.matrix("x")
    popstats.bn_statistic(x, label="mean")


@scenario("A statistic computed from weights alone")
def bn_statistic_of_weights():
    w = pytensor.shared(np.ones((2, 2)), name="W")
    popstats.bn_statistic(w.mean(axis=0), label="mean")


@scenario("Two inputs named alike")
def estimate_inputs_named_alike():
    x, x_again = pt.matrix("x"), pt.matrix("x")
    mean = popstats.bn_statistic((x + x_again).mean(axis=0), label="mean")
    popstats.estimate([x, x_again], x + x_again - mean, [{"x": data()}])


@scenario("check_batch_independence: an input given twice")
def check_independence_input_twice():
    x = pt.matrix("x")
    popstats.check_batch_independence([x, x], x * 2.0, {"x": data()})


@scenario("check_batch_independence: two inputs named alike")
def check_independence_inputs_named_alike():
    x, x_again = pt.matrix("x"), pt.matrix("x")
    popstats.check_batch_independence([x, x_again], x + x_again, {"x": data()})


@scenario("check_batch_independence: a batch the graph cannot run")
def check_independence_batch_fails():
    x = pt.matrix("x")
    w = pytensor.shared(np.ones((3, 3)), name="W")
    popstats.check_batch_independence([x], x @ w, {"x": data(3, 2)})


@scenario("check_batch_independence: a graph that cannot run one example alone")
def check_independence_one_example_fails():
    x = pt.matrix("x")
    y = x * 2.0
    popstats.check_batch_independence([x], y - y[1], {"x": data()})


@scenario("A population value holding NaN")
def rewrite_nan_value():
    x, y, stats = estimated()
    stats["mean"].value[0] = np.nan
    popstats.rewrite(y, stats)


@scenario("Values matched by name whose shape the graph does not compute")
def rewrite_match_name_other_shape():
    def linear(width):
        x = pt.matrix("x")
        h = x @ pytensor.shared(np.ones((2, width)), name="W")
        mean = popstats.bn_statistic(h.mean(axis=0), label="mean")
        return x, h - mean

    x, y = linear(4)
    stats = popstats.estimate([x], y, [{"x": data()}])
    x5, y5 = linear(5)
    popstats.rewrite(y5, stats, match="name")


@scenario("shift on statistics without a role")
def shift_without_roles():
    x, y, stats = estimated()
    popstats.shift(stats, [x], y, [{"x": data()}])


# -- recognizers --------------------------------------------------------------


@scenario("Registering something that is not a ``Recognizer``")
def recognizer_not_a_recognizer():
    popstats.register_recognizer(lambda op: op.name == "bn")


@scenario("Registering a recognizer under a name already taken")
def recognizer_name_taken():
    popstats.register_recognizer(popstats.Recognizer(
        "pytensor-ml", matches=lambda op: False, expand=lambda node, context: []))


@scenario("Removing a recognizer that is not registered")
def recognizer_unknown():
    popstats.unregister_recognizer("torch")


@scenario("A recognizer returning fewer variables than the op has outputs")
def recognizer_wrong_count():
    x, y = toy_layer()
    with recognizing(lambda node, context: []):
        popstats.describe(y)


@scenario("A recognizer returning a variable of another type")
def recognizer_wrong_type():
    x, y = toy_layer()
    with recognizing(lambda node, context: [node.inputs[0].sum()]):
        popstats.describe(y)


# -- popstats.dask ---------------------------------------------------------------


@scenario("Estimating on a cluster without a Dask client", dask=True)
def dask_no_client():
    x, y = layer()
    popstats.dask.estimate([x], y, [lambda: [{"x": data()}]])


@scenario("A client that is not a ``distributed.Client``", dask=True)
def dask_client_not_a_client():
    x, y = layer()
    popstats.dask.estimate([x], y, [lambda: [{"x": data()}]],
                           client="tcp://127.0.0.1:8786")


@scenario("Partitions that are neither a bag nor a sequence of loaders", dask=True)
def dask_partitions_not_loaders():
    x, y = layer()
    popstats.dask.estimate([x], y, "data/part-*.npz")


@scenario("A partition that is data, not a loader", dask=True)
def dask_partition_is_data():
    x, y = layer()
    popstats.dask.estimate([x], y, [[{"x": data()}]])


@scenario("No partitions", dask=True)
def dask_no_partitions():
    x, y = layer()
    popstats.dask.estimate([x], y, [])


@scenario("``split_every`` below 2", dask=True)
def dask_split_every_too_small():
    x, y = layer()
    popstats.dask.estimate([x], y, [lambda: [{"x": data()}]], split_every=1)


@scenario("A graph that cannot be pickled for the workers", dask=True)
def dask_graph_not_picklable():
    import threading

    x, y = layer()
    x.tag.lock = threading.Lock()  # something that does not pickle
    popstats.dask.estimate([x], y, [lambda: [{"x": data()}]])


@scenario("A partition whose loader fails on the worker", dask=True)
def dask_partition_fails():
    x, y = layer()

    def load():  # runs on a worker
        raise OSError("cannot read part-1.npz")

    with cluster() as client:
        popstats.dask.estimate([x], y, [lambda: [{"x": data()}], load], client=client)


@scenario("Partitions whose statistics have different shapes", dask=True)
def dask_partitions_do_not_combine():
    x, y = layer()
    with cluster() as client:
        popstats.dask.estimate([x], y, [lambda: [{"x": data(cols=2)}],
                                        lambda: [{"x": data(cols=3)}]], client=client)


@scenario("Groups that are not a dict", dask=True)
def dask_groups_not_a_dict():
    x, y = layer()
    popstats.dask.estimate_groups([x], y, ["day/part-*.npz", "night/part-*.npz"])


@scenario("A state to continue, with upstream='population'", dask=True)
def dask_state_with_upstream_population():
    x, y = layer()
    state = popstats.Estimation([x], y).init()
    popstats.dask.estimate([x], y, [lambda: [{"x": data()}]], state=state,
                           upstream="population")


@scenario("upstream='population' on a cluster, a loader that augments", dask=True)
def dask_upstream_data_moved():
    x, y = stacked(layers=2)

    def load():  # runs on a worker: other noise at every call (counted in a file)
        with open("calls.txt", "a+") as calls:
            calls.write("x")
            calls.seek(0)
            n = len(calls.read())
        return [{"x": data() + 1e-6 * n}, {"x": data() ** 2}]

    with cluster() as client:
        popstats.dask.estimate([x], y, [load], client=client, upstream="population")


@scenario("upstream='population' on a cluster, not converged", dask=True)
def dask_upstream_not_converged():
    x = pt.matrix("x")
    h = x
    for i in range(3):  # three layers: the fixed point takes four passes
        h = h @ pytensor.shared(np.eye(2) + 0.5, name=f"W{i}")
        mean = popstats.bn_statistic(h.mean(0), f"bn{i}.mean", group=f"bn{i}")
        h = pt.tanh(h - mean)
    with cluster() as client:
        popstats.dask.estimate([x], h, [lambda: [{"x": data()}, {"x": data() ** 2}]],
                               client=client, upstream="population",
                               upstream_passes=2)


@scenario("States for groups that are not among the groups", dask=True)
def dask_states_of_unknown_groups():
    x, y = layer()
    state = popstats.Estimation([x], y).init()
    popstats.dask.estimate_groups([x], y, {"day": [lambda: [{"x": data()}]]},
                                  states={"nigth": state})


@scenario("A group whose partitions hold no batch", dask=True)
def dask_group_without_batches():
    x, y = layer()
    groups = {"day": [lambda: [{"x": data()}]], "night": [lambda: []]}
    with cluster() as client:
        popstats.dask.estimate_groups([x], y, groups, client=client)


@scenario("A flag that is not True or False")
def flag_not_a_bool():
    x, y = layer()
    popstats.Estimation([x], y, compile_now="no")


@scenario("Running averages that are not popstats.nn's")
def running_not_running_averages():
    x, y = layer()
    popstats.update_running_stats([x], y, [{"x": data()}], running={"mean": 0.0})


@scenario("A statistic without a running variable")
def running_statistic_without_variable():
    x, y = layer()
    popstats.update_running_stats([x], y, [{"x": data()}])


@scenario("Running averages of a statistic the outputs do not compute")
def running_average_of_other_outputs():
    x = pt.tensor("x", shape=(None, 2))
    first = nn.batch_norm(x, axes=0, label="first")
    second = nn.batch_norm(x * 2, axes=0, label="second")
    (y1, y2), _, running = nn.running_average_updates([first.output, second.output])
    popstats.update_running_stats([x], y1, [{"x": data()}], running=running)


@scenario("Running averages of the other variance convention")
def running_average_other_convention():
    x = pt.tensor("x", shape=(None, 2))
    bn = nn.batch_norm(x, axes=0, label="fc")
    y, _, running = nn.running_average_updates(bn.output, unbiased=True)
    popstats.update_running_stats([x], y, [{"x": data()}], running=running)


@scenario("Per-step running averages given pooled statistics")
def running_average_per_step_pooled():
    x = pt.tensor3("x")  # (time, batch, 2)
    gamma, beta = nn.bn_params(2, label="rnn")
    h = pytensor.scan(
        lambda x_t, g, b: nn.batch_norm(x_t, axes=0, gamma=g, beta=b,
                                        label="rnn").output,
        sequences=[x], non_sequences=[gamma, beta], return_updates=False)
    y, _, running = nn.running_average_updates(h, max_steps=4)
    popstats.update_running_stats([x], y, [{"x": np.ones((3, 4, 2))}],
                                  running=running, time="pooled")


@scenario("A pytensor-ml BatchNorm without running statistics", ptml=True)
def ptml_no_running_stats():
    from pytensor_ml.layers import BatchNorm, Input

    X = Input("X", shape=(None, 2))
    y = BatchNorm("bn", n_in=2, track_running_stats=False)(X)
    popstats.update_running_stats([X], y, [{"X": data()}])


@scenario("pytensor-ml running statistics that are not shared variables", ptml=True)
def ptml_running_not_shared():
    from pytensor_ml.layers.norm import BatchNormLayer

    x = pt.matrix("x")
    op = BatchNormLayer(name="bn", n_in=2, epsilon=1e-5, momentum=0.1, affine=False)
    y = op(x, pt.zeros(2), pt.ones(2))[0]
    popstats.update_running_stats([x], y, [{"x": data()}])


@scenario("Per-step statistics for a pytensor-ml layer in a loop", ptml=True)
def ptml_per_step_in_loop():
    from pytensor_ml.layers import BatchNorm, Input, Linear, Recurrent
    from pytensor_ml.layers.recurrent import RecurrentCell

    class Cell(RecurrentCell):
        def __init__(self):
            self.lin, self.bn = Linear("lin", n_in=4, n_out=2), BatchNorm("cell_bn")

        def step(self, x_t, h):
            return (pt.tanh(self.bn(self.lin(pt.concatenate([x_t, h], -1)))),)

        def initial_state(self, X):
            return (pt.zeros((X.shape[0], 2)),)

    X = Input("X", shape=(None, None, 2))
    y = Recurrent(Cell(), name="rnn")(X)
    popstats.update_running_stats([X], y, [{"X": np.ones((4, 3, 2))}], time="step")


@scenario("upstream='population' for a pytensor-ml layer applied twice", ptml=True)
def ptml_consistent_reused_layer():
    from pytensor_ml.layers import BatchNorm, Input

    X = Input("X", shape=(None, 2))
    bn = BatchNorm("bn", n_in=2)
    y = bn(bn(X) * 2.0)
    popstats.update_running_stats([X], y, [{"X": data()}], upstream="population")


# --------------------------------------------------------------------------
# Running the scenarios
# --------------------------------------------------------------------------


@dataclass
class Result:
    """What a scenario raised and where."""

    scenario: Scenario
    exc: BaseException | None = None
    message: str = ""
    file: str | None = None  # where it was raised, relative to the root
    line: int | None = None
    function: str | None = None
    cli_args: tuple[str, ...] | None = None
    cli_status: int | None = None
    cli_output: str | None = None
    notes: list[str] = field(default_factory=list)


def _raise_frame(exc: BaseException) -> tuple[str, int, str] | None:
    """(file, line, function) of the last popstats frame of the traceback."""
    found = None
    for frame, line in traceback.walk_tb(exc.__traceback__):
        path = Path(frame.f_code.co_filename).resolve()
        if path.is_relative_to(PACKAGE):
            name = getattr(frame.f_code, "co_qualname", frame.f_code.co_name)
            if name == "<module>" != frame.f_code.co_name:
                # a frame rebuilt by tblib (a Dask worker's traceback on the
                # client) keeps only co_name
                name = frame.f_code.co_name
            found = (path.relative_to(ROOT).as_posix(), line, name)
    return found


def _normalize(message: str, workdir: Path) -> str:
    for form in {str(workdir), os.path.realpath(workdir)}:
        message = message.replace(form, CWD)
    return message


def run_scenario(item: Scenario, workdir: Path) -> Result:
    """Run one scenario in ``workdir`` (made the working directory)."""
    result = Result(item)
    caught: dict[str, object] = {}

    def cli_print(*args: object, file: object = None, **kwargs: object) -> None:
        handled = sys.exc_info()[1]
        if handled is not None:
            caught["exc"] = handled
            caught["text"] = " ".join(map(str, args))
            caught["stderr"] = file is sys.stderr

    with pytest.MonkeyPatch.context() as mp, pytensor.config.change_flags(
        mode="FAST_COMPILE", floatX="float64"
    ):
        mp.chdir(workdir)
        calls: list[tuple[tuple[str, ...], int]] = []
        if item.cli:
            main = cli.main

            def recording_main(argv: list[str]) -> int:
                status = main(argv)
                calls.append((tuple(argv), status))
                return status

            mp.setattr(cli, "print", cli_print, raising=False)
            mp.setattr(cli, "main", recording_main)
        kwargs = {}
        if "monkeypatch" in inspect.signature(item.fn).parameters:
            kwargs["monkeypatch"] = mp
        try:
            item.fn(**kwargs)
        except Exception as exc:
            result.exc = exc
        else:
            if item.cli:
                result.exc = caught.get("exc")  # type: ignore[assignment]
                if calls:
                    result.cli_args, result.cli_status = calls[-1]
                if "text" in caught:
                    result.cli_output = _normalize(str(caught["text"]), workdir)
                    if not caught["stderr"]:
                        result.notes.append("the command printed the error to stdout")
    if result.exc is not None:
        result.message = _normalize(str(result.exc), workdir)
        where = _raise_frame(result.exc)
        if where is not None:
            result.file, result.line, result.function = where
    return result


def attribute_checks(results: list[Result], sites: list[Site]) -> None:
    """Give errors raised by a ``check`` site (no popstats frame) that site."""
    for result in results:
        if result.exc is None or result.file is not None:
            continue
        for site in sites:
            if site.kind == "check" and check_message(site.source) == result.message:
                result.file, result.line, result.function = (
                    site.file, site.line, site.function
                )


def site_of(result: Result, sites: list[Site]) -> Site | None:
    """The raise site a result came from."""
    for site in sites:
        if site.file == result.file and site.line <= (result.line or 0) <= site.end:
            return site
    return None


def run_all(workdirs: Callable[[str], Path]) -> list[Result]:
    """Run every scenario, each in ``workdirs(name)`` (a new empty folder)."""
    results = [run_scenario(s, workdirs(s.name)) for s in SCENARIOS
               if (HAVE_DASK or not s.dask) and (HAVE_PTML or not s.ptml)]
    sites, _ = scan_sites()
    attribute_checks(results, sites)
    return results


# --------------------------------------------------------------------------
# The page
# --------------------------------------------------------------------------


def _body(fn: Callable) -> str:
    """The source of a scenario's body (without the def line and decorator)."""
    source = textwrap.dedent(inspect.getsource(fn))
    tree = ast.parse(source)
    func = tree.body[0]
    assert isinstance(func, ast.FunctionDef)
    lines = source.splitlines()
    start = func.body[0].lineno - 1
    return textwrap.dedent("\n".join(lines[start : func.end_lineno])).strip("\n")


def _indent(text: str, prefix: str = "    ") -> list[str]:
    return [prefix + line if line.strip() else "" for line in text.splitlines()]


def _heading(title: str, char: str) -> list[str]:
    return [title, char * len(title), ""]


def section_of(file: str | None, cli: bool = False) -> str | None:
    """The page section of an error raised in ``file`` (command line: its own)."""
    if file is None:
        return None
    inner = "inspection/cli.py" if cli else file.removeprefix("popstats/_src/")
    for title, files in SECTIONS:
        if inner in files:
            return title
    return None


def _entry(result: Result) -> list[str]:
    item = result.scenario
    lines = _heading(item.title, "~")
    lines += [
        f"Raised in ``{result.function}`` (``{result.file}``) by:",
        "",
        ".. code-block:: python",
        "",
        *_indent(_body(item.fn)),
        "",
    ]
    if item.cli and result.cli_args is not None:
        lines += [
            f"On the command line (exit status {result.cli_status}):",
            "",
            ".. code-block:: console",
            "",
            "    $ popstats " + " ".join(result.cli_args),
            *_indent(result.cli_output or ""),
            "",
        ]
    else:
        lines += ["The message::", "", *_indent(result.message), ""]
    return lines


INTRO = """\
Every error popstats raises is a :class:`popstats.PopstatsError`, a
``ValueError``. Its message names the call and the argument, what was
received, what is allowed and how to fix it. This page lists every place in
popstats that raises one, with the code that gets there and the message it
gives, word for word (the same on every supported PyTensor version).

The page is generated by ``tests/test_error_catalog.py`` from the scenarios
in ``tests/error_catalog.py``, and the test fails when the page and the
code disagree; rewrite it with
``POPSTATS_REGENERATE_DOCS=1 python -m pytest tests/test_error_catalog.py``.
The examples run with ``pytensor.config.floatX = "float64"`` and
``mode="FAST_COMPILE"``, each in an empty working directory (an absolute
path to it is written ``{cwd}``).
"""


def render_page(results: list[Result]) -> str:
    """The text of ``docs/errors.rst`` for these results."""
    lines = [
        ".. Generated by tests/test_error_catalog.py from tests/error_catalog.py;",
        f"   do not edit. Rewrite it with {REGENERATE}=1 python -m pytest "
        "tests/test_error_catalog.py",
        "",
        *_heading("Errors", "="),
        *INTRO.format(cwd=CWD).splitlines(),
        "",
    ]
    if UNREACHABLE:
        lines += [
            "Not shown, as the public API cannot reach them: "
            + "; ".join(
                f"``{function}`` in ``{file}`` ({reason})"
                for (file, function, _), reason in UNREACHABLE.items()
            )
            + ".",
            "",
        ]
    lines += [
        *_heading("What the examples use", "-"),
        ".. code-block:: python",
        "",
        *_indent(PREAMBLE.rstrip("\n")),
        "",
    ]
    for helper in HELPERS:
        lines += _indent(textwrap.dedent(inspect.getsource(helper)).rstrip("\n"))
        lines.append("")
    for title, _ in SECTIONS:
        entries = [r for r in results
                   if section_of(r.file, r.scenario.cli) == title]
        if not entries:
            continue
        lines += _heading(title, "-")
        for result in entries:
            lines += _entry(result)
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines) + "\n"


def page_diff(old: str, new: str, limit: int = 60) -> str:
    diff = list(
        difflib.unified_diff(
            old.splitlines(), new.splitlines(), "docs/errors.rst", "generated",
            lineterm="",
        )
    )
    if len(diff) > limit:
        diff = [*diff[:limit], f"... ({len(diff) - limit} more lines)"]
    return "\n".join(diff)


def run_preamble() -> None:
    """Run :data:`PREAMBLE` (what the page says the examples import)."""
    preamble = PREAMBLE if HAVE_DASK else PREAMBLE.replace("import popstats.dask\n", "")
    exec(preamble, {})
