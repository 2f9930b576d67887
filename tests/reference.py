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
    return fill_cells(raw, counts, extent, stat_shape)


def fill_cells(
    raw: dict[tuple[int, ...], np.ndarray], counts: dict[tuple[int, ...], int],
    extent: tuple[int, ...], stat_shape: tuple[int, ...],
) -> tuple[np.ndarray, np.ndarray]:
    """The table of per-cell values ``raw`` (time index -> value) over
    ``extent``, holes filled as :func:`reference_estimate` says, and the
    coverage ``counts`` (time index -> batches that reached it)."""
    depth = len(extent)

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


def at_steps(table: np.ndarray, steps: tuple[int, ...]) -> np.ndarray:
    """``table[min(t1, T1 - 1)][min(t2, T2 - 1)]...``: a population value as
    the rewritten graph reads it at time index ``steps``."""
    for t in steps:
        table = table[min(t, table.shape[0] - 1)]
    return table


# --------------------------------------------------------------------------
# Statistics consistent with the inference graph (upstream="population")
# --------------------------------------------------------------------------
#
# The models below (and those of ``upstream_models.py``) call
# ``bn(name, steps, observation)`` at every statistic and use what it
# returns. A *rule* says what an observation is and how the batches'
# observations of one cell (a statistic at one time index) combine:
# :class:`ValueRule` (the observation is the batch statistic itself, the
# plain mean over batches) or :class:`MomentRule` (the observation is the
# elements of a batch norm's input, one cell a mean/var pair, combined by
# each estimator's definition).

Cell = tuple[str, tuple[int, ...]]


def combine_moments(
    estimator: str, elements: Sequence[np.ndarray], momentum: float = 0.1
) -> tuple[np.ndarray, np.ndarray]:
    """(mean, var) population value of a mean/var pair from the element
    arrays (rows: examples) of the batches that reached it, in batch order,
    as each estimator is defined."""
    means = [e.mean(axis=0) for e in elements]
    variances = [e.var(axis=0) for e in elements]
    if estimator == "mean":
        return np.mean(means, axis=0), np.mean(variances, axis=0)
    if estimator == "weighted":  # weighted by the batch's element count
        weights = [len(e) for e in elements]
        return (np.average(means, axis=0, weights=weights),
                np.average(variances, axis=0, weights=weights))
    if estimator == "pooled":  # the moments of all elements together
        every = np.concatenate(elements)
        return every.mean(axis=0), every.var(axis=0)
    if estimator == "unbiased":  # Bessel's correction per batch
        return (np.mean(means, axis=0),
                np.mean([e.var(axis=0, ddof=1) for e in elements], axis=0))
    if estimator == "ema":  # from PyTorch's running_mean = 0, running_var = 1
        mean, var = np.zeros_like(means[0]), np.ones_like(variances[0])
        for m, v in zip(means, variances, strict=True):
            mean = (1 - momentum) * mean + momentum * m
            var = (1 - momentum) * var + momentum * v
        return mean, var
    raise AssertionError(estimator)


class ValueRule:
    """Cells of the models above: the observation is the batch statistic;
    the population value is the mean over the batches that reached it."""

    def measure(self, name: str, observation: np.ndarray) -> np.ndarray:
        return np.asarray(observation, dtype=np.float64)

    def combine(self, name: str, observations: list) -> np.ndarray:
        return np.mean([self.measure(name, o) for o in observations], axis=0)

    def split(self, name: str, value) -> dict[str, np.ndarray]:
        return {name: value}

    def lookup(self, tables: dict[str, np.ndarray]):
        return lambda name, steps: at_steps(tables[name], steps)


class MomentRule:
    """Cells ``name`` standing for the pair ``name.mean`` / ``name.var``; the
    observation is the elements (rows) of the batch norm's input.
    ``estimator``: one for every pair, or pair name -> (estimator, momentum)."""

    def __init__(self, estimator: str | dict = "mean", momentum: float = 0.1):
        self.estimator, self.momentum = estimator, momentum

    def measure(self, name: str, elements: np.ndarray):
        return elements.mean(axis=0), elements.var(axis=0)

    def combine(self, name: str, observations: list):
        estimator, momentum = self.estimator, self.momentum
        if isinstance(estimator, dict):
            estimator, momentum = estimator[name]
        return combine_moments(estimator, observations, momentum)

    def split(self, name: str, value) -> dict[str, np.ndarray]:
        return {f"{name}.mean": value[0], f"{name}.var": value[1]}

    def lookup(self, tables: dict[str, np.ndarray]):
        return lambda name, steps: (at_steps(tables[f"{name}.mean"], steps),
                                    at_steps(tables[f"{name}.var"], steps))


def _tables(cells: dict[Cell, tuple[object, int]], rule) -> dict[str, tuple]:
    """name -> (value table, coverage) from cell -> (value, batches)."""
    raw: dict[str, dict] = {}
    counts: dict[str, dict] = {}
    for (name, steps), (value, n) in cells.items():
        for stat, v in rule.split(name, value).items():
            raw.setdefault(stat, {})[steps] = np.asarray(v, dtype=np.float64)
            counts.setdefault(stat, {})[steps] = n
    out = {}
    for stat, table in raw.items():
        depth = len(next(iter(table)))
        extent = tuple(max(s[k] for s in table) + 1 for k in range(depth))
        out[stat] = fill_cells(table, counts[stat], extent,
                               next(iter(table.values())).shape)
    return out


