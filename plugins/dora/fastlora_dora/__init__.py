"""DoRA for fastlora: weight-decomposed low-rank adaptation (Liu et al., 2024).

The adapted weight of task t is a per-column magnitude times the column-normalised
direction of the LoRA-updated base::

    V_t = A + B_t C_tᵀ,    W_t = V_t · diag(m_t / ‖V_t‖_c),    Δ_t = W_t − A

with ‖·‖_c the norm of each column, B_t (d_out, r), C_t (d_in, r) and m_t (d_in,).  Δ depends on
the shared A, so the class sets ``uses_base`` (fastlora protocol v1, optional member): LoRA-ML
with DoRA runs with ``solver="gd"``; fine-tuning and evaluation work as for any parameterization.
Init: B = 0, C ~ N(0, 1/d_in), m = ‖A‖_c, so Δ = 0.
"""
from __future__ import annotations

import numpy as np

from fastlora import array_module

__version__ = "0.1.0"


class DoRA:
    name = "dora"
    api_version = 1
    family = None
    uses_base = True

    def __init__(self, eps: float = 1e-12):
        self.eps = eps  # floor of the column norms (a zero column has no direction)

    def shapes(self, d_out, d_in, rank):
        return {"B": (d_out, rank), "C": (d_in, rank), "m": (d_in,)}

    def init(self, rng, d_out, d_in, rank, T, base):
        m = np.broadcast_to(np.linalg.norm(base, axis=0), (T, d_in)).copy()
        return {"B": np.zeros((T, d_out, rank)), "C": rng.standard_normal((T, d_in, rank)) / np.sqrt(d_in), "m": m}

    def _direction(self, params, base):
        xp = array_module(params["B"])
        V = base[None] + params["B"] @ params["C"].swapaxes(1, 2)
        norms = xp.maximum(xp.sqrt(xp.sum(V * V, axis=1)), self.eps)  # (T, d_in)
        return V, norms

    def delta(self, params, base):
        V, norms = self._direction(params, base)
        return V * (params["m"] / norms)[:, None, :] - base[None]

    def pullback(self, params, G, base):
        xp = array_module(params["B"])
        G = G.dense() if hasattr(G, "dense") else G
        V, norms = self._direction(params, base)
        m = params["m"]
        proj = xp.sum(G * V, axis=1)                                  # Σ_i G_ij V_ij   (T, d_in)
        dV = (m / norms)[:, None, :] * (G - V * (proj / norms ** 2)[:, None, :])
        return {"B": dV @ params["C"], "C": dV.swapaxes(1, 2) @ params["B"], "m": proj / norms,
                "base": xp.sum(dV - G, axis=0)}
