"""popstats on a pytensor-ml conv net vs its forward pass vs PyTorch's update_bn.

A pytensor-ml model as people write it (channels last): ``Conv2D(1->c1, 3x3,
"same") - BatchNorm - ReLU - MaxPool2D(2) - Conv2D(c1->c2) - BatchNorm -
ReLU - MaxPool2D(2) - Flatten - Linear(->10)`` on 8x8 images (scikit-learn's
digits, scaled to [0, 1], the first N x batch of them; random images where
scikit-learn is absent or ``--size`` is not 8), float32. The same weights
go to a PyTorch twin (``ptml_torch.py``: ``Conv2d`` / ``BatchNorm2d`` /
``MaxPool2d`` / ``Flatten`` / ``Linear``) in PyTorch's layout: conv kernels
(kh, kw, c_in, c_out) -> (c_out, c_in, kh, kw), the Linear weight's rows
reordered from NHWC flattening (h, w, c) to NCHW's (c, h, w) and transposed,
the batches NHWC -> NCHW.

Per PyTensor mode (``--modes``, default ``default,JAX``: Numba and JAX),
timed interleaved (popstats, forward, ..., PyTorch; best and median of
``--repeats``), each one pass over the same N batches after an untimed one:

* **popstats**: ``popstats.Estimation([X], y, mode=...)`` compiled once,
  then ``run.finalize(run.run(batches))``: the pass ``popstats.estimate``
  and ``popstats.update_running_stats`` make after compiling. The BatchNorms
  are recognized without marks. ``--accumulate host,graph`` gives a row for
  each place the statistics are summed (default ``host``, NumPy).
* **forward**: pytensor-ml's own ``pytensorf.function([X], y, mode=...)``
  (train mode: batch statistics), called on every batch (``np.asarray`` of
  each result: JAX dispatches asynchronously). popstats / forward is the
  overhead of estimation.
* **PyTorch**: ``torch.optim.swa_utils.update_bn(loader, model)`` in a
  subprocess of the interpreter ``--torch-python`` names (default:
  ``POPSTATS_TORCH_PYTHON``, else this interpreter if it has torch), which
  times each pass itself, in its process, on the same clock: its start-up
  (importing torch) is not in the timings. pytensor-ml needs Python >= 3.12,
  this project's torch lives in a 3.11 environment, hence the subprocess.

Compile time is not in the per-batch figures; a second table gives it:
``Estimation`` build (export + compile), its first pass (Numba and JAX
compile there), the forward pass' compile and first call, one whole
``update_running_stats`` call (export, compile, pass, write; PyTensor's
caches are warm by then), and PyTorch's ``import torch`` and model build +
first ``update_bn``.

Values (per mode): popstats' written running statistics against
``update_bn``'s (momentum=None: the mean over batches of the batch means and
of the *unbiased* batch variances): ``update_running_stats(...,
estimator="unbiased")`` must equal them to float32 rounding; the default
estimator writes pytensor-ml's biased convention, equal after m/(m-1)
(m = batch x H x W elements per channel), and off by about 1/m without it
(shown, so that the check is seen to tell the conventions apart). Also the
train-mode forward output of the first batch and the eval-mode prediction
(``compile_predict``, after the unbiased write) of the last 32 images of
the data set against PyTorch's. Max |a - b| / max |b| over each set of
arrays; float32 rounding is ~1e-7 to 1e-6.

Threads: like ``peers.py`` (whose start-up sets them), 1 for BLAS, OpenMP,
Numba and XLA unless ``--threads N``; the PyTorch process inherits the
environment and sets ``torch.set_num_threads`` alike (inter-op 1). The clock
is CPU time with one thread, else wall time (``--clock``).

Usage::

    python benchmarks/ptml_peers.py --quick      # tiny, seconds (+ compile)
    python benchmarks/ptml_peers.py              # digits, 8-16 channels
    python benchmarks/ptml_peers.py --torch-python /work/v311/bin/python
    python benchmarks/ptml_peers.py --check      # only the value checks
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import peers  # sets the threads and floatX=float32 before NumPy and PyTensor load

C, np, popstats = peers.C, peers.np, peers.popstats

HERE = Path(__file__).resolve().parent
F32 = "float32"
EPS = C.EPS  # pytensor-ml's and PyTorch's BatchNorm default


def torch_python(given: str | None) -> tuple[str | None, str]:
    """The interpreter that runs PyTorch, or None and why not."""
    python = given or os.environ.get("POPSTATS_TORCH_PYTHON") or None
    if python is None:
        if importlib.util.find_spec("torch") is not None:
            return sys.executable, ""
        return None, ("no Python with torch: pass --torch-python PATH or set "
                      "POPSTATS_TORCH_PYTHON (e.g. /work/v311/bin/python)")
    if not Path(python).exists():
        return None, f"--torch-python / POPSTATS_TORCH_PYTHON: {python} does not exist"
    probe = subprocess.run([python, "-c", "import torch, numpy"], capture_output=True,
                           text=True)
    if probe.returncode:
        return None, f"{python} cannot import torch and numpy: {probe.stderr.strip()}"
    return python, ""


class ConvNet:
    """The pytensor-ml model, its batches and its weights in PyTorch's layout."""

    def __init__(self, size: int, channels: tuple[int, int], batch: int, n_out=10):
        from pytensor_ml import layers as L
        from pytensor_ml.activations import ReLU

        if size % 4:
            raise SystemExit(f"--size: a multiple of 4 (two 2x2 pools), not {size}")
        self.size, self.channels, self.batch = size, channels, batch
        self.convs, self.bns, layers, c_in = [], [], [], 1
        for k, c in enumerate(channels):
            self.convs.append(L.Conv2D(f"conv{k}", in_channels=c_in, out_channels=c,
                                     kernel_size=3, padding="same", bias=False))
            self.bns.append(L.BatchNorm(f"bn{k}", n_in=c))
            layers += [self.convs[-1], self.bns[-1], ReLU(), L.MaxPool2D(kernel_size=2)]
            c_in = c
        self.flat = (size // 4, size // 4, c_in)
        self.out = L.Linear("out", n_in=int(np.prod(self.flat)), n_out=n_out)
        self.X = L.Input("X", shape=(None, size, size, 1))
        self.y = L.Sequential(*layers, L.Flatten, self.out)(self.X)
        rng = np.random.default_rng(0)
        fan_in = [9 * c.in_channels for c in self.convs]
        params = [*((c.W, 1 / np.sqrt(f)) for c, f in zip(self.convs, fan_in,
                                                          strict=True)),
                  (self.out.W, 1 / np.sqrt(self.out.n_in)), (self.out.b, 0.1)]
        for p, scale in params:
            p.set_value((scale * rng.standard_normal(p.get_value().shape)).astype(F32))
        for bn in self.bns:  # not the identity: the affine part is compared too
            bn.scale.set_value((1 + 0.2 * rng.standard_normal(bn.n_in)).astype(F32))
            bn.loc.set_value((0.2 * rng.standard_normal(bn.n_in)).astype(F32))
        self.desc = (f"pytensor-ml conv {size}x{size}x1, 3x3 convs "
                     f"{'-'.join(map(str, channels))} (+ BatchNorm, ReLU, "
                     f"MaxPool2D(2)), Linear {self.out.n_in}->{n_out}, batch {batch}")

    def images(self, n: int, last: bool = False) -> tuple[np.ndarray, str]:
        """The first (or ``last``) ``n`` NHWC float32 images: digits where
        there are enough, else random."""
        if self.size == 8 and importlib.util.find_spec("sklearn") is not None:
            from sklearn.datasets import load_digits

            digits = load_digits().images
            if n <= len(digits):
                chosen = digits[len(digits) - n:] if last else digits[:n]
                return (chosen[..., None] / 16).astype(F32), "scikit-learn digits"
        rng = np.random.default_rng(2 if last else 1)
        return rng.random((n, self.size, self.size, 1), dtype=np.float32), "random"

    def elements(self) -> list[int]:
        """Elements per channel and batch of each BatchNorm (batch x H x W)."""
        return [self.batch * (self.size // 2 ** k) ** 2 for k in range(len(self.bns))]

    def torch_arrays(self) -> dict[str, np.ndarray]:
        """The weights in PyTorch's layout."""
        out = {}
        for k, (conv, bn) in enumerate(zip(self.convs, self.bns, strict=True)):
            out[f"conv{k}.weight"] = conv.W.get_value().transpose(3, 2, 0, 1)
            out[f"bn{k}.weight"], out[f"bn{k}.bias"] = (bn.scale.get_value(),
                                                       bn.loc.get_value())
        h, w, c = self.flat
        W = self.out.W.get_value().reshape(h, w, c, -1)  # rows in NHWC order
        out["out.weight"] = W.transpose(3, 2, 0, 1).reshape(W.shape[-1], -1)
        out["out.bias"] = self.out.b.get_value()
        return {k: np.ascontiguousarray(v, dtype=F32) for k, v in out.items()}


class TorchPeer:
    """The PyTorch subprocess (``ptml_torch.py``): start, time, stop."""

    def __init__(self, python: str, model: ConvNet, arrays, test, clock: str, tmp: str):
        source, self.target = os.path.join(tmp, "in.npz"), os.path.join(tmp, "out.npz")
        np.savez(source, batches=np.stack([a.transpose(0, 3, 1, 2) for a in arrays]),
                 test=np.ascontiguousarray(test.transpose(0, 3, 1, 2)), eps=EPS,
                 threads=peers.THREADS, clock=clock, **model.torch_arrays())
        started = time.perf_counter()
        self.proc = subprocess.Popen([python, str(HERE / "ptml_torch.py"), source,
                                      self.target], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self.info = self._answer()
        self.info["process_s"] = time.perf_counter() - started
        with np.load(self.target) as saved:
            self.values = {k: saved[k] for k in saved.files}

    def _answer(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the PyTorch process ended (status {self.proc.wait()})")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(answer["error"])
        return answer

    def time_pass(self) -> float:
        self.proc.stdin.write("time\n")
        self.proc.stdin.flush()
        return self._answer()["seconds"]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
        self.proc.wait(timeout=60)


def running(model: ConvNet) -> list[np.ndarray]:
    return [v for bn in model.bns for v in (bn.running_mean.get_value(),
                                            bn.running_var.get_value())]


def max_diff(values, refs) -> float:
    return max(peers.rel_diff(a, b) for a, b in zip(values, refs, strict=True))


def unbiased(values: list[np.ndarray], m: list[int]) -> list[np.ndarray]:
    """(mean, var) pairs with each variance times m/(m-1) (m per pair)."""
    return [v * (m[i // 2] / (m[i // 2] - 1)) if i % 2 else v
            for i, v in enumerate(values)]


def measure_mode(mode, accumulates, model, arrays, test, peer):
    """Rows (one per ``accumulate``) and the candidates to time: one popstats
    pass per row, then the forward pass."""
    from pytensor_ml.pytensorf import compile_predict, function

    X, y = model.X, model.y
    batches = [{"X": a} for a in arrays]
    m, label = model.elements(), C.mode_label(mode)
    rows, runs, results = [], [], []
    for accumulate in accumulates:
        t0 = C.now()
        run = popstats.Estimation([X], y, mode=mode, accumulate=accumulate)
        t1 = C.now()
        stats = run.finalize(run.run(batches, progress=False))
        rows.append({"mode": label, "accumulate": accumulate, "n_stats": len(stats),
                     "compile": [t1 - t0, C.now() - t1]})
        runs.append(run)
        results.append([stats[f"bn{k}.{kind}"].value for k in range(len(model.bns))
                        for kind in ("mean", "var")])
    t0 = C.now()
    fn = function([X], y, mode=mode)
    t1 = C.now()
    y0 = np.asarray(fn(arrays[0]))
    t2 = C.now()
    popstats.update_running_stats([X], y, batches, mode=mode, progress=False,
                                  estimator="unbiased")
    shared = {"compile_forward": [t1 - t0, t2 - t1, C.now() - t2]}
    if peer is not None:
        ref = [peer.values[f"running_{kind}{k}"] for k in range(len(model.bns))
               for kind in ("mean", "var")]
        shared["unbiased"] = max_diff(running(model), ref)
        predict = compile_predict(y, inputs=[X], compile_kwargs={"mode": mode})
        shared["predict"] = peers.rel_diff(predict(test), peer.values["predicted"])
        popstats.update_running_stats([X], y, batches, mode=mode, progress=False)
        shared["biased_raw"] = max_diff(running(model), ref)
        shared["biased"] = max_diff(unbiased(running(model), m), ref)
        shared["forward"] = peers.rel_diff(y0, peer.values["forward"])
        for r, values in zip(rows, results, strict=True):
            r["estimate"] = max_diff(unbiased(values, m), ref)
    for r in rows:
        r.update(shared)

    def forward():
        for batch in batches:
            np.asarray(fn(**batch))  # waits for JAX's asynchronous result

    forward()  # the first whole pass, untimed as popstats' was
    fns = [_timed(lambda run=run: run.finalize(run.run(batches, progress=False)))
           for run in runs]
    return rows, [*fns, _timed(forward)]


def _timed(fn):
    return lambda: C.time_call(fn)[0]


def ptml_version() -> str:
    import pytensor_ml

    return pytensor_ml.__version__


def fmt_diff(r: dict, key: str) -> str:
    return f"{r[key]:.1e}" if key in r else "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", default="default,JAX", type=C.parse_modes,
                        help="PyTensor modes (JAX only if installed)")
    parser.add_argument("--batches", default=14, type=int,
                        help="N batches (14 x 128 = 1792 of the 1797 digits)")
    parser.add_argument("--batch", default=128, type=int)
    parser.add_argument("--size", default=8, type=int, help="H = W (8: digits)")
    parser.add_argument("--channels", default="8,16", help="two conv widths")
    parser.add_argument("--repeats", default=7, type=int, help="timings per candidate")
    parser.add_argument("--threads", default=None, type=int,
                        help="threads of every library (read by peers.py)")
    parser.add_argument("--clock", choices=sorted(C.CLOCKS), default=None,
                        help="default: cpu with one thread, else wall")
    parser.add_argument("--torch-python", default=None, metavar="PATH",
                        help="a Python with torch (default: POPSTATS_TORCH_PYTHON, "
                             "else this one if it has torch)")
    parser.add_argument("--check", action="store_true", help="only the value checks")
    parser.add_argument("--quick", action="store_true",
                        help="channels 4,8, batch 16, 3 batches, 2 repeats")
    parser.add_argument("--accumulate", default=["host"], type=peers.parse_accumulate,
                        help="popstats' Estimation(accumulate=...): host, graph or "
                             "host,graph (a row each)")
    parser.add_argument("--json", default=None, metavar="FILE",
                        help="also write the figures to FILE")
    args = parser.parse_args()
    if importlib.util.find_spec("pytensor_ml") is None:
        parser.exit(3, "ptml_peers.py needs pytensor-ml (Python >= 3.12): "
                       "pip install 'popstats[pytensor-ml]'\n")
    if args.quick:
        args.channels, args.batch, args.batches, args.repeats = "4,8", 16, 3, 2
    channels = tuple(C.parse_ints(args.channels))
    if len(channels) != 2:
        parser.error(f"--channels takes two widths, not {args.channels!r}")
    python, why = torch_python(args.torch_python)
    if python is None and args.torch_python:
        parser.error(why)
    clock = args.clock or ("cpu" if peers.THREADS == 1 else "wall")
    C.set_clock(clock)
    for message in ("Explicitly requested dtype", "Skipping Assert"):  # JAX, float32
        warnings.filterwarnings("ignore", message=message, category=UserWarning)
    started = time.perf_counter()

    model = ConvNet(args.size, channels, args.batch)
    images, source = model.images(args.batches * args.batch)
    arrays = [images[i * args.batch:(i + 1) * args.batch] for i in range(args.batches)]
    test = model.images(32, last=True)[0]  # the last digits (the batches' tail)
    with tempfile.TemporaryDirectory() as tmp:
        peer = None if python is None else TorchPeer(python, model, arrays, test,
                                                     clock, tmp)
        try:
            rows, fns = [], []
            for mode in args.modes:
                mode_rows, candidates = measure_mode(mode, args.accumulate, model,
                                                     arrays, test, peer)
                for k, r in enumerate(mode_rows):  # (its popstats, the forward)
                    r["slots"] = (len(fns) + k, len(fns) + len(candidates) - 1)
                rows += mode_rows
                fns += candidates
            if peer is not None:
                fns.append(peer.time_pass)
            times = [[] for _ in fns]
            for _ in range(0 if args.check else args.repeats):
                for i, fn in enumerate(fns):
                    times[i].append(fn() / args.batches)
        finally:
            if peer is not None:
                peer.close()
    report(args, model, source, peer, why, clock, rows,
           None if args.check else times)
    print(f"\nTotal wall time of this script: {time.perf_counter() - started:.1f} s")


def report(args, model, source, peer, why, clock, rows, times) -> None:
    title = (f"{model.desc}: {args.batches} batches of {source}; popstats vs "
             f"pytensor-ml forward vs PyTorch update_bn")
    print(f"### {title}\n\n{C.versions()}, pytensor-ml "
          f"{ptml_version()}; timed in "
          f"{C.clock_label()}  ")
    if peer is None:
        torch_line = f"PyTorch: n/a ({why})"
    else:
        i = peer.info
        torch_line = (f"PyTorch {i['torch']} (Python {i['python']}, its own process: "
                      f"{i['threads']} intra-op / {i['interop_threads']} inter-op "
                      f"threads, timed there on the same clock)")
    print(f"{torch_line}; BLAS/OpenMP/Numba/XLA threads {peers.THREADS}; machine: "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end  ")
    if "JAX" in args.modes:
        print(peers.jax_line())
    print()
    slots = [r.pop("slots") for r in rows]
    out = {"desc": model.desc, "source": source, "clock": clock, "rows": rows,
           "torch": None if peer is None else peer.info, "torch_missing": why}
    if not args.check:
        best = [C.best(t) for t in times]
        med = [C.median(t) for t in times]
        tb, tm = (best[-1], med[-1]) if peer is not None else (None, None)
        table = []
        for r, (i, j) in zip(rows, slots, strict=True):
            pb, fb, pm, fm = best[i], best[j], med[i], med[j]
            r.update(pop_s=pb, forward_s=fb, pop_median_s=pm, forward_median_s=fm,
                     torch_s=tb, torch_median_s=tm)
            torch_cells = ["n/a"] * 5 if tb is None else [
                C.fmt_s(tb), C.fmt_ratio(tb / pb), C.fmt_ratio(tm / pm),
                C.fmt_ratio(tb / fb), C.fmt_ratio(tm / fm)]
            table.append([r["mode"], r["accumulate"], r["n_stats"], C.fmt_s(pb),
                          C.fmt_s(fb), C.fmt_ratio(pb / fb), C.fmt_ratio(pm / fm),
                          *torch_cells])
        print(f"Per batch, best of {args.repeats} (interleaved, compile excluded); "
              f"every mode and PyTorch in one run:\n")
        print(C.table(["mode", "accumulate", "statistics", "popstats / batch",
                       "forward / batch", "popstats / forward (best)", "(median)",
                       "PyTorch / batch", "popstats speed vs PyTorch (best)",
                       "(median)", "forward speed vs PyTorch (best)", "(median)"],
                      table))
        print()
    comp = [[r["mode"], r["accumulate"], *(C.fmt_s(t) for t in r["compile"]),
             *(C.fmt_s(t) for t in r["compile_forward"])] for r in rows]
    if peer is not None:
        comp.append([f"PyTorch (its process: {C.fmt_s(peer.info['process_s'])} "
                     f"wall to ready)", "", "", "", "", "",
                     f"import torch {C.fmt_s(peer.info['import_s'])}; build + first "
                     f"update_bn {C.fmt_s(peer.info['build_and_first_s'])} (wall)"])
    print("Compile and first calls (not in the per-batch figures):\n")
    print(C.table(["mode", "accumulate", "Estimation build (export + compile)",
                   "its first pass", "forward compile", "its first call",
                   "update_running_stats, one call (caches warm)"], comp))
    print("\nValues, max |a - b| / max |b| against PyTorch (float32 on both sides):\n")
    print(C.table(
        ["mode", "accumulate", "written, estimator='unbiased' vs update_bn",
         "written, default (biased) x m/(m-1)", "(without m/(m-1))",
         "Estimation pass x m/(m-1)", "train-mode forward, batch 1",
         "eval prediction after the write"],
        [[r["mode"], r["accumulate"],
          *(fmt_diff(r, k) for k in ("unbiased", "biased", "biased_raw", "estimate",
                                     "forward", "predict"))] for r in rows]))
    print(f"\nm (elements per channel and batch): {model.elements()}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
