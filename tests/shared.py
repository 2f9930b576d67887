"""Models and helpers shared by the test modules, and the switch of the long runs.

One place for what several test modules need: the compilation mode of the
behaviour tests, PyTensor's version, the error helper, the loop model with
a (mean, var) pair, the stand-in for a crash in the middle of a pass, the
comparison of two estimation states, and the size of the property tests.

``POPSTATS_LONG=1`` (the one switch of the long runs, README's "Tests"):
1,000 generated models (``test_generated.py``, ``test_independence_generated.py``)
and 100 more without reuse,
400 runs of the pass machine with 50 kill scenarios (``test_pass_machine.py``),
the float32 device accumulation over 10,000 batches and every estimator and
time mode on the device (``test_device_pass.py``), 12 estimator and time
mode combinations on a Dask cluster (``test_dask.py``), and graph accumulation
against host accumulation for every estimator in PyTensor's default (Numba)
and C (CVM) modes too (``test_accumulate_graph.py``). The default run
proves every one of these properties in a smaller form (:func:`sized`,
:func:`chosen`); tests marked ``slow`` run only under the switch.

>>> sized(3, 30) in (3, 30)
True
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest

import popstats

#: ``POPSTATS_LONG`` set (to anything but ``0``): the long runs.
LONG = os.environ.get("POPSTATS_LONG", "").strip() not in ("", "0")
#: The mode the behaviour tests compile with (``POPSTATS_TEST_MODE``); the
#: test session makes it PyTensor's default (``conftest.pytest_configure``),
#: so that a test naming no mode compiles with it too.
MODE = os.environ.get("POPSTATS_TEST_MODE", "FAST_COMPILE")
#: PyTensor's own default mode (Numba unless PYTENSOR_FLAGS says otherwise),
#: as it was before the session changed the default: what the tests of
#: ``mode=None`` compile with.
DEFAULT_MODE = pytensor.compile.mode.get_mode(pytensor.config.mode)
#: PyTensor's (major, minor).
PT_VERSION = tuple(int(p) for p in re.findall(r"\d+", pytensor.__version__)[:2])
#: PyTensor >= 3.1 freezes Scan inner graphs and drops tags of inner variables.
FROZEN_INNER = PT_VERSION >= (3, 1)


def sized(default: int, long: int) -> int:
    """``long`` under ``POPSTATS_LONG=1``, else ``default``."""
    return long if LONG else default


def chosen(every: Sequence[Any], default: Sequence[Any]) -> list[Any]:
    """``every`` under ``POPSTATS_LONG=1``, else ``default`` (a part of it)."""
    assert all(item in every for item in default)
    return list(every if LONG else default)


@contextmanager
def fails(*parts: str) -> Iterator[Any]:
    """Expect a PopstatsError whose message contains every part."""
    with pytest.raises(popstats.PopstatsError) as info:
        yield info
    message = str(info.value)
    for part in parts:
        assert part in message, f"{part!r} not in message: {message}"


def scan(fn: Any, **kwargs: Any) -> Any:
    """``pytensor.scan`` with the new return convention (no updates)."""
    return pytensor.scan(fn, return_updates=False, **kwargs)


def mark(var: Any, label: str, role: str | None = None, group: str | None = None,
         count: Any = None) -> Any:
    """``popstats.bn_statistic`` with positional role, group and count."""
    return popstats.bn_statistic(var, label, role=role, group=group, count=count)


def bn_pair(a: Any, group: str, axis: int = 0, eps: float = 1e-3,
            counted: bool = True) -> Any:
    """A batch norm of ``a`` over ``axis`` with a marked (mean, var) pair
    ``{group}.mean``, ``{group}.var`` (counted by ``a``'s size along ``axis``
    unless not ``counted``): ``(a - mean) / sqrt(var + eps)``."""
    n = a.shape[axis] if counted else None
    mean = mark(a.mean(axis), f"{group}.mean", "mean", group, n)
    var = mark(a.var(axis), f"{group}.var", "var", group, n)
    return (a - mean) / pt.sqrt(var + eps)


def pair_loop(label: str = "bn", outer: str | None = None, dtype: str = "float64",
              count_dtype: str | None = None, eps: float = 1e-3) -> tuple[list, Any]:
    """A loop over x (time, batch, feature) with a (mean, var) pair per step.

    The pair is ``{label}.mean``, ``{label}.var`` (group ``label``, counted
    by the batch size, an integer unless ``count_dtype`` names another);
    ``outer`` names a mean over all steps outside the loop (``{outer}.mean``,
    group ``outer``). Returns ``([x], output)``.
    """
    x = pt.tensor3("x", dtype=dtype)

    def step(xt: Any, h: Any) -> Any:
        n = xt.shape[0] if count_dtype is None else xt.shape[0].astype(count_dtype)
        m = mark(xt.mean(0), f"{label}.mean", "mean", label, n)
        v = mark(xt.var(0), f"{label}.var", "var", label, n)
        return h + (xt - m) / pt.sqrt(v + eps)

    y = scan(step, sequences=[x], outputs_info=[pt.zeros_like(x[0])])
    if outer is not None:
        count = (x.shape[0] * x.shape[1]).astype(dtype)
        y = y + mark(x.mean((0, 1)), f"{outer}.mean", "mean", outer, count)
    return [x], y


def nested_loop(eps: float = 1e-3) -> tuple[list, Any]:
    """Two loop levels over x4 (T1, T2, batch, feature): per inner step a
    (mean, var) pair ``in.mean``, ``in.var`` (group ``in``, counted by the
    batch size), per outer step ``out.mean`` (no role). Returns ``([x4], output)``.
    """
    x = pt.tensor4("x4")

    def inner(xt: Any, g: Any) -> Any:
        n = xt.shape[0]
        m = mark(xt.mean(0), "in.mean", "mean", "in", n)
        v = mark(xt.var(0), "in.var", "var", "in", n)
        return g + (xt - m) / pt.sqrt(v + eps)

    def outer(xs: Any, h: Any) -> Any:
        gs = scan(inner, sequences=[xs], outputs_info=[h])
        return gs[-1] + mark(xs.mean((0, 1)), "out.mean")

    return [x], scan(outer, sequences=[x], outputs_info=[pt.zeros_like(x[0, 0])])


class Interrupted(Exception):
    """Stands for a crash or Ctrl-C in the middle of a pass."""


def interrupted_after(batches: Iterable[Any], n: int) -> Iterator[Any]:
    """The batches, then :class:`Interrupted` in place of batch ``n``."""
    for i, batch in enumerate(batches):
        if i == n:
            raise Interrupted(f"stopped before batch {n}")
        yield batch


#: the fields of a state that make its value (the others are its standard
#: error's: :func:`popstats._src.estimation.estimators.fields`)
VALUE_STATE_FIELDS = frozenset({"n", "w", "mean", "m2", "acc", "decay"})


def error_fields_scale(state: dict) -> float:
    """The largest magnitude among a state's standard-error fields (at
    least 1): their rounding is relative to it (a centred sum such as
    ``sum w^2 r``, near 0 by construction, is the rounding of its terms)."""
    return max([1.0, *(float(np.max(np.abs(v), initial=0.0))
                       for k, v in state.items() if k not in VALUE_STATE_FIELDS)])


def assert_same_state(a: popstats.EstimationState, b: popstats.EstimationState,
                      exact: bool = True) -> None:
    """Two estimation states hold the same fields, dtypes and shapes, and the
    same numbers: bit for bit when ``exact``, else to 1e-12 relative.

    The fields behind the standard errors (centred sums, updated by
    products of the value's steps) are compared to 1e-12 of the largest
    magnitude among them (:func:`error_fields_scale`) even when ``exact``:
    PyTensor's rewrites regroup those products (``(a b)^2`` as
    ``a^2 b^2``), so the graph engine rounds them otherwise than NumPy
    does; the value's fields are bit for bit.
    """
    assert a.names == b.names and a.n_batches == b.n_batches
    for name, sa, sb in zip(a.names, a.states, b.states, strict=True):
        assert set(sa) == set(sb), name
        scale = error_fields_scale(sb)
        for field in sa:
            assert sa[field].dtype == sb[field].dtype, (name, field)
            assert sa[field].shape == sb[field].shape, (name, field)
            if field not in VALUE_STATE_FIELDS:
                np.testing.assert_allclose(sa[field], sb[field], rtol=1e-12,
                                           atol=1e-12 * scale,
                                           err_msg=f"{name}.{field}")
            elif exact:
                np.testing.assert_array_equal(sa[field], sb[field],
                                              err_msg=f"{name}.{field}")
            else:
                np.testing.assert_allclose(sa[field], sb[field], rtol=1e-12,
                                           atol=1e-14, err_msg=f"{name}.{field}")
