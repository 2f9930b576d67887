"""Estimators: small accumulators with ``init`` / ``update`` / ``merge`` / ``finalize``.

Estimation stage. :class:`Estimator` (an estimator and its options), how
``estimator=`` is checked and resolved per statistic
(:func:`check_estimator_spec`, :func:`resolve_estimator`), which statistics
an estimator scales or weighs by their count (:func:`bessel_corrected`,
:func:`uses_count`), and the host (NumPy) states: :func:`fields`,
:func:`init`, :func:`grow`, :func:`update`, :func:`merge`, :func:`finalize`,
:func:`standard_error`, :func:`relative_error` and :func:`fill_uncovered`.
The arithmetic itself is written once, for NumPy, PyTensor and JAX alike,
in :mod:`~popstats._src.estimation.formulas`.

Each estimator turns a stream of per-batch statistics into a population
value, cell by cell (a cell is one time step, or one ``(t1, t2)`` pair for a
statistic two loops deep). Its state is a dict of float64/int64 arrays whose
leading axes are the time steps seen so far; :func:`grow` widens a state when
a longer run arrives. ``merge(a, b)`` of two states over disjoint data equals
the state over all of it, so partial passes combine exactly.

Per batch and cell an update receives the statistic ``value``, the number of
elements it reduced over (``count``, when known), which cells the batch
reached and, for the pooled variance, the paired batch ``mean``. Under time
pooling a batch's steps arrive already combined into one value per batch
(see :func:`~popstats._src.export.time_modes.pool_steps`), so every
estimator sees one value per batch and cell either way.

References: the parallel variance combination of Chan, Golub & LeVeque
(1979); the inference rule of Ioffe & Szegedy (2015), Var[x] =
m/(m-1) E[sigma_B^2]; PyTorch's running averages (momentum 0.1, running mean
starting at 0 and variance at 1).

Stage: estimation (:mod:`popstats._src.estimation`). Members:
:data:`ESTIMATORS`, :data:`ROLES`, :data:`VALUE_FIELDS`, :class:`Estimator`,
:func:`bessel_corrected`, :func:`check_estimator_spec`, :func:`fields`,
:func:`fill_uncovered`, :func:`relative_error`, :func:`resolve_estimator`,
:func:`standard_error`, :func:`uses_count`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from fnmatch import fnmatchcase
from types import EllipsisType

import numpy as np

from popstats._src.errors import PopstatsError, check_number, describe_value
from popstats._src.estimation import formulas as fm
from popstats._src.estimation import in_place

__all__ = [
    "ESTIMATORS",
    "ROLES",
    "VALUE_FIELDS",
    "Estimator",
    "bessel_corrected",
    "check_estimator_spec",
    "fields",
    "fill_uncovered",
    "relative_error",
    "resolve_estimator",
    "standard_error",
    "uses_count",
]

ESTIMATORS = ("mean", "weighted", "pooled", "unbiased", "ema")
ROLES = ("mean", "var", "std")

State = dict[str, np.ndarray]


@dataclass(frozen=True, repr=False)
class Estimator:
    """An estimator and its options.

    Which peer each estimator equals, exactly and for which statistic, is
    tabulated in ``docs/estimators.rst`` ("Which peer each estimator equals").

    Parameters
    ----------
    name : {"mean", "weighted", "pooled", "unbiased", "ema"}
        ``"mean"``: the equal-weight average over batches (the original
        ``popstats.py``); for means this is PyTorch's ``update_bn`` (BatchNorm
        with ``momentum=None``), for variances it is not (that averages
        unbiased variances: ``"unbiased"``). ``"weighted"``: weighted by each
        batch's element count (for means, fvcore PreciseBN's). ``"pooled"``:
        the exact moments of all data seen, from paired mean and variance (or
        std); for means and variances fvcore PreciseBN's ``update_bn_stats``.
        ``"unbiased"``: variances scaled by m/(m-1) before an equal-weight
        average; for means and variances PyTorch's ``update_bn``. ``"ema"``:
        the running average ``v <- (1 - momentum) v + momentum x`` from 0 for
        means and 1 for variances and stds; of the biased batch variance,
        Keras' and Flax's moving averages (their ``momentum=0.99`` is
        ``momentum=0.01`` here), and with ``unbiased=True`` PyTorch's
        BatchNorm ``running_mean`` and ``running_var``.
    momentum : float, optional
        For ``"ema"`` only, in (0, 1]; default 0.1.
    unbiased : bool, default False
        For ``"ema"`` only (keyword): average each batch's variance times
        ``m / (m - 1)``, ``m`` its ``count``, as PyTorch's ``running_var``
        does; a ``std`` is averaged as ``sqrt(m / (m - 1))`` times the batch
        std (the square root of the scaled variance, per batch). Means and
        statistics without a role are averaged as they are. Needs the
        ``count`` of every variance and std, and batches of at least 2
        elements.
    debias : bool, default False
        For ``"ema"`` only (keyword): the zero-debiased running average,
        ``v_n / (1 - (1 - momentum) ** n)`` without the start value, ``n`` the
        batches that reached the cell (per step: that step's ``coverage``), as
        Adam (Kingma & Ba 2015) corrects its moments and Equinox's
        ``BatchNorm`` its averages. It is the average of the batches with
        weights ``momentum (1 - momentum) ** (n - k)`` summing to 1: the
        first batch's value after one batch, a constant after constant
        batches, whatever the momentum (``docs/estimators.rst``). ``merge``
        of two states gives the debiased average over the first data, then
        the second (as the biased one). With ``unbiased=True`` the scaled
        batch variances are debiased alike.

    Examples
    --------
    >>> from popstats import Estimator
    >>> Estimator("ema", momentum=0.01)
    Estimator(name='ema', momentum=0.01)
    >>> Estimator("ema", unbiased=True)   # PyTorch's BatchNorm running averages
    Estimator(name='ema', momentum=0.1, unbiased=True)

    Debiased, one batch gives that batch's mean, where the plain average is
    still mostly its start (0 for a mean):

    >>> import numpy as np, pytensor.tensor as pt, popstats
    >>> x = pt.vector("x")
    >>> y = x - popstats.bn_statistic(x.mean(), "m", role="mean")
    >>> batches = [{"x": np.array([4.0, 8.0])}]
    >>> for debias in (False, True):
    ...     e = Estimator("ema", momentum=0.1, debias=debias)
    ...     stats = popstats.estimate([x], y, batches, estimator=e)
    ...     print(e, round(float(stats["m"].value), 6))
    Estimator(name='ema', momentum=0.1) 0.6
    Estimator(name='ema', momentum=0.1, debias=True) 6.0
    """

    name: str
    momentum: float | None = None
    unbiased: bool = dataclass_field(default=False, kw_only=True)
    debias: bool = dataclass_field(default=False, kw_only=True)

    def __post_init__(self) -> None:
        if self.name not in ESTIMATORS:
            raise PopstatsError(
                f"Estimator(name=...): unknown estimator {self.name!r}; allowed: "
                f"{', '.join(map(repr, ESTIMATORS))}."
            )
        if self.name == "ema":
            momentum = check_number(
                0.1 if self.momentum is None else self.momentum,
                "Estimator(momentum=...)", minimum=0, maximum=1, above=True,
                fix="PyTorch's default is 0.1 (Keras' momentum=0.99 is 0.01 here).")
            object.__setattr__(self, "momentum", momentum)
        elif self.momentum is not None:
            raise PopstatsError(
                f"Estimator(momentum=...): only 'ema' takes a momentum; got "
                f"momentum={self.momentum!r} for {self.name!r}."
            )
        if not isinstance(self.unbiased, bool | np.bool_):
            raise PopstatsError(
                f"Estimator(unbiased=...): expected True or False, got "
                f"{describe_value(self.unbiased)}. unbiased=True averages each "
                f"batch's variance times m/(m-1), as PyTorch's running_var does; "
                f"False (the default) the biased variance, as Keras and Flax do."
            )
        object.__setattr__(self, "unbiased", bool(self.unbiased))
        if self.unbiased and self.name != "ema":
            raise PopstatsError(
                f"Estimator(unbiased=...): only 'ema' takes unbiased; got "
                f"unbiased=True for {self.name!r}. For the equal-weight average of "
                f"unbiased batch variances (PyTorch's update_bn) use "
                f"Estimator('unbiased'); for the exact variance of all data, "
                f"Estimator('pooled')."
            )
        if not isinstance(self.debias, bool | np.bool_):
            raise PopstatsError(
                f"Estimator(debias=...): expected True or False, got "
                f"{describe_value(self.debias)}. debias=True divides the running "
                f"average by 1 - (1 - momentum)**n, n its batches, as Adam does; "
                f"False (the default) keeps PyTorch's, Keras' and Flax's average "
                f"from its start value."
            )
        object.__setattr__(self, "debias", bool(self.debias))
        if self.debias and self.name != "ema":
            raise PopstatsError(
                f"Estimator(debias=...): only 'ema' takes debias; got "
                f"debias=True for {self.name!r}, which has no start value to "
                f"remove. Use Estimator('ema', momentum=..., debias=True)."
            )

    def __repr__(self) -> str:
        extra = ", unbiased=True" if self.unbiased else ""
        extra += ", debias=True" if self.debias else ""
        return f"Estimator(name={self.name!r}, momentum={self.momentum!r}{extra})"

    @property
    def needs_count(self) -> bool:
        return self.name in ("weighted", "pooled", "unbiased") or self.unbiased


def as_estimator(spec: object, call: str) -> Estimator:
    if isinstance(spec, Estimator):
        return spec
    if isinstance(spec, str):
        if spec not in ESTIMATORS:
            raise PopstatsError(
                f"{call}(estimator=...): unknown estimator {spec!r}; allowed: "
                f"{', '.join(map(repr, ESTIMATORS))}."
            )
        return Estimator(spec)
    raise PopstatsError(
        f"{call}(estimator=...): expected a name ({', '.join(map(repr, ESTIMATORS))}), "
        f"an Estimator, or a dict from label pattern to those; got "
        f"{describe_value(spec)}."
    )


def check_estimator_spec(spec: object, call: str) -> None:
    """Raise unless ``spec`` is a valid ``estimator=`` argument (no graph needed)."""
    if isinstance(spec, Mapping):
        for pattern, value in spec.items():
            if not isinstance(pattern, str):
                raise PopstatsError(
                    f"{call}(estimator=...): keys are label patterns (str); got "
                    f"{describe_value(pattern)}."
                )
            as_estimator(value, call)
    else:
        as_estimator(spec, call)


def resolve_estimator(spec: object, name: str, label: str, call: str) -> Estimator:
    """The estimator for one statistic: ``spec`` itself, or its first match.

    A mapping is searched in order for a pattern (``fnmatch`` style, e.g.
    ``"lstm.*"``) matching the statistic's name or label; ``"*"`` is the
    catch-all, and without one unmatched statistics use ``"mean"``.
    """
    if isinstance(spec, Mapping):  # checked by check_estimator_spec
        for pattern, value in spec.items():
            if fnmatchcase(name, pattern) or fnmatchcase(label, pattern):
                return as_estimator(value, call)
        return Estimator("mean")
    return as_estimator(spec, call)


def bessel_corrected(estimator: Estimator, role: str | None) -> bool:
    """Whether ``estimator`` scales a variance (or std) by m/(m-1)."""
    return role in ("var", "std") and (
        estimator.name == "unbiased" or estimator.unbiased  # ema, unbiased=True
    )


def uses_count(estimator: Estimator, role: str | None) -> bool:
    """Whether ``estimator`` weighs or scales a statistic by its count."""
    return estimator.name in ("weighted", "pooled") or bessel_corrected(
        estimator, role
    )


# -- state arrays -----------------------------------------------------------

# Fields with the statistic's own shape after the time axes; the others are
# per cell. "n" (batches per cell) is the coverage, in every state.
VALUE_FIELDS = frozenset({"mean", "m2", "acc", "xm", "xx", "xk", "p", "q",
                          "ref", "refv", *fm.POOLED_SUMS})

#: the fields of every state behind its standard error and trend test
#: (``docs/estimators.rst``, "Standard errors"): the batches' inputs' sum of
#: squared deviations ``xx`` and co-moment with the batch ordinal ``xk``
_EQUAL = ("xx", "xk")


def fields(estimator: Estimator, role: str | None) -> tuple[str, ...]:
    """The names of the arrays in a state of ``estimator`` for ``role``.

    Besides the value's own fields (``n``, ``w``, ``mean``, ``m2``,
    ``decay``, ``acc``), every state holds those of its standard error:
    ``xx`` and ``xk`` (with ``xm``, the batches' equal-weight mean, where
    the value is not that mean), and for the count-weighted estimators
    ``u`` (the sum of squared weights) with ``p``, ``q`` (``"weighted"`` and
    the ``"pooled"`` mean) or the pooled variance's sums ``srr``, ``srd``,
    ``sr``, ``sdd``, ``sd``, kept around a reference per cell and unit, the
    first batch's value ``ref`` (and variance ``refv`` for the pooled
    variance), and recentred where read.
    """
    if estimator.name == "ema":
        return ("n", "decay", "acc", "xm", *_EQUAL)
    if estimator.name == "pooled" and role in ("var", "std"):
        return ("n", "w", "mean", "m2", "xm", *_EQUAL, "u", "ref", "refv",
                *fm.POOLED_SUMS)
    if estimator.name in ("weighted", "pooled"):
        return ("n", "w", "mean", "xm", *_EQUAL, "u", "ref", "p", "q")
    return ("n", "w", "mean", *_EQUAL)


def init(estimator: Estimator, role: str | None, shape: tuple[int, ...],
         depth: int) -> State:
    """An empty state for a statistic of ``shape`` inside ``depth`` loops."""
    steps = (0,) * depth
    state: State = {}
    for field in fields(estimator, role):
        if field == "n":
            state[field] = np.zeros(steps, dtype=np.int64)
        elif field in VALUE_FIELDS:
            state[field] = np.zeros(steps + shape, dtype=np.float64)
        else:
            state[field] = np.full(steps, fm.field_start(field), dtype=np.float64)
    return state


def steps_of(state: State) -> tuple[int, ...]:
    return state["n"].shape


def grow(state: State, steps: tuple[int, ...]) -> State:
    """Widen every array of ``state`` to at least ``steps`` time steps."""
    have = steps_of(state)
    new = tuple(max(a, b) for a, b in zip(have, steps, strict=True))
    if new == have:
        return state
    grown: State = {}
    for field, array in state.items():
        shape = new + array.shape[len(have) :]
        out = np.full(shape, fm.field_start(field), dtype=array.dtype)
        out[tuple(slice(0, n) for n in array.shape)] = array
        grown[field] = out
    return grown


def update(
    estimator: Estimator,
    role: str | None,
    state: State,
    value: np.ndarray,
    count: np.ndarray | None,
    reached: np.ndarray | None,
    mean: np.ndarray | None,
    scratch: list[np.ndarray] | None = None,
) -> State:
    """Add one batch; arrays cover the batch's cells (``value.shape[:depth]``).

    ``state`` must already be grown to the batch's steps; it is updated in
    place and returned. ``reached`` (None: all) marks the cells the batch
    reached; a cell it did not reach (a step where a mask left no element,
    count 0, or a pooled loop that ran no step) changes nothing, not even
    coverage. The formulas are :func:`~popstats._src.estimation.formulas.update`'s;
    given ``scratch`` (``in_place.scratch_needed`` float64 arrays of ``value``'s
    shape), a batch that reached every cell is added by
    :func:`~popstats._src.estimation.in_place.update` instead (the same
    operations without new arrays, bit for bit).
    """
    depth = state["n"].ndim
    cells: tuple[slice | EllipsisType, ...] = (
        *(slice(0, n) for n in value.shape[:depth]), Ellipsis)
    view = {field: array[cells] for field, array in state.items()}
    if reached is not None and reached.all():
        reached = None
    if reached is not None:
        value, count, mean = fm.mask(np, reached, value, count, mean)
    if estimator.unbiased and role in ("var", "std"):
        _check_bessel(count, role)
    if scratch is not None and in_place.handles(estimator, role, reached, count):
        in_place.update(estimator, role, view, value, count, mean, scratch)
        return state
    new = fm.update(np, estimator, role, view, value, count, reached, mean)
    for field, array in new.items():
        view[field][...] = array
    return state


def _check_bessel(count: np.ndarray | None, role: str) -> None:
    """Raise unless every reached cell has a count above 1 (``ema``,
    ``unbiased=True``; ``count`` is 0 in cells not reached)."""
    if count is None or not (count[count > 0] > 1).all():
        got = "no count" if count is None else f"count {count[count > 0].min():g}"
        raise PopstatsError(
            f"Estimator('ema', unbiased=True): a batch {role} is scaled by "
            f"m/(m-1) (m its count), but a batch has {got}. Give the statistic "
            f"its count (bn_statistic(..., count=...)) and batches of at least "
            f"2 elements, or use unbiased=False."
        )


def merge(estimator: Estimator, role: str | None, a: State, b: State) -> State:
    """The state over the data of ``a`` and then ``b`` (exact).

    Every field is an array, 0-d ones included (NumPy arithmetic on 0-d
    arrays gives scalars, which later in-place updates would not reach).
    The formulas are :func:`~popstats._src.estimation.formulas.merge`'s.
    """
    steps = tuple(max(x, y) for x, y in zip(steps_of(a), steps_of(b), strict=True))
    merged = fm.merge(np, estimator, grow(a, steps), grow(b, steps))
    return {k: np.asarray(v) for k, v in merged.items()}


def finalize(estimator: Estimator, role: str | None, state: State) -> np.ndarray:
    """The population value per cell (cells no batch reached are left as 0);
    an array of its own
    (:func:`~popstats._src.estimation.formulas.finalize`)."""
    value = fm.finalize(np, estimator, role, state)
    return value.copy() if "mean" in state and value is state["mean"] else value


def fill_uncovered(value: np.ndarray, coverage: np.ndarray) -> np.ndarray:
    """Fill cells no batch reached from the nearest covered earlier step.

    Along the innermost time axis first, then outwards: a cell (t1, t2)
    takes (t1, t2') for the largest covered t2' < t2; a row no batch reached
    at all takes the row before it. This is the clamping rule of recurrent
    batch normalization (repeat the last step) applied per axis.
    """
    value = value.copy()
    covered = coverage > 0
    for axis in reversed(range(coverage.ndim)):
        if covered.all():
            break
        for t in range(1, coverage.shape[axis]):
            here = (slice(None),) * axis + (t,)
            before = (slice(None),) * axis + (t - 1,)
            holes = ~covered[here]
            if holes.any():
                value[here][holes] = value[before][holes]
                covered[here] |= covered[before]
    return value


def standard_error(estimator: Estimator, role: str | None,
                   state: State) -> np.ndarray:
    """The standard error of :func:`finalize`'s value per cell and unit
    (float64, the value's shape; ``inf`` where fewer than 2 batches reached,
    before :func:`fill_uncovered`).

    The formulas are :func:`~popstats._src.estimation.formulas.standard_error`'s
    (documented in ``docs/estimators.rst``, "Standard errors").
    """
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        se = fm.standard_error(np, estimator, role, state)
    return np.array(se, dtype=np.float64)


def relative_error(value: np.ndarray, se: np.ndarray, role: str | None,
                   spread: np.ndarray | None) -> np.ndarray:
    """The standard error ``se`` relative to the scale of ``value``, per cell
    and unit.

    The scale is ``|value|``, except for a statistic of role ``"mean"``
    with a paired ``spread`` (the population std of its unit: a mean near 0
    has no relative precision of its own, so it is measured against the
    spread of what it averages). 0 where ``se`` is 0; ``inf`` where the
    scale is 0 and ``se`` is not.

    Examples
    --------
    >>> import numpy as np
    >>> relative_error(np.array([2.0, -4.0]), np.array([0.1, 0.1]), "var", None)
    array([0.05 , 0.025])
    >>> relative_error(np.array([0.0]), np.array([0.1]), "mean", np.array([2.0]))
    array([0.05])
    """
    scale = np.abs(np.asarray(value, np.float64))
    if role == "mean" and spread is not None:
        scale = np.asarray(spread, np.float64)
    se = np.asarray(se, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(se == 0, 0.0, se / scale)
