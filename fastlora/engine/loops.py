"""The iteration loops of the engine: one problem's whole solve and a batch of problems
(:func:`solve_batch`, ``prange`` over problems when compiled).

Each loop runs one problem to its own end, so a problem's result and iteration count cannot
depend on the problems solved beside it.  A problem ends with a status code
(:mod:`fastlora.engine.status`); nothing here raises.  Written once as Python over numpy
arrays (:mod:`fastlora.engine.steps` holds the pieces), run as it is by the numpy backend
and compiled by Numba for the numba backend (:mod:`fastlora.engine.compiled`).
"""
from __future__ import annotations

from collections import namedtuple

import numpy as np

from . import status as st
from ._jit import jitable, prange
from .linalg import axpy, copy, fill, inner, matmul, norm, scale
from .steps import (
    ADAM,
    ADAM_BETAS,
    ADAM_EPS,
    ALS,
    GD,
    LBFGS,
    REPTILE,
    STANDARD,
    START_STANDARD,
    Quad,
    a_step_operators,
    adam_gradient_scale,
    adam_update,
    anderson_mix,
    curvature_scale,
    deltas,
    first_step,
    fit_adapters,
    joint_value_grad,
    lbfgs_direction,
    lbfgs_update,
    make_work,
    minimizing_A,
    objective,
    projected_value_grad,
    pullback,
    record,
    relative_change,
    residual_losses,
    residual_spread,
    start_A,
    start_factor,
    sufficient_decrease,
    unpack,
)

# fine-tuning at a fixed A: the exact fit (L-BFGS over θ alone is LBFGS with cfg.eliminate = FIXED)
FIT_EXACT = 6
# how L-BFGS treats A: jointly with θ, eliminated by its closed form, or held fixed
JOINT, PROJECTED, FIXED = 0, 1, 2

# the problems of a batch: Quad's data with a leading problem axis (identity is one flag for all;
# K and N are made per problem, see problem()); sqrt_S, isqrt_S: a whitening pair (G, G⁺) with GᵀG = Σ_t
# (fastlora.tasks.whitening_pairs: Cholesky's Lᵀ, L⁻ᵀ or the symmetric roots)
QuadBatch = namedtuple("QuadBatch", "identity Sigma W_hat floor rhs0 sqrt_S isqrt_S lam_max null base_sq")
# per-problem integer outputs: iterations, status, history length, extrapolations accepted / rejected
N_ITER, STATUS, COUNT, ACCEPTED, REJECTED = 0, 1, 2, 3, 4
# per-problem float outputs: the objective at the returned point, the last value seen, the divergence scale,
# the last step size (gd: the line search's next trial step)
FINAL, LAST, SCALE, STEP = 0, 1, 2, 3


@jitable
def problem(identity, Sigma, W_hat, floor, rhs0, sqrt_S, isqrt_S, lam_max, null, base_sq, p):
    """Problem ``p`` of a batch (a QuadBatch's fields) as a :class:`~fastlora.engine.steps.Quad` of
    views, with its A-step operators K, N made (finite samples)."""
    T, d_out, d_in = W_hat.shape[1], W_hat.shape[2], W_hat.shape[3]
    if identity:
        K = np.zeros((0, 0), W_hat.dtype)
        NT = np.zeros((T, 0, 0), W_hat.dtype)
    else:
        K = np.empty((d_out, d_in), W_hat.dtype)
        NT = np.empty((T, d_in, d_in), W_hat.dtype)
        a_step_operators(Sigma[p], rhs0[p], K, NT)
    return Quad(identity, Sigma[p], W_hat[p], floor[p], rhs0[p], K, NT, sqrt_S[p], isqrt_S[p], lam_max[p], null[p],
                base_sq[p])


