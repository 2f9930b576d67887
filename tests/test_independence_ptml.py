"""The batch-independence analysis on every layer pytensor-ml ships.

Each layer of ``pytensor_ml.layers`` (and each activation of
``pytensor_ml.activations``) is placed after a ``BatchNorm``; the graph is
rewritten with population values (``fake_statistics``: nothing estimated).
Then:

* no false alarm: ``rewrite`` does not warn (pytest turns warnings into
  errors), with the batch axis found from the statistics and with
  ``batch_axes={"X": 0}`` (exact: a convolution's statistics reduce over
  space too, a sequence's over time);
* ``describe_rewrite(...).ok`` and ``check_batch_independence`` on data
  agree: both say independent;
* the same graph with its batch mean subtracted mixes: the analysis names
  the reduction and the data check fails.

Dropout is checked as predicted (pytensor-ml's ``rewrite_for_prediction``
drops it; a training-mode mask differs with the batch size). Skipped where
pytensor-ml is not installed (the Python 3.11 line).
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest

pytest.importorskip("pytensor_ml")

import pytensor_ml.activations as activations
import pytensor_ml.layers as layers
from independence_models import fake_statistics
from pytensor_ml.layers import BatchNorm, Input
from pytensor_ml.pytensorf import rewrite_for_prediction

import popstats

#: compiled without C code: one compile per graph is the cost of these tests
PY = pytensor.compile.Mode(linker="py", optimizer="fast_compile")


def after_bn(shape: tuple[int, ...], *apply: Callable) -> Callable:
    """A builder: ``X`` of ``(batch, *shape)``, a BatchNorm, then ``apply``."""

    def build():
        X = Input("X", shape=(None, *shape))
        y = BatchNorm("bn", n_in=shape[-1])(X)
        for layer in apply:
            y = layer(y)
        return [X], y

    return build


def heads(h):
    """(batch, time, 4) <-> (batch, 2 heads, time, 2), by split_dims/join_dims."""
    if h.ndim == 3:
        return pt.split_dims(h, (2, 2), axis=2).dimshuffle(0, 2, 1, 3)
    return pt.join_dims(h.dimshuffle(0, 2, 1, 3), start_axis=2, n_axes=2)


def embedding():
    X = Input("X", shape=(None, 4))
    ids = Input("ids", shape=(None,), dtype="int64")
    h = BatchNorm("bn", n_in=4)(X)
    return [X, ids], h * layers.Embedding("emb", n_embeddings=7, n_features=4)(ids)


def embedding_sequence():
    """Token ids (batch, time) looked up, then normalized over batch and time."""
    ids = Input("ids", shape=(None, 5), dtype="int64")
    e = BatchNorm("bn", n_in=3)(layers.Embedding("emb", n_embeddings=7,
                                                  n_features=3)(ids))
    return [ids], layers.Linear("fc", n_in=3, n_out=2)(e)


L = layers
#: case -> (builder, the names of pytensor-ml it covers)
CASES: dict[str, tuple[Callable, tuple[str, ...]]] = {
    "Linear": (after_bn((6,), L.Linear("l", n_in=6, n_out=4)), ("Linear",)),
    "Conv1D": (after_bn((8, 3), L.Conv1D("c", in_channels=3, out_channels=4,
                                          kernel_size=3)), ("Conv1D",)),
    "Conv1D_same_stride": (after_bn((8, 3), L.Conv1D(
        "c", in_channels=3, out_channels=4, kernel_size=3, padding="same", stride=2,
        padding_mode="reflect")), ("Conv1D",)),
    "Conv1D_flatten": (after_bn((8, 3), L.Conv1D(
        "c", in_channels=3, out_channels=2, kernel_size=3), L.Flatten,
        L.Linear("l", n_in=12, n_out=2)), ("Conv1D", "Flatten")),
    "Conv2D": (after_bn((6, 6, 2), L.Conv2D("c", in_channels=2, out_channels=3,
                                             kernel_size=3)), ("Conv2D",)),
    "Conv2D_same_dilated": (after_bn((6, 6, 2), L.Conv2D(
        "c", in_channels=2, out_channels=3, kernel_size=3, padding="same",
        dilation=2)), ("Conv2D",)),
    "ConvTranspose1D": (after_bn((5, 3), L.ConvTranspose1D(
        "c", in_channels=3, out_channels=2, kernel_size=3, stride=2)),
        ("ConvTranspose1D",)),
    "ConvTranspose2D": (after_bn((4, 4, 2), L.ConvTranspose2D(
        "c", in_channels=2, out_channels=3, kernel_size=3, stride=2, padding=1)),
        ("ConvTranspose2D",)),
    "MaxPool1D": (after_bn((8, 3), L.MaxPool1D("p", kernel_size=2)), ("MaxPool1D",)),
    "MaxPool2D": (after_bn((6, 6, 2), L.MaxPool2D("p", kernel_size=3, stride=2)),
                  ("MaxPool2D",)),
    "AvgPool1D": (after_bn((8, 3), L.AvgPool1D("p", kernel_size=3, padding="same")),
                  ("AvgPool1D",)),
    "AvgPool2D": (after_bn((6, 6, 2), L.AvgPool2D("p", kernel_size=2)), ("AvgPool2D",)),
    "Upsample1D": (after_bn((4, 3), L.Upsample1D("u", scale_factor=2)),
                   ("Upsample1D",)),
    "Upsample1D_linear": (after_bn((4, 3), L.Upsample1D("u", size=7, mode="linear")),
                          ("Upsample1D",)),
    "Upsample2D": (after_bn((3, 3, 2), L.Upsample2D("u", scale_factor=2)),
                   ("Upsample2D",)),
    "Upsample2D_bilinear": (after_bn((3, 3, 2), L.Upsample2D(
        "u", scale_factor=2, mode="bilinear")), ("Upsample2D",)),
    "ZeroPad1D": (after_bn((4, 3), L.ZeroPad1D("z", padding=(1, 2))), ("ZeroPad1D",)),
    "ZeroPad2D": (after_bn((3, 3, 2), L.ZeroPad2D("z", padding=1)), ("ZeroPad2D",)),
    "ConstantPad1D": (after_bn((4, 3), L.ConstantPad1D("z", padding=1, value=2.0)),
                      ("ConstantPad1D",)),
    "ConstantPad2D": (after_bn((3, 3, 2), L.ConstantPad2D("z", padding=1, value=2.0)),
                      ("ConstantPad2D",)),
    "ReflectionPad1D": (after_bn((4, 3), L.ReflectionPad1D("z", padding=2)),
                        ("ReflectionPad1D",)),
    "ReflectionPad2D": (after_bn((3, 3, 2), L.ReflectionPad2D("z", padding=1)),
                        ("ReflectionPad2D",)),
    "ReplicationPad1D": (after_bn((4, 3), L.ReplicationPad1D("z", padding=1)),
                         ("ReplicationPad1D",)),
    "ReplicationPad2D": (after_bn((3, 3, 2), L.ReplicationPad2D("z", padding=1)),
                         ("ReplicationPad2D",)),
    "LayerNorm": (after_bn((6,), L.LayerNorm("n", n_in=6)), ("LayerNorm",)),
    "RMSNorm": (after_bn((6,), L.RMSNorm("n", n_in=6)), ("RMSNorm",)),
    "GroupNorm": (after_bn((4, 4), L.GroupNorm("n", n_groups=2, n_in=4)),
                  ("GroupNorm",)),
    "GroupNorm_image": (after_bn((3, 3, 6), L.GroupNorm("n", n_groups=3, n_in=6)),
                        ("GroupNorm",)),
    "RNN": (after_bn((5, 3), L.RNN("r", n_in=3, n_hidden=4)), ("RNN", "ElmanCell",
                                                                "Recurrent")),
    "GRU": (after_bn((5, 3), L.GRU("r", n_in=3, n_hidden=4, reverse=True)),
            ("GRU", "GRUCell")),
    "LSTM": (after_bn((5, 3), L.LSTM("r", n_in=3, n_hidden=4)), ("LSTM", "LSTMCell")),
    "Bidirectional": (after_bn((5, 3), L.Bidirectional(
        L.LSTM("f", n_in=3, n_hidden=2), L.GRU("b", n_in=3, n_hidden=2, reverse=True))),
        ("Bidirectional",)),
    "Recurrent_cell": (after_bn((5, 3), L.Recurrent(L.ElmanCell("c", n_in=3,
                                                                 n_hidden=2))),
                       ("Recurrent", "ElmanCell")),
    "MultiheadAttention": (after_bn((5, 4), L.MultiheadAttention(
        "a", n_embd=4, n_head=2, fused_qkv=True)), ("MultiheadAttention",)),
    "MultiheadAttention_gqa_causal": (after_bn((5, 4), L.MultiheadAttention(
        "a", n_embd=4, n_head=2, n_kv_head=1, is_causal=True)),
        ("MultiheadAttention",)),
    "CausalSelfAttention": (after_bn((5, 4), L.CausalSelfAttention(
        "a", n_embd=4, n_head=2)), ("CausalSelfAttention",)),
    "scaled_dot_product_attention": (after_bn((5, 4), lambda h: heads(
        L.scaled_dot_product_attention(*(heads(v) for v in (h, h * 2.0, h + 1.0)),
                                       is_causal=True))),
        ("scaled_dot_product_attention",)),
    "FeedForward": (after_bn((5, 4), L.FeedForward("f", d_model=4, hidden_dim=6,
                                                    gated=True)), ("FeedForward",)),
    "TransformerBlock": (after_bn((5, 4), L.TransformerBlock("t", d_model=4,
                                                              n_head=2)),
                         ("TransformerBlock",)),
    "Flatten": (after_bn((3, 2), L.Flatten), ("Flatten",)),
    "Squeeze": (after_bn((1, 3), lambda h: L.Squeeze(h, axis=1)), ("Squeeze",)),
    "Concatenate": (after_bn((3,), lambda h: L.Concatenate([h, 2 * h], axis=-1)),
                    ("Concatenate",)),
    "Sequential": (after_bn((6,), L.Sequential(L.Linear("a", n_in=6, n_out=3),
                                               activations.ReLU())),
                   ("Sequential",)),
    "Embedding": (embedding, ("Embedding",)),
    "Embedding_sequence": (embedding_sequence, ("Embedding",)),
    "Dropout": (after_bn((4,), L.Dropout("d", p=0.5, random_state=0),
                         L.Linear("l", n_in=4, n_out=3)), ("Dropout",)),
}
ACTIVATIONS = sorted(n for n, c in vars(activations).items() if inspect.isclass(c)
                     and issubclass(c, activations.Activation)
                     and c is not activations.Activation)
for _name in ACTIVATIONS:
    CASES[_name] = (after_bn((4,), getattr(activations, _name)()), (_name,))

#: what pytensor-ml exports that is no layer to place after a BatchNorm:
#: base classes and ops, the input, BatchNorm itself
NOT_LAYERS = {"Layer", "ConvLayer", "PoolLayer", "PoolLayerGrad", "AttentionLayer",
              "RecurrentCell", "Input", "BatchNorm"}


def _batch(inputs, n: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {v.name: rng.integers(0, 7, size=(n, *v.type.shape[1:]))
            if v.dtype.startswith("int") else rng.normal(size=(n, *v.type.shape[1:]))
            for v in inputs}


def _rewrite(y, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error", popstats.PopstatsWarning)
        return popstats.rewrite(y, fake_statistics(y), **kwargs)


def test_the_catalogue_covers_every_layer_and_activation():
    covered = {name for _, names in CASES.values() for name in names}
    shipped = set(layers.__all__) - NOT_LAYERS
    assert shipped <= covered, sorted(shipped - covered)
    assert ACTIVATIONS and set(ACTIVATIONS) <= covered


@pytest.mark.parametrize("name", sorted(CASES))
def test_layer_after_batchnorm_no_false_alarm_and_data_agrees(name):
    build, _ = CASES[name]
    inputs, y = build()
    inference = _rewrite(y)  # no warning
    exact = {v.name: 0 for v in inputs}  # the exact batch axis: the same verdict
    _rewrite(y, batch_axes=exact)
    if name == "Dropout":
        inference = rewrite_for_prediction(inference)
    assert popstats.describe_rewrite(y, inference).ok
    assert popstats.describe_rewrite(y, inference, batch_axes=exact).ok
    batch = _batch(inputs)
    assert popstats.check_batch_independence(inputs, inference, batch, mode=PY) < 1e-9
    # with the batch mean subtracted it mixes: the analysis and the data agree
    mixed = y - y.mean(axis=0)
    with pytest.warns(popstats.PopstatsWarning, match="reduces over the batch axis"):
        popstats.rewrite(mixed, fake_statistics(mixed), batch_axes=exact)
    mixed_inference = inference - inference.mean(axis=0)
    assert not popstats.describe_rewrite(mixed, mixed_inference, batch_axes=exact).ok
    with pytest.raises(popstats.PopstatsError, match="depend on other examples"):
        popstats.check_batch_independence(inputs, mixed_inference, batch, mode=PY)
