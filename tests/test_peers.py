"""Each estimator against the peer it equals exactly, and ``unbiased=True``.

The claims are the table "Which peer each estimator equals" of
``docs/estimators.rst`` (:data:`CLAIMS`; a test keeps both in step). Each is
checked on a small batch-normalized MLP in float64 with batches of varying
sizes, to 1e-12 relative, against a NumPy transcription of the peer's
documented formula, written here from the formula, not from popstats:

* PyTorch ``torch.optim.swa_utils.update_bn`` (BatchNorm with
  ``momentum=None``): cumulative moving average of the batch mean and of the
  unbiased batch variance, every batch weighing the same;
* PyTorch BatchNorm running averages in train mode: ``running = (1 - momentum)
  * running + momentum * batch``, ``running_mean`` from 0, ``running_var``
  from 1 with the unbiased batch variance;
* fvcore PreciseBN ``update_bn_stats``: element-weighted averages of the
  batch means and of ``E_b[x^2]`` (Bessel's correction of the batch variance
  undone), variance ``E[x^2] - mean^2``;
* Keras and Flax BatchNorm: ``moving = 0.99 * moving + 0.01 * batch`` of the
  batch mean and *biased* batch variance, from 0 and 1;
* the original ``popstats.py``: the plain average of each batch statistic.

Where PyTorch is importable the PyTorch claims are also checked against
PyTorch itself (``torch.nn.BatchNorm1d`` with the same weights and data).
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from shared import MODE, fails, scan

import popstats
from popstats import Estimator, nn

EPS = 1e-5  # batch_norm's default epsilon, and PyTorch's
RTOL = 1e-12
SIZES = (7, 12, 3, 9, 16, 5, 10, 4, 6)  # rows per batch
LAYERS = ("bn1", "bn2")
DOCS = Path(__file__).resolve().parent.parent / "docs" / "estimators.rst"


# --------------------------------------------------------------------------
# The model: x (n, 3) -> dense -> batch_norm -> tanh -> dense -> batch_norm
# --------------------------------------------------------------------------


def weights():
    rng = np.random.default_rng(11)
    return {
        "W1": rng.normal(size=(3, 4)), "b1": rng.normal(size=4),
        "g1": rng.uniform(0.5, 2.0, 4), "c1": rng.normal(size=4),
        "W2": rng.normal(size=(4, 2)), "b2": rng.normal(size=2),
        "g2": rng.uniform(0.5, 2.0, 2), "c2": rng.normal(size=2),
    }


W = weights()


def data_batches():
    rng = np.random.default_rng(12)
    loc, scale = np.array([1.0, -2.0, 0.5]), np.array([1.0, 3.0, 0.5])
    return [rng.normal(loc, scale, size=(n, 3)) for n in SIZES]


BATCHES = data_batches()


def mlp():
    """The PyTensor model: (x, output)."""
    x = pt.tensor("x", shape=(None, 3), dtype="float64")
    bn1 = nn.batch_norm(x @ W["W1"] + W["b1"], axes=0, gamma=W["g1"], beta=W["c1"],
                        label="bn1")
    h = pt.tanh(bn1.output) @ W["W2"] + W["b2"]
    bn2 = nn.batch_norm(h, axes=0, gamma=W["g2"], beta=W["c2"], label="bn2")
    return x, bn2.output


def np_pre_bn(x):
    """Training-mode NumPy forward pass: the inputs of both normalizations."""
    h1 = x @ W["W1"] + W["b1"]
    a1 = np.tanh(W["g1"] * (h1 - h1.mean(0)) / np.sqrt(h1.var(0) + EPS) + W["c1"])
    return {"bn1": h1, "bn2": a1 @ W["W2"] + W["b2"]}


#: per layer, the elements each batch normalizes (rows), in batch order
ELEMENTS = {layer: [np_pre_bn(b)[layer] for b in BATCHES] for layer in LAYERS}


# --------------------------------------------------------------------------
# The peers' formulas, in NumPy (each returns {"mean": ..., "var": ...})
# --------------------------------------------------------------------------


def torch_update_bn(elements):
    """``update_bn``: reset (0 and 1), momentum=None: factor 1/k for batch k."""
    running_mean, running_var = np.zeros(elements[0].shape[1]), np.ones(
        elements[0].shape[1])
    for k, e in enumerate(elements, start=1):
        factor = 1.0 / k
        running_mean = (1 - factor) * running_mean + factor * e.mean(0)
        running_var = (1 - factor) * running_var + factor * e.var(0, ddof=1)
    return {"mean": running_mean, "var": running_var}


def torch_running(elements, momentum=0.1):
    """BatchNorm in train mode: EMA from 0 and 1, unbiased batch variance."""
    running_mean, running_var = np.zeros(elements[0].shape[1]), np.ones(
        elements[0].shape[1])
    for e in elements:
        running_mean = (1 - momentum) * running_mean + momentum * e.mean(0)
        running_var = (1 - momentum) * running_var + momentum * e.var(0, ddof=1)
    return {"mean": running_mean, "var": running_var}


def fvcore_precise_bn(elements):
    """``update_bn_stats``: BN with momentum 1 gives each batch's mean and
    unbiased variance; averages of mean and E[x^2] weighted by elements."""
    total, pop_mean, pop_square = 0, 0.0, 0.0
    for e in elements:
        m = len(e)
        batch_mean, batch_var = e.mean(0), e.var(0, ddof=1)
        batch_square = batch_mean**2 + batch_var * (m - 1) / m
        total += m
        pop_mean = pop_mean + (batch_mean - pop_mean) * (m / total)
        pop_square = pop_square + (batch_square - pop_square) * (m / total)
    return {"mean": pop_mean, "var": pop_square - pop_mean**2}


def keras_flax(elements, decay=0.99):
    """Keras / Flax BatchNorm: moving averages with momentum 0.99, biased var."""
    moving_mean, moving_var = np.zeros(elements[0].shape[1]), np.ones(
        elements[0].shape[1])
    for e in elements:
        moving_mean = moving_mean * decay + e.mean(0) * (1 - decay)
        moving_var = moving_var * decay + e.var(0) * (1 - decay)
    return {"mean": moving_mean, "var": moving_var}


def original_popstats(elements):
    """The original popstats.py: the plain average of every batch statistic."""
    return {"mean": np.mean([e.mean(0) for e in elements], axis=0),
            "var": np.mean([e.var(0) for e in elements], axis=0)}


PEERS = {
    "PyTorch update_bn": torch_update_bn,
    "PyTorch BatchNorm running averages": torch_running,
    "fvcore PreciseBN": fvcore_precise_bn,
    "Keras and Flax BatchNorm": keras_flax,
    "original popstats.py": original_popstats,
}

def estimator_of(spec):
    """The estimator written ``spec`` in the docs' table (a name or a call)."""
    if spec.startswith('"'):
        return Estimator(spec.strip('"'))
    return eval(spec, {"Estimator": Estimator})


