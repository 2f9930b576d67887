"""Partition loaders of the Dask tests: what runs on the workers.

They live in a module of their own (small imports) because Dask's worker
processes import them by name: a loader is sent as a reference
(``dask_loaders.part``), and each call makes its batches on the worker from
a seed, so the client never holds them. The batches are those of
``pass_models.make_batches`` (a masked loop model), or those of
``ptml_models.make_batches`` (:func:`ptml_part`, for pytensor-ml models).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pass_models


def batches(seed: int, n: int) -> list[dict]:
    """``n`` batches of the pass model (the same for the same seed)."""
    return pass_models.make_batches(seed, n)


def part(seed: int, lo: int, hi: int) -> list[dict]:
    """Batches ``lo`` to ``hi - 1`` of ``batches(seed, 12)``."""
    return batches(seed, 12)[lo:hi]


def one(index: int, seed: int = 0) -> dict:
    """Batch ``index`` of ``batches(seed, 12)`` (a ``dask.bag`` element)."""
    return batches(seed, 12)[index]


def failing(message: str) -> list[dict]:
    """A loader that cannot read its partition."""
    raise OSError(message)


def bad_batch(seed: int) -> list[dict]:
    """Two good batches, then one whose ``x`` has the wrong number of axes."""
    good = batches(seed, 2)
    return [*good, {"x": np.zeros((3, 2)), "mask": good[0]["mask"]}]


def kill_once(marker: str, seed: int, lo: int, hi: int) -> list[dict]:
    """Kill this worker process the first time (``marker`` records it)."""
    path = Path(marker)
    if not path.exists():
        path.write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return part(seed, lo, hi)


def returns(value):
    """A loader returning ``value`` (not batches, for the error test)."""
    return value


def ptml_part(shape: tuple[int, ...], seed: int, n: int, lo: int, hi: int
              ) -> list[dict]:
    """Batches ``lo`` to ``hi - 1`` of ``ptml_models.make_batches(shape, seed=seed,
    n=n)``, keyed ``"X"`` (imported here: only where pytensor-ml is installed)."""
    import ptml_models

    made = ptml_models.make_batches(shape, seed=seed, n=n)
    return [{"X": x} for x in made[lo:hi]]


def noisy(seed: int, n: int, rows: int = 4, cols: int = 3) -> list[dict]:
    """``n`` batches of ``rows`` x ``cols`` from ``seed``, plus fresh noise at
    every call (an augmenting loader: never the same data twice)."""
    rng, fresh = np.random.default_rng(seed), np.random.default_rng()
    shape = (rows, cols)
    return [{"x": rng.normal(size=shape) + 1e-6 * fresh.normal(size=shape)}
            for _ in range(n)]


def table(seed: int, n: int, rows: int = 4, cols: int = 3) -> list[dict]:
    """The same batches as :func:`noisy` without the noise."""
    rng = np.random.default_rng(seed)
    return [{"x": rng.normal(size=(rows, cols))} for _ in range(n)]
