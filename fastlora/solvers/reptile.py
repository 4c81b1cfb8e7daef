"""Reptile (first-order meta-learning baseline, docs/design.md §2), for P problems at once.

    W_t ← A;  repeat s times: W_t ← W_t − α_t ∇L_t(W_t)         (full fine-tuning)
    A   ← A + β · mean_t (W_t − A)

α_t = ``inner_lr`` / λ_max(Σ_t) (population: λ_max = 1), s = ``inner_steps``,
β = ``outer_lr``.  Defaults: inner_lr=0.1, inner_steps=10, outer_lr=0.5, A starts at 0
(``init_A``).  In population mode the inner loop is linear and is applied in closed form:
W_t − A = (1 − (1 − α)^s)(W*_t − A).
"""
from __future__ import annotations

import numpy as np

from ..engine import status
from .common import FinishedState


def solve(ctx):
    xp, batch = ctx.xp, ctx.batch
    inner_lr, inner_steps, outer_lr = ctx.option("inner_lr"), ctx.option("inner_steps"), ctx.option("outer_lr")
    monitor = ctx.monitor(status.step_option("reptile"))
    finished = FinishedState(batch)
    A = ctx.initial_A()
    if batch.is_population:
        mean_target = batch.standard_solution()
        shrink = 1.0 - (1.0 - inner_lr) ** inner_steps
    else:
        lam_max = xp.linalg.eigvalsh(batch.Sigma)[:, -1]
        alpha = (inner_lr / xp.maximum(lam_max, xp.finfo(lam_max.dtype).tiny))[:, None, None]
    iteration = 0
    for iteration in range(1, ctx.max_iter + 1):
        if batch.is_population:
            A_new = A + outer_lr * shrink * (mean_target - A)
        else:
            start = batch.per_task(A)
            W = start
            for _ in range(inner_steps):
                W = W - alpha * batch.grad_W(W)
            A_new = A + outer_lr * batch.sum_tasks(W - start) / batch.T
        step_sq, scale = batch.problem_sq(A_new - A), batch.problem_sq(A_new)
        change = np.where(scale > 0, np.sqrt(step_sq / np.where(scale > 0, scale, 1.0)), np.sqrt(step_sq))
        A = A_new
        was_active = monitor.active.copy()
        all_done = monitor.record(iteration, batch.objective(A), change)
        finished.keep(A, {}, was_active & monitor.done)
        if all_done:
            break
    A, _ = finished.result(A, {}, monitor.done)
    info = {"inner_lr": inner_lr, "inner_steps": inner_steps, "outer_lr": outer_lr}
    return monitor.outcome(A, {}, iteration, info=info)
