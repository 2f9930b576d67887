"""Shared pieces of the benchmark scripts: models, timing, tables.

Not a test module: nothing here asserts a threshold. Every script prints its
figures as a Markdown table headed by the Python, PyTensor and NumPy versions
and the compilation mode (with its linker) the figures come from.
"""

from __future__ import annotations

import gc
import os
import platform
import resource
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# One thread per library, set before NumPy/BLAS/JAX load: on a small shared
# machine this keeps CPU time meaningful and the comparison fair (override
# by setting the variables before running a script).
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault(
    "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
)
os.environ.setdefault("NUMBA_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pytensor  # noqa: E402
import pytensor.tensor as pt  # noqa: E402

import popstats  # noqa: E402

EPS = 1e-5
FLOAT = pytensor.config.floatX


# --------------------------------------------------------------------------
# environment


def versions() -> str:
    return (
        f"Python {platform.python_version()}, PyTensor {pytensor.__version__}, "
        f"NumPy {np.__version__}, popstats {popstats.__version__}"
    )


def mode_label(mode: str | None) -> str:
    """``mode`` as a label with the linker it uses, e.g. ``default [NumbaLinker]``."""
    m = pytensor.compile.mode.get_mode(mode)
    linker = type(m.linker).__name__
    if hasattr(m.linker, "use_cloop"):
        linker += f"(use_cloop={m.linker.use_cloop}, c_thunks={m.linker.c_thunks})"
    name = "default" if mode is None else mode
    return f"{name} [{linker}]"


def jax_available() -> bool:
    try:
        import jax  # noqa: F401
    except ImportError:
        return False
    return True


def parse_modes(text: str) -> list[str | None]:
    """``"default,CVM,JAX"`` -> ``[None, "CVM", "JAX"]`` (JAX dropped if absent)."""
    modes: list[str | None] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        if item.lower() in ("default", "none", "fast_run"):
            modes.append(None)
        elif item.upper() == "JAX" and not jax_available():
            print(f"(skipping mode {item}: jax is not installed)", file=sys.stderr)
        else:
            modes.append(item.upper())
    return modes


def parse_ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def add_clock_argument(parser, default: str) -> None:
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default=default,
        help=f"what to time (default {default}): wall-clock or CPU time",
    )


