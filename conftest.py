"""pytest settings for every collected item (tests, docstrings, README, docs).

PyTensor looks for a BLAS library the first time a C-backed mode needs it and
warns when there is none (as on these machines); warnings are errors here, so
the lookup happens once, quietly, before anything is collected.

Doctests (docstrings, README.rst, docs/*.rst) compile their examples in
``FAST_COMPILE`` unless ``POPSTATS_DOCTEST_MODE`` names another mode: they
check values, and backends are compared against each other in
``tests/test_backends.py``; a cold Numba cache would otherwise cost minutes.
"""

from __future__ import annotations

import importlib.util
import os
import warnings

#: The compilers' optimisation in the default run (before PyTensor and Numba
#: read their settings; the tests' child processes inherit them): Numba at
#: LLVM level 1 (``NUMBA_OPT``, default 3) and PyTensor's C code at ``-O0``
#: (appended after PyTensor's ``-O3``; the last wins). On a machine with no
#: compile cache (CI's) the default run spends a third of its time compiling
#: test_backends' graphs: measured there, -O0 compiles the largest C module
#: (9,300 lines) in 1.2 s instead of 5.7 s, and level 1 takes the Numba tests
#: from 319 s to 267 s. The tests check values, which these settings do not
#: change beyond the references' tolerances (no fast-math is added, and
#: -O0 contracts no a*b+c into a fused multiply-add). ``POPSTATS_LONG=1``
#: (the long run) and a caller's own ``NUMBA_OPT`` or ``gcc__cxxflags``
#: keep PyTensor's and Numba's defaults.
if os.environ.get("POPSTATS_LONG", "").strip() in ("", "0"):
    os.environ.setdefault("NUMBA_OPT", "1")
    _flags = os.environ.get("PYTENSOR_FLAGS", "")
    if "gcc__cxxflags" not in _flags and "PYTENSOR_GCC_CXXFLAGS" not in os.environ:
        os.environ["PYTENSOR_FLAGS"] = ",".join(
            f for f in (_flags, "gcc__cxxflags=-O0") if f)

import pytensor
import pytest
from _pytest.doctest import DoctestItem

#: popstats.dask and the modules behind it import Dask (the ``dask`` extra):
#: without it their doctests are not collected (tests/test_dask.py skips).
collect_ignore = []
if importlib.util.find_spec("distributed") is None:
    collect_ignore += ["popstats/dask.py", "popstats/_src/distributed/cluster.py",
                       "popstats/_src/distributed/entry.py"]
#: the pytensor-ml models of tests/test_pytensor_ml.py import pytensor-ml (the
#: ``pytensor-ml`` extra, Python >= 3.12): without it they are not collected
#: as doctest modules, nor is docs/pytensor-ml.rst (the test module skips).
if importlib.util.find_spec("pytensor_ml") is None:
    collect_ignore += ["tests/ptml_models.py", "tests/ptml_worker.py",
                       "docs/pytensor-ml.rst"]


def pytest_configure(config):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _ = pytensor.config.blas__ldflags


@pytest.fixture(autouse=True)
def _doctest_mode(request):
    if not isinstance(request.node, DoctestItem):
        yield
        return
    mode = os.environ.get("POPSTATS_DOCTEST_MODE", "FAST_COMPILE")
    with pytensor.config.change_flags(mode=mode):
        yield
