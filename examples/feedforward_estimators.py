"""Population-statistics estimators compared on a batch-normalized MLP.

A small multilayer perceptron on scikit-learn's 8x8 digits (64 pixels in,
two hidden layers with batch normalization and ReLU, 10 classes out) is
trained briefly with batch statistics. Its batch means and variances are
marked with ``popstats.bn_statistic`` together with their role (mean or
variance), the normalization they belong to (``group``) and the number of
examples they reduce over (``count``, the batch size), which the
count-aware estimators need.

Then popstats estimates the population statistics with each estimator over
one pass of the training data cut into batches of *uneven* sizes (that is
where the estimators differ), and the script prints, per estimator and BN
layer, the error of the estimated mean and variance against the exact
population statistics of the training set, and the test accuracy of the
network with those statistics in place of the batch ones.

Exact population statistics: for the first BN layer, the mean and (biased)
variance of its pre-normalization activations over the whole training set at
once. For the second, those of its pre-normalization activations when the
first layer is normalized with *its* exact population statistics, i.e. the
statistics the second layer sees in the inference network. Every estimator
gathers the second layer's statistics in the training network, where the
first layer uses batch statistics, so none is exact there.

Run::

    python examples/feedforward_estimators.py         # full setting
    python examples/feedforward_estimators.py --fast  # used by the tests

Training and estimation take seconds either way; compilation comes on top.
The default mode is PyTensor's C backend (``CVM``): about a minute on an
empty compilation cache, seconds once cached. ``--mode FAST_COMPILE`` starts
sooner, ``--mode NUMBA`` (PyTensor's default) compiles more slowly on a cold
cache.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import textwrap
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
FLOATX = pytensor.config.floatX
LAYERS = ("bn1", "bn2")
ESTIMATORS = {
    "mean": "mean",
    "weighted": "weighted",
    "pooled": "pooled",
    "unbiased": "unbiased",
    "ema(0.1)": popstats.Estimator("ema", 0.1),
}
EXPLANATIONS = {
    "mean": "plain average of the batch statistics, every batch weighted "
    "equally (small batches count as much as large ones)",
    "weighted": "average of the batch statistics weighted by batch size",
    "pooled": "exact moments of all data seen, combining each batch's mean and "
    "variance with its size (Chan et al. 1979): the mean plus the spread of "
    "the batch means around it",
    "unbiased": "batch variances scaled by m/(m-1) before averaging (the "
    "inference rule of Ioffe & Szegedy 2015): an estimate of the variance "
    "of the data distribution, not of the training set",
    "ema(0.1)": "exponential moving average v <- 0.9 v + 0.1 x (PyTorch's "
    "running statistics, from mean 0 and variance 1): mostly the last "
    "~10 batches, and still remembering its start after few batches",
}


# ----------------------------------------------------------------------------
# Data, model
# ----------------------------------------------------------------------------


def load_data(seed: int, fast: bool):
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        sys.exit("This example needs scikit-learn, for its digits data: "
                 "pip install scikit-learn (or pip install '.[examples]' in a "
                 "popstats checkout).")

    digits = load_digits()
    x = (digits.data / 16.0).astype(FLOATX)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, random_state=seed, stratify=y
    )
    if fast:
        x_train, y_train = x_train[:600], y_train[:600]
    return x_train, y_train, x_test, y_test


def init_params(n_in: int, n_hidden: int, rng: np.random.Generator) -> dict:
    def he(n_a, n_b):
        return rng.normal(scale=np.sqrt(2.0 / n_a), size=(n_a, n_b))

    values = {
        "W1": he(n_in, n_hidden),
        "gamma1": np.ones(n_hidden),
        "beta1": np.zeros(n_hidden),
        "W2": he(n_hidden, n_hidden),
        "gamma2": np.ones(n_hidden),
        "beta2": np.zeros(n_hidden),
        "W3": he(n_hidden, 10) / 2,
        "b3": np.zeros(10),
    }
    return {k: pytensor.shared(v.astype(FLOATX), name=k) for k, v in values.items()}


def batch_norm(a, gamma, beta, label):
    """Normalize ``a`` (batch, units) by its batch statistics, marked with
    role, group and count so that every popstats estimator applies."""
    n = a.shape[0]
    mean = popstats.bn_statistic(
        a.mean(axis=0), f"{label}.mean", role="mean", group=label, count=n
    )
    var = popstats.bn_statistic(
        a.var(axis=0), f"{label}.var", role="var", group=label, count=n
    )
    return gamma * (a - mean) / pt.sqrt(var + EPS) + beta


def build_model(p: dict):
    x = pt.matrix("x", dtype=FLOATX)
    h1 = pt.maximum(batch_norm(pt.dot(x, p["W1"]), p["gamma1"], p["beta1"], "bn1"), 0)
    h2 = pt.maximum(batch_norm(pt.dot(h1, p["W2"]), p["gamma2"], p["beta2"], "bn2"), 0)
    return x, pt.dot(h2, p["W3"]) + p["b3"]


def adam_updates(loss, params, lr, b1=0.9, b2=0.999, eps=1e-8):
    """Plain Adam (Kingma & Ba 2015), hand-written to stay dependency-free."""
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
        updates += [
            (m, m_new),
            (v, v_new),
            (param, param - scale * m_new / (pt.sqrt(v_new) + eps)),
        ]
    return updates


def exact_population(p: dict, x: np.ndarray) -> dict:
    """Exact population statistics of the training set ``x`` (NumPy).

    bn1: moments of x W1 over all of ``x``. bn2: moments of h1 W2 where h1 is
    layer 1 normalized with its exact population statistics.
    """
    a1 = x.astype(np.float64) @ p["W1"]
    m1, v1 = a1.mean(axis=0), a1.var(axis=0)
    h1 = np.maximum(p["gamma1"] * (a1 - m1) / np.sqrt(v1 + EPS) + p["beta1"], 0)
    a2 = h1 @ p["W2"]
    return {
        "bn1.mean": m1,
        "bn1.var": v1,
        "bn2.mean": a2.mean(axis=0),
        "bn2.var": a2.var(axis=0),
    }


def uneven_batches(n: int, low: int, high: int, rng: np.random.Generator):
    """One pass over ``n`` shuffled examples in batches of random sizes."""
    order = rng.permutation(n)
    out, start = [], 0
    while start < n:
        size = int(rng.integers(low, high + 1))
        out.append(order[start : start + size])
        start += size
    return out


# ----------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------


def format_table(rows: list[dict]) -> str:
    head = ["estimator"]
    for layer in LAYERS:
        head += [f"{layer} mean err", f"{layer} var rel err"]
    head.append("test acc")
    body = []
    for r in rows:
        line = [r["estimator"]]
        for layer in LAYERS:
            line += [
                f"{r[f'{layer}_mean_err']:.2e}",
                f"{r[f'{layer}_var_rel_err']:.2e}",
            ]
        line.append(f"{r['accuracy']:.4f}")
        body.append(line)
    widths = [max(len(line[k]) for line in [head, *body]) for k in range(len(head))]
    rule = "  ".join("-" * w for w in widths)
    lines = [
        rule,
        "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)),
        rule,
    ]
    lines += [
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True))
        for line in body
    ]
    lines.append(rule)
    return "\n".join(lines)


def print_wrapped(text: str) -> None:
    print(textwrap.fill(text, 79))


def write_outputs(directory: Path, rows: list[dict], summary: dict) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "feedforward_estimators.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with open(directory / "feedforward_estimators.json", "w") as f:
        json.dump({**summary, "rows": rows}, f, indent=2)


# ----------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fast", action="store_true", help="tiny setting (seconds)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--hidden",
        type=int,
        default=None,
        help="units per layer (default 64; 32 with --fast)",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="training epochs (default 10; 3 with --fast)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=64, help="training batch size"
    )
    parser.add_argument(
        "--lr",
        type=float,
        default=None,
        help="Adam step size (default 3e-3; 1e-2 with --fast)",
    )
    parser.add_argument(
        "--min-batch", type=int, default=4, help="smallest estimation batch (default 4)"
    )
    parser.add_argument(
        "--max-batch",
        type=int,
        default=128,
        help="largest estimation batch (default 128)",
    )
    parser.add_argument(
        "--mode",
        default="CVM",
        help="PyTensor compilation mode (default: CVM, the C backend, which "
        "compiles much sooner than Numba on a cold cache)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_OUTPUT,
        help=f"folder for the results table (default {DEFAULT_OUTPUT})",
    )
    args = parser.parse_args(argv)
    if args.hidden is None:
        args.hidden = 32 if args.fast else 64
    if args.lr is None:
        args.lr = 1e-2 if args.fast else 3e-3
    if args.epochs is None:
        args.epochs = 3 if args.fast else 10
    if not 1 <= args.min_batch <= args.max_batch:
        parser.error("need 1 <= --min-batch <= --max-batch")
    return args


def main(argv=None) -> dict:
    """Train, estimate with every estimator, compare; return the results."""
    args = parse_args(argv)
    t_start = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    x_train, y_train, x_test, y_test = load_data(args.seed, args.fast)
    print(
        f"digits: {len(x_train)} train / {len(x_test)} test, 64 pixels; MLP "
        f"64-{args.hidden}-{args.hidden}-10 with batch normalization (bn1, bn2)"
    )

    params = init_params(x_train.shape[1], args.hidden, rng)
    x, logits = build_model(params)
    y = pt.vector("y", dtype="int64")
    loss = -log_softmax(logits, axis=1)[pt.arange(y.shape[0]), y].mean()
    probs = softmax(logits, axis=1)
    t0 = time.perf_counter()
    train_fn = pytensor.function(
        [x, y],
        loss,
        updates=adam_updates(loss, list(params.values()), args.lr),
        mode=args.mode,
    )
    print(f"compiled the training function in {time.perf_counter() - t0:.1f}s")
    for epoch in range(1, args.epochs + 1):
        order = rng.permutation(len(x_train))
        losses = [
            train_fn(x_train[idx], y_train[idx])
            for idx in np.array_split(order, max(1, len(order) // args.batch_size))
        ]
        print(f"epoch {epoch}/{args.epochs}: mean training loss {np.mean(losses):.4f}")

    # -- the estimation batches: one pass, uneven sizes ------------------------
    batches = [
        {"x": x_train[idx]}
        for idx in uneven_batches(len(x_train), args.min_batch, args.max_batch, rng)
    ]
    sizes = [len(b["x"]) for b in batches]
    print(
        f"\nestimation: one pass over the {len(x_train)} training examples in "
        f"{len(batches)} batches of {min(sizes)} to {max(sizes)} examples"
    )

    p = {k: v.get_value() for k, v in params.items()}
    exact = exact_population(p, x_train)

    # One inference graph, compiled once; each estimator's values are bound
    # into it in turn (popstats.bind).
    t0 = time.perf_counter()
    all_stats = {}
    for name, spec in ESTIMATORS.items():
        all_stats[name] = popstats.estimate(
            [x], probs, batches, estimator=spec, mode=args.mode
        )
    probs_pop = popstats.rewrite(probs, all_stats["mean"])
    pop_fn = pytensor.function([x], probs_pop, mode=args.mode)
    print(
        f"estimated with {len(ESTIMATORS)} estimators, "
        f"{time.perf_counter() - t0:.1f}s with compilation"
    )

    def accuracy(batch_size=None):
        batch_size = batch_size or len(x_test)
        prob = np.concatenate(
            [
                pop_fn(x_test[s : s + batch_size])
                for s in range(0, len(x_test), batch_size)
            ]
        )
        return prob, float(np.mean(prob.argmax(axis=1) == y_test))

    rows, probabilities = [], {}
    for name, stats in all_stats.items():
        popstats.bind(probs_pop, stats)
        row = {"estimator": name}
        for layer in LAYERS:
            mean, var = stats[f"{layer}.mean"].value, stats[f"{layer}.var"].value
            row[f"{layer}_mean_err"] = float(
                np.abs(mean - exact[f"{layer}.mean"]).max()
            )
            row[f"{layer}_var_rel_err"] = float(
                np.abs(var / exact[f"{layer}.var"] - 1).max()
            )
        probabilities[name], row["accuracy"] = accuracy()
        rows.append(row)
    # The exact population statistics themselves, for reference.
    for key, shared in popstats.population_variables(probs_pop).items():
        shared.set_value(exact[key].astype(shared.dtype))
    probabilities["exact"], exact_acc = accuracy()
    _, exact_acc_1 = accuracy(batch_size=1)
    rows.append(
        {
            "estimator": "exact",
            **{
                f"{layer}_{k}": 0.0
                for layer in LAYERS
                for k in ("mean_err", "var_rel_err")
            },
            "accuracy": exact_acc,
        }
    )
    batch_fn = pytensor.function([x], probs, mode=args.mode)
    batch_acc = float(np.mean(batch_fn(x_test).argmax(axis=1) == y_test))

    print("\nWhat each estimator computes from the per-batch statistics:")
    for name, text in EXPLANATIONS.items():
        print(
            textwrap.fill(
                text, 79, initial_indent=f"  {name:10s}", subsequent_indent=" " * 12
            )
        )
    print()
    print_wrapped(
        "Errors against the exact population statistics of the training set "
        "(max over units; mean: absolute, var: relative). Exact for bn1: the "
        "moments of its inputs over the whole training set at once. Exact for "
        "bn2: the moments of its inputs when bn1 normalizes with its exact "
        "population statistics (as in the inference network). The estimators "
        "see bn2's inputs in the training network, where bn1 uses batch "
        "statistics, so none of them is exact for bn2."
    )
    print(format_table(rows))
    print_wrapped(
        f"Test accuracy with batch statistics over the whole test set "
        f"({len(x_test)} digits): {batch_acc:.4f}; with the exact population "
        f"statistics one digit at a time: {exact_acc_1:.4f}"
    )

    elapsed = time.perf_counter() - t_start
    summary = {
        "settings": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
        },
        "pytensor_version": pytensor.__version__,
        "batch_sizes": sizes,
        "batch_statistics_accuracy": batch_acc,
        "exact_accuracy_batch_size_1": exact_acc_1,
        "seconds": round(elapsed, 1),
    }
    write_outputs(args.output, rows, summary)
    print(f"\nresults written to {args.output} (feedforward_estimators.csv, .json)")
    print(f"total time {elapsed:.1f}s")
    return {
        "rows": rows,
        "exact": exact,
        "stats": {
            n: {k: s.value for k, s in st.items()} for n, st in all_stats.items()
        },
        "probabilities": probabilities,
        "params": p,
        "batches": [b["x"] for b in batches],
        "data": (x_train, y_train, x_test, y_test),
        "summary": summary,
        "output": args.output,
    }


if __name__ == "__main__":
    main()
