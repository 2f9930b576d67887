"""popstats against its peers: a plain forward pass and PyTorch, side by side.

Per model, on the same weights, the same N batches (the same float32 NumPy
arrays; PyTorch gets zero-copy views of them) and the same number of
threads, three candidates do the job of estimating the population statistics
of the batch-normalized layers, or the part of it that is the floor:

* **popstats**: ``popstats.Estimation(inputs, outputs, mode=...)`` compiled
  once (not timed), then per repeat ``run.finalize(run.run(batches,
  progress=False))`` -- the default ``"mean"`` estimator (equal-weight
  average of the batch statistics), per time step inside loops
  (``time="step"``). Only the statistics are computed: layers after the
  last one are pruned from its graph.
* **forward**: the same training graph (batch statistics, marked -- markers
  compile away) compiled with ``pytensor.function(inputs, outputs,
  mode=...)`` and called on the same N batches. No statistics are kept: the
  floor an estimation pass is measured against.
* **PyTorch** (if installed; the columns read "n/a" otherwise), the same job
  as people write it there, under ``torch.no_grad``:

  - ``mlp``: 784-1024x3-10 (Linear, BatchNorm1d, ReLU per hidden layer),
    batch 256; ``torch.optim.swa_utils.update_bn(loader, model)`` over the
    batches (it resets the running statistics and sets ``momentum=None``: a
    cumulative average of the batch means and of the *unbiased* batch
    variances).
  - ``conv``: 28x28x1 input, batch 128: conv3x3(1->16, padding 1)-BN-ReLU,
    conv3x3(16->32, padding 1)-BN-ReLU, global average pool, Linear(32->10);
    ``update_bn``. PyTensor 3.x has no conv2d op: there the convolution is a
    matrix product over patches (im2col: the 9 shifted slices of the
    zero-padded NHWC input stacked along the channel axis, times a
    (9*C_in, C_out) weight, PyTorch's (C_out, C_in, 3, 3) weight transposed
    to match). BN statistics per channel over (batch, H, W). PyTensor takes
    the NCHW array PyTorch takes and transposes it in the graph.
  - ``rnn``: recurrent batch normalization (Cooijmans et al. 2016), 50
    steps, batch 64, 32 inputs -> 128 hidden, ``h = tanh(BN_t(x_t Wx) +
    BN_t(h Wh))`` with per-step statistics (``_common.RNN``, a
    ``pytensor.scan`` marked with ``popstats.bn_statistic``): 2 (mean, var)
    pairs per step. PyTorch: a hand-written eager loop over the steps doing
    the same forward math step by step (``x_t @ Wx`` inside the loop, as
    BN-LSTM implementations do) and keeping each step's batch mean and
    biased batch variance (``torch.var_mean``) in a float32 buffer per
    batch, added once per batch to **float64** sums (torch tensors), as
    popstats accumulates in float64; divided by N at the end.
  - ``lstm``: the same setup with a BN-LSTM cell (Cooijmans et al.): BN on
    ``x_t Wx`` and ``h Wh`` (4*hidden wide each) and on the cell state,
    ``h = o * tanh(BN_t(c))``: 3 (mean, var) pairs per step. PyTorch: the
    eager loop.

Method: every candidate is called once untimed first (Numba and JAX compile
on the first call, PyTorch warms up), then timed ``--repeats`` times,
interleaved (popstats, forward, PyTorch, popstats, ...) so that load changes
of a shared machine hit all alike; each timing is one pass over all N
batches. Tables give ms per batch (best of the repeats) and ratios of the
best and of the median times. By default the clock is the CPU time of the
process with every library (BLAS, OpenMP, Numba, XLA, PyTorch intra-op) on
one thread -- steady on a loaded machine; ``--threads N`` sets all of them
to N (and the clock to wall time unless ``--clock`` says otherwise).

Every figure is checked to be of equal work, once per model and mode, on
the untimed first calls (the "max rel. diff" columns, max |a - b| / max |b|
over all elements of all statistics, resp. outputs):

* forward: the PyTensor forward output against PyTorch's on one batch
  (train mode, batch statistics);
* statistics: every popstats statistic against PyTorch's (``running_mean``;
  ``running_var`` against popstats' biased variance times m/(m-1), m the
  elements per channel and batch; the eager loops' per-step averages).

Both are float32 rounding, ~1e-7 to ~1e-5 (more through the recurrences);
anything above ~1e-4 means the two sides do not compute the same thing and
the timings do not compare.

All graphs are float32: the script sets PyTensor's floatX to float32 (so
that constants such as eps do not upcast). Under JAX, PyTensor then runs JAX
without x64 (reductions accumulate in float32 there); the truncation
warnings this gives are silenced.

On a GPU (``benchmarks/gpu_peers.py`` runs the set issue 23 asks for):
``--device cuda`` puts PyTorch on the GPU, against ``--modes JAX`` with JAX
on the GPU (it stops if either sees none). Both sides then copy each host
batch to the GPU inside the timed pass (``update_bn(..., device=)``, the
eager loops' ``x.to``; PyTensor's JAX backend for popstats and the forward
pass) and are timed to completion: the forward outputs through
``np.asarray``, popstats' statistics are NumPy arrays when ``finalize``
returns, PyTorch ends with ``torch.cuda.synchronize()``; the clock is the
wall clock. ``--torch-tf32 on|off`` sets ``torch.backends.cuda.matmul.
allow_tf32`` and ``torch.backends.cudnn.allow_tf32`` (default ``auto``: off
when ``JAX_DEFAULT_MATMUL_PRECISION`` is ``highest``, else on, as JAX
computes float32 matmuls in TF32 by default). The table headings then name
the card and driver (nvidia-smi), CUDA, cuDNN, JAX/jaxlib and both sides'
precision. ``--float64-reference`` adds the max rel. diff of popstats' and
of PyTorch's statistics to a NumPy float64 forward pass over the same
batches (written from each model's definition; ``update_bn``'s variances
made biased), ``--reference-cache DIR`` keeps those references between
runs. ``--accumulate host,graph`` gives a table of each. With none of these
options the script runs as before (PyTorch on the CPU).

Targets (never asserted): popstats / forward <= 1.05x per batch; popstats
speed vs PyTorch (PyTorch time / popstats time, >1 means popstats faster)
>= 1.0x on ``mlp`` and ``conv``, >= 1.3x on ``rnn`` and ``lstm``.

Usage::

    python benchmarks/peers.py --quick        # tiny sizes, seconds per mode
    python benchmarks/peers.py                # default, CVM, JAX (if installed)
    python benchmarks/peers.py --modes default --repeats 3 --models mlp,rnn
    python benchmarks/peers.py --check        # only the equal-work checks
    python benchmarks/peers.py --threads 2    # every library on 2 threads
    python benchmarks/peers.py --modes JAX --device cuda --torch-tf32 off
    python benchmarks/peers.py --accumulate host,graph --float64-reference

The first run on a machine takes longer (``--quick``: ~1.5 min in the
default mode) while Numba and the C compiler fill PyTensor's caches; JAX
compiles anew in every run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
import warnings


def _preset_environment(argv: list[str]) -> None:
    """Set threads and floatX before ``_common`` loads NumPy and PyTensor.

    ``--threads N`` overrides the one-thread default of ``_common`` for
    OpenBLAS/OpenMP/MKL, Numba and XLA (they read it at load time). floatX
    float32 keeps Python constants (``eps``) from upcasting the float32
    graphs to float64.
    """
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--threads", type=int)
    threads = pre.parse_known_args(argv)[0].threads
    if threads is not None:
        if threads < 1:
            raise SystemExit("--threads must be >= 1")
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                    "NUMBA_NUM_THREADS"):
            os.environ[var] = str(threads)
        multi = "true" if threads > 1 else "false"
        os.environ["XLA_FLAGS"] = (f"--xla_cpu_multi_thread_eigen={multi} "
                                   f"intra_op_parallelism_threads={threads}")
    flags = os.environ.get("PYTENSOR_FLAGS", "")
    os.environ["PYTENSOR_FLAGS"] = ",".join(f for f in (flags, "floatX=float32") if f)


_preset_environment(sys.argv[1:])

import _common as C  # noqa: E402
import numpy as np  # noqa: E402
import pytensor  # noqa: E402
import pytensor.tensor as pt  # noqa: E402

import popstats  # noqa: E402

try:
    import torch
except ImportError:  # the PyTorch columns read "n/a"
    torch = None

F32 = "float32"
EPS = C.EPS  # 1e-5, PyTorch BatchNorm's default too
THREADS = int(os.environ.get("OMP_NUM_THREADS", "1"))
MODELS = ("mlp", "conv", "rnn", "lstm")
DEVICE = ["cpu"]  # PyTorch's device: --device (cpu, or cuda)
#: JAX_DEFAULT_MATMUL_PRECISION values that keep float32 matrix products in
#: full float32 on a GPU (the others let it use TF32 or bfloat16 passes)
FULL_F32 = ("highest", "float32", "fp32")


def _synchronize() -> None:
    """Wait for PyTorch's queued GPU work (nothing to wait for on the CPU)."""
    if DEVICE[0] != "cpu":
        torch.cuda.synchronize()