#: (estimator, statistic role, peer): exact equalities, as in the docs' table
CLAIMS = (
    ('"mean"', "mean", "PyTorch update_bn"),
    ('"mean"', "mean", "original popstats.py"),
    ('"mean"', "var", "original popstats.py"),
    ('"unbiased"', "mean", "PyTorch update_bn"),
    ('"unbiased"', "var", "PyTorch update_bn"),
    ('"weighted"', "mean", "fvcore PreciseBN"),
    ('"pooled"', "mean", "fvcore PreciseBN"),
    ('"pooled"', "var", "fvcore PreciseBN"),
    ('Estimator("ema", momentum=0.1, unbiased=True)', "mean",
     "PyTorch BatchNorm running averages"),
    ('Estimator("ema", momentum=0.1, unbiased=True)', "var",
     "PyTorch BatchNorm running averages"),
    ('Estimator("ema", momentum=0.01)', "mean", "Keras and Flax BatchNorm"),
    ('Estimator("ema", momentum=0.01)', "var", "Keras and Flax BatchNorm"),
)


@pytest.fixture(scope="module")
def estimates():
    """popstats' estimate of the MLP, per estimator of the table (lazily)."""
    x, y = mlp()
    cache = {}

    def get(spec):
        if spec not in cache:
            cache[spec] = popstats.estimate([x], y, [{"x": b} for b in BATCHES],
                                            estimator=estimator_of(spec), mode=MODE)
        return cache[spec]

    return get


