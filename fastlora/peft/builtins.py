"""The built-in parameterizations: ``lora``, ``lora_sym`` and ``full`` (protocol version 1).

They are registered through the ``fastlora.peft`` entry-point group like any plugin.
Arrays are batched over tasks (leading axis T) and may be numpy or cupy arrays.
Factor matrices are returned as views of (T, r, d) row-contiguous buffers, the layout in
which the shared GEMMs of the solvers need them.
"""
from __future__ import annotations

from ..arrays import array_module


def _rows_buffer(xp, T: int, d: int, r: int, dtype):
    return xp.zeros((T, r, d), dtype=dtype).swapaxes(1, 2)


def _as_row_layout(X):
    """A copy of (T, d, r) ``X`` whose memory is (T, r, d) contiguous rows."""
    xp = array_module(X)
    return xp.ascontiguousarray(X.swapaxes(1, 2)).swapaxes(1, 2)


def canonical_signs(B, C=None):
    """Flip factor columns so that each column of B has its largest-|entry| positive.

    Makes factors unique up to rotations within repeated singular values; used so that
    every backend returns the same numbers, not just the same products.
    """
    xp = array_module(B)
    # the entry of largest magnitude of each column is the larger of its maximum and −minimum
    sign = xp.where(-xp.min(B, axis=1) > xp.max(B, axis=1), -1.0, 1.0).astype(B.dtype)[:, None, :]
    if C is None:
        return B * sign
    return B * sign, C * sign


class LoRA:
    """LoRA: Δ = (α/r) · B Cᵀ with B (T, d_out, r), C (T, d_in, r); ``alpha`` defaults to r.

    Exact best fit (ALS): truncated SVD, split evenly between B and C.
    Init (as in LoRA practice): B = 0, C ~ N(0, 1/d_in), so Δ = 0 at init.
    """

    name = "lora"
    api_version = 1
    family = "general"
    implicit_gradient = True

    def __init__(self, alpha: float | None = None):
        if alpha is not None and not (isinstance(alpha, (int, float)) and alpha > 0):
            raise ValueError(f"alpha must be a positive number or None, got {alpha!r}")
        self.alpha = alpha

    def scale(self, rank: int) -> float:
        """The factor of B·Cᵀ at ``rank``: α/r, or 1 without ``alpha``."""
        return 1.0 if self.alpha is None else self.alpha / rank

    def shapes(self, d_out, d_in, rank):
        return {"B": (d_out, rank), "C": (d_in, rank)}

    def init(self, rng, d_out, d_in, rank, T):
        import numpy as np
        C = rng.standard_normal((T, rank, d_in)).swapaxes(1, 2) / np.sqrt(d_in)
        return {"B": _rows_buffer(np, T, d_out, rank, np.float64), "C": C}

    def delta(self, params):
        B, C = params["B"], params["C"]
        return self.scale(B.shape[-1]) * (B @ C.swapaxes(-1, -2))

    def factors(self, params):
        B = params["B"]
        return self.scale(B.shape[-1]) * B, params["C"]

    def from_factors(self, B, C):
        """Params with Δ = B Cᵀ exactly (balanced column norms)."""
        xp = array_module(B)
        s = self.scale(B.shape[-1])
        nb = xp.sqrt(xp.sum(B * B, axis=1, keepdims=True))
        nc = xp.sqrt(xp.sum(C * C, axis=1, keepdims=True))
        both = (nb > 0) & (nc > 0)
        ratio = xp.where(both, xp.sqrt(nc / (xp.where(both, nb, 1.0) * s)), 1.0 / s ** 0.5).astype(B.dtype)
        return {"B": B * ratio, "C": C / (ratio * s)}

    def pullback(self, params, G):
        B, C = params["B"], params["C"]
        s = self.scale(B.shape[-1])
        return {"B": s * (G @ C), "C": s * (G.swapaxes(-1, -2) @ B)}

    def best_fit(self, R, rank):
        xp = array_module(R)
        P, sv, Vt = xp.linalg.svd(R, full_matrices=False)
        root = xp.sqrt(sv[:, :rank] / self.scale(rank))[:, None, :]
        B = _as_row_layout(P[:, :, :rank] * root)
        C = _as_row_layout(Vt[:, :rank, :].swapaxes(1, 2) * root)
        return {"B": B, "C": C}

    def jvp(self, params, direction):
        """DΔ[dB, dC] = s(dB Cᵀ + B dCᵀ)."""
        s, B, C = self.scale(params["B"].shape[-1]), params["B"], params["C"]
        return s * (direction["B"] @ C.swapaxes(-1, -2) + B @ direction["C"].swapaxes(-1, -2))

    def curvature(self, params, G, direction):
        """D²Δ[dB, dC]ᵀ G = (s G dC, s Gᵀ dB)."""
        s = self.scale(params["B"].shape[-1])
        return {"B": s * (G @ direction["C"]), "C": s * (G.swapaxes(-1, -2) @ direction["B"])}

    def symmetry_tangents(self, params):
        """(B_t K, −C_t Kᵀ) for every r×r unit K and task t: (B, C) → (B M, C M⁻ᵀ) keeps Δ."""
        xp = array_module(params["B"])
        B, C = params["B"], params["C"]
        T, _, r = B.shape
        out = []
        for t in range(T):
            for i in range(r):
                for j in range(r):
                    dB, dC = xp.zeros_like(B), xp.zeros_like(C)
                    dB[t, :, j] = B[t, :, i]
                    dC[t, :, i] = -C[t, :, j]
                    out.append({"B": dB, "C": dC})
        return out

    def canonicalize(self, params):
        B, C = canonical_signs(params["B"], params["C"])
        return {"B": B, "C": C}


