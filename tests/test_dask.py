"""popstats.dask: a pass on a Dask cluster equals one pass in this process.

Every test runs on the module's ``LocalCluster`` (``dask_client`` in
``conftest.py``: 2 worker processes, 1 thread each). Partitions are loaded
on the workers by ``dask_loaders`` (batches made there from a seed); the
reference is :func:`popstats.estimate` here over the same batches in the
same order. Coverage and batch counts must be equal, values to 1e-12
relative (merging adds in another order). Faults are real: a worker process
killed with SIGKILL mid-pass, a loader that raises, a batch that does not
fit.
"""

from __future__ import annotations

import functools
import itertools
import os
import subprocess
import sys
import traceback
from pathlib import Path

import numpy as np
import pytest

dask = pytest.importorskip("dask")
db = pytest.importorskip("dask.bag")
distributed = pytest.importorskip("distributed")

import dask_loaders as loaders  # noqa: E402
import pass_models  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from shared import MODE, chosen  # noqa: E402

import popstats  # noqa: E402
import popstats.dask  # noqa: E402
from popstats._src.distributed.tasks import worker_info  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
#: one graph per config for the whole session: the workers compile it once
_MODELS: dict = {}


def model(config):
    """(inputs, outputs, options) of a pass model config, built once."""
    if config not in _MODELS:
        estimator, time, max_steps = config
        inputs, outputs = pass_models.model()
        options = dict(estimator=pass_models.estimator_spec(estimator), time=time,
                       max_steps=max_steps, mode=MODE)
        _MODELS[config] = (inputs, outputs, options)
    return _MODELS[config]


def reference(config, batches):
    inputs, outputs, options = model(config)
    return popstats.estimate(inputs, outputs, batches, progress=False, **options)


def on_cluster(config, partitions, client, **kwargs):
    inputs, outputs, options = model(config)
    return popstats.dask.estimate(inputs, outputs, partitions, client=client,
                                  progress=False, **options, **kwargs)


def parts(seed, cuts):
    """Loaders of ``loaders.batches(seed, 12)`` cut at ``cuts``."""
    edges = [0, *cuts, 12]
    return [functools.partial(loaders.part, seed, lo, hi)
            for lo, hi in itertools.pairwise(edges)]


def assert_same(got, want):
    assert list(got) == list(want)
    for name in want:
        a, b = got[name], want[name]
        assert a.n_batches == b.n_batches, name
        np.testing.assert_array_equal(a.coverage, b.coverage)
        np.testing.assert_allclose(a.value, b.value, rtol=1e-12, atol=0)
        # standard errors merge too (inf where under 2 batches, in both)
        assert a.standard_error is not None, name
        np.testing.assert_allclose(a.standard_error, b.standard_error, rtol=1e-9,
                                   atol=0, err_msg=name)
    # the batch sizes merged over partitions: the same warnings
    assert got.warnings == want.warnings


# --------------------------------------------------------------------------
# the result equals one pass here


#: every estimator, both time modes, a cap (all 12 under POPSTATS_LONG=1)
CLUSTER_CONFIGS = chosen(
    [c for c in pass_models.CONFIGS if c[2] is None]
    + [("pooled", "step", 3), ("ema", "step", 3)],
    [("mean", "step", None), ("weighted", "pooled", None),
     ("unbiased", "step", None), ("pooled", "step", 3), ("ema", "step", 3)])


@pytest.mark.parametrize("config", CLUSTER_CONFIGS, ids=str)
def test_every_estimator_equals_one_pass(dask_client, config):
    got = on_cluster(config, parts(1, [2, 3, 7, 9]), dask_client, split_every=2)
    assert_same(got, reference(config, loaders.batches(1, 12)))


@settings(max_examples=6, deadline=None)
@given(
    cuts=st.lists(st.integers(0, 12), min_size=0, max_size=7).map(sorted),
    split_every=st.integers(2, 5),
    config=st.sampled_from([("ema", "step", None), ("pooled", "pooled", 3),
                            ("unbiased", "step", None)]),
)
def test_any_partitioning_equals_one_pass(dask_client, cuts, split_every, config):
    # empty partitions (equal cuts) included; merged in partition order
    got = on_cluster(config, parts(2, cuts), dask_client, split_every=split_every)
    assert_same(got, reference(config, loaders.batches(2, 12)))


def test_a_bag_of_batches(dask_client):
    config = ("ema", "step", None)
    bag = db.from_sequence(range(12), npartitions=5).map(loaders.one, seed=3)
    got = on_cluster(config, bag, dask_client)
    assert_same(got, reference(config, loaders.batches(3, 12)))


