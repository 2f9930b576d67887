"""The batch-independence analysis, rule by rule, and check_batch_independence.

Each rule has a graph that mixes examples (it must be named in the
``PopstatsWarning`` of ``rewrite``) and a neighbour that does not (no
warning: pytest turns warnings into errors). Population values come from
``fake_statistics`` (zeros, nothing compiled) except where numbers matter.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from independence_models import fake_statistics
from shared import MODE

import popstats


def mixing(outputs, **kwargs) -> list[str]:
    """The operations ``rewrite`` warns about (one line each)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        popstats.rewrite(outputs, fake_statistics(outputs), **kwargs)
    found = [w for w in caught if issubclass(w.category, popstats.PopstatsWarning)]
    assert len(found) <= 1
    if not found:
        return []
    return [line[4:] for line in str(found[0].message).splitlines()
            if line.startswith("  - ")]


def marked_bn(h, label, axes=0):
    mean = popstats.bn_statistic(h.mean(axis=axes), label=f"{label}.mean")
    var = popstats.bn_statistic(h.var(axis=axes), label=f"{label}.var")
    return (h - mean) / pt.sqrt(var + 1e-5)


# --------------------------------------------------------------------------
# the issue's example


def test_issue_example_warns_names_the_variance_and_fails_on_data():
    x = pt.matrix("x")
    a = x * 2.0
    m = popstats.bn_statistic(a.mean(axis=0), label="bn.mean")
    y = (a - m) / pt.sqrt(a.var(axis=0) + 1e-5)  # the variance is not marked
    rng = np.random.default_rng(0)
    batches = [{"x": rng.normal(size=(6, 3))} for _ in range(2)]
    with pytest.warns(popstats.PopstatsWarning) as record:
        y_inf = popstats.get_inference_graph([x], y, batches, mode=MODE)
    text = str(record[0].message)
    assert text.startswith("get_inference_graph: 1 operation(s)")
    assert "<graph>: Sum{axis=0} reduces over the batch axis of input 'x'" in text
    assert record[0].filename == __file__  # points at the caller
    change = popstats.describe_rewrite(y, y_inf)
    assert not change.ok and change.leftover == ()
    assert change.mixing and "Sum" in change.mixing[0]
    assert "Operations still mixing examples" in str(change)
    with pytest.raises(popstats.PopstatsError, match="depend on other examples"):
        popstats.check_batch_independence([x], y_inf, batches[0], mode=MODE)


def test_issue_example_marked_is_clean_and_proven():
    x = pt.matrix("x")
    y = marked_bn(x * 2.0, "bn")
    batches = [{"x": np.random.default_rng(1).normal(size=(6, 3))}]
    y_inf = popstats.get_inference_graph([x], y, batches, mode=MODE)
    assert popstats.describe_rewrite(y, y_inf).ok
    assert popstats.check_batch_independence([x], y_inf, batches[0], mode=MODE) < 1e-12


# --------------------------------------------------------------------------
# rules


def test_reduction_over_batch_axis_flagged_over_features_not():
    x = pt.matrix("x")
    h = marked_bn(x, "bn")
    assert mixing(h - h.max(axis=1, keepdims=True)) == []
    found = mixing(h - h.max(axis=0))
    assert len(found) == 1 and "Max" in found[0] and "reduces over" in found[0]
    assert mixing(h + pt.argmax(h, axis=0))[0].startswith("<graph>: Argmax")


def test_aggregates_mix_only_when_used_per_example():
    x = pt.matrix("x")
    h = marked_bn(x, "bn")
    loss = (h**2).sum()  # a loss or an accuracy: an output over the batch
    assert mixing([h, loss, h.max(axis=0), h[0]]) == []
    assert "reduces over" in mixing(h / loss)[0]
    assert "single examples" in mixing(h - h[0])[0]
    # in a loop: a stacked output passes the aggregate on, a state mixes
    x3 = pt.tensor3("x3")
    sums = pytensor.scan(lambda xt: marked_bn(xt, "s").sum(axis=0), sequences=[x3],
                         return_updates=False)
    assert mixing(sums) == []
    assert "scan_fn: Sum" in mixing(x3 - sums[:, None, :])[0]
    total = pytensor.scan(lambda xt, s: s + marked_bn(xt, "s").sum(axis=0),
                          sequences=[x3], outputs_info=[pt.zeros(x3.shape[2])],
                          return_updates=False)
    assert "scan_fn: Sum" in mixing(total)[0]


