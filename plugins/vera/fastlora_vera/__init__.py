"""VeRA for fastlora: vector-based random matrix adaptation (Kopiczko et al., 2024).

Frozen random matrices B (d_out, r) and C (d_in, r), shared by every task, and trainable
per-task scaling vectors b_t (d_out,) and s_t (r,)::

    Δ_t = diag(b_t) · B · diag(s_t) · Cᵀ

B and C are drawn once per shape from ``seed`` (N(0, 1/r) and N(0, 1/d_in)), so results are
reproducible.  Δ is given in factored form (``factors``), and ``pullback`` accepts implicit
gradients, so gradient solvers never form T dense matrices on factored targets.  There is no
closed-form best fit: ALS takes its documented inner-gradient steps.  Init: b = 0, s = 0.1.
"""
from __future__ import annotations

import numpy as np

from fastlora import array_module

__version__ = "0.1.0"


class VeRA:
    name = "vera"
    api_version = 1
    family = None
    implicit_gradient = True
    frozen = frozenset({"B0", "C0"})  # carried in params (zero-copy views), never trained

    def __init__(self, seed: int = 0, scale_init: float = 0.1):
        self.seed, self.scale_init = seed, scale_init

    def frozen_matrices(self, d_out: int, d_in: int, rank: int):
        """The shared frozen (B, C) for this shape (float64 numpy), reproducible from ``seed``."""
        rng = np.random.default_rng([self.seed, d_out, d_in, rank])
        return rng.standard_normal((d_out, rank)) / np.sqrt(rank), rng.standard_normal((d_in, rank)) / np.sqrt(d_in)

    def shapes(self, d_out, d_in, rank):
        return {"b": (d_out,), "s": (rank,), "B0": (d_out, rank), "C0": (d_in, rank)}

    def init(self, rng, d_out, d_in, rank, T):
        B, C = self.frozen_matrices(d_out, d_in, rank)
        return {"b": np.zeros((T, d_out)), "s": np.full((T, rank), self.scale_init),
                "B0": np.broadcast_to(B, (T, d_out, rank)), "C0": np.broadcast_to(C, (T, d_in, rank))}

    def factors(self, params):
        left = params["b"][:, :, None] * params["B0"] * params["s"][:, None, :]
        return left, params["C0"]

    def delta(self, params):
        left, right = self.factors(params)
        return left @ right.swapaxes(1, 2)

    def pullback(self, params, G):
        xp = array_module(params["b"])
        weighted = (G @ xp.ascontiguousarray(params["C0"])) * params["B0"]   # (G C) ⊙ B   (T, d_out, r)
        return {"b": xp.sum(weighted * params["s"][:, None, :], axis=2),
                "s": xp.sum(weighted * params["b"][:, :, None], axis=1)}
