"""Independent NumPy references for popstats' behaviour tests.

Nothing here imports popstats. Three parts:

* the models of ``conftest.py`` written again in plain NumPy, with every
  batch statistic routed through a callback ``bn(name, steps, value)``:
  :class:`Recorder` (training: keep the batch value, return it) or
  :class:`Population` (inference: return the population value at the
  clamped step indices);
* :func:`reference_estimate`, the estimate as specified: per time cell the
  mean over the batches that reached it, coverage counts, and the fill rule
  for cells no batch reached;
* graph inspection helpers (walk a PyTensor graph through Scan and
  OpFromGraph inner graphs) for structural checks.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence

import numpy as np

EPS = 1e-3

# --------------------------------------------------------------------------
# Statistic callbacks
# --------------------------------------------------------------------------


class Recorder:
    """Training mode: record each batch statistic at its step indices."""

    def __init__(self) -> None:
        self.cells: dict[str, dict[tuple[int, ...], np.ndarray]] = {}

    def __call__(self, name: str, steps: tuple[int, ...], value: np.ndarray):
        cells = self.cells.setdefault(name, {})
        if steps in cells:
            raise AssertionError(f"statistic {name} recorded twice at {steps}")
        cells[steps] = np.array(value, dtype=np.float64)
        return value

    def stacked(self, name: str) -> np.ndarray:
        """The recorded values as one array, time axes first (rectangular)."""
        cells = self.cells[name]
        some = next(iter(cells))
        depth = len(some)
        if depth == 0:
            return cells[()]
        extent = tuple(max(idx[k] for idx in cells) + 1 for k in range(depth))
        out = np.zeros(extent + cells[some].shape)
        for idx in itertools.product(*map(range, extent)):
            if idx not in cells:
                raise AssertionError(f"{name}: no value at step {idx}")
            out[idx] = cells[idx]
        return out

    def all_stacked(self) -> dict[str, np.ndarray]:
        return {name: self.stacked(name) for name in self.cells}


class Population:
    """Inference mode: the population value at ``min(t, T - 1)`` per axis."""

    def __init__(self, values: dict[str, np.ndarray]):
        self.values = values

    def __call__(self, name: str, steps: tuple[int, ...], value: np.ndarray):
        pop = np.asarray(self.values[name])
        for t in steps:
            pop = pop[min(t, pop.shape[0] - 1)]
        if pop.shape != np.shape(value):
            raise AssertionError(f"{name}: population {pop.shape} vs {np.shape(value)}")
        return pop


# --------------------------------------------------------------------------
# The estimate
# --------------------------------------------------------------------------


def reference_estimate(
    per_batch: Sequence[np.ndarray], depth: int
) -> tuple[np.ndarray, np.ndarray]:
    """Population value and coverage from the per-batch statistics.

    ``per_batch[b]`` has ``depth`` leading time axes whose lengths may differ
    between batches. A cell's value is the mean over the batches whose
    arrays contain the cell. Cells no batch reached are filled: first along
    the innermost time axis (from the nearest earlier step that has a value),
    then along the next axis outwards, and so on.
    """
    stat_shape = per_batch[0].shape[depth:]
    extent = tuple(max(v.shape[k] for v in per_batch) for k in range(depth))
    sums: dict[tuple[int, ...], np.ndarray] = {}
    counts: dict[tuple[int, ...], int] = {}
    for v in per_batch:
        for idx in itertools.product(*(range(n) for n in v.shape[:depth])):
            sums[idx] = sums.get(idx, 0.0) + v[idx]
            counts[idx] = counts.get(idx, 0) + 1
    raw = {idx: sums[idx] / counts[idx] for idx in sums}

    def filled(idx: tuple[int, ...], axis: int):
        # value after the passes over axes >= ``axis`` (None: still a hole)
        if axis == depth:
            return raw.get(idx)
        value = filled(idx, axis + 1)
        step = idx[axis] - 1
        while value is None and step >= 0:
            value = filled((*idx[:axis], step, *idx[axis + 1 :]), axis + 1)
            step -= 1
        return value

    value = np.zeros(extent + stat_shape)
    coverage = np.zeros(extent, dtype=np.int64)
    for idx in itertools.product(*map(range, extent)):
        coverage[idx] = counts.get(idx, 0)
        got = filled(idx, 0)
        if got is not None:
            value[idx] = got
    return value, coverage


def clamp_rows(pop: np.ndarray, steps: int) -> np.ndarray:
    """``pop[min(t, T - 1)]`` for t < steps along the first axis."""
    return pop[np.minimum(np.arange(steps), pop.shape[0] - 1)]


# --------------------------------------------------------------------------
# NumPy models (same maths as the PyTensor models of conftest.py)
# --------------------------------------------------------------------------

BN = Callable[[str, tuple[int, ...], np.ndarray], np.ndarray]


def normalize(a, mean, var):
    return (a - mean) / np.sqrt(var + EPS)


def ff_model(p, v, bn: BN, prefix="l"):
    """Two-layer BN MLP: x (B, 3) -> (B, 2)."""
    x = v["x"]
    h1 = x @ p["W1"] + p["b1"]
    m1 = bn(f"{prefix}1.mean", (), h1.mean(0))
    v1 = bn(f"{prefix}1.var", (), h1.var(0))
    a1 = np.tanh(p["g1"] * normalize(h1, m1, v1))
    h2 = a1 @ p["W2"] + p["b2"]
    m2 = bn(f"{prefix}2.mean", (), h2.mean(0))
    v2 = bn(f"{prefix}2.var", (), h2.var(0))
    return [normalize(h2, m2, v2)]


def rnn_model(p, v, bn: BN, label="rnn"):
    """BN recurrent net over x (T, B, 2): mean and var per step."""
    x = v["x"]
    h = np.zeros((x.shape[1], p["Wh"].shape[0]))
    hs = []
    for t in range(x.shape[0]):
        a = x[t] @ p["Wx"] + h @ p["Wh"]
        m = bn(f"{label}.mean", (t,), a.mean(0))
        s = bn(f"{label}.var", (t,), a.var(0))
        h = np.tanh(p["g"] * normalize(a, m, s))
        hs.append(h)
    return [np.stack(hs)]


def centered_rnn(x, h, p, bn: BN, label, steps=None, backwards=False):
    """Mean-only recurrent step over x (T, B, F); returns states (T, B, H)."""
    order = range(x.shape[0] - 1, -1, -1) if backwards else range(x.shape[0])
    hs = []
    for t, i in enumerate(order):
        a = x[i] @ p["Wx"] + h @ p["Wh"]
        h = np.tanh(a - bn(label, (*(steps or ()), t), a.mean(0)))
        hs.append(h)
    return np.stack(hs)


def sit_sot_model(p, v, bn: BN):
    x = v["xs"]
    return [centered_rnn(x, np.zeros((x.shape[1], 3)), p, bn, "sit.mean")]


def backwards_model(p, v, bn: BN):
    x = v["xb"]
    h0 = np.zeros((x.shape[1], 3))
    return [centered_rnn(x, h0, p, bn, "back.mean", backwards=True)]


def truncate_model(p, v, bn: BN):
    x = v["xt"]
    return [centered_rnn(x, np.zeros((x.shape[1], 3)), p, bn, "trunc.mean")]


def mit_sot_model(p, v, bn: BN):
    """h_t = tanh(c(x_t Wx + h_{t-1} Wh + h_{t-2} Wg)), taps [-2, -1]."""
    x, init = v["xm"], v["hm0"]
    older, prev = init[0], init[1]
    hs = []
    for t in range(x.shape[0]):
        a = x[t] @ p["Wx"] + prev @ p["Wh"] + older @ p["Wg"]
        h = np.tanh(a - bn("mit.mean", (t,), a.mean(0)))
        older, prev = prev, h
        hs.append(h)
    return [np.stack(hs)]


def rng_model(p, v, bn: BN):
    """Deterministic part of the loop with a random generator inside."""
    x = v["xr"]
    return [centered_rnn(x, np.zeros((x.shape[1], 3)), p, bn, "rng.mean")]


def while_model(p, v, bn: BN):
    """Runs min(n, T) steps (``until(t + 1 >= n)``)."""
    x, n = v["xw"], int(v["n"])
    steps = max(1, min(n, x.shape[0]))
    h = np.zeros((x.shape[1], 3))
    return [centered_rnn(x[:steps], h, p, bn, "while.mean")]


def n_steps_model(p, v, bn: BN):
    """No sequence: h <- tanh(c(c Wx + h Wh)) for n steps."""
    c, n = v["c"], int(v["k"])
    h = np.zeros((c.shape[0], 3))
    hs = []
    for t in range(n):
        a = c @ p["Wx"] + h @ p["Wh"]
        h = np.tanh(a - bn("nsteps.mean", (t,), a.mean(0)))
        hs.append(h)
    return [np.stack(hs)]


def two_scans_model(p, v, bn: BN):
    x = v["x2"]
    h0 = np.zeros((x.shape[1], 3))
    pa = {"Wx": p["Wxa"], "Wh": p["Wha"]}
    pb = {"Wx": p["Wxb"], "Wh": p["Whb"]}
    return [
        centered_rnn(x, h0, pa, bn, "a.mean"),
        centered_rnn(x, h0, pb, bn, "b.mean", backwards=True),
    ]


def chained_model(p, v, bn: BN):
    """Scan 1 over x; scan 2 over scan 1's states."""
    x = v["xc"]
    h0 = np.zeros((x.shape[1], 3))
    hs1 = centered_rnn(x, h0, {"Wx": p["Wx1"], "Wh": p["Wh1"]}, bn, "s1.mean")
    hs2 = centered_rnn(hs1, h0, {"Wx": p["Wx2"], "Wh": p["Wh2"]}, bn, "s2.mean")
    return [hs2]


