"""PyTorch's update_bn on weights and batches from an .npz (run by a test, in
the interpreter that has torch): ``python torch_update_bn.py in.npz out.npz``.

The model is Linear(bias=False) -> BatchNorm1d -> ReLU -> Linear in float64,
with the arrays ``W``, ``scale``, ``loc``, ``W2``, ``b2``, ``batches`` (a
stack of equal-size batches) and ``x1`` (rows to predict one at a time).
Writes ``running_mean``, ``running_var`` and ``predicted`` (eval mode).
"""

import sys


def main(source: str, target: str) -> None:
    """Run ``update_bn`` on the model and batches in ``source``; write ``target``.

    Imports torch here, so that collecting this file (pytest's doctest
    collection imports it) needs neither torch nor command-line arguments.
    """
    import numpy as np
    import torch
    from torch.optim.swa_utils import update_bn

    data = np.load(source)
    torch.set_default_dtype(torch.float64)
    fc = torch.nn.Linear(data["W"].shape[0], data["W"].shape[1], bias=False)
    bn = torch.nn.BatchNorm1d(data["W"].shape[1], eps=1e-5)
    out = torch.nn.Linear(data["W2"].shape[0], data["W2"].shape[1])
    with torch.no_grad():
        fc.weight.copy_(torch.from_numpy(data["W"].T))
        bn.weight.copy_(torch.from_numpy(data["scale"]))
        bn.bias.copy_(torch.from_numpy(data["loc"]))
        out.weight.copy_(torch.from_numpy(data["W2"].T))
        out.bias.copy_(torch.from_numpy(data["b2"]))
    model = torch.nn.Sequential(fc, bn, torch.nn.ReLU(), out)
    update_bn([torch.from_numpy(x) for x in data["batches"]], model)
    model.eval()
    with torch.no_grad():
        rows = [torch.from_numpy(row[None]) for row in data["x1"]]
        predicted = torch.cat([model(row) for row in rows])
    np.savez(target, running_mean=bn.running_mean.numpy(),
             running_var=bn.running_var.numpy(), predicted=predicted.numpy())


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
