"""Exact reduction of factored population problems to the span of the task factors (docs/design.md §5).

For targets W*_t = S + B*_t C*_tᵀ let Q_out (d_out, m_out) and Q_in (d_in, m_in) be orthonormal
bases of span{B*_t} and span{C*_t} over all tasks (psd parameterizations such as lora_sym use
one basis Q of span{B*_t} ∪ span{C*_t} on both sides, m ≤ 2·T·k; symmetric targets: m ≤ T·k).
With b_t = Q_outᵀ B*_t and c_t = Q_inᵀ C*_t,

    W*_t − A = Q_out (b_t c_tᵀ − E) Q_inᵀ     whenever A − S = Q_out E Q_inᵀ,

so every best fit of W*_t − A lies in the spans, the A step keeps A − S in them, and the
standard start A₀ = mean_t W*_t has E₀ = mean_t b_t c_tᵀ: every ALS iterate stays of this
form.  As Q_out, Q_in are orthonormal, F(A, θ) = Σ_t ½‖b_t c_tᵀ − E − δ_t‖² — the same
objective on m-dimensional matrices with shared part 0 — and a stationary point of the
reduced problem is one of the full problem (the gradients lift the same way).  fastlora
solves that small problem with the same solvers and lifts it back:

    A = S + Q_out E Q_inᵀ,   B_t = Q_out b̂_t,   C_t = Q_in ĉ_t.

Cost: O(d·(T·k)²) for the bases and one d×d×m product for Q_outᵀ S Q_in (convergence is
judged on the full A = S + Q_out E Q_inᵀ, and "objective ≈ 0" against the full problem's
scale, so the reduced and full solvers stop alike), then iterations on m×m matrices instead
of d×d, plus one d×m×d product for a dense A (none with ``dense_A=False``, which returns A
as a :class:`~fastlora.linop.LowRankUpdate`).  Used when it shrinks the problem (m < d), the
parameterization is equivariant under a change of basis (``basis_equivariance``, declared or
implied by the family "psd", "general" or "full": :func:`fastlora.peft.protocol.is_basis_equivariant`)
and has no shared parameters, and A starts at the standard solution (the default);
``reduction="none"`` keeps the full space.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .implicit import is_implicit
from .linop import LowRankUpdate
from .peft.protocol import change_basis, is_basis_equivariant, shared_names
from .taskbatch import factored_targets
from .tasks import LowRankTarget, Task


@dataclass
class Reduction:
    """The bases of a reduced problem, its tasks, and the way back to the full space."""

    base: np.ndarray        # S (d_out, d_in)
    Q_out: np.ndarray       # (d_out, m_out), orthonormal columns
    Q_in: np.ndarray        # (d_in, m_in); the same object as Q_out for a one-basis (psd) reduction
    tasks: list             # the reduced population tasks (shared part 0)
    seconds: float          # planning time (planned with others: its share of theirs, plan_reductions)
    base_sq: float          # ‖S‖²_F: the reduced solve's scale of the full A = S + Q_out E Q_inᵀ

    @property
    def sizes(self) -> tuple[int, int]:
        return self.Q_out.shape[1], self.Q_in.shape[1]

    def lift_A(self, E, dense: bool = True):
        """A = S + Q_out E Q_inᵀ: a dense array (one d×m×d product), or a LowRankUpdate."""
        left = self.Q_out @ np.asarray(E, dtype=np.float64)
        if not dense:
            return LowRankUpdate(self.base, left, self.Q_in, basis=self.Q_out, core=np.asarray(E, dtype=np.float64))
        A = left @ self.Q_in.T
        A += self.base.dense() if is_implicit(self.base) else self.base  # in place (an implicit S is generated once)
        return A

    def lift_params(self, peft, params: dict) -> dict:
        """Adapters of the reduced problem in the full space (Δ = Q_out Δ̂ Q_inᵀ)."""
        return change_basis(peft, params, self.Q_out, self.Q_in)


def plan_reduction(problem_or_tasks, tasks: list, peft, options: dict) -> Reduction | None:
    """The reduction of a factored population problem, or None where it does not apply or
    would not shrink the problem."""
    return plan_reductions([(problem_or_tasks, tasks)], peft, options)[0]


def plan_reductions(problems: list, peft, options: dict) -> list:
    """:func:`plan_reduction` of each ``(problem_or_tasks, tasks)`` in ``problems``: the same Reductions,
    the small orthonormalisations of problems of one shape run as stacks (:func:`orthonormal_bases`);
    each Reduction's ``seconds`` is its share of the whole."""
    equivariance = _equivariance(peft, options)
    if equivariance is None:
        return [None] * len(problems)
    started = time.perf_counter()
    found = [_factor_sets(problem_or_tasks, tasks, equivariance) for problem_or_tasks, tasks in problems]
    bases = orthonormal_bases([F for one in found if one is not None for F in one[1]])
    out, used = [], 0
    for one in found:
        if one is None:
            out.append(None)
            continue
        factors, sets = one
        # one set: one basis for both sides (the same object, as the reduced solve expects)
        out.append(_reduced(*factors, bases[used], bases[used + len(sets) - 1]))
        used += len(sets)
    share = (time.perf_counter() - started) / max(1, sum(r is not None for r in out))
    for reduction in out:
        if reduction is not None:
            reduction.seconds = share
    return out


