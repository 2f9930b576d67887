"""Statistics the inference graph sees: ``upstream="batch"`` vs ``"population"``.

Every estimation pass of population statistics that popstats' peers make
(PyTorch's ``update_bn``, fvcore's PreciseBN) -- and popstats' default,
``upstream="batch"`` -- runs the training graph: each layer's statistics are
measured while the layers before it normalize with their *batch*
statistics. At inference those layers normalize with population values, so
a layer does not see the input its statistics were measured on (the
estimation shift, Huang et al., CVPR 2022). ``upstream="population"``
estimates every statistic on the inference graph instead, by passes to the
fixed point (see ``docs/upstream.rst``).

This script compares the two on scikit-learn's 8x8 digits (no download):

1. a deep batch-normalized MLP (``--depth`` layers of ``--width`` units,
   written here with ``popstats.bn_statistic``), trained with Adam at a
   small batch size (``--batch-size``, 4) for ``--seeds`` seeds. The
   statistics are estimated over the training digits in batches of the
   training size, with the ``"mean"`` estimator (the original tool's) and
   with ``"pooled"`` (exact moments, fvcore's), each with
   ``upstream="batch"`` (today's) and ``"population"`` (consistent);
2. the digits BN-LSTM of the main job (``examples/bn_lstm_digits.py``,
   whose model, data and Adam this script imports), trained as there but
   without running averages, estimated the same four ways.

For each it prints the test accuracy at batch size 1, the passes
``upstream="population"`` took (``stats.fixed_point``) and the measured
estimation shift per layer (per step for the LSTM), ``popstats.shift``
over the estimation batches: for each batch norm, the mean over units of
the Jeffreys divergence between the population mean and variance it holds
and the exact moments of the input it actually gets in the inference graph
over the estimation data (the variances with the layers' epsilon, as the
normalization adds it).

Run::

    python examples/upstream_digits.py          # full setting (a few minutes)
    python examples/upstream_digits.py --fast   # seconds (used by the tests)

``--output DIR`` also writes ``upstream_digits.json`` (every number). The
script compiles with PyTensor's C backend (``CVM``) by default, as the main
job does; ``--mode`` chooses another. BLAS runs on one thread.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pytensor
import pytensor.tensor as pt
from pytensor.tensor.special import log_softmax, softmax

try:
    import popstats
except ImportError:  # running from a source checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import popstats


def _main_job():
    """examples/bn_lstm_digits.py as a module (its model, data and Adam)."""
    name = "bn_lstm_digits"
    if name in sys.modules:
        return sys.modules[name]
    path = Path(__file__).resolve().with_name(f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


lstm = _main_job()

EPS = lstm.EPS
FLOATX = lstm.FLOATX
#: the four estimations compared: (upstream, estimator)
CONFIGS = (("batch", "mean"), ("population", "mean"),
           ("batch", "pooled"), ("population", "pooled"))


class _Once(logging.Filter):
    """Lets each distinct popstats log message through once: every estimate
    and every shift of the LSTM would repeat the coverage warning of its
    last steps (reached by the few batches with the longest blank tails)."""

    def __init__(self):
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if text in self.seen:
            return False
        self.seen.add(text)
        return True


def config_key(upstream: str, estimator: str) -> str:
    return f"{upstream}/{estimator}"


# ----------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------


def load_flat(seed: int, fast: bool):
    """Digits as flat vectors in [0, 1]: train and test, split as the main job."""
    x_train, y_train, x_test, y_test = lstm.load_data(False, seed, fast)

    def flat(x):  # (steps, examples, features) -> (examples, 64)
        return np.ascontiguousarray(x.transpose(1, 0, 2).reshape(x.shape[1], -1))

    return flat(x_train), y_train, flat(x_test), y_test


def whole_batches(n: int, batch_size: int, rng: np.random.Generator):
    """Shuffled index batches of exactly ``batch_size`` (the rest is left
    out: a batch of one has variance 0)."""
    order = rng.permutation(n)
    stop = n - n % batch_size
    return [order[i:i + batch_size] for i in range(0, stop, batch_size)]


# ----------------------------------------------------------------------------
# The deep MLP
# ----------------------------------------------------------------------------


def batch_norm(a, label):
    """``a`` normalized by its batch mean and variance, marked as a pair."""
    n = a.shape[0]
    mean = popstats.bn_statistic(a.mean(axis=0), f"{label}.mean", role="mean",
                                 group=label, count=n)
    var = popstats.bn_statistic(a.var(axis=0), f"{label}.var", role="var",
                                group=label, count=n)
    return (a - mean) / pt.sqrt(var + EPS)


def mlp(depth: int, width: int, n_in: int, rng: np.random.Generator):
    """``depth`` layers ``relu(gamma * BN(h W) + beta)``, then a linear read-out.

    Returns the input, the logits and the parameters."""
    params, fan_in = [], n_in
    for i in range(depth):
        w = rng.normal(0.0, np.sqrt(2.0 / fan_in), (fan_in, width))
        params += [pytensor.shared(w.astype(FLOATX), name=f"W{i}"),
                   pytensor.shared(np.ones(width, FLOATX), name=f"gamma{i}"),
                   pytensor.shared(np.zeros(width, FLOATX), name=f"beta{i}")]
        fan_in = width
    w_out = rng.normal(0.0, np.sqrt(1.0 / width), (width, 10))
    params += [pytensor.shared(w_out.astype(FLOATX), name="W_out"),
               pytensor.shared(np.zeros(10, FLOATX), name="b_out")]
    x = pt.matrix("x", dtype=FLOATX)
    h = x
    for i in range(depth):
        w, gamma, beta = params[3 * i:3 * i + 3]
        h = pt.maximum(gamma * batch_norm(h @ w, f"bn{i + 1}") + beta, 0.0)
    return x, h @ params[-2] + params[-1], params


def train(x, logits, params, data, epochs, batch_size, lr, rng, mode):
    """Adam (the main job's) on the cross-entropy, batch statistics."""
    x_train, y_train = data
    y = pt.vector("y", dtype="int64")
    loss = -log_softmax(logits, axis=1)[pt.arange(y.shape[0]), y].mean()
    step = pytensor.function([x, y], loss, mode=mode,
                             updates=lstm.adam_updates(loss, params, lr))
    for _ in range(epochs):
        for idx in whole_batches(len(x_train), batch_size, rng):
            step(x_train[idx], y_train[idx])


def training_mode(x, probs, x_test, y_test, batch_size, mode, axis) -> float:
    """Test accuracy with batch statistics over test batches of the
    training size (along ``axis``): the network as it was trained, for
    reference."""
    fn = pytensor.function([x], probs, mode=mode)
    n = x_test.shape[axis]
    pred = np.concatenate([
        fn(np.take(x_test, np.arange(i, min(i + batch_size, n)), axis=axis))
        .argmax(axis=1) for i in range(0, n, batch_size)])
    return float(np.mean(pred == y_test))


def accuracy_at_batch_1(fn, x, y) -> float:
    """Test accuracy, one example per call."""
    hits = [fn(x[i:i + 1]).argmax() == y[i] for i in range(len(x))]
    return float(np.mean(hits))


def measured_shift(stats, x, probs, batches, mode) -> dict[str, list[float]]:
    """``popstats.shift`` over the estimation batches: per batch norm (its
    group) and step, the mean over units of the Jeffreys divergence between
    the population values and the exact moments of the layer's input in the
    inference graph of ``stats``."""
    moved = popstats.shift(stats, [x], probs, batches, eps=EPS, mode=mode,
                           progress=False)
    return {name: [float(v) for v in np.ravel(moved[name].per_step)]
            for name in moved}


def run_mlp(args, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    x_train, y_train, x_test, y_test = load_flat(seed, args.fast)
    x, logits, params = mlp(args.depth, args.width, x_train.shape[1], rng)
    t0 = time.perf_counter()
    train(x, logits, params, (x_train, y_train), args.epochs, args.batch_size,
          args.lr, rng, args.mode)
    trained = time.perf_counter() - t0
    probs = softmax(logits, axis=1)
    # the estimation batches: the training digits in batches of the training
    # size, one list for every estimation (the passes need the same data)
    batches = [{"x": x_train[idx]}
               for idx in whole_batches(len(x_train), args.batch_size, rng)]
    out = {"seed": seed, "train_seconds": round(trained, 2),
           "training_mode": training_mode(x, probs, x_test, y_test,
                                          args.batch_size, args.mode, 0),
           "accuracy": {}, "shift": {}, "passes": {}, "estimate_seconds": {}}
    for upstream, estimator in CONFIGS:
        key = config_key(upstream, estimator)
        t0 = time.perf_counter()
        stats = popstats.estimate([x], probs, batches, estimator=estimator,
                                  upstream=upstream, mode=args.mode)
        out["estimate_seconds"][key] = round(time.perf_counter() - t0, 2)
        fn = pytensor.function([x], popstats.rewrite(probs, stats), mode=args.mode)
        out["accuracy"][key] = accuracy_at_batch_1(fn, x_test, y_test)
        shift = measured_shift(stats, x, probs, batches, args.mode)
        out["shift"][key] = [shift[f"bn{i + 1}"][0] for i in range(args.depth)]
        fp = stats.fixed_point
        out["passes"][key] = 1 if fp is None else fp.passes
    return out


# ----------------------------------------------------------------------------
# The BN-LSTM of the main job
# ----------------------------------------------------------------------------


def run_lstm(args, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    x_train, y_train, x_test, y_test = lstm.load_data(False, seed, args.fast)
    params = lstm.init_params(x_train.shape[2], args.lstm_hidden, rng)
    x, logits = lstm.build_model(params, args.lstm_hidden)
    y = pt.vector("y", dtype="int64")
    loss = -log_softmax(logits, axis=1)[pt.arange(y.shape[0]), y].mean()
    step = pytensor.function(
        [x, y], loss, mode=args.mode,
        updates=lstm.adam_updates(loss, list(params.values()), args.lstm_lr))
    t0 = time.perf_counter()
    for _ in range(args.lstm_epochs):
        for xb, yb in lstm.training_batches(x_train, y_train, args.lstm_batch_size,
                                            args.train_pad, rng):
            step(xb, yb)
    trained = time.perf_counter() - t0
    probs = softmax(logits, axis=1)
    # as the main job: the training data in batches of the training size,
    # each with its random blank tail
    batches = [{"x": xb} for xb, _ in lstm.training_batches(
        x_train, y_train, args.lstm_batch_size, args.train_pad, rng)]
    out = {"seed": seed, "train_seconds": round(trained, 2),
           "training_mode": training_mode(x, probs, x_test, y_test,
                                          args.lstm_batch_size, args.mode, 1),
           "accuracy": {}, "shift": {}, "passes": {}, "estimate_seconds": {}}
    for upstream, estimator in CONFIGS:
        key = config_key(upstream, estimator)
        t0 = time.perf_counter()
        stats = popstats.estimate([x], probs, batches, estimator=estimator,
                                  upstream=upstream, mode=args.mode)
        out["estimate_seconds"][key] = round(time.perf_counter() - t0, 2)
        fn = pytensor.function([x], popstats.rewrite(probs, stats), mode=args.mode)
        pred, _ = lstm.predict(fn, x_test, 1)
        out["accuracy"][key] = float(np.mean(pred == y_test))
        out["shift"][key] = measured_shift(stats, x, probs, batches, args.mode)
        fp = stats.fixed_point
        out["passes"][key] = 1 if fp is None else fp.passes
    return out


# ----------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------


def text_table(head, body) -> str:
    """A plain table: a rule, the head, a rule, the rows, a rule."""
    cells = [list(map(str, head)), *[list(map(str, r)) for r in body]]
    widths = [max(len(r[k]) for r in cells) for k in range(len(head))]
    rule = "  ".join("-" * w for w in widths)

    def line(row):
        return "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()

    return "\n".join([rule, line(cells[0]), rule, *map(line, cells[1:]), rule])


def accuracy_rows(runs: list[dict]) -> list[list[str]]:
    """One row per seed, then the mean: accuracy at batch size 1 per config,
    and with batch statistics as in training."""
    def cells(get):
        return [f"{get(r):.4f}" for r in runs] + (
            [f"{np.mean([get(r) for r in runs]):.4f}"] if len(runs) > 1 else [])

    def of(key):
        return lambda r: r["accuracy"][key]

    columns = [cells(of(config_key(*c))) for c in CONFIGS]
    columns.append(cells(lambda r: r["training_mode"]))
    seeds = [str(r["seed"]) for r in runs] + (["mean"] if len(runs) > 1 else [])
    return [[seed, *(col[i] for col in columns)] for i, seed in enumerate(seeds)]


def passes_rows(runs: list[dict]) -> list[list[str]]:
    return [[str(r["seed"]), *(str(r["passes"][config_key(*c)]) for c in CONFIGS)]
            for r in runs]


def _shift_cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3g}"
    return f"{np.mean(values):.3g} ({min(values):.2g}-{max(values):.2g})"


def mlp_shift_rows(runs: list[dict]) -> list[list[str]]:
    """One row per layer: the mean shift over seeds (min-max)."""
    depth = len(runs[0]["shift"][config_key(*CONFIGS[0])])
    return [[str(i + 1), *(_shift_cell([r["shift"][config_key(*c)][i] for r in runs])
                           for c in CONFIGS)] for i in range(depth)]


def _over_steps(runs, config, name, reduce) -> list[float]:
    return [float(reduce(r["shift"][config_key(*config)][name])) for r in runs]


def lstm_shift_rows(runs: list[dict]) -> list[list[str]]:
    """Per batch norm: the shift's mean over the steps and its largest value
    (with its step per seed), mean over seeds (min-max)."""
    rows = []
    for name in runs[0]["shift"][config_key(*CONFIGS[0])]:
        rows.append([name, "mean over steps", *(
            _shift_cell(_over_steps(runs, c, name, np.mean)) for c in CONFIGS)])
        rows.append([name, "largest @ step", *(
            _shift_cell(_over_steps(runs, c, name, max)) + " @ " + ",".join(
                str(int(np.argmax(r["shift"][config_key(*c)][name]))) for r in runs)
            for c in CONFIGS)])
    return rows


HEAD = [config_key(*c) for c in CONFIGS]


def report(args, mlp_runs, lstm_runs) -> str:
    seeds = ", ".join(str(s) for s in args.seeds)
    lines = [
        f"Deep BN-MLP: {args.depth} layers of {args.width} units, Adam "
        f"(lr {args.lr}), {args.epochs} epochs at batch size {args.batch_size}, "
        f"seeds {seeds}; statistics estimated over the training digits in "
        f"batches of {args.batch_size}; mode {mode_name(args.mode)}",
        "",
        "test accuracy at batch size 1 (upstream/estimator; last column: "
        f"batch statistics over test batches of {args.batch_size}, as trained):",
        text_table(["seed", *HEAD, "training mode"], accuracy_rows(mlp_runs)),
        "",
        "passes (upstream='batch': one):",
        text_table(["seed", *HEAD], passes_rows(mlp_runs)),
        "",
        "shift per layer: mean over units of the Jeffreys divergence between "
        "the population values and the moments of the layer's inference-time "
        "input over the estimation data (mean over seeds, min-max):",
        text_table(["layer", *HEAD], mlp_shift_rows(mlp_runs)),
    ]
    if lstm_runs:
        seeds = ", ".join(str(r["seed"]) for r in lstm_runs)
        lines += [
            "",
            f"BN-LSTM of the main job: {args.lstm_hidden} units, Adam (lr "
            f"{args.lstm_lr}), {args.lstm_epochs} epochs at batch size "
            f"{args.lstm_batch_size} with 0-{args.train_pad} blank steps, seeds "
            f"{seeds}; statistics estimated over the training digits in "
            f"batches of {args.lstm_batch_size} (blank tails as in training)",
            "",
            "test accuracy at batch size 1 (last column: batch statistics over "
            f"test batches of {args.lstm_batch_size}, as trained):",
            text_table(["seed", *HEAD, "training mode"], accuracy_rows(lstm_runs)),
            "",
            "passes:",
            text_table(["seed", *HEAD], passes_rows(lstm_runs)),
            "",
            "shift per batch norm over the steps of the estimation data (per "
            "step in the JSON output; mean over seeds, min-max):",
            text_table(["layer", "", *HEAD], lstm_shift_rows(lstm_runs)),
        ]
    return "\n".join(lines)


def mode_name(mode: str | None) -> str:
    linker = type(pytensor.compile.mode.get_mode(mode).linker).__name__
    return f"{mode or 'default'} ({linker})"


# ----------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fast", action="store_true",
                        help="tiny setting, seconds (used by the tests)")
    parser.add_argument("--seeds", default=None,
                        help="comma list (default 0,1,2; 0 with --fast)")
    parser.add_argument("--depth", type=int, default=None,
                        help="MLP layers (default 12; 4 with --fast)")
    parser.add_argument("--width", type=int, default=None,
                        help="MLP units per layer (default 64; 16 with --fast)")
    parser.add_argument("--batch-size", type=int, default=4,
                        help="MLP training and estimation batch size (default 4)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="MLP epochs (default 10; 2 with --fast)")
    parser.add_argument("--lr", type=float, default=1e-3, help="MLP Adam step")
    parser.add_argument("--lstm", choices=("on", "off"), default="on",
                        help="also compare on the main job's BN-LSTM")
    parser.add_argument("--lstm-seeds", default=None,
                        help="comma list (default: those of --seeds)")
    parser.add_argument("--lstm-hidden", type=int, default=None,
                        help="LSTM units (default 100, the main job's; 24 with "
                        "--fast)")
    parser.add_argument("--lstm-epochs", type=int, default=None,
                        help="LSTM epochs (default 10; 3 with --fast)")
    parser.add_argument("--lstm-batch-size", type=int, default=64,
                        help="LSTM training and estimation batch size (default "
                        "64, the main job's)")
    parser.add_argument("--lstm-lr", type=float, default=None,
                        help="LSTM Adam step (default 2e-3; 1e-2 with --fast)")
    parser.add_argument("--train-pad", type=int, default=4,
                        help="LSTM: most blank steps after a training digit")
    parser.add_argument("--mode", default="CVM",
                        help="PyTensor compilation mode (default CVM, the main "
                        "job's)")
    parser.add_argument("--output", type=Path, default=None,
                        help="folder for upstream_digits.json")
    args = parser.parse_args(argv)
    fast = args.fast
    defaults = {"seeds": "0" if fast else "0,1,2", "depth": 4 if fast else 12,
                "width": 16 if fast else 64, "epochs": 2 if fast else 10,
                "lstm_hidden": 24 if fast else 100,
                "lstm_epochs": 3 if fast else 10,
                "lstm_lr": 1e-2 if fast else 2e-3}
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.seeds = [int(s) for s in str(args.seeds).split(",") if s.strip()]
    args.lstm_seeds = ([int(s) for s in args.lstm_seeds.split(",") if s.strip()]
                       if args.lstm_seeds else args.seeds)
    if args.lstm == "off":
        args.lstm_seeds = []
    if args.batch_size < 2 or args.lstm_batch_size < 2:
        parser.error("batch sizes must be at least 2 (a batch of one has "
                     "variance 0)")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    t_start = time.perf_counter()
    lstm.load_data(False, 0, True)  # scikit-learn (and SciPy's BLAS) loaded
    logger, once = logging.getLogger("popstats"), _Once()
    logger.addFilter(once)
    try:
        with lstm.blas_threads(1):
            mlp_runs = [run_mlp(args, seed) for seed in args.seeds]
            lstm_runs = [run_lstm(args, seed) for seed in args.lstm_seeds]
    finally:
        logger.removeFilter(once)
    text = report(args, mlp_runs, lstm_runs)
    print(text)
    elapsed = time.perf_counter() - t_start
    print(f"\ntotal time {elapsed:.1f}s")
    settings = {k: (str(v) if isinstance(v, Path) else v)
                for k, v in vars(args).items()}
    result = {"settings": settings, "mode": mode_name(args.mode),
              "pytensor_version": pytensor.__version__,
              "configs": HEAD, "mlp": mlp_runs, "lstm": lstm_runs,
              "seconds": round(elapsed, 1), "table": text}
    if args.output is not None:
        args.output.mkdir(parents=True, exist_ok=True)
        (args.output / "upstream_digits.json").write_text(
            json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
