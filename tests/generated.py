"""Random batch-normalized models for the property tests of ``test_generated.py``.

A model is a *description*: plain JSON data (dicts, lists, strings, ints,
bools, None) drawn by the Hypothesis strategy :func:`models`. Two independent
readers turn a description into numbers:

* :func:`build` -- a deterministic PyTensor builder: inputs, outputs, shared
  parameters (from a seeded NumPy generator), training batches and a test
  batch longer than any training sequence. Building the same description
  twice (even in another process) gives the same model, up to the identity
  of the graph objects.
* :func:`interpret` -- a NumPy interpreter of the same description, the
  reference. In training mode it hands every batch statistic to a
  ``reference.Recorder``; in inference mode it reads population values from a
  ``reference.Population`` (clamping steps past the last estimated one).

Descriptions
------------
``{"seed", "width", "inputs", "until_input", "batches", "test", "branches"}``:

``inputs``
    ``{name: depth}``: a float64 input with ``depth`` leading time axes, then
    the batch axis, then ``width`` features. A loop iterates over the leading
    axis of its input; a loop inside a loop step iterates over the next axis
    (nesting up to three deep).
``until_input``
    Whether the model has the int64 scalar input ``n`` that while loops
    (``"until": "n"``) stop at.
``batches``, ``test``
    ``{"size", "n", "lens": {input: [length per time axis]}}``. The test
    batch is longer than every training batch on every time axis.
``branches``
    ``[{"input", "layers", "copies", "side"}]``: a chain of layers applied to
    one input. ``copies`` names further inputs: the branch's outputs are
    copied onto each with ``clone_replace`` (siamese branches; a copied loop
    is the same ``Scan`` op applied again). ``side`` also makes the value
    after the first layer an output.

Layers (each with a ``label`` unique in the model, ``units`` and ``var``,
whether the variance is normalized besides the mean, and ``count``, whether
the mark gets an element count):

``{"kind": "dense"}``
    ``tanh(normalize(x @ W + b))``, statistics over every axis but the
    features (time axes included: a statistic of a whole sequence).
``{"kind": "ofg", "apply": ..., "inline": bool}``
    The same dense layer written as one ``OpFromGraph``, applied ``"once"``,
    twice in sequence with other weights (``"seq"``) or the same ones
    (``"seq_same"``, when the widths allow), or twice side by side on the
    same input with other weights, summed (``"sum"``).
``{"kind": "loop", "taps", "backwards", "until", "rng", "outer", "body", "out",
"named"}``
    A ``scan`` over the leading axis. The step applies ``body`` (layers that
    bring the element down to a plain ``(batch, features)`` matrix; nested
    loops live there), then ``h = tanh(normalize(z @ Wx + sum_k h[t+k] @ Whk
    + b))`` over the recurrent ``taps`` (``[-1]``: sit_sot, else mit_sot,
    initial states from the parameter ``H0``). ``backwards``: go_backwards;
    ``until``: None, ``"n"`` or a constant k -- a step counter carried as a
    state stops the loop after ``min(k, T)`` steps; ``rng``: ``"explicit"``
    (a generator carried through ``outputs_info``) or ``"stream"`` (a
    ``RandomStream``) draws ``binomial(1, 1.0)`` -- a dropout-like mask that
    is always one, so NumPy can follow it; ``outer``: the mean of the whole
    input sequence is a statistic computed outside the loop, passed in as a
    non-sequence and subtracted from each element; ``out``: ``"seq"`` (all
    states) or ``"last"`` (the last one); ``named``: the ``Scan`` is named
    after the label (else PyTensor's default name, the same for all loops).

Statistic identities
--------------------
Labels are ``<layer label>.mean``, ``.var`` and ``.outer``. A label is
reached more than once only through reuse (an ``OpFromGraph`` applied twice,
a copied branch or loop), and every such application is its own
statistic. The interpreter names an application ``label@where``, where
``where`` is static: the branch instance (``b0``, ``b0c1`` for its first
copy) and the ``OpFromGraph`` application (``/o3:1``); enclosing loops add
time indices, not names. popstats names the applications ``label#k`` in an
order the interpreter does not know, so the tests compare, per label, the
multiset of values.

Run as a script (``python generated.py MODE OUT [MANIFEST.jsonl]``) this
module is the separate process of the persistence check (:func:`replay`): it
reads models as JSON lines (from stdin while the tests run, or from the
manifest file the tests leave behind), rebuilds each, loads its saved
statistics, rewrites and evaluates the test batch, and writes the outputs to
``OUT.npz`` and the errors to ``OUT.json``.
"""

