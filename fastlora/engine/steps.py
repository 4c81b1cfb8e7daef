"""The steps of a solve, per problem: one source, run as Python by the numpy backend and
compiled whole by Numba (docs/design.md, "The compiled engine").

Every task is held in the **quadratic form** of its loss (docs/design.md §2)::

    L_t(W) = ½⟨(W − Ŵ_t) Σ_t, W − Ŵ_t⟩ + floor_t

finite samples: Ŵ_t = C_t Σ_t⁺ (least squares), floor_t = L_t(Ŵ_t); population: Σ_t = I
(``identity``), Ŵ_t = W*_t, floor_t = 0.  One form covers both data kinds, and it has no
cancellation: losses near the optimum compare to full precision.

Adapter parameters θ of a problem are one flat vector: factor rows B (T, r, d_out) then
C (T, r, d_in) for ``lora`` (Δ_t = s·B_tᵀC_t, s = alpha/r), rows U (T, r, d) for
``lora_sym`` (Δ_t = U_tᵀU_t), W (T, d_out, d_in) for ``full`` (Δ_t = W_t).
"""
from __future__ import annotations

from collections import namedtuple

import numpy as np

from ..tasks import pinv_rtol as _pinv_rtol
from . import status as st
from ._jit import jitable
from .linalg import (
    SQUARES_SAFE,
    adam_apply,
    adam_moments,
    axpy,
    cholesky_inverse,
    copy,
    fill,
    inner,
    matmul,
    matmul_add,
    matmul_bt,
    matmul_tn_add,
    norm,
    scale,
    symmetric_eigen,
    task_residual,
)

# parameterizations the engine knows
NONE, FULL, LORA, LORA_SYM = -1, 0, 1, 2  # NONE: no adapters (standard retraining, Reptile)
# solvers
STANDARD, ALS, LBFGS, GD, ADAM, REPTILE = 0, 1, 2, 3, 4, 5
# how A starts
START_STANDARD, START_ZEROS, START_GIVEN = 0, 1, 2

# one problem's tasks in quadratic form; arrays a kind does not use are empty (e.g. Σ when identity).
# rhs0 = Σ_t C_t (population: Σ_t W*_t); finite samples: K = rhs0 G⁺ and NT_t = (Σ_t G⁺)ᵀ = G⁺Σ_t with
# G = Σ_t Σ_t, so that the A step is K − Σ_t Δ_t NT_tᵀ (no d×d×d product per evaluation)
Quad = namedtuple("Quad", "identity Sigma W_hat floor rhs0 K NT sqrt_S isqrt_S lam_max null base_sq")
# the parameterization of a solve: code, rank, scale s, and the sizes
Spec = namedtuple("Spec", "peft r scale T d_out d_in")
# what a solver reads (see fastlora.options for meanings and defaults)
Settings = namedtuple("Settings", "solver max_iter tol to_max_iter eps depth memory lr eliminate init "
                                  "inner_lr inner_steps outer_lr c1 max_backtracks scale_start")
# scratch of one problem
Work = namedtuple("Work", "delta E G losses CS tmp square")

_SETTINGS_INTS = ("solver", "max_iter", "to_max_iter", "depth", "memory", "eliminate", "init", "inner_steps",
                  "max_backtracks", "scale_start")
_SETTINGS_FLOATS = ("tol", "eps", "lr", "inner_lr", "outer_lr", "c1")


def pack(spec, cfg):
    """(spec and settings as two int64 and one float64 array): what a compiled entry point takes
    instead of named tuples, which Numba's dispatcher types slowly (~0.1 ms a call)."""
    ints = np.array([spec.peft, spec.r, spec.T, spec.d_out, spec.d_in] + [getattr(cfg, k) for k in _SETTINGS_INTS],
                    dtype=np.int64)
    floats = np.array([spec.scale] + [getattr(cfg, k) for k in _SETTINGS_FLOATS], dtype=np.float64)
    return ints, floats


