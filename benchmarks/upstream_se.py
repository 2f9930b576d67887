"""``upstream="population"`` stopped at the statistics' precision (issue 29).

``upstream_tol`` (default 1e-10) stops the passes of
``upstream="population"`` when the largest relative change between two
passes is below it: for a chain of L batch norms that is L + 1 passes,
the last only confirming a change of 0, far below any estimate's standard
error. ``upstream_se=f`` stops them once every value moved by at most
``f`` of its own standard error (``docs/upstream.rst``). This script
measures, per model, each way of estimating (whole ``estimate`` calls,
export and compile included, one run each; one thread per library):

* ``batch``: the default ``upstream="batch"`` (one pass on the training
  graph);
* ``tol 1e-10``: ``upstream="population"`` as today;
* ``se 0.5``, ``se 0.1``, ``se 0.01``: ``upstream_se``.

Columns: passes, seconds (CPU time of the process and its compilers by
default, ``--clock wall``: the machine may be shared), the largest change of
the last pass in standard errors, and how far the inference outputs at batch
size 1 are from those of the tight (1e-10) fixed point: the largest
difference of any output over the test examples, as a fraction of the
outputs' spread (their std over examples and classes), and, where the model
is trained, the test accuracy (else the share of examples whose class agrees
with the tight fixed point's). The values' distance from the tight fixed
point in standard errors is also printed (the largest over statistics, cells
and units).

Models:

* ``resnet``: a 15-BatchNorm ResNet written with pytensor-ml 0.3.0 layers
  (stem conv-BN-ReLU, then seven basic blocks conv-BN-ReLU-conv-BN plus the
  skip, channels 16/16/32/32/64/64/64, the first block of 32 and of 64
  with stride 2 and a 1x1 projection), 32x32x3 inputs, He-initialized
  random weights, 40 batches of 64 random inputs (as in issue 29); outputs
  compared on ``--resnet-test`` other random inputs, one at a time;
* ``lstm``: the main job, ``examples/bn_lstm_digits.py``'s BN-LSTM (100
  units) trained on the digits (8 row steps plus up to 4 blank ones) for
  ``--epochs`` epochs with its Adam, estimated on one epoch of its training
  batches (22 batches of 64, blank tails as in training), test accuracy on
  the 360 test digits at batch size 1.

Usage::

    python benchmarks/upstream_se.py              # both models
    python benchmarks/upstream_se.py --models resnet --ways "batch,se 0.1"
    python benchmarks/upstream_se.py --quick      # tiny sizes, seconds
"""

from __future__ import annotations

import argparse
import importlib.util
import time

import _common as C
import numpy as np
import pytensor
import pytensor.tensor as pt

import popstats

WAYS = (("batch", {"upstream": "batch"}),
        ("tol 1e-10", {"upstream": "population"}),
        ("se 0.5", {"upstream": "population", "upstream_se": 0.5}),
        ("se 0.1", {"upstream": "population", "upstream_se": 0.1}),
        ("se 0.01", {"upstream": "population", "upstream_se": 0.01}))


def _example(name: str):
    path = C.ROOT / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------
# Models: (description, input, output, estimation batches, test inputs,
# test labels or None, predict(fn, x) at batch size 1)
# --------------------------------------------------------------------------


def resnet_case(args):
    from pytensor_ml.activations import ReLU
    from pytensor_ml.layers import BatchNorm, Conv2D, Input, Linear

    rng = np.random.default_rng(0)
    X = Input("X", shape=(None, args.size, args.size, 3))
    relu = ReLU()
    bns: list[BatchNorm] = []

    def conv(name, c_in, c_out, k=3, stride=1):
        layer = Conv2D(name, in_channels=c_in, out_channels=c_out, kernel_size=k,
                       stride=stride, padding="same" if stride == 1 else k // 2,
                       bias=False)
        w = layer.W.get_value()
        fan_in = int(np.prod(w.shape)) // c_out
        layer.W.set_value(rng.normal(0, np.sqrt(2.0 / fan_in), w.shape)
                          .astype(w.dtype))
        return layer

    def bn(name, c):
        layer = BatchNorm(name, n_in=c)
        bns.append(layer)
        return layer

    h = relu(bn("stem_bn", args.width)(conv("stem", 3, args.width)(X)))
    c_in = args.width
    for i, (c, stride) in enumerate(args.blocks):
        a = relu(bn(f"b{i}_bn1", c)(conv(f"b{i}_c1", c_in, c, stride=stride)(h)))
        a = bn(f"b{i}_bn2", c)(conv(f"b{i}_c2", c, c)(a))
        skip = h if (c == c_in and stride == 1) else conv(
            f"b{i}_proj", c_in, c, k=1, stride=stride)(h)
        h, c_in = relu(a + skip), c
    pooled = h.mean(axis=(1, 2))
    head = Linear("head", n_in=c_in, n_out=10)
    logits = head(pooled)
    batches = [{"X": rng.normal(0, 1, (args.resnet_batch, args.size, args.size, 3))
                .astype(C.FLOAT)} for _ in range(args.resnet_batches)]
    test = rng.normal(0, 1, (args.resnet_test, args.size, args.size, 3)).astype(C.FLOAT)
    desc = (f"ResNet, {len(bns)} BatchNorm, {args.size}x{args.size}x3, "
            f"{args.resnet_batches} batches of {args.resnet_batch}, random weights")
    return desc, X, logits, batches, test, None, lambda fn, x: np.concatenate(
        [fn(x[i:i + 1]) for i in range(len(x))])


