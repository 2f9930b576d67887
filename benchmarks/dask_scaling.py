"""Scaling of ``popstats.dask``: 2 worker processes vs 1, 1 vs one process.

A CPU-bound estimation pass (the recurrent BN model of ``_common.RNN``, 4
statistics per step, inside a Scan) over P partitions of K batches; each
partition's batches are made by its loader from a seed (on a worker, or in
this process for the reference), so every candidate does the same work:

* ``2 workers`` and ``1 worker``: ``popstats.dask.estimate`` on a
  ``LocalCluster`` of 2 (resp. 1) worker processes, one thread each; both
  clusters run side by side, idle when not timed. One untimed call first
  (each worker compiles the graph, Numba JIT-compiles it); timed calls find
  it compiled, as repeated passes do;
* ``Estimation.run``: the same pass in this process, compiled once (the
  batches of the partitions one after the other);
* ``estimate``: one ``popstats.estimate`` call (export, compile with
  PyTensor's caches warm, run).

Dask's nanny starts its workers with ``MALLOC_TRIM_THRESHOLD_=65536``,
which makes glibc hand freed memory back at once and map every batch's
arrays anew; the script unsets it, as ``docs/distributed.rst`` advises
(``--keep-malloc-trim`` keeps it, to see the difference).

Timings alternate between the candidates (best and median of
``--repeats``), on the wall clock (workers are other processes). Targets
(never asserted): 2 workers >= 1.6x faster than 1; 1 worker <= 1.1x the
time of ``Estimation.run``.

Bytes between client and workers per partition: for K = 1, 8 and 64
batches per partition, the pickled size of a partition's task as the
client submits it (its loader and references), of the state a partition
task returns (to a merge task on a worker; only each group's final state
comes back to the client), and of the graph node (once per call, shared by
all partitions). They must not grow with K.

Usage::

    python benchmarks/dask_scaling.py --quick      # tiny sizes, ~1 min
    python benchmarks/dask_scaling.py              # full sizes
    python benchmarks/dask_scaling.py --partitions 32 --batches 8 --repeats 7
"""

from __future__ import annotations

import argparse
import functools
import logging
import pickle

import _common as C
import cloudpickle
import dask
import distributed
import numpy as np

import popstats
import popstats.dask

CALL = "popstats.dask.estimate"


def load(seed: int, k: int, steps: int, batch: int, n_in: int) -> list[dict]:
    """Partition ``seed``: ``k`` batches (runs on a worker, or here)."""
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((steps, batch, n_in)).astype(C.FLOAT)}
            for _ in range(k)]


def loaders(args, k: int | None = None) -> list:
    k = args.batches if k is None else k
    return [functools.partial(load, p, k, args.steps, args.batch, args.n_in)
            for p in range(args.partitions)]


def differences(got, want) -> tuple[float, float]:
    """(max elementwise, max normwise) relative difference; inf if coverage differs.

    Elementwise, an entry near 0 (a mean of centred data) turns a rounding
    difference of 1e-17 into a large ratio; normwise divides by the largest
    magnitude of the statistic.
    """
    element = norm = 0.0
    for name in want:
        if not np.array_equal(got[name].coverage, want[name].coverage):
            return float("inf"), float("inf")
        a, b = got[name].value, want[name].value
        scale = np.maximum(np.abs(b), np.finfo(np.float64).tiny)
        element = max(element, float(np.max(np.abs(a - b) / scale)))
        norm = max(norm, float(np.max(np.abs(a - b)) / np.max(np.abs(b))))
    return element, norm


