"""Every option that takes an int or a number follows one rule.

A NumPy integer (and, for numbers, a NumPy float) is accepted wherever a
Python int (float) is; a bool, a string, a value out of range and NaN are
refused with a PopstatsError whose message starts with the call and the
argument; infinity is refused where a finite number is needed. The rules are
:func:`popstats._src.errors.check_int` and :func:`~popstats._src.errors.check_number`
(their tests :func:`~popstats._src.errors.as_int` and ``as_number`` for the
axis and shape checks); each option below reaches them through its call.

An option is driven through its public call where that call checks it
before any compiling; ``accepts`` then means the call raised nothing about
that argument (it may fail later, on an argument left out on purpose).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytensor.tensor as pt
import pytest

import popstats
from popstats import nn
from popstats._src.drift.records import _threshold
from popstats._src.errors import (
    as_int,
    as_number,
    check_int,
    check_number,
    describe_value,
)
from popstats._src.estimation.state import check_every
from popstats._src.estimation.statistics import PopulationStatistics
from popstats._src.inspection.drawing import _check_limit
from popstats._src.inspection.plots import _check_units

NAN = float("nan")
INF = float("inf")


def _layer():
    x = pt.matrix("x", shape=(None, 2))
    return x, nn.batch_norm(x, axes=0, label="bn")


def _estimate(**option: object) -> None:
    # the options are checked first, then the outputs (not a graph) are refused
    popstats.estimate([pt.matrix("x")], "no graph", [], **option)


def _check_independence(**option: object) -> None:
    x = pt.matrix("x")
    popstats.check_batch_independence([x], pt.tanh(x), {"x": np.ones((3, 2))},
                                      mode="FAST_COMPILE", **option)


def _drift(**option: object) -> None:
    # stats without statistics: the options are checked first, then matching fails
    x, bn = _layer()
    popstats.drift(PopulationStatistics(()), [x], bn.output, [], **option)


def _split_every(value: object) -> None:
    pytest.importorskip("dask")
    from popstats._src.distributed.cluster import _check_split_every

    _check_split_every(value, "popstats.dask.estimate")


@dataclass(frozen=True)
class Option:
    where: str  # how errors name the call and the argument
    run: Callable[[object], object]
    good: tuple[object, ...]  # NumPy scalars among them
    bad: tuple[object, ...]


#: the refusals every option shares (a bool is not a number, nor a string)
COMMON_BAD = (True, False, np.bool_(True), "3", {})
INTS = (3, np.int64(3), np.int32(3), np.uint8(3))
POSITIVE_BAD = (0, -1, np.int64(-1), 2.0, 2.5, NAN)
FRACTION = (0.5, 1, np.float32(0.5), np.float64(1.0), np.int64(1))
FRACTION_BAD = (0, -0.5, 1.5, np.float32(1.5), NAN, INF)
TOLERANCE = (0, 1e-6, np.float32(1e-3), np.int64(2))
TOLERANCE_BAD = (-1e-6, np.float64(-1.0), NAN, INF)

OPTIONS = [
    Option("estimate(max_steps=...)", lambda v: _estimate(max_steps=v),
           INTS, POSITIVE_BAD),
    Option("estimate(checkpoint_every=...)", lambda v: _estimate(checkpoint_every=v),
           INTS, POSITIVE_BAD),
    Option("estimate(upstream_passes=...)",
           lambda v: _estimate(upstream="population", upstream_passes=v),
           INTS, (1, np.int64(1), -1, 2.0, NAN)),
    Option("estimate(upstream_tol=...)",
           lambda v: _estimate(upstream="population", upstream_tol=v),
           TOLERANCE, TOLERANCE_BAD),
    Option("estimate(upstream_se=...)",
           lambda v: _estimate(upstream="population", upstream_se=v),
           FRACTION, FRACTION_BAD),
    Option("Estimation.run(checkpoint_every=...)",
           lambda v: check_every(v, "Estimation.run(checkpoint_every=...)"),
           INTS, POSITIVE_BAD),
    Option("Estimator(momentum=...)", lambda v: popstats.Estimator("ema", momentum=v),
           FRACTION, FRACTION_BAD),
    Option("running_average_updates(momentum=...)",
           lambda v: nn.running_average_updates(_layer()[1].output, momentum=v),
           FRACTION, FRACTION_BAD),
    Option("running_average_updates(max_steps=...)",
           lambda v: nn.running_average_updates(_layer()[1].output, max_steps=v),
           INTS, POSITIVE_BAD),
    Option("batch_norm(epsilon=...)",
           lambda v: nn.batch_norm(pt.matrix("x", shape=(None, 2)), axes=0, epsilon=v),
           TOLERANCE, TOLERANCE_BAD),
    Option("batch_norm(axes=...)",
           lambda v: nn.batch_norm(pt.matrix("x", shape=(None, 2)), axes=v),
           (0, -1, np.int64(0), np.int32(-1), (np.int64(0),)),
           (2, -3, np.int64(2), 0.0, NAN, ())),
    Option("bn_params(shape=...)", lambda v: nn.bn_params(v),
           (*INTS, (np.int64(2), 3)), (*POSITIVE_BAD, (2, 0), (2, True), ())),
    Option("bn_statistic(count=...)",
           lambda v: popstats.bn_statistic(pt.matrix("v").mean(0), "s", count=v),
           (4, 0.5, np.int64(4), np.float32(2.0)), (0, -1, np.int64(0), NAN, INF)),
    Option("draw(max_nodes=...)", _check_limit,
           (0, *INTS), (-1, np.int64(-1), 2.0, NAN)),
    Option("PopulationStatistics.plot(units=...)",
           lambda v: _check_units(v, "PopulationStatistics.plot"),
           INTS, POSITIVE_BAD),
    Option("drift(worst=...)", lambda v: _drift(worst=v), INTS, POSITIVE_BAD),
    Option("drift(eps=...)", lambda v: _drift(eps=v), TOLERANCE, TOLERANCE_BAD),
    Option("Drift.first_moved(threshold=...)",
           lambda v: _threshold(v, "Drift.first_moved"),
           (0.5, -1, INF, np.float32(0.5), np.int64(2)), (NAN, np.float64(NAN))),
    Option("popstats.dask.estimate(split_every=...)", _split_every,
           INTS, (1, np.int64(1), 0, -2, 2.0, NAN)),
    Option("check_batch_independence(rtol=...)",
           lambda v: _check_independence(rtol=v), TOLERANCE, TOLERANCE_BAD),
    Option("check_batch_independence(batch_axes=...)",
           lambda v: _check_independence(batch_axes={"x": v}),
           (0, -2, np.int64(1), np.int32(0)), (2, -3, np.int64(5), 1.0, NAN)),
]


def _named(option: Option, value: object) -> str | None:
    """The message of the error ``value`` raises about the option, if any."""
    try:
        option.run(value)
    except popstats.PopstatsError as exc:
        message = str(exc)
        return message if message.startswith(option.where) else None
    return None


@pytest.mark.parametrize("option", OPTIONS, ids=lambda o: o.where)
def test_numpy_scalars_are_accepted(option: Option) -> None:
    assert any(isinstance(v, np.generic) or (isinstance(v, tuple) and v
                                              and isinstance(v[0], np.generic))
               for v in option.good)
    refused = {repr(v): _named(option, v) for v in option.good}
    assert not any(refused.values()), refused


@pytest.mark.parametrize("option", OPTIONS, ids=lambda o: o.where)
def test_bools_strings_and_out_of_range_are_refused(option: Option) -> None:
    for value in (*COMMON_BAD, *option.bad):
        message = _named(option, value)
        assert message is not None, f"{option.where} accepted {value!r}"
        assert describe_value(value) in message, message  # says what it received


def test_every_numeric_option_is_listed() -> None:
    # the int and float parameters of the public calls, each listed above
    assert len({o.where for o in OPTIONS}) == len(OPTIONS)
    for name in ("max_steps", "checkpoint_every", "upstream_passes", "upstream_tol",
                 "momentum", "epsilon", "count", "max_nodes", "units", "worst",
                 "eps", "threshold", "split_every", "rtol", "axes", "shape",
                 "batch_axes"):
        assert any(f"({name}=" in o.where for o in OPTIONS), name


@pytest.mark.parametrize("value, expected", [
    (3, 3), (np.int64(3), 3), (np.uint8(3), 3), (True, None), (np.bool_(False), None),
    (3.0, None), ("3", None), (None, None)])
def test_as_int(value: object, expected: int | None) -> None:
    got = as_int(value)
    assert got == expected and (got is None or type(got) is int)


@pytest.mark.parametrize("value, expected", [
    (3, 3.0), (np.int64(3), 3.0), (np.float32(0.5), 0.5), (INF, INF), (True, None),
    (np.bool_(True), None), ("1", None), (1j, None), (np.complex64(1), None)])
def test_as_number(value: object, expected: float | None) -> None:
    got = as_number(value)
    assert got == expected and (got is None or type(got) is float)


def test_checks_return_python_values() -> None:
    assert type(check_int(np.int64(4), "f(n=...)")) is int
    assert check_int(None, "f(n=...)", none=True) is None
    assert type(check_number(np.float32(0.25), "f(x=...)")) is float
    with pytest.raises(popstats.PopstatsError, match=r"^f\(n=\.\.\.\): expected a "
                       r"positive int or None \(how many\), got 0 \(int\)\. Fix\.$"):
        check_int(0, "f(n=...)", none=True, what="how many", fix="Fix.")
    with pytest.raises(popstats.PopstatsError, match=r"expected an int >= 2, got 1 "):
        check_int(1, "f(n=...)", minimum=2)
    with pytest.raises(popstats.PopstatsError,
                       match=r"expected a number in \(0, 1\], got nan \(float\)"):
        check_number(NAN, "f(m=...)", minimum=0, maximum=1, above=True)
    with pytest.raises(popstats.PopstatsError, match=r"expected a number, got nan"):
        check_number(NAN, "f(level=...)", finite=False)
    assert check_number(-INF, "f(level=...)", finite=False) == -INF