def lstm_case(args):
    ex = _example("bn_lstm_digits")
    rng = np.random.default_rng(0)
    x_train, y_train, x_test, y_test = ex.load_data(False, 0, args.quick)
    params = ex.init_params(x_train.shape[2], args.lstm_hidden, rng)
    x, logits = ex.build_model(params, args.lstm_hidden)
    y = pt.vector("y", dtype="int64")
    loss = -pt.special.log_softmax(logits, axis=1)[pt.arange(y.shape[0]), y].mean()
    train = pytensor.function([x, y], loss, updates=ex.adam_updates(
        loss, list(params.values()), 0.01), mode="CVM")
    t0 = time.perf_counter()
    for _ in range(args.epochs):
        for xb, yb in ex.training_batches(x_train, y_train, 64, 4, rng):
            train(xb, yb)
    print(f"  (BN-LSTM trained {args.epochs} epochs in "
          f"{time.perf_counter() - t0:.1f} s, compile included)")
    batches = [{"x": xb} for xb, _ in ex.training_batches(x_train, y_train, 64, 4,
                                                         rng)]
    desc = (f"BN-LSTM {args.lstm_hidden} units (main job), digits, "
            f"{len(batches)} batches of 64")
    return desc, x, logits, batches, x_test, y_test, lambda fn, xs: np.concatenate(
        [fn(xs[:, i:i + 1]) for i in range(xs.shape[1])])


# --------------------------------------------------------------------------


def measure(case, mode, ways) -> tuple[list[list[object]], list[str]]:
    desc, x, out, batches, test, labels, predict = case
    results = {}
    # the tight fixed point first (every other way is compared with it)
    order = sorted(WAYS, key=lambda way: way[0] != "tol 1e-10")
    for name, options in order:
        if name not in ways and name != "tol 1e-10":
            continue
        t0 = C.now()
        stats = popstats.estimate([x], out, batches, mode=mode, progress=False,
                                  **options)
        seconds = C.now() - t0
        fn = pytensor.function([x], popstats.rewrite(out, stats), mode=mode)
        results[name] = (stats, seconds, predict(fn, test))
        print(f"  {name}: {seconds:.1f} s, {stats.fixed_point}", flush=True)
    tight, _, reference = results["tol 1e-10"]
    spread = float(np.std(reference))
    rows, notes = [], []
    for name, (stats, seconds, outputs) in sorted(
            results.items(), key=lambda r: [n for n, _ in WAYS].index(r[0])):
        fp = stats.fixed_point
        with np.errstate(divide="ignore", invalid="ignore"):
            in_se = max(float(np.max(np.where(
                np.isfinite(s.standard_error) & (s.value != tight[n].value),
                np.abs(s.value - tight[n].value) / s.standard_error, 0.0)))
                for n, s in stats.items())
        diff = float(np.max(np.abs(outputs - reference))) / spread
        classes = outputs.argmax(axis=1)
        if labels is not None:
            score = f"accuracy {np.mean(classes == labels):.4f}"
        else:
            score = f"agrees {np.mean(classes == reference.argmax(axis=1)):.3f}"
        rows.append([name, fp.passes if fp else 1, f"{seconds:.1f}",
                     f"{fp.se_changes[-1]:.2g}" if fp else "-",
                     f"{in_se:.2g}", f"{diff:.2g}", score])
        if fp is not None:
            notes.append(f"{name}: {fp}" + (f"; unjudged {fp.unjudged}"
                                            if fp.unjudged else ""))
    return [[desc, *r] for r in rows], notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="resnet,lstm")
    parser.add_argument("--mode", default="CVM")
    parser.add_argument("--size", default=32, type=int)
    parser.add_argument("--width", default=16, type=int)
    parser.add_argument("--resnet-batch", default=64, type=int)
    parser.add_argument("--resnet-batches", default=40, type=int)
    parser.add_argument("--resnet-test", default=200, type=int)
    parser.add_argument("--lstm-hidden", default=100, type=int)
    parser.add_argument("--epochs", default=10, type=int)
    parser.add_argument("--ways", default="batch,tol 1e-10,se 0.5,se 0.1",
                        help=f"of {', '.join(n for n, _ in WAYS)}")
    parser.add_argument("--quick", action="store_true", help="tiny sizes")
    C.add_clock_argument(parser, "cpu")
    args = parser.parse_args()
    C.set_clock(args.clock)
    w = args.width
    args.blocks = [(w, 1), (w, 1), (2 * w, 2), (2 * w, 1), (4 * w, 2), (4 * w, 1),
                   (4 * w, 1)]
    if args.quick:
        args.size, args.width, args.resnet_batch, args.resnet_batches = 8, 4, 8, 6
        args.resnet_test, args.lstm_hidden, args.epochs = 10, 8, 1
        args.blocks = [(4, 1), (8, 2)]
    started = time.perf_counter()
    print(C.heading("upstream='population': passes stopped by upstream_tol or "
                    "upstream_se, against upstream='batch'", args.mode))
    rows, notes = [], []
    for model in [m.strip() for m in args.models.split(",") if m.strip()]:
        case = resnet_case(args) if model == "resnet" else lstm_case(args)
        r, n = measure(case, args.mode, [w.strip() for w in args.ways.split(",")])
        rows += r
        notes += n
        print(C.table(["model", "way", "passes", "seconds",
                       "last change (SE)", "from tight (SE)",
                       "output diff / spread", "classes"], r), flush=True)
        print("\n".join(n), flush=True)
    print()
    print(C.rst_table(["model", "way", "passes", "seconds", "last change (SE)",
                       "from tight (SE)", "output diff / spread", "classes"], rows))
    print(f"Total wall time of this script: {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    C.run_with_big_stack(main)