def assert_close(actual, expected, rtol=RTOL):
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=0)


@pytest.mark.parametrize(("spec", "role", "peer"), CLAIMS,
                         ids=[f"{s}-{r}-{p}" for s, r, p in CLAIMS])
def test_claim_against_peer_formula(estimates, spec, role, peer):
    stats = estimates(spec)
    for layer in LAYERS:
        expected = PEERS[peer](ELEMENTS[layer])[role]
        assert_close(stats[f"{layer}.{role}"].value, expected)


def test_the_differences_the_docs_name(estimates):
    """What is *not* equal: "mean" of variances vs update_bn (the old docs
    said "PyTorch's momentum=None"), biased vs unbiased running variances."""
    for layer in LAYERS:
        mean_var = estimates('"mean"')[f"{layer}.var"].value
        torch_var = torch_update_bn(ELEMENTS[layer])["var"]
        assert (torch_var / mean_var > 1.05).all()  # several percent apart
        ema = popstats.estimate(*mlp_batches(), estimator=Estimator("ema", 0.1),
                                mode=MODE)[f"{layer}.var"].value
        assert (torch_running(ELEMENTS[layer])["var"] / ema > 1.01).all()


def mlp_batches():
    x, y = mlp()
    return [x], y, [{"x": b} for b in BATCHES]


def table_rows():
    """(estimator, roles, peer) of the rows of the docs' peer table."""
    text = DOCS.read_text()
    start = text.index("Which peer each estimator equals")
    table = text[text.index(".. list-table::", start):]
    table = table[: table.index("\n\n", table.index("* - estimator"))]
    rows = []
    for row in re.split(r"\n   \* - ", table)[1:]:
        cells = [re.sub(r"\s+", " ", c).strip() for c in re.split(r"\n     - ", row)]
        rows.append(cells)
    header, *body = rows
    assert header == ["estimator", "statistic role", "equals exactly",
                      "peer formula", "source"]
    return [(cells[0].strip("`"), cells[1], cells[2].replace("``", ""))
            for cells in body]


def test_docs_table_states_exactly_the_tested_claims():
    documented = set()
    for spec, roles, peer in table_rows():
        for role in roles.split(", "):
            documented.add((spec, role, peer))
    assert documented == set(CLAIMS)


def test_estimator_docstring_no_longer_equates_mean_with_pytorch():
    doc = " ".join(Estimator.__doc__.split())
    assert "PyTorch's ``momentum=None``)" not in doc  # the old, too broad claim
    assert "for variances it is not" in doc
    text = " ".join(DOCS.read_text().split())
    assert "the original ``popstats.py``, PyTorch's ``momentum=None``" not in text


# --------------------------------------------------------------------------
# Against PyTorch itself
# --------------------------------------------------------------------------


def torch_model(torch):
    """The same MLP in PyTorch, float64, with the same weights."""
    tnn = torch.nn
    model = tnn.Sequential(tnn.Linear(3, 4), tnn.BatchNorm1d(4), tnn.Tanh(),
                           tnn.Linear(4, 2), tnn.BatchNorm1d(2)).double()
    with torch.no_grad():
        for i, (w, b, g, c) in ((0, ("W1", "b1", "g1", "c1")),
                                (3, ("W2", "b2", "g2", "c2"))):
            model[i].weight.copy_(torch.from_numpy(W[w].T.copy()))
            model[i].bias.copy_(torch.from_numpy(W[b]))
            model[i + 1].weight.copy_(torch.from_numpy(W[g]))
            model[i + 1].bias.copy_(torch.from_numpy(W[c]))
    return model, {"bn1": model[1], "bn2": model[4]}


def torch_or_skip():
    try:
        import torch
    except ImportError:
        pytest.skip("PyTorch is not installed here (the NumPy transcriptions of "
                    "its formulas are checked above)")
    return torch


