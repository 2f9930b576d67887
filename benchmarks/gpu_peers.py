"""peers.py on a GPU: popstats' JAX device pass against PyTorch CUDA (issue 23).

One command for whoever next has an NVIDIA GPU. It runs ``benchmarks/peers.py
--modes JAX --accumulate host,graph --device cuda`` (a table per
accumulation) four times, each in a fresh process:

1. ``JAX_DEFAULT_MATMUL_PRECISION=highest`` (float32 matrix products in full
   float32) and PyTorch's TF32 switches off (``--torch-tf32 off``), on the
   MLP 784-1024x3-10, the conv net, the BN-RNN and the BN-LSTM;
2. the same on the large MLP (``--mlp-width 4096 --mlp-layers 4 --mlp-batch
   2048 --mlp-in 1024``);
3. and 4. the same two with JAX's default precision (TF32 on GPUs that have
   it) and PyTorch's TF32 switches on (``--torch-tf32 on``).

Both sides time the pass to its end (popstats: the statistics are NumPy
arrays when ``finalize`` returns; the forward pass: ``np.asarray`` of each
output; PyTorch: ``torch.cuda.synchronize()``), by the wall clock, each batch
copied from the same host float32 arrays to the GPU inside the timed pass.
Every table also gives the max relative difference of popstats' and
PyTorch's statistics to a NumPy float64 forward pass (``--float64-reference``;
computed once per model, kept in a temporary folder).

What must be present on the GPU machine (nothing is downloaded there):

* this checkout (the project and ``benchmarks/``);
* a Python (3.11+) with NumPy, JAX with CUDA (``jax[cuda]``: ``jax``,
  ``jaxlib`` and the CUDA plugin) and PyTorch with CUDA;
* PyTensor (3.0-3.3) and its pure-Python needs (``cons``, ``etuples``,
  ``logical-unification``, ``minikanren``) importable by that Python, or as
  wheels in a folder given with ``--wheels DIR``: they are installed from
  there (``pip install --no-index --no-deps --target``, into a temporary
  folder put on ``PYTHONPATH``). ``benchmarks/gpu_wheels.sh`` downloads them
  on a machine with a network (see ``benchmarks/README.md``).

It checks these first and stops with a message saying what is missing when
JAX sees no GPU, PyTorch sees no CUDA or nvidia-smi is absent.

Output: one folder (``--out``; default ``$OUT`` if set, else
``benchmarks/gpu-results/``) with three files: ``environment.txt``
(nvidia-smi, versions, the variables that steer JAX and CUDA),
``tables.md`` (every table, each under the command that made it, and a
summary of the runs) and ``runs.log`` (their standard error).

Time: ``--budget`` seconds in all (default 480, for a 10-minute command
limit); a run gets what is left of it, and runs that no longer fit
(``--min-run``) are skipped and listed as such. Sized for an H100/H200:
N=20 batches (10 for the large MLP), best of 5; most of the time is JAX's
compilation. ``--quick`` runs peers.py's tiny sizes (a smoke test).

Usage::

    python benchmarks/gpu_peers.py                       # on the GPU machine
    python benchmarks/gpu_peers.py --wheels benchmarks/gpu-wheels
    python benchmarks/gpu_peers.py --quick               # smoke test there
    python benchmarks/gpu_peers.py --quick --allow-cpu   # check it on a CPU
    python benchmarks/gpu_peers.py --dry-run             # print the runs only
    python benchmarks/gpu_peers.py --precisions highest --sets large-mlp

``--allow-cpu`` runs everything without a GPU (PyTorch on the CPU, JAX on
whatever it finds), for checking this script; its timings mean nothing.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PEERS = HERE / "peers.py"

#: precision name -> (JAX_DEFAULT_MATMUL_PRECISION or None to unset it,
#: PyTorch's TF32 switches), in the order they run
PRECISIONS = {
    "highest": ("highest", "off"),
    "default": (None, "on"),
}
#: model set -> peers.py options, in the order they run
SETS = {
    "models": ["--models", "mlp,conv,rnn,lstm"],
    "large-mlp": ["--models", "mlp", "--mlp-width", "4096", "--mlp-layers", "4",
                  "--mlp-batch", "2048", "--mlp-in", "1024"],
}

PREFLIGHT = r"""
import json, sys
info = {"python": sys.version.split()[0], "executable": sys.executable}
missing = []
for name in ("numpy", "pytensor", "popstats", "jax", "jaxlib", "torch"):
    try:
        info[name] = getattr(__import__(name), "__version__", "?")
    except Exception as exc:
        missing.append(f"{name} ({type(exc).__name__}: {exc})")
