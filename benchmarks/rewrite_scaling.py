"""How popstats.rewrite and popstats.export scale with depth.

A batch-normalized MLP of width 8 with 2 marked statistics per layer (mean
and variance, via popstats.bn_statistic). For each depth:

* ``rewrite``: ``popstats.rewrite(outputs, stats)``;
* ``clone``: one plain clone of the same graph,
  ``pytensor.graph.basic.clone([x], outputs, copy_inputs=False)``;
* ``clone_replace``: ``pytensor.graph.replace.clone_replace(outputs)`` with
  no replacements (PyTensor's own route for replacing in a graph);
* ``export``: ``popstats.export(outputs)``.

Targets (from the issue; never asserted): rewrite/clone <= 1.5x at 1000
layers, rewrite growth 1000 vs 100 layers <= 12x.

``stats`` is built without estimation (``_common.fake_stats``): a
``PopulationStatistics`` of zeros (means) and ones (variances), one per site
of ``popstats.export``.

Usage::

    python benchmarks/rewrite_scaling.py            # 100,300,1000 layers
    python benchmarks/rewrite_scaling.py --quick    # a few seconds
    python benchmarks/rewrite_scaling.py --layers 100,1000 --repeats 3
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

import _common as C
from pytensor.graph.basic import clone
from pytensor.graph.replace import clone_replace

import popstats


def measure(n_layers: int, width: int, repeats: int) -> dict:
    mlp = C.MLP(n_layers, width)
    x = mlp.input()
    out = [mlp.build(x)]
    t_build = time.perf_counter()
    stats = C.fake_stats(out)
    t_build = time.perf_counter() - t_build
    assert len(stats) == 2 * n_layers  # a benchmark sanity check, not a test

    fns = [
        lambda: popstats.rewrite(out, stats),
        lambda: clone([x], out, copy_inputs=False),
        lambda: clone_replace(out),
        lambda: popstats.export(out),
    ]
    # one warm-up round (first calls pay imports and caches)
    for fn in fns:
        fn()
    times = C.interleaved(fns, repeats)
    names = ["rewrite", "clone", "clone_replace", "export"]
    result = {name: C.best(ts) for name, ts in zip(names, times, strict=True)}
    result["median"] = {
        name: C.median(ts) for name, ts in zip(names, times, strict=True)
    }
    result["stats_setup"] = t_build
    result["graph"] = (x, out, stats)
    return result


def profile(x, out, stats, what: str, top: int) -> None:
    prof = cProfile.Profile()
    prof.enable()
    if what == "rewrite":
        popstats.rewrite(out, stats)
    else:
        popstats.export(out)
    prof.disable()
    ps = pstats.Stats(prof)
    ps.sort_stats("cumulative").print_stats(top)
    ps.sort_stats("tottime").print_stats(top)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", default="100,300,1000", type=C.parse_ints)
    parser.add_argument("--width", default=8, type=int)
    parser.add_argument("--repeats", default=5, type=int, help="best of k")
    parser.add_argument("--quick", action="store_true", help="10,30,100 layers, k=3")
    parser.add_argument(
        "--profile",
        choices=["rewrite", "export"],
        help="also cProfile one call at the largest depth",
    )
    parser.add_argument("--top", default=25, type=int, help="rows of the profile")
    C.add_clock_argument(parser, "cpu")
    args = parser.parse_args()
    C.set_clock(args.clock)
    if args.quick:
        args.layers, args.repeats = [10, 30, 100], 3

    started = time.perf_counter()
    results = {}
    for n in args.layers:
        results[n] = measure(n, args.width, args.repeats)

    print(C.heading(
        f"rewrite / export vs a plain clone, BN MLP width {args.width}, "
        f"2 statistics per layer (best of {args.repeats}; graph construction "
        f"only, no mode involved)"
    ))
    rows = []
    for n, r in results.items():
        rows.append([
            n,
            2 * n,
            C.fmt_s(r["rewrite"]),
            C.fmt_s(r["clone"]),
            C.fmt_s(r["clone_replace"]),
            C.fmt_ratio(r["rewrite"] / r["clone"]),
            C.fmt_ratio(r["rewrite"] / r["clone_replace"]),
            C.fmt_s(r["export"]),
            C.fmt_ratio(r["export"] / r["clone"]),
        ])
    print(C.table(
        [
            "layers", "statistics", "rewrite", "clone", "clone_replace",
            "rewrite/clone", "rewrite/clone_replace", "export", "export/clone",
        ],
        rows,
    ))
    print()
    lo, hi = min(results), max(results)
    if hi > lo:
        print(f"Growth {hi} vs {lo} layers ({hi / lo:.0f}x the layers; "
              f"linear would be {hi / lo:.0f}x):\n")
        growth = {k: results[hi][k] / results[lo][k]
                  for k in ("rewrite", "clone", "clone_replace", "export")}
        print(C.table(
            ["", "rewrite", "clone", "clone_replace", "export",
             "rewrite growth / clone growth"],
            [[
                f"{hi}/{lo} layers",
                *(C.fmt_ratio(g) for g in growth.values()),
                C.fmt_ratio(growth["rewrite"] / growth["clone"]),
            ]],
        ))
        print("\n(The last column divides out what the machine does to both at "
              "each size -- caches, clock speed, load -- and is the steadier "
              "measure of popstats' own scaling.)")
        print()
    big = results[hi]
    print(
        f"Targets: rewrite/clone at {hi} layers = "
        f"{big['rewrite'] / big['clone']:.2f}x (target <= 1.5x)"
        + (
            f"; rewrite growth {hi} vs {lo} = "
            f"{big['rewrite'] / results[lo]['rewrite']:.1f}x (target <= 12x "
            f"for 1000 vs 100)"
            if hi > lo
            else ""
        )
    )
    print(f"\nTotal wall time of this script: {time.perf_counter() - started:.1f} s")
    if args.profile:
        print(f"\ncProfile of one {args.profile} at {hi} layers:\n")
        profile(*big["graph"], args.profile, args.top)


if __name__ == "__main__":
    C.run_with_big_stack(main)
