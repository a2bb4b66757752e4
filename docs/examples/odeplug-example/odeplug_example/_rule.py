"""A gradient rule on the backward kit: the backsolve adjoint with z reset every few steps."""

import torch

import odeplug as op
from odeplug.backward import (
    AdjointSystem, BacksolveRule, Gradients, backsolve, backward_solver, differentiate,
    forward_outputs,
)


@op.configuration
class CheckpointedAdjoint(BacksolveRule):
    """Backsolve adjoint (Chen et al., NeurIPS 2018) that resets z every ``every`` steps."""

    every: int = 4


def _forward(tape):
    kept_s, kept_y = [], []

    def keep(step):  # the end of every `every`-th accepted step
        keep.count += 1
        if keep.count % tape.rule.every == 0:
            kept_s.append(step.t1)
            kept_y.append(step.y1)

    keep.count = 0
    ys = forward_outputs(tape, keep)  # the plain forward, counted
    # All stops in solver time, in order, outputs told apart; none past the last output, and
    # none where a step ended on an output time (that output is the checkpoint already).
    stops = torch.cat([tape.s, *[s[None] for s in kept_s]])
    states = torch.cat([ys, *[y[None] for y in kept_y]])
    order = torch.argsort(stops)
    on_output = (order >= len(tape.s)) & torch.isin(stops[order], tape.s)
    order = order[(stops[order] <= tape.s[-1]) & ~on_output]
    tape.memo["is_output"] = (order < len(tape.s)).tolist()
    tape.saved = (states[order], stops[order])
    return ys


def _backward(tape, grad_ys, needs):
    problem, is_output = tape.problem, tape.memo["is_output"]
    states, stops = tape.saved
    cotangents = grad_ys.new_zeros(states.shape)
    cotangents[torch.tensor(is_output)] = grad_ys
    times = (tape.direction * stops).to(problem.ts.dtype)
    system = AdjointSystem(problem, tape.inputs, integrals=True, time_gradients=needs.ts)
    result = backsolve(system, backward_solver(tape.solver, tape.rule), states, cotangents,
                       times, tape.direction, time_gradients=needs.ts)
    tape.stats.update(nfe_backward=result.nfe, steps_accepted_backward=result.counts.accepted)
    n = system.n
    grad_ts = None
    if needs.ts:
        grad_ts = torch.stack([g for g, out in zip(result.time_gradients, is_output) if out])
    return Gradients(result.y[n:2 * n] + grad_ys[0], grad_ts, tuple(system.input_gradients(result.y)))


def register():
    @op.register
    def solve(problem: op.ODEProblem, solver: op.Solver, rule: CheckpointedAdjoint, **options):
        op.reject_options("solve(ODEProblem, Solver, CheckpointedAdjoint)", options)
        return differentiate(problem, solver, rule, _forward, _backward)

    op.export(CheckpointedAdjoint)