if "jax" in info:
    import jax
    try:
        info["jax_backend"] = jax.default_backend()
        info["jax_devices"] = [f"{d} ({d.device_kind})" for d in jax.devices()]
    except Exception as exc:
        info["jax_backend"] = f"error: {type(exc).__name__}: {exc}"
if "torch" in info:
    import torch
    info["torch_cuda"] = torch.version.cuda
    info["torch_cuda_available"] = torch.cuda.is_available()
    if torch.cuda.is_available():
        info["torch_device"] = torch.cuda.get_device_name()
        info["cudnn"] = torch.backends.cudnn.version()
info["missing"] = missing
print(json.dumps(info))
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=None,
                        help="output folder (default $OUT, else "
                             "benchmarks/gpu-results)")
    parser.add_argument("--quick", action="store_true",
                        help="peers.py --quick: tiny sizes, a smoke test")
    parser.add_argument("--allow-cpu", action="store_true",
                        help="run without a GPU (PyTorch on the CPU): checks "
                             "the script, measures nothing")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the runs and exit")
    parser.add_argument("--precisions", default=",".join(PRECISIONS),
                        help=f"comma-separated, of {','.join(PRECISIONS)}")
    parser.add_argument("--sets", default=",".join(SETS),
                        help=f"comma-separated, of {','.join(SETS)}")
    parser.add_argument("--budget", default=480.0, type=float,
                        help="seconds for all runs (default 480)")
    parser.add_argument("--min-run", default=45.0, type=float,
                        help="skip a run when fewer seconds are left (default 45)")
    parser.add_argument("--batches", default=20, type=int,
                        help="N batches (default 20)")
    parser.add_argument("--large-batches", default=10, type=int,
                        help="N batches of the large MLP (default 10)")
    parser.add_argument("--repeats", default=5, type=int,
                        help="timings per candidate (default 5)")
    parser.add_argument("--threads", default=None, type=int,
                        help="peers.py --threads (default: the CPU count up to "
                             "16; 1 with --allow-cpu)")
    parser.add_argument("--python", default=sys.executable,
                        help="the interpreter that runs peers.py (default this one)")
    parser.add_argument("--wheels", default=None, metavar="DIR",
                        help="install the wheels in DIR (no network) into a "
                             "temporary folder on PYTHONPATH first")
    return parser


def _choose(parser, text: str, known: dict, option: str) -> list[str]:
    chosen = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in chosen if v not in known]
    if bad or not chosen:
        parser.error(f"{option}: choose from {','.join(known)}, not {text!r}")
    return chosen


def plan(args, cache: str) -> list[dict]:
    """The runs: name, peers.py command and environment changes of each."""
    device = "cpu" if args.allow_cpu else "cuda"
    threads = args.threads or (1 if args.allow_cpu else min(os.cpu_count() or 1, 16))
    runs = []
    for precision in args.precisions:
        jax_precision, tf32 = PRECISIONS[precision]
        for name in args.sets:
            batches = args.large_batches if name == "large-mlp" else args.batches
            command = [args.python, str(PEERS), "--modes", "JAX",
                       "--accumulate", "host,graph", "--device", device,
                       "--torch-tf32", tf32, "--clock", "wall",
                       "--threads", str(threads), "--batches", str(batches),
                       "--repeats", str(args.repeats), "--float64-reference",
                       "--reference-cache", cache, *SETS[name]]
            if args.quick:
                command.append("--quick")
            runs.append({
                "name": f"{precision}-{name}",
                "title": (f"JAX_DEFAULT_MATMUL_PRECISION="
                          f"{jax_precision or '(unset: default, TF32)'}, PyTorch "
                          f"TF32 {tf32}; {name}"),
                "command": command,
                "env": {"JAX_DEFAULT_MATMUL_PRECISION": jax_precision},
            })
    return runs


