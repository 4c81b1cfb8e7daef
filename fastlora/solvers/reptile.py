"""Reptile (first-order meta-learning baseline, DESIGN.md §2).

    W_t ← A;  repeat s times: W_t ← W_t − α_t ∇L_t(W_t)         (full fine-tuning)
    A   ← A + β · mean_t (W_t − A)

α_t = ``inner_lr`` / λ_max(Σ_t) (population: λ_max = 1), s = ``inner_steps``,
β = ``outer_lr``.  Defaults: inner_lr=0.1, inner_steps=10, outer_lr=0.5, A starts at 0
(``init_A``).  In population mode the inner loop is linear and is applied in closed form:
W_t − A = (1 − (1 − α)^s)(W*_t − A).
"""
from __future__ import annotations

from ..errors import check_float, check_int
from .common import relative_change


def solve(ctx):
    xp, batch = ctx.xp, ctx.batch
    inner_lr = check_float("inner_lr", ctx.option("inner_lr", 0.1), low=0.0, high=1.0, low_open=True)
    inner_steps = check_int("inner_steps", ctx.option("inner_steps", 10), low=1)
    outer_lr = check_float("outer_lr", ctx.option("outer_lr", 0.5), low=0.0, low_open=True)
    monitor = ctx.monitor()
    A = ctx.initial_A("zeros")
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
            W = xp.broadcast_to(A, (batch.T, *A.shape))
            for _ in range(inner_steps):
                W = W - alpha * batch.grad_W(W)
            A_new = A + outer_lr * xp.mean(W - A[None], axis=0)
        change = relative_change(xp, A_new, A)
        A = A_new
        if monitor.record(iteration, batch.objective(A), change):
            break
    return A, {}, monitor, iteration, {"inner_lr": inner_lr, "inner_steps": inner_steps, "outer_lr": outer_lr}
