"""Batch-independence analysis on generated models: no false alarm, and a
statistic left unmarked is always found.

Each model of ``generated.models`` (loops, nesting, reuse, while loops,
random draws...) is rewritten as it is -- ``rewrite`` must not warn (pytest
turns the warning into an error) -- and again built with the marks of one
label, drawn at random, left out: the statistic is then computed from the
batch at inference, and ``rewrite`` must name an operation mixing examples.
Population values are zeros (``fake_statistics``): nothing is compiled.
Models with a single label have nothing left to rewrite once it is unmarked
(``export`` refuses a graph without statistics); they check the first half
only. The number of models is ``test_generated.py``'s (12; 1,000 under
``POPSTATS_LONG=1``).

Then per-example graphs drawn from a menu of PyTensor operations
(``independence_models.OPERATIONS``: elementwise, reductions and products
over features, reshapes, repeats, tiles, broadcasts, concatenations,
indexing, split_dims/join_dims, softmax, cumsum and sort along features,
convolutions, per-example matrix products, a loop over features...) after a
marked batch norm: the analysis says ok (no warning, ``describe_rewrite``
ok) and ``check_batch_independence`` passes on data; the same graph with one
operation of ``MIXING`` inserted (a reduction, a cumsum, a sort, a softmax
along the batch axis, a transpose then a reduction, a Gram matrix...) is
flagged every time. One compile per example (without C code); a third of
the number of models, at least 10 (10; 333 under ``POPSTATS_LONG=1``).
"""

from __future__ import annotations

import warnings

import generated as gen
import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from hypothesis import given
from hypothesis import strategies as st
from independence_models import (
    MIXING,
    OPERATIONS,
    build_unmarked,
    fake_statistics,
    labels,
    menu_graph,
)
from test_generated import EXAMPLES, _settings

import popstats


@_settings(EXAMPLES)
@given(desc=gen.models(), data=st.data())
def test_generated_models_unmarked_statistic_is_found(desc, data):
    model = gen.build(desc)
    popstats.rewrite(model.outputs, fake_statistics(model.outputs))  # no warning
    names = labels(model)
    if len(names) < 2:
        return
    victim = data.draw(st.sampled_from(names), label="unmarked")
    unmarked = build_unmarked(desc, victim)
    assert victim not in labels(unmarked)
    with pytest.warns(popstats.PopstatsWarning, match="reduces over the batch axis"):
        popstats.rewrite(unmarked.outputs, fake_statistics(unmarked.outputs))


#: compiled without C code: one compile per example is the cost
PY = pytensor.compile.Mode(linker="py", optimizer="fast_compile")
MENU_EXAMPLES = max(10, EXAMPLES // 3)


def _found(outputs, **kwargs) -> tuple[object, list[str]]:
    """The inference graph and the lines of rewrite's warning (if any)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        inference = popstats.rewrite(outputs, fake_statistics(outputs, fill=1.0),
                                     **kwargs)
    lines = [line for w in caught if issubclass(w.category, popstats.PopstatsWarning)
             for line in str(w.message).splitlines() if line.startswith("  - ")]
    return inference, lines


def _clean_and_proven(names: list[str], features: int, rows: int) -> None:
    x = pt.tensor("x", shape=(None, features))
    y = menu_graph(x, names)
    inference, lines = _found(y)
    assert lines == [], (names, lines)
    assert popstats.describe_rewrite(y, inference).ok
    batch = {"x": np.random.default_rng(features).normal(size=(rows, features))}
    assert popstats.check_batch_independence([x], inference, batch, mode=PY,
                                             rtol=1e-9) < 1e-9


def _flagged(names: list[str], features: int, at: int, mixing: str) -> None:
    x = pt.tensor("x", shape=(None, features))
    y = menu_graph(x, names, (at, mixing))
    inference, lines = _found(y)
    assert lines, (names, at, mixing)
    assert not popstats.describe_rewrite(y, inference).ok


def test_the_menus_are_large_enough():
    assert len(OPERATIONS) >= 30 and len(MIXING) >= 10


@pytest.mark.parametrize("name", sorted(OPERATIONS))
def test_each_operation_after_a_batch_norm_is_followed_and_proven(name):
    _clean_and_proven([name], 5, 3)
    _flagged([name], 5, 1, "batch_mean")  # after it: still seen


@pytest.mark.parametrize("mixing", sorted(MIXING))
def test_each_mixing_operation_is_flagged_and_fails_on_data(mixing):
    x = pt.tensor("x", shape=(None, 4))
    y = menu_graph(x, ["tanh"], (1, mixing))
    inference, lines = _found(y)
    assert lines and not any(": could not follow " in line for line in lines)
    batch = {"x": np.random.default_rng(1).normal(size=(4, 4))}
    with pytest.raises(popstats.PopstatsError, match="depend on other examples"):
        popstats.check_batch_independence([x], inference, batch, mode=PY)


@_settings(MENU_EXAMPLES)
@given(names=st.lists(st.sampled_from(sorted(OPERATIONS)), min_size=1, max_size=4),
       features=st.integers(2, 6), rows=st.integers(2, 4), data=st.data())
def test_generated_per_example_graphs_no_false_alarm_and_mixing_flagged(
        names, features, rows, data):
    _clean_and_proven(names, features, rows)
    at = data.draw(st.integers(0, len(names)), label="inserted at")
    mixing = data.draw(st.sampled_from(sorted(MIXING)), label="mixing")
    _flagged(names, features, at, mixing)
