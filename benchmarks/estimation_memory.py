"""Peak memory of an estimation pass: 10 batches vs 10,000 batches.

popstats streams: per statistic it keeps one estimator state (a few arrays
per time step), whatever the number of batches. This script runs the same
estimation pass over 10 and over 10,000 batches of a recurrent
batch-normalized model (per-step statistics, variable sequence lengths) and
of a feed-forward one, for each estimator, and reports the peak of Python
and NumPy allocations during the pass (``tracemalloc``; the compiled
function is built before measuring) and the difference. Target: under 5 MB.
"""

from __future__ import annotations

import argparse
import tracemalloc

from _common import heading, np, popstats, pt, pytensor, table

ESTIMATORS = ("mean", "weighted", "pooled", "unbiased", "ema")


def recurrent_model(width: int):
    x = pt.tensor3("x")  # (time, batch, features)
    n = pt.cast(x.shape[1], "float64")

    def step(xt, h):
        m = popstats.bn_statistic(xt.mean(0), "x.mean", role="mean", group="x", count=n)
        v = popstats.bn_statistic(xt.var(0), "x.var", role="var", group="x", count=n)
        return pt.tanh((xt - m) / pt.sqrt(v + 1e-5) + h)

    h = pytensor.scan(
        step, sequences=[x], outputs_info=[pt.zeros_like(x[0])], return_updates=False
    )
    return [x], h, lambda rng, k: {"x": rng.normal(size=(5 + k % 7, 16, width))}


def feedforward_model(width: int, layers: int = 4):
    x = pt.matrix("x")
    h = x
    for i in range(layers):
        n = pt.cast(h.shape[0], "float64")
        m = popstats.bn_statistic(
            h.mean(0), f"l{i}.mean", role="mean", group=f"l{i}", count=n
        )
        v = popstats.bn_statistic(
            h.var(0), f"l{i}.var", role="var", group=f"l{i}", count=n
        )
        h = pt.tanh((h - m) / pt.sqrt(v + 1e-5))
    return [x], h, lambda rng, k: {"x": rng.normal(size=(32, width))}


def peak_bytes(run: popstats.Estimation, make, n_batches: int) -> int:
    rng = np.random.default_rng(0)
    batches = (make(rng, k) for k in range(n_batches))
    tracemalloc.start()
    tracemalloc.reset_peak()
    state = run.run(batches)
    run.finalize(state)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--batches",
        type=int,
        default=10_000,
        help="the larger number of batches (default 10000)",
    )
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--mode", default="CVM", help="PyTensor mode (default CVM)")
    parser.add_argument("--accumulate", default="host", choices=("host", "graph"),
                        help="where the pass adds up its batches (default host); "
                        "in JAX mode, 'graph' keeps the state in device arrays, "
                        "which tracemalloc does not see: their number is fixed")
    parser.add_argument(
        "--quick", action="store_true", help="1000 batches, 2 estimators"
    )
    args = parser.parse_args()
    many = 1000 if args.quick else args.batches
    estimators = ("mean", "pooled") if args.quick else ESTIMATORS
    print(heading("Peak memory of an estimation pass (tracemalloc)", args.mode))
    print(f"accumulate={args.accumulate!r}")
    rows = []
    for model_name, build in (
        ("recurrent", recurrent_model),
        ("feed-forward", feedforward_model),
    ):
        inputs, out, make = build(args.width)
        for name in estimators:
            run = popstats.Estimation(inputs, out, estimator=name, mode=args.mode,
                                      accumulate=args.accumulate)
            peak_bytes(run, make, 3)  # warm-up: first-call allocations
            small = peak_bytes(run, make, 10)
            large = peak_bytes(run, make, many)
            rows.append(
                [
                    model_name,
                    name,
                    f"{small / 2**20:.2f}",
                    f"{large / 2**20:.2f}",
                    f"{(large - small) / 2**20:+.3f}",
                ]
            )
    print(
        table(
            [
                "model",
                "estimator",
                "peak MB, 10 batches",
                f"peak MB, {many} batches",
                "difference MB",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
