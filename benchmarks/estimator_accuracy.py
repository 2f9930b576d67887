"""How close each estimator gets to the exact population statistics.

A fixed dataset (200,000 rows, 16 features, some of them skewed) stands for
the training data; its exact mean and variance (float64, all rows at once)
are the targets. Batches of random sizes (8 to 64 rows, so that weighting
matters) are drawn from a shuffled order without replacement, a
batch-normalization layer marks mean and variance (with role, group and
count), and each estimator runs over the first K batches. The table gives
the error against the exact values, averaged over features and repetitions:

* mean: mean |estimate - exact| / exact standard deviation;
* variance: mean |estimate / exact - 1|.

Read it to choose an estimator and how many batches to run: ``pooled`` is
the exact moment of the data seen, ``mean`` (the original tool's) and
``unbiased`` average per-batch values (biased variance for small batches,
corrected by ``unbiased``), and ``ema`` forgets old batches.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _common import heading, np, popstats, pt, rst_table, table, versions

ESTIMATORS = (
    "mean",
    "weighted",
    "pooled",
    "unbiased",
    popstats.Estimator("ema", momentum=0.1),
    popstats.Estimator("ema", momentum=0.01),
)


def dataset(rows: int, features: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(rows, features))
    scale = np.linspace(0.5, 3.0, features)
    data = 2.0 + z * scale
    data[:, ::4] = np.exp(0.5 * z[:, ::4])  # skewed (log-normal) features
    return data


def model():
    x = pt.matrix("x")
    n = x.shape[0]
    mean = popstats.bn_statistic(x.mean(0), "mean", role="mean", group="bn", count=n)
    var = popstats.bn_statistic(x.var(0), "var", role="var", group="bn", count=n)
    return x, (x - mean) / pt.sqrt(var + 1e-5)


def batches(data: np.ndarray, k: int, rng: np.random.Generator):
    order = rng.permutation(len(data))
    start = 0
    for _ in range(k):
        size = int(rng.integers(8, 65))
        yield {"x": data[order[start : start + size]]}
        start += size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--counts",
        default="1,3,10,30,100,300,1000",
        help="numbers of batches, comma-separated",
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--mode", default="CVM")
    parser.add_argument("--quick", action="store_true", help="few counts, 2 repeats")
    parser.add_argument(
        "--rst",
        type=Path,
        default=None,
        metavar="FILE",
        help="also write the tables as reStructuredText to FILE (the docs "
        "include docs/estimator-accuracy.txt, written this way)",
    )
    args = parser.parse_args()
    counts = [1, 10, 100] if args.quick else [int(c) for c in args.counts.split(",")]
    repeats = 2 if args.quick else args.repeats
    data = dataset(200_000, 16, seed=0)
    exact_mean, exact_var = data.mean(axis=0), data.var(axis=0)
    x, y = model()
    names = [e if isinstance(e, str) else f"ema({e.momentum})" for e in ESTIMATORS]
    runs = [
        popstats.Estimation([x], y, estimator=e, mode=args.mode) for e in ESTIMATORS
    ]
    mean_err = np.zeros((len(counts), len(runs)))
    var_err = np.zeros((len(counts), len(runs)))
    for r in range(repeats):
        for i, k in enumerate(counts):
            for j, run in enumerate(runs):
                rng = np.random.default_rng(1000 * r + k)  # same batches for all
                stats = run.finalize(run.run(batches(data, k, rng)))
                mean_err[i, j] += np.mean(
                    np.abs(stats["mean"].value - exact_mean) / np.sqrt(exact_var)
                )
                var_err[i, j] += np.mean(np.abs(stats["var"].value / exact_var - 1))
    mean_err /= repeats
    var_err /= repeats
    setting = f"{repeats} repetitions; batches of 8 to 64 rows (about 36 on average)"
    print(heading("Estimator error against the exact population", args.mode))
    print(f"{setting}\n")
    rst = [
        ".. Written by: python benchmarks/estimator_accuracy.py --rst "
        "docs/estimator-accuracy.txt",
        f"   ({versions()}; {setting}).",
        "",
    ]
    for title, err in (
        ("mean: |error| / std", mean_err),
        ("variance: |relative error|", var_err),
    ):
        rows = [[k, *(f"{e:.4f}" for e in err[i])] for i, k in enumerate(counts)]
        print(f"**{title}**\n")
        print(table(["batches", *names], rows))
        print()
        rst += [f"**{title}**", "", rst_table(["batches", *names], rows), ""]
    if args.rst is not None:
        args.rst.write_text("\n".join(rst), encoding="utf-8")
        print(f"wrote {args.rst}")


if __name__ == "__main__":
    main()
