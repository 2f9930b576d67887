"""The model, batches and pass options of the split-pass tests.

Shared by ``test_pass_machine.py`` (in-process runs, merges, checkpoints,
interruptions and resumes in random order) and ``pass_worker.py`` (a
checkpointed pass run as a real process, killed with SIGKILL and resumed),
so that both build exactly the same estimation pass.

The model is a loop over masked sequences: a (mean, var) pair and a max
with the mask's count (steps where the mask leaves nothing are not reached,
so coverage varies per step), and a mean outside the loop. Every estimator,
both time modes and a ``max_steps`` cap are combined in :data:`CONFIGS`.
"""

from __future__ import annotations

import numpy as np
import pytensor
import pytensor.tensor as pt

import popstats
from popstats import Estimator

F = 2
EPS = 1e-3
ESTIMATORS = ("mean", "weighted", "unbiased", "pooled", "ema")
#: (estimator, time, max_steps) of every pass the tests try
CONFIGS = tuple(
    (estimator, time, max_steps)
    for estimator in ESTIMATORS
    for time in ("step", "pooled")
    for max_steps in (None, 3)
)


def estimator_spec(name: str) -> dict:
    """The ``estimator=`` of a config: ``name`` for every statistic it fits.

    ``"pooled"`` needs a role; the max (no role) is then ``"weighted"``.
    """
    spec = Estimator("ema", momentum=0.3) if name == "ema" else name
    return {"s.max": "weighted" if name == "pooled" else spec, "*": spec}


def model():
    """Inputs and outputs of the loop model (fresh variables each call)."""
    x = pt.tensor3("x")  # (time, batch, feature)
    mask = pt.matrix("mask")  # (time, batch)

    def step(xt, mt, h):
        c = mt.sum()
        w = mt[:, None]
        safe = pt.maximum(c, 1.0)
        mean = (xt * w).sum(0) / safe
        var = (((xt - mean) ** 2) * w).sum(0) / safe
        m = popstats.bn_statistic(mean, "s.mean", role="mean", group="s", count=c)
        v = popstats.bn_statistic(var, "s.var", role="var", group="s", count=c)
        mx = popstats.bn_statistic(pt.switch(w > 0, xt, -1e9).max(0), "s.max",
                                   count=c)
        return h + (xt - m) / pt.sqrt(v + EPS) + mx

    n = x.shape[1]
    outer = popstats.bn_statistic(x.mean((0, 1)), "o.mean", role="mean", group="o",
                                  count=n * x.shape[0])
    h = pytensor.scan(step, sequences=[x, mask], outputs_info=[pt.zeros_like(x[0])],
                      return_updates=False)
    return [x, mask], h + outer


def estimation(config, mode: str = "FAST_COMPILE",
               accumulate: str = "host") -> popstats.Estimation:
    estimator, time, max_steps = config
    inputs, outputs = model()
    return popstats.Estimation(inputs, outputs, estimator=estimator_spec(estimator),
                               time=time, max_steps=max_steps, mode=mode,
                               accumulate=accumulate)


#: the compiled passes of :func:`shared_estimation`, for the whole session
_SHARED: dict = {}


def shared_estimation(config, mode: str = "FAST_COMPILE",
                      accumulate: str = "host") -> popstats.Estimation:
    """:func:`estimation`, compiled once per (config, mode, accumulation) for
    the whole session: ``test_accumulate_graph.py`` compares each config's
    two accumulations, ``test_pass_machine.py`` draws them again (an
    Estimation serves any number of passes; a test that makes one fail or
    re-enter builds its own)."""
    key = (config, mode, accumulate)
    if key not in _SHARED:
        _SHARED[key] = estimation(config, mode, accumulate)
    return _SHARED[key]


def make_batches(seed: int, n: int) -> list[dict]:
    """``n`` batches of 1 to 6 steps; each step has 0 or at least 2 elements.

    Sequences come in pairs of one length (so a reached step has at least
    two elements, as ``"unbiased"`` needs); some batches end with a fully
    masked step (not reached).
    """
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(n):
        pairs = int(rng.integers(1, 3))
        lengths = np.repeat(rng.integers(1, 6, size=pairs), 2)
        steps = int(lengths.max()) + int(rng.integers(0, 2))
        mask = (np.arange(steps)[:, None] < lengths[None, :]).astype("float64")
        x = rng.normal(0.5, 1.5, (steps, len(lengths), F))
        x += 2.0 * np.arange(steps)[:, None, None]  # steps apart: time pooling shows
        batches.append({"x": x, "mask": mask})
    return batches
