"""Sequential digits with a recurrent batch-normalized LSTM, then popstats.

The model is the BN-LSTM of Cooijmans et al. 2016, "Recurrent Batch
Normalization", written in plain PyTensor:

    i, f, o, g = BN(W_h h[t-1]; gamma_h) + BN(W_x x[t]; gamma_x) + b
    c[t] = sigmoid(f) * c[t-1] + sigmoid(i) * tanh(g)
    h[t] = sigmoid(o) * tanh(BN(c[t]; gamma_c, beta_c))

with separate statistics per time step (the batch mean and variance are
computed inside the ``scan`` step and marked with ``popstats.bn_statistic``)
and every gamma initialised to 0.1, as in the paper.

The data are scikit-learn's 8x8 digits (shipped with scikit-learn, no
download), read one row per step (8 steps of 8 pixels) or, with
``--pixels``, one pixel per step (64 steps). Every training batch is followed
by a random number (0 to ``--train-pad``) of blank steps, and the class is
read out after the last one, so the network learns to hold a digit in memory
over blank input. That makes a longer-sequence test meaningful: at test time
we append more blank steps than any training sequence had, and population
statistics beyond the last trained step are those of that step (clamped), the
rule of the paper.

The training function also keeps running averages of every statistic (per
step), as Lasagne, Blocks and PyTorch do
(``popstats.nn.running_average_updates``, momentum 0.1): they are updated by
the same call that trains, so the loop runs once per batch. After training,
``popstats.estimate`` estimates the population statistics in one pass over
the training data and ``popstats.rewrite`` puts them in the graph; the
script prints test accuracy with batch statistics, population statistics and
running averages at batch sizes 256 and 1, on the test digits and on the
longer sequences.

With tqdm installed (``pip install 'popstats[progress]'``) a progress bar
follows the training batches of each epoch and the estimation pass, on a
terminal only; the per-epoch lines are printed either way. The results go to
the folder ``--output`` (default ``examples/output``): the table as
``bn_lstm_digits.csv`` and ``bn_lstm_digits.json``, the population
statistics as ``bn_lstm_digits_stats.npz`` (``popstats summary`` and
``popstats report`` read it), an HTML report of the
population statistics (``bn_lstm_digits_report.html``) and, with matplotlib
(``pip install 'popstats[plot]'``), a figure of the population and running
average of ``bn_x.mean`` per step (``bn_lstm_digits_bn_x_mean.png``); the
script prints the folder and file names.

The optimizer is a hand-written Adam of about ten lines. The maintained
alternative working on PyTensor shared variables is PyMC's
``pymc.variational.updates`` (Lasagne's update rules); it would bring all of
PyMC (ArviZ, xarray, pandas, ...) for those ten lines, so the example does
without it.

Run::

    python examples/bn_lstm_digits.py         # full setting: about 7 s of
                                              # training (10 epochs of 0.6 s)
    python examples/bn_lstm_digits.py --fast  # a few seconds (used by the tests)

Compilation comes on top. The script compiles with PyTensor's C backend
(``CVM``) by default. With an empty compilation cache, on two cores, the
whole run took 80-90 s with the second core nearly idle and 107-113 s
beside another job (PyTensor 3.0.7 and 3.3.8), 55-96 s of it compiling;
later runs load the compiled code from PyTensor's cache and took 18-23 s.
With an empty cache Numba, PyTensor's default backend, needed 1.7
(PyTensor 3.3.8) to 2.3 (3.0.7) times the CPU time of CVM, most of it for
the gradient of the loop; ``--mode NUMBA`` trains a little faster once
compiled (0.4 s an epoch). ``--mode FAST_COMPILE`` needed 15-28% less CPU
time with an empty cache but trains three times more slowly (1.8 s an
epoch) and is slower warm. ``JAX`` cannot compile the training function
(the running averages slice by a run-time length). BLAS runs on one thread
(``--blas-threads``): on a busy machine more threads made training five to
ten times slower.
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
from pytensor.tensor.special import log_softmax, softmax

try:
    import popstats
except ImportError:  # running from a source checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import popstats

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "output"
EPS = 1e-5
EVAL_BATCH = 256
RUNNING_MOMENTUM = 0.1
REPORT_TITLE = "BN-LSTM digits: population statistics"
STATS_FILE = "bn_lstm_digits_stats.npz"
FLOATX = pytensor.config.floatX


# ----------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------


def load_data(pixels: bool, seed: int, fast: bool):
    """Digits as time-major sequences ``(steps, examples, features)`` in [0, 1]."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        sys.exit("This example needs scikit-learn, for its digits data: "
                 "pip install scikit-learn (or pip install '.[examples]' in a "
                 "popstats checkout).")

    digits = load_digits()
    images = (digits.images / 16.0).astype(FLOATX)  # (n, 8, 8)
    labels = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=0.2, random_state=seed, stratify=labels
    )
    if fast:
        x_train, y_train = x_train[:512], y_train[:512]
    n_features = 1 if pixels else 8

    def to_sequences(x: np.ndarray) -> np.ndarray:
        x = x.reshape(len(x), -1, n_features)  # (n, steps, features)
        return np.ascontiguousarray(x.transpose(1, 0, 2))

    return to_sequences(x_train), y_train, to_sequences(x_test), y_test


