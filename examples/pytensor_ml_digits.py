"""pytensor-ml models on the digits: four ways of normalizing at inference.

Two models written with `pytensor-ml <https://pypi.org/project/pytensor-ml/>`_
(0.3, Python >= 3.12) and trained with its own API (``Model.compile_train``
with its ``adam`` and ``CrossEntropy``), on scikit-learn's 8x8 digits
(shipped with scikit-learn, no download):

* ``conv``: a small convolutional net, channels last::

      Conv2D(1 -> C, 3x3, valid) - BatchNorm - ReLU - MaxPool2D(2)
          - Linear(H) - BatchNorm - ReLU - Linear(10)

  (the first BatchNorm has one statistic per channel, over the batch and
  the 6x6 positions; the second one per unit, over the batch only; BN
  scales start at 0.1 here too);
* ``rnn``: a ``Recurrent`` layer over the rows of the image (8 steps of 8
  pixels) whose cell is the batch-normalized LSTM of Cooijmans et al. 2016
  written with pytensor-ml layers (``Linear`` and three ``BatchNorm``, every
  BN scale initialised to 0.1 as in the paper)::

      i, f, o, g = BN_h(W_h h[t-1]) + BN_x(W_x x[t])
      c[t] = sigmoid(f) * c[t-1] + sigmoid(i) * tanh(g)
      h[t] = sigmoid(o) * tanh(BN_c(c[t]))

  As in ``examples/bn_lstm_digits.py``, every training batch is followed by
  a random number (0 to ``--train-pad``) of blank steps and the class is read
  after the last step, so the network learns to hold the digit over blank
  input; the longer-sequence test appends more blank steps
  (``--test-pad``) than any training sequence had.

No statistic is marked: popstats recognizes pytensor-ml's ``BatchNorm``
layers. After training, the script prints test accuracy at batch sizes 256
and 1 (and, for ``rnn``, on the longer sequences) for four ways of
normalizing at inference:

``batch``
    the training graph as it is (``pytensor.function``): batch statistics of
    the test batch;
``running``
    pytensor-ml's running averages (``Model.predict``), which its training
    function updated (momentum 0.1). Inside a ``Recurrent`` cell there is
    one running pair for all steps, updated at every step of every batch;
``update_running_stats``
    ``popstats.update_running_stats`` writes population statistics estimated
    in one pass over the training data into the layers' ``running_mean`` /
    ``running_var`` and ``Model.predict`` reads them (one pair: pooled over
    the steps inside the loop);
``rewrite``
    ``popstats.get_inference_graph``: the graph rewritten to normalize with
    population statistics, one value per time step in the loop (past the
    last estimated step, that step's: the clamping of Cooijmans et al.).

Both popstats columns estimate over the same batches (the training data, as
in training). For ``conv`` (no loop, one application per layer) they hold
the same numbers and predict identically.

Precision: everything runs in ``floatX`` (float64 unless configured), the
data cast to it. pytensor-ml's running statistics take ``floatX`` at the
layer's first call, and its ``compile_predict`` (so ``Model.predict``)
fails on a float32 model under ``floatX=float64`` (pytensor-ml's bug): for
a float32 run set ``PYTENSOR_FLAGS=floatX=float32``, do not cast.

Run::

    python examples/pytensor_ml_digits.py          # full setting
    python examples/pytensor_ml_digits.py --fast   # small (used by the tests)
    python examples/pytensor_ml_digits.py --models conv --mode FAST_COMPILE

It compiles in PyTensor's default mode (Numba) unless ``--mode`` says
otherwise. On one core (PyTensor 3.3.8, pytensor-ml 0.3.0) the full setting
took 391 s with an empty compilation cache, 183 s of it compiling the
LSTM's training function and about 30 s the conv net's, and 33 s once the
compiled code is in the cache (``~/.pytensor``); training itself takes 0.5 s
an epoch for the LSTM and a few milliseconds for the conv net.
``--mode FAST_COMPILE`` starts training within seconds but trains the LSTM
at 2 to 3 s an epoch (the tests use it, with ``--fast``: about 15 s in all);
it prints the same table. The table goes to ``--output`` (default
``examples/output``) as ``pytensor_ml_digits.csv`` and
``pytensor_ml_digits.json``, the population statistics as
``pytensor_ml_digits_conv_stats.npz`` and ``pytensor_ml_digits_rnn_stats.npz``
(``popstats summary`` reads them).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
import pytensor
import pytensor.tensor as pt

try:
    import pytensor_ml
except ImportError:
    sys.exit("This example needs pytensor-ml (Python >= 3.12): "
             "pip install 'popstats[pytensor-ml]'")

from pytensor_ml.activations import ReLU
from pytensor_ml.layers import (
    BatchNorm,
    Conv2D,
    Flatten,
    Input,
    Linear,
    MaxPool2D,
    Recurrent,
    Sequential,
)
from pytensor_ml.layers.recurrent import RecurrentCell
from pytensor_ml.loss import CrossEntropy
from pytensor_ml.model import Model
from pytensor_ml.optim import adam

try:
    import popstats
except ImportError:  # running from a source checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import popstats

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "output"
EVAL_BATCH = 256
FLOATX = pytensor.config.floatX
MODELS = ("conv", "rnn")
WAYS = ("batch", "running", "update_running_stats", "rewrite")
#: Ways that normalize each example independently of its batch-mates.
INDEPENDENT = ("running", "update_running_stats", "rewrite")
STATS_FILE = "pytensor_ml_digits_{model}_stats.npz"


# ----------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------


def load_data(seed: int, fast: bool):
    """Digit images ``(n, 8, 8)`` in [0, 1] (``floatX``) and labels."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        sys.exit("This example needs scikit-learn, for its digits data: "
                 "pip install scikit-learn (or pip install '.[examples]' in a "
                 "popstats checkout)")
    digits = load_digits()
    images = (digits.images / 16.0).astype(FLOATX)
    labels = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=0.2, random_state=seed, stratify=labels
    )
    if fast:
        x_train, y_train = x_train[:512], y_train[:512]
    return x_train, y_train, x_test, y_test