def batch_solver(run_one, parallel: bool = False):
    """The batch loop around one solver's per-problem loop ``run_one``: every problem of the batch
    (a QuadBatch's fields, then the spec and settings as packed by :func:`~fastlora.engine.steps.pack`)
    from its start (A0[p], θ0[p]) to its end; results in A_out, θ_out, the objective history,
    ``ints`` (N_ITER, STATUS, COUNT, ACCEPTED, REJECTED) and ``floats`` (FINAL, LAST, SCALE, STEP).

    One function per solver (and per ``parallel``: problems in ``prange`` when compiled), so a
    first solve compiles only its own solver."""
    loop = prange if parallel else range

    def solve_batch(identity, Sigma, W_hat, floor, rhs0, sqrt_S, isqrt_S, lam_max, null, base_sq,
                    packed_ints, packed_floats, A0, theta0, A_out, theta_out, history, ints, floats):
        for p in loop(A_out.shape[0]):
            # the named tuples are made inside the loop: Numba's parfor lowering fails on tuples made outside it
            spec, cfg = unpack(packed_ints, packed_floats)
            q = problem(identity, Sigma, W_hat, floor, rhs0, sqrt_S, isqrt_S, lam_max, null, base_sq, p)
            A, theta = A_out[p], theta_out[p]
            w = make_work(spec, A)
            start_A(q, spec, cfg.init, A0[p], A, w)
            copy(theta0[p], theta)
            floats[p, SCALE] = q.null
            run_one(q, spec, cfg, A, theta, history[p], ints[p], floats[p], w)
            if ints[p, STATUS] == st.RUNNING:
                ints[p, STATUS] = st.MAX_ITER
            floats[p, FINAL] = objective(q, spec, A, theta, w)
    solve_batch.__qualname__ = f"solve_batch[{run_one.__name__}{', parallel' if parallel else ''}]"
    return solve_batch


@jitable
def _end(ints, floats, iteration, status, count, value):
    ints[N_ITER] = iteration
    ints[STATUS] = status
    ints[COUNT] = count
    floats[LAST] = value


@jitable
def _fit_exact(q, spec, cfg, A, theta, history, ints, floats, w):
    """Fine-tuning at a fixed A: the exact adapter fit, one step."""
    fit_adapters(q, spec, A, theta, w)
    _end(ints, floats, 1, st.EXACT_FIT, 0, 0.0)


@jitable
def _standard(q, spec, cfg, A, theta, history, ints, floats, w):
    """Standard retraining: A = argmin_A Σ_t L_t(A), one linear solve (already the start)."""
    start_A(q, spec, START_STANDARD, A, A, w)
    fill(w.delta, 0.0)
    value = residual_losses(q, A, w.delta, w)
    status, count = record(history, 0, value, -1.0, True, cfg.tol, cfg.to_max_iter, q.null, floats[SCALE], cfg.eps)
    _end(ints, floats, 1, status if status < 0 else st.CLOSED_FORM, count, value)


@jitable
def _als(q, spec, cfg, A, theta, history, ints, floats, w):
    """LoRA-ML by alternating exact minimisation with safeguarded Anderson extrapolation.

    Each iteration: the A step of the current adapters (A_plain); with a history, the
    extrapolated A of the fixed-point map A ↦ A-step(θ(A)) is taken only if its objective
    (adapters refitted there) is at most F(A_plain, θ) — so F never increases; otherwise the
    plain step, the history restarted.  The value recorded is F at the iterate taken.
    """
    n = A.size
    fit_adapters(q, spec, A, theta, w)
    depth = cfg.depth
    X = np.zeros((depth + 1, n), A.dtype)
    F = np.zeros((depth + 1, n), A.dtype)
    mixed_rows = 0
    A_plain = np.empty_like(A)
    A_trial = np.empty_like(A)
    theta_trial = np.empty_like(theta)
    diff = A.copy()
    count = 0
    status = st.RUNNING
    value = 0.0
    accepted = rejected = 0
    iteration = 0
    while iteration < cfg.max_iter:
        iteration += 1
        deltas(spec, theta, w.delta)
        minimizing_A(q, spec, theta, w.delta, A_plain, w)
        value = residual_losses(q, A_plain, w.delta, w)
        take = False
        if depth >= 1:
            mixed, mixed_rows = anderson_mix(X, F, mixed_rows, A.reshape(n), A_plain.reshape(n), A_trial.reshape(n))
            if mixed:
                fit_adapters(q, spec, A_trial, theta_trial, w)
                trial = objective(q, spec, A_trial, theta_trial, w)
                if trial <= value:
                    take = True
                    value = trial
                    accepted += 1
                else:
                    mixed_rows = 0
                    rejected += 1
        copy(A_trial if take else A_plain, diff)
        axpy(-1.0, A, diff)
        step_sq = inner(diff, diff)
        if take:
            copy(A_trial, A)
            copy(theta_trial, theta)
        else:
            copy(A_plain, A)
            fit_adapters(q, spec, A, theta, w)
        status, count = record(history, count, value, relative_change(step_sq, inner(A, A) + q.base_sq), True,
                               cfg.tol, cfg.to_max_iter, q.null, floats[SCALE], cfg.eps)
        if status != st.RUNNING:
            break
    _end(ints, floats, iteration, status, count, value)
    ints[ACCEPTED] = accepted
    ints[REJECTED] = rejected


