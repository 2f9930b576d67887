"""Generated models with one statistic left unmarked, for the batch
independence tests (``test_independence_generated.py``).

:func:`fake_statistics` gives every statistic of a graph a population value
without estimating (zeros of its shape): enough for :func:`popstats.rewrite`
and its structural analysis, which compiles nothing. :func:`build_unmarked`
builds a description with the marks of one label left out (every
application of it: an ``OpFromGraph`` body and copied branches share marks).
"""

from __future__ import annotations

from contextlib import contextmanager

import generated as gen
import numpy as np
import pytensor
import pytensor.tensor as pt

import popstats
from popstats._src.estimation.statistics import PopulationStatistics, Statistic
from popstats._src.rewrite.rewriter import known_shapes


def fake_statistics(outputs, fill: float = 0.0, size: int = 1) -> PopulationStatistics:
    """``fill`` (zeros) for every statistic of ``outputs`` (one step per loop
    level; ``size`` along axes of unknown length)."""
    stats = []
    graph = popstats.export(outputs)
    # outside loops the shape the graph computes (rewrite checks it; a 1
    # that would broadcast is refused), else 1; asked for those sites only
    # (inferring shapes through nested loops is most of the cost, unused)
    outside = [k for k, site in enumerate(graph.sites) if not site.depth]
    found_outside = known_shapes([graph.outputs[k] for k in outside]) if outside else []
    known = dict(zip(outside, found_outside, strict=True))
    for k, site in enumerate(graph.sites):
        steps = (1,) * site.time.count("step")
        found = known.get(k)
        own = found[len(found) - len(site.shape):] if found is not None else site.shape
        shape = tuple(size if s is None else s for s in (
            o if o is not None else s for o, s in zip(own, site.shape, strict=True)))
        stats.append(Statistic(site.name, site.label, site, np.full(
            steps + shape, fill, dtype=site.dtype), np.ones(steps, dtype=np.int64), 1))
    return PopulationStatistics(tuple(stats))


@contextmanager
def _unmarked(label: str):
    mark = popstats.bn_statistic

    def maybe(var, *args, **kwargs):
        if kwargs.get("label", args[0] if args else None) == label:
            return var
        return mark(var, *args, **kwargs)

    popstats.bn_statistic = maybe
    try:
        yield
    finally:
        popstats.bn_statistic = mark


def build_unmarked(desc: dict, label: str) -> gen.Model:
    """``gen.build(desc)`` with the statistic ``label`` computed, not marked."""
    with _unmarked(label):
        return gen.build(desc)


def labels(model: gen.Model) -> list[str]:
    """The labels of a built model's statistics, sorted."""
    return sorted({site.label for site in popstats.export(model.outputs).sites})


# --------------------------------------------------------------------------
# per-example graphs from a menu of PyTensor operations
# (tests/test_independence_generated.py): each operation maps a value of
# shape (batch, f), examples on axis 0, to one of shape (batch, f'); those
# of MIXING combine examples.

_RNG_SEED = 20


def _weight(*shape: int, name: str = "w"):
    rng = np.random.default_rng(_RNG_SEED + sum(shape))
    return pytensor.shared(rng.normal(size=shape) / np.sqrt(shape[0]), name=name)


def _even(h, f):
    return (h, f) if f % 2 == 0 else (pt.concatenate([h, h[:, :1]], axis=1), f + 1)


def _small(h, f):
    return (h[:, :4], 4) if f > 6 else (h, f)


def _rows(h):
    return h.shape[0]


