"""Standard retraining: Â = argmin_A Σ_t L_t(A), in closed form (per problem).

Population: the mean of the W*_t.  Finite samples: Â (Σ_t Σ_t) = Σ_t C_t (one linear
solve, minimum norm where Σ_t Σ_t is singular).
"""
from __future__ import annotations

import numpy as np

from ..engine import status


def solve(ctx):
    monitor = ctx.monitor()
    A = ctx.batch.standard_solution()
    monitor.record(1, ctx.batch.objective(A))
    for p in np.flatnonzero(monitor.active | (monitor.status >= 0)):
        monitor.end(p, 1, status.CLOSED_FORM)
    return monitor.outcome(A, {}, 1)
