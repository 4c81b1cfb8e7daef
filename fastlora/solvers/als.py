"""LoRA-ML (PEFT-ML) by alternating exact minimisation, with safeguarded Anderson extrapolation.

    repeat:  θ_t ← argmin_θ L_t(A + Δ(θ))   for all t     (adapter step, see adapters.py)
             A   ← argmin_A Σ_t L_t(A + Δ(θ_t))            (the batch's closed-form A step)

Each half-step minimises exactly (or, for the inner-gradient fallback, decreases) the
objective F, which is therefore non-increasing.  The map A ↦ A-step(θ(A)) is a gradient
step on f(A) = min_θ F(A, θ) with step 1/T, so plain ALS converges linearly and slowly
where f is ill-conditioned (~100–300 iterations at the paper's size).

``acceleration="anderson"`` (default) extrapolates A from the last ``depth`` iterates of that
fixed-point map (type-II Anderson mixing, Walker & Ni 2011) and **accepts the extrapolated
A only if** F(A_extrapolated, θ(A_extrapolated)) ≤ F(A_plain, θ_k), the value plain ALS would
reach; otherwise it takes the plain step and restarts the history.  The objective stays
non-increasing (the monotone guarantee of ALS is kept) and the paper-size problem converges
in tens of iterations.  The history holds 2·depth copies of A: depth shrinks (to 0, plain
ALS) so that it stays below ``ANDERSON_MEMORY`` bytes.

Stops when the relative change of A is below ``tol``, the objective is zero to tolerance,
or it is constant to rounding (see :class:`~fastlora.solvers.common.Monitor`).
"""
from __future__ import annotations

import numpy as np

from ..engine.steps import anderson_coefficients
from .adapters import choose_adapter_step
from .common import FinishedState

ANDERSON_DEPTH = 5
ANDERSON_MEMORY = 256 * 2 ** 20


class Anderson:
    """Type-II Anderson mixing for the fixed-point map x ↦ g(x), for P problems at once.

    Each problem keeps its own history (``count`` of valid entries); entries beyond a
    problem's count are zero, so they get zero weight, and a reset empties one problem only.
    """

    def __init__(self, xp, depth: int, P: int, to_host):
        self.xp, self.depth, self.to_host = xp, depth, to_host  # to_host: the backend's to_numpy
        self.x, self.f = [], []           # iterates x_i and residuals f_i = g(x_i) − x_i, each (P, n)
        self.count = np.zeros(P, dtype=int)

    def reset(self, problems) -> None:
        """Forget the history of the problems where ``problems`` (P,) is True."""
        problems = np.asarray(problems, dtype=bool)
        self.count[problems] = 0
        if problems.any():
            keep = self.xp.asarray(~problems, dtype=self.x[0].dtype if self.x else None)[:, None]
            self.x = [v * keep for v in self.x]
            self.f = [v * keep for v in self.f]

    def extrapolate(self, x, gx):
        """Record (x, g(x)) for every problem; return (mixed next iterates (P, ...), has (P,) bool):
        ``has`` is False where a problem's history is too short (its row is g(x))."""
        xp = self.xp
        P = x.shape[0]
        self.x.append(x.reshape(P, -1).copy())
        self.f.append((gx - x).reshape(P, -1))
        self.count += 1
        if len(self.x) > self.depth + 1:
            self.x.pop(0)
            self.f.pop(0)
        self.count = np.minimum(self.count, len(self.x))
        has = self.count >= 2
        if not has.any():
            return gx, has
        m = len(self.x) - 1
        dF = xp.stack([b - a for a, b in zip(self.f, self.f[1:])], axis=1)  # (P, m, n)
        dX = xp.stack([b - a for a, b in zip(self.x, self.x[1:])], axis=1)
        # differences older than a problem's history are not valid: zero them (zero weight)
        valid = np.arange(m)[None, :] >= (m - (self.count[:, None] - 1))
        valid_dev = xp.asarray(valid, dtype=dF.dtype)[:, :, None]
        dF, dX = dF * valid_dev, dX * valid_dev
        gram = np.asarray(self.to_host(dF @ dF.swapaxes(1, 2)), dtype=np.float64)
        rhs = np.asarray(self.to_host((dF @ self.f[-1][:, :, None])[:, :, 0]), dtype=np.float64)
        gamma = np.zeros((P, m))
        for p in np.flatnonzero(has):  # the engine's coefficients, on each problem's valid differences
            first = m - (int(self.count[p]) - 1)
            gamma[p, first:] = anderson_coefficients(gram[p, first:, first:].copy(), rhs[p, first:].copy())
        gamma = xp.asarray(gamma, dtype=x.dtype)
        mixed = self.x[-1] + self.f[-1] - (gamma[:, None, :] @ (dX + dF))[:, 0, :]
        finite = np.asarray(self.to_host(xp.isfinite(mixed).all(axis=1)), dtype=bool)
        has = has & finite
        mixed = xp.where(xp.asarray(has)[:, None], mixed, gx.reshape(P, -1))
        return mixed.reshape(x.shape), has