@jitable
def unpack(ints, floats):
    """(Spec, Settings) of :func:`pack`'s arrays."""
    spec = Spec(ints[0], ints[1], floats[0], ints[2], ints[3], ints[4])
    cfg = Settings(ints[5], ints[6], floats[1], ints[7] != 0, floats[2], ints[8], ints[9], floats[3], ints[10],
                   ints[11], floats[4], ints[12], floats[5], floats[6], ints[13], ints[14])
    return spec, cfg


ANDERSON_RIDGE = 1e-12   # relative Tikhonov term of the mixing least squares (guards collinear histories)
ADAM_BETAS = (0.9, 0.999)   # the linear model's Adam (fastlora.solvers.gd and the engine)
ADAM_EPS = 1e-12  # against gradients divided by the first one's RMS entry (adam_gradient_scale)


@jitable
def theta_size(peft, r, T, d_out, d_in):
    """Length of θ for T tasks."""
    if peft == NONE:
        return 0
    if peft == FULL:
        return T * d_out * d_in
    if peft == LORA:
        return T * r * (d_out + d_in)
    return T * r * d_in


@jitable
def factor_rows(spec, theta):
    """(B, C) rows views of θ, (T, r, d_out) and (T, r, d_in); ``lora_sym``: (U, U)."""
    if spec.peft == LORA:
        nb = spec.T * spec.r * spec.d_out
        return theta[:nb].reshape((spec.T, spec.r, spec.d_out)), theta[nb:].reshape((spec.T, spec.r, spec.d_in))
    U = theta.reshape((spec.T, spec.r, spec.d_in))
    return U, U


@jitable
def make_work(spec, like):
    """Scratch arrays of one problem (``like``: an array of the solve's dtype)."""
    T, d_out, d_in = spec.T, spec.d_out, spec.d_in
    return Work(np.zeros((T, d_out, d_in), like.dtype), np.zeros((T, d_out, d_in), like.dtype),
                np.zeros((T, d_out, d_in), like.dtype), np.zeros(T, like.dtype),
                np.zeros((max(spec.r, 1), d_in), like.dtype), np.zeros((d_out, d_in), like.dtype),
                np.zeros((d_in, d_in), like.dtype))


# -- the objective ---------------------------------------------------------------------------
@jitable
def deltas(spec, theta, out):
    """Δ_t of θ for every task, into ``out`` (T, d_out, d_in)."""
    if spec.peft == NONE:
        fill(out, 0.0)
        return
    if spec.peft == FULL:
        copy(theta.reshape((spec.T, spec.d_out, spec.d_in)), out)
        return
    B, C = factor_rows(spec, theta)
    fill(out, 0.0)
    for t in range(spec.T):
        matmul_tn_add(B[t], C[t], out[t], spec.scale)


@jitable
def residual_losses(q, A, delta, w):
    """Σ_t L_t(A + Δ_t), with E_t = A + Δ_t − Ŵ_t in ``w.E``, G_t = E_tΣ_t = ∇L_t in ``w.G``
    and each task's loss in ``w.losses``."""
    total = 0.0
    for t in range(delta.shape[0]):
        w.losses[t] = task_residual(A, delta[t], q.W_hat[t], q.Sigma[t], w.E[t], w.G[t], q.identity) + q.floor[t]
        total += w.losses[t]
    return total


@jitable
def pullback(spec, theta, G, grad):
    """∇_θ Σ_t ⟨G_t, Δ(θ_t)⟩ into ``grad`` (θ's layout)."""
    if spec.peft == NONE:
        return
    if spec.peft == FULL:
        copy(G.reshape(grad.shape[0]), grad)
        return
    B, C = factor_rows(spec, theta)
    gB, gC = factor_rows(spec, grad)
    for t in range(spec.T):
        if spec.peft == LORA:   # Δ = s·BᵀC: ∂/∂B = s·C Gᵀ, ∂/∂C = s·B G
            matmul_bt(C[t], G[t], gB[t])
            matmul(B[t], G[t], gC[t])
            if spec.scale != 1.0:
                scale(spec.scale, gB[t])
                scale(spec.scale, gC[t])
        else:                   # Δ = UᵀU: ∂/∂U = U (G + Gᵀ)
            matmul_bt(B[t], G[t], gB[t])
            matmul_add(B[t], G[t], gB[t], 1.0)


