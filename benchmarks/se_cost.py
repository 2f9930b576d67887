"""Cost of keeping standard errors: an estimation pass with them against one without.

Since issue 29 every estimator's state carries the fields of its standard
error (batch-means sums ``xx``/``xk``, the ratio sums of ``"weighted"`` and
``"pooled"``; see docs/estimators.rst, "Standard errors"), always: popstats
has no switch to leave them out. The pass *without* them is therefore the
estimator of the commit before they came (``--base``, default the parent of
the "SE-CORE READY" commit), exported with ``git archive`` into a temporary
folder -- no worktree is touched -- and imported in a subprocess of its own.
The pass *with* them is this checkout's ``popstats``, in a second subprocess.
Both processes build the same models from ``peers.py`` (same weights, same
float32 batches, one thread per library: ``_common`` pins OpenBLAS/OpenMP/
MKL/Numba/XLA to one thread before NumPy loads), compile an
``Estimation`` once, check once that both give the same values, then time
``finalize(run(batches))`` alternately (base, current, base, current, ...),
each process on its own CPU-time clock. Compilation is excluded.

Models (``peers.py``' sizes): a BN MLP 784-1024x3 (batch 256), a BN-RNN and
a BN-LSTM 32->128 with per-step statistics over 50 steps (batch 64), each
with ``accumulate="host"`` (NumPy sums after each batch) and ``"graph"``
(the sums kept in the compiled function's shared state). ``--estimators``
picks the estimators (default the plain ``"mean"``); for any other the
models' statistics carry a role, group and element count
(``peers.MARK_COUNTS``: only the BN-LSTM has them, as ``"weighted"`` and
``"pooled"`` need; a model that cannot take an estimator is listed under
the table as not run, with popstats' reason).

Target (never asserted): with / without <= 1.05x.

Usage::

    python benchmarks/se_cost.py            # full sizes, CVM (C backend)
    python benchmarks/se_cost.py --quick    # tiny sizes, seconds
    python benchmarks/se_cost.py --modes default,CVM --base 0a45a2d
    python benchmarks/se_cost.py --models lstm --estimators weighted,pooled
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
#: the parent of the commit that added the standard errors (h2-se's
#: "SE-CORE READY"): the estimator without them
DEFAULT_BASE = "0a45a2d"


# --------------------------------------------------------------------------
# worker: one process per popstats, driven over stdin/stdout


def worker(root: str) -> None:
    """Import popstats from ``root``, then serve ``setup`` / ``time`` lines."""
    os.environ.setdefault("PYTENSOR_FLAGS", "floatX=float32")
    sys.path.insert(0, root)
    import popstats  # first: _common and peers then reuse this module

    if not Path(popstats.__file__).resolve().is_relative_to(Path(root).resolve()):
        raise SystemExit(f"popstats imported from {popstats.__file__}, not {root}")
    sys.path.insert(1, str(HERE))
    sys.argv = [sys.argv[0]]
    import _common as C
    import numpy as np
    import peers

    C.set_clock("cpu")
    current: dict = {}

    def reply(obj) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    reply({"ready": popstats.__file__})
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "setup":
            args = argparse.Namespace(**cmd["sizes"])
            # role, group and count: what "weighted" and "pooled" need
            peers.MARK_COUNTS[0] = cmd["estimator"] != "mean"
            model = peers.make_model(cmd["model"], args)
            x, out = model.graph()
            batches = [{"x": a} for a in model.batches(cmd["batches"])]
            mode = cmd["mode"]
            try:
                run = popstats.Estimation([x], out, mode=mode,
                                          accumulate=cmd["accumulate"],
                                          estimator=cmd["estimator"])
            except popstats.PopstatsError as exc:
                # an estimator the model cannot take ("weighted" and
                # "pooled" need counts: only the BN-LSTM marks them)
                reply({"skip": str(exc).split(". ")[0]})
                continue
            stats = run.finalize(run.run(batches, progress=False))  # untimed: JIT
            current.update(run=run, batches=batches)
            values = {k: np.asarray(s.value, dtype=float).ravel()[:8].tolist()
                      for k, s in stats.items()}
            reply({"desc": model.desc, "n_stats": len(run.sites), "values": values,
                   "has_se": any(getattr(s, "standard_error", None) is not None
                                 for s in stats.values())})
        elif cmd["op"] == "time":
            def one_pass(run=current["run"], batches=current["batches"]):
                return run.finalize(run.run(batches, progress=False))

            t, _ = C.time_call(one_pass)
            reply({"t": t})
        else:
            return


class Worker:
    def __init__(self, root: Path, python: str):
        env = dict(os.environ)
        env["PYTENSOR_FLAGS"] = ",".join(
            f for f in (env.get("PYTENSOR_FLAGS", ""), "floatX=float32") if f)
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                    "NUMBA_NUM_THREADS"):
            env[var] = "1"
        env.pop("PYTHONPATH", None)
        self.proc = subprocess.Popen(
            [python, str(Path(__file__).resolve()), "--worker", str(root)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
            cwd=str(root))
        self.ready = self.recv()["ready"]

    def send(self, obj) -> dict:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(obj) + "\n")
        self.proc.stdin.flush()
        return self.recv()

    def recv(self) -> dict:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker exited ({self.proc.wait()})")
        return json.loads(line)

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
            self.proc.stdin.close()
        self.proc.wait()


def export_base(ref: str, into: Path) -> str:
    """``popstats/`` of commit ``ref`` under ``into`` (``git archive``);
    return the commit's id."""
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", ref],
                            capture_output=True, text=True, check=True).stdout.strip()
    archive = into / "base.tar"
    with open(archive, "wb") as f:
        subprocess.run(["git", "-C", str(ROOT), "archive", commit, "popstats"],
                       stdout=f, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return commit


def sizes(quick: bool) -> dict:
    if quick:
        return {"mlp_in": 16, "mlp_width": 32, "mlp_layers": 2, "mlp_batch": 32,
                "rnn_in": 4, "rnn_hidden": 8, "rnn_steps": 5, "rnn_batch": 16,
                "conv_size": 8, "conv_channels": "4,8", "conv_batch": 16}
    return {"mlp_in": 784, "mlp_width": 1024, "mlp_layers": 3, "mlp_batch": 256,
            "rnn_in": 32, "rnn_hidden": 128, "rnn_steps": 50, "rnn_batch": 64,
            "conv_size": 28, "conv_channels": "16,32", "conv_batch": 128}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="mlp,rnn,lstm")
    parser.add_argument("--modes", default="CVM",
                        help="comma list: default (Numba), CVM")
    parser.add_argument("--accumulate", default="host,graph")
    parser.add_argument("--estimators", default="mean",
                        help="comma list: mean, unbiased, weighted, pooled, ema")
    parser.add_argument("--batches", type=int, help="per pass (default 30; 6 quick)")
    parser.add_argument("--repeats", type=int,
                        help="timed passes per side, alternating (default 7; 3 quick)")
    parser.add_argument("--base", default=DEFAULT_BASE,
                        help=f"commit without standard errors (default {DEFAULT_BASE})")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, k=3")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker)
        return
    if args.batches is None:
        args.batches = 6 if args.quick else 30
    if args.repeats is None:
        args.repeats = 3 if args.quick else 7
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="se_cost_base_") as tmp:
        commit = export_base(args.base, Path(tmp))
        base = Worker(Path(tmp), sys.executable)
        current = Worker(ROOT, sys.executable)
        try:
            rows: list[list] = []
            skipped: list[str] = []
            for mode_name in args.modes.split(","):
                mode = None if mode_name.strip().lower() == "default" else \
                    mode_name.strip().upper()
                for model, estimator, acc in itertools.product(
                        args.models.split(","), args.estimators.split(","),
                        args.accumulate.split(",")):
                    setup = {"op": "setup", "model": model.strip(),
                             "accumulate": acc.strip(), "mode": mode,
                             "estimator": estimator.strip(),
                             "batches": args.batches, "sizes": sizes(args.quick)}
                    b, c = base.send(setup), current.send(setup)
                    if "skip" in b or "skip" in c:
                        skipped.append(f"{model}/{estimator}/{acc}: "
                                       f"{c.get('skip', b.get('skip'))}")
                        print("not run:", skipped[-1], file=sys.stderr)
                        continue
                    worst = max(
                        abs(x - y) / max(abs(y), 1e-12)
                        for k in c["values"]
                        for x, y in zip(b["values"][k], c["values"][k],
                                        strict=True))
                    tb, tc = [], []
                    for _ in range(args.repeats):
                        tb.append(base.send({"op": "time"})["t"])
                        tc.append(current.send({"op": "time"})["t"])
                    tb.sort()
                    tc.sort()
                    n = args.batches
                    rows.append([
                        c["desc"], mode_name, estimator, acc, c["n_stats"],
                        f"{tb[0] / n * 1e3:.2f} ms", f"{tc[0] / n * 1e3:.2f} ms",
                        f"{tc[0] / tb[0]:.3f}x",
                        f"{tc[len(tc) // 2] / tb[len(tb) // 2]:.3f}x",
                        f"{worst:.0e}", "yes" if c["has_se"] else "no",
                    ])
                    print(" | ".join(str(x) for x in rows[-1]), file=sys.stderr)
        finally:
            base.close()
            current.close()
    sys.path.insert(0, str(HERE))
    import _common as C

    C.set_clock("cpu")  # the workers' clock
    print(C.heading(
        f"estimation pass with standard errors (this checkout) vs without "
        f"(commit {commit[:10]}), per batch, {args.batches} batches, best of "
        f"{args.repeats} alternating; compile excluded"))
    print(C.table(
        ["model", "mode", "estimator", "accumulate", "statistics", "without SE / batch",
         "with SE / batch", "ratio (best)", "ratio (median)",
         "values: max rel. diff", "SE kept"], rows))
    for line in skipped:
        print(f"not run: {line}")
    print("\nTarget: with / without <= 1.05x.")
    print(f"\nTotal wall time of this script: {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