def anderson_depth(shape, itemsize: int, depth: int = ANDERSON_DEPTH) -> int:
    """The largest depth ≤ ``depth`` whose history (2·depth arrays of one problem's A, ``shape``)
    fits in ANDERSON_MEMORY — per problem, so a problem's iterates do not depend on how many
    problems are solved with it."""
    one = int(np.prod(shape)) * itemsize
    return int(min(depth, ANDERSON_MEMORY // max(2 * one, 1)))


def solve(ctx):
    batch, step, xp = ctx.batch, choose_adapter_step(ctx), ctx.xp
    monitor = ctx.monitor()
    finished = FinishedState(batch)
    symmetric = step.symmetric
    depth = anderson_depth((batch.d_out, batch.d_in), np.dtype(ctx.dtype).itemsize) \
        if ctx.option("acceleration") == "anderson" and step.extrapolable else 0
    mixer = Anderson(xp, depth, batch.P, ctx.backend.to_numpy) if depth >= 1 else None

    point = batch.residual(ctx.initial_A(), symmetric=symmetric)
    params = step.fit(point, None)
    adapters = step.adapters(params)
    accepted = rejected = 0
    iteration = 0
    for iteration in range(1, ctx.max_iter + 1):
        plain = batch.a_step(adapters, previous=point, symmetric=symmetric)
        values, accurate = batch.objective_after_a_step(plain, adapters)
        accurate = np.full(batch.P, accurate)
        take = np.zeros(batch.P, dtype=bool)
        if mixer is not None:
            candidate, has = mixer.extrapolate(point.A, plain.A)
            if has.any():
                trial = batch.residual(candidate, previous=point, symmetric=symmetric)
                trial_params = step.fit(trial, None)
                trial_adapters = step.adapters(trial_params)
                trial_values = batch.objective(candidate, trial_adapters)
                take = has & (trial_values <= values)
                mixer.reset(has & ~take)
                accepted, rejected = accepted + int(take.sum()), rejected + int((has & ~take).sum())
                values = np.where(take, trial_values, values)
                accurate = accurate | take
        if take.all():  # the adapters keep what the objective formed (Σ_t Δ_t) for the next A step
            point, params, adapters = trial, trial_params, trial_adapters
        else:
            if take.any():  # some problems take their extrapolated A, the others the plain step
                plain = batch.residual(xp.where(xp.asarray(take)[:, None, None], trial.A, plain.A), previous=point,
                                       symmetric=symmetric)
            # the value recorded for a plain step is F after the A step (the adapters are refitted here)
            point = plain
            warm = params if step.warm_start else None
            # drop the previous fit (and a rejected trial) first: the new one is built beside
            # nothing but the basis (one (T, r, d) array less at the peak)
            params = adapters = trial = trial_params = trial_adapters = None
            params = step.fit(point, warm)
            adapters = step.adapters(params)
        change = point.relative_change
        if not step.exact:  # an inexact adapter step can stall A while θ still moves
            change = np.maximum(change, step.residual())
        was_active = monitor.active.copy()
        all_done = monitor.record(iteration, values, change, accurate=accurate)
        finished.keep(point.A, params, was_active & monitor.done)
        if all_done:
            break
    A, params = finished.result(point.A, params, monitor.done)
    final = batch.objective(A, step.adapters(params))  # accurate, at the returned (A, θ)
    info = {"solver": "als", "adapter_step": step.name, "adapter_step_exact": step.exact,
            "acceleration": f"anderson(depth={depth})" if mixer is not None else "none",
            "extrapolations_accepted": accepted, "extrapolations_rejected": rejected}
    return monitor.outcome(A, params, iteration, final_objective=final, info=info)
