"""alloc: an array of symbolic sizes, without folding the sizes through the graph.

``pt.alloc`` (and ``pt.zeros`` / ``pt.ones``, built on it) runs
``infer_static_shape`` in ``Alloc.make_node``: to find a static shape it
clones every graph above the sizes and rewrites it with the shape
rewrites. popstats builds arrays whose sizes are read from a batch
statistic's shape (``value.shape[0]``), so that clone is the whole
estimation graph, loops included -- once per call. In the graph
accumulator and the time pooling that was most of the time spent building
an estimation (``accumulate="graph"`` on a loop model: about 2 s of graph
building a statistic set, against a tenth of that on the host).

:func:`alloc` builds the node on stand-in sizes of the same types and then
gives it the real ones (the node cloned with them as inputs: equal types,
so no ``make_node`` again): the same ``Alloc``, without static sizes --
which popstats' arrays do not have anyway (their sizes come from the data).

Stage: graph mechanics (:mod:`popstats._src.graph`). Members: :func:`alloc`.
"""

from __future__ import annotations

from typing import Any, cast

import pytensor.tensor as pt
from pytensor.tensor.variable import TensorVariable

__all__ = ["alloc"]


def alloc(fill: Any, *sizes: Any) -> TensorVariable:
    """``pt.alloc(fill, *sizes)`` with no static sizes, built in constant time.

    Examples
    --------
    >>> import numpy as np, pytensor.tensor as pt
    >>> from popstats._src.graph.alloc import alloc
    >>> x = pt.matrix("x")
    >>> ones = alloc(np.float64(1.0), x.shape[0], 3)
    >>> ones.type.shape, ones.eval({x: np.zeros((2, 5))}).tolist()
    ((None, None), [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    """
    real = [pt.as_tensor(s) for s in sizes]
    # Alloc's one output (Op.__call__ is typed for any number of outputs)
    node = cast(TensorVariable, pt.alloc(fill, *[s.type() for s in real])).owner
    # strict: the types are equal, so the node is cloned, not made again
    made = node.clone_with_new_inputs([node.inputs[0], *real], strict=True)
    return cast(TensorVariable, made.outputs[0])
