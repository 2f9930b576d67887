"""How many batches the population statistics need: stopping at a target
against a full pass and the rivals' fixed conventions.

Data: the 8x8 scikit-learn digits cannot show it (1,437 training images give
no variance to 1%), so every training image is drawn again and again with a
random shift of up to one pixel each way (zero fill) and Gaussian pixel noise
(sd 0.1): ``--examples`` (default 102,400: 1,600 batches of 64) augmented
training examples, a fresh random stream per batch (seeded, so every pass
sees the same batches). The test images are augmented alike, ten copies each
(3,600 examples, fixed seed).

Training is kept cheap and honest: each model trains on ``--train-batches``
(default 400) batches of the *augmented* stream (a stream of its own, not the
estimation batches), so the statistics then estimated describe the
distribution the network was trained and is tested on; training the digits
and estimating on the augmented data would measure statistics of another
distribution. Four hundred batches is about the training of the examples
(10 to 15 epochs of 23 batches), enough for the accuracies to mean
something; the figure is about the estimation pass.

Models:

* ``lstm``: the main job's BN-LSTM (``examples/bn_lstm_digits.py``: 100
  units, 8 rows of 8 pixels, per-step statistics of ``W_x x``, ``W_h h``
  and ``c``, batch statistics marked with ``bn_statistic``), CVM as the
  example; no blank rows appended (every batch reaches all 8 steps);
* ``conv``: the conv net of ``examples/pytensor_ml_digits.py``
  (pytensor-ml ``Conv2D(16)-BatchNorm-ReLU-MaxPool2D-Linear(64)-BatchNorm-
  ReLU-Linear``, recognized without marks), in CVM (``--conv-mode``; the
  example uses Numba, whose compilation of the training step took over ten
  minutes on a busy shared core); Python 3.12 with pytensor-ml.

For each model, after training, with the default estimator (``"mean"``)
and ``min_batches=10``:

* a pass with ``target_error=0.01`` and one with ``0.001`` (each an
  ``Estimation`` compiled once, compile excluded from the seconds): where
  each stopped and its seconds (``run`` + ``finalize``; the checks
  included). The norm is the stopping rule's (docs/estimators.rst): per
  statistic the largest relative standard error over its units and cells,
  a mean's error relative to its unit's spread (the paired variance's
  square root), a variance's or std's to its value; the pass stops when
  every statistic's norm is below the target. The 0.1% pass's trace (its
  checks, a tenth more batches each time) draws the curves;
* one plain pass (no target), read at the rivals' fixed amounts: mmpretrain's
  ``PreciseBNHook`` 8,192 samples (128 batches of 64), fvcore's PreciseBN
  200 iterations and detectron2's 500 (iterations of our batch of 64), and
  PyTorch's ``update_bn`` one whole epoch (the full pass): at each its norm
  (measured as the stopping rule measures it) and its seconds;
* test accuracy at batch size 1 with each set of statistics (the inference
  graph compiled once, its population variables set per row), and the
  share of test predictions equal to the full pass's.

Writes the numbers as JSON (``--json``), a Markdown and a reStructuredText
table on stdout, and the figure (``--png``, default
``docs/_static/stopping_figure.png``; matplotlib, the ``plot`` extra).
``--rst PATH`` writes the reStructuredText table to ``PATH``
(docs/stopping-figure.txt). ``--plot-only`` redraws the figure and tables
from the JSON; ``--models`` runs some models and keeps the others' results
already in the JSON.

Run (Python 3.12 with pytensor-ml for ``conv``)::

    python benchmarks/stopping_figure.py --quick     # a minute: check it runs
    python benchmarks/stopping_figure.py             # ~10 min on a shared core
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import _common as C  # noqa: E402  (pins BLAS/Numba threads to 1 first)

sys.path.insert(1, str(ROOT / "examples"))

import numpy as np  # noqa: E402
import pytensor  # noqa: E402
import pytensor.tensor as pt  # noqa: E402

import popstats  # noqa: E402
from popstats._src.estimation.stop_rule import measure  # noqa: E402

FLOATX = pytensor.config.floatX
#: the rivals' fixed amounts: (label, batches of 64) -- None: the full pass
CONVENTIONS = (
    ("mmpretrain PreciseBNHook: 8,192 samples", 128),
    ("fvcore PreciseBN: 200 iterations", 200),
    ("detectron2: 500 iterations", 500),
    ("PyTorch update_bn: one epoch (full pass)", None),
)
MODEL_NAMES = {"lstm": "BN-LSTM (examples/bn_lstm_digits.py)",
               "conv": "conv net (examples/pytensor_ml_digits.py)"}


# --------------------------------------------------------------------------
# data


def digits(seed: int = 0):
    """The examples' split of the digits: images (n, 8, 8) in [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    images = (d.images / 16.0).astype(FLOATX)
    return train_test_split(images, d.target.astype(np.int64), test_size=0.2,
                            random_state=seed, stratify=d.target)