def test_delayed_objects_and_futures(dask_client):
    config = ("weighted", "step", None)
    future = dask_client.submit(loaders.part, 4, 8, 12)
    load = dask.delayed(loaders.part)
    partitions = [load(4, 0, 5), load(4, 5, 8), future]
    got = on_cluster(config, partitions, dask_client)
    assert_same(got, reference(config, loaders.batches(4, 12)))


def test_groups_are_separate_statistic_sets(dask_client):
    inputs, outputs, options = model(("ema", "step", None))
    groups = {"day": parts(5, [4]),
              "night": db.from_sequence(range(12), npartitions=3).map(loaders.one,
                                                                       seed=6)}
    sets = popstats.dask.estimate_groups(inputs, outputs, groups, client=dask_client,
                                         progress=False, **options)
    assert list(sets) == ["day", "night"]
    assert_same(sets["day"], reference(("ema", "step", None), loaders.batches(5, 12)))
    assert_same(sets["night"], reference(("ema", "step", None),
                                         loaders.batches(6, 12)))


def test_a_state_continues_the_pass(dask_client):
    # "ema" depends on order: the given state's batches come first
    config = ("ema", "pooled", None)
    first, state = on_cluster(config, parts(7, [3])[:1], dask_client,
                              return_state=True)
    assert state.n_batches == 3
    assert_same(first, reference(config, loaders.batches(7, 12)[:3]))
    rest = [functools.partial(loaders.part, 7, 3, 8),
            functools.partial(loaders.part, 7, 8, 12)]
    got, final = on_cluster(config, rest, dask_client, state=state,
                            return_state=True)
    assert final.n_batches == 12
    assert_same(got, reference(config, loaders.batches(7, 12)))
    inputs, outputs, options = model(config)
    groups, states = popstats.dask.estimate_groups(
        inputs, outputs, {"a": rest}, states={"a": state}, client=dask_client,
        return_states=True, progress=False, **options)
    assert_same(groups["a"], got)
    assert states["a"].n_batches == 12


def test_a_state_of_another_pass_is_refused(dask_client):
    _, state = on_cluster(("mean", "step", None), parts(8, [])[:1], dask_client,
                          return_state=True)
    with pytest.raises(popstats.PopstatsError, match="another estimation pass"):
        on_cluster(("weighted", "step", None), parts(8, []), dask_client,
                   state=state)


# --------------------------------------------------------------------------
# compiled once per worker; Dask's diagnostics and popstats' progress


def test_each_worker_compiles_the_graph_once(dask_client):
    config = ("mean", "pooled", 3)
    before = dask_client.run(worker_info)
    for _ in range(2):  # a second call with the same graph compiles nothing
        on_cluster(config, parts(9, [1, 2, 4, 6, 8, 10]), dask_client)
    after = dask_client.run(worker_info)
    new = {w: {t: i for t, i in info.items() if t not in before.get(w, {})}
           for w, info in after.items()}
    tokens = {t for info in new.values() for t in info}
    assert len(tokens) == 1, new
    runs = [info[t] for info in new.values() for t in info]
    assert all(r["estimations"] == 1 and r["compiled"] == 1 for r in runs), runs
    assert sum(r["partitions"] for r in runs) == 14


def test_tasks_are_named_for_dask_diagnostics(dask_client):
    from distributed.utils import key_split

    with distributed.get_task_stream(client=dask_client) as stream:
        on_cluster(("mean", "step", None), parts(10, [3, 6, 9]), dask_client,
                   split_every=2)
    prefixes = {key_split(task["key"]) for task in stream.data}
    assert {"popstats-partition", "popstats-merge"} <= prefixes, prefixes


def test_progress_counts_partitions(dask_client, capsys):
    pytest.importorskip("tqdm")
    inputs, outputs, options = model(("mean", "step", None))
    popstats.dask.estimate(inputs, outputs, parts(11, [3, 6, 9]), client=dask_client,
                           progress=True, **options)
    err = capsys.readouterr().err
    assert "4/4" in err and "partition" in err, err


# --------------------------------------------------------------------------
# faults


def test_a_killed_worker_is_recomputed(dask_client, tmp_path):
    config = ("ema", "step", None)
    marker = tmp_path / "killed"
    partitions = parts(12, [2, 4, 6, 8, 10])
    partitions[3] = functools.partial(loaders.kill_once, str(marker), 12, 6, 8)
    got = on_cluster(config, partitions, dask_client)
    assert marker.exists()  # a worker process did die mid-pass
    assert_same(got, reference(config, loaders.batches(12, 12)))
    dask_client.wait_for_workers(2, timeout=120)


