"""Drift on a new domain, and its remedy: digits with a brightness/contrast
change and noise.

A batch-normalized MLP (64-64-64-10, two BN layers and a BN on the input
pixels) is trained on scikit-learn's 8x8 digits with batch statistics and
given population statistics (``popstats.estimate``). The new domain is the
held-out digits photographed worse: contrast halved, brightness raised,
Gaussian noise added (``x' = clip(0.5 x + 0.3 + N(0, 0.15), 0, 1)``).

The script prints

1. batch-size-1 accuracy on the original and the new domain with the
   original statistics;
2. ``popstats.drift`` of the new domain against them: the table, sorted by
   drift, and the first layer in the graph that moved;
3. the remedy (AdaBN, Li et al. 2016): the statistics re-estimated on
   *unlabeled* new-domain data (half of the held-out digits; the other half
   is scored) are a second statistic set; one inference graph selects the
   set per input (``rewrite(..., [stats, adapted], select=k)``), and the
   batch-size-1 accuracy of both domains, each with its own set.

Run::

    python examples/drift_digits.py          # full setting, a few seconds
    python examples/drift_digits.py --fast   # used by the tests

With ``--output DIR`` it writes ``drift.html`` (the drift report, needs
``popstats[plot]``) and ``drift.json`` (the numbers).
"""

from __future__ import annotations

import argparse
import json
import sys
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

EPS = 1e-5


def load(seed: int, fast: bool):
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        sys.exit("This example needs scikit-learn, for its digits data: "
                 "pip install scikit-learn (or pip install '.[examples]' in a "
                 "popstats checkout).")

    digits = load_digits()
    x = digits.data / 16.0
    x_train, x_test, y_train, y_test = train_test_split(
        x, digits.target, test_size=0.4, random_state=seed, stratify=digits.target)
    if fast:
        x_train, y_train = x_train[:500], y_train[:500]
    return x_train, y_train, x_test, y_test


def new_domain(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Lower contrast, higher brightness, sensor noise."""
    return np.clip(0.5 * x + 0.3 + rng.normal(0.0, 0.15, x.shape), 0.0, 1.0)


def batch_norm(a, label):
    n = a.shape[0]
    mean = popstats.bn_statistic(a.mean(0), f"{label}.mean", role="mean",
                                 group=label, count=n)
    var = popstats.bn_statistic(a.var(0), f"{label}.var", role="var", group=label,
                                count=n)
    return (a - mean) / pt.sqrt(var + EPS)


def build(rng: np.random.Generator, hidden: int):
    def weight(n_in, n_out, name):
        return pytensor.shared(rng.normal(0, np.sqrt(2 / n_in), (n_in, n_out)),
                               name=name)

    params = [weight(64, hidden, "w1"), weight(hidden, hidden, "w2"),
              weight(hidden, 10, "w3"), pytensor.shared(np.zeros(10), name="b3")]
    x = pt.matrix("x")
    h = batch_norm(x, "input")
    h = pt.maximum(batch_norm(h @ params[0], "bn1"), 0)
    h = pt.maximum(batch_norm(h @ params[1], "bn2"), 0)
    return x, h @ params[2] + params[3], params


def train(x, logits, params, x_train, y_train, epochs, rng, mode):
    y = pt.lvector("y")
    loss = -log_softmax(logits, axis=1)[pt.arange(y.shape[0]), y].mean()
    grads = pytensor.grad(loss, params)
    step = pytensor.function([x, y], loss, mode=mode, updates=[
        (p, p - 0.1 * g) for p, g in zip(params, grads, strict=True)])
    for _ in range(epochs):
        order = rng.permutation(len(x_train))
        for idx in np.array_split(order, len(order) // 32):
            step(x_train[idx], y_train[idx])


def batches(x: np.ndarray, size: int = 64) -> list[dict]:
    return [{"x": x[i:i + size]} for i in range(0, len(x), size)]


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="smaller, for tests")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mode", default="FAST_COMPILE",
                        help="PyTensor mode (default FAST_COMPILE: the network is "
                        "tiny, so compiling is the cost to save)")
    parser.add_argument("--output", type=Path, default=None)
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    rng = np.random.default_rng(args.seed)
    x_train, y_train, x_test, y_test = load(args.seed, args.fast)
    x, logits, params = build(rng, 32 if args.fast else 64)
    train(x, logits, params, x_train, y_train, 8 if args.fast else 30, rng, args.mode)
    probs = softmax(logits, axis=1)

    stats = popstats.estimate([x], probs, batches(x_train), mode=args.mode)
    shifted = new_domain(x_test, np.random.default_rng(args.seed + 1))
    half = len(x_test) // 2
    adapt, score = slice(0, half), slice(half, None)  # unlabeled / scored

    # drift of the new domain (the unlabeled half) against the statistics
    moved = popstats.drift(stats, [x], probs, batches(shifted[adapt]), eps=EPS,
                           mode=args.mode)
    first = moved.first_moved(0.05)
    print(moved)
    print(f"\nfirst layer in the graph that moved (mean drift > 0.05): "
          f"{first.name if first else 'none'}")

    # one inference graph; the statistic set is chosen per input
    k = pt.iscalar("k")
    infer = pytensor.function(
        [x, k], popstats.rewrite(probs, [stats, moved.statistics], select=k),
        mode=args.mode)

    def accuracy(images, labels, which):
        hits = [infer(image[None], which).argmax() == label
                for image, label in zip(images, labels, strict=True)]
        return float(np.mean(hits))  # batch size 1

    table = {
        "original domain, original statistics": accuracy(
            x_test[score], y_test[score], 0),
        "new domain, original statistics": accuracy(
            shifted[score], y_test[score], 0),
        "new domain, re-estimated statistics": accuracy(
            shifted[score], y_test[score], 1),
    }
    width = max(map(len, table))
    print(f"\nbatch-size-1 accuracy on {len(y_test) - half} held-out digits "
          f"(statistics re-estimated on the other {half}, unlabeled)")
    for row, value in table.items():
        print(f"  {row:<{width}}  {value:.3f}")
    result = {"accuracy": table, "drift": moved.to_dicts(),
              "first_moved": first.name if first else None}
    if args.output is not None:
        args.output.mkdir(parents=True, exist_ok=True)
        (args.output / "drift.json").write_text(json.dumps(result, indent=1))
        try:
            moved.report(args.output / "drift.html")
        except popstats.PopstatsError as exc:  # matplotlib not installed
            print(f"no drift.html: {exc}")
    return result


if __name__ == "__main__":
    main()