@jitable
def minimizing_A(q, spec, theta, delta, out, w):
    """argmin_A Σ_t L_t(A + Δ_t) for the Δ_t in ``delta`` (of θ), into ``out``.

    Population: the mean of W*_t − Δ_t.  Finite samples: A (Σ_t Σ_t) = Σ_t (C_t − Δ_tΣ_t)
    (minimum norm where Σ_t Σ_t is singular), i.e. A = K − Σ_t Δ_t NT_tᵀ; factored
    Δ_t NT_tᵀ = s·B_tᵀ(C_t NT_tᵀ) never forms Δ_t.
    """
    if q.identity:
        copy(q.rhs0, out)
        for t in range(spec.T):
            axpy(-1.0, delta[t], out)
        scale(1.0 / spec.T, out)
        return
    copy(q.K, out)
    if spec.peft == FULL:
        for t in range(spec.T):
            matmul_add(delta[t], q.NT[t].T, out, -1.0)
    elif spec.peft != NONE:
        B, C = factor_rows(spec, theta)
        CN = w.CS[:spec.r]
        for t in range(spec.T):
            matmul_bt(C[t], q.NT[t], CN)
            matmul_tn_add(B[t], CN, out, -spec.scale)


@jitable
def objective(q, spec, A, theta, w):
    """F(A, θ) = Σ_t L_t(A + Δ(θ_t))."""
    deltas(spec, theta, w.delta)
    return residual_losses(q, A, w.delta, w)


@jitable
def joint_value_grad(q, spec, A, theta, w, grad_A, grad_theta):
    """F(A, θ), with ∇_A F into ``grad_A`` and ∇_θ F into ``grad_theta``."""
    value = objective(q, spec, A, theta, w)
    fill(grad_A, 0.0)
    for t in range(spec.T):
        axpy(1.0, w.G[t], grad_A)
    pullback(spec, theta, w.G, grad_theta)
    return value


@jitable
def projected_value_grad(q, spec, theta, w, A_out, grad_theta):
    """f(θ) = min_A F(A, θ) (variable projection, Golub & Pereyra): A = the A step of θ into
    ``A_out``, and ∇f = ∇_θ F at that A (∇_A F = 0 there) into ``grad_theta``."""
    deltas(spec, theta, w.delta)
    minimizing_A(q, spec, theta, w.delta, A_out, w)
    value = residual_losses(q, A_out, w.delta, w)
    pullback(spec, theta, w.G, grad_theta)
    return value


@jitable
def start_A(q, spec, init, given, out, w):
    """The starting A: the standard retraining solution, zeros, or ``given``."""
    if init == START_GIVEN:
        copy(given, out)
    elif init == START_ZEROS:
        fill(out, 0.0)
    else:
        fill(w.delta, 0.0)
        minimizing_A(q, Spec(NONE, spec.r, spec.scale, spec.T, spec.d_out, spec.d_in), w.losses, w.delta, out, w)


pinv_rtol = jitable(_pinv_rtol)  # the one rule (fastlora.tasks), compiled where the engine is


@jitable
def a_step_operators(Sigma, rhs0, K, NT):
    """The finite-sample A step's K = (Σ_t C_t) G⁺ and NT_t = G⁺Σ_t (G = Σ_t Σ_t, its pseudo-inverse
    minimum norm where G is singular: eigenvalues below :func:`pinv_rtol` of the largest count as 0).
    G⁺ = G⁻¹ from G's Cholesky factor where that factor proves it (as the tasks' fits do), else from
    G's spectrum."""
    d = Sigma.shape[1]
    gram = np.zeros((d, d), Sigma.dtype)
    for t in range(Sigma.shape[0]):
        axpy(1.0, Sigma[t], gram)
    rtol = pinv_rtol(np.finfo(Sigma.dtype).eps, d)
    inverse = np.empty_like(gram)
    if not cholesky_inverse(gram, rtol, inverse):
        lam, V = np.linalg.eigh(gram)
        cut = rtol * max(lam[d - 1], 1e-300)
        scaled = V.copy()
        for k in range(d):
            scale(1.0 / lam[k] if lam[k] > cut else 0.0, scaled[:, k])
        matmul(scaled, V.T, inverse)
    matmul(rhs0, inverse, K)
    for t in range(Sigma.shape[0]):
        matmul(inverse, Sigma[t], NT[t])