def test_pytorch_update_bn(estimates):
    torch = torch_or_skip()
    from torch.optim.swa_utils import update_bn

    model, bns = torch_model(torch)
    update_bn([torch.from_numpy(b) for b in BATCHES], model)
    for layer, bn in bns.items():
        running_mean = bn.running_mean.numpy()
        running_var = bn.running_var.numpy()
        assert_close(estimates('"mean"')[f"{layer}.mean"].value, running_mean)
        assert_close(estimates('"unbiased"')[f"{layer}.mean"].value, running_mean)
        assert_close(estimates('"unbiased"')[f"{layer}.var"].value, running_var)
        # the transcription agrees with PyTorch too
        assert_close(torch_update_bn(ELEMENTS[layer])["var"], running_var)


def test_pytorch_running_averages(estimates):
    torch = torch_or_skip()
    model, bns = torch_model(torch)
    model.train()
    with torch.no_grad():
        for b in BATCHES:
            model(torch.from_numpy(b))
    # the running averages kept while training, by popstats.nn
    x, y = mlp()
    y2, updates, running = nn.running_average_updates(y, momentum=0.1,
                                                      unbiased=True)
    train = pytensor.function([x], y2, updates=updates, mode=MODE)
    for b in BATCHES:
        train(b)
    ema = running.as_statistics()
    estimated = estimates('Estimator("ema", momentum=0.1, unbiased=True)')
    for layer, bn in bns.items():
        for role, buffer in (("mean", bn.running_mean), ("var", bn.running_var)):
            torch_value = buffer.numpy()
            assert_close(estimated[f"{layer}.{role}"].value, torch_value)
            assert_close(running.variables[f"{layer}.{role}"].get_value(),
                         torch_value)
            assert_close(ema[f"{layer}.{role}"].value, torch_value)


# --------------------------------------------------------------------------
# unbiased=True: the estimator
# --------------------------------------------------------------------------


def test_estimator_unbiased_option_repr_equality_hash():
    plain, unbiased = Estimator("ema"), Estimator("ema", unbiased=True)
    assert repr(plain) == "Estimator(name='ema', momentum=0.1)"
    assert repr(unbiased) == "Estimator(name='ema', momentum=0.1, unbiased=True)"
    assert repr(Estimator("pooled")) == "Estimator(name='pooled', momentum=None)"
    assert plain != unbiased and len({plain, unbiased}) == 2
    assert unbiased == Estimator("ema", 0.1, unbiased=np.True_)
    assert Estimator("ema", unbiased=np.True_).unbiased is True
    assert plain == Estimator("ema", momentum=0.1, unbiased=False)
    for e in (plain, unbiased, Estimator("mean")):
        assert eval(repr(e), {"Estimator": Estimator}) == e
    assert unbiased.needs_count and not plain.needs_count


@pytest.mark.parametrize("value", ["yes", 1, 0, None, np.array([True])])
def test_estimator_unbiased_not_a_bool(value):
    with fails("Estimator(unbiased=...)", "True or False", "running_var"):
        Estimator("ema", unbiased=value)


@pytest.mark.parametrize("name", ["mean", "weighted", "pooled", "unbiased"])
def test_estimator_unbiased_only_for_ema(name):
    with fails("Estimator(unbiased=...)", "only 'ema'", repr(name),
               "Estimator('unbiased')", "Estimator('pooled')"):
        Estimator(name, unbiased=True)


def feed_forward(role="var", count=True):
    """x (n, 2) with a marked mean and a variance (or std), counted or not."""
    x = pt.matrix("x", dtype="float64")
    n = x.shape[0] if count else None
    mean = popstats.bn_statistic(x.mean(0), "m", role="mean", group="g", count=n)
    raw = x.var(0) if role == "var" else x.std(0)
    spread = popstats.bn_statistic(raw, "s", role=role, group="g", count=n)
    y = (x - mean) / (spread + 1.0)
    return x, y


def ff_data(sizes=(5, 2, 8, 3)):
    rng = np.random.default_rng(5)
    return [rng.normal([1.0, -3.0], [2.0, 0.5], size=(n, 2)) for n in sizes]