def _setup_torch() -> None:
    if torch is None:
        return
    torch.set_num_threads(THREADS)
    # RuntimeError: already set (parallel work has started)
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)


def rel_diff(a, b) -> float:
    """max |a - b| / max |b| (one figure for a whole array)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def _shared(value: np.ndarray, name: str):
    return pytensor.shared(value, name=name, shape=value.shape)


#: mark the BN-LSTM's statistics with their role, group and element count
#: (what ``"weighted"`` and ``"pooled"`` need; se_cost.py sets it)
MARK_COUNTS = [False]


def _mark(mean, var, label: str, mark: bool, count=None):
    if mark and MARK_COUNTS[0] and count is not None:
        mean = popstats.bn_statistic(mean, label=f"{label}.mean", role="mean",
                                     group=label, count=count)
        var = popstats.bn_statistic(var, label=f"{label}.var", role="var",
                                    group=label, count=count)
    elif mark:
        mean = popstats.bn_statistic(mean, label=f"{label}.mean")
        var = popstats.bn_statistic(var, label=f"{label}.var")
    return mean, var


def _t(a: np.ndarray):
    """A float32 torch tensor of a copy of ``a`` (weights)."""
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32).copy())


def _f64(a) -> np.ndarray:
    """A float64 copy of a weight (a NumPy array or a shared variable's value)."""
    value = a.get_value() if hasattr(a, "get_value") else a
    return np.asarray(value, dtype=np.float64)


def _np_bn(h: np.ndarray, axes, label: str, out: dict):
    """NumPy float64 batch normalization (no affine): keeps mean, biased var."""
    mean, var = h.mean(axis=axes), h.var(axis=axes)
    out[f"{label}.mean"], out[f"{label}.var"] = mean, var
    return (h - mean) / np.sqrt(var + EPS)


def _np_sigmoid(a: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-a))


def _np_steps(step, x: np.ndarray, state: tuple, labels) -> dict:
    """Run ``step(x_t, state, stats) -> state`` over the steps of ``x``;
    per label the (steps, width) array of the per-step statistics."""
    per_step: dict[str, list] = {}
    for x_t in x:
        stats: dict = {}
        state = step(x_t, state, stats)
        for key, value in stats.items():
            per_step.setdefault(key, []).append(value)
    return {key: np.stack(per_step[key]) for key in
            (f"{lab}.{kind}" for lab in labels for kind in ("mean", "var"))}


# --------------------------------------------------------------------------
# models: one set of float32 NumPy weights, a PyTensor graph and a PyTorch
# counterpart of it