from __future__ import annotations

import functools
import json
import operator
import sys
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytensor
import pytensor.tensor as pt
import reference as ref
from hypothesis import strategies as st
from pytensor.compile.builders import OpFromGraph
from pytensor.graph.replace import clone_replace
from pytensor.scan import until as until_
from pytensor.tensor.random.utils import RandomStream

import popstats

EPS = ref.EPS
#: Maximal number of loops nested in one another (input depth).
MAX_DEPTH = 3
#: The model's scalar input that ``"until": "n"`` loops stop at.
N_INPUT = "n"
#: Value of ``n`` in the test batch: longer than any sequence.
N_TEST = 99

# --------------------------------------------------------------------------
# Hypothesis strategy
# --------------------------------------------------------------------------


class _Labels:
    """Unique layer labels: a kind prefix and a model-wide counter."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}{self.n}"


def _dense(draw, labels) -> dict:
    return {
        "kind": "dense",
        "label": labels("d"),
        "units": draw(st.sampled_from([2, 3])),
        "var": draw(st.booleans()),
        "count": draw(st.booleans()),
    }


def _ofg(draw, labels, width) -> dict:
    units = draw(st.sampled_from([2, 3]))
    modes = ["once", "seq", "sum"] + (["seq_same"] if units == width else [])
    return {
        "kind": "ofg",
        "label": labels("o"),
        "units": units,
        "var": draw(st.booleans()),
        "count": draw(st.booleans()),
        "apply": draw(st.sampled_from(modes)),
        "inline": draw(st.booleans()),
    }


def _loop(draw, labels, depth, width, budget, opts, out=None) -> dict:
    """A loop over a value of ``depth`` time axes (depth >= 1)."""
    label = labels("s")
    # The step element has depth - 1 time axes; its body must remove them.
    body = _chain(draw, labels, depth - 1, width, budget, opts, flat=True)
    rngs = [None, "explicit"] + (["stream"] if opts["streams"] else [])
    return {
        "kind": "loop",
        "label": label,
        "units": draw(st.sampled_from([2, 3])),
        "var": draw(st.booleans()),
        "count": draw(st.booleans()),
        "taps": draw(st.sampled_from([[-1], [-2, -1], [-3, -1]])),
        "backwards": draw(st.booleans()),
        "until": draw(st.sampled_from([None, None, N_INPUT, 2, 1])),
        "rng": draw(st.sampled_from(rngs)),
        "outer": draw(st.booleans()),
        "body": body,
        "out": out or draw(st.sampled_from(["seq", "last"])),
        "named": draw(st.booleans()),
    }


def _chain(draw, labels, depth, width, budget, opts, flat) -> list:
    """Layers for a value of ``depth`` time axes and ``width`` features.

    ``budget`` (a one-element list, shared by the whole model) bounds the
    number of optional layers. With ``flat`` the chain must end without time
    axes (a loop body); a closing loop with ``out="last"`` is added when the
    drawn layers leave some.
    """
    layers: list = []
    most = 2 if flat else 3
    n = draw(st.integers(0 if flat else 1, most))
    for i in range(n):
        if budget[0] <= 0 and (flat or i):
            break  # a branch has at least one layer
        budget[0] -= 1
        kinds = ["dense"] + (["ofg"] if opts["reuse"] else [])
        kinds += ["loop"] if depth else []
        kind = draw(st.sampled_from(kinds))
        if kind == "dense":
            layer = _dense(draw, labels)
        elif kind == "ofg":
            layer = _ofg(draw, labels, width)
        else:
            layer = _loop(draw, labels, depth, width, budget, opts)
            depth = 1 if layer["out"] == "seq" else 0
        layers.append(layer)
        width = layer["units"]
    if flat and depth:
        layers.append(_loop(draw, labels, depth, width, budget, opts, out="last"))
    return layers


def _uses_n(layers: list) -> bool:
    return any(
        layer["kind"] == "loop"
        and (layer["until"] == N_INPUT or _uses_n(layer["body"]))
        for layer in layers
    )


def reuses(desc: dict) -> bool:
    """Whether a description reaches a marked computation twice: an
    ``OpFromGraph`` layer (at any depth) or a copied branch (what
    ``models(reuse=False)`` leaves out)."""

    def ofg(layers: list) -> bool:
        return any(layer["kind"] == "ofg"
                   or (layer["kind"] == "loop" and ofg(layer["body"]))
                   for layer in layers)

    return any(b["copies"] or ofg(b["layers"]) for b in desc["branches"])


@st.composite
def models(
    draw, reuse: bool = True, streams: bool = True, max_depth: int = MAX_DEPTH
) -> dict:
    """A model description (see the module docstring).

    ``reuse=False`` leaves out everything that reaches one marked
    computation twice: ``OpFromGraph`` layers and copied branches.
    ``streams=False`` leaves out ``RandomStream`` draws (explicit generators
    remain). ``max_depth`` bounds the nesting of loops.
    """
    opts = {"reuse": reuse, "streams": streams}
    labels = _Labels()
    width = draw(st.sampled_from([2, 3]))
    budget = [draw(st.integers(2, 4))]
    inputs: dict[str, int] = {}
    branches = []
    for i in range(draw(st.integers(1, 2))):
        depth = draw(st.sampled_from([d for d in (1, 0, 2, 3) if d <= max_depth]))
        name = f"x{i}"
        inputs[name] = depth
        layers = _chain(draw, labels, depth, width, budget, opts, flat=False)
        copies = []
        if reuse and draw(st.booleans()):
            copies.append(f"x{i}c")
            inputs[copies[-1]] = depth
        side = len(layers) > 1 and draw(st.booleans())
        branches.append(
            {"input": name, "layers": layers, "copies": copies, "side": side}
        )
    uses_n = any(_uses_n(b["layers"]) for b in branches)

    def lengths(depth: int) -> list:
        top = 4 if depth == 1 else 3
        return [draw(st.integers(1, top)) for _ in range(depth)]

    batches = [
        {
            "size": draw(st.integers(3, 5)),
            "n": draw(st.integers(1, 4)) if uses_n else 0,
            "lens": {name: lengths(depth) for name, depth in inputs.items()},
        }
        for _ in range(draw(st.integers(2, 3)))
    ]
    test_lens = {
        name: [
            max(b["lens"][name][axis] for b in batches) + draw(st.integers(1, 2))
            for axis in range(depth)
        ]
        for name, depth in inputs.items()
    }
    return {
        "seed": draw(st.integers(0, 2**16)),
        "width": width,
        "inputs": inputs,
        "until_input": uses_n,
        "batches": batches,
        "test": {
            "size": draw(st.integers(2, 3)),
            "n": N_TEST if uses_n else 0,
            "lens": test_lens,
        },
        "branches": branches,
    }


# --------------------------------------------------------------------------
# Parameters and data (shared by the builder and the interpreter)
# --------------------------------------------------------------------------


def _layer_params(layer: dict, width: int, shapes: dict) -> int:
    """Add the parameter shapes of ``layer`` to ``shapes``; return its width."""
    label, units = layer["label"], layer["units"]
    kind = layer["kind"]
    if kind == "dense":
        shapes[f"{label}.W"] = (width, units)
        shapes[f"{label}.b"] = (units,)
    elif kind == "ofg":
        mode = layer["apply"]
        shapes[f"{label}.W"] = (units if mode == "seq_same" else width, units)
        shapes[f"{label}.b"] = (units,)
        if mode in ("seq", "sum"):
            shapes[f"{label}.W2"] = (units if mode == "seq" else width, units)
            shapes[f"{label}.b2"] = (units,)
    else:
        inner = width
        for sub in layer["body"]:
            inner = _layer_params(sub, inner, shapes)
        shapes[f"{label}.Wx"] = (inner, units)
        for tap in layer["taps"]:
            shapes[f"{label}.Wh{-tap}"] = (units, units)
        shapes[f"{label}.b"] = (units,)
        shapes[f"{label}.H0"] = (-min(layer["taps"]), units)
    return units


def param_values(desc: dict) -> dict[str, np.ndarray]:
    """Every parameter of the model, drawn from the description's seed."""
    shapes: dict[str, tuple] = {}
    for branch in desc["branches"]:
        width = desc["width"]
        for layer in branch["layers"]:
            width = _layer_params(layer, width, shapes)
    rng = np.random.default_rng(desc["seed"])
    return {name: rng.normal(0.0, 0.6, shape) for name, shape in shapes.items()}


