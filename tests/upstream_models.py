"""Models for the ``upstream="population"`` tests, each with a NumPy twin.

Every batch norm marks a mean/var pair (roles, a group, the element count),
so every estimator applies. A :class:`Model` holds the graph, its batches
and ``forward(batch, bn)``: the same maths in NumPy, calling ``bn(group,
steps, elements)`` at each batch norm and normalizing with the (mean, var)
it returns (``reference.MomentRule`` says what that is: the batch's own
moments, or a population value).

* :func:`mlp` -- a chain of BN layers (``layers`` deep), or a DAG of them;
* :func:`rnn` -- a two-layer BN-RNN in one Scan: BN on input-to-hidden and
  on hidden-to-hidden, per step (Cooijmans et al.'s placement);
* :func:`nested` -- a BN loop inside a BN loop (per cell statistics).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pytensor
import pytensor.tensor as pt
from reference import EPS
from shared import Interrupted, bn_pair

import popstats


@dataclass
class Model:
    inputs: list
    outputs: list
    batches: list
    forward: Callable
    #: the NumPy inference output: forward(batch, bn) -> outputs
    infer: Callable | None = None
    depth: int = 0  # statistics on the longest path to one (feed-forward)
    extra: dict = field(default_factory=dict)


def mark_pair(a, group, axis=0):
    """A batch norm's statistics of ``a`` over ``axis``: a marked mean/var pair."""
    return bn_pair(a, group, axis, EPS)


def _norm(a, moments):
    mean, var = moments
    return (a - mean) / np.sqrt(var + EPS)


def _weights(seed, **shapes):
    rng = np.random.default_rng(seed)
    return {k: rng.normal(0.0, 0.7, s) for k, s in shapes.items()}


# --------------------------------------------------------------------------
# Feed-forward
# --------------------------------------------------------------------------


def mlp(layers: int = 3, reads: Sequence[Sequence[int]] | None = None,
        sizes: Sequence[int] = (4, 7, 3, 6, 5), seed: int = 0) -> Model:
    """BN layers ``l0 ... l{layers-1}``; layer i reads the sum of the
    outputs of the layers ``reads[i]`` (-1: the input x; default: a chain).

    Layer i: ``a = h @ W + b``, ``out = tanh(g * BN(a) + beta)``.
    """
    reads = [[i - 1] for i in range(layers)] if reads is None else list(reads)
    rng = np.random.default_rng(seed)
    width = 3
    p = {}
    for i in range(layers):
        p.update({f"W{i}": rng.normal(0.0, 0.8, (width, width)),
                  f"b{i}": rng.normal(0.0, 0.5, width),
                  f"g{i}": rng.normal(1.0, 0.3, width),
                  f"beta{i}": rng.normal(0.0, 0.3, width)})
    shared = {k: pytensor.shared(v, name=k) for k, v in p.items()}
    x = pt.matrix("x")
    outs = {-1: x}
    for i in range(layers):
        h = sum(outs[j] for j in reads[i])
        a = pt.dot(h, shared[f"W{i}"]) + shared[f"b{i}"]
        outs[i] = pt.tanh(shared[f"g{i}"] * mark_pair(a, f"l{i}") + shared[f"beta{i}"])
    # every layer's output counts (a DAG may leave some unread)
    y = sum(outs[i] for i in range(layers))

    def forward(batch, bn):
        vals = {-1: batch["x"]}
        for i in range(layers):
            h = sum(vals[j] for j in reads[i])
            a = h @ p[f"W{i}"] + p[f"b{i}"]
            vals[i] = np.tanh(p[f"g{i}"] * _norm(a, bn(f"l{i}", (), a)) + p[f"beta{i}"])
        return [sum(vals[i] for i in range(layers))]

    depth_of: dict[int, int] = {-1: 0}
    for i in range(layers):
        depth_of[i] = 1 + max(depth_of[j] for j in reads[i])
    data = np.random.default_rng(seed + 100)
    batches = [{"x": data.normal(0.5, 1.5, (b, width))} for b in sizes]
    return Model([x], [y], batches, forward, forward,
                 depth=max(depth_of.values()), extra={"params": shared})