# -- the exact adapter step ------------------------------------------------------------------
@jitable
def fit_adapters(q, spec, A, theta, w):
    """θ_t = argmin_θ L_t(A + Δ(θ)) for every task, exactly, into ``theta``.

    ``lora``: the truncated SVD of (Ŵ_t − A)G_tᵀ, mapped back by G_t⁺ᵀ (reduced-rank regression, with
    the whitening pair G_tᵀG_t = Σ_t of fastlora.tasks.whitening_pairs: ‖M G_tᵀ‖_F = ‖M Σ_t^{1/2}‖_F;
    population: of W*_t − A), split evenly between B and C.  ``lora_sym``
    (population): the top-r eigenpairs of sym(W*_t − A), clipped at 0.  ``full``: (Ŵ_t − A)
    projected on the range of Σ_t.
    """
    for t in range(spec.T):
        R = w.E[t]
        copy(q.W_hat[t], R)
        axpy(-1.0, A, R)
        if spec.peft == FULL:
            W = theta.reshape((spec.T, spec.d_out, spec.d_in))[t]
            if q.identity:
                copy(R, W)
            else:
                matmul(q.sqrt_S[t], q.isqrt_S[t], w.square)
                matmul(R, w.square, W)
        elif spec.peft == LORA_SYM:
            H = w.G[t]
            for i in range(spec.d_in):
                for j in range(spec.d_in):
                    H[i, j] = 0.5 * (R[i, j] + R[j, i])
            lam, V = symmetric_eigen(H)
            U = theta.reshape((spec.T, spec.r, spec.d_in))[t]
            d = lam.shape[0]
            for j in range(spec.r):
                root = np.sqrt(max(lam[d - 1 - j], 0.0))
                for i in range(d):
                    U[j, i] = root * V[i, d - 1 - j]
        else:
            M = R
            if not q.identity:
                M = w.G[t]
                matmul_bt(R, q.sqrt_S[t], M)  # R G_tᵀ
            P, sv, Vt = np.linalg.svd(M, False)
            B, C = factor_rows(spec, theta)
            for j in range(spec.r):
                root = np.sqrt(sv[j])
                for i in range(spec.d_out):
                    B[t, j, i] = root * P[i, j]
                if q.identity:
                    for i in range(spec.d_in):
                        C[t, j, i] = root * Vt[j, i]
                else:
                    for i in range(spec.d_in):
                        C[t, j, i] = root * inner(Vt[j], q.isqrt_S[t][i])  # (Vt_j G_t⁺ᵀ)_i
                _balance(B[t, j], C[t, j], spec.scale)


@jitable
def _balance(b, c, factor):
    """Rescale one factor pair so that s·b cᵀ is unchanged and ‖b‖ = s‖c‖ (LoRA's from_factors)."""
    nb = np.sqrt(inner(b, b))
    nc = np.sqrt(inner(c, c))
    if nb > 0 and nc > 0:
        ratio = np.sqrt(nc / (nb * factor))
    else:
        ratio = 1.0 / np.sqrt(factor)
    scale(ratio, b)
    scale(1.0 / (ratio * factor), c)


# -- shared rules of the iterations ------------------------------------------------------------
@jitable
def curvature_scale(identity, Sigma):
    """The scale of a task's loss curvature: tr(Σ)/d_in, the mean eigenvalue of its Hessian in W
    (1 for a population task, Σ = I).  Scaling the data's statistics by c scales it by c, so step
    sizes taken as its inverse follow the data's scale (a fixed first step of 1 stalls at rounding
    level on statistics ×1e-14 and reports the start converged)."""
    if identity:
        return 1.0
    d = Sigma.shape[0]
    total = 0.0
    for i in range(d):
        total += float(Sigma[i, i])  # float64 in both forms (numpy would keep a float32 sum in float32)
    return total / d


