"""One step of the deployment workflow, run as a fresh process.

Usage::

    python tests/deploy_worker.py MODEL[,MODEL...] ACTION DIR

For each model (see ``deploy_models.py``) it builds the model from scratch
and does ACTION with the files in DIR:

``save`` (step A)
    estimate each statistic set, save it as ``{stem}.stats{k}.npz``, rewrite
    the outputs with the estimates and evaluate them on the test batch.
``load`` (step B)
    ``popstats.load`` the files of step A, rewrite the outputs (and each
    reused branch alone) and evaluate.
``bind`` (step B)
    estimate quickly on the first batch only, rewrite with that, compile and
    evaluate (``own``), then ``popstats.bind`` the loaded files into the same
    graph and evaluate the same compiled function again; the same for each
    reused branch alone (estimated, rewritten and bound alone).
``same`` (A and B in one process, one build)
    ``save`` then ``load`` on the same graph: what works without a second
    process, to check the harness itself.

Results go to ``{model}.{result}.npz``: arrays keyed ``{what}.k{set}.o{i}``
(``i`` indexes the model's full list of outputs; ``what`` is ``full``,
``branch{b}``, or ``own...`` before binding). Per model,
``{model}.{action}.json`` records the error if one was raised (type,
message, traceback) and the time taken; the worker goes on with the next
model. It exits non-zero only when it cannot run at all.

Compiles with ``FAST_COMPILE`` and ``floatX = float64``.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
import warnings
from pathlib import Path

import numpy as np

MODE = "FAST_COMPILE"


def configure() -> None:
    """floatX, mode and warnings as in the test suite (warnings are errors)."""
    import pytensor

    pytensor.config.floatX = "float64"
    pytensor.config.mode = MODE
    with warnings.catch_warnings():
        # the first BLAS lookup warns on machines without BLAS
        warnings.simplefilter("ignore")
        _ = pytensor.config.blas__ldflags
    warnings.simplefilter("error")
    warnings.filterwarnings(
        "ignore", "Using NumPy C-API based implementation for BLAS", UserWarning
    )


def stats_files(model, folder: Path) -> list[Path]:
    return [folder / f"{model.stem}.stats{k}.npz" for k in range(len(model.batch_sets))]


def estimate(model, batch_sets, indices=None) -> list:
    """One estimate per batch list, on all outputs or those at ``indices``."""
    from pytensor.graph.traversal import ancestors

    import popstats

    outputs = model.outputs
    if indices is not None:
        outputs = [outputs[i] for i in indices]
    used = set(ancestors(outputs))
    return [
        popstats.estimate(
            [v for v in model.inputs if v in used],
            outputs,
            batches,
            estimator=model.estimator,
            mode=MODE,
            progress=False,
        )
        for batches in batch_sets
    ]


def rewrite(model, sets, indices=None):
    """(rewritten outputs, select variable or None, output indices)."""
    import pytensor.tensor as pt

    import popstats

    indices = list(range(len(model.outputs))) if indices is None else list(indices)
    outputs = [model.outputs[i] for i in indices]
    if len(sets) == 1:
        return popstats.rewrite(outputs, sets[0]), None, indices
    select = pt.iscalar("stats_set")
    return popstats.rewrite(outputs, sets, select=select), select, indices


def compiled(model, outputs, select, indices, n_sets: int):
    """A function of ``what`` evaluating ``outputs`` on the test batch."""
    import pytensor

    inputs = list(model.inputs) + ([] if select is None else [select])
    fn = pytensor.function(inputs, outputs, mode=MODE, on_unused_input="ignore")
    values = [model.test[v.name] for v in model.inputs]

    def run(what: str) -> dict:
        results = {}
        for k in range(n_sets):
            extra = [] if select is None else [np.int32(k)]
            for i, out in zip(indices, fn(*values, *extra), strict=True):
                results[f"{what}.k{k}.o{i}"] = np.asarray(out)
        return results

    return run


def rewrite_and_run(model, sets, what: str, indices=None) -> dict:
    outputs, select, indices = rewrite(model, sets, indices)
    return compiled(model, outputs, select, indices, len(sets))(what)


def load(model, folder: Path) -> list:
    import popstats

    return [popstats.load(path) for path in stats_files(model, folder)]


def step_b(model, sets) -> dict:
    results = rewrite_and_run(model, sets, "full")
    for b, branch in enumerate(model.branches):
        results.update(rewrite_and_run(model, sets, f"branch{b}", branch))
    return results


def do_save(model, folder: Path) -> dict:
    sets = estimate(model, model.batch_sets)
    for stats, path in zip(sets, stats_files(model, folder), strict=True):
        stats.save(path)
    return {"save": rewrite_and_run(model, sets, "full")}


def do_load(model, folder: Path) -> dict:
    return {"load": step_b(model, load(model, folder))}


def bind_and_run(model, folder: Path, what: str, indices=None) -> dict:
    """Rewrite with a quick estimate (first batch only), compile, evaluate
    (``own`` or ``own-{what}``); bind the loaded files, evaluate again
    (``what``)."""
    import popstats

    quick = [batches[:1] for batches in model.batch_sets]
    own = estimate(model, quick, indices)
    outputs, select, indices = rewrite(model, own, indices)
    run = compiled(model, outputs, select, indices, len(own))
    results = run("own" if what == "full" else f"own-{what}")
    loaded = load(model, folder)
    popstats.bind(outputs, loaded if select is not None else loaded[0])
    results.update(run(what))
    return results


def do_bind(model, folder: Path) -> dict:
    results = bind_and_run(model, folder, "full")
    for b, branch in enumerate(model.branches):
        results.update(bind_and_run(model, folder, f"branch{b}", branch))
    return {"bind": results}


def do_same(model, folder: Path) -> dict:
    a = do_save(model, folder)["save"]
    return {"same-a": a, "same-b": step_b(model, load(model, folder))}


ACTIONS = {"save": do_save, "load": do_load, "bind": do_bind, "same": do_same}


def main(argv: list[str]) -> int:
    if len(argv) != 4 or argv[2] not in ACTIONS:
        print(__doc__, file=sys.stderr)
        return 2
    names, action, folder = argv[1].split(","), argv[2], Path(argv[3])
    configure()
    import deploy_models

    for name in names:
        record: dict = {"model": name, "action": action, "error": None}
        start = time.perf_counter()
        try:
            results = ACTIONS[action](deploy_models.build(name), folder)
            for result, arrays in results.items():
                np.savez(folder / f"{name}.{result}.npz", **arrays)
        except Exception as exc:
            record["error"] = type(exc).__name__
            record["message"] = str(exc)
            record["traceback"] = traceback.format_exc()
        record["seconds"] = round(time.perf_counter() - start, 2)
        (folder / f"{name}.{action}.json").write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
