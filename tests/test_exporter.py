"""export(): every statistic becomes an output, with one time axis per loop.

Each case's estimation graph is compiled once and run on one training
batch; its outputs must equal the batch statistics of the NumPy model, step
by step (inside two loops: per (outer, inner) step, and so on).
"""

from __future__ import annotations

import numpy as np
import pytensor
import pytest
from conftest import CASES, build_case
from reference import fingerprint
from shared import FROZEN_INNER, MODE

import popstats


@pytest.fixture(scope="module")
def exported():
    """``exported(name)``: (case, EstimationGraph, compiled function)."""
    done = {}

    def get(name):
        if name not in done:
            case = build_case(name)
            eg = popstats.export(case.outputs)
            fn = pytensor.function(
                case.inputs, list(eg.outputs), mode=MODE, on_unused_input="ignore"
            )
            done[name] = (case, eg, fn)
        return done[name]

    return get


@pytest.mark.parametrize("name", CASES)
def test_exported_values_are_the_batch_statistics(exported, name):
    case, eg, fn = exported(name)
    assert {site.name for site in eg.sites} == set(case.depths)
    for batch in case.batches[:2]:
        values = fn(*case.values(batch))
        _, expected = case.train_forward(batch)
        for site, value in zip(eg.sites, values, strict=True):
            want = expected[site.name]
            assert value.shape == want.shape, site.name
            np.testing.assert_allclose(value, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", CASES)
def test_sites_describe_depth_shape_and_dtype(exported, name):
    case, eg, _ = exported(name)
    assert len(eg.outputs) == len(eg.sites)
    for site, out in zip(eg.sites, eg.outputs, strict=True):
        assert site.depth == case.depths[site.name], site.name
        assert out.ndim == site.depth + len(site.shape), site.name
        assert site.dtype == "float64" == out.dtype
        # every model's statistics are feature vectors
        assert len(site.shape) == 1
        assert (site.where == "<graph>") == (site.depth == 0)
        assert site.label == site.name.split("#")[0]


def test_nested_sites_name_their_loops(exported):
    _, eg, _ = exported("nested3")
    by_name = {site.name: site for site in eg.sites}
    assert [by_name[n].depth for n in ("l1.mean", "l2.mean", "l3.mean")] == [1, 2, 3]
    where = {n: by_name[n].where.split("/") for n in by_name}
    assert len(where["l3.mean"]) == 3
    assert where["l3.mean"][:2] == where["l2.mean"]
    assert where["l2.mean"][:1] == where["l1.mean"]


def test_same_scan_op_twice_gives_two_sites(exported):
    case, eg, fn = exported("twice")
    names = sorted(site.name for site in eg.sites)
    assert names == ["twice.mean#0", "twice.mean#1"]
    assert {site.label for site in eg.sites} == {"twice.mean"}
    ids = [site.id for site in eg.sites]
    assert ids[0] != ids[1]
    # both applications run the very same op, hence the same marker key
    assert ids[0].key == ids[1].key
    # and each site holds the statistic of its own application
    batch = case.batches[0]
    values = dict(zip((s.name for s in eg.sites), fn(*case.values(batch)), strict=True))
    _, expected = case.train_forward(batch)
    assert not np.allclose(values["twice.mean#0"][0], values["twice.mean#1"][0])
    for name in names:
        np.testing.assert_allclose(values[name], expected[name], rtol=1e-10)


def test_exported_steps_follow_the_run_length(exported):
    """A loop's time axis is as long as the loop ran (here: until n)."""
    case, _, fn = exported("while")
    for batch in case.batches:
        (value,) = fn(*case.values(batch))
        assert value.shape[0] == min(int(batch["n"]), batch["xw"].shape[0])


def test_export_is_deterministic(exported):
    case, eg, _ = exported("nested2")
    again = popstats.export(case.outputs)
    assert [s.id for s in again.sites] == [s.id for s in eg.sites]
    assert [s.name for s in again.sites] == [s.name for s in eg.sites]


@pytest.mark.parametrize("name", ["ff", "rnn", "nested2", "twice"])
def test_export_leaves_the_graph_alone(name):
    case = build_case(name)
    before = fingerprint(case.outputs)
    popstats.export(case.outputs)
    assert fingerprint(case.outputs) == before


@pytest.mark.skipif(not FROZEN_INNER, reason="PyTensor 3.0 keeps tags inside Scan")
def test_tags_inside_scan_are_a_documented_error_on_frozen_pytensor():
    case = build_case("rnn_tags")
    with pytest.raises(popstats.PopstatsError, match="bn_statistic"):
        popstats.export(case.outputs)
