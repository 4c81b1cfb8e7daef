"""Standard retraining: Â = argmin_A Σ_t L_t(A), in closed form.

Population: the mean of the W*_t.  Finite samples: Â (Σ_t Σ_t) = Σ_t C_t (one linear
solve, minimum norm where Σ_t Σ_t is singular).
"""
from __future__ import annotations


def solve(ctx):
    monitor = ctx.monitor()
    A = ctx.batch.standard_solution()
    monitor.record(1, ctx.batch.objective(A))
    monitor.converged, monitor.message = True, "closed form"
    return A, {}, monitor, 1, {}