class Mlp:
    """784-1024x3-10: ``_common.MLP`` (Linear-BN-ReLU) plus a Linear output."""

    def __init__(self, n_in: int, width: int, layers: int, batch: int, n_out=10):
        self.net = C.MLP(layers, width, n_in=n_in)
        rng = np.random.default_rng(2)
        self.W_out = (rng.standard_normal((width, n_out)) / np.sqrt(width)).astype(F32)
        self.b_out = (rng.standard_normal(n_out) * 0.1).astype(F32)
        self.batch = batch
        self.desc = f"MLP {n_in}-{width}x{layers}-{n_out}, batch {batch}"

    def graph(self):
        x = self.net.input()
        h = self.net.build(x)
        return x, pt.dot(h, _shared(self.W_out, "W_out")) + _shared(self.b_out, "b_out")

    def batches(self, n: int) -> list[np.ndarray]:
        return [b["x"] for b in self.net.batches(n, self.batch)]

    def elements(self, label: str) -> int:
        return self.batch

    def numpy_stats(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """One batch's statistics, the forward pass in NumPy float64."""
        out: dict = {}
        h = np.asarray(x, dtype=np.float64)
        for i, (W, b, gamma, beta) in enumerate(self.net.params):
            h = _np_bn(h @ _f64(W) + _f64(b), 0, f"layer{i}", out)
            h = np.maximum(h * _f64(gamma) + _f64(beta), 0.0)
        return out

    def torch_model(self):
        layers = []
        for W, b, gamma, beta in self.net.params:
            W = W.get_value()
            lin = torch.nn.Linear(*W.shape)
            lin.weight.data = _t(W.T)
            lin.bias.data = _t(b.get_value())
            bn = torch.nn.BatchNorm1d(W.shape[1], eps=EPS)
            bn.weight.data, bn.bias.data = _t(gamma.get_value()), _t(beta.get_value())
            layers += [lin, bn, torch.nn.ReLU()]
        out = torch.nn.Linear(*self.W_out.shape)
        out.weight.data, out.bias.data = _t(self.W_out.T), _t(self.b_out)
        return _BNModel(torch.nn.Sequential(*layers, out), "layer")


def _conv3x3(h, w: np.ndarray, size: int):
    """3x3 convolution, padding 1, of NHWC ``h`` as im2col and one matmul.

    ``w`` is PyTorch's (C_out, C_in, 3, 3) weight; row ``(3 i + j) C_in + c``
    of the (9 C_in, C_out) matrix is ``w[:, c, i, j]``, matching the order in
    which the shifted slices are stacked.
    """
    c_out, c_in = w.shape[:2]
    wmat = np.ascontiguousarray(w.transpose(2, 3, 1, 0).reshape(9 * c_in, c_out))
    n = h.shape[0]
    padded = pt.zeros((n, size + 2, size + 2, c_in), dtype=F32)
    padded = pt.set_subtensor(padded[:, 1:-1, 1:-1, :], h)
    patches = pt.concatenate(
        [padded[:, i:i + size, j:j + size, :] for i in range(3) for j in range(3)],
        axis=3,
    )
    out = pt.dot(patches.reshape((-1, 9 * c_in)), _shared(wmat, "Wconv"))
    return out.reshape((n, size, size, c_out))


class ConvNet:
    """conv3x3-BN-ReLU x2, global average pool, Linear; NCHW input."""

    def __init__(self, size: int, channels: tuple[int, ...], batch: int, n_out=10):
        rng = np.random.default_rng(0)
        self.size, self.batch = size, batch
        self.convs = []
        c_in = 1
        for c in channels:
            w = (rng.standard_normal((c, c_in, 3, 3)) / np.sqrt(9 * c_in)).astype(F32)
            gamma = (1.0 + 0.1 * rng.standard_normal(c)).astype(F32)
            beta = (0.1 * rng.standard_normal(c)).astype(F32)
            self.convs.append((w, gamma, beta))
            c_in = c
        self.W_out = (rng.standard_normal((c_in, n_out)) / np.sqrt(c_in)).astype(F32)
        self.b_out = (0.1 * rng.standard_normal(n_out)).astype(F32)
        chans = "-".join(str(c) for c in channels)
        self.desc = (f"conv {size}x{size}x1, 3x3 convs {chans}, GAP, {n_out} out, "
                     f"batch {batch}")

    def graph(self, mark: bool = True):
        s = self.size
        x = pt.tensor("x", shape=(None, 1, s, s), dtype=F32)
        h = x.dimshuffle(0, 2, 3, 1)  # NCHW -> NHWC
        for i, (w, gamma, beta) in enumerate(self.convs):
            h = _conv3x3(h, w, s)
            mean, var = _mark(h.mean(axis=(0, 1, 2)), h.var(axis=(0, 1, 2)),
                              f"conv{i}", mark)
            h = (h - mean) / pt.sqrt(var + EPS) * _shared(gamma, f"gamma{i}")
            h = pt.maximum(h + _shared(beta, f"beta{i}"), 0.0)
        pooled = h.mean(axis=(1, 2))
        y = pt.dot(pooled, _shared(self.W_out, "W_out")) + _shared(self.b_out, "b_out")
        return x, y

    def batches(self, n: int) -> list[np.ndarray]:
        rng = np.random.default_rng(1)
        shape = (self.batch, 1, self.size, self.size)
        return [rng.standard_normal(shape).astype(F32) for _ in range(n)]

    def elements(self, label: str) -> int:
        return self.batch * self.size * self.size

    def numpy_stats(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """One batch's statistics, the forward pass in NumPy float64.

        The convolution from its definition (cross-correlation, as PyTorch's
        Conv2d): ``out[n, y, x, o] = sum_{i, j, c} pad[n, y + i, x + j, c] *
        w[o, c, i, j]``, one product per tap -- not the graph's im2col.
        """
        out: dict = {}
        s = self.size
        h = np.asarray(x, dtype=np.float64).transpose(0, 2, 3, 1)  # NHWC
        for k, (w, gamma, beta) in enumerate(self.convs):
            w = _f64(w)
            padded = np.pad(h, ((0, 0), (1, 1), (1, 1), (0, 0)))
            h = sum(padded[:, i:i + s, j:j + s, :] @ w[:, :, i, j].T
                    for i in range(3) for j in range(3))
            h = _np_bn(h, (0, 1, 2), f"conv{k}", out)
            h = np.maximum(h * _f64(gamma) + _f64(beta), 0.0)
        return out

    def torch_model(self):
        layers = []
        for w, gamma, beta in self.convs:
            conv = torch.nn.Conv2d(w.shape[1], w.shape[0], 3, padding=1, bias=False)
            conv.weight.data = _t(w)
            bn = torch.nn.BatchNorm2d(w.shape[0], eps=EPS)
            bn.weight.data, bn.bias.data = _t(gamma), _t(beta)
            layers += [conv, bn, torch.nn.ReLU()]
        out = torch.nn.Linear(*self.W_out.shape)
        out.weight.data, out.bias.data = _t(self.W_out.T), _t(self.b_out)
        model = torch.nn.Sequential(
            *layers, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), out
        )
        return _BNModel(model, "conv")


class _BNModel:
    """A ``torch.nn`` model whose statistics ``update_bn`` estimates.

    On ``--device cuda`` the model lives on the GPU and ``update_bn`` copies
    each host batch to it (its ``device`` argument), as popstats' JAX pass
    copies each NumPy batch; the pass ends with ``torch.cuda.synchronize``.
    """

    def __init__(self, model, prefix: str):
        self.model = model.to(DEVICE[0])
        self.bns = [m for m in model.modules()
                    if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        self.prefix = prefix

    def forward(self, x):
        self.model.train()
        with torch.no_grad():
            return self.model(x.to(DEVICE[0])).cpu().numpy()

    def estimate(self, loader) -> None:
        device = None if DEVICE[0] == "cpu" else DEVICE[0]
        torch.optim.swa_utils.update_bn(loader, self.model, device=device)  # no_grad
        _synchronize()

    def statistics(self) -> dict[str, np.ndarray]:
        """``{label: value}``; variances are update_bn's unbiased ones."""
        out = {}
        for i, bn in enumerate(self.bns):
            out[f"{self.prefix}{i}.mean"] = bn.running_mean.cpu().numpy().copy()
            out[f"{self.prefix}{i}.var"] = bn.running_var.cpu().numpy().copy()
        return out


class Rnn:
    """``_common.RNN`` (BN-RNN in a Scan, per-step statistics)."""

    labels = ("input", "recurrent")

    def __init__(self, n_in: int, hidden: int, steps: int, batch: int):
        self.net = C.RNN(n_in, hidden)
        self.steps, self.batch = steps, batch
        self.desc = f"BN-RNN {n_in}->{hidden}, {steps} steps, batch {batch}"

    def graph(self):
        x = self.net.input()
        return x, self.net.build(x)

    def batches(self, n: int) -> list[np.ndarray]:
        return [b["x"] for b in self.net.batches(n, self.steps, self.batch)]

    def elements(self, label: str) -> int:
        return self.batch

    def torch_model(self):
        n = self.net
        return _EagerLoop(self, [_t(p.get_value()) for p in (n.Wx, n.Wh, n.gx, n.gh)])

    def numpy_stats(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """One batch's per-step statistics, the forward pass in NumPy float64."""
        n = self.net
        Wx, Wh, gx, gh = (_f64(p) for p in (n.Wx, n.Wh, n.gx, n.gh))

        def step(x_t, state, stats):
            (h,) = state
            a = _np_bn(x_t @ Wx, 0, "input", stats) * gx
            r = _np_bn(h @ Wh, 0, "recurrent", stats) * gh
            return (np.tanh(a + r),)

        x = np.asarray(x, dtype=np.float64)
        return _np_steps(step, x, (np.zeros((x.shape[1], n.hidden)),), self.labels)

    @staticmethod
    def torch_step(x_t, state, params, stats):
        Wx, Wh, gx, gh = params
        (h,) = state
        a = x_t @ Wx
        r = h @ Wh
        va, ma = torch.var_mean(a, dim=0, correction=0)
        vr, mr = torch.var_mean(r, dim=0, correction=0)
        stats[0], stats[1], stats[2], stats[3] = ma, va, mr, vr
        h = torch.tanh((a - ma) / torch.sqrt(va + EPS) * gx
                       + (r - mr) / torch.sqrt(vr + EPS) * gh)
        return h, (h,)

    def initial_state(self, batch: int):
        return (torch.zeros((batch, self.net.hidden), device=DEVICE[0]),)


class Lstm:
    """BN-LSTM (Cooijmans et al. 2016) in a Scan: BN on x Wx, h Wh and c."""

    labels = ("input", "recurrent", "cell")

    def __init__(self, n_in: int, hidden: int, steps: int, batch: int):
        rng = np.random.default_rng(0)
        self.n_in, self.hidden, self.steps, self.batch = n_in, hidden, steps, batch
        H = hidden
        self.params = {
            "Wx": (rng.standard_normal((n_in, 4 * H)) / np.sqrt(n_in)).astype(F32),
            "Wh": (rng.standard_normal((H, 4 * H)) / np.sqrt(H)).astype(F32),
            # Cooijmans et al.: gamma 0.1, beta 0 (and a forget-gate bias)
            "gx": np.full(4 * H, 0.1, dtype=F32),
            "gh": np.full(4 * H, 0.1, dtype=F32),
            "b": np.concatenate([np.zeros(H), np.ones(H), np.zeros(2 * H)]).astype(F32),
            "gc": np.full(H, 0.1, dtype=F32),
            "bc": np.zeros(H, dtype=F32),
        }
        self.desc = f"BN-LSTM {n_in}->{hidden}, {steps} steps, batch {batch}"

    def graph(self, mark: bool = True):
        H = self.hidden
        x = pt.tensor3("x", shape=(None, None, self.n_in), dtype=F32)

        def norm(a, gamma, label):
            mean, var = _mark(a.mean(axis=0), a.var(axis=0), label, mark,
                              count=a.shape[0])
            return (a - mean) / pt.sqrt(var + EPS) * gamma

        def step(x_t, h_prev, c_prev, Wx, Wh, gx, gh, b, gc, bc):
            gates = (norm(pt.dot(x_t, Wx), gx, "input")
                     + norm(pt.dot(h_prev, Wh), gh, "recurrent") + b)
            i = pt.sigmoid(gates[:, :H])
            f = pt.sigmoid(gates[:, H:2 * H])
            o = pt.sigmoid(gates[:, 2 * H:3 * H])
            g = pt.tanh(gates[:, 3 * H:])
            c = f * c_prev + i * g
            h = o * pt.tanh(norm(c, gc, "cell") + bc)
            return h, c

        zeros = pt.zeros((x.shape[1], H), dtype=F32)
        hs, _ = pytensor.scan(
            step,
            sequences=[x],
            outputs_info=[zeros, zeros],
            non_sequences=[_shared(v, k) for k, v in self.params.items()],
            name="lstm",
            strict=True,
            return_updates=False,
        )
        return x, hs

    def batches(self, n: int) -> list[np.ndarray]:
        rng = np.random.default_rng(1)
        shape = (self.steps, self.batch, self.n_in)
        return [rng.standard_normal(shape).astype(F32) for _ in range(n)]

    def elements(self, label: str) -> int:
        return self.batch

    def numpy_stats(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """One batch's per-step statistics, the forward pass in NumPy float64."""
        p = {k: _f64(v) for k, v in self.params.items()}
        H = self.hidden

        def step(x_t, state, stats):
            h, c = state
            gates = (_np_bn(x_t @ p["Wx"], 0, "input", stats) * p["gx"]
                     + _np_bn(h @ p["Wh"], 0, "recurrent", stats) * p["gh"]
                     + p["b"])
            i, f, o, g = (gates[:, k * H:(k + 1) * H] for k in range(4))
            c = _np_sigmoid(f) * c + _np_sigmoid(i) * np.tanh(g)
            cell = _np_bn(c, 0, "cell", stats) * p["gc"] + p["bc"]
            return _np_sigmoid(o) * np.tanh(cell), c

        x = np.asarray(x, dtype=np.float64)
        zeros = np.zeros((x.shape[1], H))
        return _np_steps(step, x, (zeros, zeros), self.labels)

    def torch_model(self):
        return _EagerLoop(self, [_t(v) for v in self.params.values()])

    def torch_step(self, x_t, state, params, stats):
        Wx, Wh, gx, gh, b, gc, bc = params
        h, c = state
        a = x_t @ Wx
        r = h @ Wh
        va, ma = torch.var_mean(a, dim=0, correction=0)
        vr, mr = torch.var_mean(r, dim=0, correction=0)
        gates = ((a - ma) / torch.sqrt(va + EPS) * gx
                 + (r - mr) / torch.sqrt(vr + EPS) * gh + b)
        i, f, o, g = gates.chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        vc, mc = torch.var_mean(c, dim=0, correction=0)
        h = torch.sigmoid(o) * torch.tanh((c - mc) / torch.sqrt(vc + EPS) * gc + bc)
        stats[0], stats[1], stats[2], stats[3], stats[4], stats[5] = (
            ma, va, mr, vr, mc, vc)
        return h, (h, c)

    def initial_state(self, batch: int):
        z = torch.zeros((batch, self.hidden), device=DEVICE[0])
        return (z, z)


class _EagerLoop:
    """PyTorch eager loop over the steps, per-step statistics averaged.

    Each step's batch mean and biased batch variance go into a float32
    buffer (2 rows per BN, steps x width) per batch; once per batch the
    buffers are added to float64 sums; the result is sums / N batches --
    popstats' ``"mean"`` estimator with ``time="step"``. On ``--device
    cuda`` the weights, buffers and sums live on the GPU, each host batch is
    copied to it, and the pass ends with ``torch.cuda.synchronize``.
    """

    def __init__(self, model, params):
        self.model = model
        self.params = [p.to(DEVICE[0]) for p in params]
        self.sums: list | None = None

    def _run(self, x, keep: bool):
        x = x.to(DEVICE[0])
        steps, batch = x.shape[0], x.shape[1]
        state = self.model.initial_state(batch)
        n_stats = 2 * len(self.model.labels)
        buffers = None
        outs = []
        for t in range(steps):
            stats: list = [None] * n_stats
            h, state = self.model.torch_step(x[t], state, self.params, stats)
            if buffers is None:
                buffers = [torch.empty((steps, s.shape[0]), device=DEVICE[0])
                           for s in stats]
            for buf, s in zip(buffers, stats, strict=True):
                buf[t] = s
            if keep:
                outs.append(h)
        return buffers, outs

    def forward(self, x):
        with torch.no_grad():
            return torch.stack(self._run(x, keep=True)[1]).cpu().numpy()

    def estimate(self, loader) -> None:
        with torch.no_grad():
            sums = None
            for x in loader:
                buffers = self._run(x, keep=False)[0]
                if sums is None:
                    sums = [b.to(torch.float64) for b in buffers]
                else:
                    for acc, b in zip(sums, buffers, strict=True):
                        acc += b  # float32 into float64 sums
            self.sums = [s / len(loader) for s in sums]
        _synchronize()

    def statistics(self) -> dict[str, np.ndarray]:
        out = {}
        for k, label in enumerate(self.model.labels):
            out[f"{label}.mean"] = self.sums[2 * k].cpu().numpy()
            out[f"{label}.var"] = self.sums[2 * k + 1].cpu().numpy()
        return out


def make_model(name: str, args):
    if name == "mlp":
        return Mlp(args.mlp_in, args.mlp_width, args.mlp_layers, args.mlp_batch)
    if name == "conv":
        return ConvNet(args.conv_size, tuple(C.parse_ints(args.conv_channels)),
                       args.conv_batch)
    cls = Rnn if name == "rnn" else Lstm
    return cls(args.rnn_in, args.rnn_hidden, args.rnn_steps, args.rnn_batch)


# --------------------------------------------------------------------------
# measurement


def check_stats(model, stats: popstats.PopulationStatistics, reference: dict) -> float:
    """Max relative difference of every popstats statistic to PyTorch's."""
    worst = 0.0
    for label, ref in reference.items():
        value = stats[label].value
        if isinstance(model, Mlp | ConvNet) and label.endswith(".var"):
            m = model.elements(label)
            value = value * m / (m - 1)  # update_bn keeps unbiased variances
        worst = max(worst, rel_diff(value, ref))
    if len(reference) != len(stats):
        raise RuntimeError(f"{len(stats)} popstats statistics, {len(reference)} "
                           f"PyTorch ones: not the same job")
    return worst


def _weights(model) -> list:
    """Every weight of a model (arrays or shared variables), in a fixed order."""
    if isinstance(model, Mlp):
        return [*(v for layer in model.net.params for v in layer), model.W_out,
                model.b_out]
    if isinstance(model, ConvNet):
        return [*(v for conv in model.convs for v in conv), model.W_out, model.b_out]
    if isinstance(model, Rnn):
        n = model.net
        return [n.Wx, n.Wh, n.gx, n.gh]
    return list(model.params.values())


def float64_reference(model, arrays: list[np.ndarray], cache: str | None) -> dict:
    """The statistics popstats estimates, in NumPy float64: the plain average
    over the batches of each batch's mean and biased variance (per step in
    the loops), from a float64 forward pass on the same float32 weights and
    batches (cast up).

    ``cache``: a folder where the result is kept, keyed by the model, its
    batches and its weights (a hash of them), so runs that differ only in
    precision or accumulation compute it once.
    """
    import hashlib

    path = None
    if cache:
        digest = hashlib.sha256(model.desc.encode())
        for a in arrays:
            digest.update(np.ascontiguousarray(a).tobytes())
        for w in _weights(model):
            digest.update(np.ascontiguousarray(_f64(w)).tobytes())
        path = os.path.join(cache, f"reference-{digest.hexdigest()[:20]}.npz")
        if os.path.exists(path):
            with np.load(path) as saved:
                return {k: saved[k] for k in saved.files}
    sums: dict[str, np.ndarray] = {}
    for a in arrays:
        for label, value in model.numpy_stats(a).items():
            sums[label] = sums[label] + value if label in sums else value
    reference = {label: total / len(arrays) for label, total in sums.items()}
    if path is not None:
        os.makedirs(cache, exist_ok=True)
        np.savez(path, **reference)
    return reference


def float64_diffs(model, stats, peer_stats: dict | None, reference: dict):
    """(popstats, PyTorch) max rel. diff of the statistics to the float64
    reference; PyTorch's ``update_bn`` variances are made biased first."""
    if set(reference) != {s.label for s in stats.values()}:
        raise RuntimeError(f"float64 reference labels {sorted(reference)} are not "
                           f"popstats' {sorted(s.label for s in stats.values())}")
    pop = 0.0
    for label, ref in reference.items():
        value = np.asarray(stats[label].value)
        if value.shape != ref.shape:
            raise RuntimeError(f"{label}: popstats shape {value.shape}, float64 "
                               f"reference {ref.shape}")
        pop = max(pop, rel_diff(value, ref))
    if peer_stats is None:
        return pop, None
    peer = 0.0
    for label, ref in reference.items():
        value = np.asarray(peer_stats[label], dtype=np.float64)
        if isinstance(model, Mlp | ConvNet) and label.endswith(".var"):
            m = model.elements(label)
            value = value * (m - 1) / m  # update_bn's unbiased -> biased
        peer = max(peer, rel_diff(value, ref))
    return pop, peer


def measure(name: str, args, mode, accumulate: str) -> dict:
    model = make_model(name, args)
    x, out = model.graph()
    arrays = model.batches(args.batches)
    batches = [{"x": a} for a in arrays]
    statistics = popstats.export(out).outputs
    dtypes = {v.dtype for v in (*statistics, out)}
    if dtypes != {F32}:
        raise RuntimeError(f"{name}: graph dtypes {dtypes}, expected float32 only")

    run = popstats.Estimation([x], out, mode=mode, accumulate=accumulate)
    fn = pytensor.function([x], out, mode=mode)

    def pop():
        # finalize works on the host (NumPy) copy of the state: the pass is
        # complete when it returns, on a GPU too
        return run.finalize(run.run(batches, progress=False))

    def forward():
        # np.asarray waits for the result: JAX returns before it computes
        # (asynchronous dispatch), so its forward pass would not be timed
        for batch in batches:
            np.asarray(fn(**batch))

    candidates = [pop, forward]
    result = {"desc": model.desc, "n_stats": len(run.sites)}
    stats = pop()  # untimed first calls: JIT, warm-up, and the checks
    forward()
    y = fn(arrays[0])
    peer_stats = None
    if torch is not None:
        peer = model.torch_model()
        loader = [torch.from_numpy(a) for a in arrays]  # zero-copy views

        def torch_job():
            peer.estimate(loader)

        candidates.append(torch_job)
        result["forward_diff"] = rel_diff(y, peer.forward(loader[0]))
        torch_job()
        peer_stats = peer.statistics()
        result["stats_diff"] = check_stats(model, stats, peer_stats)
    if args.float64_reference:
        reference = float64_reference(model, arrays, args.reference_cache)
        result["f64_pop"], f64_peer = float64_diffs(model, stats, peer_stats,
                                                    reference)
        if f64_peer is not None:
            result["f64_torch"] = f64_peer
    if args.check:
        return result

    times = C.interleaved(candidates, args.repeats)
    n = len(batches)
    result["best"] = [C.best(t) / n for t in times]
    result["median"] = [C.median(t) / n for t in times]
    return result


def _fmt_diff(r: dict, key: str) -> str:
    return f"{r[key]:.1e}" if key in r else "n/a"


F64_HEADERS = ["popstats statistics vs float64", "PyTorch statistics vs float64"]


def _f64_cells(r: dict, args) -> list[str]:
    if not args.float64_reference:
        return []
    return [_fmt_diff(r, "f64_pop"), _fmt_diff(r, "f64_torch")]


def nvidia_smi() -> str | None:
    """``name, driver, memory`` of each GPU from nvidia-smi (None without one)."""
    import subprocess

    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
             "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = done.stdout.strip().splitlines()
    return "; ".join(lines) if done.returncode == 0 and lines else None


def jax_precision() -> str:
    """JAX's default float32 matmul precision (``jax_default_matmul_precision``)."""
    import jax

    return str(jax.config.jax_default_matmul_precision or "default")


def jax_backend() -> str:
    import jax

    return jax.default_backend()


def jax_line() -> str:
    """JAX and jaxlib versions, its devices and float32 matmul precision."""
    import jax
    import jaxlib

    devices = jax.devices()
    kinds = ", ".join(sorted({d.device_kind for d in devices}))
    try:
        platform = str(devices[0].client.platform_version)
    except Exception:  # not every client says
        platform = ""
    platform = f"; {platform}" if platform and platform != jax.default_backend() else ""
    precision = jax_precision()
    if jax.default_backend() == "cpu":
        meaning = "full float32 on a CPU"
    elif precision in FULL_F32:
        meaning = "full float32"
    else:
        meaning = "TF32 on GPUs that have it"
    return (f"JAX {jax.__version__} (jaxlib {jaxlib.__version__}) on "
            f"{jax.default_backend()}: {len(devices)} x {kinds}{platform}; "
            f"float32 matmul precision {precision!r} ({meaning})")


def torch_tf32(args) -> bool:
    """Whether PyTorch runs float32 matmuls and convolutions in TF32 (cuda)."""
    if args.torch_tf32 != "auto":
        return args.torch_tf32 == "on"
    return jax_precision() not in FULL_F32  # as JAX does


def setup_torch_device(args) -> None:
    """``--device``: PyTorch's device, and its TF32 switches on a GPU."""
    DEVICE[0] = args.device
    if args.device == "cpu":
        return
    tf32 = torch_tf32(args)
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


def torch_line(args) -> str:
    if torch is None:
        return "PyTorch not installed: its columns read n/a"
    if args.device == "cpu":
        return (f"PyTorch {torch.__version__}, {torch.get_num_threads()} intra-op "
                f"thread(s)")
    return (f"PyTorch {torch.__version__} on {args.device} "
            f"({torch.cuda.get_device_name()}; CUDA {torch.version.cuda}, cuDNN "
            f"{torch.backends.cudnn.version()}); TF32: matmul "
            f"{torch.backends.cuda.matmul.allow_tf32}, cuDNN "
            f"{torch.backends.cudnn.allow_tf32}")


def environment_lines(args, mode) -> str:
    """The lines under a table's heading: PyTorch, JAX and the GPU, if any."""
    lines = [f"{torch_line(args)}; BLAS/Numba/XLA threads {THREADS}"]
    if mode == "JAX":
        lines.append(jax_line())
        if args.device != "cpu" and (jax_precision() in FULL_F32) == torch_tf32(args):
            lines.append("**Precisions differ**: JAX's float32 matmul precision "
                         "and PyTorch's TF32 switches do not match.")
    if args.device != "cpu" or (mode == "JAX" and jax_backend() != "cpu"):
        lines.append(f"GPU (nvidia-smi: name, driver, memory): "
                     f"{nvidia_smi() or 'n/a'}")
    return "  \n".join(lines) + "\n"


def print_table(rows: list[dict], args, mode, accumulate: str) -> None:
    if args.check:
        print(C.heading("equal-work checks: max rel. diff to PyTorch "
                        "(max |a - b| / max |b|)", mode))
        print(environment_lines(args, mode))
        print(C.table(
            ["model", "statistics", "max rel. diff forward",
             "max rel. diff statistics",
             *(F64_HEADERS if args.float64_reference else [])],
            [[r["desc"], r["n_stats"], _fmt_diff(r, "forward_diff"),
              _fmt_diff(r, "stats_diff"), *_f64_cells(r, args)] for r in rows],
        ))
        print()
        return
    print(C.heading(
        f"popstats (accumulate={accumulate!r}) vs forward pass vs PyTorch, "
        f"per batch (N={args.batches} batches, best of {args.repeats}, "
        f"interleaved; compile excluded)",
        mode,
    ))
    print(environment_lines(args, mode))
    table_rows = []
    for r in rows:
        pb, fb = r["best"][0], r["best"][1]
        pm, fm = r["median"][0], r["median"][1]
        row = [r["desc"], r["n_stats"], C.fmt_s(pb), C.fmt_s(fb),
               C.fmt_ratio(pb / fb), C.fmt_ratio(pm / fm)]
        if len(r["best"]) > 2:
            tb, tm = r["best"][2], r["median"][2]
            row += [C.fmt_s(tb), C.fmt_ratio(tb / pb), C.fmt_ratio(tm / pm)]
        else:
            row += ["n/a"] * 3
        row += [_fmt_diff(r, "forward_diff"), _fmt_diff(r, "stats_diff"),
                *_f64_cells(r, args)]
        table_rows.append(row)
    print(C.table(
        ["model", "statistics", "popstats / batch", "forward / batch",
         "popstats / forward (best)", "(median)", "PyTorch / batch",
         "popstats speed vs PyTorch (best)", "(median)",
         "max rel. diff forward", "max rel. diff statistics",
         *(F64_HEADERS if args.float64_reference else [])],
        table_rows,
    ))
    print()


ACCUMULATE = ("host", "graph")


def parse_accumulate(text: str) -> list[str]:
    """``"host"``, ``"graph"`` or both, comma-separated: one table each."""
    values = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in values if v not in ACCUMULATE]
    if bad or not values:
        raise argparse.ArgumentTypeError(
            f"--accumulate takes {' or '.join(ACCUMULATE)} (or both, "
            f"comma-separated), not {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS),
                        help=f"comma-separated, of {','.join(MODELS)}")
    parser.add_argument("--modes", default="default,CVM,JAX", type=C.parse_modes,
                        help="PyTensor modes (JAX only if installed)")
    parser.add_argument("--batches", default=20, type=int, help="N batches")
    parser.add_argument("--repeats", default=5, type=int, help="timings per candidate")
    parser.add_argument("--threads", default=None, type=int,
                        help="threads of every library (default 1, or "
                             "OMP_NUM_THREADS when set)")
    parser.add_argument("--accumulate", default=["host"], type=parse_accumulate,
                        help="popstats' Estimation(accumulate=...): host, graph, "
                             "or host,graph for a table of each")
    parser.add_argument("--check", action="store_true",
                        help="only the equal-work checks, no timing")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes, 3 batches, 2 repeats")
    parser.add_argument("--mlp-in", default=784, type=int)
    parser.add_argument("--mlp-width", default=1024, type=int)
    parser.add_argument("--mlp-layers", default=3, type=int)
    parser.add_argument("--mlp-batch", default=256, type=int)
    parser.add_argument("--conv-size", default=28, type=int, help="H = W")
    parser.add_argument("--conv-channels", default="16,32")
    parser.add_argument("--conv-batch", default=128, type=int)
    parser.add_argument("--rnn-in", default=32, type=int, help="rnn and lstm")
    parser.add_argument("--rnn-hidden", default=128, type=int)
    parser.add_argument("--rnn-steps", default=50, type=int)
    parser.add_argument("--rnn-batch", default=64, type=int)
    parser.add_argument("--clock", choices=sorted(C.CLOCKS), default=None,
                        help="what to time: CPU time (default with 1 thread) "
                             "or wall-clock time (default with --threads > 1 "
                             "or --device cuda)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="PyTorch's device (cuda: on the GPU, against "
                             "--modes JAX on the GPU; wall-clock time)")
    parser.add_argument("--torch-tf32", choices=("auto", "on", "off"),
                        default="auto",
                        help="with --device cuda: PyTorch's TF32 switches "
                             "(torch.backends.cuda.matmul.allow_tf32 and "
                             "torch.backends.cudnn.allow_tf32); auto: on unless "
                             "JAX_DEFAULT_MATMUL_PRECISION is highest, as JAX")
    parser.add_argument("--float64-reference", action="store_true",
                        help="also compare the statistics of popstats and "
                             "PyTorch with a NumPy float64 forward pass")
    parser.add_argument("--reference-cache", default=None, metavar="DIR",
                        help="keep the float64 references in DIR and reuse them")
    return parser


def check_device(parser, args) -> None:
    """``--device cuda`` needs PyTorch with CUDA and JAX mode on a GPU."""
    if args.device == "cpu":
        if "JAX" in args.modes and jax_backend() != "cpu":
            print("(JAX runs on the GPU, PyTorch on the CPU: pass --device cuda "
                  "to compare on one device)", file=sys.stderr)
        return
    if torch is None or not torch.cuda.is_available():
        parser.error("--device cuda: PyTorch is not installed or sees no GPU "
                     "(torch.cuda.is_available() is False)")
    if args.modes != ["JAX"]:
        parser.error("--device cuda compares with PyTensor's JAX mode on the "
                     "GPU: pass --modes JAX")
    if jax_backend() != "gpu":
        parser.error(f"--device cuda: JAX sees no GPU (its backend is "
                     f"{jax_backend()!r}); install jax[cuda] or unset JAX_PLATFORMS")
    if args.clock == "cpu":
        parser.error("--device cuda: CPU time does not count the GPU's work; "
                     "use --clock wall")


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    if args.clock is None:
        args.clock = "cpu" if THREADS == 1 and args.device == "cpu" else "wall"
    check_device(parser, args)
    C.set_clock(args.clock)
    if args.quick:
        args.batches, args.repeats = 3, 2
        args.mlp_in, args.mlp_width, args.mlp_batch = 32, 32, 16
        args.conv_size, args.conv_channels, args.conv_batch = 8, "4,8", 8
        args.rnn_in, args.rnn_hidden, args.rnn_steps, args.rnn_batch = 4, 8, 5, 8
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = set(models) - set(MODELS)
    if unknown:
        parser.error(f"unknown models {sorted(unknown)}; choose from {MODELS}")
    if pytensor.config.floatX != F32:
        parser.error(f"floatX is {pytensor.config.floatX}; PYTENSOR_FLAGS must "
                     f"not set floatX (the models are float32)")
    _setup_torch()
    setup_torch_device(args)
    # JAX mode: PyTensor turns JAX's x64 off when floatX is float32, and JAX
    # then warns of every float64 accumulator (reductions) and int64 shape it
    # truncates to 32 bits, and PyTensor of every shape Assert it drops.
    for message in ("Explicitly requested dtype", "Skipping Assert"):
        warnings.filterwarnings("ignore", message=message, category=UserWarning)

    started = time.perf_counter()
    for mode in args.modes:
        for accumulate in args.accumulate:
            print(f"(measuring mode {C.mode_label(mode)}, accumulate "
                  f"{accumulate!r} ...)", file=sys.stderr)
            rows = [measure(m, args, mode, accumulate) for m in models]
            print_table(rows, args, mode, accumulate)
            sys.stdout.flush()
    if not args.check:
        print("Targets: popstats / forward <= 1.05x; popstats speed vs PyTorch "
              "(PyTorch time / popstats time) >= 1.0x on MLP and conv net, "
              ">= 1.3x on BN-RNN and BN-LSTM.")
        if torch is None:
            print("PyTorch is not installed in this environment: no PyTorch "
                  "figures (pip install torch).")
    print(f"\nTotal wall time of this script: {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