@jitable
def _lbfgs_value(q, spec, mode, x, grad, A, w, nA):
    """F and its gradient at the L-BFGS variable x: θ (PROJECTED: A is the A step of θ, written
    into ``A``; FIXED: A as given) or (A, θ) flattened (JOINT)."""
    if mode == PROJECTED:
        return projected_value_grad(q, spec, x, w, A, grad)
    if mode == FIXED:
        deltas(spec, x, w.delta)
        value = residual_losses(q, A, w.delta, w)
        pullback(spec, x, w.G, grad)
        return value
    copy(x[:nA].reshape(A.shape), A)
    return joint_value_grad(q, spec, A, x[nA:], w, grad[:nA].reshape(A.shape), grad[nA:])


@jitable
def _scale_start(q, spec, cfg, A, theta, w, eliminated):
    """Where ``cfg.scale_start``: θ (drawn lora / lora_sym adapters) times :func:`start_factor` of the
    residuals from the standard solution where the solver ``eliminated`` A (L-BFGS, variable projection),
    else from A (the start: the standard solution, zeros or the given A; fine-tuning: the fixed A)."""
    if not cfg.scale_start or theta.size == 0:
        return
    reference = A
    if eliminated and cfg.init != START_STANDARD:
        reference = np.empty_like(A)
        start_A(q, spec, START_STANDARD, A, reference, w)
    factor = start_factor(residual_spread(q, reference), spec.r)
    if factor != 1.0:
        scale(factor, theta)