def test_a_failing_partition_is_named(dask_client):
    partitions = parts(13, [4, 8])
    partitions[1] = functools.partial(loaders.failing, "cannot read part-1.npz")
    with pytest.raises(popstats.PopstatsError) as info:
        on_cluster(("mean", "step", None), partitions, dask_client)
    message = str(info.value)
    assert message.startswith("popstats.dask.estimate(partitions=...): partition 1 "
                              "failed: OSError: cannot read part-1.npz"), message
    cause = info.value.__cause__
    assert isinstance(cause, OSError)
    frames = "".join(traceback.format_tb(cause.__traceback__))
    assert "dask_loaders.py" in frames and "failing" in frames, frames


def test_a_loader_returning_no_batches_is_named(dask_client):
    partitions = parts(15, [4])
    partitions.append(functools.partial(loaders.returns, None))
    with pytest.raises(popstats.PopstatsError) as info:
        on_cluster(("mean", "step", None), partitions, dask_client)
    message = str(info.value)
    assert "partition 2 failed" in message and "gave None" in message, message
    assert "return [batch]" in message and "batches=" not in message, message


def test_a_bad_batch_is_named_with_its_partition(dask_client):
    inputs, outputs, options = model(("mean", "step", None))
    groups = {"a": parts(14, [6]),
              "b": [functools.partial(loaders.bad_batch, 14)]}
    with pytest.raises(popstats.PopstatsError) as info:
        popstats.dask.estimate_groups(inputs, outputs, groups, client=dask_client,
                                      progress=False, **options)
    assert "partition 0 of group 'b' failed: PopstatsError" in str(info.value)
    assert "batch 2" in str(info.value)
    assert isinstance(info.value.__cause__, popstats.PopstatsError)


# --------------------------------------------------------------------------
# checks on the client, imports


def test_options_are_checked_before_anything_runs(dask_client):
    inputs, outputs, _ = model(("mean", "step", None))
    never = [functools.partial(loaders.failing, "must not run")]
    with pytest.raises(popstats.PopstatsError, match=r"estimate\(estimator=\.\.\.\)"):
        popstats.dask.estimate(inputs, outputs, never, client=dask_client,
                               estimator="nope")
    with pytest.raises(popstats.PopstatsError, match="not a loader"):
        popstats.dask.estimate(inputs, outputs, loaders.batches(0, 2),
                               client=dask_client)
    # an input given twice: refused here, not as PyTensor's error on a worker
    with pytest.raises(popstats.PopstatsError, match="given more than once"):
        popstats.dask.estimate([*inputs, inputs[0]], outputs, never,
                               client=dask_client)


def test_no_client():
    inputs, outputs, _ = model(("mean", "step", None))
    with pytest.raises(popstats.PopstatsError, match="no Dask client is running"):
        popstats.dask.estimate(inputs, outputs, parts(0, []))


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, check=False)


def test_import_popstats_does_not_import_dask():
    proc = _python("import sys, popstats; print(sorted(m for m in "
                   "('dask', 'distributed') if m in sys.modules))")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_popstats_dask_without_dask_says_what_to_install():
    proc = _python("import sys; sys.modules['distributed'] = None\n"
                   "try:\n    import popstats.dask\n"
                   "except ImportError as exc:\n    print(exc)")
    assert proc.returncode == 0, proc.stderr
    assert "pip install 'popstats[dask]'" in proc.stdout, proc.stdout


def test_the_docs_example_runs(tmp_path):
    # the script of docs/distributed.rst, "A first run", with its own
    # LocalCluster of two worker processes (FAST_COMPILE, as the doctests)
    text = (ROOT / "docs" / "distributed.rst").read_text()
    block = text.split("A first run\n")[1].split(".. code-block:: python\n")[1]
    lines = []
    for line in block.splitlines()[1:]:
        if line and not line.startswith("    "):
            break
        lines.append(line[4:])
    script = tmp_path / "example.py"
    script.write_text("\n".join(lines))
    env = {**os.environ, "PYTENSOR_FLAGS": "mode=FAST_COMPILE",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, check=False, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.strip().splitlines()
    assert out[-1] == "True", proc.stdout
    assert "'bn.var': shape (4,), steps (), in <graph>, 200 batches" in proc.stdout
