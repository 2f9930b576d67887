"""Property tests: popstats on randomly generated batch-normalized models.

Hypothesis draws model descriptions (``generated.models``: dense layers,
``scan`` loops with sit_sot and mit_sot taps, while loops, ``go_backwards``,
random draws in the step, nesting up to three deep, ``OpFromGraph`` layers
applied once or twice, copied branches and reused ``Scan`` ops, statistics
computed outside a loop and used inside). ``generated.build`` turns one into
a PyTensor model, ``generated.interpret`` runs it in NumPy: the independent
reference. Per model the tests check

1. the estimate: per label, the estimated statistics match the reference
   applications of that label one to one (values within 1e-10 relative,
   coverage equal). popstats calls reused statistics ``label#k`` in graph
   order, which the interpreter cannot know, hence the matching;
2. the outputs of ``rewrite(outputs, stats)`` equal the interpreter's
   inference with the reference population values, on the test batch (longer
   than any training sequence: steps are clamped) and on a training batch;
3. batch independence: the rewritten outputs of the test batch equal those of
   each of its examples alone, stacked;
4. rewriting each output alone equals rewriting all of them together;
5. persistence: ``stats.save``, then one separate Python process for all
   models of a run (fed each model as it passes, so it works alongside)
   rebuilds each model from its description, loads the statistics, rewrites
   and evaluates the test batch, and gets the same outputs;
6. the user's graph is unchanged by estimate, rewrite and save.

A ``PopstatsError`` is a failure: the generator makes every two applications
of one label differ by their inputs, weights or position. A failing model's
description is printed as JSON: ``check_model(json.loads(text), folder, 0)``
reruns the in-process checks on it, ``generated.build`` builds the model.

Each model compiles two functions (estimation and inference; the inference
function holds the outputs rewritten together and one by one) in
``FAST_COMPILE`` (``POPSTATS_TEST_MODE`` as elsewhere). Examples are drawn
with a fixed seed (``derandomize``) and no example database.

Size: ``test_generated_models`` checks 12 models; 1,000 under
``POPSTATS_LONG=1`` (the long runs, README's "Tests"). Models without
reuse (no OpFromGraph, no copies: every label reached once) are among
them, and the test counts them: at least 3.
``test_generated_models_without_reuse`` draws only those, a tenth of the
number (100), under ``POPSTATS_LONG=1`` only: where a model with reuse
fails, it tells whether the failure is about telling applications apart.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import generated as gen
import numpy as np
import pytensor
import pytest
import reference as ref
from hypothesis import HealthCheck, given, settings
from shared import MODE, sized

import popstats

EXAMPLES = sized(12, 1000)
PLAIN_EXAMPLES = max(10, EXAMPLES // 10)
#: models without reuse among the EXAMPLES of ``test_generated_models``
PLAIN_AMONG = 3

#: estimated against reference statistics (relative; absolute near zero)
STAT_RTOL, STAT_ATOL = 1e-10, 1e-12
#: rewritten outputs against the interpreter
OUT_TOL = 1e-9
#: the same compiled maths on other batch sizes, or the same maths twice
SAME_TOL = 1e-10


def _settings(examples: int):
    return settings(
        derandomize=True,
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )


@dataclass
class Saved:
    """A checked model, for the persistence check in a separate process."""

    desc: dict
    path: str
    expected: list


# --------------------------------------------------------------------------
# check 1: estimated statistics against the reference, label by label


def _matches(stat, value, coverage) -> bool:
    return (
        stat.value.shape == value.shape
        and np.allclose(stat.value, value, rtol=STAT_RTOL, atol=STAT_ATOL)
        and np.array_equal(stat.coverage, coverage)
    )


def _one_to_one(ok: list[list[bool]]) -> list[int] | None:
    """A perfect matching rows -> columns of a square boolean table, or None
    (augmenting paths; the tables are tiny)."""
    owner: dict[int, int] = {}

    def place(row: int, seen: set) -> bool:
        for col, good in enumerate(ok[row]):
            if good and col not in seen:
                seen.add(col)
                if col not in owner or place(owner[col], seen):
                    owner[col] = row
                    return True
        return False

    if not all(place(row, set()) for row in range(len(ok))):
        return None
    match = [0] * len(ok)
    for col, row in owner.items():
        match[row] = col
    return match


def check_estimate(stats, reference: dict) -> None:
    apps: dict[str, list[str]] = {}
    for app in sorted(reference):
        apps.setdefault(gen.app_label(app), []).append(app)
    found: dict[str, list] = {}
    for stat in stats.values():
        found.setdefault(stat.label, []).append(stat)
    if set(found) != set(apps):
        raise AssertionError(
            f"labels estimated {sorted(found)} but the model marks {sorted(apps)}"
        )
    for label, wanted in apps.items():
        got = found[label]
        names = [s.name for s in got]
        if len(got) != len(wanted):
            raise AssertionError(
                f"label {label!r}: popstats estimated {len(got)} statistics {names} "
                f"but the model applies it {len(wanted)} times {wanted}"
            )
        expected = [label]
        if len(got) > 1:
            expected = [f"{label}#{k}" for k in range(len(got))]
        if sorted(names) != sorted(expected):
            raise AssertionError(
                f"label {label!r}: statistics named {names}, expected {expected}"
            )
        ok = [[_matches(s, *reference[app]) for s in got] for app in wanted]
        if _one_to_one(ok) is None:
            rows = []
            for app, row in zip(wanted, ok, strict=True):
                value, coverage = reference[app]
                close = [n for n, good in zip(names, row, strict=True) if good]
                rows.append(f"  {app}: coverage {coverage.tolist()}, matches {close}")
                rows.append(f"    reference {np.array2string(value, precision=6)}")
            for stat in got:
                rows.append(f"  popstats {stat.name} ({stat.site.where}): coverage "
                            f"{stat.coverage.tolist()}\n    "
                            f"{np.array2string(stat.value, precision=6)}")
            raise AssertionError(
                f"label {label!r}: no one-to-one match of estimated and reference "
                "statistics\n" + "\n".join(rows)
            )


# --------------------------------------------------------------------------
# checks 2-4, 6 in process; the model is saved for check 5


def _close(got, want, tol, what: str) -> None:
    assert len(got) == len(want), f"{what}: {len(got)} outputs, expected {len(want)}"
    for j, (g, w) in enumerate(zip(got, want, strict=True)):
        g, w = np.asarray(g), np.asarray(w)
        assert g.shape == w.shape, f"{what}, output {j}: shape {g.shape} != {w.shape}"
        if not np.allclose(g, w, rtol=tol, atol=tol):
            raise AssertionError(
                f"{what}, output {j}: differs by up to {np.abs(g - w).max():.3g} "
                f"(tolerance {tol:g})\n got {np.array2string(g, threshold=40)}"
                f"\n want {np.array2string(w, threshold=40)}"
            )


def _example(model: gen.Model, batch: dict, i: int) -> dict:
    """Example ``i`` of a batch, as a batch of one."""
    one = dict(batch)
    for name, axis in model.batch_axis.items():
        one[name] = np.take(batch[name], [i], axis=axis)
    return one


def check_model(desc: dict, folder: Path, index: int) -> Saved:
    """Checks 1-4 and 6 on one description; saves its statistics to
    ``folder/model<index>.npz`` and returns what check 5 must reproduce.

    Compiles two functions: popstats' estimation function and one inference
    function computing the outputs rewritten together and one by one.
    """
    assert json.loads(json.dumps(desc)) == desc, "description is not plain JSON"
    model = gen.build(desc)
    params = gen.param_values(desc)
    before = gen.snapshot(model.outputs)

    with warnings.catch_warnings():
        # generated batches have any size (one example too): the estimate's
        # bias and trend warnings are tested in test_warnings.py
        warnings.filterwarnings("ignore", r"statistic '.*' \(in .*\): ",
                                popstats.PopstatsWarning)
        stats = popstats.estimate(
            model.inputs, model.outputs, model.batches, mode=MODE, progress=False
        )
    reference = gen.reference_statistics(desc, params, model.batches)
    check_estimate(stats, reference)  # 1

    n_out = len(model.outputs)
    joint = popstats.rewrite(model.outputs, stats)
    # (one output alone is the same graph as all of them together)
    alone = [popstats.rewrite(out, stats) for out in model.outputs if n_out > 1]
    infer = pytensor.function(model.inputs, [*joint, *alone], mode=MODE)
    population = ref.Population({app: v for app, (v, _) in reference.items()})

    outputs = {}
    for which, batch in (("test batch", model.test), ("batch 0", model.batches[0])):
        got = infer(*model.values(batch))
        want = gen.interpret(desc, params, batch, population)
        _close(got[:n_out], want, OUT_TOL, f"inference on the {which}")  # 2
        if alone:
            _close(got[n_out:], got[:n_out], SAME_TOL,  # 4
                   f"{which}: outputs rewritten one by one vs together")
        outputs[which] = got[:n_out]

    test = outputs["test batch"]
    singles = [
        infer(*model.values(_example(model, model.test, i)))[:n_out]
        for i in range(desc["test"]["size"])
    ]
    stacked = [
        np.concatenate([one[j] for one in singles], axis=test[j].ndim - 2)
        for j in range(n_out)
    ]
    _close(stacked, test, SAME_TOL, "examples alone vs in a batch")  # 3

    path = folder / f"model{index}.npz"
    stats.save(path)
    assert gen.snapshot(model.outputs) == before, (  # 6
        "the user's graph changed during estimate/rewrite/save"
    )
    return Saved(desc, str(path), [np.asarray(v) for v in test])


# --------------------------------------------------------------------------
# check 5: one separate process for all models of a run


class ReplayProcess:
    """The separate process of check 5 (``generated.replay``).

    Started before the first model and sent each checked model as one JSON
    line, it rebuilds, loads, rewrites and evaluates while the tests go on
    (on the other core), and writes all outputs when its input ends;
    :meth:`check` then compares them. The lines are kept in
    ``manifest.jsonl`` next to the saved statistics, to rerun the process by
    hand: ``python tests/generated.py MODE OUT manifest.jsonl``.
    """

    def __init__(self, folder: Path) -> None:
        self.out = folder / "replayed"
        self.saved: list[Saved] = []
        self.manifest = open(folder / "manifest.jsonl", "w")  # noqa: SIM115
        self.log_path = folder / "replay.log"
        self.log = open(self.log_path, "w")  # noqa: SIM115
        # the child imports the popstats and test helpers the parent imported
        path = [str(Path(popstats.__file__).parents[1]),
                str(Path(gen.__file__).parent)]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            path + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        )
        self.proc = subprocess.Popen(
            [sys.executable, gen.__file__, MODE, str(self.out)],
            stdin=subprocess.PIPE, stdout=self.log, stderr=subprocess.STDOUT,
            text=True, env=env,
        )

    def __enter__(self) -> ReplayProcess:
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for handle in (self.proc.stdin, self.manifest, self.log):
            if not handle.closed:
                handle.close()

    def _failed(self) -> str:
        self.log.flush()
        return f"replay process failed:\n{self.log_path.read_text()[-4000:]}"

    def send(self, saved: Saved) -> None:
        line = json.dumps(
            {"index": len(self.saved), "desc": saved.desc, "stats": saved.path}
        )
        self.saved.append(saved)
        self.manifest.write(line + "\n")
        self.manifest.flush()
        try:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise AssertionError(self._failed()) from None

    def check(self) -> None:
        self.proc.stdin.close()
        assert self.proc.wait(timeout=900) == 0, self._failed()
        errors = json.loads(Path(f"{self.out}.json").read_text())
        failures = []
        with np.load(f"{self.out}.npz") as archive:
            for i, s in enumerate(self.saved):
                if str(i) in errors:
                    failures.append((s.desc, errors[str(i)]))
                    continue
                try:
                    got = [archive[f"{i}/{j}"] for j in range(len(s.expected))]
                    _close(got, s.expected, SAME_TOL, "loaded in another process")
                except (AssertionError, KeyError) as exc:
                    failures.append((s.desc, str(exc)))
        if failures:
            shown = "\n\n".join(
                f"{message}\nmodel description (JSON):\n{json.dumps(desc)}"
                for desc, message in failures[:3]
            )
            raise AssertionError(
                f"{len(failures)} of {len(self.saved)} models differ after save "
                f"and load in another process; the first:\n\n{shown}"
            )


# --------------------------------------------------------------------------
# the tests


def _run(strategy, examples: int, folder: Path) -> list[dict]:
    """Checks 1-6 on ``examples`` drawn models; returns their descriptions."""
    names = itertools.count()  # file names of saved statistics
    with ReplayProcess(folder) as replay:

        @_settings(examples)
        @given(desc=strategy)
        def generated_model(desc):
            try:
                saved = check_model(desc, folder, next(names))
            except Exception as exc:
                exc.add_note("model description (JSON):\n" + json.dumps(desc))
                raise
            replay.send(saved)

        generated_model()
        replay.check()
    return [saved.desc for saved in replay.saved]


def test_generated_models(tmp_path):
    """Every feature, reuse included (OpFromGraph, copies, reused Scans),
    and models without reuse among them."""
    checked = _run(gen.models(), EXAMPLES, tmp_path)
    plain = sum(not gen.reuses(desc) for desc in checked)
    assert PLAIN_AMONG <= plain < len(checked), (plain, len(checked))


@pytest.mark.slow
def test_generated_models_without_reuse(tmp_path):
    """No label reached twice: failures here are not about telling
    applications apart."""
    _run(gen.models(reuse=False), PLAIN_EXAMPLES, tmp_path)