@pytest.mark.parametrize("role", ["var", "std"])
def test_ema_unbiased_per_role(role):
    """A variance enters scaled by m/(m-1); a std by sqrt(m/(m-1)) (the square
    root of the scaled variance, per batch); the mean as it is."""
    x, y = feed_forward(role)
    data = ff_data()
    est = Estimator("ema", momentum=0.3, unbiased=True)
    stats = popstats.estimate([x], y, [{"x": d} for d in data], estimator=est,
                              mode=MODE)
    spread, mean = np.ones(2), np.zeros(2)
    for d in data:
        batch = d.var(0, ddof=1) if role == "var" else d.std(0, ddof=1)
        spread = 0.7 * spread + 0.3 * batch
        mean = 0.7 * mean + 0.3 * d.mean(0)
    assert_close(stats["s"].value, spread)
    assert_close(stats["m"].value, mean)
    assert stats["s"].estimator == est


def test_ema_unbiased_merge_equals_one_pass():
    x, y = feed_forward()
    data = [{"x": d} for d in ff_data()]
    run = popstats.Estimation([x], y, estimator=Estimator("ema", 0.2, unbiased=True),
                              mode=MODE)
    whole = run.finalize(run.run(data))
    merged = run.finalize(run.merge(run.run(data[:1]), run.run(data[1:])))
    assert_close(merged["s"].value, whole["s"].value)


def test_ema_unbiased_needs_a_count():
    x, y = feed_forward(count=False)
    data = [{"x": d} for d in ff_data()]
    with fails("estimate(estimator=...)", "'ema'", "'s'", "count="):
        popstats.estimate([x], y, data, estimator=Estimator("ema", unbiased=True),
                          mode=MODE)
    # without the correction no count is needed, and means never need one
    # (batches of 2 to 8 rows: the size warnings may say so; not this test's)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", popstats.PopstatsWarning)
        popstats.estimate([x], y, data, estimator=Estimator("ema"), mode=MODE)
        popstats.estimate([x], y, data, estimator={
            "m": Estimator("ema", unbiased=True), "*": "mean"}, mode=MODE)


def test_ema_unbiased_batch_of_one_element():
    x, y = feed_forward()
    with fails("estimate(batches=...)", "'ema' (unbiased)", "count is 1",
               "batch 1", "at least 2 elements"):
        popstats.estimate([x], y, [{"x": d} for d in ff_data((3, 1))],
                          estimator=Estimator("ema", unbiased=True), mode=MODE)


def masked_scan():
    """Per-step batch norm over a masked (time, batch, 2) sequence."""
    x, mask = pt.tensor3("x", dtype="float64"), pt.matrix("mask", dtype="float64")
    gamma, beta = nn.bn_params(2, "rnn", dtype="float64")

    def step(xt, mt, g, b):
        return nn.batch_norm(xt, axes=0, gamma=g, beta=b, mask=mt, label="rnn").output

    y = scan(step, sequences=[x, mask], non_sequences=[gamma, beta])
    return x, mask, y


def ragged_batches():
    rng = np.random.default_rng(8)
    out = []
    for lengths in ([4, 3, 2, 4], [2, 3, 3], [5, 5, 2]):
        t = max(lengths)
        m = (np.arange(t)[:, None] < np.array(lengths)).astype(float)
        out.append({"x": rng.normal(1.0, 2.0, (t, len(lengths), 2)), "mask": m})
    return out


def step_elements(batch, t):
    return batch["x"][t][batch["mask"][t] > 0]


@pytest.mark.parametrize("time", ["step", "pooled"])
def test_ema_unbiased_in_a_loop(time):
    """Per step: each step's own count; pooled over time: the count of all
    real elements of the batch (PyTorch's BatchNorm over time and batch)."""
    x, mask, y = masked_scan()
    batches = ragged_batches()
    est = Estimator("ema", momentum=0.4, unbiased=True)
    stats = popstats.estimate([x, mask], y, batches, estimator=est, time=time,
                              mode=MODE)
    if time == "pooled":
        var = np.ones(2)
        for b in batches:
            rows = np.concatenate([step_elements(b, t) for t in range(len(b["x"]))])
            var = 0.6 * var + 0.4 * rows.var(0, ddof=1)
        assert_close(stats["rnn.var"].value, var)
        return
    var = np.ones((5, 2))
    for b in batches:
        for t in range(len(b["x"])):
            var[t] = 0.6 * var[t] + 0.4 * step_elements(b, t).var(0, ddof=1)
    assert_close(stats["rnn.var"].value, var)