def augment(images: np.ndarray, labels: np.ndarray, n: int,
            rng: np.random.Generator, noise: float = 0.1):
    """``n`` examples drawn from ``images``, each shifted by -1..1 pixels each
    way (zero fill) with Gaussian noise of sd ``noise`` added."""
    idx = rng.integers(0, len(images), n)
    padded = np.pad(images[idx], ((0, 0), (1, 1), (1, 1)))
    dy, dx = rng.integers(0, 3, (2, n))
    rows = dy[:, None] + np.arange(8)[None, :]
    cols = dx[:, None] + np.arange(8)[None, :]
    out = padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
    out = out + noise * rng.standard_normal(out.shape)
    return out.astype(FLOATX), labels[idx]


def stream(images, labels, n_batches: int, batch: int, seed: tuple[int, ...]):
    """``n_batches`` augmented batches, batch ``k`` from its own seed."""
    for k in range(n_batches):
        yield augment(images, labels, batch, np.random.default_rng([*seed, k]))


# --------------------------------------------------------------------------
# models: (estimation input, its layout, logits, train step, mode)


def lstm_model(args, rng):
    import bn_lstm_digits as ex

    hidden = 24 if args.quick else 100
    params = ex.init_params(8, hidden, rng)
    x, logits = ex.build_model(params, hidden)
    y = pt.vector("y", dtype="int64")
    loss = -pt.special.log_softmax(logits, axis=1)[pt.arange(y.shape[0]), y].mean()
    updates = ex.adam_updates(loss, list(params.values()), args.lr or 2e-3)
    train = pytensor.function([x, y], loss, updates=updates, mode="CVM")

    def layout(images):  # (n, 8, 8) -> time-major (8 rows, n, 8 pixels)
        return np.ascontiguousarray(images.transpose(1, 0, 2))

    return x, layout, logits, train, "CVM"


def conv_model(args, rng):
    import pytensor_ml_digits as ex
    from pytensor_ml.loss import CrossEntropy
    from pytensor_ml.model import Model
    from pytensor_ml.optim import adam

    channels, hidden = (4, 16) if args.quick else (16, 64)
    X, logits, bns = ex.build_conv(channels, hidden)
    model = Model(logits, compile_kwargs={"mode": args.conv_mode})
    ex.initialize(model, bns, args.seed, forget_bias=False)
    train = model.compile_train(adam(args.lr or 1e-2), CrossEntropy(expect_logits=True))

    def layout(images):  # (n, 8, 8) -> channels last (n, 8, 8, 1)
        return images[..., None]

    return X, layout, logits, train, args.conv_mode


# --------------------------------------------------------------------------
# the measurements


def overall(norms: dict[str, float]) -> float:
    """The rule's norm over statistics: the largest (NaN: none measured)."""
    finite = [v for v in norms.values() if np.isfinite(v)]
    return max(finite) if finite else float("nan")