def pad_blank(x: np.ndarray, n_blank: int) -> np.ndarray:
    """Append ``n_blank`` all-zero steps to time-major sequences ``x``."""
    if n_blank == 0:
        return x
    blank = np.zeros((n_blank, *x.shape[1:]), dtype=x.dtype)
    return np.concatenate([x, blank], axis=0)


def training_batches(x, y, batch_size, max_pad, rng):
    """One epoch of shuffled batches, each with 0..max_pad blank steps appended."""
    order = rng.permutation(x.shape[1])
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        n_blank = int(rng.integers(0, max_pad + 1))
        yield pad_blank(x[:, idx], n_blank), y[idx]


def blas_threads(n: int):
    """A context limiting the BLAS libraries loaded so far to ``n`` threads.

    The products here are small (at most 256 x 100 by 100 x 400): a second
    thread gains nothing, and on a busy machine BLAS threads that wait for a
    core made each training epoch five to ten times slower (0.6 s alone,
    3 to 9 s beside another job on two cores). threadpoolctl comes with
    scikit-learn; without it nothing is limited.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=n, user_api="blas")


def progress(items, total: int, desc: str):
    """``items`` with a tqdm bar when tqdm is installed and stderr a terminal."""
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    # disable=None: no bar when stderr is not a terminal (pipes, tests).
    return tqdm(items, total=total, desc=desc, unit="batch", leave=False, disable=None)


# ----------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------


def init_params(n_in: int, n_hidden: int, rng: np.random.Generator) -> dict:
    def orthogonal(n):
        q, r = np.linalg.qr(rng.normal(size=(n, n)))
        return q * np.sign(np.diag(r))

    h4 = 4 * n_hidden
    bias = np.zeros(h4)
    bias[n_hidden : 2 * n_hidden] = 1.0  # forget gate (order i, f, o, g)
    limit = np.sqrt(6.0 / (n_in + h4))
    values = {
        "W_x": rng.uniform(-limit, limit, size=(n_in, h4)),
        "W_h": np.concatenate([orthogonal(n_hidden) for _ in range(4)], axis=1),
        "b": bias,
        # Cooijmans et al. initialise every gamma to 0.1; the BN shifts of the
        # gate pre-activations are left out (b plays that role).
        "gamma_x": np.full(h4, 0.1),
        "gamma_h": np.full(h4, 0.1),
        "gamma_c": np.full(n_hidden, 0.1),
        "beta_c": np.zeros(n_hidden),
        "W_out": rng.normal(scale=1.0 / np.sqrt(n_hidden), size=(n_hidden, 10)),
        "b_out": np.zeros(10),
    }
    # Static shapes: the running averages need the statistics' shapes.
    return {
        k: pytensor.shared(v.astype(FLOATX), name=k, shape=v.shape)
        for k, v in values.items()
    }


def batch_norm(a, gamma, label, beta=None):
    """Normalize ``a`` (batch, units) with its batch statistics, marked for popstats.

    The role makes the running average of a variance start at 1; the group
    pairs the mean and variance of one normalization (``popstats.drift``
    compares them as a distribution) and the count (the batch size) lets
    every estimator run, ``"pooled"`` included (``examples/upstream_digits.py``).
    """
    n = a.shape[0]
    mean = popstats.bn_statistic(a.mean(axis=0), label=f"{label}.mean", role="mean",
                                 group=label, count=n)
    var = popstats.bn_statistic(a.var(axis=0), label=f"{label}.var", role="var",
                                group=label, count=n)
    out = gamma * (a - mean) / pt.sqrt(var + EPS)
    return out if beta is None else out + beta


def build_model(params: dict, n_hidden: int):
    """Symbolic input ``x`` (steps, batch, features) and class logits."""
    x = pt.tensor3("x", dtype=FLOATX)
    p = params
    # The input projections of all steps in one product, outside the loop; the
    # batch statistics are still those of each step, computed inside it.
    x_proj = pt.dot(x, p["W_x"])  # (steps, batch, 4 * n_hidden)

    def step(xw_t, h, c, W_h, b, gamma_x, gamma_h, gamma_c, beta_c):
        pre = (
            batch_norm(pt.dot(h, W_h), gamma_h, "bn_h")
            + batch_norm(xw_t, gamma_x, "bn_x")
            + b
        )
        i, f, o, g = (pre[:, k * n_hidden : (k + 1) * n_hidden] for k in range(4))
        c_new = pt.sigmoid(f) * c + pt.sigmoid(i) * pt.tanh(g)
        h_new = pt.sigmoid(o) * pt.tanh(batch_norm(c_new, gamma_c, "bn_c", beta_c))
        return h_new, c_new

    zeros = pt.zeros((x.shape[1], n_hidden), dtype=FLOATX)
    names = ["W_h", "b", "gamma_x", "gamma_h", "gamma_c", "beta_c"]
    hs, _cs = pytensor.scan(
        step,
        sequences=[x_proj],
        outputs_info=[zeros, zeros],
        non_sequences=[p[n] for n in names],
        return_updates=False,
    )
    logits = pt.dot(hs[-1], p["W_out"]) + p["b_out"]
    return x, logits


def adam_updates(loss, params, lr, b1=0.9, b2=0.999, eps=1e-8):
    """Plain Adam (Kingma & Ba 2015).

    Hand-written on purpose. The maintained library with update rules on
    PyTensor shared variables is PyMC (``pymc.variational.updates.adam``,
    from Lasagne), but it would add PyMC and its dependencies (ArviZ, xarray,
    pandas, ...) to this example for about ten lines.
    """
    grads = pytensor.grad(loss, params)
    t = pytensor.shared(np.asarray(0.0, dtype=FLOATX), name="adam_t")
    t_new = t + 1
    updates = [(t, t_new)]
    scale = lr * pt.sqrt(1 - b2**t_new) / (1 - b1**t_new)
    for param, grad in zip(params, grads, strict=True):
        zeros = np.zeros_like(param.get_value())
        m = pytensor.shared(zeros, name=f"{param.name}_m")
        v = pytensor.shared(zeros.copy(), name=f"{param.name}_v")
        m_new = b1 * m + (1 - b1) * grad
        v_new = b2 * v + (1 - b2) * grad**2
        updates += [(m, m_new), (v, v_new)]
        updates.append((param, param - scale * m_new / (pt.sqrt(v_new) + eps)))
    return updates


# ----------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------


def predict(fn, x: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Class predictions and probabilities, ``batch_size`` examples per call."""
    probs = [fn(x[:, s : s + batch_size]) for s in range(0, x.shape[1], batch_size)]
    probs = np.concatenate(probs, axis=0)
    return probs.argmax(axis=1), probs