@jitable
def _lbfgs(q, spec, cfg, A, theta, history, ints, floats, w):
    """L-BFGS (memory ``cfg.memory``, two-loop recursion, a pair kept only when sᵀy > 0)
    with a backtracking Armijo line search from the unit step (sufficient decrease c1, halving,
    at most ``cfg.max_backtracks`` trials).  ``cfg.eliminate``: JOINT, PROJECTED (A eliminated:
    variable projection) or FIXED (fine-tuning).  Stops when ‖∇‖ ≤ tol·‖∇(start)‖, F is zero
    to tolerance or constant to rounding, or no step lowers F (its rounding floor)."""
    _scale_start(q, spec, cfg, A, theta, w, cfg.eliminate == PROJECTED)
    mode = cfg.eliminate
    nA = A.size if mode == JOINT else 0
    n = nA + theta.size
    x = np.empty(n, A.dtype)
    if mode == JOINT:
        copy(A.reshape(nA), x[:nA])
    copy(theta, x[nA:])
    grad = np.empty_like(x)
    x_new = np.empty_like(x)
    grad_new = np.empty_like(x)
    direction = np.empty_like(x)
    s = np.empty_like(x)
    y = np.empty_like(x)
    A_cur = A.copy()
    A_try = A.copy()
    m = cfg.memory
    S = np.zeros((m, n), A.dtype)
    Y = np.zeros((m, n), A.dtype)
    rho = np.zeros(m)
    alpha = np.zeros(m)
    value = _lbfgs_value(q, spec, mode, x, grad, A_cur, w, nA)
    if not np.isfinite(value):
        _end(ints, floats, 0, st.NONFINITE_START, 0, value)
        return
    floats[SCALE] = max(floats[SCALE], value)
    g0 = norm(grad)
    if not g0 > 0:
        g0 = 1.0
    gamma = 1.0 / g0
    pairs = head = count = 0
    status = st.RUNNING
    iteration = 0
    while iteration < cfg.max_iter:
        iteration += 1
        lbfgs_direction(S, Y, rho, alpha, pairs, head, grad, gamma, direction)
        slope = inner(grad, direction)
        if not slope < 0:  # not a descent direction: restart from −γ∇
            pairs = 0
            copy(grad, direction)
            scale(-gamma, direction)
            slope = inner(grad, direction)
        step = 1.0
        floor = 8 * cfg.eps * abs(value)
        accepted = False
        trial = value
        if mode == FIXED:
            copy(A_cur, A_try)
        for _ in range(cfg.max_backtracks):
            copy(x, x_new)
            axpy(step, direction, x_new)
            trial = _lbfgs_value(q, spec, mode, x_new, grad_new, A_try, w, nA)
            if sufficient_decrease(value, trial, -cfg.c1 * step * slope, floor):
                accepted = True
                break
            step *= 0.5
        if accepted:
            copy(x_new, s)
            axpy(-1.0, x, s)
            copy(grad_new, y)
            axpy(-1.0, grad, y)
            pairs, head, gamma = lbfgs_update(S, Y, rho, pairs, head, s, y, gamma, cfg.eps)
            x, x_new = x_new, x
            grad, grad_new = grad_new, grad
            A_cur, A_try = A_try, A_cur
            value = trial
        status, count = record(history, count, value, norm(grad) / g0, True, cfg.tol,
                               cfg.to_max_iter, q.null, floats[SCALE], cfg.eps)
        if status == st.RUNNING and not accepted:
            status = st.LINE_SEARCH_FLOOR if np.isfinite(trial) else st.LINE_SEARCH_NONFINITE
        if status != st.RUNNING:
            break
    copy(x[nA:], theta)
    copy(A_cur, A)
    _end(ints, floats, iteration, status, count, value)


@jitable
def _first_order(q, spec, cfg, A, theta, history, ints, floats, w):
    """Joint gradient descent on (A, θ): ``GD`` with a backtracking Armijo line search (the step
    halves until F drops by ½·step·‖∇F‖², then grows by 1.25 for the next iteration; at the
    rounding floor a step keeping F within rounding is accepted), or ``ADAM`` with ``cfg.lr``."""
    _scale_start(q, spec, cfg, A, theta, w, False)  # gd and Adam move A and θ jointly
    grad_A = np.empty_like(A)
    grad_theta = np.empty_like(theta)
    value = joint_value_grad(q, spec, A, theta, w, grad_A, grad_theta)
    if not np.isfinite(value):
        _end(ints, floats, 0, st.NONFINITE_START, 0, value)
        return
    floats[SCALE] = max(floats[SCALE], value)
    gsq = inner(grad_A, grad_A) + inner(grad_theta, grad_theta)
    g0 = np.sqrt(gsq) if gsq > 0 else 1.0
    adam = cfg.solver == ADAM
    unit = 1.0  # Adam's gradient scale (gd does not use it)
    if adam:
        unit = adam_gradient_scale(np.hypot(norm(grad_A), norm(grad_theta)), A.size + theta.size)
    lr = cfg.lr
    if not lr > 0:  # not given: gd's line search starts at the data's scale (Adam's lr is always set)
        scales = np.empty(spec.T)
        for t in range(spec.T):
            scales[t] = curvature_scale(q.identity, q.Sigma[t])
        lr = first_step(scales)
    cand_A = A.copy()
    cand_theta = theta.copy()
    cand_gA = np.empty_like(A)
    cand_gth = np.empty_like(theta)  # (Adam: the scaled gradients)
    m_A = np.zeros_like(A)
    v_A = np.zeros_like(A)
    m_th = np.zeros_like(theta)
    v_th = np.zeros_like(theta)
    status = st.RUNNING
    count = 0
    iteration = 0
    while iteration < cfg.max_iter:
        iteration += 1
        if adam:
            copy(grad_A, cand_gA)
            scale(unit, cand_gA)
            copy(grad_theta, cand_gth)
            scale(unit, cand_gth)
            adam_update(A, cand_gA, m_A, v_A, iteration, lr, 0.0, ADAM_BETAS[0], ADAM_BETAS[1], ADAM_EPS)
            adam_update(theta, cand_gth, m_th, v_th, iteration, lr, 0.0, ADAM_BETAS[0], ADAM_BETAS[1], ADAM_EPS)
            value = joint_value_grad(q, spec, A, theta, w, grad_A, grad_theta)
        else:
            floor = 8 * cfg.eps * abs(value)
            if not (np.isfinite(value) and np.isfinite(gsq)):
                status = st.LINE_SEARCH_NONFINITE
                break
            accepted = False
            while True:
                copy(A, cand_A)
                axpy(-lr, grad_A, cand_A)
                copy(theta, cand_theta)
                axpy(-lr, grad_theta, cand_theta)
                trial = joint_value_grad(q, spec, cand_A, cand_theta, w, cand_gA, cand_gth)
                if sufficient_decrease(value, trial, 0.5 * lr * gsq, floor):
                    accepted = True
                    break
                if not (lr > 0 and np.isfinite(lr)):
                    break
                lr *= 0.5
            if not accepted:
                status = st.LINE_SEARCH_NONFINITE
                break
            lr *= 1.25
            floats[STEP] = lr
            copy(cand_A, A)
            copy(cand_theta, theta)
            copy(cand_gA, grad_A)
            copy(cand_gth, grad_theta)
            value = trial
        gsq = inner(grad_A, grad_A) + inner(grad_theta, grad_theta)
        status, count = record(history, count, value, np.sqrt(gsq) / g0, True, cfg.tol, cfg.to_max_iter, q.null,
                               floats[SCALE], cfg.eps)
        if status != st.RUNNING:
            break
    _end(ints, floats, iteration, status, count, value)