def outer_stat_model(p, v, bn: BN):
    """A statistic of x (outside the loop) used inside as a non-sequence."""
    x = v["xo"]
    mx = bn("outer.mean", (), x.mean((0, 1)))
    h = np.zeros((x.shape[1], 3))
    hs = []
    for t in range(x.shape[0]):
        a = (x[t] - mx) @ p["Wx"] + h @ p["Wh"]
        h = np.tanh(a - bn("inner.mean", (t,), a.mean(0)))
        hs.append(h)
    return [np.stack(hs)]


def nested2_model(p, v, bn: BN):
    """x (T1, T2, B, 2); inner BN loop (mean, var) in an outer BN loop."""
    x = v["x4"]
    h = np.zeros((x.shape[2], 3))
    hs, gss = [], []
    for t1 in range(x.shape[0]):
        g = h
        gs = []
        for t2 in range(x.shape[1]):
            a = x[t1, t2] @ p["Wx"] + g @ p["Wh"]
            m = bn("in.mean", (t1, t2), a.mean(0))
            s = bn("in.var", (t1, t2), a.var(0))
            g = np.tanh(normalize(a, m, s))
            gs.append(g)
        b = g @ p["Wo"]
        h = np.tanh(b - bn("out.mean", (t1,), b.mean(0)))
        hs.append(h)
        gss.append(np.stack(gs))
    return [np.stack(hs), np.stack(gss)]