@jitable
def adam_gradient_scale(g0_norm, size):
    """What the linear model's Adam multiplies its gradients by: 1 / the RMS entry of the first gradient
    (norm ``g0_norm`` over ``size`` parameters); 1 where that is 0 or not finite.  Adam's step does not
    change with its gradients' scale but for ε: this keeps ``ADAM_EPS`` relative to the data's scale (an
    absolute ε dwarfed the gradients of statistics ×1e-16 — Adam did not move, and on ×1e-30 the stall
    test reported the start converged), and the moments near 1 (in float32, g² of such data underflows
    and the first step was lr/ε)."""
    rms = g0_norm / np.sqrt(max(size, 1))
    if rms > 0 and np.isfinite(rms):
        return 1.0 / rms
    return 1.0


# peft.init draws lora_sym's U ~ N(0, 1/d_in) (Δ of Frobenius norm about √rank) whatever the data: where the
# residuals the adapters fit are smaller than that, a gradient solver's relative tests, measured from that start,
# stopped far from the optimum and called it converged (targets ×1e-5); the drawn start is then scaled down to
# the residuals by a power of two (docs/design.md §7).  Data at unit scale measure 8-400 per √rank.
START_SCALE_LIMIT = 1.0


@jitable
def start_factor(spread, rank):
    """The power of two a drawn lora / lora_sym start is multiplied by: 1, or where the residuals' spread
    (:func:`residual_spread`) per √rank is below ``START_SCALE_LIMIT``, 2**⌊log2(spread/√rank)/2 + ½⌋ —
    lora_sym's Δ, quadratic in U, then has about the residuals' norm (lora's Δ starts at 0: its C is
    scaled).  Data at unit scale keep the drawn start bit for bit."""
    s = spread / np.sqrt(max(rank, 1))
    if s > 0 and s < START_SCALE_LIMIT and np.isfinite(s):
        return 2.0 ** np.floor(np.log2(s) / 2.0 + 0.5)
    return 1.0


@jitable
def residual_spread(q, A):
    """√(Σ_t ⟨(A − Ŵ_t)Σ_t, A − Ŵ_t⟩ / Σ_t tr(Σ_t)/d_in): the scale of what one problem's adapters fit
    from A, measured where the data see it (Σ_t's null space, where Ŵ_t = C_tΣ_t⁺ is arbitrary, counts
    for nothing); 0 where not a positive finite number.  fastlora.arrays.residual_spreads is its form
    for the Python driver's stacks."""
    E = np.empty_like(A)
    G = np.empty_like(A)
    zero = np.zeros_like(A)
    total = 0.0
    curvature = 0.0
    for t in range(q.W_hat.shape[0]):
        total += 2.0 * task_residual(A, zero, q.W_hat[t], q.Sigma[t], E, G, q.identity)
        curvature += curvature_scale(q.identity, q.Sigma[t])
    if not (total > 0 and curvature > 0 and np.isfinite(total)):
        return 0.0
    return np.sqrt(total / curvature)


@jitable
def first_step(scales):
    """gd's first trial step where no ``lr`` is given: 1 / Σ_t of the problem's tasks'
    :func:`curvature_scale` ``scales`` (T,) — 1/T on population tasks; 1/T where that sum is not a
    positive finite number (tasks without data)."""
    total = 0.0
    for t in range(scales.shape[0]):
        total += float(scales[t])
    if not (total > 0 and np.isfinite(total)):
        return 1.0 / scales.shape[0]
    return 1.0 / total


@jitable
def sufficient_decrease(value, trial, decrease, floor):
    """The line searches' acceptance rule: ``trial`` is finite and at most ``value − decrease``
    (Armijo), or — where the asked decrease is below the rounding of F, ``floor`` = 8·eps·|F| —
    at most ``value + floor`` (a step at the objective's rounding floor).  Elementwise on arrays."""
    return np.isfinite(trial) & ((trial <= value - decrease) | ((decrease <= floor) & (trial <= value + floor)))