def batch_values(desc: dict, batch: dict, salt: int) -> dict[str, Any]:
    """Input arrays of one batch description, keyed by input name."""
    rng = np.random.default_rng([desc["seed"], salt])
    values: dict[str, Any] = {
        name: rng.normal(0.5, 1.5, (*batch["lens"][name], batch["size"], desc["width"]))
        for name in desc["inputs"]
    }
    if desc["until_input"]:
        values[N_INPUT] = np.int64(batch["n"])
    return values


# --------------------------------------------------------------------------
# PyTensor builder
# --------------------------------------------------------------------------


@dataclass
class Model:
    """A built description: the graph, its parameters and its data."""

    desc: dict
    inputs: list
    outputs: list
    params: dict
    batches: list
    test: dict
    #: per input name, the axis holding the batch
    batch_axis: dict = field(default_factory=dict)

    def values(self, batch: dict) -> list:
        return [batch[v.name] for v in self.inputs]


@contextmanager
def _quiet_random_stream():
    """Silence exactly the deprecation notices of the ``RandomStream`` API.

    ``RandomStream`` is deprecated in favour of explicit generators, its draws
    hide their next-generator output, and a ``scan`` whose step draws from it
    has updates, which only the old ``return_updates=True`` signature allows.
    The generated models use it on purpose (user code still does).
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="RandomStream is deprecated", category=FutureWarning
        )
        warnings.filterwarnings(
            "ignore",
            message="RandomVariable Ops will stop hiding",
            category=DeprecationWarning,
        )
        warnings.filterwarnings(
            "ignore",
            message="Scan return signature will change",
            category=DeprecationWarning,
        )
        warnings.filterwarnings(
            "ignore",
            message="Setting default_update is deprecated",
            category=DeprecationWarning,
        )
        yield


def _elements(shape, axes):
    return functools.reduce(operator.mul, [shape[a] for a in axes])


class _Builder:
    """Builds the PyTensor graph of a description (see :func:`build`)."""

    def __init__(self, desc: dict) -> None:
        self.desc = desc
        self.params = {
            name: pytensor.shared(value, name=name)
            for name, value in param_values(desc).items()
        }
        self.inputs = {
            name: pt.tensor(name=name, dtype="float64", shape=(None,) * (depth + 2))
            for name, depth in desc["inputs"].items()
        }
        self.n = pt.lscalar(N_INPUT) if desc["until_input"] else None
        self.ofgs: dict[str, OpFromGraph] = {}

    # a layer maps (value, time axes) to (value, time axes)

    def chain(self, layers: list, x, depth: int):
        for layer in layers:
            x, depth = self.layer(layer, x, depth)
        return x, depth

    def layer(self, layer: dict, x, depth: int):
        return getattr(self, layer["kind"])(layer, x, depth)

    def normalize(self, h, axes: tuple, layer: dict):
        label = layer["label"]
        count = _elements(h.shape, axes) if layer["count"] else None
        mean = popstats.bn_statistic(
            h.mean(axis=axes), label=f"{label}.mean", role="mean", group=label,
            count=count,
        )
        if not layer["var"]:
            return pt.tanh(h - mean)
        var = popstats.bn_statistic(
            h.var(axis=axes), label=f"{label}.var", role="var", group=label,
            count=count,
        )
        return pt.tanh((h - mean) / pt.sqrt(var + EPS))

    def dense(self, layer: dict, x, depth: int):
        p = self.params
        h = pt.dot(x, p[f"{layer['label']}.W"]) + p[f"{layer['label']}.b"]
        return self.normalize(h, tuple(range(depth + 1)), layer), depth

    def ofg(self, layer: dict, x, depth: int):
        label = layer["label"]
        op = self.ofgs.get(label)
        if op is None:
            xi = pt.tensor(dtype="float64", shape=(None,) * (depth + 2))
            wi = pt.tensor(dtype="float64", shape=(None, None))
            bi = pt.tensor(dtype="float64", shape=(None,))
            out = self.normalize(pt.dot(xi, wi) + bi, tuple(range(depth + 1)), layer)
            op = OpFromGraph([xi, wi, bi], [out], inline=layer["inline"], name=label)
            self.ofgs[label] = op
        p = {k.split(".")[-1]: v for k, v in self.params.items()
             if k.startswith(f"{label}.")}
        mode = layer["apply"]
        if mode == "once":
            y = op(x, p["W"], p["b"])
        elif mode == "seq":
            y = op(op(x, p["W"], p["b"]), p["W2"], p["b2"])
        elif mode == "seq_same":
            y = op(op(x, p["W"], p["b"]), p["W"], p["b"])
        else:
            y = op(x, p["W"], p["b"]) + op(x, p["W2"], p["b2"])
        return y, depth

    def loop(self, layer: dict, x, depth: int):
        label, units, taps = layer["label"], layer["units"], layer["taps"]
        until, rng = layer["until"], layer["rng"]
        p = self.params
        h0 = p[f"{label}.H0"]
        batch = x.shape[-2]
        if taps == [-1]:
            init = pt.zeros((batch, units), dtype="float64") + h0[0]
        else:
            init = {
                "initial": pt.zeros((-min(taps), batch, units), dtype="float64")
                + h0[:, None, :],
                "taps": taps,
            }
        outputs_info = [init]
        if until is not None:
            outputs_info.append(pt.as_tensor(np.int64(0)))
        if rng == "explicit":
            generator = np.random.default_rng(0)
            outputs_info.append(pytensor.shared(generator, name=f"{label}.rng"))
        stream = None
        if rng == "stream":
            with _quiet_random_stream():
                stream = RandomStream(0)
        non_sequences = []
        if layer["outer"]:
            # a statistic of the whole sequence, used inside the loop
            mean = x.mean(axis=tuple(range(depth + 1)))
            non_sequences.append(
                popstats.bn_statistic(mean, label=f"{label}.outer", role="mean")
            )
        if until == N_INPUT:
            non_sequences.append(self.n)
        weights = [p[f"{label}.Wx"], *(p[f"{label}.Wh{-t}"] for t in taps),
                   p[f"{label}.b"]]
        non_sequences += weights

        def step(xt, *args):
            args = list(args)
            prev = [args.pop(0) for _ in taps]
            counter = args.pop(0) if until is not None else None
            gen = args.pop(0) if rng == "explicit" else None
            if layer["outer"]:
                xt = xt - args.pop(0)
            limit = args.pop(0) if until == N_INPUT else until
            wx, *whs, b = args
            z, _ = self.chain(layer["body"], xt, depth - 1)
            a = pt.dot(z, wx) + b
            for h_prev, wh in zip(prev, whs, strict=True):
                a = a + pt.dot(h_prev, wh)
            h = self.normalize(a, (0,), layer)
            outs = [h]
            if gen is not None:
                next_gen, mask = pt.random.binomial(
                    1, 1.0, size=h.shape, rng=gen, return_next_rng=True
                )
                outs = [h * mask, next_gen]
            if stream is not None:
                outs[0] = outs[0] * stream.binomial(1, 1.0, size=h.shape)
            if counter is None:
                return outs
            outs.insert(1, counter + 1)
            return outs, until_(pt.ge(counter + 1, limit))

        kwargs = {
            "sequences": [x],
            "outputs_info": outputs_info,
            "non_sequences": non_sequences,
            "go_backwards": layer["backwards"],
            "return_list": True,
            "name": label if layer["named"] else None,
        }
        if stream is None:
            outs = pytensor.scan(step, return_updates=False, **kwargs)
        else:
            with _quiet_random_stream():
                outs, _ = pytensor.scan(step, return_updates=True, **kwargs)
        states = outs[0]
        if layer["out"] == "last":
            return states[-1], 0
        return states, 1


def build(desc: dict) -> Model:
    """The PyTensor model of a description (deterministic; see module doc).

    Outputs, per branch: the final value, then (with ``side``) the value
    after the first layer; then the same for each copy, made with
    ``clone_replace`` of the branch's outputs onto the copy's input.
    """
    builder = _Builder(desc)
    outputs = []
    for branch in desc["branches"]:
        x = builder.inputs[branch["input"]]
        depth = desc["inputs"][branch["input"]]
        first, depth = builder.layer(branch["layers"][0], x, depth)
        final, _ = builder.chain(branch["layers"][1:], first, depth)
        outs = [final, first] if branch["side"] else [final]
        outputs += outs
        for copy in branch["copies"]:
            outputs += clone_replace(outs, replace={x: builder.inputs[copy]})
    inputs = list(builder.inputs.values())
    if builder.n is not None:
        inputs.append(builder.n)
    batch_axis = dict(desc["inputs"])
    return Model(
        desc,
        inputs,
        outputs,
        builder.params,
        [batch_values(desc, b, k) for k, b in enumerate(desc["batches"])],
        batch_values(desc, desc["test"], len(desc["batches"])),
        batch_axis,
    )


# --------------------------------------------------------------------------
# NumPy interpreter
# --------------------------------------------------------------------------


class _Run:
    """Runs one branch instance of a description in NumPy.

    ``bn(app, steps, value)`` is the statistic callback of ``reference.py``
    (:class:`reference.Recorder` or :class:`reference.Population`); ``app``
    is ``label@where`` and ``steps`` the enclosing loops' step indices,
    outermost first (iteration order, also for ``go_backwards``).
    """

    def __init__(self, params: dict, values: dict, bn) -> None:
        self.p = params
        self.values = values
        self.bn = bn

    def chain(self, layers, x, depth, where, steps):
        for layer in layers:
            x, depth = self.layer(layer, x, depth, where, steps)
        return x, depth

    def layer(self, layer, x, depth, where, steps):
        return getattr(self, layer["kind"])(layer, x, depth, where, steps)

    def normalize(self, h, axes, layer, where, steps):
        label = layer["label"]
        mean = self.bn(f"{label}.mean@{where}", steps, h.mean(axis=axes))
        if not layer["var"]:
            return np.tanh(h - mean)
        var = self.bn(f"{label}.var@{where}", steps, h.var(axis=axes))
        return np.tanh((h - mean) / np.sqrt(var + EPS))

    def dense(self, layer, x, depth, where, steps):
        label = layer["label"]
        h = x @ self.p[f"{label}.W"] + self.p[f"{label}.b"]
        return self.normalize(h, tuple(range(depth + 1)), layer, where, steps), depth

    def ofg(self, layer, x, depth, where, steps):
        label = layer["label"]
        axes = tuple(range(depth + 1))

        def apply(v, w, b, k):
            at = f"{where}/{label}:{k}"
            return self.normalize(v @ w + b, axes, layer, at, steps)

        w, b = self.p[f"{label}.W"], self.p[f"{label}.b"]
        w2, b2 = self.p.get(f"{label}.W2"), self.p.get(f"{label}.b2")
        mode = layer["apply"]
        if mode == "once":
            y = apply(x, w, b, 0)
        elif mode == "seq":
            y = apply(apply(x, w, b, 0), w2, b2, 1)
        elif mode == "seq_same":
            y = apply(apply(x, w, b, 0), w, b, 1)
        else:
            y = apply(x, w, b, 0) + apply(x, w2, b2, 1)
        return y, depth

    def loop(self, layer, x, depth, where, steps):
        label, taps, until = layer["label"], layer["taps"], layer["until"]
        length, batch = x.shape[0], x.shape[-2]
        if layer["outer"]:
            outer = self.bn(
                f"{label}.outer@{where}", steps, x.mean(axis=tuple(range(depth + 1)))
            )
        limit = length if until is None else int(
            self.values[N_INPUT] if until == N_INPUT else until
        )
        n_steps = max(1, min(limit, length))
        h0 = self.p[f"{label}.H0"]
        history = [np.zeros((batch, layer["units"])) + row for row in h0]
        wx, b = self.p[f"{label}.Wx"], self.p[f"{label}.b"]
        states = []
        for t in range(n_steps):
            xt = x[length - 1 - t] if layer["backwards"] else x[t]
            if layer["outer"]:
                xt = xt - outer
            z, _ = self.chain(layer["body"], xt, depth - 1, where, (*steps, t))
            a = z @ wx + b
            for tap in taps:
                a = a + history[len(history) + tap] @ self.p[f"{label}.Wh{-tap}"]
            h = self.normalize(a, (0,), layer, where, (*steps, t))
            history.append(h)
            states.append(h)
        if layer["out"] == "last":
            return states[-1], 0
        return np.stack(states), 1


def interpret(desc: dict, params: dict, values: dict, bn) -> list:
    """The outputs of the model on one batch, in :func:`build`'s order."""
    run = _Run(params, values, bn)
    outputs = []
    for i, branch in enumerate(desc["branches"]):
        for j, name in enumerate([branch["input"], *branch["copies"]]):
            where = f"b{i}" if j == 0 else f"b{i}c{j}"
            x, depth = values[name], desc["inputs"][name]
            first, depth = run.layer(branch["layers"][0], x, depth, where, ())
            final, _ = run.chain(branch["layers"][1:], first, depth, where, ())
            outputs += [final, first] if branch["side"] else [final]
    return outputs


