"""Structural fingerprints: which application of a statistic is which.

A statistic's *name* (its label, the chain of enclosing loops) says what it
is; when the same marked computation is reached more than once (a layer
written as an ``OpFromGraph`` and applied twice, a branch copied with
``clone_replace``, one Scan op applied to two inputs) the name alone cannot
say which application is which. The fingerprint does: a hash of how the
variable is computed at its graph level, built bottom-up over the graph
(each node's hash from its op and its inputs' hashes, a Merkle hash), so it
depends only on the computation, never on object identity or on which
other outputs happen to be in the graph being walked.

Two hashes are kept per variable:

``stable``
    The same in every process that builds the same model with the same code
    and PyTensor: roots are hashed by type and name (inputs, shared
    variables), by value (small constants) or by type and shape (larger
    constants, e.g. weights baked in); inputs of an inner graph by position;
    ops by their class and props (``repr``, memory addresses removed),
    :class:`~popstats.BNStat` by label and role (never its random key, nor
    its group, which :func:`popstats.nn.batch_norm` makes unique), Scan and
    ``OpFromGraph`` by their inner graph's fingerprint, an op a recognizer
    claims by the recognizer's description. The ``name`` of a
    ``SymbolicOp`` (an ``OpFromGraph`` equal by props, as pytensor-ml's
    layers) is left out: PyTensor interns equal ops in loop bodies, so it
    may be the name of another layer built earlier in the process. Saved in
    files; what statistics are matched on.
``instance``
    In-process only: like ``stable`` but outer roots are hashed by object
    identity. Two applications with the same stable hash but different
    instance hashes differ only by unnamed variables or large constants:
    popstats cannot tell them apart across processes, and refuses.

Stage: graph (:mod:`popstats._src.graph`). Members: :data:`SMALL_CONSTANT`,
:class:`Fingerprints`, :func:`digest`, :func:`op_token`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence

import numpy as np
from pytensor.compile import builders as _builders
from pytensor.compile.builders import OpFromGraph
from pytensor.graph.basic import Apply, Constant, Variable
from pytensor.graph.traversal import toposort
from pytensor.scan.op import Scan

from popstats._src.graph.marker import BNStat
from popstats._src.graph.recognize import recognized_token

__all__ = ["SMALL_CONSTANT", "Fingerprints", "digest", "op_token"]

#: Constants with at most this many elements are hashed by value.
SMALL_CONSTANT = 16
_ADDRESS = re.compile(r"\s*at 0x[0-9a-fA-F]+|0x[0-9a-fA-F]{6,}")


def digest(*parts: str) -> str:
    """A short, process-independent hash of some strings."""
    data = "\x1f".join(parts).encode("utf-8", "backslashreplace")
    return hashlib.blake2b(data, digest_size=10).hexdigest()


def _constant_token(var: Constant) -> str:
    data = np.asarray(var.data)
    if data.dtype != object and data.size <= SMALL_CONSTANT:
        return digest("const", str(var.type), data.dtype.str, str(data.shape),
                      data.tobytes().hex())
    return digest("const", str(var.type), str(getattr(data, "shape", ())))


def _interned(op: object) -> bool:
    """An ``OpFromGraph`` compared by its props (PyTensor >= 3.3's SymbolicOp)."""
    symbolic = getattr(_builders, "SymbolicOp", None)
    return symbolic is not None and isinstance(op, symbolic)


def _inner_digest(
    inputs: Sequence[Variable], outputs: Sequence[Variable], ops: dict
) -> str:
    prints = Fingerprints(inputs, ops)
    prints.visit(outputs)
    return digest(*(prints.stable(v) for v in outputs))


def op_token(op: object, ops: dict) -> str:
    """The stable description of an op (cached in ``ops`` by object id)."""
    cached = ops.get(id(op))
    if cached is not None:
        return cached[1]
    by_props = not isinstance(op, Scan | OpFromGraph | BNStat)
    if by_props:  # equal ops (same props) have the same description
        try:
            token = ops.get(op)
        except TypeError:  # an unhashable op
            by_props, token = False, None
        if token is not None:
            ops[id(op)] = (op, token)
            return token
    recognized = recognized_token(op) if isinstance(op, OpFromGraph) else None
    if isinstance(op, BNStat):
        token = digest("BNStat", op.label, str(op.role))
    elif recognized is not None:
        token = digest("recognized", _ADDRESS.sub("", recognized))
    elif isinstance(op, Scan | OpFromGraph):
        fgraph = op.fgraph
        inner = _inner_digest(fgraph.inputs, fgraph.outputs, ops)
        extra = (
            (op.name or "", repr(op.info), str(op.truncate_gradient))
            if isinstance(op, Scan)
            else (() if _interned(op) else (str(getattr(op, "name", "") or ""),))
        )
        token = digest(type(op).__name__, *extra, inner)
    else:
        cls = type(op)
        name = f"{cls.__module__}.{cls.__qualname__}"
        token = digest(name, _ADDRESS.sub("", repr(op)))
    ops[id(op)] = (op, token)  # the op is kept alive while its id is a key
    if by_props:
        ops[op] = token
    return token


class Fingerprints:
    """Stable and instance hashes of the variables of one graph level.

    Parameters
    ----------
    inputs : sequence of Variable
        The level's inputs, hashed by position (an inner graph's inputs);
        empty for the outer graph, whose roots are hashed by what they are.
    ops : dict
        Cache of op descriptions (``id(op) -> (op, token)``, and ``op ->
        token`` for ops compared by props), shared by all levels of one pass.
    """

    def __init__(self, inputs: Sequence[Variable] = (), ops: dict | None = None):
        self.ops: dict = {} if ops is None else ops
        self._stable: dict[Variable, str] = {}
        self._instance: dict[Variable, str] = {}
        for i, var in enumerate(inputs):
            token = digest("input", str(i), str(var.type))
            self._stable[var] = self._instance[var] = token

    def _root(self, var: Variable) -> None:
        if isinstance(var, Constant):
            token = _constant_token(var)
            self._stable[var] = self._instance[var] = token
            return
        name = var.name if var.owner is None else None
        self._stable[var] = digest("root", str(var.type), name or "?")
        self._instance[var] = digest("object", str(id(var)), str(var.type))

    def known(self, var: Variable) -> bool:
        return var in self._stable

    def stable(self, var: Variable) -> str:
        if var not in self._stable:
            self._root(var)
        return self._stable[var]

    def instance(self, var: Variable) -> str:
        if var not in self._instance:
            self._root(var)
        return self._instance[var]

    def node(self, node: Apply) -> tuple[str, str]:
        """Hash the outputs of ``node``; return the node's (stable, instance)."""
        op = op_token(node.op, self.ops)
        known_stable, known_instance = self._stable, self._instance
        for v in node.inputs:
            if v not in known_stable:
                self._root(v)
        stable = digest(op, *[known_stable[v] for v in node.inputs])
        instance = digest(op, *[known_instance[v] for v in node.inputs])
        outputs = node.outputs
        if len(outputs) == 1:
            self._stable[outputs[0]] = stable
            self._instance[outputs[0]] = instance
        else:
            for i, out in enumerate(outputs):
                self._stable[out] = digest(stable, str(i))
                self._instance[out] = digest(instance, str(i))
        return stable, instance

    def alias(self, var: Variable, same_as: Variable) -> None:
        """``var`` computes what ``same_as`` computes (an inlined body)."""
        self._stable[var] = self.stable(same_as)
        self._instance[var] = self.instance(same_as)

    def visit(self, outputs: Iterable[Variable]) -> None:
        """Hash every variable ``outputs`` depend on, at this level."""
        for node in toposort(list(outputs)):
            if not all(self.known(o) for o in node.outputs):
                self.node(node)
