"""Compile time of popstats' inference graph vs the same network by hand.

A batch-normalized MLP (width 8, 2 statistics per layer). Two graphs of the
same network for inference:

* ``popstats``: the marked training graph passed through
  ``popstats.rewrite`` (statistics become shared variables);
* ``by hand``: the network written directly with its statistics in shared
  variables (same static shapes as popstats gives them).

Both are compiled with ``pytensor.function([x], y, mode=...)``. One untimed
warm-up compile of each fills PyTensor's on-disk caches (C modules for CVM,
Numba's cache for the default mode) so neither side pays a cold cache; then
compiles alternate, best of k. Target (never asserted): popstats / by hand
<= 1.1x. The time of ``rewrite`` itself is shown apart (see
rewrite_scaling.py). 1000 layers are not run: PyTensor itself needs minutes
to compile that.

Usage::

    python benchmarks/compile_time.py                 # 100,300 layers; default, CVM
    python benchmarks/compile_time.py --quick         # 10,30 layers, k=2
    python benchmarks/compile_time.py --modes CVM --layers 100 --repeats 5
"""

from __future__ import annotations

import argparse
import time

import _common as C
import pytensor

import popstats


def measure(n_layers: int, width: int, mode, repeats: int) -> dict:
    mlp = C.MLP(n_layers, width)
    x = mlp.input()
    marked = mlp.build(x)
    stats = C.fake_stats([marked], width)
    t_rewrite, inference = C.time_call(lambda: popstats.rewrite(marked, stats))

    x_hand = mlp.input()
    by_hand = mlp.build(x_hand, stats=mlp.hand_written_stats())

    def compile_popstats():
        return pytensor.function([x], inference, mode=mode)

    def compile_by_hand():
        return pytensor.function([x_hand], by_hand, mode=mode)

    cold_p, f_p = C.time_call(compile_popstats)
    cold_h, f_h = C.time_call(compile_by_hand)
    times = C.interleaved([compile_popstats, compile_by_hand], repeats)
    sig_p = C.op_signature(f_p.maker.fgraph)
    sig_h = C.op_signature(f_h.maker.fgraph)
    return {
        "rewrite": t_rewrite,
        "cold": (cold_p, cold_h),
        "popstats": C.best(times[0]),
        "by_hand": C.best(times[1]),
        "median": (C.median(times[0]), C.median(times[1])),
        "all": times,
        "nodes": (len(sig_p), len(sig_h)),
        "same_ops": sig_p == sig_h,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", default="100,300", type=C.parse_ints)
    parser.add_argument("--width", default=8, type=int)
    parser.add_argument("--modes", default="default,CVM", type=C.parse_modes)
    parser.add_argument("--repeats", default=3, type=int, help="best of k")
    parser.add_argument("--quick", action="store_true", help="10,30 layers, k=2")
    C.add_clock_argument(parser, "cpu")
    args = parser.parse_args()
    C.set_clock(args.clock)
    if args.quick:
        args.layers, args.repeats = [10, 30], 2

    started = time.perf_counter()
    for mode in args.modes:
        mode_started = time.perf_counter()
        rows = []
        for n in args.layers:
            r = measure(n, args.width, mode, args.repeats)
            rows.append([
                n,
                C.fmt_s(r["popstats"]),
                C.fmt_s(r["by_hand"]),
                C.fmt_ratio(r["popstats"] / r["by_hand"]),
                C.fmt_ratio(r["median"][0] / r["median"][1]),
                f"{C.fmt_s(r['cold'][0])} / {C.fmt_s(r['cold'][1])}",
                C.fmt_s(r["rewrite"]),
                f"{r['nodes'][0]} / {r['nodes'][1]}",
                "yes" if r["same_ops"] else "NO",
                " / ".join(
                    ", ".join(f"{t:.2f}" for t in ts) for ts in r["all"]
                ),
            ])
        print(C.heading(
            f"compile time, inference graph: popstats.rewrite vs written by hand "
            f"(BN MLP width {args.width}; best of {args.repeats} after a warm-up "
            f"compile of each)",
            mode,
        ))
        print(C.table(
            [
                "layers", "popstats", "by hand", "ratio (best)", "ratio (median)",
                "first compile popstats / by hand", "rewrite() itself",
                "compiled nodes popstats / by hand", "same compiled ops",
                "every timed compile, s (popstats / by hand)",
            ],
            rows,
        ))
        print(f"\n(mode {C.mode_label(mode)} took "
              f"{time.perf_counter() - mode_started:.0f} s)\n")
    print("Target: popstats / by hand <= 1.1x.")
    print(f"\nTotal wall time of this script: {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    C.run_with_big_stack(main)
