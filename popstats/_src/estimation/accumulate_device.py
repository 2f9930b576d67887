"""Device accumulation for JAX: the estimators' updates as one jitted call.

JAX traces with static shapes, so the growing accumulators of
:mod:`~popstats._src.estimation.accumulate_graph` (whose sizes are computed
in the graph) cannot be compiled there. Here the host decides every shape
from the arrays' metadata (no data crosses): the accumulators are grown on
the device before a batch that has more time steps than seen so far, and
:func:`make_update` builds one jitted function that adds a batch's
statistics (device arrays, capped at ``max_steps`` and padded to the
accumulators' cells inside the trace) to all accumulators, and returns the
checks (values finite, counts valid:
:mod:`~popstats._src.estimation.checks`). The formulas are
:func:`~popstats._src.estimation.formulas.update`'s, with ``jax.numpy`` as
the array namespace.

Stage: estimation (:mod:`popstats._src.estimation`). Members:
:func:`grow_fields`, :func:`make_update`, :func:`new_fields`, :func:`to_host`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from popstats._src.estimation import estimators as est
from popstats._src.estimation import formulas as fm
from popstats._src.estimation.checks import check_cells, passed, reached_cells
from popstats._src.export.exporter import Site

__all__ = ["grow_fields", "make_update", "new_fields", "to_host"]


def new_fields(estimator: est.Estimator, role: str | None, cells: tuple,
               own: tuple, dtype: str) -> dict[str, Any]:
    """Device fields counting nothing, for ``cells`` and a statistic ``own``."""
    import jax.numpy as jnp

    out = {}
    for field in est.fields(estimator, role):
        if field == "n":
            out[field] = jnp.zeros(cells, dtype="int64" if dtype == "float64"
                                   else "int32")
        else:
            shape = cells + own if field in est.VALUE_FIELDS else cells
            out[field] = jnp.full(shape, fm.field_start(field), dtype=dtype)
    return out


def grow_fields(fields: dict[str, Any], cells: tuple) -> dict[str, Any]:
    """``fields`` widened to ``cells`` time steps (new cells count nothing)."""
    import jax.numpy as jnp

    have = fields["n"].shape
    if all(c <= h for c, h in zip(cells, have, strict=True)):
        return fields
    out = {}
    for field, array in fields.items():
        widths = [(0, max(c - h, 0)) for c, h in zip(cells, have, strict=True)]
        widths += [(0, 0)] * (array.ndim - len(have))
        out[field] = jnp.pad(array, widths,
                             constant_values=fm.field_start(field))
    return out


def _prepare(value, count, weight, axes, max_steps, cells, dtype, estimator, role):
    """A statistic's batch arrays capped, padded to ``cells``; where the
    batch reached (False on padding); and whether its checks passed."""
    import jax.numpy as jnp

    cap = (slice(0, max_steps),) * axes if max_steps is not None else ()
    value = value[cap].astype(dtype)
    count = None if count is None else count[cap].astype(dtype)
    weight = None if weight is None else weight[cap]
    reached = reached_cells(jnp, value.shape[:axes], count, weight)
    ok = passed(check_cells(jnp, value, count, reached, estimator, role))
    pad = [(0, c - s) for c, s in zip(cells, value.shape[:axes], strict=True)]
    if any(p for _, p in pad):
        value = jnp.pad(value, pad + [(0, 0)] * (value.ndim - axes))
        reached = jnp.pad(reached, pad, constant_values=False)
        if count is not None:
            count = jnp.pad(count, pad)
    value, count, _ = fm.mask(jnp, reached, value, count)
    return value, count, reached, ok


def make_update(sites: Sequence[Site], estimators: Sequence[est.Estimator],
                partners: Sequence[int | None], max_steps: int | None,
                dtype: str) -> Callable:
    """A jitted ``update(fields, stats) -> (new fields, checks)``.

    ``fields``: per statistic its dict of device arrays, already grown to the
    batch's (capped) steps, or None for a statistic the batch does not
    update (not yet started, or reaching no cell); ``stats``: per statistic
    (value, count or None, weight or None). ``checks`` holds one bool per
    statistic.
    """
    import jax
    import jax.numpy as jnp

    def update(fields, stats):
        prepared: list[Any] = []
        for site, estimator, old, (value, count, weight) in zip(
            sites, estimators, fields, stats, strict=True
        ):
            if old is None:
                prepared.append(None)
                continue
            cells = old["n"].shape
            prepared.append(_prepare(value, count, weight, site.time_axes,
                                     max_steps, cells, dtype, estimator,
                                     site.role))
        out: list[dict[str, Any] | None] = []
        checks = []
        for i, (site, estimator, old) in enumerate(
            zip(sites, estimators, fields, strict=True)
        ):
            if old is None:
                out.append(None)
                checks.append(jnp.asarray(True))
                continue
            value, count, reached, ok = prepared[i]
            mean = None
            partner = partners[i]
            if partner is not None:
                mean = prepared[partner][0]
            new = fm.update(jnp, estimator, site.role, old, value, count, reached,
                            mean)
            out.append({k: new[k].astype(old[k].dtype) for k in old})
            checks.append(ok)
        return out, jnp.stack(checks)

    return jax.jit(update)


def to_host(fields: dict[str, Any]) -> dict[str, np.ndarray]:
    """A statistic's device fields as a float64 (counts int64) host state."""
    return {k: np.asarray(v, dtype=np.int64 if k == "n" else np.float64)
            for k, v in fields.items()}
