"""Tied LoRA for fastlora: factor matrices shared by every task and trained, a scaling vector per task.

::

    Δ_t = B · diag(s_t) · Cᵀ,      B (d_out, r), C (d_in, r) shared;  s_t (r,) per task

The first shipped parameterization of protocol version 2 (``shared = ("B", "C")``): LoRA-ML
trains A, B, C and every s_t; fine-tuning a new task keeps the retrained A, B and C and
trains only its r numbers s_new (``fl.finetune(res, task, peft="tied_lora", rank=r)``).
On tasks that really share a basis (:func:`make_tied_problem`) that recovers the new task
exactly from r numbers, where plain LoRA fine-tunes r·(d_out + d_in).

Unlike VeRA (whose shared matrices are frozen random draws) B and C are learned.  Δ is
given in factored form (``factors``) and ``pullback`` accepts implicit gradients, so solvers
never form T dense matrices on factored targets; with an implicit G_t = S + P_tᵀQ_t the
products G_t·C cost one GEMM of width r with S (C is the same for every task), not T.
There is no closed-form best fit (the shared factors couple the tasks): ALS takes its
documented inner-gradient steps.  Init: B ~ N(0, 1/d_out), C ~ N(0, 1/d_in), s = 0 (Δ = 0).

Backend ``numba``: ``fast_paths["numba"]`` replaces ``delta`` and ``pullback`` (dense G) by
compiled kernels (:mod:`fastlora_tied_lora._numba`), imported and compiled on first use only.
The solvers call the fast ``pullback`` at every dense gradient; ``delta`` only outside the solvers
(they use ``factors``).  The tasks' law is a problem-generator plugin too: ``law = "tied"``
(:func:`tied_law`, entry-point group ``fastlora.problems``).
"""
from __future__ import annotations

import numpy as np

from fastlora import array_module

from .problems import TiedProblem, make_tied_problem, tied_law

__version__ = "0.1.0"
__all__ = ["NumbaFastPath", "TiedLoRA", "TiedProblem", "make_tied_problem", "tied_law"]


class TiedLoRA:
    name = "tied_lora"
    api_version = 2
    shared = ("B", "C")
    family = None            # Δ ranges over B·diag(s)·Cᵀ for one (B, C): no exact per-task fit
    implicit_gradient = True

    def __init__(self, scale_init: float = 0.0):
        if not isinstance(scale_init, (int, float)) or not np.isfinite(scale_init):
            raise ValueError(f"scale_init must be a finite number, got {scale_init!r}")
        self.scale_init = float(scale_init)
        self.fast_paths = {"numba": NumbaFastPath(self)}

    def shapes(self, d_out, d_in, rank):
        """One task's view: B and C are shared (no task axis), s is per task."""
        return {"B": (d_out, rank), "C": (d_in, rank), "s": (rank,)}

    def init(self, rng, d_out, d_in, rank, T):
        """B (d_out, r), C (d_in, r) once; s (T, r) = scale_init."""
        return {"B": rng.standard_normal((d_out, rank)) / np.sqrt(d_out),
                "C": rng.standard_normal((d_in, rank)) / np.sqrt(d_in),
                "s": np.full((T, rank), self.scale_init)}

    def factors(self, params):
        """(B·diag(s_t), C) batched: (T, d_out, r) and a (T, d_in, r) broadcast view of C."""
        xp = array_module(params["s"])
        B, C, s = params["B"], params["C"], params["s"]
        return B[None] * s[:, None, :], xp.broadcast_to(C, (s.shape[0], *C.shape))

    def delta(self, params):
        """(T, d_out, d_in): B·diag(s_t)·Cᵀ."""
        left, _ = self.factors(params)
        return left @ params["C"].T

    def pullback(self, params, G):
        """∂/∂θ of Σ_t ⟨G_t, B diag(s_t) Cᵀ⟩ with K_t = G_t C (d_out, r):
        s_t: diag(Bᵀ K_t) = Σ_i B ⊙ K_t;  B: Σ_t K_t diag(s_t);  C: Σ_t G_tᵀ B diag(s_t)."""
        xp = array_module(params["s"])
        B, C, s = params["B"], params["C"], params["s"]
        GC, GtB = _times_shared(G, C), _times_shared(G.swapaxes(-1, -2), B)    # (T, d_out, r), (T, d_in, r)
        weights = s[:, None, :]
        return {"s": xp.sum(GC * B[None], axis=1), "B": xp.sum(GC * weights, axis=0),
                "C": xp.sum(GtB * weights, axis=0)}

    def canonicalize(self, params):
        """Unit columns of B and C with their largest-|entry| positive (the scale and signs go
        into s), ordered by the variance of s across tasks (descending).  Δ is unchanged; for
        generic tasks this makes B and C unique (A and s keep a common shift, see the README)."""
        xp = array_module(params["s"])
        B, C, s = params["B"], params["C"], params["s"]
        nb, nc = xp.sqrt(xp.sum(B * B, axis=0)), xp.sqrt(xp.sum(C * C, axis=0))
        nb, nc = xp.where(nb > 0, nb, 1.0), xp.where(nc > 0, nc, 1.0)
        sb, sc = _sign_of_largest(B), _sign_of_largest(C)
        B, C, s = B * (sb / nb), C * (sc / nc), s * (nb * nc * sb * sc)
        if s.shape[0] > 1:
            order = xp.argsort(-xp.var(s, axis=0))
            B, C, s = B[:, order], C[:, order], s[:, order]
        return {"B": B, "C": C, "s": s}


def _sign_of_largest(F):
    """±1 per column of F (d, r): the sign of its largest-magnitude entry (1 for a zero column)."""
    xp = array_module(F)
    picked = xp.take_along_axis(F, xp.argmax(xp.abs(F), axis=0)[None, :], axis=0)[0]
    return xp.where(picked < 0, -1.0, 1.0).astype(F.dtype)


def _times_shared(G, X):
    """G_t @ X for every task with one X (d, r) shared by all tasks, (T, ·, r).

    G is dense (T, m, d) or an implicit ``fastlora.linop.SharedPlusLowRank`` batch
    G_t = S + P_tᵀ Q_t: then S X is one GEMM for all tasks, plus P_tᵀ (Q_t X) per task.
    """
    if all(hasattr(G, name) for name in ("shared", "P", "Q")):
        return (G.shared @ X)[None] + G.P.swapaxes(-1, -2) @ (G.Q @ X)
    return G @ X


class NumbaFastPath:
    """``fast_paths["numba"]`` of a :class:`TiedLoRA`: compiled ``delta`` and ``pullback``.

    Numba and the kernels are imported (and compiled, or loaded from fastlora's kernel cache)
    the first time a member is read, never when the plugin is loaded.  ``pullback`` of an
    implicit gradient uses the plain method (already one GEMM of width r, see ``_times_shared``).
    """

    def __init__(self, peft: TiedLoRA):
        self.peft = peft

    @property
    def delta(self):
        from . import _numba
        return _numba.delta

    @property
    def pullback(self):
        from . import _numba
        plain = self.peft.pullback

        def pullback(params, G):
            if not isinstance(G, np.ndarray):
                return plain(params, G)
            return _numba.pullback(params, G)
        return pullback