def _blocks(h, f):
    """(batch, f) -> (batch, 2, f // 2) after making f even."""
    h, f = _even(h, f)
    return h.reshape((_rows(h), 2, f // 2)), f


def _conv_like(h, f):
    """Three shifted slices stacked and weighted: a convolution along features."""
    if f < 3:
        h, f = pt.concatenate([h, h, h], axis=1), 3 * f
    taps = pt.stack([h[:, :-2], h[:, 1:-1], h[:, 2:]], axis=2)
    return pt.dot(taps, _weight(3, name="taps")), f - 2


def _embed(h, f):
    table = _weight(7, 3, name="E")
    ids = pt.argmax(h, axis=1) % 7
    return pt.concatenate([h, table[ids]], axis=1), f + 3


def _outer(h, f):
    h, f = _small(h, f)
    return pt.matmul(h[:, :, None], h[:, None, :]).reshape((_rows(h), f * f)), f * f


def _det(h, f):
    h, f = _small(h, f)
    sq = pt.stack([h[:, :1] + 2.0, h[:, 1:2], h[:, 1:2] * 0.5, h[:, :1] - 2.0], axis=2)
    return pt.concatenate([h, pt.linalg.det(sq.reshape((_rows(h), 2, 2)))[:, None]],
                          axis=1), f + 1


def _feature_loop(h, f):
    """A Scan over the features (a running sum): per example."""
    out = pytensor.scan(lambda col, s: s + col, sequences=[h.T],
                        outputs_info=[pt.zeros_like(h[:, 0])], return_updates=False)
    return out.T, f


def _split_swap(h, f):
    h, f = _even(h, f)
    a, b = pt.split(h, [f // 2, f // 2], n_splits=2, axis=1)
    return pt.concatenate([b, a * 2.0], axis=1), f


#: name -> (batch, f) op
OPERATIONS = {
    # elementwise
    "tanh": lambda h, f: (pt.tanh(h), f),
    "gauss": lambda h, f: (pt.exp(-(h**2)), f),
    "relu": lambda h, f: (pt.maximum(h, 0.0), f),
    "sigmoid": lambda h, f: (pt.sigmoid(h), f),
    "scale": lambda h, f: (h * _weight(f, name="s") + 1.0, f),
    "where": lambda h, f: (pt.where(h > 0, h, 0.1 * h), f),
    "sqrt_abs": lambda h, f: (pt.sqrt(pt.abs(h) + 1.0), f),
    "clip": lambda h, f: (pt.clip(h, -1.0, 1.0), f),
    # reductions over features
    "center": lambda h, f: (h - h.mean(axis=1, keepdims=True), f),
    "max_norm": lambda h, f: (h / (pt.abs(h).max(axis=1, keepdims=True) + 1.0), f),
    "logsumexp": lambda h, f: (pt.concatenate(
        [h, pt.logsumexp(h, axis=1, keepdims=True)], axis=1), f + 1),
    "var_feat": lambda h, f: (h * h.var(axis=1)[:, None], f),
    "argmax_onehot": lambda h, f: (h * pt.eq(pt.arange(f)[None, :],
                                             pt.argmax(h, axis=1)[:, None]), f),
    "max_pool": lambda h, f: (_blocks(h, f)[0].max(axis=1), _blocks(h, f)[1] // 2),
    # products with weights
    "dot": lambda h, f: (pt.dot(h, _weight(f, 3)), 3),
    "matmul": lambda h, f: (h @ _weight(f, 5), 5),
    "tensordot": lambda h, f: (pt.tensordot(_blocks(h, f)[0], _weight(
        _blocks(h, f)[1] // 2, 3), axes=[[2], [0]]).reshape((_rows(h), 6)), 6),
    "einsum": lambda h, f: (pt.einsum("bi,ij->bj", h, _weight(f, 4)), 4),
    "per_example_matmul": lambda h, f: (pt.matmul(
        _blocks(h, f)[0], _blocks(h, f)[0].dimshuffle(0, 2, 1)).reshape(
        (_rows(h), 4)), 4),
    "det": _det,
    "outer": _outer,
    # shapes
    "reshape_back": lambda h, f: (_blocks(h, f)[0].reshape(
        (_rows(h), _blocks(h, f)[1])), _blocks(h, f)[1]),
    "reshape_wild": lambda h, f: (_even(h, f)[0].reshape((-1, 2, _even(h, f)[1] // 2))
                                  .reshape((_rows(h), _even(h, f)[1])), _even(h, f)[1]),
    "flatten": lambda h, f: (_blocks(h, f)[0].flatten(2), _blocks(h, f)[1]),
    "transpose_blocks": lambda h, f: (_blocks(h, f)[0].dimshuffle(0, 2, 1).reshape(
        (_rows(h), _blocks(h, f)[1])), _blocks(h, f)[1]),
    "repeat": lambda h, f: (pt.repeat(_small(h, f)[0], 2, axis=1), 2 * _small(h, f)[1]),
    "tile": lambda h, f: (pt.tile(_small(h, f)[0], (1, 2)), 2 * _small(h, f)[1]),
    "broadcast": lambda h, f: (pt.broadcast_to(
        _small(h, f)[0][:, None, :], (_rows(h), 2, _small(h, f)[1])).reshape(
        (_rows(h), 2 * _small(h, f)[1])), 2 * _small(h, f)[1]),
    "split_join_dims": lambda h, f: (pt.join_dims(pt.split_dims(
        _even(h, f)[0], (2, _even(h, f)[1] // 2), axis=1), start_axis=1, n_axes=2),
        _even(h, f)[1]),
    "concatenate": lambda h, f: (pt.concatenate([h, 2.0 * h], axis=1), 2 * f),
    "stack": lambda h, f: (pt.stack([h, h**2], axis=2).reshape((_rows(h), 2 * f)),
                           2 * f),
    "split_swap": _split_swap,
    "reverse_features": lambda h, f: (h[:, ::-1], f),
    "index_features": lambda h, f: (h[:, np.arange(f)[::-1].copy()], f),
    "take_features": lambda h, f: (pt.take(h, np.arange(f) % 2, axis=1), f),
    "set_feature": lambda h, f: (pt.set_subtensor(h[:, 0], 0.5), f),
    "inc_features": lambda h, f: (pt.inc_subtensor(h[:, :1], 1.0), f),
    "pad_features": lambda h, f: (pt.pad(h, ((0, 0), (1, 1)), mode="reflect"), f + 2),
    "embedding": _embed,
    # along features
    "softmax": lambda h, f: (pt.special.softmax(h, axis=1), f),
    "log_softmax": lambda h, f: (pt.special.log_softmax(h, axis=1), f),
    "cumsum": lambda h, f: (pt.cumsum(h, axis=1), f),
    "sort": lambda h, f: (pt.sort(h, axis=1), f),
    "conv1d": lambda h, f: (pt.signal.convolve1d(h, np.array([0.5, -1.0, 0.25])),
                            f + 2),
    "conv_like": _conv_like,
    "feature_loop": _feature_loop,
}

#: name -> (batch, f) op that combines examples
MIXING = {
    "batch_mean": lambda h, f: (h - h.mean(axis=0), f),
    "batch_max": lambda h, f: (h / (pt.abs(h).max(axis=0) + 1.0), f),
    "batch_cumsum": lambda h, f: (pt.cumsum(h, axis=0), f),
    "batch_sort": lambda h, f: (pt.sort(h, axis=0), f),
    "batch_softmax": lambda h, f: (pt.special.softmax(h, axis=0), f),
    "transpose_reduce": lambda h, f: (h + h.T.sum(axis=1), f),
    "gram": lambda h, f: (pt.dot(h, pt.dot(h.T, h)), f),
    "first_example": lambda h, f: (h - h[0], f),
    "reverse_examples": lambda h, f: (h[::-1], f),
    "roll_examples": lambda h, f: (pt.roll(h, 1, axis=0), f),
    "gather_examples": lambda h, f: (h[pt.argsort(h[:, 0])], f),
    "batch_std": lambda h, f: (h / (h.std(axis=0) + 1.0), f),
}


def menu_graph(x, names: list[str], mixing: tuple[int, str] | None = None):
    """A marked batch norm of ``x`` (batch, f), then the operations ``names``
    in turn (``mixing``: the operation MIXING[name] inserted before position
    k). Returns the output, (batch, f')."""
    mean = popstats.bn_statistic(x.mean(axis=0), label="bn.mean")
    var = popstats.bn_statistic(x.var(axis=0), label="bn.var")
    h, f = (x - mean) / pt.sqrt(var + 1e-5), x.type.shape[1]
    steps = [OPERATIONS[name] for name in names]
    if mixing is not None:
        steps.insert(mixing[0], MIXING[mixing[1]])
    for step in steps:
        h, f = step(h, f)
    return h