def test_dot_contracting_batch_flagged_over_features_not():
    x = pt.matrix("x")
    w = pytensor.shared(np.ones((3, 3)), name="W")
    h = marked_bn(pt.dot(x, w), "bn")
    assert mixing(pt.dot(h, w)) == []
    assert mixing(h @ w) == []  # matmul: a Blockwise
    gram = pt.dot(h.T, h)  # (features, features): sums over examples
    assert mixing(gram) == []  # an aggregate output, like a loss
    found = mixing(pt.dot(h, gram))  # used per example: mixes
    assert len(found) == 1 and "contracts" in found[0]
    assert "contracts" in mixing(h @ pt.matmul(h.T, h))[0]
    pairs = mixing(pt.dot(h, h.T))  # example i against example j
    assert pairs and "two different axes" in pairs[0]


def test_tensordot_folds_are_followed():
    x = pt.tensor3("x")  # (time, batch, features)
    w = pytensor.shared(np.ones((3, 2)), name="W")
    h = marked_bn(pt.dot(x, w), "bn", axes=(0, 1))  # reshape, dot, reshape back
    assert mixing(pt.dot(h, pytensor.shared(np.ones((2, 2)), name="V"))) == []
    # the statistics reduce over time and batch alike (candidates 0 and 1): a
    # pooling over one of them is not taken for mixing, over both it is
    assert mixing(h - h.mean(axis=0)) == []
    assert "reduces over" in mixing(h - h.mean(axis=(0, 1)))[0]
    assert "reduces over" in mixing(h - h.mean(axis=0), batch_axes={"x": 0})[0]


def test_reshape_folding_batch_flagged():
    x = pt.tensor("x", shape=(None, 3))
    h = marked_bn(x, "bn")
    assert mixing(h.reshape((h.shape[0], 1, h.shape[1]))) == []
    assert mixing(h.reshape((-1, 3))) == []  # the batch axis is the -1
    swapped = mixing(h.reshape((h.shape[1], h.shape[0])))
    assert swapped and "a reshape whose sizes do not tell" in swapped[0]
    assert "reshape" in mixing(h.reshape((2, -1)))[0]
    flat = mixing(h.flatten().sum() + h)  # folded, then reduced
    assert flat and "Sum" in flat[0]


def test_sort_cumsum_softmax_concatenate_subtensor():
    x = pt.matrix("x")
    h = marked_bn(x, "bn")
    assert mixing(pt.special.softmax(h, axis=1)) == []
    assert "works along" in mixing(pt.special.softmax(h, axis=0))[0]
    assert "works along" in mixing(pt.sort(h, axis=0))[0]
    assert mixing(pt.sort(h, axis=1)) == []
    assert "works along" in mixing(pt.cumsum(h, axis=0))[0]
    assert mixing(pt.concatenate([h, h * 2], axis=1)) == []
    assert "concatenates" in mixing(pt.concatenate([h, h], axis=0))[0]
    assert mixing(h[:, 1:] + h[:, :1]) == []
    assert "single examples" in mixing(h - h[0])[0]
    assert "reorders" in mixing(h[::-1])[0]


def test_scan_sequence_shifts_the_batch_axis():
    x = pt.tensor3("x")  # (time, batch, features): the loop slices axis 0

    def step(xt, feature_sum):
        h = marked_bn(xt, "step")  # over inner axis 0: batch axis 1 of x
        return [h, feature_sum(h)]

    def build(feature_sum):
        outs = pytensor.scan(lambda xt: step(xt, feature_sum), sequences=[x],
                             return_updates=False)
        return outs[0] + outs[1]

    assert mixing(build(lambda h: h.sum(axis=1, keepdims=True))) == []
    found = mixing(build(lambda h: h.sum(axis=0)))
    assert len(found) == 1 and found[0].startswith("scan_fn: Sum{axis=0}")
    assert "axis 1" in found[0]


def test_nested_loop_path_and_state():
    x = pt.tensor4("x")  # (words, characters, batch, features)

    def build(extra):
        def char_step(c, h):
            m = popstats.bn_statistic(c.mean(axis=0), label="char.mean")
            return pt.tanh(c - m + h + extra(c))

        def word_step(w):
            hs = pytensor.scan(char_step, sequences=[w], outputs_info=[
                pt.zeros_like(w[0])], return_updates=False)
            return hs[-1]

        return pytensor.scan(word_step, sequences=[x], return_updates=False)

    assert mixing(build(lambda c: 0.0)) == []
    found = mixing(build(lambda c: c.var(axis=0)))
    assert found and found[0].startswith("scan_fn/scan_fn: Sum")