class SymmetricLoRA:
    """Symmetric LoRA (the paper's theory): Δ = U Uᵀ with U (T, d, r); needs d_out = d_in.

    Exact best fit in the Frobenius norm: the top-r positive eigenpairs of the symmetrised
    residual, U = V_r diag(√max(λ_r, 0)).  With a data metric Σ_t ≠ I no closed form
    exists; the ALS solver then takes inner gradient steps on U (documented in
    :func:`fastlora.retrain`).
    """

    name = "lora_sym"
    api_version = 1
    family = "psd"
    implicit_gradient = True
    square_only = True

    def shapes(self, d_out, d_in, rank):
        if d_out != d_in:
            raise ValueError(f"lora_sym needs d_out == d_in, got d_out={d_out}, d_in={d_in}")
        return {"U": (d_in, rank)}

    def init(self, rng, d_out, d_in, rank, T):
        import numpy as np
        self.shapes(d_out, d_in, rank)
        return {"U": rng.standard_normal((T, rank, d_in)).swapaxes(1, 2) / np.sqrt(d_in)}

    def delta(self, params):
        U = params["U"]
        return U @ U.swapaxes(-1, -2)

    def factors(self, params):
        return params["U"], params["U"]

    def from_factors(self, B, C):
        """For the psd family the solvers call this with ``B is C`` (= U)."""
        return {"U": B}

    def pullback(self, params, G):
        U = params["U"]
        return {"U": G @ U + G.swapaxes(-1, -2) @ U}

    def best_fit(self, R, rank):
        xp = array_module(R)
        lam, V = xp.linalg.eigh(0.5 * (R + R.swapaxes(-1, -2)))
        lam, V = lam[:, ::-1][:, :rank], V[:, :, ::-1][:, :, :rank]
        return {"U": _as_row_layout(V * xp.sqrt(xp.maximum(lam, 0))[:, None, :])}

    def jvp(self, params, direction):
        """DΔ[dU] = dU Uᵀ + U dUᵀ."""
        U, dU = params["U"], direction["U"]
        return dU @ U.swapaxes(-1, -2) + U @ dU.swapaxes(-1, -2)

    def curvature(self, params, G, direction):
        """D²Δ[dU]ᵀ G = (G + Gᵀ) dU."""
        return {"U": (G + G.swapaxes(-1, -2)) @ direction["U"]}

    def symmetry_tangents(self, params):
        """U_t K for every task and unit skew K: U → U O (O orthogonal) keeps Δ = U Uᵀ."""
        xp = array_module(params["U"])
        U = params["U"]
        T, _, r = U.shape
        out = []
        for t in range(T):
            for i in range(r):
                for j in range(i + 1, r):
                    dU = xp.zeros_like(U)
                    dU[t, :, j] = U[t, :, i]
                    dU[t, :, i] = -U[t, :, j]
                    out.append({"U": dU})
        return out

    def canonicalize(self, params):
        return {"U": canonical_signs(params["U"])}


class Full:
    """Full fine-tuning: Δ = W with W (T, d_out, d_in); the rank argument is ignored.

    Exact best fit: Δ = R (population) or the least-squares solution (finite sample).
    """

    name = "full"
    api_version = 1
    family = "full"

    def shapes(self, d_out, d_in, rank):
        return {"W": (d_out, d_in)}

    def init(self, rng, d_out, d_in, rank, T):
        import numpy as np
        return {"W": np.zeros((T, d_out, d_in))}

    def delta(self, params):
        return params["W"]

    def pullback(self, params, G):
        return {"W": G + 0}

    def best_fit(self, R, rank):
        return {"W": R + 0}