# --------------------------------------------------------------------------
# Recurrent
# --------------------------------------------------------------------------


def rnn(lengths: Sequence[int] = (3, 4, 2), sizes: Sequence[int] = (4, 5, 3),
        seed: int = 1, gain: float = 1.0) -> Model:
    """Two BN-RNN layers in one Scan over x (T, B, 2), initial state h0 (B, 3).

    ``h1 = tanh(BN_x1(x_t Wx1) + BN_h1(h1 Wh1) + b1)``,
    ``h2 = tanh(BN_x2(h1 Wx2) + BN_h2(h2 Wh2) + b2)``: four mean/var pairs
    per step (``x1, h1, x2, h2``); outputs both layers' states. ``gain``
    scales the hidden-to-hidden weights (how strongly a step reads the last).
    """
    p = _weights(seed, Wx1=(2, 3), Wh1=(3, 3), b1=(3,), Wx2=(3, 3), Wh2=(3, 3),
                 b2=(3,))
    p["Wh1"], p["Wh2"] = gain * p["Wh1"], gain * p["Wh2"]
    shared = [pytensor.shared(p[k], name=k) for k in sorted(p)]
    names = sorted(p)
    x = pt.tensor3("x")
    h0 = pt.matrix("h0")

    def step(xt, h1, h2, *weights):
        w = dict(zip(names, weights, strict=True))
        h1 = pt.tanh(mark_pair(pt.dot(xt, w["Wx1"]), "x1")
                     + mark_pair(pt.dot(h1, w["Wh1"]), "h1") + w["b1"])
        h2 = pt.tanh(mark_pair(pt.dot(h1, w["Wx2"]), "x2")
                     + mark_pair(pt.dot(h2, w["Wh2"]), "h2") + w["b2"])
        return h1, h2

    hs1, hs2 = pytensor.scan(step, sequences=[x], outputs_info=[h0, h0],
                             non_sequences=shared, return_updates=False)

    def forward(batch, bn):
        h1 = h2 = batch["h0"]
        out1, out2 = [], []
        for t, xt in enumerate(batch["x"]):
            u, v = xt @ p["Wx1"], h1 @ p["Wh1"]
            h1 = np.tanh(_norm(u, bn("x1", (t,), u)) + _norm(v, bn("h1", (t,), v))
                         + p["b1"])
            u, v = h1 @ p["Wx2"], h2 @ p["Wh2"]
            h2 = np.tanh(_norm(u, bn("x2", (t,), u)) + _norm(v, bn("h2", (t,), v))
                         + p["b2"])
            out1.append(h1)
            out2.append(h2)
        return [np.stack(out1), np.stack(out2)]

    data = np.random.default_rng(seed + 100)
    batches = [{"x": data.normal(0.5, 1.5, (t, b, 2)),
                "h0": data.normal(0.0, 0.8, (b, 3))}
               for t, b in zip(lengths, sizes, strict=True)]
    return Model([x, h0], [hs1, hs2], batches, forward, forward)


# --------------------------------------------------------------------------
# Nested loops
# --------------------------------------------------------------------------