def test_loop_over_the_batch_axis():
    x = pt.matrix("x")
    h = marked_bn(x, "bn")
    per_example = pytensor.scan(lambda r: pt.tanh(r).sum(), sequences=[h],
                                return_updates=False)
    assert mixing(per_example) == []  # a map: outputs stack the examples
    running = pytensor.scan(lambda r, s: s + r, sequences=[h],
                            outputs_info=[pt.zeros_like(h[0])], return_updates=False)
    assert "from example to example" in mixing(running)[0]


def test_batch_axis_from_statistics_default_and_given():
    x, mask = pt.tensor3("x"), pt.matrix("mask")  # x: (batch, height, features)
    h = marked_bn(x, "conv", axes=(0, 1))  # candidates 0 and 1
    pooled = h.mean(axis=1, keepdims=True)  # over one candidate only
    assert mixing(h - pooled) == []
    assert mixing(h - h.mean(axis=(0, 1))) != []  # over every candidate
    assert mixing(h - pooled, batch_axes={"x": 1}) != []
    assert mixing(h - h.mean(axis=0), batch_axes={x: 1}) == []
    # an input no statistic reduces over: axis 0 by default
    y = h * mask[:, :, None]
    assert mixing(y) == []
    assert "'mask' (axis 0)" in mixing(y + mask.sum(axis=0)[None, :, None])[0]
    assert mixing(y + mask.sum(axis=0)[None, :, None], batch_axes={"mask": None}) == []


def test_scalar_inputs_and_population_variables_are_not_tracked():
    x, n = pt.matrix("x"), pt.scalar("n")
    h = marked_bn(x, "bn")
    # the feature size is no aggregate; the batch size as a value is (below)
    assert mixing(h * n + h.shape[1]) == []


def test_bad_batch_axes_are_refused():
    x = pt.matrix("x")
    h = marked_bn(x, "bn")
    stats = fake_statistics(h)
    with pytest.raises(popstats.PopstatsError, match=r"rewrite\(batch_axes=\.\.\.\): "
                       r"key 'y' \(str\) names no input"):
        popstats.rewrite(h, stats, batch_axes={"y": 0})
    with pytest.raises(popstats.PopstatsError, match="must be an int in"):
        popstats.rewrite(h, stats, batch_axes={"x": 2})
    with pytest.raises(popstats.PopstatsError, match="expected a dict"):
        popstats.rewrite(h, stats, batch_axes=[0])


def test_user_graph_unchanged_and_frozen_inner_graphs_read():
    x = pt.tensor3("x")
    outs = pytensor.scan(lambda xt: marked_bn(xt, "s"), sequences=[x],
                         return_updates=False)
    before = pytensor.dprint(outs, file="str")
    assert mixing(outs) == []
    assert pytensor.dprint(outs, file="str") == before


# --------------------------------------------------------------------------
# check_batch_independence


def test_check_batch_independence_passes_scalars_whole_and_uses_batch_axes():
    x, n = pt.tensor3("x"), pt.scalar("n")  # x: (time, batch, features)
    y = pt.tanh(x * n).cumsum(axis=0)
    batch = {"x": np.random.default_rng(2).normal(size=(3, 4, 2)), "n": 2.0}
    assert popstats.check_batch_independence(
        [x, n], y, batch, batch_axes={"x": 1}, mode=MODE) < 1e-12
    with pytest.raises(popstats.PopstatsError, match="output 0"):
        popstats.check_batch_independence([x, n], y, batch, mode=MODE)  # axis 0


def test_check_batch_independence_sees_an_output_without_batch_axis():
    x = pt.matrix("x")
    batch = {"x": np.arange(8.0).reshape(4, 2)}
    assert popstats.check_batch_independence(
        [x], [x * 1.0, pt.ones(3)], batch, mode=MODE) == 0.0
    with pytest.raises(popstats.PopstatsError, match=r"output 1: .*differs"):
        popstats.check_batch_independence([x], [x * 1.0, x.sum()], batch, mode=MODE)
    with pytest.raises(popstats.PopstatsError, match=r"output 0: shape"):
        popstats.check_batch_independence([x], x.flatten(), batch, mode=MODE)


