"""Cost of an estimation pass vs a plain forward pass over the same batches.

``popstats.estimate(inputs, outputs, batches)`` runs the estimation graph
(every statistic as an output) over N batches and averages. The reference
is the training graph compiled with ``pytensor.function`` and called on the
same N batches (same dicts, ``fn(**batch)``).

Compile time is excluded from both and reported apart: the batches are
handed to ``estimate`` by a generator that notes when it is asked for the
second batch, i.e. once ``estimate`` has exported and compiled its graph and
run the first batch (Numba compiles on the first call). What follows --
running batches 2..N, accumulating them, finalizing -- is timed as the
estimation pass and compared with batches 2..N through the forward function
(already called once). The compile column is export + compile + first
batch for ``estimate`` (median over the repeats; later calls may hit
PyTensor's caches) and compile + first call for the forward function.

Two models:

* ``mlp``: a feed-forward BN MLP;
* ``rnn``: a recurrent BN model in a Scan (4 statistics per time step).

Target (never asserted): estimation / forward <= 1.05x per batch.

Usage::

    python benchmarks/estimation_cost.py            # full sizes, default + CVM
    python benchmarks/estimation_cost.py --quick    # tiny sizes, seconds
    python benchmarks/estimation_cost.py --modes default --batches 100
    python benchmarks/estimation_cost.py --accumulate host,graph   # where to add up
"""

from __future__ import annotations

import argparse
import time

import _common as C
import pytensor

import popstats


class _Stamped:
    """Iterable over ``batches`` noting when the second batch is asked for.

    ``estimate`` asks for the second batch once it has exported and compiled
    its graph and run the first batch (whose call may still compile: Numba
    JIT-compiles on the first call). From then on it runs batches 2..N,
    accumulates them and finalizes: the estimation pass proper.
    """

    def __init__(self, batches):
        self.batches = batches
        self.second = None

    def __iter__(self):
        for i, batch in enumerate(self.batches):
            if i == 1:
                self.second = C.now()
            yield batch


def run_estimate(x, out, batches, mode, accumulate="host"):
    """(export + compile + first batch, batches 2..N) of one estimate call."""
    stamped = _Stamped(batches)
    t0 = C.now()
    popstats.estimate([x], out, stamped, mode=mode, accumulate=accumulate)
    t1 = C.now()
    return stamped.second - t0, t1 - stamped.second


def run_forward(fn, batches):
    """Batches 2..N through the compiled forward function."""
    t0 = C.now()
    for batch in batches[1:]:
        fn(**batch)
    return C.now() - t0


def measure(model: str, args, mode, accumulate: str = "host") -> dict:
    if model == "mlp":
        net = C.MLP(args.mlp_layers, args.mlp_width)
        x = net.input()
        out = net.build(x)
        batches = net.batches(args.batches, args.batch_size)
        desc = (f"MLP {args.mlp_layers} layers x {args.mlp_width}, batch "
                f"{args.batch_size}")
    else:
        net = C.RNN(args.rnn_in, args.rnn_hidden)
        x = net.input()
        out = net.build(x)
        batches = net.batches(args.batches, args.rnn_steps, args.batch_size)
        desc = (f"RNN {args.rnn_in}->{args.rnn_hidden}, {args.rnn_steps} steps, "
                f"batch {args.batch_size}")
    n_stats = len(popstats.export(out).sites)

    t0 = C.now()
    fn = pytensor.function([x], out, mode=mode)
    fn(**batches[0])  # the first call may compile (Numba JIT)
    compile_forward = C.now() - t0

    est_times, fwd_times, compile_times = [], [], []
    for _ in range(args.repeats):
        c, t = C.time_call(
            lambda: run_estimate(x, out, batches, mode, accumulate))[1]
        compile_times.append(c)
        est_times.append(t)
        fwd_times.append(C.time_call(lambda: run_forward(fn, batches))[1])
    n = len(batches) - 1
    return {
        "desc": desc,
        "n_stats": n_stats,
        "estimate": C.best(est_times) / n,
        "forward": C.best(fwd_times) / n,
        "median": (C.median(est_times) / n, C.median(fwd_times) / n),
        "compile": (C.median(compile_times), compile_forward),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="mlp,rnn")
    parser.add_argument("--modes", default="default,CVM", type=C.parse_modes)
    parser.add_argument("--batches", default=51, type=int, help="N batches")
    parser.add_argument("--batch-size", default=128, type=int)
    parser.add_argument("--mlp-layers", default=10, type=int)
    parser.add_argument("--mlp-width", default=256, type=int)
    parser.add_argument("--rnn-in", default=32, type=int)
    parser.add_argument("--rnn-hidden", default=128, type=int)
    parser.add_argument("--rnn-steps", default=50, type=int)
    parser.add_argument("--repeats", default=5, type=int, help="best of k")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, k=2")
    parser.add_argument("--accumulate", default="host",
                        help="comma list of estimate(accumulate=...): host, graph")
    C.add_clock_argument(parser, "cpu")
    args = parser.parse_args()
    C.set_clock(args.clock)
    if args.quick:
        args.batches, args.batch_size, args.repeats = 11, 16, 2
        args.mlp_layers, args.mlp_width = 3, 16
        args.rnn_in, args.rnn_hidden, args.rnn_steps = 4, 8, 5

    started = time.perf_counter()
    for mode in args.modes:
        rows = []
        for model in args.models.split(","):
            for accumulate in args.accumulate.split(","):
                r = measure(model.strip(), args, mode, accumulate.strip())
                rows.append([
                    r["desc"],
                    accumulate.strip(),
                    r["n_stats"],
                    C.fmt_s(r["estimate"]),
                    C.fmt_s(r["forward"]),
                    C.fmt_ratio(r["estimate"] / r["forward"]),
                    C.fmt_ratio(r["median"][0] / r["median"][1]),
                    f"{C.fmt_s(r['compile'][0])} / {C.fmt_s(r['compile'][1])}",
                ])
        print(C.heading(
            f"estimation pass vs plain forward pass, per batch (batches 2..N of "
            f"N={args.batches}, best of {args.repeats}; compile excluded)",
            mode,
        ))
        print(C.table(
            [
                "model", "accumulate", "statistics", "estimate / batch",
                "forward / batch",
                "ratio (best)", "ratio (median)",
                "compile + first batch: estimate / forward",
            ],
            rows,
        ))
        print()
    print("Target: estimate / forward <= 1.05x per batch.")
    print(f"\nTotal wall time of this script: {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    C.run_with_big_stack(main)
