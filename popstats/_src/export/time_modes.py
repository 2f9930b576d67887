"""Time modes: per-step statistics, or one value for all steps of a loop.

``time=`` chooses, per statistic and loop level, ``"step"`` (one value per
time step) or ``"pooled"`` (one for all steps). :func:`pool_steps` combines
a loop's steps inside the graph, right after the loop: each batch's
statistic over all its steps, as if normalized over batch and time together
(sequence-wise batch normalization, Laurent et al. 2016); the estimator then
combines those per-batch values as it combines batches.

Stage: export (:mod:`popstats._src.export`). Members: :data:`TIME_MODES`,
:func:`align_cells`, :func:`check_patterns`, :func:`check_time`,
:func:`pool_steps`, :func:`resolve_time`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from fnmatch import fnmatchcase
from typing import Any, cast

import numpy as np
import pytensor.tensor as pt
from pytensor.tensor.variable import TensorVariable

from popstats._src.errors import PopstatsError, describe_value
from popstats._src.export.sites import Found, Site
from popstats._src.graph.alloc import alloc
from popstats._src.graph.marker import statistic_role

__all__ = [
    "TIME_MODES",
    "align_cells",
    "check_patterns",
    "check_time",
    "pool_steps",
    "resolve_time",
]

log = logging.getLogger("popstats")

TIME_MODES = ("step", "pooled")


def check_time(spec: object, call: str) -> None:
    """Raise unless ``spec`` is a valid ``time`` argument."""
    if isinstance(spec, Mapping):
        for pattern, value in spec.items():
            if not isinstance(pattern, str) or isinstance(value, Mapping):
                raise PopstatsError(
                    f"{call}(time=...): a dict maps label patterns (str) to a "
                    f"time mode or a tuple of them; got {pattern!r}: "
                    f"{describe_value(value)}."
                )
            check_time(value, call)
        return
    modes = spec if isinstance(spec, list | tuple) else (spec,)
    for mode in modes:
        if mode not in TIME_MODES:
            raise PopstatsError(
                f"{call}(time=...): unknown time mode {describe_value(mode)}; "
                f"allowed: 'step', 'pooled', a tuple of them by loop level "
                f"(outermost first), or a dict from label pattern to those."
            )


def resolve_time(
    spec: object, label: str, depth: int, name: str | None = None
) -> tuple[str, ...]:
    """Per loop level (outermost first) ``"step"`` or ``"pooled"``.

    ``spec`` (checked by :func:`check_time`) is a mode for all levels, a
    sequence of modes by level (levels past its end use ``"step"``), or a
    mapping from pattern to either: the first pattern (``fnmatch``) matching
    the statistic's name or label wins, as for ``estimator=``; unmatched
    statistics use ``"step"``.
    """
    if isinstance(spec, Mapping):
        for pattern, value in spec.items():
            if fnmatchcase(label, pattern) or (
                name is not None and fnmatchcase(name, pattern)
            ):
                return resolve_time(value, label, depth)
        return ("step",) * depth
    if isinstance(spec, str):
        return (spec,) * depth
    modes = cast(Sequence[str], spec)  # check_time allowed a sequence here
    return (*modes[:depth], *(("step",) * (depth - len(modes))))


def pool_steps(found: Found, partner: Found | None) -> None:
    """Combine the leading (step) axis of ``found`` into one value, in place.

    The batch's statistic over all the steps of the loop, as if normalized
    over batch and time together (sequence-wise batch normalization, Laurent
    et al. 2016): steps weigh by their element ``count`` when given, else
    equally (a step holding several inner steps pooled already weighs by
    their number); a variance (or std) whose paired mean is in the same loop
    combines exactly, as the variance of all the elements of all steps,
    sum_t w_t (var_t + (mean_t - mean)^2) / sum_t w_t, and a std through
    its variance (the pair, time modes checked, is the exporter's, from
    :mod:`popstats._src.export.pairing`). Steps with count 0 are not reached
    and weigh nothing.
    ``count`` becomes the elements of all steps, ``weight`` the number of
    steps combined per remaining cell (0: the batch reached none).
    """
    value, count = found.value, found.count
    cells = 1 + found.time[1:].count("step")  # this axis and inner step axes
    weight = found.weight
    if weight is None:
        # not pt.alloc: it would fold the sizes through the whole graph above
        weight = alloc(np.float64(1.0), *(value.shape[i] for i in range(cells)))
    live = None
    if count is not None:
        # A step whose count is 0 (a mask left no element; its value is 0/0)
        # is not reached: it weighs nothing, and its value is not read.
        live = count > 0
        value = pt.switch(align_cells(live, value), value, pt.zeros_like(value))
        weight = weight * live
    w = count.astype("float64") if count is not None else weight
    total = w.sum(axis=0)
    safe = pt.switch(total > 0, total, 1.0)  # cells reached by no step: 0
    role = statistic_role(found.stat)
    if role in ("var", "std") and partner is not None:
        means = partner.value
        if live is not None:
            means = pt.switch(align_cells(live, means), means, pt.zeros_like(means))
        grand = _weighted_mean(means, w, safe)
        variance = value if role == "var" else value**2
        pooled = _weighted_mean(variance + (means - grand) ** 2, w, safe)
        found.value = pooled if role == "var" else pt.sqrt(pooled)
    else:
        found.value = _weighted_mean(value, w, safe)
    found.value = found.value.astype(found.stat.dtype)
    found.count = count.sum(axis=0) if count is not None else None
    found.weight = weight.sum(axis=0)


def _weighted_mean(
    value: TensorVariable, w: TensorVariable, total: TensorVariable
) -> TensorVariable:
    """sum_t w_t value_t / total over the leading axis (cells aligned)."""
    summed = (value * align_cells(w, value)).sum(axis=0)
    return summed / align_cells(total, summed)


def align_cells(cells: Any, value: Any) -> Any:
    """A per-cell array with trailing axes added to broadcast against ``value``.

    The one per-cell broadcast of the package: indexing with ``None``, so
    it takes NumPy, PyTensor and JAX arrays alike (the estimators' formulas,
    :mod:`~popstats._src.estimation.formulas`, use it on all three).
    """
    return cells[(Ellipsis,) + (None,) * (value.ndim - cells.ndim)]


def check_patterns(
    spec: Mapping, sites: Sequence[Site], call: str, argument: str
) -> list[str]:
    """Log a warning for each pattern of a dict option that matches nothing.

    A pattern of ``time=`` or ``estimator=`` that matches no statistic's name
    or label is a typo, or meant for another graph (one dict may serve
    several models); its statistics get the default. Returns the patterns.
    """
    unmatched = [
        pattern for pattern in spec
        if isinstance(pattern, str) and not any(
            fnmatchcase(s.name, pattern) or fnmatchcase(s.label, pattern)
            for s in sites
        )
    ]
    for pattern in unmatched:
        log.warning(
            "%s(%s=...): the pattern %r matches no statistic of this graph "
            "(names: %s); patterns (fnmatch) match names or labels",
            call, argument, pattern, ", ".join(sorted(s.name for s in sites)),
        )
    return unmatched