def test_check_batch_independence_sees_a_permutation():
    x = pt.matrix("x")
    batch = {"x": np.arange(8.0).reshape(4, 2)}  # sorted already
    # each example alone equals its row, but the batch permuted does not
    with pytest.raises(popstats.PopstatsError, match="permuted batch"):
        popstats.check_batch_independence([x], pt.sort(x, axis=0), batch, mode=MODE)


def test_check_batch_independence_refuses_bad_arguments():
    x = pt.matrix("x")
    call = r"check_batch_independence\("
    with pytest.raises(popstats.PopstatsError, match=call + r"inputs=\.\.\.\)"):
        popstats.check_batch_independence([x * 2], x, {"x": np.ones((2, 2))})
    with pytest.raises(popstats.PopstatsError, match=call + r"batch=\.\.\.\): the "
                       r"batch lacks"):
        popstats.check_batch_independence([x], x, {"y": np.ones((2, 2))})
    with pytest.raises(popstats.PopstatsError,
                       match=call + r"batch=\.\.\.\): expected"):
        popstats.check_batch_independence([x], x, 3)
    with pytest.raises(popstats.PopstatsError, match="at least 2"):
        popstats.check_batch_independence([x], x, {"x": np.ones((1, 2))})
    with pytest.raises(popstats.PopstatsError, match=call + r"rtol"):
        popstats.check_batch_independence([x], x, {"x": np.ones((2, 2))}, rtol=-1)


def test_split_along_features_followed_along_batch_mixes():
    x = pt.matrix("x")
    h = marked_bn(x, "bn")
    a, b = pt.split(h, [1, 2], n_splits=2, axis=1)
    assert mixing(a + b[:, :1]) == []
    c, d = pt.split(h, [1, 1], n_splits=2, axis=0)
    assert "splits" in mixing(c + d)[0]


def test_a_fold_by_minus_one_and_back_is_followed():
    # im2col-style: (batch, t, f) folded to (-1, f) for a product, then split
    # back by the sizes of the unfolded value: the batch axis is followed
    x = pt.tensor3("x")
    w = pytensor.shared(np.ones((3, 5)), name="w")
    h = marked_bn(x, "bn", axes=(0, 1))
    flat = h.reshape((-1, h.shape[2]))
    out = pt.dot(flat, w).reshape((h.shape[0], h.shape[1], 5))
    assert mixing(out) == []
    # split back with the sizes in another order: the batch lands elsewhere
    wrong = pt.dot(flat, w).reshape((h.shape[1], h.shape[0], 5))
    assert "a reshape whose sizes do not tell" in mixing(wrong)[0]


@pytest.mark.parametrize("mode", ["constant", "edge", "reflect", "symmetric", "wrap"])
def test_padding_the_feature_axes_keeps_examples_padding_the_batch_axis_mixes(mode):
    """PyTensor's Pad by what it means (pytensor-ml's Conv2D(padding="same")):
    examples stay put along an axis padded by 0; the batch axis padded moves
    them, which check_batch_independence confirms on data."""
    x = pt.tensor4("x")
    h = marked_bn(x, "bn")
    assert mixing(pt.pad(h, ((0, 0), (1, 2), (2, 1), (0, 0)), mode=mode)) == []
    found = mixing(pt.pad(h, ((1, 0), (0, 0), (0, 0), (0, 0)), mode=mode))
    assert len(found) == 1 and "pads (moves the examples along)" in found[0]
    # a statistic mode (reads means along the padded axes) is not trusted
    # by meaning: its body is followed, and it is flagged
    assert mixing(pt.pad(h, ((0, 0), (1, 1), (0, 0), (0, 0)), mode="mean"))
    if mode != "reflect":
        return
    # data confirms the verdict (once: each mode costs a compile). PyTensor
    # 3.0 builds Pad as OpFromGraphs, whose inner graphs it compiles in its
    # default mode whatever the outer function's: MODE for those too (most
    # of the test's time on 3.0 otherwise)
    rng = np.random.default_rng(0)
    batch = {"x": rng.normal(size=(5, 3, 3, 2))}
    stats = popstats.estimate([x], h, [batch], mode=MODE, progress=False)
    kept = popstats.rewrite(pt.pad(h, ((0, 0), (1, 1), (1, 1), (0, 0)), mode=mode),
                            stats)
    with pytensor.config.change_flags(mode=MODE):
        assert popstats.check_batch_independence([x], kept, batch, mode=MODE) == 0.0


