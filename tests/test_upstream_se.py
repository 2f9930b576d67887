"""upstream="population" stopped at the statistics' precision (``upstream_se``).

The reference is NumPy: the passes of the fixed point run by hand over the
models of ``upstream_models`` (each pass normalizes with the values of the
pass before; pass 0 with each batch's own moments), every statistic the
plain mean of its batch values, its standard error that of batch means
(std over batches / sqrt(n)). The change of pass k in standard errors is
``max |v_k - v_{k-1}| / se_k`` over statistics and units.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import upstream_models as um
from shared import MODE, fails

import popstats
from popstats._src.estimation.upstream import FixedPoint

ROUNDING = 1e-10  # a change within this of the statistic's magnitude counts as 0


def estimate(model, batches=None, **options):
    options.setdefault("mode", MODE)
    options.setdefault("upstream", "population")
    return popstats.estimate(model.inputs, model.outputs,
                             model.batches if batches is None else batches,
                             **options)


def numpy_passes(model, passes: int) -> list[dict[str, tuple]]:
    """Per pass, statistic -> (value, standard error), feed-forward models."""
    out: list[dict[str, tuple]] = []
    tables = None
    for _ in range(passes):
        seen: dict[str, list] = {}
        for batch in model.batches:
            def bn(group, steps, a, tables=tables, seen=seen):
                m, v = a.mean(0), a.var(0)
                seen.setdefault(f"{group}.mean", []).append(m)
                seen.setdefault(f"{group}.var", []).append(v)
                return (m, v) if tables is None else (tables[f"{group}.mean"],
                                                      tables[f"{group}.var"])
            model.forward(batch, bn)
        out.append({n: (np.mean(xs, 0), np.std(xs, 0, ddof=1) / np.sqrt(len(xs)))
                    for n, xs in seen.items()})
        tables = {n: v for n, (v, _) in out[-1].items()}
    return out


def in_se(old: dict, new: dict) -> tuple[float, str]:
    """The largest change from ``old`` to ``new`` in ``new``'s standard errors."""
    worst, where = -1.0, ""
    for name, (value, se) in new.items():
        change = np.abs(value - old[name][0])
        floor = ROUNDING * np.max(np.abs(old[name][0]))
        units = float(np.max(np.where(change <= floor, 0.0, change / se)))
        if units > worst:
            worst, where = units, name
    return worst, where


@pytest.fixture(scope="module")
def deep():
    """A chain of 8 batch norms, 20 batches of 32: the 1e-10 rule takes 9 passes."""
    return um.mlp(layers=8, sizes=(32,) * 20)


@pytest.fixture(scope="module")
def tight(deep):
    return estimate(deep)


@pytest.fixture(scope="module")
def reference(deep):
    return numpy_passes(deep, 10)


