"""pytensor-ml models through popstats.dask and checkpoints.

Skipped where pytensor-ml is not installed (the Python 3.11 line). The
models are those of ``ptml_models.py`` with nothing marked: an MLP with a
``BatchNorm`` and a ``Recurrent`` model with a ``BatchNorm`` in its cell
(per-step statistics). A pass on the module's Dask cluster (``dask_client``
in ``conftest.py``: 2 worker processes, the batches made on the workers by
``dask_loaders.ptml_part``), and a checkpointed pass interrupted here and
resumed in a fresh process that built other models first (so that its loop
bodies intern ops under other names), must equal the plain
:func:`popstats.estimate` of this process to 1e-12 relative, and the NumPy
statistics of ``ptml_models.py``.
"""

from __future__ import annotations

import functools
import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pytensor_ml")

import popstats

sys.path.insert(0, str(Path(__file__).parent))
import dask_loaders as loaders
import ptml_models as models
from shared import Interrupted, interrupted_after

WORKER = Path(__file__).with_name("ptml_worker.py")
FAST = "FAST_COMPILE"
BUILD = {"mlp": models.mlp, "rnn": models.rnn}
N = 8  # batches of 16 rows (sequences of 5 steps for the RNN)


def _estimate(model, batches, **options):
    return popstats.estimate([model.X], model.y, batches, mode=FAST, progress=False,
                             **options)


def _feed(model):
    return [{"X": x} for x in model.batches(n=N)]


def _numpy(kind, model):
    """The NumPy statistics (per step for the RNN), by statistic name."""
    arrays = model.batches(n=N)
    if kind == "mlp":
        return model.stats(arrays)
    steps = model.per_step(arrays)
    return {"cell_bn.mean": np.array([m for m, _ in steps]),
            "cell_bn.var": np.array([v for _, v in steps])}


def _assert_equal(got, want, reference):
    assert list(got) == list(want) and sorted(got) == sorted(reference)
    for name in want:
        assert got[name].n_batches == want[name].n_batches == N
        np.testing.assert_array_equal(got[name].coverage, want[name].coverage)
        np.testing.assert_allclose(got[name].value, want[name].value, rtol=1e-12,
                                   atol=0)
        np.testing.assert_allclose(got[name].value, reference[name], rtol=1e-10,
                                   atol=1e-12)


@pytest.mark.parametrize("kind", sorted(BUILD))
def test_a_dask_pass_equals_one_pass_and_numpy(dask_client, kind):
    pytest.importorskip("distributed")
    import popstats.dask

    model = BUILD[kind]()
    edges = [0, 3, 4, 7, N]  # uneven partitions, merged two at a time
    partitions = [functools.partial(loaders.ptml_part, model.shape, 0, N, lo, hi)
                  for lo, hi in itertools.pairwise(edges)]
    got = popstats.dask.estimate([model.X], model.y, partitions, client=dask_client,
                                 mode=FAST, progress=False, split_every=2)
    _assert_equal(got, _estimate(model, _feed(model)), _numpy(kind, model))


# (resumed in this process: test_pass_machine.py, for every estimator)
@pytest.mark.parametrize("kind", sorted(BUILD))
def test_a_checkpoint_resumes_in_another_process(kind, tmp_path):
    """Interrupted here; resumed by a process that built other models first."""
    model = BUILD[kind]()
    batches = _feed(model)
    path = tmp_path / "pass.npz"
    with pytest.raises(Interrupted):
        _estimate(model, interrupted_after(batches, 3), checkpoint=path,
                  checkpoint_every=1)
    out = tmp_path / "stats.npz"
    proc = subprocess.run(
        [sys.executable, str(WORKER), "resume", kind, str(path), str(out), str(N)],
        capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report == {"counted_before": 3, "counted_after": N}
    _assert_equal(popstats.load(out), _estimate(model, batches), _numpy(kind, model))