# --------------------------------------------------------------------------
# issue 28: shape arithmetic, not patterns (each of these was a false alarm)

PY = pytensor.compile.Mode(linker="py", optimizer="fast_compile")


def _ids_lookup(h, ids, how):
    table = pytensor.shared(np.arange(21.0).reshape(7, 3), name="E")
    found = table[ids] if how == "index" else pt.take(table, ids, axis=0)
    return h[:, :3] * found


FOLLOWED = {
    "repeat": lambda h, ids: pt.repeat(h, 2, axis=1),
    "tile": lambda h, ids: pt.tile(h, (1, 2)),
    "broadcast_reshape": lambda h, ids: pt.broadcast_to(
        h[:, None, :], (h.shape[0], 2, 4)).reshape((h.shape[0], 8)),
    "reshape_flatten": lambda h, ids: h.reshape((h.shape[0], 2, 2)).flatten(2),
    "split_dims": lambda h, ids: pt.split_dims(h, (2, 2), axis=1),
    "join_dims": lambda h, ids: pt.join_dims(
        h.reshape((h.shape[0], 2, 2)), start_axis=1, n_axes=2),
    "split_dims_batch": lambda h, ids: pt.join_dims(
        pt.split_dims(h.T, (h.shape[0],), axis=1), start_axis=1, n_axes=1).T,
    "embedding_index": lambda h, ids: _ids_lookup(h, ids, "index"),
    "embedding_take": lambda h, ids: _ids_lookup(h, ids, "take"),
}


@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("name", sorted(FOLLOWED))
def test_issue_28_shape_arithmetic_is_followed_and_proven(name, static):
    """No warning, describe_rewrite ok, and the data agree (difference 0)."""
    x = pt.tensor("x", shape=(None, 4) if static else (None, None))
    ids = pt.lvector("ids")
    y = FOLLOWED[name](marked_bn(x, "bn"), ids)
    inputs = [v for v in (x, ids) if v in pytensor.graph.graph_inputs([y])]
    assert mixing(y) == []
    inference = popstats.rewrite(y, fake_statistics(y, fill=1.0, size=4))
    assert popstats.describe_rewrite(y, inference).ok
    batch = {"x": np.random.default_rng(0).normal(size=(3, 4)), "ids": [4, 0, 6]}
    batch = {v.name: batch[v.name] for v in inputs}
    assert popstats.check_batch_independence(inputs, inference, batch, mode=PY) == 0.0
    # the same with the batch mean subtracted: flagged as mixing
    assert "reduces over the batch axis" in mixing(y - y.mean(axis=0))[0]


class _Twice(pytensor.graph.op.Op):
    """An operation the analysis does not know (it is per example)."""

    def make_node(self, x):
        return pytensor.graph.basic.Apply(self, [x], [x.type()])

    def perform(self, node, inputs, outputs):
        outputs[0][0] = 2.0 * inputs[0]


def test_two_kinds_of_message_unknown_is_softer_than_mixing():
    x = pt.matrix("x")
    h = marked_bn(x, "bn")
    unknown = _Twice()(h)
    with pytest.warns(popstats.PopstatsWarning) as record:
        inference = popstats.rewrite(unknown, fake_statistics(unknown, 1.0, 2))
    text = str(record[0].message)
    assert text.startswith("rewrite: the analysis could not follow 1 operation(s)")
    assert "they may or may not mix examples" in text
    line = ("  - <graph>: could not follow _Twice (an operation the rules do not "
            "know) on the batch axis of input 'x' (axis 0)")
    assert line in text.splitlines()
    assert ("Run popstats.check_batch_independence(inputs, outputs, batch) to "
            "check on data") in text
    assert "still mix" not in text
    change = popstats.describe_rewrite(unknown, inference)
    assert not change.ok and change.mixing == (line[4:],)
    # the data decide: this one is per example
    batch = {"x": np.random.default_rng(0).normal(size=(3, 2))}
    assert popstats.check_batch_independence([x], inference, batch, mode=PY) == 0.0
    # with an operation that mixes too: that one first, then the other
    both = _Twice()(h) + (h - h.mean(axis=0))
    with pytest.warns(popstats.PopstatsWarning) as record:
        popstats.rewrite(both, fake_statistics(both))
    text = str(record[0].message)
    assert text.startswith("rewrite: 1 operation(s) of the inference graph still "
                           "mix the examples of a batch")
    assert "Besides, the analysis could not follow 1 operation(s)" in text
    lines = [line for line in text.splitlines() if line.startswith("  - ")]
    assert "reduces over the batch axis" in lines[0]
    assert ": could not follow _Twice" in lines[1]