def pad_blank(x: np.ndarray, n_blank: int) -> np.ndarray:
    """Append ``n_blank`` all-zero rows (time steps) to images ``(n, rows, 8)``."""
    if n_blank == 0:
        return x
    blank = np.zeros((x.shape[0], n_blank, *x.shape[2:]), dtype=x.dtype)
    return np.concatenate([x, blank], axis=1)


def epoch_batches(x, y, batch_size, max_pad, rng):
    """One epoch of shuffled batches; with ``max_pad`` > 0, each batch gets
    0..max_pad blank rows appended (the recurrent model)."""
    order = rng.permutation(len(x))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        n_blank = int(rng.integers(0, max_pad + 1)) if max_pad else 0
        yield pad_blank(x[idx], n_blank), y[idx]


def blas_threads(n: int):
    """Limit the BLAS libraries loaded so far to ``n`` threads (threadpoolctl,
    which comes with scikit-learn); the products here are small."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=n, user_api="blas")


# ----------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------


class BNLSTMCell(RecurrentCell):
    """The BN-LSTM step of Cooijmans et al. 2016 in pytensor-ml layers.

    The input and recurrent projections are normalized separately (their
    shifts: ``bn_x``'s ``loc`` is the gate bias, ``bn_h``'s starts at 0), and
    the cell state before the output ``tanh``.
    """

    def __init__(self, name: str, n_in: int, n_hidden: int):
        self.n_hidden = n_hidden
        h4 = 4 * n_hidden
        self.proj_x = Linear(f"{name}_Wx", n_in=n_in, n_out=h4, bias=False)
        self.proj_h = Linear(f"{name}_Wh", n_in=n_hidden, n_out=h4, bias=False)
        self.bn_x = BatchNorm(f"{name}_bn_x", n_in=h4)
        self.bn_h = BatchNorm(f"{name}_bn_h", n_in=h4)
        self.bn_c = BatchNorm(f"{name}_bn_c", n_in=n_hidden)

    @property
    def batch_norms(self) -> list[BatchNorm]:
        return [self.bn_x, self.bn_h, self.bn_c]

    def step(self, x_t, h, c):
        pre = self.bn_h(self.proj_h(h)) + self.bn_x(self.proj_x(x_t))
        n = self.n_hidden
        i, f, o, g = (pre[:, k * n : (k + 1) * n] for k in range(4))
        c_new = pt.sigmoid(f) * c + pt.sigmoid(i) * pt.tanh(g)
        h_new = pt.sigmoid(o) * pt.tanh(self.bn_c(c_new))
        return h_new, c_new

    def initial_state(self, X):
        zeros = pt.zeros((X.shape[0], self.n_hidden), dtype=X.dtype)
        return zeros, zeros


def build_conv(channels: int, hidden: int):
    """Input ``X`` (batch, 8, 8, 1), logits, and the batch-norm layers."""
    X = Input("X", shape=(None, 8, 8, 1))
    conv_bn = BatchNorm("conv_bn", n_in=channels)
    fc_bn = BatchNorm("fc_bn", n_in=hidden)
    features = Sequential(
        # "valid": the 8x8 digits keep 6x6 positions per channel
        Conv2D("conv", in_channels=1, out_channels=channels, kernel_size=3,
               bias=False),
        conv_bn,  # one statistic per channel, over batch and 6x6 positions
        ReLU(),
        MaxPool2D(kernel_size=2),
    )(X)  # (batch, 3, 3, channels)
    hidden_units = Sequential(
        Linear("fc", n_in=9 * channels, n_out=hidden, bias=False),
        fc_bn,  # one statistic per unit, over the batch only
        ReLU(),
    )(Flatten(features))
    logits = Linear("head", n_in=hidden, n_out=10)(hidden_units)
    return X, logits, [conv_bn, fc_bn]


def build_rnn(hidden: int):
    """Input ``X`` (batch, rows, 8), logits, and the batch-norm layers."""
    X = Input("X", shape=(None, None, 8))
    cell = BNLSTMCell("lstm", 8, hidden)
    states = Recurrent(cell, name="rows")(X)  # (batch, rows, hidden)
    logits = Linear("head", n_in=hidden, n_out=10)(states[:, -1])
    return X, logits, cell.batch_norms


def initialize(model: Model, bns: list[BatchNorm], seed: int, forget_bias: bool):
    """pytensor-ml's initialization, then every BN scale at 0.1 (Cooijmans
    et al.) and, for the LSTM, the forget-gate shift at 1."""
    model.initialize(seed=seed)
    for bn in bns:
        value = bn.scale.get_value()
        bn.scale.set_value(np.full_like(value, 0.1))
    if forget_bias:
        loc = bns[0].loc.get_value()
        n = loc.shape[0] // 4
        loc[n : 2 * n] = 1.0  # gate order i, f, o, g
        bns[0].loc.set_value(loc)


# ----------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def predict(fn, x: np.ndarray, batch_size: int) -> np.ndarray:
    """Class probabilities, ``batch_size`` examples per call of ``fn`` (logits)."""
    starts = range(0, len(x), batch_size)
    logits = [np.asarray(fn(x[s : s + batch_size])) for s in starts]
    return softmax(np.concatenate(logits, axis=0))


def running_values(bns: list[BatchNorm]) -> dict[str, np.ndarray]:
    values = {}
    for bn in bns:
        values[f"{bn.name}.mean"] = bn.running_mean.get_value().copy()
        values[f"{bn.name}.var"] = bn.running_var.get_value().copy()
    return values


def format_table(rows: list[dict]) -> str:
    head = ("model", "steps", "batch size", *WAYS)
    body = [
        (r["model"], str(r["steps"]), str(r["batch_size"]),
         *(f"{r[w]:.4f}" for w in WAYS))
        for r in rows
    ]
    widths = [max(len(line[k]) for line in [head, *body]) for k in range(len(head))]
    rule = "  ".join("-" * w for w in widths)
    header = "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))
    lines = [rule, header, rule]
    for line in body:
        lines.append("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)))
    lines.append(rule)
    return "\n".join(line.rstrip() for line in lines)


# ----------------------------------------------------------------------------
# One model
# ----------------------------------------------------------------------------


def run_model(name, args, data, rng) -> dict:
    """Train one model with pytensor-ml, evaluate the four ways; return the
    table rows, predictions and what was estimated."""
    x_train, y_train, x_test, y_test = data
    compile_kwargs = {} if args.mode is None else {"mode": args.mode}
    if name == "conv":
        X, logits, bns = build_conv(args.channels, args.hidden)
        x_train, x_test = x_train[..., None], x_test[..., None]
        max_pad, tests = 0, {"": x_test}
        what = (f"Conv2D({args.channels} channels)-BatchNorm-ReLU-MaxPool2D-"
                f"Linear({args.hidden})-BatchNorm-ReLU-Linear")
    else:
        X, logits, bns = build_rnn(args.hidden)
        max_pad = args.train_pad
        tests = {"": x_test, "_long": pad_blank(x_test, args.test_pad)}
        what = (f"Recurrent BN-LSTM cell, {args.hidden} units, 8 rows of 8 pixels, "
                f"0-{max_pad} blank rows appended in training")
    print(f"\n== {name}: {what}")
    model = Model(logits, compile_kwargs=compile_kwargs)
    initialize(model, bns, args.seed, forget_bias=name == "rnn")

    # -- training: pytensor-ml's own training function ------------------------
    t0 = time.perf_counter()
    step = model.compile_train(adam(args.lr), CrossEntropy(expect_logits=True))
    for epoch in range(1, args.epochs + 1):
        losses, sizes = [], []
        for xb, yb in epoch_batches(x_train, y_train, args.batch_size, max_pad, rng):
            losses.append(float(step(xb, yb)))
            sizes.append(len(yb))
        loss = np.average(losses, weights=sizes)
        print(f"epoch {epoch}/{args.epochs}: loss {loss:.4f} "
              f"({time.perf_counter() - t0:.1f}s so far, compilation included)")
    running_trained = running_values(bns)

    # -- the four ways --------------------------------------------------------
    t0 = time.perf_counter()
    batch_fn = pytensor.function([X], logits, **compile_kwargs)
    # One pass over the training data, batched as in training: both popstats
    # ways estimate from the same batches.
    estimation = [
        {"X": xb}
        for xb, _ in epoch_batches(x_train, y_train, args.batch_size, max_pad, rng)
    ]
    inference, stats = popstats.get_inference_graph(
        [X], logits, estimation, return_stats=True, progress=False, **compile_kwargs
    )
    rewrite_fn = pytensor.function([X], inference, **compile_kwargs)

    probabilities = {}

    def evaluate(way, fn):
        for suffix, xs in tests.items():
            for bs in (EVAL_BATCH, 1):
                probabilities[f"{way}_{bs}{suffix}"] = predict(fn, xs, bs)

    evaluate("batch", batch_fn)
    evaluate("rewrite", rewrite_fn)
    evaluate("running", model.predict)  # pytensor-ml's running averages
    written = popstats.update_running_stats(
        [X], logits, estimation, progress=False, **compile_kwargs
    )
    # Model.predict's compiled function reads the shared variables written.
    evaluate("update_running_stats", model.predict)
    print(f"compiled inference, estimated and evaluated in "
          f"{time.perf_counter() - t0:.1f}s")

    rows = []
    for suffix, xs in tests.items():
        for bs in (EVAL_BATCH, 1):
            row = {"model": name, "steps": xs.shape[1], "batch_size": bs}
            for way in WAYS:
                prob = probabilities[f"{way}_{bs}{suffix}"]
                row[way] = float(np.mean(prob.argmax(axis=1) == y_test))
            rows.append(row)
    return {
        "rows": rows,
        "probabilities": probabilities,
        "predictions": {k: p.argmax(axis=1) for k, p in probabilities.items()},
        "labels": y_test,
        "inputs": {f"test{s}": xs for s, xs in tests.items()},
        "estimation_batches": estimation,
        "stats": stats,
        "written": {w.name: w.value for w in written},
        "running_trained": running_trained,
        "trained_steps": max((s.value.shape[0] for s in stats.values()
                              if s.value.ndim > 1), default=None),
        "params": {p.name: p.get_value() for p in model.weights},
        "graph": (X, logits, bns),
        "model": model,
    }


# ----------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fast", action="store_true",
                        help="tiny setting (512 training digits, small models)")
    parser.add_argument("--models", default=",".join(MODELS),
                        help="comma-separated models to run (default: conv,rnn)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--channels", type=int, default=None,
                        help="conv channels (default 16; 4 with --fast)")
    parser.add_argument("--hidden", type=int, default=None,
                        help="LSTM units, and the conv net's hidden units "
                        "(default 64; 16 with --fast)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="training epochs (default 15; 10 with --fast)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=None,
                        help="Adam step size (default 1e-2; 2e-2 with --fast)")
    parser.add_argument("--train-pad", type=int, default=4,
                        help="rnn: max blank rows appended in training (default 4)")
    parser.add_argument("--test-pad", type=int, default=12,
                        help="rnn: blank rows appended for the longer-sequence test "
                        "(default 12)")
    parser.add_argument("--mode", default=None,
                        help="PyTensor compilation mode (default: PyTensor's, Numba)")
    parser.add_argument("--blas-threads", type=int, default=1)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT,
                        help=f"folder for the table (CSV, JSON) and statistics; "
                        f"default {DEFAULT_OUTPUT}")
    args = parser.parse_args(argv)
    defaults = {
        "channels": 4 if args.fast else 16,
        "hidden": 16 if args.fast else 64,
        "epochs": 10 if args.fast else 15,
        "lr": 2e-2 if args.fast else 1e-2,
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.models if m not in MODELS]
    if unknown or not args.models:
        parser.error(f"--models: choose from {', '.join(MODELS)}, "
                     f"got {unknown or 'none'}")
    if args.test_pad <= args.train_pad:
        parser.error("--test-pad must exceed --train-pad (that is the point)")
    return args


def default_mode_name() -> str:
    """What PyTensor's default mode is here: Numba unless configured."""
    config = pytensor.config
    if config.mode == "Mode" and config.linker == "auto":
        return "default (Numba)"
    return f"default (mode {config.mode}, linker {config.linker})"


