"""Marking a statistic must cost nothing: compiled graphs with and without marks.

The same model is built twice, once with every batch statistic wrapped in
``popstats.bn_statistic`` and once identically but without the calls. Both
are compiled with ``pytensor.function`` in each mode, and compared on

* run time per call (alternating calls, best of k rounds);
* the compiled graphs: number of nodes, the same sorted list of ops (Scan
  inner graphs included), the number of fused ``Composite`` elemwise ops
  (so a marker blocking fusion would show), and markers left in the graph.

Models: a feed-forward BN MLP (elemwise fusion matters there) and a
recurrent BN model in a Scan. Target (never asserted): ratio 1.00x within
noise, identical compiled graphs.

Usage::

    python benchmarks/marker_cost.py             # default, CVM, JAX (if installed)
    python benchmarks/marker_cost.py --quick
    python benchmarks/marker_cost.py --modes CVM --calls 500
"""

from __future__ import annotations

import argparse
import time

import _common as C
import pytensor


def build(model: str, args, mark: bool):
    if model == "mlp":
        net = C.MLP(args.mlp_layers, args.mlp_width)
        x = net.input()
        batch = net.batches(1, args.batch_size)[0]
        desc = (f"MLP {args.mlp_layers} layers x {args.mlp_width}, batch "
                f"{args.batch_size}")
    else:
        net = C.RNN(args.rnn_in, args.rnn_hidden)
        x = net.input()
        batch = net.batches(1, args.rnn_steps, args.batch_size)[0]
        desc = (f"RNN {args.rnn_in}->{args.rnn_hidden}, {args.rnn_steps} steps, "
                f"batch {args.batch_size}")
    return x, net.build(x, mark=mark), batch, desc


def measure(model: str, args, mode) -> dict:
    x_m, y_m, batch, desc = build(model, args, mark=True)
    x_u, y_u, _, _ = build(model, args, mark=False)
    f_m = pytensor.function([x_m], y_m, mode=mode)
    f_u = pytensor.function([x_u], y_u, mode=mode)
    value = batch["x"]
    # warm-up (lazy Scan compilation, JIT) and a check that both agree
    out_m, out_u = f_m(value), f_u(value)
    same_values = bool(abs(out_m - out_u).max() == 0)

    def loop(fn):
        return lambda: [fn(value) for _ in range(args.calls)]

    times = C.interleaved([loop(f_m), loop(f_u)], args.repeats)
    sig_m = C.op_signature(f_m.maker.fgraph)
    sig_u = C.op_signature(f_u.maker.fgraph)
    return {
        "desc": desc,
        "marked": C.best(times[0]) / args.calls,
        "plain": C.best(times[1]) / args.calls,
        "median": (C.median(times[0]), C.median(times[1])),
        "nodes": (len(f_m.maker.fgraph.apply_nodes), len(f_u.maker.fgraph.apply_nodes)),
        "ops": (len(sig_m), len(sig_u)),
        "same_ops": sig_m == sig_u,
        "fused": (C.count_fused(sig_m), C.count_fused(sig_u)),
        "markers": C.count_markers(f_m.maker.fgraph),
        "same_values": same_values,
        "diff": sorted(set(sig_m) ^ set(sig_u))[:6],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="mlp,rnn")
    parser.add_argument("--modes", default="default,CVM,JAX", type=C.parse_modes)
    parser.add_argument("--calls", default=200, type=int, help="calls per round")
    parser.add_argument("--repeats", default=7, type=int, help="best of k rounds")
    parser.add_argument("--batch-size", default=64, type=int)
    parser.add_argument("--mlp-layers", default=10, type=int)
    parser.add_argument("--mlp-width", default=64, type=int)
    parser.add_argument("--rnn-in", default=16, type=int)
    parser.add_argument("--rnn-hidden", default=32, type=int)
    parser.add_argument("--rnn-steps", default=20, type=int)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, k=3")
    C.add_clock_argument(parser, "cpu")
    args = parser.parse_args()
    C.set_clock(args.clock)
    if args.quick:
        args.calls, args.repeats, args.batch_size = 20, 3, 16
        args.mlp_layers, args.mlp_width = 3, 16
        args.rnn_in, args.rnn_hidden, args.rnn_steps = 4, 8, 5

    started = time.perf_counter()
    for mode in args.modes:
        rows, diffs = [], []
        for model in args.models.split(","):
            r = measure(model.strip(), args, mode)
            rows.append([
                r["desc"],
                C.fmt_s(r["marked"]),
                C.fmt_s(r["plain"]),
                C.fmt_ratio(r["marked"] / r["plain"]),
                C.fmt_ratio(r["median"][0] / r["median"][1]),
                f"{r['nodes'][0]} / {r['nodes'][1]}",
                f"{r['ops'][0]} / {r['ops'][1]}",
                f"{r['fused'][0]} / {r['fused'][1]}",
                "yes" if r["same_ops"] else "NO",
                r["markers"],
                "yes" if r["same_values"] else "NO",
            ])
            if not r["same_ops"]:
                diffs.append((r["desc"], r["diff"]))
        print(C.heading(
            f"marked vs unmarked graph, run time per call ({args.calls} calls x "
            f"best of {args.repeats})",
            mode,
        ))
        print(C.table(
            [
                "model", "marked", "unmarked", "ratio (best)", "ratio (median)",
                "outer nodes marked / unmarked", "ops incl. Scan inner",
                "fused Composite ops", "same compiled ops", "markers left",
                "same outputs",
            ],
            rows,
        ))
        for desc, diff in diffs:
            print(f"\nops differing for {desc} (first 6): {diff}")
        print()
    print("Target: ratio 1.00x within noise; same compiled ops; no marker left.")
    print(f"\nTotal wall time of this script: {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    C.run_with_big_stack(main)