def app_label(app: str) -> str:
    """The statistic label of an interpreter application ``label@where``."""
    return app.split("@", 1)[0]


def reference_statistics(desc: dict, params: dict, batches: list) -> dict:
    """``{app: (value, coverage)}``: the reference estimate per application."""
    per_app: dict[str, list] = {}
    depth: dict[str, int] = {}
    for values in batches:
        recorder = ref.Recorder()
        interpret(desc, params, values, recorder)
        for app, cells in recorder.cells.items():
            depth[app] = len(next(iter(cells)))
            per_app.setdefault(app, []).append(recorder.stacked(app))
    return {
        app: ref.reference_estimate(arrays, depth[app])
        for app, arrays in per_app.items()
    }


# --------------------------------------------------------------------------
# Structural snapshot
# --------------------------------------------------------------------------


def snapshot(outputs) -> list:
    """What must not change in the user's graph: every apply node (inner
    graphs of Scan and OpFromGraph included) with its op, its input and
    output variables (identity, type, name), and per inner graph its number
    of nodes, inputs and outputs."""
    rows = []
    for level, node in ref.iter_nodes(outputs):
        fgraph = ref.inner_fgraph(node.op)
        inner = None
        if fgraph is not None:
            inner = (
                id(fgraph), len(fgraph.apply_nodes), len(fgraph.inputs),
                len(fgraph.outputs),
            )
        rows.append((
            level,
            id(node),
            id(node.op),
            str(node.op),
            tuple(id(v) for v in node.inputs),
            tuple((id(v), str(v.type), v.name) for v in node.outputs),
            inner,
        ))
    return rows