def main(argv=None) -> dict:
    """Train both models, evaluate; return the results."""
    args = parse_args(argv)
    t_start = time.perf_counter()
    data = load_data(args.seed, args.fast)
    mode = args.mode or default_mode_name()
    print(f"digits: {len(data[0])} train / {len(data[2])} test; mode {mode}, "
          f"floatX {FLOATX}, pytensor {pytensor.__version__}, "
          f"pytensor-ml {pytensor_ml.__version__}")
    results = {}
    with blas_threads(args.blas_threads):
        for name in args.models:
            # One generator per model: its results do not depend on which
            # other models run.
            rng = np.random.default_rng([args.seed, MODELS.index(name)])
            results[name] = run_model(name, args, data, rng)
    rows = [row for name in args.models for row in results[name]["rows"]]

    print(f"\nTest accuracy ({len(data[2])} digits; mode {mode}):")
    print(format_table(rows))
    checks = {}
    for name, res in results.items():
        prob = res["probabilities"]
        for way in INDEPENDENT:
            for suffix in res["inputs"]:
                suffix = suffix[len("test"):]
                one, full = prob[f"{way}_1{suffix}"], prob[f"{way}_256{suffix}"]
                checks[f"{name}.{way}{suffix}"] = float(np.abs(one - full).max())
        n_classes = len(np.unique(res["predictions"]["batch_1"]))
        print(f"* {name}: batch statistics at batch size 1 give {n_classes} distinct "
              f"class(es) over all test digits.")
    worst = max(checks.values())
    print(f"* running, update_running_stats, rewrite: the largest difference of a "
          f"class probability between batch sizes 1 and {EVAL_BATCH} is {worst:.1e} "
          f"(each example is normalized independently of its batch).")
    if "rnn" in results:
        res = results["rnn"]
        print(f"* rnn, {8 + args.test_pad} steps: the test digits followed by "
              f"{args.test_pad} blank rows (training saw at most {args.train_pad}). "
              f"The rewrite holds statistics for {res['trained_steps']} steps and uses "
              f"the last one's past them; the running pairs (pytensor-ml's and "
              f"update_running_stats') hold one value for all steps.")

    elapsed = time.perf_counter() - t_start
    summary = {
        "settings": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
        },
        "mode": mode,
        "floatX": FLOATX,
        "pytensor_version": pytensor.__version__,
        "pytensor_ml_version": pytensor_ml.__version__,
        "max_probability_difference_1_vs_256": checks,
        "seconds": round(elapsed, 1),
    }
    files = write_outputs(args.output, rows, summary, results)
    print(f"\nresults written to {args.output}: {', '.join(files)}")
    print(f"total time {elapsed:.1f}s")
    return {"rows": rows, "models": results, "summary": summary, "files": files,
            "output": args.output}


def write_outputs(directory: Path, rows, summary, results) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "pytensor_ml_digits.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with open(directory / "pytensor_ml_digits.json", "w") as f:
        json.dump({**summary, "rows": rows}, f, indent=2)
    files = ["pytensor_ml_digits.csv", "pytensor_ml_digits.json"]
    for name, res in results.items():
        file = STATS_FILE.format(model=name)
        res["stats"].save(directory / file)
        files.append(file)
    return files


if __name__ == "__main__":
    main()