def run_model(name: str, args) -> dict:
    x_train, x_test, y_train, y_test = digits(args.seed)
    rng = np.random.default_rng(args.seed)
    builder = lstm_model if name == "lstm" else conv_model
    x, layout, logits, train, mode = builder(args, rng)
    out: dict = {"model": MODEL_NAMES[name], "mode": mode or "default (Numba)",
                 "batch_size": args.batch_size, "examples": args.examples,
                 "train_batches": args.train_batches}

    # -- training on the augmented stream (its own seed) ----------------------
    t0 = time.perf_counter()
    losses = []
    for xb, yb in stream(x_train, y_train, args.train_batches, args.batch_size,
                         (args.seed, 1)):
        losses.append(float(train(layout(xb), yb)))
    out["train_seconds"] = time.perf_counter() - t0
    out["train_loss_last_50"] = float(np.mean(losses[-50:]))
    print(f"[{name}] trained {args.train_batches} batches in "
          f"{out['train_seconds']:.1f}s (compile included), loss "
          f"{out['train_loss_last_50']:.3f}", file=sys.stderr)

    # -- estimation batches (pre-made: the data's making is not timed) --------
    n_batches = args.examples // args.batch_size
    name_in = x.name
    batches = [{name_in: layout(xb)} for xb, _ in
               stream(x_train, y_train, n_batches, args.batch_size, (args.seed, 2))]
    xt, yt = augment(x_test, y_test, len(x_test) * args.test_copies,
                     np.random.default_rng([args.seed, 3]))
    xt = layout(xt)
    batch_axis = 1 if name == "lstm" else 0

    # -- passes stopping at each target ---------------------------------------
    stopped = {}
    for target in args.targets:
        est = popstats.Estimation([x], logits, mode=mode, target_error=target,
                                  min_batches=args.min_batches)
        est.run(batches[:2], progress=False)  # untimed: first-call (JIT) costs
        seconds, state = C.time_call(lambda est=est: est.run(batches, progress=False))
        t_fin, stats = C.time_call(lambda est=est, state=state: est.finalize(state))
        stop = stats.stopping
        stopped[target] = {
            "stats": stats, "reason": stop.reason, "n_batches": stop.n_batches,
            "seconds": seconds + t_fin,
            "norm": overall(dict(stop.norm)),
            "trace": [(c.n_batches, overall(dict(c.norm)), dict(c.norm))
                      for c in stop.trace],
        }
        print(f"[{name}] target {target:g}: {stop.reason} after {stop.n_batches} "
              f"batches, {seconds + t_fin:.2f}s, norm {stopped[target]['norm']:.4%}",
              file=sys.stderr)

    # -- one plain pass, read at the fixed amounts ----------------------------
    plain = popstats.Estimation([x], logits, mode=mode)
    plain.run(batches[:2], progress=False)  # untimed: first-call (JIT) costs
    marks = sorted({min(n or n_batches, n_batches) for _, n in CONVENTIONS})
    fixed: dict[int, dict] = {}
    state, done, spent = None, 0, 0.0
    for n in marks:
        seconds, state = C.time_call(
            lambda state=state, done=done, n=n: plain.run(batches[done:n], state,
                                                          progress=False))
        spent += seconds
        done = n
        t_fin, stats = C.time_call(lambda state=state: plain.finalize(state))
        check, _left = measure(plain.sites, plain.estimators, state, args.min_batches)
        fixed[n] = {"stats": stats, "seconds": spent + t_fin,
                    "norm": overall(dict(check.norm)), "per_stat": dict(check.norm)}
        print(f"[{name}] {n} batches: {spent + t_fin:.2f}s, norm "
              f"{fixed[n]['norm']:.4%}", file=sys.stderr)

    # -- accuracy at batch size 1, one compiled inference graph ---------------
    inference = popstats.rewrite(logits, fixed[n_batches]["stats"])
    holders = popstats.population_variables(inference)
    fn = pytensor.function([x], inference, mode=mode)

    def predictions(stats) -> np.ndarray:
        for key, var in holders.items():
            var.set_value(np.asarray(stats[key].value, dtype=var.dtype))
        take = (lambda i: xt[:, i:i + 1]) if batch_axis == 1 else \
            (lambda i: xt[i:i + 1])
        n = xt.shape[batch_axis]
        return np.array([int(np.argmax(fn(take(i)))) for i in range(n)])

    full_pred = predictions(fixed[n_batches]["stats"])
    rows = []
    for target in args.targets:
        s = stopped[target]
        pred = predictions(s["stats"])
        rows.append({
            "how": f"stop at {target:.1%} relative SE"
                   + ("" if s["reason"] == "target" else " (not reached)"),
            "batches": s["n_batches"], "examples": s["n_batches"] * args.batch_size,
            "seconds": s["seconds"], "norm": s["norm"],
            "accuracy": float(np.mean(pred == yt)),
            "agreement": float(np.mean(pred == full_pred)),
        })
    for label, n in CONVENTIONS:
        n = min(n or n_batches, n_batches)
        pred = full_pred if n == n_batches else predictions(fixed[n]["stats"])
        rows.append({
            "how": label, "batches": n, "examples": n * args.batch_size,
            "seconds": fixed[n]["seconds"], "norm": fixed[n]["norm"],
            "accuracy": float(np.mean(pred == yt)),
            "agreement": float(np.mean(pred == full_pred)),
        })
    out["rows"] = rows
    out["test_examples"] = len(yt)
    out["trace"] = stopped[min(args.targets)]["trace"]
    out["statistics"] = sorted(fixed[n_batches]["stats"])
    return out


# --------------------------------------------------------------------------
# output


def tables(results: dict) -> tuple[str, str]:
    headers = ["model", "statistics from", "batches", "examples", "seconds",
               "relative SE (norm)", "accuracy, batch size 1", "same as full pass"]
    rows = []
    for name, res in results.items():
        for r in res["rows"]:
            rows.append([name, r["how"], f"{r['batches']:,}", f"{r['examples']:,}",
                         f"{r['seconds']:.2f}", f"{r['norm']:.2%}",
                         f"{r['accuracy']:.4f}", f"{r['agreement']:.2%}"])
    return C.table(headers, rows), C.rst_table(headers, rows)