class _Visit:
    """One batch's forward in one stage: cells already known give their
    population value; the first unknown cell is observed on an upstream at
    population values only ("clean"); the cells after it are not."""

    def __init__(self, known: dict[Cell, object], rule):
        self.known, self.rule = known, rule
        self.reached: list[Cell] = []
        self.clean: dict[Cell, object] = {}
        self.met_unknown = False

    def __call__(self, name: str, steps: tuple[int, ...], observation):
        cell = (name, tuple(steps))
        if cell in self.reached:
            raise AssertionError(f"{cell} visited twice in one forward")
        self.reached.append(cell)
        if cell in self.known:
            return self.known[cell]
        if not self.met_unknown:  # every cell before it is at population
            self.clean[cell] = observation
        self.met_unknown = True
        return self.rule.measure(name, observation)


def staged_estimate(forward: Callable, batches: Sequence, rule) -> dict[str, tuple]:
    """The statistics consistent with the inference graph, stage by stage.

    ``forward(batch, bn)`` runs a NumPy model. Each stage runs every batch
    with the cells found so far at their population values; a cell whose
    every reaching batch computed it before meeting any unknown cell (so on
    an upstream entirely at population values) gets its population value
    from those observations. Stages repeat until every reached cell is
    known. No iteration to a tolerance: each value is computed once, from
    exact upstream values. Returns name -> (value table, coverage), holes
    filled as :func:`reference_estimate` fills them.
    """
    known: dict[Cell, object] = {}
    count: dict[Cell, int] = {}
    while True:
        visits = []
        for batch in batches:
            visit = _Visit(dict(known), rule)
            forward(batch, visit)
            visits.append(visit)
        todo = {c for v in visits for c in v.reached} - known.keys()
        if not todo:
            return _tables({c: (known[c], count[c]) for c in known}, rule)
        ready = [c for c in todo
                 if all(c in v.clean for v in visits if c in v.reached)]
        if not ready:
            raise AssertionError("no cell ready: the batches order them differently")
        for cell in ready:
            observed = [v.clean[cell] for v in visits if cell in v.reached]
            known[cell] = rule.combine(cell[0], observed)
            count[cell] = len(observed)


def numpy_pass(forward: Callable, batches: Sequence, rule,
               tables: dict[str, np.ndarray] | None = None,
               pooled: bool | tuple[bool, ...] = False) -> dict[str, tuple]:
    """One estimation pass in NumPy: over the training graph (``tables``
    None: every statistic normalizes with its batch value) or over the
    inference graph of ``tables`` (name -> population table, read at the
    clamped step). ``pooled``: per loop level (outermost first; one bool:
    every level), whether the statistics pool that level's steps: a batch's
    observation of a cell is then the elements of all the pooled steps
    together. Returns name -> (value table, coverage)."""
    lookup = None if tables is None else rule.lookup(tables)

    def kept(steps):
        modes = pooled if isinstance(pooled, tuple) else (pooled,) * len(steps)
        return tuple(t for t, p in zip(steps, modes, strict=False) if not p)

    observed: dict[Cell, list] = {}
    for batch in batches:
        seen: dict[Cell, list] = {}

        def bn(name, steps, observation, seen=seen):
            cell = (name, kept(tuple(steps)))
            seen.setdefault(cell, []).append(observation)
            if lookup is None:
                return rule.measure(name, observation)
            return lookup(*cell)

        forward(batch, bn)
        for cell, parts in seen.items():
            if pooled is False and len(parts) != 1:
                raise AssertionError(f"{cell} visited {len(parts)} times")
            observed.setdefault(cell, []).append(np.concatenate(parts))
    return _tables({c: (rule.combine(c[0], o), len(o)) for c, o in observed.items()},
                   rule)


def numpy_fixed_point(forward: Callable, batches: Sequence, rule,
                      pooled: bool | tuple[bool, ...] = False, tol: float = 1e-14,
                      passes: int = 500) -> dict[str, tuple]:
    """:func:`numpy_pass` iterated from the training graph's values until the
    largest change of a value (relative to its statistic's largest
    magnitude) is at most ``tol`` -- the reference where no stage order
    exists (statistics pooled over time read their own earlier steps)."""
    values = numpy_pass(forward, batches, rule, pooled=pooled)
    for _ in range(passes):
        new = numpy_pass(forward, batches, rule, {n: v for n, (v, _) in values.items()},
                         pooled=pooled)
        change = max(np.max(np.abs(new[n][0] - v)) / (np.max(np.abs(v)) or 1.0)
                     for n, (v, _) in values.items())
        values = new
        if change <= tol:
            return values
    raise AssertionError(f"no fixed point in {passes} passes (change {change:g})")


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
