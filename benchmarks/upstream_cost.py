"""Cost of ``upstream="population"`` vs today's single pass (issue 22).

``popstats.estimate(..., upstream="population")`` estimates every statistic
on the inference graph by passes over the same batches until the values are
a fixed point (``docs/upstream.rst``): pass 0 is today's pass on the
training graph, every later one runs the inference graph of the values
before it. Its cost is the number of passes, plus compiling a second
function (the inference graph with every statistic as an output).

Each row times whole ``estimate`` calls, export and compile included, the
two options interleaved in one run (best and median of ``--repeats``):

* ``mlp``: the deep BN MLP of ``examples/upstream_digits.py`` sizes (width
  64 on 64 inputs, batches of 4, 359 batches: the digits' training set) at
  several depths (``--depths``); a feed-forward net of L batch norms takes
  L + 1 passes;
* ``lstm``: the BN-LSTM of the main job (``examples/bn_lstm_digits.py``,
  its model imported: 100 units, 8 inputs, 12 steps with per-step
  statistics, batches of 64, 22 batches), random weights and inputs.

Columns: the passes ``upstream="population"`` took; for each option the
time of the whole call and of its passes alone (from asking for the first
batch of a pass to its last: running the batches and adding them up, not
exporting and compiling); the ratios of whole calls (best, median), of the
passes alone, and the passes' ratio per pass (population passes time /
(passes x batch pass time): what one pass over the inference graph costs
against one over the training graph). Timed in CPU time by default
(``--clock wall``), one thread per library.

Usage::

    python benchmarks/upstream_cost.py            # full sizes, default + CVM
    python benchmarks/upstream_cost.py --quick    # tiny sizes, seconds
"""

from __future__ import annotations

import argparse
import importlib.util
import time

import _common as C
import numpy as np

import popstats


def _bn_lstm():
    """examples/bn_lstm_digits.py as a module (its model)."""
    path = C.ROOT / "examples" / "bn_lstm_digits.py"
    spec = importlib.util.spec_from_file_location("bn_lstm_digits", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def mlp_case(depth: int, args):
    net = C.MLP(depth, args.mlp_width, n_in=args.mlp_in)
    x = net.input()
    out = net.build(x)
    batches = net.batches(args.mlp_batches, args.mlp_batch)
    desc = (f"MLP {depth} x {args.mlp_width}, batch {args.mlp_batch}, "
            f"{args.mlp_batches} batches")
    return desc, x, out, batches


def lstm_case(args):
    module = _bn_lstm()
    rng = np.random.default_rng(0)
    params = module.init_params(8, args.lstm_hidden, rng)
    x, logits = module.build_model(params, args.lstm_hidden)
    batches = [{"x": rng.uniform(0, 1, (args.lstm_steps, args.lstm_batch, 8))
                .astype(C.FLOAT)} for _ in range(args.lstm_batches)]
    desc = (f"BN-LSTM {args.lstm_hidden} units, {args.lstm_steps} steps, batch "
            f"{args.lstm_batch}, {args.lstm_batches} batches")
    return desc, x, logits, batches


class _Timed:
    """The batches, noting how long each pass over them ran: from asking for
    the first batch to the end (the batches' runs, not the export and
    compile before them)."""

    def __init__(self, batches):
        self.batches = batches
        self.running = 0.0

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        t0 = C.now()
        yield from self.batches
        self.running += C.now() - t0


def measure(case, mode, repeats: int) -> list[object]:
    desc, x, out, batches = case
    n_stats = len(popstats.export(out).sites)
    running = {"batch": [], "population": []}

    def run(upstream):
        def call():
            timed = _Timed(batches)
            stats = popstats.estimate([x], out, timed, upstream=upstream,
                                      mode=mode, progress=False)
            running[upstream].append(timed.running)
            return stats
        return call

    # once each untimed: PyTensor's compilation caches warm for both
    run("batch")()
    passes = run("population")().fixed_point.passes
    for times in running.values():
        times.clear()
    t_batch, t_pop = C.interleaved([run("batch"), run("population")], repeats)
    r_batch, r_pop = C.best(running["batch"]), C.best(running["population"])
    return [desc, n_stats, passes,
            f"{C.fmt_s(C.best(t_batch))} / {C.fmt_s(r_batch)}",
            f"{C.fmt_s(C.best(t_pop))} / {C.fmt_s(r_pop)}",
            C.fmt_ratio(C.best(t_pop) / C.best(t_batch)),
            C.fmt_ratio(C.median(t_pop) / C.median(t_batch)),
            C.fmt_ratio(r_pop / r_batch),
            C.fmt_ratio(r_pop / r_batch / passes)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="mlp,lstm")
    parser.add_argument("--modes", default="default,CVM", type=C.parse_modes)
    parser.add_argument("--depths", default="3,6,12,24", type=C.parse_ints)
    parser.add_argument("--mlp-width", default=64, type=int)
    parser.add_argument("--mlp-in", default=64, type=int)
    parser.add_argument("--mlp-batch", default=4, type=int)
    parser.add_argument("--mlp-batches", default=359, type=int)
    parser.add_argument("--lstm-hidden", default=100, type=int)
    parser.add_argument("--lstm-steps", default=12, type=int)
    parser.add_argument("--lstm-batch", default=64, type=int)
    parser.add_argument("--lstm-batches", default=22, type=int)
    parser.add_argument("--repeats", default=3, type=int, help="best of k")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, k=1")
    C.add_clock_argument(parser, "cpu")
    args = parser.parse_args()
    C.set_clock(args.clock)
    if args.quick:
        args.depths, args.mlp_width, args.mlp_in = [2, 4], 8, 8
        args.mlp_batches, args.repeats = 10, 1
        args.lstm_hidden, args.lstm_steps, args.lstm_batch = 8, 4, 8
        args.lstm_batches = 4

    started = time.perf_counter()
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    for mode in args.modes:
        rows = []
        if "mlp" in models:
            rows += [measure(mlp_case(d, args), mode, args.repeats)
                     for d in args.depths]
        if "lstm" in models:
            rows.append(measure(lstm_case(args), mode, args.repeats))
        print(C.heading(
            f"estimate(upstream='population') vs upstream='batch', whole calls "
            f"(export and compile included; best of {args.repeats})", mode))
        print(C.table(
            ["model", "statistics", "passes", "batch: call / passes",
             "population: call / passes", "call ratio (best)",
             "call ratio (median)", "passes ratio", "per pass"],
            rows))
        print()
    print(f"Total wall time of this script: {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    C.run_with_big_stack(main)