def bytes_table(args, x, y, client) -> str:
    from popstats._src.distributed.cluster import plan_pass
    from popstats._src.estimation.options import EstimationOptions

    rows = []
    for k in (1, 8, 64):
        plan = plan_pass(CALL, [x], y, {None: loaders(args, k)}, {}, 8,
                         EstimationOptions.check(CALL, {"mode": args.mode}))
        task = plan.partitions[0]
        spec = dict(task.__dask_graph__())[task.key]
        state = client.compute(task).result()
        final = client.compute(plan.finals[None]).result()
        rows.append([
            k, f"{len(cloudpickle.dumps(spec))} B",
            f"{len(pickle.dumps(state))} B", f"{state.n_batches}",
            f"{len(plan.payload.data)} B",
            f"{len(pickle.dumps(final))} B",
        ])
    return C.table(
        ["batches per partition", "task sent per partition", "state per partition",
         "its batches", "graph (once per call)", "final state (back to client)"],
        rows,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes")
    parser.add_argument("--partitions", type=int, default=16)
    parser.add_argument("--batches", type=int, default=8, help="per partition")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch", type=int, default=128, help="batch size")
    parser.add_argument("--n-in", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--mode", default=None, help="compilation mode (default: "
                        "PyTensor's default, Numba)")
    parser.add_argument("--keep-malloc-trim", action="store_true",
                        help="keep Dask's MALLOC_TRIM_THRESHOLD_=65536 in the "
                        "workers (by default it is unset, as docs/distributed.rst "
                        "advises)")
    C.add_clock_argument(parser, "wall")
    args = parser.parse_args()
    if args.quick:
        args.partitions, args.batches, args.steps, args.batch = 4, 2, 10, 16
        args.hidden, args.repeats = 32, 2
    C.set_clock(args.clock)
    logging.getLogger("distributed").setLevel(logging.ERROR)  # start/close chatter

    model = C.RNN(args.n_in, args.hidden)
    x = model.input()
    y = model.build(x)
    run = popstats.Estimation([x], y, mode=args.mode)

    def here():
        return run.finalize(run.run((b for f in loaders(args) for b in f()),
                                    progress=False))

    def call():
        return popstats.estimate([x], y, (b for f in loaders(args) for b in f()),
                                 mode=args.mode, progress=False)

    if not args.keep_malloc_trim:
        # Dask's nanny sets MALLOC_TRIM_THRESHOLD_=65536 in its workers: glibc
        # then gives freed memory back at once and maps each batch's arrays
        # anew (measured: the pass takes 1.4x the CPU time)
        dask.config.set({"distributed.nanny.pre-spawn-environ."
                         "MALLOC_TRIM_THRESHOLD_": None})
    trim = "Dask's MALLOC_TRIM_THRESHOLD_=65536" if args.keep_malloc_trim else (
        "MALLOC_TRIM_THRESHOLD_ unset")
    clusters = [distributed.LocalCluster(
        n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0",
        silence_logs=logging.ERROR) for n in (1, 2)]
    clients = [distributed.Client(c, set_as_default=False) for c in clusters]
    try:
        def on(client):
            return lambda: popstats.dask.estimate([x], y, loaders(args), client=client,
                                                  mode=args.mode, progress=False)

        busy: list[float] = []  # the 1-worker calls' partition compute time

        def traced():
            with distributed.get_task_stream(client=clients[0]) as stream:
                out = popstats.dask.estimate([x], y, loaders(args), client=clients[0],
                                             mode=args.mode, progress=False)
            busy.append(sum(s["stop"] - s["start"] for task in stream.data
                            if "partition" in str(task["key"])
                            for s in task["startstops"] if s["action"] == "compute"))
            return out

        one, two = traced, on(clients[1])
        warm = {}
        for name, fn in (("here", here), ("1 worker", one), ("2 workers", two)):
            t, warm[name] = C.time_call(fn)  # compile, JIT
            print(f"(first call, {name}: {C.fmt_s(t)})")
        diff = [differences(warm[n], warm["here"]) for n in ("1 worker", "2 workers")]
        busy.clear()
        times = C.interleaved([here, call, one, two], args.repeats)
        t_here, t_call, t_one, t_two = times
        n_batches = args.partitions * args.batches
        title = (f"popstats.dask: {args.partitions} partitions x {args.batches} "
                 f"batches (BN-RNN {args.n_in}->{args.hidden}, {args.steps} steps, "
                 f"batch {args.batch}; best of {args.repeats}, interleaved)")
        print(C.heading(title, args.mode).rstrip("\n")
              + f"; dask {dask.__version__}, distributed {distributed.__version__}"
              + f"; 1 thread per worker process, {trim}\n")

        def row(what, a, b, target):
            return [what, C.fmt_s(C.best(a)), C.fmt_s(C.best(b)),
                    C.fmt_ratio(C.best(a) / C.best(b)),
                    C.fmt_ratio(C.median(a) / C.median(b)), target]

        print(C.table(
            ["comparison (A vs B)", "A", "B", "A / B (best)", "(median)", "target"],
            [
                row("speed-up: 1 worker vs 2 workers", t_one, t_two, ">= 1.6x"),
                row("1 worker vs Estimation.run here", t_one, t_here, "<= 1.1x"),
                row("1 worker: the call vs its partitions' compute", t_one, busy, ""),
                row("1 worker vs estimate() (with compile)", t_one, t_call, ""),
                row("Estimation.run here vs 2 workers", t_here, t_two, ""),
            ],
        ))
        print(f"\n{n_batches} batches per pass; Estimation.run here: "
              f"{C.fmt_s(C.best(t_here) / n_batches)} per batch; statistics, "
              f"cluster vs here: coverage equal, max relative difference "
              f"{max(d[1] for d in diff):.1e} normwise (per statistic, to its "
              f"largest magnitude), {max(d[0] for d in diff):.1e} elementwise\n")
        print(bytes_table(args, x, y, clients[1]))
    finally:
        for client in clients:
            client.close()
        for cluster in clusters:
            cluster.close()


if __name__ == "__main__":  # worker processes import this file
    main()