# --------------------------------------------------------------------------
# The separate process of the persistence check
# --------------------------------------------------------------------------


def replay(lines, mode: str, out_path: str) -> None:
    """Rebuild, load, rewrite and evaluate every model of a manifest.

    ``lines`` yields JSON lines ``{"index": i, "desc": ..., "stats": path}``
    (from the parent as it goes, or a file). Outputs of model ``i`` go to
    ``OUT.npz`` as ``"i/j"`` once the lines end; an exception for a model
    goes to ``OUT.json`` as ``{"i": message}`` and the others still run.
    """
    arrays, errors = {}, {}
    for line in lines:
        if not line.strip():
            continue
        entry = json.loads(line)
        i = entry["index"]
        try:
            model = build(entry["desc"])
            stats = popstats.load(entry["stats"])
            inference = popstats.rewrite(model.outputs, stats)
            fn = pytensor.function(model.inputs, inference, mode=mode)
            for j, value in enumerate(fn(*model.values(model.test))):
                arrays[f"{i}/{j}"] = value
        except Exception as exc:  # reported to the parent, which fails
            errors[str(i)] = f"{type(exc).__name__}: {exc}"
    np.savez(out_path + ".npz", **arrays)
    with open(out_path + ".json", "w") as handle:
        json.dump(errors, handle)


if __name__ == "__main__":
    # python generated.py MODE OUT [MANIFEST.jsonl]  (else lines from stdin)
    pytensor.config.floatX = "float64"
    with warnings.catch_warnings():  # the BLAS lookup warns on these machines
        warnings.simplefilter("ignore")
        _ = pytensor.config.blas__ldflags
    if len(sys.argv) > 3:
        with open(sys.argv[3]) as manifest:
            replay(manifest, sys.argv[1], sys.argv[2])
    else:
        replay(sys.stdin, sys.argv[1], sys.argv[2])