def _equivariance(peft, options: dict) -> str | None:
    """How ``peft`` is equivariant under a change of basis where a reduction may apply to its solves (the
    module docstring's conditions), else None."""
    if options.get("reduction", "auto") == "none" or peft is None:
        return None
    equivariance = is_basis_equivariant(peft)  # docs/plugins.md, "Basis equivariance"
    init_A = options.get("init_A", "standard")
    if (equivariance is None or shared_names(peft) or not (isinstance(init_A, str) and init_A == "standard")
            or options.get("init_params") is not None):
        return None
    return equivariance


def _factor_sets(problem_or_tasks, tasks, equivariance):
    """(factors, [F] or [F_out, F_in]): the factor sets whose spans the reduced problem lives in (one set
    where one basis serves both sides), or None where the reduction does not apply or cannot shrink it."""
    if not tasks[0].is_population:
        return None
    factors = _target_factors(problem_or_tasks, tasks)
    if factors is None:
        return None
    base, B, C, symmetric = factors
    d_out, d_in = base.shape
    if equivariance == "same_basis":
        stacked = B.transpose(1, 0, 2).reshape(d_out, -1)
        if not symmetric:
            stacked = np.concatenate([stacked, C.transpose(1, 0, 2).reshape(d_in, -1)], axis=1)
        return None if spans_everything(stacked) else (factors, [stacked])
    F_out = B.transpose(1, 0, 2).reshape(d_out, -1)
    F_in = F_out if symmetric else C.transpose(1, 0, 2).reshape(d_in, -1)
    if spans_everything(F_out) and spans_everything(F_in):
        return None
    return factors, [F_out] if F_in is F_out else [F_out, F_in]


def _reduced(base, B, C, symmetric: bool, Q_out, Q_in) -> Reduction | None:
    """The Reduction to the bases Q_out, Q_in (None where they do not shrink the problem)."""
    d_out, d_in = base.shape
    if Q_out.shape[1] >= d_out and Q_in.shape[1] >= d_in:
        return None
    b = Q_out.T @ B                                  # (T, m_out, k)
    c = b if (symmetric and Q_in is Q_out) else Q_in.T @ C
    zero = np.zeros((Q_out.shape[1], Q_in.shape[1]))
    # projections of checked factors: finite, of consistent shapes (no per-task re-validation)
    reduced = [Task.population(LowRankTarget._trusted(zero, bt, bt if c is b else ct)) for bt, ct in zip(b, c)]
    base_sq = base.expected_frobenius_sq() if is_implicit(base) else float(np.vdot(base, base))
    return Reduction(base, Q_out, Q_in, reduced, 0.0, base_sq)


# Factor sets with cond(F) below this are orthonormalised by CholeskyQR2 (two Gram + Cholesky
# rounds: GEMM speed, orthonormal to rounding for cond(F)·√eps < 1); others by an SVD, which also
# finds their rank.
_CHOLESKY_MAX_COND = 1e5


def extend_basis(Q, F) -> np.ndarray:
    """[Q, Q'] orthonormal, spanning the columns of Q (orthonormal, (d, m)) and of F (d, n):
    F is projected off Q twice and only the (d, n) remainder is orthonormalised — O(d·m·n).
    Directions of F already in span(Q) (remainder below max(d, n)·eps of F) are dropped."""
    R = F - Q @ (Q.T @ F)
    R = R - Q @ (Q.T @ R)
    scale = float(np.linalg.norm(F)) or 1.0
    if float(np.linalg.norm(R)) <= max(F.shape) * np.finfo(np.float64).eps * scale:
        return Q
    return np.concatenate([Q, orthonormal_basis(R, rtol=max(F.shape) * np.finfo(np.float64).eps
                                                * scale / max(float(np.linalg.norm(R, 2)), 1e-300))], axis=1)