def plot(results: dict, png: Path, targets) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.2 * len(results), 4.0),
                             squeeze=False)
    for ax, res in zip(axes[0], results.values(), strict=True):
        trace = res["trace"]
        n = np.array([t[0] for t in trace])
        for stat in res["statistics"]:
            ax.plot(n, [t[2].get(stat, np.nan) for t in trace], lw=0.7, alpha=0.45)
        ax.plot(n, [t[1] for t in trace], "k", lw=2.0,
                label="norm: largest over statistics")
        for target in targets:
            ax.axhline(target, color="0.3", ls="--", lw=0.8)
            ax.annotate(f"{target:.1%}", (n[0], target), va="bottom", fontsize=8)
        full = res["examples"] // res["batch_size"]
        styles = ["C0", "C1", "C2", "C3"]
        for (label, b), colour in zip(CONVENTIONS, styles, strict=True):
            ax.axvline(min(b or full, full), color=colour, ls=":", lw=1.2,
                       label=label.split(":")[0])
        missed = []
        for target, r in zip(targets, res["rows"][:len(targets)], strict=True):
            if "not reached" in r["how"]:
                missed.append(f"{target:.1%}")
                continue
            ax.plot([r["batches"]], [r["norm"]], "o", color="k", ms=6)
            ax.annotate(f"stopped: {r['batches']} batches, {r['seconds']:.1f} s",
                        (r["batches"], r["norm"]), textcoords="offset points",
                        xytext=(-150, -16), fontsize=8)
        if missed:
            ax.annotate(f"{', '.join(missed)}: not reached in {full:,} batches",
                        (0.02, 0.02), xycoords="axes fraction", fontsize=8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"batches of {res['batch_size']}")
        ax.set_ylabel("relative standard error")
        ax.set_title(f"{res['model']}\n{res['examples']:,} augmented digits",
                     fontsize=9)
        ax.grid(True, which="both", lw=0.3, alpha=0.5)
    axes[0][0].legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    print(f"figure written to {png}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="lstm,conv")
    parser.add_argument("--examples", type=int, default=102_400)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--train-batches", type=int, default=400)
    parser.add_argument("--test-copies", type=int, default=10)
    parser.add_argument("--targets", default="0.01,0.001")
    parser.add_argument("--min-batches", type=int, default=10)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--conv-mode", default="CVM",
                        help="the conv net's mode (default CVM: Numba took over "
                        "10 minutes to compile its training step on a busy core)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=HERE / "stopping_figure.json")
    parser.add_argument("--png", type=Path,
                        default=ROOT / "docs" / "_static" / "stopping_figure.png")
    parser.add_argument("--rst", type=Path, default=None,
                        help="also write the reStructuredText table there "
                        "(docs/stopping-figure.txt, included by docs/estimators.rst)")
    parser.add_argument("--plot-only", action="store_true")
    parser.add_argument("--quick", action="store_true",
                        help="6,400 examples, 60 training batches, small models")
    args = parser.parse_args()
    targets = [float(t) for t in args.targets.split(",")]
    args.targets = sorted(targets, reverse=True)
    C.set_clock("cpu")
    if args.quick:
        args.examples, args.train_batches, args.test_copies = 6400, 60, 1
        if args.json == HERE / "stopping_figure.json":
            args.json = HERE / "stopping_figure_quick.json"
        if args.png == ROOT / "docs" / "_static" / "stopping_figure.png":
            args.png = HERE / "stopping_figure_quick.png"
    results = json.loads(args.json.read_text()) if args.json.exists() else {}
    header = results.pop("_header", None)
    if not args.plot_only:
        started = time.perf_counter()
        for name in (m.strip() for m in args.models.split(",") if m.strip()):
            results[name] = run_model(name, args)
        header = (f"{C.versions()}; timed in {C.clock_label()}; one thread per "
                  f"library; {time.perf_counter() - started:.0f} s wall")
        order = {k: results[k] for k in ("lstm", "conv") if k in results}
        args.json.write_text(json.dumps({"_header": header, **order}, indent=1))
    results = {k: results[k] for k in ("lstm", "conv") if k in results}
    md, rst = tables(results)
    print(f"### Stopping at a target vs fixed amounts\n\n{header}\n\n{md}\n\n{rst}")
    if args.rst is not None:
        args.rst.write_text(f".. {header}\n\n{rst}\n")
    plot(results, args.png, args.targets)


if __name__ == "__main__":
    main()
