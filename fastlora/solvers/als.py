"""LoRA-ML (PEFT-ML) by alternating exact minimisation.

    repeat:  θ_t ← argmin_θ L_t(A + Δ(θ))   for all t     (adapter step, see adapters.py)
             A   ← argmin_A Σ_t L_t(A + Δ(θ_t))            (closed form: a mean, or one solve)

Each half-step minimises exactly (or, for the inner-gradient fallback, decreases) the
objective, which is therefore non-increasing.  Stops when the relative change of A is
below ``tol`` or the objective is zero to tolerance.
"""
from __future__ import annotations

from .adapters import choose_adapter_step


def solve(ctx):
    step = choose_adapter_step(ctx)
    monitor = ctx.monitor()
    A = ctx.initial_A("standard")
    params = None
    iteration = 0
    for iteration in range(1, ctx.max_iter + 1):
        # steps that do not warm-start from the adapters let the old ones go first (memory)
        previous, params = (params if step.warm_start else None), None
        params = step.fit(A, previous)
        previous = None
        A_new = step.a_step(params)
        objective, change = step.objective_and_change(A_new, A, params)
        if not step.exact:  # an inexact adapter step can stall A while θ still moves
            change = max(change, step.residual())
        A = A_new
        if monitor.record(iteration, objective, change, accurate=step.objective_is_accurate):
            break
    if not step.objective_is_accurate:
        monitor.history[-1] = step.final_objective(A, params)
    return A, params, monitor, iteration, {"adapter_step": step.name, "adapter_step_exact": step.exact}
