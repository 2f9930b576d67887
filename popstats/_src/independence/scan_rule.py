"""The batch axis through a ``Scan``: the rule of :class:`~.flow.Flow` for loops.

Stage: independence. A loop slices its sequences (and its state buffers) along
axis 0, so a batch axis ``d`` of the outer value is ``d - 1`` in the loop
body; non-sequences and untraced states keep it. The body's outputs stack
the steps first, so an inner axis ``d`` is ``d + 1`` outside (untraced
states: ``d``). A state's axis must be the same at every step: the body is
followed again with the axis each state's output has, until nothing changes
(at most three times); a state whose axis moves mixes. A loop over the batch
axis itself (a sequence sliced along it) is a per-example map when it has
no recurrent state (its stacked outputs hold the examples on axis 0), and
otherwise carries state from one example to the next: it mixes.

Members: :class:`LoopFlow`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from pytensor.graph.basic import Apply, Variable

from popstats._src.independence.flow import Flow, Hyp, State, scan_args

__all__ = ["LoopFlow"]


class LoopFlow(Flow):
    """A :class:`~popstats._src.independence.flow.Flow` that follows loops too."""

    def scan(self, node: Apply) -> list[State]:
        return scan_states(self, node)


def _shift(state: State, by: int) -> State:
    return {h: (d + by, c) for h, (d, c) in state.items() if d + by >= 0}


def scan_states(flow: Flow, node: Apply) -> list[State]:
    """The outer outputs' states of a Scan application (see the module doc)."""
    op = node.op
    args = scan_args(node)
    name = op.name or "scan"
    where = name if flow.where == "<graph>" else f"{flow.where}/{name}"
    inner: dict = {}
    over: dict[Hyp, int] = {}  # hypotheses on the iterated axis
    for outer, var in zip(args.outer_in_seqs, args.inner_in_seqs, strict=True):
        state = flow.state(outer)
        over.update({h: c for h, (d, c) in state.items() if d == 0})
        inner[var] = _shift(state, -1)
    # (inner input taps, inner outputs, outer state, shift)
    stateful: list[tuple[list[Variable], list[Variable], State, int]] = []
    for outers, taps, outs in (
        (args.outer_in_mit_mot, args.inner_in_mit_mot, args.inner_out_mit_mot),
        (args.outer_in_mit_sot, args.inner_in_mit_sot, args.inner_out_mit_sot),
    ):
        for outer, tap_vars, out in zip(outers, taps, outs, strict=True):
            # ScanArgs: a list of outputs per mit-mot, one per mit-sot
            outs_list = cast(list[Variable],
                             list(out) if isinstance(out, list | tuple) else [out])
            stateful.append((list(tap_vars), outs_list, flow.state(outer), -1))
    for outer, var, out in zip(args.outer_in_sit_sot, args.inner_in_sit_sot,
                               args.inner_out_sit_sot, strict=True):
        stateful.append(([var], [out], flow.state(outer), -1))
    for outer, var, out in zip(args.outer_in_shared, args.inner_in_shared,
                               args.inner_out_shared, strict=True):
        stateful.append(([var], [out], flow.state(outer), 0))
    for outer, var in zip(args.outer_in_non_seqs, args.inner_in_non_seqs, strict=True):
        inner[var] = flow.state(outer)
    recurrent = bool(args.outer_in_mit_mot or args.outer_in_mit_sot
                     or args.outer_in_sit_sot)
    for hyp in over:
        if recurrent:
            flow.mix(node, hyp, "carries state from example to example (a loop) over")
    current = [_shift(init, shift) for _, _, init, shift in stateful]
    for _ in range(3):
        for (tap_vars, _, _, _), state in zip(stateful, current, strict=True):
            for var in tap_vars:
                inner[var] = state
        body = type(flow)(inner, where, flow.shapes, flow.confirmed)
        body.run(list(args.inner_outputs))
        changed = False
        for k, (_, outs, _, _) in enumerate(stateful):
            merged = dict(current[k])
            for out in outs:
                for hyp, place in body.state(out).items():
                    if merged.get(hyp, place) != place:
                        flow.mix(node, hyp, "moves the batch axis from step to step "
                                 "(a loop state) on")
                    elif hyp not in merged:
                        merged[hyp] = place
                        changed = True
            current[k] = merged
        if not changed:
            break
    flow.nested.append((node, body))
    result: dict[int, State] = {}
    groups = (
        (args.outer_out_mit_mot, args.inner_out_mit_mot, 1),
        (args.outer_out_mit_sot, args.inner_out_mit_sot, 1),
        (args.outer_out_sit_sot, args.inner_out_sit_sot, 1),
        (args.outer_out_nit_sot, args.inner_out_nit_sot, 1),
        (args.outer_out_shared, args.inner_out_shared, 0),
    )
    for outers, inners, shift in groups:
        for outer, inner_out in zip(outers, inners, strict=True):
            finals = cast(Sequence[Variable], inner_out if isinstance(
                inner_out, list | tuple) else [inner_out])
            out_state: State = {}
            for final in finals:
                out_state.update(_shift(body.state(final), shift))
            result[id(outer)] = out_state
    # aggregates: stacked outputs pass them on; states and the condition
    # feed the next step, so there they are used per example
    stacked = {id(v) for v in args.inner_out_nit_sot}
    for var in args.inner_outputs:
        for hyp, nodes in body.taint.get(var, {}).items():
            if id(var) not in stacked:
                flow.confirmed.update((n, hyp) for n in nodes)
    for outer, var in zip(args.outer_out_nit_sot, args.inner_out_nit_sot, strict=True):
        if var in body.taint:
            flow.taint[outer] = body.taint[var]
    if not recurrent:  # a per-example map: the steps are the examples
        for outer in args.outer_out_nit_sot:
            result[id(outer)].update({h: (0, c) for h, c in over.items()})
    return [result.get(id(out), {}) for out in node.outputs]