@jitable
def _reptile(q, spec, cfg, A, theta, history, ints, floats, w):
    """Reptile: W_t ← A; s inner steps W_t ← W_t − α_t ∇L_t(W_t) (α_t = inner_lr / λ_max(Σ_t));
    A ← A + β·mean_t (W_t − A).  Population: the inner loop in closed form,
    W_t − A = (1 − (1 − α)^s)(W*_t − A)."""
    fill(w.delta, 0.0)
    new = np.empty_like(A)
    W = np.empty_like(A)
    grad = np.empty_like(A)
    shrink = 1.0 - (1.0 - cfg.inner_lr) ** cfg.inner_steps
    status = st.RUNNING
    count = 0
    value = 0.0
    iteration = 0
    while iteration < cfg.max_iter:
        iteration += 1
        copy(A, new)
        if q.identity:
            for t in range(spec.T):
                axpy(cfg.outer_lr * shrink / spec.T, q.W_hat[t], new)
            axpy(-cfg.outer_lr * shrink, A, new)
        else:
            for t in range(spec.T):
                rate = cfg.inner_lr / max(q.lam_max[t], 1e-300)
                copy(A, W)
                for _ in range(cfg.inner_steps):
                    copy(W, grad)
                    axpy(-1.0, q.W_hat[t], grad)
                    copy(grad, w.tmp)
                    matmul(w.tmp, q.Sigma[t], grad)
                    axpy(-rate, grad, W)
                axpy(-1.0, A, W)
                axpy(cfg.outer_lr / spec.T, W, new)
        copy(new, W)
        axpy(-1.0, A, W)
        step_sq = inner(W, W)
        copy(new, A)
        value = residual_losses(q, A, w.delta, w)
        status, count = record(history, count, value, relative_change(step_sq, inner(A, A) + q.base_sq), True,
                               cfg.tol, cfg.to_max_iter, q.null, floats[SCALE], cfg.eps)
        if status != st.RUNNING:
            break
    _end(ints, floats, iteration, status, count, value)


# the per-problem loop of each solver code
RUN_ONE = {STANDARD: _standard, ALS: _als, LBFGS: _lbfgs, GD: _first_order, ADAM: _first_order, REPTILE: _reptile,
           FIT_EXACT: _fit_exact}