@pytest.mark.parametrize("unbiased", [False, True])
def test_ema_leaves_steps_a_mask_empties_unchanged(unbiased):
    """Padded to a fixed length, a step where the mask leaves no element has
    count 0: it is not reached, so its running value does not decay."""
    x, mask, y = masked_scan()
    batches = ragged_batches()
    for b in batches:  # pad every batch to 6 steps
        t = len(b["x"])
        b["x"] = np.concatenate([b["x"], np.ones((6 - t, *b["x"].shape[1:]))])
        b["mask"] = np.concatenate([b["mask"], np.zeros((6 - t, b["mask"].shape[1]))])
    est = Estimator("ema", momentum=0.4, unbiased=unbiased)
    stats = popstats.estimate([x, mask], y, batches, estimator=est, mode=MODE)
    var, cov = np.ones((6, 2)), np.zeros(6, int)
    for b in batches:
        for t in range(6):
            rows = step_elements(b, t)
            if len(rows):
                var[t] = 0.6 * var[t] + 0.4 * rows.var(0, ddof=int(unbiased))
                cov[t] += 1
    np.testing.assert_array_equal(stats["rnn.var"].coverage, cov)
    assert cov[-1] == 0
    assert_close(stats["rnn.var"].value[:5], var[:5])
    assert_close(stats["rnn.var"].value[5], var[4])  # filled from the last reached


# --------------------------------------------------------------------------
# unbiased=True: running_average_updates
# --------------------------------------------------------------------------


def test_running_average_updates_unbiased_formula():
    x, y = mlp()
    y2, updates, running = nn.running_average_updates(y, momentum=0.1,
                                                      unbiased=True)
    assert running.unbiased is True and "unbiased=True" in repr(running)
    train = pytensor.function([x], y2, updates=updates, mode=MODE)
    for b in BATCHES:
        train(b)
    for layer in LAYERS:
        expected = torch_running(ELEMENTS[layer])
        for role in ("mean", "var"):
            assert_close(running.variables[f"{layer}.{role}"].get_value(),
                         expected[role])
    stats = running.as_statistics()
    assert stats["bn1.var"].estimator == Estimator("ema", 0.1, unbiased=True)
    # the default stays the biased variance (Keras and Flax, momentum 1 - 0.99)
    _, updates, biased = nn.running_average_updates(y, momentum=0.01)
    assert not biased.unbiased and "unbiased" not in repr(biased)
    train = pytensor.function([x], [], updates=updates, mode=MODE)
    for b in BATCHES:
        train(b)
    for layer in LAYERS:
        assert_close(biased.variables[f"{layer}.var"].get_value(),
                     keras_flax(ELEMENTS[layer])["var"])


def test_running_average_updates_unbiased_in_a_loop():
    x, mask, y = masked_scan()
    y2, updates, running = nn.running_average_updates(y, momentum=0.5, max_steps=6,
                                                      unbiased=True)
    train = pytensor.function([x, mask], y2, updates=updates, mode=MODE)
    var = np.ones((6, 2))
    for b in ragged_batches():
        train(b["x"], b["mask"])
        for t in range(len(b["x"])):
            var[t] = 0.5 * var[t] + 0.5 * step_elements(b, t).var(0, ddof=1)
    assert_close(running.variables["rnn.var"].get_value(), var)


def test_running_average_updates_unbiased_std():
    x = pt.tensor("x", shape=(None, 2), dtype="float64")
    n = x.shape[0]
    mean = popstats.bn_statistic(x.mean(0), "m", role="mean", group="g", count=n)
    std = popstats.bn_statistic(x.std(0), "s", role="std", group="g", count=n)
    y2, updates, running = nn.running_average_updates((x - mean) / std,
                                                      momentum=0.5, unbiased=True)
    train = pytensor.function([x], y2, updates=updates, mode=MODE)
    expected = np.ones(2)
    for d in ff_data():
        train(d)
        expected = 0.5 * expected + 0.5 * d.std(0, ddof=1)
    assert_close(running.variables["s"].get_value(), expected)


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_running_average_updates_unbiased_not_a_bool(value):
    _, y = mlp()
    with fails("running_average_updates(unbiased=...)", "True or False",
               repr(value) if isinstance(value, str) else str(value)):
        nn.running_average_updates(y, unbiased=value)