@jitable
def record(history, count, value, step, accurate, tol, to_max_iter, reference, scale, eps):
    """The convergence and divergence test of one problem after an iteration; returns
    (status, count): ``value`` is appended to ``history[:count]`` unless it fails the problem.

    Converged when the objective is zero to tolerance (≤ tol²·Σ_t L_t(0) = ``reference``),
    the step measure (relative change of A, or relative gradient norm; < 0: none) is ≤ tol,
    or the objective stayed constant to rounding (8·eps·|F|) over ``STALL_WINDOW`` iterations.
    ``to_max_iter`` (tol = 0): only a zero objective stops.  Diverged when the value is not
    finite or above ``DIVERGENCE_FACTOR``·``scale``.  ``accurate`` False: a value from an
    identity with rounding above zero's tolerance — floored at 0, never judged zero or constant.
    """
    if not np.isfinite(value):
        return st.NONFINITE, count
    if not accurate:
        value = max(value, 0.0)
    if value > st.DIVERGENCE_FACTOR * scale:
        return st.GREW, count
    history[count] = value
    count += 1
    if accurate and value <= tol * tol * reference:
        return st.ZERO, count
    if to_max_iter:
        return st.RUNNING, count
    if step >= 0 and step <= tol:
        return st.SMALL_STEP, count
    if accurate and count > st.STALL_WINDOW:
        low = history[count - 1]
        high = low
        for i in range(count - st.STALL_WINDOW - 1, count):
            low = min(low, history[i])
            high = max(high, history[i])
        if high - low <= 8 * eps * abs(history[count - 1]):
            return st.CONSTANT, count
    return st.RUNNING, count


@jitable
def stalled(history, count, ftol, window):
    """Whether the objective fell by at most ``ftol``·|F| over the last ``window`` iterations of
    ``history[:count]`` (``ftol`` = 0: never) — the shallow network's stall test, where F can creep
    down without end (fastlora.shallow.optim)."""
    if ftol <= 0 or count <= window:
        return False
    return history[count - window - 1] - history[count - 1] <= ftol * abs(history[count - 1])


@jitable
def relative_change(step_sq, A_sq):
    """‖A − A_previous‖ / ‖A‖ (absolute where A = 0)."""
    if A_sq > 0:
        return np.sqrt(step_sq / A_sq)
    return np.sqrt(step_sq)


@jitable
def lbfgs_direction(S, Y, rho, alpha, count, head, grad, gamma, out):
    """out = −H·∇ by the two-loop recursion (Nocedal 1980) over the ``count`` newest pairs of the
    ring buffers S, Y (m, n) (the next one goes to row ``head``), with H₀ = γI."""
    m = S.shape[0]
    copy(grad, out)
    for j in range(count):
        i = (head - 1 - j) % m
        alpha[i] = rho[i] * inner(S[i], out)
        axpy(-alpha[i], Y[i], out)
    scale(gamma, out)
    for j in range(count):
        i = (head - count + j) % m
        beta = rho[i] * inner(Y[i], out)
        axpy(alpha[i] - beta, S[i], out)
    scale(-1.0, out)


@jitable
def lbfgs_update(S, Y, rho, count, head, s, y, gamma, eps):
    """Keep the curvature pair (s, y) if sᵀy > eps·‖s‖‖y‖ (so H stays positive definite);
    returns (count, head, γ = sᵀy / yᵀy of the newest kept pair).  Norms, not squares: yᵀy of an
    objective scaled by 1e155 overflows (:func:`~fastlora.engine.linalg.norm`)."""
    sy = inner(s, y)
    y_norm = norm(y)
    if not sy > eps * norm(s) * y_norm:
        return count, head, gamma
    copy(s, S[head])
    copy(y, Y[head])
    rho[head] = 1.0 / sy
    yy = inner(y, y)
    gamma = sy / yy if SQUARES_SAFE[0] < yy < SQUARES_SAFE[1] else (sy / y_norm) / y_norm
    return min(count + 1, S.shape[0]), (head + 1) % S.shape[0], gamma