def test_the_changes_in_standard_errors_are_those_numpy_recomputes(tight, reference):
    record = tight.fixed_point
    assert record.rule == "tol" and record.se is None
    assert record.passes == 9  # L + 1
    expected = [in_se(reference[k - 1], reference[k]) for k in range(1, 9)]
    np.testing.assert_allclose(record.se_changes, [c for c, _ in expected],
                               rtol=1e-6, atol=1e-9)
    assert list(record.se_worst[:-1]) == [w for _, w in expected][:-1]
    assert record.se_changes[-1] == 0.0 and record.unjudged == ()
    # and the values and standard errors are NumPy's of pass 8
    for name, (value, se) in reference[8].items():
        np.testing.assert_allclose(tight[name].value, value, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(tight[name].standard_error, se, rtol=1e-6)


@pytest.mark.parametrize("fraction", [0.5, 0.1])
def test_it_stops_at_the_first_pass_within_the_fraction(deep, reference, fraction):
    stats = estimate(deep, upstream_se=fraction)
    record = stats.fixed_point
    changes = [in_se(reference[k - 1], reference[k])[0] for k in range(1, 9)]
    first = next(k for k, c in enumerate(changes, 1) if c <= fraction)
    assert record.rule == "se" and record.se == fraction
    assert record.passes == first + 1 < 9  # earlier than the 1e-10 rule
    np.testing.assert_allclose(record.se_changes, changes[:first], rtol=1e-6)
    for name, (value, _) in reference[first].items():
        np.testing.assert_allclose(stats[name].value, value, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("fraction", [0.5, 0.1, 0.01])
def test_values_are_within_the_fraction_of_an_se_of_the_tight_fixed_point(
        deep, reference, fraction):
    stats = estimate(deep, upstream_se=fraction)
    fixed = reference[9]  # NumPy's: pass 9 changes nothing (a chain of 8)
    assert in_se(reference[8], fixed)[0] == 0.0
    for name, stat in stats.items():
        distance = np.abs(stat.value - fixed[name][0]) / stat.standard_error
        assert np.all(distance <= fraction), (name, distance.max())


def test_cells_without_a_standard_error_are_not_judged_and_counted():
    model = um.rnn(lengths=(3, 4, 2), sizes=(4, 5, 3))  # step 3: one batch
    stats = estimate(model, upstream_se=0.1, upstream_passes=50)
    record = stats.fixed_point
    assert record.rule == "se" and record.se_changes[-1] <= 0.1
    assert dict(record.unjudged) == {name: 3 for name in stats}  # 3 units, 1 step
    for name, stat in stats.items():
        assert np.isinf(stat.standard_error[3]).all()
        assert np.isfinite(stat.standard_error[:3]).all(), name


def test_one_batch_gives_no_standard_error_to_stop_at():
    model = um.mlp(layers=2, sizes=(8,))
    with fails("estimate(upstream_se=...)", "no value has a standard error",
               "at least 2 batches", "leave upstream_se out"):
        estimate(model, upstream_se=0.1)
    record = estimate(model).fixed_point  # the 1e-10 rule still works
    assert record.passes == 2 and np.isnan(record.se_changes).all()


def test_not_converged_names_the_rule_and_its_changes(deep, reference):
    changes = [in_se(reference[k - 1], reference[k])[0] for k in range(1, 3)]
    with fails("estimate(upstream_passes=...)", "did not reach a fixed point in 3",
               "in standard errors", f"{changes[0]:.2g}, {changes[1]:.2g}",
               "upstream_se=0.01", "a larger upstream_se"):
        estimate(deep, upstream_se=0.01, upstream_passes=3)


@pytest.mark.parametrize(("options", "shown"), [
    ({"upstream_se": 0.1, "upstream": "batch"},
     ["estimate(upstream_se=...)", "upstream='population' only"]),
    ({"upstream_se": 0.1}, ["estimate(upstream_se=...)", "upstream='population' only"]),
    ({"upstream_se": 0.1, "upstream_tol": 1e-6, "upstream": "population"},
     ["estimate(upstream_se=..., upstream_tol=...)", "two rules",
      "upstream_se=0.1, upstream_tol=1e-06", "Pass one of them"]),
    ({"upstream_se": 0, "upstream": "population"},
     ["estimate(upstream_se=...)", "a number in (0, 1]", "got 0"]),
    ({"upstream_se": 2, "upstream": "population"},
     ["a number in (0, 1]", "got 2", "upstream_tol"]),
    ({"upstream_se": float("nan"), "upstream": "population"}, ["got nan"]),
    ({"upstream_se": "0.1", "upstream": "population"}, ["got '0.1' (str)"]),
    ({"upstream_se": True, "upstream": "population"}, ["got True (bool)"]),
])
def test_bad_upstream_se(options, shown):
    from popstats._src.estimation.options import EstimationOptions
    with fails(*shown):
        EstimationOptions.check("estimate", options)


def test_upstream_se_none_is_the_default_anywhere():
    from popstats._src.estimation.options import EstimationOptions
    default = EstimationOptions.check("estimate", {"upstream_se": None})
    assert default.upstream_se is None
    options = EstimationOptions.check("estimate", {"upstream": "population",
                                                   "upstream_se": np.float32(0.25)})
    assert options.upstream_se == 0.25 and isinstance(options.upstream_se, float)


def test_the_record_is_saved_and_an_older_record_loads(deep, tmp_path):
    stats = estimate(deep, upstream_se=0.5)
    path = tmp_path / "stats.npz"
    stats.save(path)
    loaded = popstats.load(path)
    assert loaded.fixed_point == stats.fixed_point
    assert "fixed point to 0.5 standard error in" in str(stats.fixed_point)
    older = {"passes": 3, "changes": [0.1, 0.0], "worst": ["a", "b"], "tol": 1e-10}
    record = FixedPoint.from_json(json.loads(json.dumps(older)))
    assert (record.rule, record.se, record.se_changes, record.unjudged) == (
        "tol", None, (), ())
    assert str(record).startswith("fixed point in 3 passes")