def nested(shapes: Sequence[tuple[int, int, int]] = ((2, 3, 4), (3, 2, 3),
                                                     (1, 4, 5), (3, 3, 4)),
           seed: int = 2) -> Model:
    """x (T1, T2, B, 2): an inner BN loop (pair ``in`` per (t1, t2)) started
    from the outer state, then a BN on its last state (pair ``out`` per t1).

    The shapes differ between batches, so some cells are reached by few
    batches and (1, 3), (2, 3) by none.
    """
    p = _weights(seed, Wx=(2, 3), Wh=(3, 3), Wo=(3, 3))
    Wx, Wh, Wo = (pytensor.shared(p[k], name=k) for k in ("Wx", "Wh", "Wo"))
    x = pt.tensor4("x4")

    def inner(xt, g, Wx, Wh):
        return pt.tanh(mark_pair(pt.dot(xt, Wx) + pt.dot(g, Wh), "in"))

    def outer(xt, h, Wx, Wh, Wo):
        gs = pytensor.scan(inner, sequences=[xt], outputs_info=[h],
                           non_sequences=[Wx, Wh], return_updates=False)
        return pt.tanh(mark_pair(pt.dot(gs[-1], Wo), "out")), gs

    hs, gss = pytensor.scan(outer, sequences=[x],
                            outputs_info=[pt.zeros((x.shape[2], 3)), None],
                            non_sequences=[Wx, Wh, Wo], return_updates=False)

    def forward(batch, bn):
        xs = batch["x4"]
        h = np.zeros((xs.shape[2], 3))
        hs, gss = [], []
        for t1 in range(xs.shape[0]):
            g, gs = h, []
            for t2 in range(xs.shape[1]):
                a = xs[t1, t2] @ p["Wx"] + g @ p["Wh"]
                g = np.tanh(_norm(a, bn("in", (t1, t2), a)))
                gs.append(g)
            b = g @ p["Wo"]
            h = np.tanh(_norm(b, bn("out", (t1,), b)))
            hs.append(h)
            gss.append(np.stack(gs))
        return [np.stack(hs), np.stack(gss)]

    data = np.random.default_rng(seed + 100)
    batches = [{"x4": data.normal(0.5, 1.5, (t1, t2, b, 2))} for t1, t2, b in shapes]
    return Model([x], [hs, gss], batches, forward, forward)


# --------------------------------------------------------------------------
# Checks shared by the test modules
# --------------------------------------------------------------------------


def tables(stats) -> dict[str, np.ndarray]:
    """name -> population table of a PopulationStatistics."""
    return {name: stat.value for name, stat in stats.items()}


def assert_statistics(stats, want: dict, tol: float = 1e-12) -> None:
    """``stats`` holds exactly the statistics of ``want`` (name -> (value,
    coverage)), values within ``tol`` (absolute and relative), same coverage."""
    assert set(stats) == set(want)
    for name, (value, coverage) in want.items():
        got = stats[name]
        assert got.value.shape == value.shape, name
        np.testing.assert_allclose(got.value, value, rtol=tol, atol=tol, err_msg=name)
        np.testing.assert_array_equal(got.coverage, coverage, err_msg=name)


def largest_relative_change(old: dict, new: dict) -> float:
    """As the passes measure it: per statistic the largest change relative
    to the largest magnitude of the old value; the largest of those."""
    worst = 0.0
    for name, value in new.items():
        value = value[0] if isinstance(value, tuple) else value
        before = old[name][0] if isinstance(old[name], tuple) else old[name]
        scale = np.max(np.abs(before))
        worst = max(worst, np.max(np.abs(value - before)) / (scale or 1.0))
    return float(worst)


def popstats_pass(model: Model, stats, mode, **options):
    """One more pass of popstats' own over ``model.batches``: the estimation
    graph of the inference graph of ``stats`` (every statistic upstream at
    its value in ``stats``), built as the passes build it."""
    from popstats._src.estimation.options import EstimationOptions
    from popstats._src.estimation.plan import EstimationPlan
    from popstats._src.upstream.inference_export import inference_export

    opts = EstimationOptions.check("estimate", {"mode": mode, **options})
    exported = inference_export(model.outputs, stats, opts.time, "estimate")
    exported.hold(stats, "estimate")
    run = popstats.Estimation.of(EstimationPlan(
        model.inputs, model.outputs, opts, "estimate", graph=exported.graph,
        upstream="population:check"))
    return run.finalize(run.run(model.batches))


class Loader:
    """A re-iterable loader of fixed batches, without len(): counts its
    passes (``epochs``) and the batches it gave, and may raise
    ``Interrupted`` before batch ``stop[1]`` of pass ``stop[0]``."""

    def __init__(self, batches, stop=None):
        self.batches, self.stop, self.epochs, self.given = batches, stop, 0, 0

    def __iter__(self):  # counts every call, iterated or not
        self.epochs += 1
        return self._epoch(self.epochs - 1)

    def _epoch(self, epoch):
        for i, batch in enumerate(self.batches):
            if self.stop == (epoch, i):
                raise Interrupted(f"stopped in pass {epoch} before batch {i}")
            self.given += 1
            yield batch


class SizedLoader(Loader):
    """A :class:`Loader` with len() (as a progress bar wants)."""

    def __len__(self) -> int:
        return len(self.batches)