def run_env(changes: dict, extra_path: str | None) -> dict:
    env = dict(os.environ)
    paths = [p for p in (extra_path, str(ROOT), env.get("PYTHONPATH")) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    # JAX takes 75 % of the GPU's memory at its start by default; leave room
    # for PyTorch in the same process
    env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.5")
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def shell(command: list[str]) -> str:
    """A command's output (stdout and stderr), or why there is none."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"({shlex.join(command)}: {type(exc).__name__}: {exc})\n"
    return done.stdout + done.stderr


def install_wheels(args, site: str, log) -> None:
    wheels = sorted(Path(args.wheels).glob("*.whl"))
    if not wheels:
        sys.exit(f"gpu_peers: no wheels in {args.wheels}")
    command = [args.python, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
               "--no-compile", "--no-cache-dir", "--target", site,
               *map(str, wheels)]
    log.write(f"$ {shlex.join(command)}\n")
    done = subprocess.run(command, capture_output=True, text=True)
    log.write(done.stdout + done.stderr)
    if done.returncode != 0:
        sys.exit(f"gpu_peers: installing the wheels of {args.wheels} failed:\n"
                 f"{done.stderr}")


def preflight(args, env: dict, environment) -> dict:
    """Versions and devices, from a child process (which takes the GPU's
    memory only for a moment); stops early when the GPU side is missing."""
    env = dict(env, XLA_PYTHON_CLIENT_PREALLOCATE="false")
    done = subprocess.run([args.python, "-c", PREFLIGHT], capture_output=True,
                          text=True, env=env, timeout=300)
    try:
        info = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        sys.exit(f"gpu_peers: {args.python} could not report its versions:\n"
                 f"{done.stdout}{done.stderr}")
    environment.write("## Python, packages and devices\n\n"
                      + json.dumps(info, indent=2) + "\n\n")
    problems = list(info["missing"])
    if "jax" in info and info.get("jax_backend") != "gpu":
        problems.append(f"JAX sees no GPU: its backend is {info.get('jax_backend')!r} "
                        f"(install jax[cuda] and unset JAX_PLATFORMS)")
    if "torch" in info and not info.get("torch_cuda_available"):
        problems.append(f"PyTorch sees no CUDA device (torch {info['torch']}, "
                        f"CUDA {info.get('torch_cuda')})")
    if shutil.which("nvidia-smi") is None:
        problems.append("nvidia-smi is not on PATH")
    fatal = [p for p in problems
             if p.startswith(("numpy", "pytensor", "popstats", "jax "))]
    if not args.allow_cpu:
        fatal = problems
    if problems:
        word = "stopping" if fatal else "going on (--allow-cpu)"
        print(f"gpu_peers: {word}:\n  " + "\n  ".join(problems), file=sys.stderr)
        environment.write("## Problems\n\n" + "\n".join(problems) + "\n\n")
    if fatal:
        environment.close()
        sys.exit(2)
    return info


def execute(run: dict, env: dict, timeout: float, tables, log) -> dict:
    """Run one peers.py command; its tables go to ``tables``, stderr to ``log``."""
    with tempfile.TemporaryFile("w+") as out:
        log.write(f"\n===== {run['name']}: {shlex.join(run['command'])}\n")
        log.flush()
        started = time.perf_counter()
        proc = subprocess.Popen(run["command"], stdout=out, stderr=log, env=env,
                                cwd=ROOT, text=True, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
            status = "ok" if rc == 0 else f"failed (exit {rc})"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # peers.py and its children
            proc.wait()
            status = f"timed out after {timeout:.0f} s (its budget)"
        elapsed = time.perf_counter() - started
        out.seek(0)
        text = out.read()
    tables.write(f"## {run['title']}\n\n`{shlex.join(run['command'][1:])}` "
                 f"with {_env_text(run['env'])}: {status}, {elapsed:.0f} s\n\n"
                 f"{text}\n")
    tables.flush()
    print(f"--- {run['name']}: {status}, {elapsed:.0f} s\n{text}", flush=True)
    return {"name": run["name"], "status": status, "seconds": elapsed}


def _env_text(changes: dict) -> str:
    return ", ".join(f"{k}={v}" if v is not None else f"{k} unset"
                     for k, v in changes.items())


def run_all(args, out: Path, scratch: str) -> list[dict]:
    started = time.perf_counter()
    with (open(out / "environment.txt", "w") as environment,
          open(out / "runs.log", "w") as log,
          open(out / "tables.md", "w") as tables):
        now = datetime.datetime.now()
        environment.write(f"# gpu_peers.py, {now:%Y-%m-%d %H:%M}\n\n"
                          f"$ {shlex.join(sys.argv)}\n\n")
        site = None
        if args.wheels:
            site = os.path.join(scratch, "site")
            install_wheels(args, site, log)
        base = run_env({}, site)
        query = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,"
                 "clocks.max.sm", "--format=csv"]
        environment.write("## nvidia-smi\n\n" + shell(["nvidia-smi"]) + "\n"
                          + shell(query) + "\n")
        preflight(args, base, environment)
        prefixes = ("JAX_", "XLA_", "CUDA_", "NVIDIA_", "PYTENSOR_FLAGS", "OMP_",
                    "OPENBLAS_", "MKL_", "NUMBA_", "PYTHONPATH", "LD_LIBRARY_PATH")
        steer = {k: v for k, v in base.items() if k.startswith(prefixes)}
        environment.write("## Environment variables (before each run's own)\n\n"
                          + json.dumps(steer, indent=2) + "\n")
        environment.flush()
        flags = " --quick" if args.quick else ""
        if args.allow_cpu:
            flags += " --allow-cpu: NO GPU, the timings mean nothing"
        tables.write(f"# peers.py on a GPU (gpu_peers.py{flags})\n\n")
        done = []
        for run in plan(args, os.path.join(scratch, "reference")):
            left = args.budget - (time.perf_counter() - started)
            if left < args.min_run:
                done.append({"name": run["name"], "seconds": 0.0,
                             "status": f"skipped: {left:.0f} s of the budget left"})
                continue
            done.append(execute(run, run_env(run["env"], site), left, tables, log))
        total = time.perf_counter() - started
        rows = "\n".join(f"| {d['name']} | {d['status']} | {d['seconds']:.0f} s |"
                         for d in done)
        tables.write(f"## Runs\n\n| run | status | wall time |\n|---|---|---|\n"
                     f"{rows}\n\nTotal {total:.0f} s of a {args.budget:.0f} s "
                     f"budget. Targets: popstats / forward <= 1.05x; popstats "
                     f"speed vs PyTorch >= 1.0x on the MLPs and the conv net, "
                     f">= 1.3x on BN-RNN and BN-LSTM.\n")
    print(f"gpu_peers: {sum(d['status'] == 'ok' for d in done)} of {len(done)} "
          f"runs ok in {total:.0f} s; tables in {out / 'tables.md'}", flush=True)
    return done


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    args.precisions = _choose(parser, args.precisions, PRECISIONS, "--precisions")
    args.sets = _choose(parser, args.sets, SETS, "--sets")
    if args.dry_run:
        for run in plan(args, "<temporary folder>"):
            print(f"{run['name']}: {_env_text(run['env'])} "
                  f"{shlex.join(run['command'])}")
        return
    out = Path(args.out or os.environ.get("OUT") or HERE / "gpu-results")
    out.mkdir(parents=True, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix="gpu-peers-")
    try:
        done = run_all(args, out, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if any(d["status"] != "ok" for d in done):
        sys.exit(1)


if __name__ == "__main__":
    main()
