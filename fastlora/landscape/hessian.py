"""Extreme eigenvalues of the LoRA-ML Hessian, with the parameterization's symmetries projected out.

The Hessian of F in (A, θ_1..θ_T) is applied by exact Hessian-vector products
(:class:`~fastlora.landscape.objective.LandscapeModel.hvp`).  Along the symmetry orbit of a
point (U_t → U_t O for ``lora_sym``; (B_t, C_t) → (B_t M, C_t M⁻ᵀ) for ``lora``) F is constant,
so a minimum always has zero eigenvalues there.  With ``project=True`` (default) the
tangents of the orbit are orthonormalised into Q (dim × m) and the spectrum is that of
P H P restricted to their orthogonal complement (P = I − Q Qᵀ), of dimension dim − m:
a positive smallest eigenvalue then certifies a strict local minimum modulo symmetry.

Two methods give the same numbers:

* ``"dense"`` — the Hessian is assembled by batched HVPs with the identity, restricted to
  an orthonormal basis N of the complement (Nᵀ H N) and diagonalised with ``eigh``.
  Chosen by ``method="auto"`` when dim ≤ ``dense_max_dim`` (default 1500), or whenever
  ``k_eigs`` reaches the projected dimension (Lanczos needs k < n).
* ``"lanczos"`` — ``scipy.sparse.linalg.eigsh`` on a ``LinearOperator`` x ↦ P H P x + c Q Qᵀ x.
  The symmetry directions are moved to eigenvalue c = ±3ρ (ρ: spectral radius of P H P,
  from a first Lanczos run), outside the complement's spectrum, so they never appear
  among the k smallest (c = +3ρ) or k largest (c = −3ρ) eigenvalues.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import FastLoRAError, check_choice, check_int
from ..solvers.common import RetrainResult
from .objective import LandscapeModel, Point, as_point

DENSE_MAX_DIM = 1500
_ORTH_RTOL = 1e-9  # tangents below this fraction of the largest singular value are dependent


@dataclass
class HessianSpectrum:
    """Extreme eigenpairs of the (projected) Hessian of F at a point.

    ``smallest`` ascending and ``largest`` descending, each (k,); ``*_directions`` the
    eigenvectors as structured unit directions {"A": (d_out, d_in), name: (T, ...)};
    ``grad_norm`` = ‖∇F‖ at the point; ``dim`` the number of variables; ``projected_dim`` =
    dim − ``n_symmetry`` (the dimension of the symmetry orbit's normal space); ``method``
    "dense" or "lanczos".
    """

    smallest: np.ndarray
    largest: np.ndarray
    smallest_directions: list = field(repr=False)
    largest_directions: list = field(repr=False)
    objective: float
    grad_norm: float
    dim: int
    projected_dim: int
    n_symmetry: int
    method: str
    projected: bool

    @property
    def min_eig(self) -> float:
        return float(self.smallest[0])

    @property
    def max_eig(self) -> float:
        return float(self.largest[0])


def _peft_of(res_or_point, peft):
    if peft is not None:
        return peft
    return res_or_point.peft if isinstance(res_or_point, RetrainResult) else "lora_sym"


def _rank_of(point: Point, rank) -> int:
    if rank is not None:
        return check_int("rank", rank, low=1)
    shapes = [v.shape for v in point.params.values()]
    if not shapes or len(shapes[0]) != 3:
        raise FastLoRAError("cannot read the adapter rank from the point; pass rank=")
    return int(shapes[0][-1])


def landscape_at(res_or_point, problem_or_tasks, peft=None, rank=None) -> tuple[LandscapeModel, Point]:
    """The model of F for these tasks and the checked point (shared by the landscape tools)."""
    point = as_point(res_or_point)
    model = LandscapeModel(problem_or_tasks, _peft_of(res_or_point, peft), _rank_of(point, rank))
    return model, model.check_point(point)


def symmetry_basis(model: LandscapeModel, point: Point) -> np.ndarray:
    """Q (dim, m): an orthonormal basis of the symmetry orbit's tangent space at the point.

    Tangents are normalised one by one (a task whose adapter is 0 contributes none), then
    orthonormalised by an SVD that drops dependent ones (rank-deficient adapters).
    """
    Z = model.symmetry_tangents(point)
    if Z.shape[1] == 0:
        return Z
    norms = np.linalg.norm(Z, axis=0)
    keep = norms > np.finfo(np.float64).tiny ** 0.5
    if not keep.any():
        return np.zeros((model.dim, 0))
    U, s, _ = np.linalg.svd(Z[:, keep] / norms[keep], full_matrices=False)
    return U[:, s > _ORTH_RTOL * s[0]]


def hessian_spectrum(res_or_point, tasks, peft=None, k_eigs: int = 6, *, rank: int | None = None,
                     project: bool = True, method: str = "auto", dense_max_dim: int = DENSE_MAX_DIM,
                     seed: int = 0) -> HessianSpectrum:
    """The ``k_eigs`` smallest and largest eigenvalues of the Hessian of F at a point.

    ``res_or_point``: a RetrainResult, a dict {"A": A, "U": U, ...} or a tuple (A, params);
    ``tasks``: the Problem / Task list F is built from; ``peft``: "lora_sym" or "lora"
    (default: the result's parameterization, else "lora_sym"); ``rank``: read from the
    point when omitted.  ``project``: restrict to the normal space of the symmetry orbit
    (see the module docstring); ``method``: "auto" | "dense" | "lanczos"; ``seed``: the
    Lanczos start vector.
    """
    model, point = landscape_at(res_or_point, tasks, peft, rank)
    return spectrum_at(model, point, k_eigs, project=project, method=method, dense_max_dim=dense_max_dim, seed=seed)


def spectrum_at(model: LandscapeModel, point: Point, k_eigs: int = 6, *, project: bool = True, method: str = "auto",
                dense_max_dim: int = DENSE_MAX_DIM, seed: int = 0) -> HessianSpectrum:
    """:func:`hessian_spectrum` for a checked point of an existing model (no re-validation of the tasks)."""
    k_eigs = check_int("k_eigs", k_eigs, low=1)
    method = check_choice("method", method, ("auto", "dense", "lanczos"))
    dense_max_dim = check_int("dense_max_dim", dense_max_dim, low=1)
    objective, G = model.residual_gradients(point)
    grad_norm = float(np.linalg.norm(model.flatten(model.gradient(point, G))))
    Q = symmetry_basis(model, point) if project else np.zeros((model.dim, 0))
    projected_dim = model.dim - Q.shape[1]
    if projected_dim < 1:
        raise FastLoRAError("the symmetry directions span the whole space; there is nothing to diagonalise")
    k = min(k_eigs, projected_dim)
    if method == "auto":
        method = "dense" if model.dim <= dense_max_dim or k >= projected_dim - 1 else "lanczos"
    elif method == "lanczos" and k >= projected_dim - 1:
        raise FastLoRAError(f"method='lanczos' needs k_eigs < projected dimension - 1 = {projected_dim - 1}; "
                            f"use method='dense' or fewer k_eigs")
    if method == "dense":
        low_w, low_v, high_w, high_v = _dense(model, point, G, Q, k)
    else:
        low_w, low_v, high_w, high_v = _lanczos(model, point, G, Q, k, seed)
    return HessianSpectrum(smallest=low_w, largest=high_w,
                           smallest_directions=[model.unflatten(v) for v in low_v.T],
                           largest_directions=[model.unflatten(v) for v in high_v.T],
                           objective=objective, grad_norm=grad_norm, dim=model.dim, projected_dim=projected_dim,
                           n_symmetry=Q.shape[1], method=method, projected=project)


def complement(Q: np.ndarray) -> np.ndarray:
    """N (dim, dim − m): an orthonormal basis of the orthogonal complement of range(Q)."""
    if Q.shape[1] == 0:
        return np.eye(Q.shape[0])
    from scipy.linalg import null_space
    return null_space(Q.T)


def _dense(model, point, G, Q, k):
    H = model.hessian_matrix(point, G)
    if Q.shape[1] == 0:
        w, V = np.linalg.eigh(H)
    else:
        N = complement(Q)
        w, V = np.linalg.eigh(N.T @ H @ N)
        V = N @ V
    return w[:k], V[:, :k], w[::-1][:k], V[:, ::-1][:, :k]


def _lanczos(model, point, G, Q, k, seed):
    from scipy.sparse.linalg import LinearOperator, eigsh

    def project(x):
        return x - Q @ (Q.T @ x)

    def php(x):
        y = project(x)
        return project(model.flatten(model.hvp(point, model.unflatten(y), G)))

    def operator(shift):
        return LinearOperator((model.dim, model.dim), matvec=lambda x: php(x) + shift * (Q @ (Q.T @ x)),
                              dtype=np.float64)

    v0 = project(np.random.default_rng(seed).standard_normal(model.dim))
    rho = float(np.abs(eigsh(operator(0.0), k=1, which="LM", v0=v0, return_eigenvectors=False))[0])
    shift = 3.0 * rho if rho > 0 else 1.0
    low_w, low_v = eigsh(operator(shift), k=k, which="SA", v0=v0)
    high_w, high_v = eigsh(operator(-shift), k=k, which="LA", v0=v0)
    lo, hi = np.argsort(low_w), np.argsort(high_w)[::-1]
    return low_w[lo], low_v[:, lo], high_w[hi], high_v[:, hi]