@jitable
def anderson_coefficients(gram, rhs):
    """γ minimising ‖f_last − Σ_i γ_i Δf_i‖ (type-II Anderson mixing, Walker & Ni 2011) from the
    m×m Gram of the residual differences and their products with the last residual, with a
    relative ridge ``ANDERSON_RIDGE`` against collinear histories."""
    m = gram.shape[0]
    ridge = 0.0
    for i in range(m):
        ridge += gram[i, i]
    ridge = ANDERSON_RIDGE * max(ridge, 1e-300)
    for i in range(m):
        gram[i, i] += ridge
    return spd_solve(gram, rhs)


@jitable
def spd_solve(M, b):
    """x with M x = b for a small symmetric positive definite M, by Cholesky (M is overwritten
    by its factor).  (LAPACK's solver costs seconds of Numba compile time for these m ≤ 6 systems.)
    A pivot that is not positive (M numerically singular) gives a non-finite x, which callers test."""
    m = M.shape[0]
    for j in range(m):
        pivot = M[j, j]
        for k in range(j):
            pivot -= M[j, k] * M[j, k]
        root = np.sqrt(pivot) if pivot > 0 else np.nan
        M[j, j] = root
        for i in range(j + 1, m):
            value = M[i, j]
            for k in range(j):
                value -= M[i, k] * M[j, k]
            M[i, j] = value / root
    x = np.zeros(m)
    for i in range(m):  # L z = b
        value = b[i]
        for k in range(i):
            value -= M[i, k] * x[k]
        x[i] = value / M[i, i]
    for i in range(m - 1, -1, -1):  # Lᵀ x = z
        value = x[i]
        for k in range(i + 1, m):
            value -= M[k, i] * x[k]
        x[i] = value / M[i, i]
    return x


@jitable
def anderson_mix(X, F, count, x, gx, out):
    """Record the pair (x, g(x)) of the fixed-point map in the histories X, F (depth + 1, n)
    (``count`` valid rows, oldest first) and write the mixed next iterate into ``out``;
    returns (mixed: bool, count).  Not mixed (``out`` = g(x)) with a history of one pair or
    a mix that is not finite."""
    rows = X.shape[0]
    if count == rows:  # drop the oldest pair
        for i in range(rows - 1):
            copy(X[i + 1], X[i])
            copy(F[i + 1], F[i])
        count -= 1
    copy(x, X[count])
    copy(gx, F[count])
    axpy(-1.0, x, F[count])
    count += 1
    copy(gx, out)
    if count < 2:
        return False, count
    m = count - 1
    gram = np.zeros((m, m))
    rhs = np.zeros(m)
    dF = np.empty((m, x.shape[0]), x.dtype)
    for i in range(m):
        copy(F[i + 1], dF[i])
        axpy(-1.0, F[i], dF[i])
    for i in range(m):
        rhs[i] = inner(dF[i], F[count - 1])
        for j in range(i + 1):
            gram[i, j] = gram[j, i] = inner(dF[i], dF[j])
    gamma = anderson_coefficients(gram, rhs)
    copy(X[count - 1], out)
    axpy(1.0, F[count - 1], out)
    for i in range(m):  # out −= γ_i (ΔX_i + ΔF_i)
        axpy(-gamma[i], X[i + 1], out)
        axpy(gamma[i], X[i], out)
        axpy(-gamma[i], dF[i], out)
    if not np.isfinite(inner(out, out)):
        copy(gx, out)
        return False, count
    return True, count


@jitable
def adam_update(x, grad, m, v, iteration, lr, weight_decay, b1, b2, eps):
    """One Adam step (Kingma & Ba; with ``weight_decay`` decoupled, as AdamW, Loshchilov & Hutter)
    on ``x`` in place, moments ``m``, ``v`` updated in place; elementwise, any shape:
    x ← x(1 − lr·wd); x ← x − (lr / (1 − b1ᵗ)) · m / (√(v / (1 − b2ᵗ)) + eps)."""
    adam_moments(grad, m, v, b1, b2)
    if weight_decay != 0.0:
        scale(1.0 - lr * weight_decay, x)
    adam_apply(x, m, v, lr / (1.0 - b1 ** iteration), 1.0 / (1.0 - b2 ** iteration), eps)