# Columns whose d×d Gram minus this fraction of its trace is still positive definite span
# all of R^d (for the reduction's purpose: a span that is not smaller than d)
_FULL_SPAN_RTOL = 1e-10


def spans_everything(F) -> bool:
    """Whether the columns of F (d, n) span R^d, so a reduction to their span cannot pay.

    n < d: no.  Otherwise by a Cholesky factorisation of F Fᵀ − τ·tr(F Fᵀ)·I (τ = 1e-10):
    it succeeds iff λ_min(F Fᵀ) > τ·tr — a SYRK and d³/3 flops, where the span's orthonormal
    basis would need an SVD of the d×n matrix (minutes at d=4096, n=8192).
    """
    d, n = F.shape
    if n < d:
        return False
    gram = F @ F.T
    gram[np.diag_indices(d)] -= _FULL_SPAN_RTOL * np.trace(gram)
    try:
        np.linalg.cholesky(gram)
    except np.linalg.LinAlgError:
        return False
    return True


def orthonormal_basis(F, rtol: float | None = None) -> np.ndarray:
    """Orthonormal columns spanning the columns of F (d, n).

    Well-conditioned F (the usual case: random task factors): CholeskyQR2.  Otherwise the left
    singular vectors with singular values above ``rtol`` (default max(d, n)·eps) times the largest.
    """
    return orthonormal_bases([F], rtol)[0]


def orthonormal_bases(Fs: list, rtol: float | None = None) -> list:
    """``[orthonormal_basis(F, rtol) for F in Fs]``: the CholeskyQR2 of matrices of one shape runs as stacks
    (each LAPACK call and product matrix by matrix, as alone, in one numpy call for all)."""
    out: list = [None] * len(Fs)
    groups: dict = {}
    for i, F in enumerate(Fs):
        if F.shape[1] == 0:
            out[i] = F[:, :0].copy()
        else:
            groups.setdefault(F.shape, []).append(i)
    for members in groups.values():
        F = Fs[members[0]][None] if len(members) == 1 else np.array([Fs[i] for i in members])  # one alone: a view
        gram = F.transpose(0, 2, 1) @ F
        lam = np.linalg.eigvalsh(gram)
        fast = np.array([_cholesky_qr_applies(values) for values in lam])
        for j in np.flatnonzero(~fast):  # the others by their spectrum, one at a time
            out[members[j]] = _spectral_basis(Fs[members[j]], rtol)
        if fast.any():
            if not fast.all():
                F, gram = F[fast], gram[fast]
            for j, Q in zip(np.flatnonzero(fast), _cholesky_qr2(F, gram)):
                out[members[j]] = Q
    return out


def _cholesky_qr_applies(lam) -> bool:
    """Whether a Gram matrix of eigenvalues ``lam`` (ascending) is conditioned for CholeskyQR2."""
    return bool(lam[-1] > 0 and lam[0] > lam[-1] / _CHOLESKY_MAX_COND ** 2)


def _cholesky_qr2(F, gram) -> list:
    """CholeskyQR2 of a stack F (N, d, n) with its Grams FᵀF: two Gram + Cholesky rounds, each a GEMM with
    the inverse factor (n×n inverse, then (d, n)·(n, n))."""
    Q = F
    for round_ in range(2):
        L = np.linalg.cholesky(gram if round_ == 0 else Q.transpose(0, 2, 1) @ Q)
        Q = Q @ np.linalg.inv(L).transpose(0, 2, 1)
    return [np.ascontiguousarray(q) for q in Q]


def _spectral_basis(F, rtol) -> np.ndarray:
    """The left singular vectors of F with singular values above ``rtol`` (default max(d, n)·eps) times the
    largest (any F: finds its rank)."""
    with _one_blas_thread():  # threaded LAPACK SVD of a tall matrix can be 30x slower on a busy machine
        U, s, _ = np.linalg.svd(F, full_matrices=False)
    if s.size == 0 or s[0] == 0:
        return U[:, :0]
    rtol = max(F.shape) * np.finfo(np.float64).eps if rtol is None else rtol
    return np.ascontiguousarray(U[:, s > rtol * s[0]])


def _one_blas_thread():
    from threadpoolctl import threadpool_limits
    return threadpool_limits(1, user_api="blas")


def _target_factors(problem_or_tasks, tasks):
    """(S, B*, C*, symmetric) of factored targets sharing one base (taskbatch.factored_targets) as
    host arrays (an implicit S stays implicit), else None."""
    factors = factored_targets(tasks, problem_or_tasks)
    if factors is None:
        return None
    base, B, C, symmetric = factors
    return (base if is_implicit(base) else np.asarray(base)), np.asarray(B), np.asarray(C), symmetric
