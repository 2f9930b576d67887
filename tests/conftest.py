"""Shared fixtures: the PyTensor models under test and their pipelines.

Every model here has a NumPy twin in ``reference.py``. A :class:`Case` holds
a freshly built graph (fresh marker keys), its parameters, training batches
of varying sizes and lengths, and an inference batch longer than any
training one (to exercise clamping). :func:`build_case` builds one by name;
the session fixture ``pipeline`` runs popstats' estimate and rewrite once
per case and compiles the inference function once.

The behaviour tests compile with ``MODE`` (FAST_COMPILE by default: tiny
graphs, quick to compile; set ``POPSTATS_TEST_MODE`` to run them with
another mode). ``test_backends.py`` covers the other modes.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
import reference as ref
from pytensor.graph.replace import clone_replace
from pytensor.graph.traversal import ancestors, toposort
from pytensor.scan import until
from pytensor.scan.op import Scan

# The helpers of every test module live in shared.py; imported here too, for
# the modules that take them from conftest.
from shared import DEFAULT_MODE, FROZEN_INNER, LONG, MODE, PT_VERSION, fails, scan  # noqa: F401

import popstats

EPS = ref.EPS


def pytest_collection_modifyitems(config, items):
    """Tests marked ``slow`` run under ``POPSTATS_LONG=1`` only."""
    if LONG:
        return
    skip = pytest.mark.skip(reason="a long run: POPSTATS_LONG=1 runs it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def pytest_configure(config):
    # The NumPy references compute in float64; so do the models.
    pytensor.config.floatX = "float64"
    # A test that names no mode compiles with MODE, as the behaviour tests
    # do (with an empty compile cache PyTensor's default, Numba, took 10-20 s
    # per graph); the tests of the default mode pass shared.DEFAULT_MODE.
    # The processes the tests start keep PyTensor's default.
    pytensor.config.mode = MODE
    # PyTensor records where every variable and node was created (a stack
    # walk with source lines, for its error messages' "Backtrace when the
    # node is created"); nothing popstats does or tests reads it, and it was
    # a fifth of the CPU time of graph-heavy tests (test_accumulate_graph:
    # 66 s -> 50 s without it). Off here and in the processes the tests
    # start (they inherit PYTENSOR_FLAGS).
    # (PYTENSOR_FLAGS naming traceback__limit is kept: PyTensor read it.)
    flags = os.environ.get("PYTENSOR_FLAGS", "")
    if "traceback__limit" not in flags:
        pytensor.config.traceback__limit = 0
        os.environ["PYTENSOR_FLAGS"] = ",".join(
            f for f in (flags, "traceback__limit=0") if f)
    # PyTensor looks for a BLAS library the first time a C-backed mode
    # needs it and warns when there is none (as on these machines); warnings
    # are errors in the tests, so make that lookup happen here, quietly.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _ = pytensor.config.blas__ldflags


# --------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------


@dataclass
class Case:
    name: str
    inputs: list
    outputs: list
    params: dict
    model: Callable
    batches: list
    test_batch: dict
    depths: dict
    #: indices of outputs the NumPy model reproduces (None: all)
    checked: tuple | None = None
    extra: dict = field(default_factory=dict)

    def param_values(self) -> dict:
        return {k: s.get_value() for k, s in self.params.items()}

    def values(self, batch: dict) -> list:
        return [batch[v.name] for v in self.inputs]

    def train_forward(self, batch: dict):
        """NumPy training pass: (outputs, {name: stacked batch statistic})."""
        rec = ref.Recorder()
        outs = self.model(self.param_values(), batch, rec)
        return outs, rec.all_stacked()

    def infer_forward(self, batch: dict, population: dict) -> list:
        return self.model(self.param_values(), batch, ref.Population(population))

    def reference_stats(self) -> dict:
        """{name: (value, coverage)} by the NumPy reference estimate."""
        per_name: dict[str, list] = {}
        for batch in self.batches:
            _, stats = self.train_forward(batch)
            for name, value in stats.items():
                per_name.setdefault(name, []).append(value)
        assert set(per_name) == set(self.depths), (set(per_name), self.depths)
        return {
            name: ref.reference_estimate(values, self.depths[name])
            for name, values in per_name.items()
        }

    def checked_outputs(self, outputs: list) -> list:
        if self.checked is None:
            return list(outputs)
        return [outputs[i] for i in self.checked]


def mark(var, label, tags=False):
    if tags:
        var.tag.bn_statistic = True
        var.tag.bn_label = label
        return var
    return popstats.bn_statistic(var, label=label)


def _params(seed, **shapes):
    rng = np.random.default_rng(seed)
    return {
        name: pytensor.shared(rng.normal(0.0, 0.6, shape), name=name)
        for name, shape in shapes.items()
    }


def _seq_batches(seed, key, lengths, sizes, feat=2, loc=0.5):
    rng = np.random.default_rng(seed)
    return [
        {key: rng.normal(loc, 1.5, (t, b, feat))}
        for t, b in zip(lengths, sizes, strict=True)
    ]


def _scan(fn, **kwargs):
    return pytensor.scan(fn, return_updates=False, **kwargs)


def _centered_step(label, tags=False):
    def step(xt, h, Wx, Wh):
        a = pt.dot(xt, Wx) + pt.dot(h, Wh)
        return pt.tanh(a - mark(a.mean(0), label, tags))

    return step


def _h0(x, axis=1):
    return pt.zeros((x.shape[axis], 3))


def build_ff(tags=False):
    p = _params(1, W1=(3, 4), b1=(4,), g1=(4,), W2=(4, 2), b2=(2,))
    x = pt.matrix("x")
    h1 = pt.dot(x, p["W1"]) + p["b1"]
    m1 = mark(h1.mean(0), "l1.mean", tags)
    v1 = mark(h1.var(0), "l1.var", tags)
    a1 = pt.tanh(p["g1"] * (h1 - m1) / pt.sqrt(v1 + EPS))
    h2 = pt.dot(a1, p["W2"]) + p["b2"]
    m2 = mark(h2.mean(0), "l2.mean", tags)
    v2 = mark(h2.var(0), "l2.var", tags)
    y = (h2 - m2) / pt.sqrt(v2 + EPS)
    rng = np.random.default_rng(11)
    batches = [{"x": rng.normal(1.5, 2.0, (b, 3))} for b in (6, 4, 7, 5)]
    return Case(
        "ff_tags" if tags else "ff",
        [x],
        [y],
        p,
        ref.ff_model,
        batches,
        {"x": rng.normal(1.5, 2.0, (5, 3))},
        dict.fromkeys(("l1.mean", "l1.var", "l2.mean", "l2.var"), 0),
    )


def build_rnn(tags=False):
    p = _params(2, Wx=(2, 3), Wh=(3, 3), g=(3,))
    x = pt.tensor3("x")

    def step(xt, h, Wx, Wh, g):
        a = pt.dot(xt, Wx) + pt.dot(h, Wh)
        m = mark(a.mean(0), "rnn.mean", tags)
        s = mark(a.var(0), "rnn.var", tags)
        return pt.tanh(g * (a - m) / pt.sqrt(s + EPS))

    hs = _scan(
        step,
        sequences=[x],
        outputs_info=[_h0(x)],
        non_sequences=[p["Wx"], p["Wh"], p["g"]],
    )
    batches = _seq_batches(12, "x", lengths=(3, 5, 2, 4), sizes=(4, 5, 3, 4))
    test = _seq_batches(13, "x", lengths=(7,), sizes=(4,))[0]
    return Case(
        "rnn_tags" if tags else "rnn",
        [x],
        [hs],
        p,
        ref.rnn_model,
        batches,
        test,
        {"rnn.mean": 1, "rnn.var": 1},
    )


def _centered_case(name, key, label, model, seed, go_backwards=False, truncate=-1):
    p = _params(seed, Wx=(2, 3), Wh=(3, 3))
    x = pt.tensor3(key)
    hs = _scan(
        _centered_step(label),
        sequences=[x],
        outputs_info=[_h0(x)],
        non_sequences=[p["Wx"], p["Wh"]],
        go_backwards=go_backwards,
        truncate_gradient=truncate,
    )
    batches = _seq_batches(seed + 10, key, lengths=(4, 2, 5, 3), sizes=(3, 5, 4, 4))
    test = _seq_batches(seed + 20, key, lengths=(8,), sizes=(3,))[0]
    return Case(name, [x], [hs], p, model, batches, test, {label: 1})


def build_sit_sot():
    return _centered_case("sit_sot", "xs", "sit.mean", ref.sit_sot_model, 3)


def build_backwards():
    return _centered_case(
        "backwards", "xb", "back.mean", ref.backwards_model, 4, go_backwards=True
    )


def build_truncate():
    return _centered_case(
        "truncate", "xt", "trunc.mean", ref.truncate_model, 5, truncate=2
    )


def build_mit_sot():
    p = _params(6, Wx=(2, 3), Wh=(3, 3), Wg=(3, 3))
    x = pt.tensor3("xm")
    h0 = pt.tensor3("hm0")

    def step(xt, older, prev, Wx, Wh, Wg):
        a = pt.dot(xt, Wx) + pt.dot(prev, Wh) + pt.dot(older, Wg)
        return pt.tanh(a - mark(a.mean(0), "mit.mean"))

    hs = _scan(
        step,
        sequences=[x],
        outputs_info=[{"initial": h0, "taps": [-2, -1]}],
        non_sequences=[p["Wx"], p["Wh"], p["Wg"]],
    )
    rng = np.random.default_rng(16)
    batches = [
        {"xm": rng.normal(0.5, 1.5, (t, b, 2)), "hm0": rng.normal(0, 0.5, (2, b, 3))}
        for t, b in ((3, 4), (5, 3), (2, 5), (4, 4))
    ]
    test = {"xm": rng.normal(0.5, 1.5, (7, 3, 2)), "hm0": rng.normal(0, 0.5, (2, 3, 3))}
    return Case(
        "mit_sot", [x, h0], [hs], p, ref.mit_sot_model, batches, test, {"mit.mean": 1}
    )


def build_rng():
    """A random generator updated by the loop (untraced sit_sot state)."""
    p = _params(7, Wx=(2, 3), Wh=(3, 3))
    x = pt.tensor3("xr")
    rng_var = pytensor.shared(np.random.default_rng(70), name="loop_rng")

    def step(xt, h, rng, Wx, Wh):
        a = pt.dot(xt, Wx) + pt.dot(h, Wh)
        h_new = pt.tanh(a - mark(a.mean(0), "rng.mean"))
        next_rng, noise = pt.random.normal(
            0.0, 1.0, size=h_new.shape, rng=rng, return_next_rng=True
        )
        return h_new, h_new + 0.1 * noise, next_rng

    hs, noisy, _ = _scan(
        step,
        sequences=[x],
        outputs_info=[_h0(x), None, rng_var],
        non_sequences=[p["Wx"], p["Wh"]],
    )
    batches = _seq_batches(17, "xr", lengths=(3, 4, 2, 5), sizes=(4, 3, 5, 4))
    test = _seq_batches(27, "xr", lengths=(7,), sizes=(3,))[0]
    return Case(
        "rng",
        [x],
        [hs, noisy],
        p,
        ref.rng_model,
        batches,
        test,
        {"rng.mean": 1},
        checked=(0,),
        extra={"rng": rng_var},
    )


def build_while():
    p = _params(8, Wx=(2, 3), Wh=(3, 3))
    x = pt.tensor3("xw")
    n = pt.lscalar("n")

    def step(t, xt, h, n, Wx, Wh):
        a = pt.dot(xt, Wx) + pt.dot(h, Wh)
        h_new = pt.tanh(a - mark(a.mean(0), "while.mean"))
        return h_new, until(t + 1 >= n)

    hs = _scan(
        step,
        sequences=[pt.arange(x.shape[0]), x],
        outputs_info=[_h0(x)],
        non_sequences=[n, p["Wx"], p["Wh"]],
    )
    rng = np.random.default_rng(18)
    batches = [
        {"xw": rng.normal(0.5, 1.5, (6, b, 2)), "n": np.int64(k)}
        for k, b in ((3, 4), (5, 3), (2, 5), (9, 4))
    ]
    test = {"xw": rng.normal(0.5, 1.5, (10, 3, 2)), "n": np.int64(9)}
    return Case(
        "while", [x, n], [hs], p, ref.while_model, batches, test, {"while.mean": 1}
    )


def build_n_steps(constant=None):
    p = _params(9, Wx=(2, 3), Wh=(3, 3))
    c = pt.matrix("c")
    k = pt.lscalar("k")

    def step(h, c, Wx, Wh):
        a = pt.dot(c, Wx) + pt.dot(h, Wh)
        return pt.tanh(a - mark(a.mean(0), "nsteps.mean"))

    hs = _scan(
        step,
        outputs_info=[_h0(c, axis=0)],
        non_sequences=[c, p["Wx"], p["Wh"]],
        n_steps=k if constant is None else constant,
    )
    rng = np.random.default_rng(19)
    steps = (2, 4, 3, 1) if constant is None else (constant,) * 4
    batches = [
        {"c": rng.normal(0.5, 1.5, (b, 2)), "k": np.int64(s)}
        for s, b in zip(steps, (4, 3, 5, 4), strict=True)
    ]
    test = {
        "c": rng.normal(0.5, 1.5, (3, 2)),
        "k": np.int64(6 if constant is None else constant),
    }
    if constant is not None:
        for batch in (*batches, test):
            del batch["k"]
    inputs = [c] if constant is not None else [c, k]

    def model(pv, v, bn):
        return ref.n_steps_model(pv, {**v, "k": v.get("k", constant)}, bn)

    return Case(
        "n_steps" if constant is None else "n_steps_const",
        inputs,
        [hs],
        p,
        model,
        batches,
        test,
        {"nsteps.mean": 1},
    )


def build_two_scans():
    p = _params(10, Wxa=(2, 3), Wha=(3, 3), Wxb=(2, 3), Whb=(3, 3))
    x = pt.tensor3("x2")
    ha = _scan(
        _centered_step("a.mean"),
        sequences=[x],
        outputs_info=[_h0(x)],
        non_sequences=[p["Wxa"], p["Wha"]],
    )
    hb = _scan(
        _centered_step("b.mean"),
        sequences=[x],
        outputs_info=[_h0(x)],
        non_sequences=[p["Wxb"], p["Whb"]],
        go_backwards=True,
    )
    batches = _seq_batches(20, "x2", lengths=(2, 4, 3, 5), sizes=(4, 4, 3, 5))
    test = _seq_batches(30, "x2", lengths=(7,), sizes=(3,))[0]
    return Case(
        "two_scans",
        [x],
        [ha, hb],
        p,
        ref.two_scans_model,
        batches,
        test,
        {"a.mean": 1, "b.mean": 1},
    )


def build_chained():
    p = _params(11, Wx1=(2, 3), Wh1=(3, 3), Wx2=(3, 3), Wh2=(3, 3))
    x = pt.tensor3("xc")
    hs1 = _scan(
        _centered_step("s1.mean"),
        sequences=[x],
        outputs_info=[_h0(x)],
        non_sequences=[p["Wx1"], p["Wh1"]],
    )
    hs2 = _scan(
        _centered_step("s2.mean"),
        sequences=[hs1],
        outputs_info=[_h0(x)],
        non_sequences=[p["Wx2"], p["Wh2"]],
    )
    batches = _seq_batches(21, "xc", lengths=(3, 2, 5, 4), sizes=(4, 5, 3, 4))
    test = _seq_batches(31, "xc", lengths=(7,), sizes=(3,))[0]
    return Case(
        "chained",
        [x],
        [hs2],
        p,
        ref.chained_model,
        batches,
        test,
        {"s1.mean": 1, "s2.mean": 1},
    )


def build_outer_stat():
    p = _params(12, Wx=(2, 3), Wh=(3, 3))
    x = pt.tensor3("xo")
    mx = mark(x.mean((0, 1)), "outer.mean")

    def step(xt, h, mx, Wx, Wh):
        a = pt.dot(xt - mx, Wx) + pt.dot(h, Wh)
        return pt.tanh(a - mark(a.mean(0), "inner.mean"))

    hs = _scan(
        step,
        sequences=[x],
        outputs_info=[_h0(x)],
        non_sequences=[mx, p["Wx"], p["Wh"]],
    )
    batches = _seq_batches(22, "xo", lengths=(3, 5, 2, 4), sizes=(4, 3, 5, 4), loc=2.0)
    test = _seq_batches(32, "xo", lengths=(7,), sizes=(3,), loc=2.0)[0]
    return Case(
        "outer_stat",
        [x],
        [hs],
        p,
        ref.outer_stat_model,
        batches,
        test,
        {"outer.mean": 0, "inner.mean": 1},
    )


def build_nested2():
    p = _params(13, Wx=(2, 3), Wh=(3, 3), Wo=(3, 3))
    x = pt.tensor4("x4")

    def inner_step(xt, g, Wx, Wh):
        a = pt.dot(xt, Wx) + pt.dot(g, Wh)
        m = mark(a.mean(0), "in.mean")
        s = mark(a.var(0), "in.var")
        return pt.tanh((a - m) / pt.sqrt(s + EPS))

    def outer_step(xt, h, Wx, Wh, Wo):
        gs = _scan(inner_step, sequences=[xt], outputs_info=[h], non_sequences=[Wx, Wh])
        b = pt.dot(gs[-1], Wo)
        return pt.tanh(b - mark(b.mean(0), "out.mean")), gs

    hs, gss = _scan(
        outer_step,
        sequences=[x],
        outputs_info=[_h0(x, axis=2), None],
        non_sequences=[p["Wx"], p["Wh"], p["Wo"]],
    )
    rng = np.random.default_rng(23)
    shapes = ((2, 3, 4), (3, 2, 3), (1, 4, 5), (3, 3, 4))
    batches = [{"x4": rng.normal(0.5, 1.5, (t1, t2, b, 2))} for t1, t2, b in shapes]
    test = {"x4": rng.normal(0.5, 1.5, (5, 6, 3, 2))}
    return Case(
        "nested2",
        [x],
        [hs, gss],
        p,
        ref.nested2_model,
        batches,
        test,
        {"in.mean": 2, "in.var": 2, "out.mean": 1},
    )


def build_nested3():
    p = _params(14, Wx=(2, 3), Wh=(3, 3), W2=(3, 3), W1=(3, 3))
    x = pt.tensor(dtype="float64", shape=(None,) * 5, name="x5")

    def step3(xt, h, Wx, Wh):
        a = pt.dot(xt, Wx) + pt.dot(h, Wh)
        return pt.tanh(a - mark(a.mean(0), "l3.mean"))

    def step2(xt, h, Wx, Wh, W2):
        h3 = _scan(step3, sequences=[xt], outputs_info=[h], non_sequences=[Wx, Wh])
        b = pt.dot(h3[-1], W2)
        return pt.tanh(b - mark(b.mean(0), "l2.mean"))

    def step1(xt, h, Wx, Wh, W2, W1):
        h2 = _scan(step2, sequences=[xt], outputs_info=[h], non_sequences=[Wx, Wh, W2])
        c = pt.dot(h2[-1], W1)
        return pt.tanh(c - mark(c.mean(0), "l1.mean"))

    hs = _scan(
        step1,
        sequences=[x],
        outputs_info=[_h0(x, axis=3)],
        non_sequences=[p["Wx"], p["Wh"], p["W2"], p["W1"]],
    )
    rng = np.random.default_rng(24)
    shapes = ((2, 2, 3, 3), (1, 3, 2, 4), (2, 1, 1, 3))
    batches = [{"x5": rng.normal(0.5, 1.5, (*s[:3], s[3], 2))} for s in shapes]
    test = {"x5": rng.normal(0.5, 1.5, (3, 4, 4, 2, 2))}
    return Case(
        "nested3",
        [x],
        [hs],
        p,
        ref.nested3_model,
        batches,
        test,
        {"l3.mean": 3, "l2.mean": 2, "l1.mean": 1},
    )


def build_twice():
    """One Scan op applied to two inputs (clone_replace keeps the op)."""
    p = _params(15, Wx=(2, 3), Wh=(3, 3))
    xa = pt.tensor3("xa")
    xb = pt.tensor3("xb2")
    ha = _scan(
        _centered_step("twice.mean"),
        sequences=[xa],
        outputs_info=[_h0(xa)],
        non_sequences=[p["Wx"], p["Wh"]],
    )
    hb = clone_replace(ha, {xa: xb})
    # Sites are numbered in graph (topological) order of the applications.
    scans = [n for n in toposort([ha, hb]) if isinstance(n.op, Scan)]
    assert len(scans) == 2 and scans[0].op is scans[1].op
    first_on_xa = xa in ancestors([scans[0].inputs[1]])
    names = ("twice.mean#0", "twice.mean#1")
    if not first_on_xa:
        names = names[::-1]

    def model(pv, v, bn):
        return ref.twice_model(pv, v, bn, names=names)

    rng = np.random.default_rng(25)
    batches = [
        {"xa": rng.normal(0.5, 1.0, (t, b, 2)), "xb2": rng.normal(-1.0, 2.0, (u, c, 2))}
        for t, b, u, c in ((3, 4, 2, 3), (2, 5, 4, 4), (4, 3, 3, 5))
    ]
    test = {
        "xa": rng.normal(0.5, 1.0, (6, 3, 2)),
        "xb2": rng.normal(-1.0, 2.0, (6, 2, 2)),
    }
    return Case(
        "twice",
        [xa, xb],
        [ha, hb],
        p,
        model,
        batches,
        test,
        {"twice.mean#0": 1, "twice.mean#1": 1},
    )


BUILDERS = {
    "ff": build_ff,
    "ff_tags": lambda: build_ff(tags=True),
    "rnn": build_rnn,
    "rnn_tags": lambda: build_rnn(tags=True),
    "sit_sot": build_sit_sot,
    "mit_sot": build_mit_sot,
    "rng": build_rng,
    "while": build_while,
    "truncate": build_truncate,
    "n_steps": build_n_steps,
    "n_steps_const": lambda: build_n_steps(constant=3),
    "backwards": build_backwards,
    "two_scans": build_two_scans,
    "chained": build_chained,
    "outer_stat": build_outer_stat,
    "nested2": build_nested2,
    "nested3": build_nested3,
    "twice": build_twice,
}

#: Cases the behaviour tests run on (rnn_tags only where tags survive in Scan).
CASES = [
    "ff",
    "ff_tags",
    pytest.param(
        "rnn_tags",
        marks=pytest.mark.skipif(
            FROZEN_INNER,
            reason="PyTensor >= 3.1 drops tags inside Scan (a documented error)",
        ),
    ),
    "rnn",
    "sit_sot",
    "mit_sot",
    "rng",
    "while",
    "truncate",
    "n_steps",
    "backwards",
    "two_scans",
    "chained",
    "outer_stat",
    "nested2",
    "nested3",
    "twice",
]


def build_case(name: str) -> Case:
    return BUILDERS[name]()


def build_zoo(names) -> Case:
    """Several cases in one graph (inputs, outputs and statistics side by
    side), to compile many loop variants at once."""
    parts = [build_case(n) for n in names]
    n_batches = min(len(part.batches) for part in parts)

    def model(_, v, bn):
        outs = []
        for part in parts:
            outs += part.model(part.param_values(), v, bn)
        return outs

    checked, offset = [], 0
    for part in parts:
        idx = range(len(part.outputs)) if part.checked is None else part.checked
        checked += [offset + i for i in idx]
        offset += len(part.outputs)
    merged = {}
    for part in parts:
        merged.update(part.depths)
    assert len(merged) == sum(len(part.depths) for part in parts)
    return Case(
        "zoo:" + "+".join(names),
        [v for part in parts for v in part.inputs],
        [o for part in parts for o in part.outputs],
        {},
        model,
        [
            {k: v for part in parts for k, v in part.batches[i].items()}
            for i in range(n_batches)
        ],
        {k: v for part in parts for k, v in part.test_batch.items()},
        merged,
        checked=tuple(checked),
        extra={"parts": parts},
    )


# --------------------------------------------------------------------------
# Pipelines (estimate + rewrite + compile), once per case per session
# --------------------------------------------------------------------------


@dataclass
class Pipeline:
    case: Case
    stats: popstats.PopulationStatistics
    inference: list
    infer: Callable
    reference: dict


class _Pipelines:
    def __init__(self) -> None:
        self.done: dict[str, Pipeline] = {}

    def __call__(self, name: str) -> Pipeline:
        if name not in self.done:
            case = build_case(name)
            stats = popstats.estimate(
                case.inputs, case.outputs, case.batches, mode=MODE
            )
            inference = popstats.rewrite(case.outputs, stats)
            infer = pytensor.function(case.inputs, inference, mode=MODE)
            self.done[name] = Pipeline(
                case, stats, inference, infer, case.reference_stats()
            )
        return self.done[name]


@pytest.fixture(scope="session")
def pipeline():
    """``pipeline(name)``: a case, its estimate, rewrite and compiled inference."""
    return _Pipelines()


def population_of(stats) -> dict:
    return {name: stat.value for name, stat in stats.items()}


# --------------------------------------------------------------------------
# one Dask cluster for every test that needs one (the ``dask`` extra)


@pytest.fixture(scope="module")
def dask_client():
    """A client of one ``LocalCluster``: 2 worker processes, 1 thread each.

    Started on first use in a module, shared by its tests (start-up and
    each worker's first compile of a graph cost seconds), closed at the
    module's end: an idle cluster's heartbeats and memory monitors take
    about a sixth of a core, which the rest of the run needs. Not the
    default client: code under test gets it passed. Worker
    processes are spawned with this process's ``sys.path``, so they import
    popstats and the test helpers (``dask_loaders``) from the same place.
    """
    import logging

    pytest.importorskip("dask.bag")
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
        silence_logs=logging.ERROR,
    )
    client = distributed.Client(cluster, set_as_default=False)
    try:
        yield client
    finally:
        client.close()
        cluster.close()