def test_running_average_updates_unbiased_needs_a_count():
    x = pt.tensor("x", shape=(None, 2), dtype="float64")
    var = popstats.bn_statistic(x.var(0), "v", role="var")
    mean = popstats.bn_statistic(x.mean(0), "m", role="mean")
    y = (x - mean) / pt.sqrt(var + 1.0)
    with fails("running_average_updates(unbiased=True)", "'v'", "no count",
               "count=", "unbiased=False"):
        nn.running_average_updates(y, unbiased=True)
    nn.running_average_updates(y)  # fine without the correction


def test_running_average_updates_unbiased_batch_of_one():
    x, y = mlp()
    y2, updates, running = nn.running_average_updates(y, unbiased=True)
    train = pytensor.function([x], y2, updates=updates, mode=MODE)
    train(BATCHES[0][:1])
    with fails("RunningAverages.as_statistics()", "not finite", "m=1",
               "at least 2"):
        running.as_statistics()


# --------------------------------------------------------------------------
# Persistence keeps the option
# --------------------------------------------------------------------------


def test_saved_statistics_keep_unbiased(tmp_path):
    x, y = mlp()
    est = Estimator("ema", momentum=0.1, unbiased=True)
    stats = popstats.estimate([x], y, [{"x": b} for b in BATCHES[:3]],
                              estimator={"bn1.*": est, "*": "pooled"}, mode=MODE)
    stats.save(tmp_path / "s.npz")
    loaded = popstats.load(tmp_path / "s.npz")
    assert loaded["bn1.var"].estimator == est
    assert loaded["bn2.var"].estimator == Estimator("pooled")


# --------------------------------------------------------------------------
# Guard: the tolerance is meaningful
# --------------------------------------------------------------------------


def test_batches_make_the_corrections_large():
    """With these batch sizes the biased and unbiased conventions are far
    apart, so equality to 1e-12 tells them apart."""
    factors = [n / (n - 1) for n in SIZES]
    assert max(factors) - 1 > 0.1 and math.isclose(min(factors), 16 / 15)


# --------------------------------------------------------------------------
# benchmarks/peers.py's GPU options and benchmarks/gpu_peers.py (issue 23):
# in subprocesses (peers.py sets floatX float32 and thread variables when
# imported), on the CPU
# --------------------------------------------------------------------------

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"

PEERS_OPTIONS = r"""
import json, sys
sys.argv = ["peers.py"]
import peers
parser = peers.build_parser()
given = parser.parse_args(["--modes", "JAX", "--accumulate", "host,graph",
                           "--device", "cuda", "--torch-tf32", "off",
                           "--float64-reference", "--reference-cache", "cache"])
default = parser.parse_args([])
out = {"given": [given.accumulate, given.device, given.torch_tf32,
                 given.float64_reference, given.reference_cache],
       "default": [default.accumulate, default.device, default.torch_tf32,
                   default.float64_reference, default.reference_cache]}
try:
    parser.parse_args(["--accumulate", "host,device"])
except SystemExit as exc:
    out["bad accumulate"] = exc.code
given.modes = ["JAX"]
try:  # no GPU here: --device cuda stops before measuring anything
    peers.check_device(parser, given)
    out["cuda"] = "went on"
except SystemExit as exc:
    out["cuda"] = exc.code

# the float64 NumPy references against popstats on tiny models (float32)
args = parser.parse_args(["--quick"])
args.mlp_in, args.mlp_width, args.mlp_batch = 5, 6, 7
args.conv_size, args.conv_channels, args.conv_batch = 4, "2,3", 3
args.rnn_in, args.rnn_hidden, args.rnn_steps, args.rnn_batch = 3, 4, 3, 5
diffs = {}
for name in peers.MODELS:
    model = peers.make_model(name, args)
    x, y = model.graph()
    arrays = model.batches(2)
    stats = peers.popstats.estimate([x], y, [{"x": a} for a in arrays],
                                    mode="FAST_COMPILE", progress=False)
    reference = peers.float64_reference(model, arrays, None)
    diffs[name] = peers.float64_diffs(model, stats, None, reference)[0]
out["f64"] = diffs
print(json.dumps(out))
"""