def run_with_big_stack(main: Callable[[], Any], recursion_limit: int = 100_000) -> Any:
    """Run ``main`` in a thread with a large stack and a high recursion limit.

    PyTensor 3.0's own graph cloning (``rebuild_collect_shared``) recurses
    once per layer, so a 1000-layer graph overflows the default limits.
    popstats itself does not recurse per layer.
    """
    sys.setrecursionlimit(recursion_limit)
    threading.stack_size(512 * 1024 * 1024)
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = main()
        except BaseException as exc:  # re-raised in the calling thread
            result["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result.get("value")


# --------------------------------------------------------------------------
# timing


def _cpu_clock() -> float:
    """CPU time of this process (all threads) and of its reaped children."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


CLOCKS = {
    "wall": (time.perf_counter, "wall-clock time"),
    "cpu": (_cpu_clock, "CPU time of the process and its children"),
}
_clock = ["wall"]


def set_clock(name: str) -> None:
    """Choose the clock of :func:`time_call`: ``"wall"`` or ``"cpu"``.

    On a shared machine CPU time is far steadier: time spent waiting for a
    core is not counted. BLAS, OpenMP, Numba and XLA are limited to one
    thread at import of this module (unless the environment says
    otherwise), so the CPU time of compiled code is its run time.
    """
    if name not in CLOCKS:
        raise ValueError(f"clock must be one of {sorted(CLOCKS)}, got {name!r}")
    _clock[0] = name


def now() -> float:
    """The chosen clock's reading."""
    return CLOCKS[_clock[0]][0]()


def clock_label() -> str:
    return CLOCKS[_clock[0]][1]


def time_call(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(elapsed time on the chosen clock, result); GC off during the call."""
    clock = CLOCKS[_clock[0]][0]
    gc.collect()
    gc.disable()
    try:
        t0 = clock()
        out = fn()
        elapsed = clock() - t0
    finally:
        gc.enable()
    return elapsed, out


def interleaved(
    fns: Sequence[Callable[[], Any]], repeats: int
) -> list[list[float]]:
    """Time each of ``fns`` ``repeats`` times, interleaved (a, b, a, b, ...).

    Interleaving spreads the noise of a shared machine over all candidates
    alike; callers take the best (minimum) or the median.
    """
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            times[i].append(time_call(fn)[0])
    return times


def best(ts: Sequence[float]) -> float:
    return min(ts)


def median(ts: Sequence[float]) -> float:
    return statistics.median(ts)


def fmt_s(t: float) -> str:
    if t >= 1.0:
        return f"{t:.2f} s"
    if t >= 1e-3:
        return f"{t * 1e3:.1f} ms"
    return f"{t * 1e6:.0f} µs"


def fmt_ratio(r: float) -> str:
    return f"{r:.2f}x"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---" for _ in headers) + "|",
    ]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def rst_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """``headers`` and ``rows`` as a reStructuredText simple table."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    if any(len(row) != len(headers) for row in cells):
        raise ValueError("every row needs one cell per header")
    widths = [max(len(row[k]) for row in cells) for k in range(len(headers))]
    rule = "  ".join("=" * w for w in widths)

    def line(row: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()

    return "\n".join([rule, line(cells[0]), rule, *map(line, cells[1:]), rule])


_NO_MODE = object()


def heading(title: str, mode: Any = _NO_MODE) -> str:
    """A table heading naming the versions and, if given, the mode and linker."""
    text = f"### {title}\n\n{versions()}"
    if mode is not _NO_MODE:
        text += f"; mode {mode_label(mode)}"
    return text + f"; timed in {clock_label()}\n"


# --------------------------------------------------------------------------
# models


def _param(rng: np.random.Generator, shape: tuple[int, ...], name: str, scale: float):
    value = (rng.standard_normal(shape) * scale).astype(FLOAT)
    return pytensor.shared(value, name=name, shape=shape)


class MLP:
    """Parameters of a batch-normalized MLP: ``n_layers`` of ``width`` units.

    Every layer is ``relu(gamma * (h W + b - mean) / sqrt(var + eps) + beta)``
    with the batch mean and variance over the batch axis: 2 statistics per
    layer. One set of parameters serves all graph variants so they compare.
    """

    def __init__(self, n_layers: int, width: int, n_in: int | None = None, seed=0):
        rng = np.random.default_rng(seed)
        self.n_layers, self.width = n_layers, width
        self.n_in = n_in or width
        self.params = []
        fan_in = self.n_in
        for i in range(n_layers):
            self.params.append(
                (
                    _param(rng, (fan_in, width), f"W{i}", 1.0 / np.sqrt(fan_in)),
                    _param(rng, (width,), f"b{i}", 0.1),
                    _param(rng, (width,), f"gamma{i}", 0.1),
                    _param(rng, (width,), f"beta{i}", 0.1),
                )
            )
            fan_in = width

    def input(self) -> pt.TensorVariable:
        return pt.matrix("x", shape=(None, self.n_in), dtype=FLOAT)

    def build(self, x, *, mark: bool = True, stats: dict | None = None):
        """The network's output.

        ``mark``: wrap the statistics in :func:`popstats.bn_statistic`
        (``False``: the identical graph without markers).
        ``stats``: ``{(layer, "mean"|"var"): shared}`` -- the network written
        by hand for inference, statistics held in shared variables.
        """
        h = x
        for i, (W, b, gamma, beta) in enumerate(self.params):
            h = pt.dot(h, W) + b
            if stats is not None:
                mean, var = stats[(i, "mean")], stats[(i, "var")]
            else:
                mean, var = h.mean(axis=0), h.var(axis=0)
                if mark:
                    mean = popstats.bn_statistic(mean, label=f"layer{i}.mean")
                    var = popstats.bn_statistic(var, label=f"layer{i}.var")
            h = (h - mean) / pt.sqrt(var + EPS) * gamma + beta
            h = pt.maximum(h, 0.0)
        return h

    def hand_written_stats(self) -> dict:
        """Shared variables (static shape as the rewriter gives) for ``build``."""
        out = {}
        for i in range(self.n_layers):
            for kind, fill in (("mean", 0.0), ("var", 1.0)):
                out[(i, kind)] = pytensor.shared(
                    np.full(self.width, fill, dtype=FLOAT),
                    name=f"layer{i}.{kind}",
                    shape=(self.width,),
                )
        return out

    def batches(self, n: int, batch_size: int, seed: int = 1) -> list[dict]:
        rng = np.random.default_rng(seed)
        return [
            {"x": rng.standard_normal((batch_size, self.n_in)).astype(FLOAT)}
            for _ in range(n)
        ]


class RNN:
    """A recurrent batch-normalized model in a Scan (Cooijmans et al. style).

    Per step: ``h = tanh(BN(x_t Wx) + BN(h_prev Wh))``, with the mean and
    variance of both projections over the batch axis: 4 statistics per step,
    inside the loop.
    """

    def __init__(self, n_in: int, hidden: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.n_in, self.hidden = n_in, hidden
        self.Wx = _param(rng, (n_in, hidden), "Wx", 1.0 / np.sqrt(n_in))
        self.Wh = _param(rng, (hidden, hidden), "Wh", 1.0 / np.sqrt(hidden))
        self.gx = _param(rng, (hidden,), "gx", 0.1)
        self.gh = _param(rng, (hidden,), "gh", 0.1)

    def input(self) -> pt.TensorVariable:
        return pt.tensor3("x", shape=(None, None, self.n_in), dtype=FLOAT)

    def build(self, x, *, mark: bool = True):
        def norm(a, gamma, label):
            mean, var = a.mean(axis=0), a.var(axis=0)
            if mark:
                mean = popstats.bn_statistic(mean, label=f"{label}.mean")
                var = popstats.bn_statistic(var, label=f"{label}.var")
            return (a - mean) / pt.sqrt(var + EPS) * gamma

        def step(x_t, h_prev, Wx, Wh, gx, gh):
            a = norm(pt.dot(x_t, Wx), gx, "input")
            r = norm(pt.dot(h_prev, Wh), gh, "recurrent")
            return pt.tanh(a + r)

        h0 = pt.zeros((x.shape[1], self.hidden), dtype=FLOAT)
        hs = pytensor.scan(
            step,
            sequences=[x],
            outputs_info=[h0],
            non_sequences=[self.Wx, self.Wh, self.gx, self.gh],
            name="rnn",
            strict=True,
            return_updates=False,
        )
        return hs

    def batches(self, n: int, steps: int, batch_size: int, seed: int = 1) -> list[dict]:
        rng = np.random.default_rng(seed)
        return [
            {
                "x": rng.standard_normal((steps, batch_size, self.n_in)).astype(
                    FLOAT
                )
            }
            for _ in range(n)
        ]


# --------------------------------------------------------------------------
# statistics without estimation


def fake_stats(outputs, width: int = 8) -> popstats.PopulationStatistics:
    """Population statistics for every site, without running estimation."""
    found = []
    for site in popstats.export(outputs).sites:
        shape = tuple(width if s is None else s for s in site.shape)
        fill = 1.0 if site.label.endswith(".var") else 0.0
        found.append(
            popstats.Statistic(
                name=site.name,
                label=site.label,
                site=site,
                value=np.full(shape, fill),
                coverage=np.array(1, dtype=np.int64),
                n_batches=1,
            )
        )
    return popstats.PopulationStatistics(tuple(found))


# --------------------------------------------------------------------------
# compiled graphs


def _inner_fgraph(op) -> Any:
    """The inner graph a compiled Scan actually runs (rewritten), if known."""
    fn = op.__dict__.get("fn") if hasattr(op, "__dict__") else None
    if fn is not None and hasattr(fn, "maker"):
        return fn.maker.fgraph
    return op.fgraph


def op_signature(fgraph) -> list[str]:
    """Sorted op descriptions of a compiled graph, Scan inner graphs included."""
    from pytensor.scan.op import Scan

    out = []
    for node in fgraph.apply_nodes:
        out.append(str(node.op))
        if isinstance(node.op, Scan):
            inner = _inner_fgraph(node.op)
            out.extend(f"  inner: {s}" for s in op_signature(inner))
    return sorted(out)


def count_markers(fgraph) -> int:
    """How many BNStat markers are left in a compiled graph (any depth)."""
    from pytensor.scan.op import Scan

    n = 0
    for node in fgraph.apply_nodes:
        if isinstance(node.op, popstats.BNStat):
            n += 1
        if isinstance(node.op, Scan):
            n += count_markers(_inner_fgraph(node.op))
    return n


def count_fused(signature: Sequence[str]) -> int:
    return sum("Composite" in s for s in signature)
