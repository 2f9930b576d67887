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
only. The number of models is ``test_generated.py``'s (30; 1,000 under
``POPSTATS_LONG=1``).
"""

from __future__ import annotations

import generated as gen
import pytest
from hypothesis import given
from hypothesis import strategies as st
from independence_models import build_unmarked, fake_statistics, labels
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