def _bench(*args: str) -> subprocess.CompletedProcess:
    root = str(BENCH.parent)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(BENCH), root]))
    return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          cwd=root, env=env, timeout=300)


def test_peers_gpu_options_parse_and_float64_references():
    done = _bench("-c", PEERS_OPTIONS)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["given"] == [["host", "graph"], "cuda", "off", True, "cache"]
    assert out["default"] == [["host"], "cpu", "auto", False, None]
    assert out["bad accumulate"] == 2
    assert out["cuda"] == 2 and "sees no GPU" in done.stderr
    # float32 rounding: the NumPy transcriptions compute what popstats does
    assert set(out["f64"]) == {"mlp", "conv", "rnn", "lstm"}
    assert max(out["f64"].values()) < 1e-3, out["f64"]


def test_gpu_peers_dry_run_lists_the_runs():
    done = _bench(str(BENCH / "gpu_peers.py"), "--dry-run")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "highest-models", "highest-large-mlp", "default-models", "default-large-mlp"]
    for line in lines:
        for option in ("--modes JAX", "--accumulate host,graph", "--device cuda",
                       "--clock wall", "--float64-reference"):
            assert option in line
    assert "JAX_DEFAULT_MATMUL_PRECISION=highest" in lines[0]
    assert "--torch-tf32 off" in lines[0] and "--torch-tf32 on" in lines[2]
    assert "JAX_DEFAULT_MATMUL_PRECISION unset" in lines[2]
    assert "--mlp-width 4096 --mlp-layers 4 --mlp-batch 2048 --mlp-in 1024" in lines[1]
    quick = _bench(str(BENCH / "gpu_peers.py"), "--dry-run", "--quick", "--allow-cpu",
                   "--sets", "large-mlp", "--precisions", "default")
    assert quick.returncode == 0, quick.stderr
    (line,) = quick.stdout.strip().splitlines()
    assert "--device cpu" in line and line.endswith("--quick")
    bad = _bench(str(BENCH / "gpu_peers.py"), "--dry-run", "--precisions", "tf16")
    assert bad.returncode == 2 and "--precisions" in bad.stderr


# --------------------------------------------------------------------------
# benchmarks/ptml_peers.py (issue 20): a pytensor-ml conv net against
# PyTorch's update_bn, PyTorch in the interpreter POPSTATS_TORCH_PYTHON names
# --------------------------------------------------------------------------


def test_ptml_peers_quick_runs_and_values_agree(tmp_path):
    pytest.importorskip("pytensor_ml")
    figures = tmp_path / "ptml.json"
    done = _bench(str(BENCH / "ptml_peers.py"), "--quick", "--modes", "FAST_COMPILE",
                  "--repeats", "1", "--json", str(figures))
    assert done.returncode == 0, done.stderr
    assert "popstats / forward (best)" in done.stdout
    out = json.loads(figures.read_text())
    (row,) = out["rows"]
    assert row["n_stats"] == 4 and row["pop_s"] > 0 and row["forward_s"] > 0
    if out["torch"] is None:  # no interpreter with torch: its columns read n/a
        assert row["torch_s"] is None
        assert "POPSTATS_TORCH_PYTHON" in out["torch_missing"]
        assert "PyTorch: n/a" in done.stdout
        return
    assert row["torch_s"] > 0
    # update_bn's values: float32 rounding apart (unbiased, or biased x m/(m-1)),
    # and the biased ones uncorrected visibly off (about 1/m)
    for key in ("unbiased", "biased", "estimate", "forward", "predict"):
        assert row[key] < 1e-4, (key, row[key])
    assert row["biased_raw"] > 1e-3


def test_ptml_peers_names_a_missing_torch_python():
    pytest.importorskip("pytensor_ml")
    done = _bench(str(BENCH / "ptml_peers.py"), "--check", "--torch-python",
                  "/no/such/python")
    assert done.returncode == 2 and "/no/such/python does not exist" in done.stderr