# --------------------------------------------------------------------------
# issue 28: the analysis and the data check agree; the check knows the axes


def _inference(y, x, batch):
    """``y`` rewritten with statistics estimated on ``batch``, quietly."""
    stats = popstats.estimate([x], y, [batch], mode=MODE, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", popstats.PopstatsWarning)
        return popstats.rewrite(y, stats)


def _agree(y, x, batch):
    """The analysis reports it and the data check fails it (both say so)."""
    found = mixing(y)
    with pytest.raises(popstats.PopstatsError, match="depend on other examples"):
        popstats.check_batch_independence([x], _inference(y, x, batch), batch,
                                          mode=MODE)
    return found


def test_batch_size_as_a_value_mixes_examples():
    x = pt.matrix("x")
    h = marked_bn(x, "bn")
    batch = {"x": np.random.default_rng(0).normal(size=(4, 3))}
    found = _agree(h / h.shape[0], x, batch)
    assert len(found) == 1 and "the batch size as a value" in found[0]
    assert "the batch size as a value" in _agree(
        h * pt.cast(x.shape[0], "float64"), x, batch)[0]
    # as a shape it is no data: no warning, and the data check passes
    for y in (h + pt.zeros((h.shape[0], 3)), (h * 2).reshape((h.shape[0], 3)),
              h.mean(1) / h.shape[1], h + pt.zeros_like(h)):
        assert mixing(y) == []
        assert popstats.check_batch_independence([x], _inference(y, x, batch), batch,
                                                 mode=MODE) < 1e-12


def test_batch_mean_matrix_as_output_mixes_examples():
    """y = K @ h, K = ones((n, n)) / n: every output row is the batch mean."""
    x = pt.matrix("x")
    h = marked_bn(x, "bn")
    n = h.shape[0]
    batch = {"x": np.random.default_rng(0).normal(size=(4, 3))}
    found = _agree(pt.ones((n, n)) / n @ h, x, batch)
    assert found and "the batch size as a value" in found[0]
    # a loss or a Gram matrix as an output is still not reported
    assert mixing(h.mean()) == [] and mixing(pt.dot(h.T, h)) == []


def test_time_major_rnn_check_uses_the_axes_rewrite_found():
    rng = np.random.default_rng(0)
    x = pt.tensor3("x")  # (time, batch, features)
    w = pytensor.shared(rng.normal(size=(3, 3)) * 0.5, name="W")
    u = pytensor.shared(rng.normal(size=(3, 3)) * 0.5, name="U")

    def step(xt, h):
        a = xt @ w + h @ u
        n = a.shape[0]
        m = popstats.bn_statistic(a.mean(0), "bn.mean", role="mean", group="bn",
                                  count=n)
        v = popstats.bn_statistic(a.var(0), "bn.var", role="var", group="bn", count=n)
        return pt.tanh((a - m) / pt.sqrt(v + 1e-5))

    hs = pytensor.scan(step, sequences=[x], outputs_info=[pt.zeros((x.shape[1], 3))],
                       return_updates=False, name="rnn")
    batches = [{"x": rng.normal(size=(5, 8, 3))} for _ in range(3)]
    y_inf = popstats.get_inference_graph([x], hs, batches, mode=MODE, progress=False)
    batch = {"x": rng.normal(size=(5, 4, 3))}
    assert popstats.check_batch_independence([x], y_inf, batch, mode=MODE) < 1e-12
    # computed from the rewritten outputs too
    assert popstats.check_batch_independence([x], y_inf.sum(-1), batch,
                                             mode=MODE) < 1e-12
    # a graph rewrite did not make: axis 0 by default, said in the error
    with pytest.raises(popstats.PopstatsError,
                       match=r"Batch axes taken: 'x': axis 0 \(by default\).*"
                             r"batch_axes=\{'name': axis\}"):
        popstats.check_batch_independence([x], hs, batch, mode=MODE)