def nested3_model(p, v, bn: BN):
    """x (T1, T2, T3, B, 2); a centred loop three deep."""
    x = v["x5"]
    h1 = np.zeros((x.shape[3], 3))
    hs = []
    for t1 in range(x.shape[0]):
        h2 = h1
        for t2 in range(x.shape[1]):
            h3 = h2
            for t3 in range(x.shape[2]):
                a = x[t1, t2, t3] @ p["Wx"] + h3 @ p["Wh"]
                h3 = np.tanh(a - bn("l3.mean", (t1, t2, t3), a.mean(0)))
            b = h3 @ p["W2"]
            h2 = np.tanh(b - bn("l2.mean", (t1, t2), b.mean(0)))
        c = h2 @ p["W1"]
        h1 = np.tanh(c - bn("l1.mean", (t1,), c.mean(0)))
        hs.append(h1)
    return [np.stack(hs)]


def twice_model(p, v, bn: BN, names=("twice.mean#0", "twice.mean#1")):
    """One Scan op applied to two inputs: one site per application.

    ``names[0]`` is the statistic of the application on ``xa``, ``names[1]``
    the one on ``xb2``.
    """
    outs = []
    for name, key in zip(names, ("xa", "xb2"), strict=True):
        x = v[key]
        h0 = np.zeros((x.shape[1], 3))
        outs.append(centered_rnn(x, h0, p, bn, name))
    return outs


# --------------------------------------------------------------------------
# Graph inspection (PyTensor graphs, walked through inner graphs)
# --------------------------------------------------------------------------


def inner_fgraph(op):
    """The inner FunctionGraph of a Scan or OpFromGraph op, else None."""
    from pytensor.compile.builders import OpFromGraph
    from pytensor.scan.op import Scan

    if isinstance(op, Scan | OpFromGraph):
        return op.fgraph
    return None


def iter_nodes(outputs) -> Iterator[tuple[int, object]]:
    """(depth, apply node) for every node, recursing into inner graphs."""
    from pytensor.graph.traversal import toposort

    def walk(nodes, depth):
        for node in nodes:
            yield depth, node
            fg = inner_fgraph(node.op)
            if fg is not None:
                yield from walk(fg.toposort(), depth + 1)

    yield from walk(toposort(list(outputs)), 0)


def fgraph_nodes(fgraph) -> Iterator[tuple[int, object]]:
    """Like :func:`iter_nodes`, for a compiled function's FunctionGraph."""

    def walk(nodes, depth):
        for node in nodes:
            yield depth, node
            fg = inner_fgraph(node.op)
            if fg is not None:
                yield from walk(fg.toposort(), depth + 1)

    yield from walk(fgraph.toposort(), 0)


def fingerprint(outputs) -> list:
    """Node identities, ops and input identities of the whole graph.

    Two fingerprints compare equal iff the same node objects with the same
    ops, wired to the same variable objects, make up the graph (inner
    graphs included), in the same order.
    """
    rows = []
    for depth, node in iter_nodes(outputs):
        rows.append(
            (
                depth,
                id(node),
                node.op,
                tuple(id(v) for v in node.inputs),
                tuple(id(v) for v in node.outputs),
                tuple(str(v.type) for v in node.outputs),
            )
        )
    return rows
