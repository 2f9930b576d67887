"""The PyTorch side of ``ptml_peers.py``, run by an interpreter that has torch.

``python ptml_torch.py in.npz out.npz``: builds the PyTorch twin of the
pytensor-ml conv net from the weights in ``in.npz`` (already in PyTorch's
layout, NCHW; see ``ptml_peers.py``), runs ``update_bn`` once untimed, writes
``out.npz`` (``forward``: the train-mode output of the first batch, before
any estimate; ``running_mean<i>``, ``running_var<i>`` of each BatchNorm2d after
``update_bn``; ``predicted``: the eval-mode output of ``test``), prints one
JSON line (versions, threads, the time to import torch and to build and
warm up) and then serves the parent on stdin/stdout, one JSON line per
command: ``time`` runs ``update_bn`` over all batches and answers the time it
took, measured in this process on the clock ``in.npz`` names (``cpu``: the
CPU time of this process, ``wall``: the wall clock); ``quit`` ends it.

Imports only NumPy and torch (no popstats, no PyTensor): any Python with
torch serves, e.g. the 3.11 environment where pytensor-ml (3.12) is absent.
Threads: the parent's environment (OMP_NUM_THREADS etc.) is inherited;
``torch.set_num_threads`` is set to ``threads`` and the inter-op pool to 1.
"""

import contextlib
import gc
import json
import sys
import time

STARTED = time.perf_counter()


def build(torch, data):
    """Conv2d-BN-ReLU-MaxPool blocks, Flatten, Linear: the weights' twin."""
    layers, k = [], 0
    while f"conv{k}.weight" in data:
        w = data[f"conv{k}.weight"]
        conv = torch.nn.Conv2d(w.shape[1], w.shape[0], w.shape[2],
                               padding=w.shape[2] // 2, bias=False)
        bn = torch.nn.BatchNorm2d(w.shape[0], eps=float(data["eps"]))
        with torch.no_grad():
            conv.weight.copy_(torch.from_numpy(w))
            bn.weight.copy_(torch.from_numpy(data[f"bn{k}.weight"]))
            bn.bias.copy_(torch.from_numpy(data[f"bn{k}.bias"]))
        layers += [conv, bn, torch.nn.ReLU(), torch.nn.MaxPool2d(2)]
        k += 1
    out = torch.nn.Linear(*data["out.weight"].shape[::-1])
    with torch.no_grad():
        out.weight.copy_(torch.from_numpy(data["out.weight"]))
        out.bias.copy_(torch.from_numpy(data["out.bias"]))
    return torch.nn.Sequential(*layers, torch.nn.Flatten(), out)


def main(source: str, target: str) -> None:
    import numpy as np
    import torch
    from torch.optim.swa_utils import update_bn

    imported = time.perf_counter() - STARTED
    data = dict(np.load(source))
    torch.set_num_threads(int(data["threads"]))
    with contextlib.suppress(RuntimeError):  # already set: parallel work began
        torch.set_num_interop_threads(1)
    clock = time.process_time if str(data["clock"]) == "cpu" else time.perf_counter
    t0 = time.perf_counter()
    model = build(torch, data)
    loader = [torch.from_numpy(x) for x in data["batches"]]  # zero-copy views
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    model.train()
    with torch.no_grad():
        forward = model(loader[0]).numpy().copy()
    update_bn(loader, model)  # untimed: warm-up, and the values to compare
    warm = time.perf_counter() - t0
    model.eval()
    with torch.no_grad():
        predicted = model(torch.from_numpy(data["test"])).numpy()
    stats = {}
    for i, bn in enumerate(bns):
        stats[f"running_mean{i}"] = bn.running_mean.numpy().copy()
        stats[f"running_var{i}"] = bn.running_var.numpy().copy()
    np.savez(target, forward=forward, predicted=predicted, **stats)
    print(json.dumps({"torch": torch.__version__, "python": sys.version.split()[0],
                      "threads": torch.get_num_threads(),
                      "interop_threads": torch.get_num_interop_threads(),
                      "import_s": imported, "build_and_first_s": warm}), flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "quit":
            break
        if command != "time":
            print(json.dumps({"error": f"unknown command {command!r}"}), flush=True)
            continue
        gc.collect()
        gc.disable()
        try:
            start = clock()
            update_bn(loader, model)  # resets the statistics; momentum=None
            elapsed = clock() - start
        finally:
            gc.enable()
        print(json.dumps({"seconds": elapsed}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
