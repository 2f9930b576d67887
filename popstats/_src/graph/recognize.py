"""Recognizers: batch statistics of other libraries' ops, found without marks.

A *recognizer* claims the applications of some op (a library's batch-norm
layer, say) and rebuilds each one as a body holding marked statistics. The
walk (:mod:`popstats._src.graph.walk`) treats a recognized application exactly like an
``OpFromGraph`` holding marked statistics: the body, built on the node's own
inputs, is visited at the node's graph level, once per application, in the
outer graph and inside ``Scan`` loops at any depth. Every later stage
(export, estimation, rewrite, describe, drift) therefore sees recognized
statistics as if the user had marked them.

The registry is ordered; the most recently registered recognizer that matches
an op wins, so a user can override a shipped one. popstats ships one
recognizer, ``"pytensor-ml"`` (:mod:`popstats._src.graph.pytensor_ml`), which
does not import pytensor-ml: it compares class names and modules.

Stage: graph (:mod:`popstats._src.graph`). Members:
:class:`RecognitionContext`, :class:`Recognizer`, :obj:`mark_moments`,
:func:`recognized_token`, :func:`recognizer_for`, :func:`recognizers`,
:func:`register_recognizer`, :func:`unregister_recognizer`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pytensor.graph.basic import Apply, Variable

from popstats._src.errors import PopstatsError, describe_value
from popstats._src.graph import pytensor_ml as _pytensor_ml
from popstats._src.graph.moments import mark_moments

__all__ = [
    "RecognitionContext",
    "Recognizer",
    "mark_moments",
    "recognized_token",
    "recognizer_for",
    "recognizers",
    "register_recognizer",
    "unregister_recognizer",
]


class RecognitionContext:
    """Where a recognized application stands, handed to ``Recognizer.expand``.

    Attributes
    ----------
    loops : tuple of str
        Names of the enclosing ``Scan`` loops, outermost first (empty in the
        outer graph).
    """

    def __init__(self, loops: tuple[str, ...],
                 origin: Callable[[Variable], Variable] | None = None):
        self.loops = loops
        self._origin = origin

    @property
    def depth(self) -> int:
        """How many loops enclose the application (0 in the outer graph)."""
        return len(self.loops)

    def origin(self, var: Variable) -> Variable:
        """The outermost variable ``var`` stands for.

        Inside a loop a node's inputs are the loop's inner placeholders;
        a non-sequence is traced out to the variable the loop was given (a
        shared parameter with its name, say), through every enclosing loop.
        Anything else is returned as it is.
        """
        return var if self._origin is None else self._origin(var)


@dataclass(frozen=True)
class Recognizer:
    """How to find the batch statistics of one kind of op.

    Parameters
    ----------
    name : str
        The registry key, e.g. ``"pytensor-ml"``.
    matches : callable
        ``matches(op) -> bool``: whether this recognizer claims ``op``. It
        is called on every op of every graph level walked: keep it cheap.
    expand : callable
        ``expand(node, context) -> list of Variable``: the node's outputs
        recomputed from ``node.inputs`` with the batch statistics marked
        (:func:`mark_moments` or :func:`~popstats.bn_statistic`), one
        variable per output of ``node``, of the same types. ``context`` is a
        :class:`RecognitionContext`.
    describe : callable, optional
        ``describe(op) -> str``: a description of the op that is the same in
        every process building the same model, used for fingerprints of
        loops holding it. The default is the op's class and its
        ``__props__`` values (not its ``name``: PyTensor interns equal ops
        in loop bodies, so a name may be another layer's).
    per_example : callable, optional
        ``per_example(op) -> bool``: whether ``op`` (another op of the same
        library, e.g. pytensor-ml's ``Im2Col``) computes each example alone,
        along axis 0 of its first input and output; the batch-independence
        check of :func:`~popstats.rewrite` follows the batch axis through
        such ops instead of reporting them as unknown.
    """

    name: str
    matches: Callable[[Any], bool]
    expand: Callable[[Apply, RecognitionContext], Sequence[Variable]]
    describe: Callable[[Any], str] | None = None
    per_example: Callable[[Any], bool] | None = None


_REGISTRY: dict[str, Recognizer] = {}


def register_recognizer(recognizer: Recognizer, *, replace: bool = False) -> Recognizer:
    """Add a recognizer to the registry; it wins over earlier ones.

    Parameters
    ----------
    recognizer : Recognizer
        What to register, under ``recognizer.name``.
    replace : bool
        Replace a recognizer already registered under that name (otherwise
        that is an error).

    Returns
    -------
    Recognizer
        ``recognizer``.

    Raises
    ------
    PopstatsError
        If ``recognizer`` is not a :class:`Recognizer`, or its name is taken
        and ``replace`` is false.

    Examples
    --------
    A toy batch norm written as an ``OpFromGraph`` subclass, which popstats
    knows nothing about until a recognizer says where its statistics are:

    >>> import numpy as np, pytensor, pytensor.tensor as pt, popstats
    >>> from pytensor.compile.builders import OpFromGraph
    >>> class ToyBatchNorm(OpFromGraph):
    ...     pass
    >>> x_in = pt.matrix("x_in")
    >>> body = (x_in - x_in.mean(0)) / pt.sqrt(x_in.var(0) + 1e-5)
    >>> toy = ToyBatchNorm([x_in], [body])
    >>> def expand(node, context):
    ...     (x,) = node.inputs
    ...     mean, var = popstats.mark_moments(x.mean(0), x.var(0), "toy",
    ...                                       count=x.shape[0])
    ...     return [(x - mean) / pt.sqrt(var + 1e-5)]
    >>> popstats.register_recognizer(popstats.Recognizer(
    ...     "toy", matches=lambda op: isinstance(op, ToyBatchNorm), expand=expand))
    Recognizer(name='toy', ...)
    >>> x = pt.matrix("x")
    >>> y = toy(x)
    >>> sorted((r.label, r.role, r.counted) for r in popstats.describe(y))
    [('toy.mean', 'mean', True), ('toy.var', 'var', True)]
    >>> batches = [{"x": np.random.default_rng(i).normal(3.0, 2.0, (64, 2))}
    ...            for i in range(4)]
    >>> f = pytensor.function([x], popstats.get_inference_graph([x], y, batches))
    >>> z = f(np.array([[5.0, 1.0]]))  # one row, normalized by the population
    >>> bool(np.allclose(z, [[1.0, -1.0]], atol=0.1))  # data: mean 3, std 2
    True
    >>> popstats.unregister_recognizer("toy").name
    'toy'
    """
    if not isinstance(recognizer, Recognizer):
        raise PopstatsError(
            f"register_recognizer(recognizer=...): expected a popstats.Recognizer, "
            f"got {describe_value(recognizer)}. Build one with "
            f"popstats.Recognizer(name, matches=..., expand=...)."
        )
    if recognizer.name in _REGISTRY and not replace:
        raise PopstatsError(
            f"register_recognizer(recognizer=...): a recognizer named "
            f"{recognizer.name!r} is already registered; registered: "
            f"{', '.join(map(repr, _REGISTRY))}. Pick another name, or pass "
            f"replace=True to replace it."
        )
    _REGISTRY.pop(recognizer.name, None)
    _REGISTRY[recognizer.name] = recognizer
    return recognizer


def unregister_recognizer(name: str) -> Recognizer:
    """Remove the recognizer registered under ``name`` and return it.

    Raises
    ------
    PopstatsError
        If no recognizer has that name.

    Examples
    --------
    >>> import popstats
    >>> mine = popstats.Recognizer("mine", matches=lambda op: False,
    ...                            expand=lambda node, context: [])
    >>> _ = popstats.register_recognizer(mine)
    >>> [r.name for r in popstats.recognizers()]
    ['pytensor-ml', 'mine']
    >>> popstats.unregister_recognizer("mine") is mine
    True
    """
    if name not in _REGISTRY:
        raise PopstatsError(
            f"unregister_recognizer(name=...): no recognizer named {name!r}; "
            f"registered: {', '.join(map(repr, _REGISTRY)) or 'none'}."
        )
    return _REGISTRY.pop(name)


def recognizers() -> tuple[Recognizer, ...]:
    """The registered recognizers, in registration order (last wins)."""
    return tuple(_REGISTRY.values())


def recognizer_for(op: object) -> Recognizer | None:
    """The recognizer claiming ``op`` (the latest registered), or None."""
    for recognizer in reversed(_REGISTRY.values()):
        if recognizer.matches(op):
            return recognizer
    return None


def acts_per_example(op: object) -> bool:
    """Whether a registered recognizer says ``op`` computes each example
    alone along axis 0 (its ``per_example``)."""
    return any(r.per_example is not None and r.per_example(op)
               for r in _REGISTRY.values())


def recognized_token(op: object) -> str | None:
    """A process-independent description of a recognized op, or None.

    None when no recognizer claims ``op``, or when it has no ``describe``
    and the op no ``__props__`` (it is then described like any other
    ``OpFromGraph``, by its inner graph).
    """
    recognizer = recognizer_for(op)
    if recognizer is None:
        return None
    if recognizer.describe is not None:
        return f"{recognizer.name}:{recognizer.describe(op)}"
    props = getattr(op, "__props__", ())
    if not props:
        return None
    cls = type(op)
    values = tuple((p, getattr(op, p)) for p in props)
    return f"{recognizer.name}:{cls.__module__}.{cls.__qualname__}{values!r}"


register_recognizer(Recognizer(
    "pytensor-ml", _pytensor_ml.matches, _pytensor_ml.expand, _pytensor_ml.describe,
    _pytensor_ml.per_example,
))
