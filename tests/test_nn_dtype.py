"""``popstats.nn.batch_norm`` keeps a float input's dtype, whatever ``floatX`` is.

A Python-float epsilon is a ``floatX`` constant in PyTensor, so under the
default ``floatX="float64"`` it used to turn a float32 model's output into
float64. Every combination of input dtype and ``floatX`` is checked here, for
the output, the marked statistics and the values (against NumPy).
"""

from __future__ import annotations

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from shared import MODE

from popstats import nn

EPS = 1e-5
#: float32 agrees with NumPy's float64 to about its own precision
RTOL = {"float32": 1e-5, "float64": 1e-12}


def np_batch_norm(x, axes, mask=None, gamma=1.0, beta=0.0):
    """Training-mode batch norm in float64: (output, mean, var)."""
    x = x.astype(np.float64)
    if mask is None:
        mean, var = x.mean(axis=axes), x.var(axis=axes)
    else:
        m = np.broadcast_to(mask.astype(np.float64)[..., None], x.shape)
        mean = (x * m).sum(axis=axes) / m.sum(axis=axes)
        var = (((x - mean) ** 2) * m).sum(axis=axes) / m.sum(axis=axes)
    return gamma * (x - mean) / np.sqrt(var + EPS) + beta, mean, var


@pytest.mark.parametrize("floatx", ["float32", "float64"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("masked", [False, True], ids=["plain", "masked"])
def test_batch_norm_keeps_the_input_dtype(floatx, dtype, masked):
    rng = np.random.default_rng(3)
    with pytensor.config.change_flags(floatX=floatx):
        if masked:
            x = pt.tensor("x", shape=(None, None, 3), dtype=dtype)
            mask = pt.matrix("mask", dtype="float64")  # any dtype; float64 here
            bn = nn.batch_norm(x, axes=(0, 1), mask=mask, epsilon=EPS, label="b")
            inputs = [x, mask]
            data = rng.normal(2.0, 3.0, size=(4, 5, 3)).astype(dtype)
            m = (rng.uniform(size=(4, 5)) < 0.7).astype(np.float64)
            m[0] = 1.0
            values = [data, m]
            expected = np_batch_norm(data, (0, 1), m)
        else:
            x = pt.tensor("x", shape=(None, 3), dtype=dtype)
            bn = nn.batch_norm(x, axes=0, epsilon=EPS, label="b")
            inputs = [x]
            data = rng.normal(2.0, 3.0, size=(6, 3)).astype(dtype)
            values = [data]
            expected = np_batch_norm(data, 0)
        assert bn.output.dtype == dtype
        assert bn.mean.dtype == dtype and bn.var.dtype == dtype
        assert {p.dtype for p in bn.params} == {dtype}
        f = pytensor.function(inputs, [bn.output, bn.mean, bn.var], mode=MODE)
        results = f(*values)
    for got, want in zip(results, expected, strict=True):
        assert got.dtype == np.dtype(dtype)
        np.testing.assert_allclose(got, want, rtol=RTOL[dtype], atol=RTOL[dtype])