def describe_coverage(stat) -> str:
    """How many estimation batches reached each step of a per-step statistic."""
    coverage, n = stat.coverage, stat.n_batches
    text = f"estimated over {n} training batches for {len(coverage)} steps"
    if coverage.min() == n:
        return text + " (every batch reaches every step)"
    first_short = int(np.argmin(coverage == n))
    return (
        f"{text} (every batch reaches steps 0-{first_short - 1}, fewer reach "
        f"the later ones: {coverage[-1]} the last)"
    )


def format_table(rows: list[dict]) -> str:
    head = ("statistics", "batch size", "steps", "accuracy")
    body = [
        (r["statistics"], str(r["batch_size"]), str(r["steps"]), f"{r['accuracy']:.4f}")
        for r in rows
    ]
    widths = [max(len(line[k]) for line in [head, *body]) for k in range(4)]
    rule = "  ".join("-" * w for w in widths)
    lines = [rule, "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
    lines.append(rule)
    for line in body:
        lines.append("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)))
    lines.append(rule)
    return "\n".join(line.rstrip() for line in lines)


def write_outputs(directory: Path, rows: list[dict], summary: dict, stats) -> list[str]:
    """The table as CSV and JSON (with the summary) and the population
    statistics (``.npz``, for ``popstats.load`` and the ``popstats``
    command); return the file names."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "bn_lstm_digits.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with open(directory / "bn_lstm_digits.json", "w") as f:
        json.dump({**summary, "rows": rows}, f, indent=2)
    stats.save(directory / STATS_FILE)
    return ["bn_lstm_digits.csv", "bn_lstm_digits.json", STATS_FILE]


def per_step_figure(stats, running_stats):
    """``bn_x.mean`` per step for a few units: population statistics (solid,
    from ``stats.plot``) and running averages (dashed), coverage below."""
    from matplotlib.lines import Line2D

    fig = stats.plot("bn_x.mean")
    ax = fig.axes[0]
    running = running_stats["bn_x.mean"].value
    steps = np.arange(running.shape[0])
    units = [ln for ln in ax.get_lines() if str(ln.get_label()).startswith("unit ")]
    for line in units:
        unit = int(str(line.get_label()).split()[1])
        ax.plot(steps, running[:, unit], "--", color=line.get_color(), lw=1)
    # One legend, beside the axes so that it covers no line: what the solid
    # and the dashed lines are (proxy entries), then a colour per unit.
    handles = [
        Line2D([], [], color="black", lw=1.5, label="population (popstats)"),
        Line2D([], [], color="black", lw=1, ls="--", label="running averages"),
        *units,
    ]
    ax.legend(handles=handles, fontsize="x-small", loc="upper left",
              bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.set_size_inches(8.4, fig.get_figheight())
    return fig


def write_figures(directory: Path, stats, running_stats) -> list[str]:
    """An HTML report of the population statistics and, with matplotlib, a
    PNG of ``bn_x.mean`` per step (population and running average); return
    the file names."""
    report = "bn_lstm_digits_report.html"
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        stats.report(directory / report, title=REPORT_TITLE, plots=False)
        return [report]
    stats.report(directory / report, title=REPORT_TITLE)
    figure = "bn_lstm_digits_bn_x_mean.png"
    per_step_figure(stats, running_stats).savefig(directory / figure, dpi=100)
    return [report, figure]


# ----------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--fast",
        action="store_true",
        help="tiny setting (a few seconds of training on a subset)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--hidden",
        type=int,
        default=None,
        help="LSTM units (default 100; 24 with --fast)",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="training epochs (default 10; 6 with --fast)",
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--lr",
        type=float,
        default=None,
        help="Adam step size (default 2e-3; 1e-2 with --fast)",
    )
    parser.add_argument(
        "--pixels",
        action="store_true",
        help="one pixel per step (64 steps) instead of one row (8); "
        "about 8 times slower",
    )
    parser.add_argument(
        "--train-pad",
        type=int,
        default=None,
        help="max blank steps appended in training (default: 4 "
        "rows' worth: 4, or 32 with --pixels)",
    )
    parser.add_argument(
        "--test-pad",
        type=int,
        default=None,
        help="blank steps appended for the longer-sequence test "
        "(default: 12 rows' worth: 12, or 96 with --pixels)",
    )
    parser.add_argument(
        "--mode",
        default="CVM",
        help="PyTensor compilation mode (default: CVM, the C backend, which "
        "compiles this model much sooner than Numba on a cold cache)",
    )
    parser.add_argument(
        "--blas-threads",
        type=int,
        default=1,
        help="threads of NumPy's and SciPy's BLAS (default 1: the matrices "
        "are small, and more threads only wait for each other)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_OUTPUT,
        help=f"folder for the results table (CSV, JSON) and figures (HTML report, "
        f"PNG with matplotlib); default {DEFAULT_OUTPUT}",
    )
    args = parser.parse_args(argv)
    unit = 8 if args.pixels else 1
    defaults = {
        "hidden": 24 if args.fast else 100,
        "epochs": 6 if args.fast else 10,
        "lr": 1e-2 if args.fast else 2e-3,
        "train_pad": 4 * unit,
        "test_pad": 12 * unit,
    }
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.test_pad <= args.train_pad:
        parser.error("--test-pad must exceed --train-pad (that is the point)")
    if args.blas_threads < 1:
        parser.error(f"--blas-threads must be at least 1, got {args.blas_threads}")
    return args


def main(argv=None) -> dict:
    """Train, estimate population statistics, evaluate; return the results."""
    args = parse_args(argv)
    t_start = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    # Loads scikit-learn, hence SciPy's BLAS too: both BLAS libraries are
    # loaded before their threads are limited.
    x_train, y_train, x_test, y_test = load_data(args.pixels, args.seed, args.fast)
    with blas_threads(args.blas_threads):
        return run(args, t_start, rng, x_train, y_train, x_test, y_test)


def run(args, t_start, rng, x_train, y_train, x_test, y_test) -> dict:
    """The body of :func:`main`, once the data are loaded."""
    n_steps, _, n_in = x_train.shape
    print(
        f"digits: {x_train.shape[1]} train / {x_test.shape[1]} test, "
        f"{n_steps} steps of {n_in} feature(s); BN-LSTM with {args.hidden} units; "
        f"{args.train_pad} max blank steps appended in training"
    )

    # -- model, training graph ------------------------------------------------
    params = init_params(n_in, args.hidden, rng)
    mode = args.mode
    x, logits = build_model(params, args.hidden)
    y = pt.vector("y", dtype="int64")
    loss = -log_softmax(logits, axis=1)[pt.arange(y.shape[0]), y].mean()
    accuracy = pt.eq(logits.argmax(axis=1), y).mean()
    probs = softmax(logits, axis=1)
    # Running averages of every statistic, one per step for the longest
    # training sequence. `loss` and `accuracy` come back rebuilt in the graph
    # that also outputs the statistics, and the Adam updates are taken from
    # that graph, so each training call runs the loop (and its gradient) once.
    max_train_steps = n_steps + args.train_pad
    (train_loss_var, train_acc_var), running_updates, running = (
        popstats.nn.running_average_updates(
            [loss, accuracy], momentum=RUNNING_MOMENTUM, max_steps=max_train_steps
        )
    )
    updates = adam_updates(train_loss_var, list(params.values()), args.lr)
    updates += list(running_updates.items())

    t0 = time.perf_counter()
    train_fn = pytensor.function(
        [x, y], [train_loss_var, train_acc_var], updates=updates, mode=mode
    )
    batch_fn = pytensor.function([x], probs, mode=mode)  # batch statistics
    print(
        f"compiled training and evaluation functions in {time.perf_counter() - t0:.1f}s"
    )

    # -- training -------------------------------------------------------------
    n_train_batches = -(-x_train.shape[1] // args.batch_size)
    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        losses, accs, sizes = [], [], []
        batches = progress(
            training_batches(x_train, y_train, args.batch_size, args.train_pad, rng),
            total=n_train_batches,
            desc=f"epoch {epoch}/{args.epochs}",
        )
        for xb, yb in batches:
            batch_loss, batch_acc = train_fn(xb, yb)
            losses.append(batch_loss)
            accs.append(batch_acc)
            sizes.append(len(yb))
        train_loss = np.average(losses, weights=sizes)
        train_acc = np.average(accs, weights=sizes)
        print(
            f"epoch {epoch}/{args.epochs}: loss {train_loss:.4f}, train accuracy "
            f"{train_acc:.4f} (batch statistics), {time.perf_counter() - t0:.1f}s"
        )

    # -- population statistics ------------------------------------------------
    # One pass over the training data, batches as in training (same size and
    # the same random blank tails), keyed by input name. A list, so that the
    # progress bar (on a terminal, with tqdm) knows the total.
    estimation_batches = [
        {"x": xb}
        for xb, _yb in training_batches(
            x_train, y_train, args.batch_size, args.train_pad, rng
        )
    ]
    t0 = time.perf_counter()
    stats = popstats.estimate(
        [x], probs, estimation_batches, mode=mode, progress="auto"
    )
    pop_fn = pytensor.function([x], popstats.rewrite(probs, stats), mode=mode)
    trained_steps = max(s.value.shape[0] for s in stats.values())
    print(
        f"population statistics {', '.join(sorted(stats))}: "
        f"{describe_coverage(stats['bn_x.mean'])}; "
        f"{time.perf_counter() - t0:.1f}s with compilation"
    )
    # The running averages as statistics: per step, cut to the steps some
    # training batch reached (longer sequences use the last one).
    running_stats = running.as_statistics()
    running_fn = pytensor.function(
        [x], popstats.rewrite(probs, running_stats), mode=mode
    )

    # -- evaluation -----------------------------------------------------------
    long_steps = n_steps + args.test_pad
    x_long = pad_blank(x_test, args.test_pad)
    plan = [  # (key, statistics, function, batch size, inputs)
        ("batch_256", "batch", batch_fn, EVAL_BATCH, x_test),
        ("batch_1", "batch", batch_fn, 1, x_test),
        ("population_256", "population", pop_fn, EVAL_BATCH, x_test),
        ("population_1", "population", pop_fn, 1, x_test),
        ("running_256", "running averages", running_fn, EVAL_BATCH, x_test),
        ("running_1", "running averages", running_fn, 1, x_test),
        ("batch_256_long", "batch", batch_fn, EVAL_BATCH, x_long),
        ("population_256_long", "population", pop_fn, EVAL_BATCH, x_long),
        ("population_1_long", "population", pop_fn, 1, x_long),
        ("running_256_long", "running averages", running_fn, EVAL_BATCH, x_long),
        ("running_1_long", "running averages", running_fn, 1, x_long),
    ]
    rows, predictions, probabilities = [], {}, {}
    for key, kind, fn, bs, xs in plan:
        pred, prob = predict(fn, xs, bs)
        predictions[key], probabilities[key] = pred, prob
        rows.append(
            {
                "row": key,
                "statistics": kind,
                "batch_size": bs,
                "steps": xs.shape[0],
                "accuracy": float(np.mean(pred == y_test)),
            }
        )

    same = bool(
        np.array_equal(predictions["population_1"], predictions["population_256"])
    )
    same_long = bool(
        np.array_equal(
            predictions["population_1_long"], predictions["population_256_long"]
        )
    )
    max_diff = float(
        np.abs(probabilities["population_1"] - probabilities["population_256"]).max()
    )
    same_running = all(
        np.array_equal(predictions[f"running_1{s}"], predictions[f"running_256{s}"])
        for s in ("", "_long")
    )
    n_batch1_classes = len(np.unique(predictions["batch_1"]))

    print()
    print(f"Test accuracy ({x_test.shape[1]} digits):")
    print(format_table(rows))
    print(
        f"* Population statistics: predictions at batch size 1 and {EVAL_BATCH} are "
        f"{'identical' if same else 'DIFFERENT'} (max probability difference "
        f"{max_diff:.1e}); each example is normalized independently of its batch."
    )
    print(
        f"* Running averages (momentum {RUNNING_MOMENTUM}, updated by every "
        f"training call over {running_stats['bn_x.mean'].value.shape[0]} steps): "
        f"predictions at batch size 1 and {EVAL_BATCH} are "
        f"{'identical' if same_running else 'DIFFERENT'}. They average "
        f"statistics of parameters that changed during training (mostly the "
        f"last batches'), where the estimation pass uses the final parameters."
    )
    print(
        f"* Batch statistics at batch size 1: a single example is its own batch "
        f"mean and has variance 0, so every normalized value is 0 (plus its "
        f"shift): the network ignores its input ({n_batch1_classes} distinct "
        f"prediction(s) over all test digits)."
    )
    print(
        f"* {long_steps} steps: the test digits followed by {args.test_pad} blank "
        f"steps, longer than any training sequence ({n_steps} digit steps + at most "
        f"{args.train_pad} blank ones). Statistics were estimated for "
        f"{trained_steps} steps; popstats uses those of step "
        f"{trained_steps - 1} (a blank step) for every later one, the clamping "
        f"rule of Cooijmans et al. 2016. Predictions at batch size 1 and "
        f"{EVAL_BATCH} are {'identical' if same_long else 'DIFFERENT'} there too. "
        f"Batch statistics over {EVAL_BATCH} test digits at each step are shown "
        f"for comparison (they need a large batch of test data)."
    )

    elapsed = time.perf_counter() - t_start
    summary = {
        "settings": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
        },
        "pytensor_version": pytensor.__version__,
        "trained_steps": trained_steps,
        "population_predictions_identical": same,
        "population_predictions_identical_long": same_long,
        "population_max_probability_difference": max_diff,
        "running_predictions_identical": bool(same_running),
        "running_momentum": RUNNING_MOMENTUM,
        "seconds": round(elapsed, 1),
    }
    files = write_outputs(args.output, rows, summary, stats)
    files += write_figures(args.output, stats, running_stats)
    print(f"\nresults written to {args.output}: {', '.join(files)}")
    print(f"total time {elapsed:.1f}s")
    return {
        "rows": rows,
        "predictions": predictions,
        "probabilities": probabilities,
        "labels": y_test,
        "inputs": {"test": x_test, "test_long": x_long},
        "params": {name: var.get_value() for name, var in params.items()},
        "stats": {name: stat.value for name, stat in stats.items()},
        "population_statistics": stats,
        "running_statistics": running_stats,
        "running_stats": {name: st.value for name, st in running_stats.items()},
        "summary": summary,
        "output": args.output,
        "files": files,
    }


if __name__ == "__main__":
    main()
