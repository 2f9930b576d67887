"""The options of an estimation pass, defined, documented and checked once.

Stage: estimation. Members:

- :class:`EstimationOptions` -- the frozen record of the options
  (``estimator, time, max_steps, mode, dtypes, accumulate, upstream,
  upstream_tol, upstream_se, upstream_passes, target_error, min_batches``)
  with their
  defaults; :meth:`EstimationOptions.check` is the one place they are
  checked, errors naming the public call;
- :class:`OptionKeywords` -- the same options as keywords, for
  ``**options: Unpack[OptionKeywords]`` in the public signatures;
- :func:`takes_options` -- shows the options in a public function's
  signature (``help``, IDEs, Sphinx) and docstring (:data:`OPTIONS_DOC`).

The public calls that take these options -- :func:`~popstats.estimate`,
:class:`~popstats.Estimation`, :func:`~popstats.get_inference_graph`,
:func:`popstats.dask.estimate` and :func:`popstats.dask.estimate_groups` --
take them as ``**options`` and pass one record down;
:func:`~popstats.drift` builds one from its ``mode``.

Members: :data:`ACCUMULATE`, :data:`DTYPE_POLICIES`, :data:`OPTIONS_DOC`,
:data:`UPSTREAM`,
:class:`EstimationOptions`, :class:`OptionKeywords`, :func:`check_max_steps`,
:func:`check_mode`, :func:`check_target_error`, :func:`takes_options`.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import re
from collections.abc import Callable, Mapping
from typing import Any, Literal, TypedDict, TypeVar

import pytensor

from popstats._src.errors import (
    PopstatsError,
    as_number,
    check_choice,
    check_int,
    check_number,
    describe_value,
)
from popstats._src.estimation.estimators import check_estimator_spec
from popstats._src.export.time_modes import check_time

__all__ = [
    "ACCUMULATE",
    "DTYPE_POLICIES",
    "OPTIONS_DOC",
    "UPSTREAM",
    "EstimationOptions",
    "OptionKeywords",
    "check_max_steps",
    "check_mode",
    "check_target_error",
    "takes_options",
]

#: the ``dtypes`` options, and what each means
DTYPE_POLICIES = {
    "convert": "convert batch values to the inputs' dtypes when nothing that "
    "matters is lost",
    "strict": "refuse any other dtype",
}

#: what the layers upstream of a statistic normalize with while it is
#: estimated (option -> meaning)
UPSTREAM = {
    "batch": "their batch statistics, as in training (one pass; PyTorch's "
    "update_bn, fvcore's PreciseBN)",
    "population": "their population values, as at inference (passes until the "
    "values are a fixed point)",
}

#: where an estimation pass adds up its batches (option -> meaning)
ACCUMULATE = {
    "graph": "in the compiled function, float64 accumulators in shared variables",
    "host": "in NumPy after each batch",
}


@dataclasses.dataclass(frozen=True)
class EstimationOptions:
    """The options of an estimation pass (see :data:`OPTIONS_DOC`).

    Build it with :meth:`check`, which checks every option once and names
    the public call in its errors; the fields' defaults are the public
    calls' defaults.

    Examples
    --------
    >>> from popstats._src.estimation.options import EstimationOptions
    >>> options = EstimationOptions.check("estimate", {"estimator": "pooled"})
    >>> options.estimator, options.time, options.accumulate
    ('pooled', 'step', 'host')
    >>> from popstats import PopstatsError
    >>> try:
    ...     EstimationOptions.check("estimate", {"max_steps": 0})
    ... except PopstatsError as exc:
    ...     print(exc)
    estimate(max_steps=...): expected a positive int or None, got 0 (int).
    """

    estimator: object = "mean"
    time: object = "step"
    max_steps: int | None = None
    mode: str | pytensor.compile.Mode | None = None
    dtypes: str = "convert"
    accumulate: str = "host"
    upstream: str = "batch"
    upstream_tol: float = 1e-10
    upstream_se: float | None = None
    upstream_passes: int = 50
    target_error: float | None = None
    min_batches: int = 10

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The options' keyword names, in order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def check(cls, call: str, keywords: Mapping[str, object]) -> EstimationOptions:
        """The record of ``keywords`` (options not given take their defaults).

        Raises ``TypeError`` for a keyword that is not an option (as Python
        does for an unknown keyword argument of ``call``) and a
        :class:`~popstats.PopstatsError` for a value popstats cannot use.
        """
        names = cls.names()
        for key in keywords:
            if key not in names:
                close = difflib.get_close_matches(str(key), names, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise TypeError(
                    f"{call}() got an unexpected keyword argument {key!r}{hint} "
                    f"(the estimation options are {', '.join(names)})"
                )
        given = cls(**keywords)  # type: ignore[arg-type]  # values checked below
        check_choice(given.dtypes, DTYPE_POLICIES, f"{call}(dtypes=...)")
        check_choice(given.accumulate, ACCUMULATE, f"{call}(accumulate=...)")
        max_steps = check_max_steps(given.max_steps, call)
        check_mode(given.mode, call)
        check_estimator_spec(given.estimator, call)
        check_time(given.time, call)
        check_choice(given.upstream, UPSTREAM, f"{call}(upstream=...)")
        tol = check_number(given.upstream_tol, f"{call}(upstream_tol=...)", minimum=0,
                           what="the largest relative change between two passes "
                           "at the fixed point, e.g. 1e-10")
        passes = check_int(given.upstream_passes, f"{call}(upstream_passes=...)",
                           minimum=2, what="the most passes over the batches "
                           "upstream='population' may take, the first in batch "
                           "mode included")
        se = None if given.upstream_se is None else check_number(
            given.upstream_se, f"{call}(upstream_se=...)", minimum=0, maximum=1,
            above=True, what="the largest change between two passes as a fraction "
            "of each value's standard error, e.g. 0.1, or None",
            fix="Above 1 the passes would stop farther from the fixed point than "
            "the estimate is from its own target; for a relative change, use "
            "upstream_tol.")
        target = check_target_error(given.target_error, call)
        least = check_int(given.min_batches, f"{call}(min_batches=...)", minimum=2,
                          what="the batches a cell needs before its standard "
                          "error counts toward target_error")
        stray = [k for k in ("upstream_tol", "upstream_se", "upstream_passes")
                 if k in keywords and (k != "upstream_se" or se is not None)]
        if stray and given.upstream != "population":
            raise PopstatsError(
                f"{call}({stray[0]}=...): applies to upstream='population' only "
                f"(the passes to a fixed point), but upstream is "
                f"{given.upstream!r}. Pass upstream='population' too, or leave "
                f"{stray[0]} out."
            )
        if se is not None and "upstream_tol" in keywords:
            raise PopstatsError(
                f"{call}(upstream_se=..., upstream_tol=...): two rules for when "
                f"the passes of upstream='population' stop, given both "
                f"(upstream_se={se:g}, upstream_tol={tol:g}). upstream_se stops "
                f"when every value moved by at most that fraction of its "
                f"standard error; upstream_tol when the largest relative change "
                f"is at most that. Pass one of them."
            )
        if "min_batches" in keywords and target is None:
            raise PopstatsError(
                f"{call}(min_batches=...): applies with target_error only (the "
                f"batches a cell needs before its standard error counts toward "
                f"the target), but target_error is None. Pass target_error=... "
                f"too, or leave min_batches out."
            )
        return dataclasses.replace(given, max_steps=max_steps, upstream_tol=tol,
                                   upstream_se=se, upstream_passes=passes,
                                   target_error=target, min_batches=least)


class OptionKeywords(TypedDict, total=False):
    """:class:`EstimationOptions` as keyword arguments (for type checkers)."""

    estimator: object
    time: object
    max_steps: int | None
    mode: str | pytensor.compile.Mode | None
    dtypes: Literal["convert", "strict"]
    accumulate: Literal["host", "graph"]
    upstream: Literal["batch", "population"]
    upstream_tol: float
    upstream_se: float | None
    upstream_passes: int
    target_error: float | None
    min_batches: int


def check_target_error(target: object, call: str) -> float | None:
    """``target_error`` as a float in (0, 1) or None, or a PopstatsError."""
    if target is None:
        return None
    number = as_number(target)
    if number is None or not 0 < number < 1:
        raise PopstatsError(
            f"{call}(target_error=...): expected a number in (0, 1) or None (the "
            f"relative standard error at which the pass stops, e.g. 0.01), got "
            f"{describe_value(target)}. Pass None to use every batch."
        )
    return number


def check_max_steps(max_steps: object, call: str) -> int | None:
    """``max_steps`` as an int or None, or a PopstatsError."""
    return check_int(max_steps, f"{call}(max_steps=...)", none=True)


def check_mode(mode: object, call: str) -> None:
    """Raise a PopstatsError for a mode PyTensor does not know."""
    try:
        if not isinstance(mode, str | pytensor.compile.Mode | None):
            raise TypeError("a mode is a name, a Mode or None")
        pytensor.compile.mode.get_mode(mode)
    except (ValueError, TypeError, KeyError) as exc:
        raise PopstatsError(
            f"{call}(mode=...): PyTensor does not know the mode "
            f"{describe_value(mode)} ({exc}). Use None (the default), "
            f"'FAST_COMPILE', 'CVM', 'NUMBA', 'JAX', 'PYTORCH' or a Mode."
        ) from exc


#: The options' documentation (numpydoc parameters), written once:
#: :func:`takes_options` puts it in each public docstring in place of the
#: line ``[estimation options]``.
OPTIONS_DOC = """\
estimator : str, Estimator or dict, default "mean"
    ``"mean"`` (the plain average over batches, the original tool's),
    ``"weighted"`` (by element count), ``"pooled"`` (exact moments of all
    data, fvcore's PreciseBN), ``"unbiased"`` (variances times m/(m-1),
    PyTorch's ``update_bn``), ``"ema"`` (running average), an
    :class:`~popstats.Estimator` with options (such as
    ``Estimator("ema", momentum=0.01, debias=True)``), or a dict from label
    pattern (``fnmatch``) to those: first match wins, unmatched use
    ``"mean"``. See :doc:`/estimators` for which peer each equals.
time : "step", "pooled", tuple or dict, default "step"
    Inside loops: one value per time step (``"step"``) or one for all
    steps (``"pooled"``); a tuple gives the mode per loop level (outermost
    first), a dict maps name or label patterns to either (see
    :func:`~popstats.export`). Pooled over a loop's steps, each batch's
    statistic is that of all its elements over those steps (steps weighed
    by ``count`` when given, else equally; a variance with its paired mean
    exactly, the between-step spread included), and every estimator
    combines these per-batch values as it combines batches: so
    ``"unbiased"`` is ``"mean"`` times M/(M-1), M the elements per batch
    (see :doc:`/estimators`).
max_steps : int, optional
    Keep at most this many steps per time axis; later steps are not
    estimated and, at inference, use the last kept one. Pooled loops
    combine all their steps.
mode : str or Mode, optional
    Compilation mode of the estimation function.
dtypes : {"convert", "strict"}, default "convert"
    Batch values of another dtype than their input's are converted when
    nothing that matters is lost (integers in range, finite floats; see
    :mod:`popstats._src.estimation.batches`), otherwise refused;
    ``"strict"`` refuses any other dtype.
accumulate : {"host", "graph"}, default "host"
    Where the batches are added up; the results are the same.
    ``"host"``: the function returns the statistics and NumPy adds them
    (float64). ``"graph"``: the compiled function adds them to float64
    accumulators in shared variables
    (:mod:`popstats._src.estimation.accumulate_graph`): one call per batch
    whatever the number of statistics, nothing copied back per batch, the
    state read once per run (and per checkpoint). On CPU ``"host"`` is as
    fast or faster (``benchmarks/estimation_cost.py --accumulate``);
    ``"graph"`` is for devices. In JAX mode the model's parameters (taken
    when the pass starts) go to the device once per pass, and ``"graph"``
    keeps the accumulators there too; without 64-bit floats
    (``floatX="float32"``) the accumulators are float32, folded into
    float64 on the host every 16 batches (see :doc:`/pytensor-versions`,
    "Estimation in each backend"). One Estimation runs one shared-variable
    graph pass at a time (its accumulators hold it).
upstream : {"batch", "population"}, default "batch"
    What the batch norms upstream of a statistic normalize with while it
    is estimated. ``"batch"``: their batch statistics, as in training (one
    pass; what every peer does). ``"population"``: their population
    values, as in the inference graph, so that each statistic is that of
    the input its layer sees at inference: passes over the same batches,
    each on the inference graph of the previous pass's values, until the
    values are a fixed point (see :doc:`/upstream`). ``batches`` must then
    be iterable more than once (a list, or a loader whose ``__iter__``
    starts again), giving the same data every time. With ``checkpoint``,
    pass k saves to its own file (``run.npz``: ``run.pass0.npz``,
    ``run.pass1.npz``, ...; kept when done: called again, the finished
    passes replay from them; delete them all to start afresh).
upstream_tol : float, default 1e-10
    With ``upstream="population"``: stop when no value changed between two
    passes by more than this, relative to the largest magnitude of its
    statistic.
upstream_se : float, optional
    With ``upstream="population"``, in place of ``upstream_tol``: stop when
    every value (each cell and unit of each statistic) changed between two
    passes by at most this fraction of its standard error (the later
    pass's), e.g. ``0.1``: the passes stop once their change is small
    against the estimate's own sampling error (see :doc:`/upstream`,
    "Stopping at the statistics' precision"). In (0, 1]. Cells with no
    standard error (reached by fewer than 2 batches) are not judged
    (``stats.fixed_point.unjudged`` counts them); a change within 1e-10 of
    its statistic's largest magnitude (rounding, or a standard error of 0)
    passes. Not with ``upstream_tol``: one rule or the other.
upstream_passes : int, default 50
    With ``upstream="population"``: the most passes to take (the first, in
    batch mode, included); not converged by then is an error.
target_error : float, optional
    Stop the pass once every statistic's relative standard error is below
    this (e.g. ``0.01``; in (0, 1)); None (the default) uses every batch.
    Per statistic the norm is the largest relative standard error over its
    units and over its cells (time steps) reached by at least
    ``min_batches`` batches; a mean's error is relative to its unit's
    spread. It is checked after ``min_batches`` batches, then each time the
    count has grown by about 10%, so a pass reads its state O(log n) times.
    Cells reached by fewer batches are left out of the rule and listed as
    imprecise. The result's :attr:`~popstats.PopulationStatistics.stopping`
    records why and when the pass stopped (see :doc:`/estimators`,
    "Stopping when the data suffices").
min_batches : int, default 10
    With ``target_error``: the batches a cell needs before its standard
    error counts (at least 2), and the first check.
"""

_MARKER = re.compile(r"^([ \t]*)\[estimation options\]$", re.MULTILINE)

F = TypeVar("F", bound=Callable[..., Any])


def takes_options(function: F) -> F:
    """Show the estimation options in ``function``'s signature and docstring.

    ``function`` takes them as ``**options``; its signature (what ``help``,
    IDEs and Sphinx show) lists them instead, with their defaults, before
    its other keyword-only parameters; the docstring line ``[estimation
    options]`` becomes :data:`OPTIONS_DOC`, indented as that line. A class
    gets its docstring filled and its ``__init__``'s signature.
    """
    target: Any = function.__init__ if isinstance(function, type) else function  # type: ignore[misc]  # a decorated class's own __init__ (mypy: unsound off an instance)
    signature = inspect.signature(target)
    params = [p for p in signature.parameters.values()
              if p.kind is not inspect.Parameter.VAR_KEYWORD]
    first = next((i for i, p in enumerate(params)
                  if p.kind is inspect.Parameter.KEYWORD_ONLY), len(params))
    options = [
        inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY,
                          default=f.default, annotation=f.type)
        for f in dataclasses.fields(EstimationOptions)
    ]
    target.__signature__ = signature.replace(
        parameters=[*params[:first], *options, *params[first:]])
    if function.__doc__:
        function.__doc__ = _MARKER.sub(
            lambda m: "\n".join(m.group(1) + line if line else line
                                for line in OPTIONS_DOC.rstrip("\n").split("\n")),
            function.__doc__,
        )
    return function
