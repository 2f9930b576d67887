"""pytensor-ml models for the recognition tests, with NumPy references.

Imported only where pytensor-ml is installed (``tests/test_pytensor_ml.py``
skips first, ``tests/ptml_worker.py`` runs only from that module). Every
builder sets its weights from a seed (BatchNorm's scale and shift too, so the
affine part is checked) and returns a :class:`Model`: the input, the output,
the batch-norm layers, and :meth:`Model.reference`, the NumPy inference
output at population statistics estimated with the default estimator (the
mean of the batch statistics; per step inside loops).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytensor
import pytensor.tensor as pt
from pytensor_ml.activations import ReLU
from pytensor_ml.layers import BatchNorm, Conv2D, Input, Linear, Recurrent, Sequential
from pytensor_ml.layers.recurrent import RecurrentCell

EPS = 1e-5


@dataclass
class Model:
    X: pt.TensorVariable
    y: pt.TensorVariable
    bns: list[BatchNorm]
    reference: Callable[[list[np.ndarray], np.ndarray], np.ndarray]
    stats: Callable[[list[np.ndarray]], dict[str, np.ndarray]] = field(default=None)
    shape: tuple[int, ...] = ()
    dtype: str = "float64"

    def batches(self, seed: int = 0, n: int = 4, batch: int = 16) -> list[np.ndarray]:
        return make_batches(self.shape, self.dtype, seed, n, batch)


def make_batches(shape: tuple[int, ...], dtype: str = "float64", seed: int = 0,
                 n: int = 4, batch: int = 16) -> list[np.ndarray]:
    """``n`` batches of ``batch`` rows of ``shape`` (``Model.batches``; also
    made on Dask workers by ``dask_loaders.ptml_part``)."""
    rng = np.random.default_rng(seed)
    return [rng.normal(1.0, 2.0, (batch, *shape)).astype(dtype) for _ in range(n)]


def _set(param, rng, scale=1.0, offset=0.0):
    value = param.get_value()
    param.set_value((offset + scale * rng.normal(size=value.shape)).astype(value.dtype))
    return param.get_value().astype("float64")


def _affine(bn: BatchNorm, rng) -> tuple[np.ndarray, np.ndarray]:
    return _set(bn.scale, rng, 0.3, 1.0), _set(bn.loc, rng, 0.5)


def _norm(h, mean, var, scale, loc):
    return (h - mean) / np.sqrt(var + EPS) * scale + loc


def _moments(h, axes):
    return h.mean(axis=axes), h.var(axis=axes)


def mlp(prefix: str = "bn", floatX: str = "float64", track: bool = True) -> Model:
    rng = np.random.default_rng(1)
    with pytensor.config.change_flags(floatX=floatX):
        X = Input("X", shape=(None, 8))
        fc = Linear("fc", n_in=8, n_out=16, bias=False)
        bn = BatchNorm(prefix, n_in=16, track_running_stats=track)
        out = Linear("out", n_in=16, n_out=3)
        y = Sequential(fc, bn, ReLU(), out)(X)
    W, W2, b2 = _set(fc.W, rng, 0.4), _set(out.W, rng, 0.4), _set(out.b, rng)
    scale, loc = _affine(bn, rng)

    def stats(batches):
        ms = [_moments(x.astype("float64") @ W, 0) for x in batches]
        return {f"{prefix}.mean": np.mean([m for m, _ in ms], 0),
                f"{prefix}.var": np.mean([v for _, v in ms], 0)}

    def reference(batches, x):
        s = stats(batches)
        h = _norm(x @ W, s[f"{prefix}.mean"], s[f"{prefix}.var"], scale, loc)
        return np.maximum(h, 0) @ W2 + b2

    return Model(X, y, [bn], reference, stats, (8,), floatX)


def mlp2() -> Model:
    """Two BatchNorm layers, the second on the first's (normalized) output.

    ``model.forward(x, bn)`` is the NumPy twin with a batch-norm callback
    ``bn(name, steps, h) -> (mean, var)`` (``tests/reference.py``'s rules):
    it gives the statistics consistent with the inference graph
    (``upstream="population"``) as well as today's.
    """
    rng = np.random.default_rng(7)
    X = Input("X", shape=(None, 6))
    fc1 = Linear("fc1", n_in=6, n_out=5, bias=False)
    bn1 = BatchNorm("bn1", n_in=5)
    fc2 = Linear("fc2", n_in=5, n_out=4, bias=False)
    bn2 = BatchNorm("bn2", n_in=4)
    out = Linear("out", n_in=4, n_out=3)
    y = Sequential(fc1, bn1, ReLU(), fc2, bn2, ReLU(), out)(X)
    W1, W2 = _set(fc1.W, rng, 0.5), _set(fc2.W, rng, 0.5)
    W3, b3 = _set(out.W, rng, 0.5), _set(out.b, rng)
    (s1, l1), (s2, l2) = _affine(bn1, rng), _affine(bn2, rng)

    def forward(x, bn):
        h = x.astype("float64") @ W1
        a = np.maximum(_norm(h, *bn("bn1", (), h), s1, l1), 0)
        h = a @ W2
        a = np.maximum(_norm(h, *bn("bn2", (), h), s2, l2), 0)
        return a @ W3 + b3

    model = Model(X, y, [bn1, bn2], None, None, (6,))
    model.forward = forward
    return model


def half(dtype: str = "float16") -> Model:
    """BatchNorm straight on a float16 input: statistics accumulate in float32."""
    rng = np.random.default_rng(2)
    X = Input("X", shape=(None, 4), dtype=dtype)
    bn = BatchNorm("half", n_in=4)
    y = bn(X)
    scale, loc = _affine(bn, rng)

    def stats(batches):
        ms = [_moments(x.astype("float32").astype("float64"), 0) for x in batches]
        return {"half.mean": np.mean([m for m, _ in ms], 0),
                "half.var": np.mean([v for _, v in ms], 0)}

    def reference(batches, x):
        s = stats(batches)
        z = ((x.astype("float64") - s["half.mean"]) / np.sqrt(s["half.var"] + EPS))
        return z.astype(dtype).astype("float64") * scale + loc

    return Model(X, y, [bn], reference, stats, (4,), dtype)


def conv() -> Model:
    """Channels last: one statistic per channel, over batch and both spatial axes."""
    rng = np.random.default_rng(3)
    X = Input("X", shape=(None, 6, 6, 2))
    conv_layer = Conv2D("conv", in_channels=2, out_channels=3, kernel_size=3)
    bn = BatchNorm("conv_bn", n_in=3)
    pre = conv_layer(X)
    y = bn(pre)
    _set(conv_layer.W, rng, 0.4)
    scale, loc = _affine(bn, rng)
    features = pytensor.function([X], pre, mode="FAST_COMPILE")

    def stats(batches):
        ms = [_moments(features(x), (0, 1, 2)) for x in batches]
        return {"conv_bn.mean": np.mean([m for m, _ in ms], 0),
                "conv_bn.var": np.mean([v for _, v in ms], 0)}

    def reference(batches, x):
        s = stats(batches)
        return _norm(features(x), s["conv_bn.mean"], s["conv_bn.var"], scale, loc)

    return Model(X, y, [bn], reference, stats, (6, 6, 2))


def reused() -> Model:
    """One BatchNorm object applied twice: the second reads the first's update."""
    rng = np.random.default_rng(4)
    X = Input("X", shape=(None, 4))
    fc = Linear("fc", n_in=4, n_out=4, bias=False)
    bn = BatchNorm("shared_bn", n_in=4)
    y = bn(ReLU()(bn(fc(X))))
    W = _set(fc.W, rng, 0.5)
    scale, loc = _affine(bn, rng)

    def both(batches):
        first, second = [], []
        for x in batches:
            h = x @ W
            m1, v1 = _moments(h, 0)
            a = np.maximum(_norm(h, m1, v1, scale, loc), 0)
            first.append((m1, v1))
            second.append(_moments(a, 0))
        return [tuple(np.mean(s, 0) for s in zip(*pairs, strict=True))
                for pairs in (first, second)]

    def reference(batches, x):
        (m1, v1), (m2, v2) = both(batches)
        a = np.maximum(_norm(x @ W, m1, v1, scale, loc), 0)
        return _norm(a, m2, v2, scale, loc)

    return Model(X, y, [bn], reference, None, (4,))


class BNCell(RecurrentCell):
    """An Elman cell with BatchNorm on its pre-activation (Cooijmans et al.)."""

    def __init__(self, name: str, n_in: int, n_hidden: int):
        self.n_hidden = n_hidden
        self.lin = Linear(f"{name}_lin", n_in=n_in + n_hidden, n_out=n_hidden,
                          bias=False)
        self.bn = BatchNorm(f"{name}_bn", n_in=n_hidden)

    def step(self, x_t, h):
        return (pt.tanh(self.bn(self.lin(pt.concatenate([x_t, h], axis=-1)))),)

    def initial_state(self, X):
        return (pt.zeros((X.shape[0], self.n_hidden)),)


def _run_cell(x, W, scale, loc, stats=None):
    """NumPy BN-RNN over (batch, time, features); batch statistics if stats is None."""
    h = np.zeros((x.shape[0], W.shape[1]))
    outs, seen = [], []
    for t in range(x.shape[1]):
        a = np.concatenate([x[:, t], h], axis=-1) @ W
        m, v = _moments(a, 0) if stats is None else stats[min(t, len(stats) - 1)]
        seen.append((m, v))
        h = np.tanh(_norm(a, m, v, scale, loc))
        outs.append(h)
    return np.stack(outs, 1), seen


def rnn(prefix: str = "cell") -> Model:
    rng = np.random.default_rng(5)
    X = Input("X", shape=(None, None, 3))
    cell = BNCell(prefix, 3, 4)
    y = Recurrent(cell, name=prefix)(X)
    W = _set(cell.lin.W, rng, 0.5)
    scale, loc = _affine(cell.bn, rng)

    def per_step(batches):
        runs = [_run_cell(x, W, scale, loc)[1] for x in batches]
        return [tuple(np.mean([r[t][k] for r in runs], 0) for k in (0, 1))
                for t in range(len(runs[0]))]

    def reference(batches, x):
        return _run_cell(x, W, scale, loc, per_step(batches))[0]

    model = Model(X, y, [cell.bn], reference, None, (5, 3))
    model.per_step = per_step
    return model


def nested() -> Model:
    """A user's loop over chunks, each chunk run through a BN-RNN: depth 2."""
    rng = np.random.default_rng(6)
    X = pt.tensor4("X")  # (chunks, batch, time, features)
    cell = BNCell("deep", 3, 4)
    layer = Recurrent(cell, name="deep")
    y = pytensor.scan(layer, sequences=[X], name="chunks", return_updates=False)
    W = _set(cell.lin.W, rng, 0.5)
    scale, loc = _affine(cell.bn, rng)

    def per_step(batches):
        runs = [[_run_cell(chunk, W, scale, loc)[1] for chunk in x] for x in batches]
        return [[tuple(np.mean([r[k][t][j] for r in runs], 0) for j in (0, 1))
                 for t in range(len(runs[0][0]))] for k in range(len(runs[0]))]

    def reference(batches, x):
        stats = per_step(batches)
        return np.stack([_run_cell(chunk, W, scale, loc, stats[k])[0]
                         for k, chunk in enumerate(x)])

    model = Model(X, y, [cell.bn], reference, None, (3, 3))
    model.batches = lambda seed=0, n=3, batch=8: [
        np.random.default_rng((seed, i)).normal(1.0, 2.0, (2, batch, 3, 3))
        for i in range(n)
    ]
    return model
