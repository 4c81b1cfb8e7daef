"""An outside author's plugin distribution for tests/test_plugin_authors.py, installed on sys.path with
a .dist-info: an optioned shared-basis LoRA (``sblora``, entry-point group fastlora.peft) and the law
of its tasks (``shared_basis``, group fastlora.problems)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fastlora import Problem, Task, array_module
from fastlora.errors import check_int

ROLE_SHARED, ROLE_TRAIN, ROLE_TEST, ROLE_NEW = 0, 1, 2, 3


class SBLoRA:
    """Δ_t = B S_t Cᵀ + U_t V_tᵀ: a basis B (d_out, r), C (d_in, r) shared by every task, a core S_t
    (r, r) per task, and a private part U_t (d_out, p), V_t (d_in, p) of rank p = ``private_rank``."""

    name = "sblora"
    api_version = 2
    shared = ("B", "C")
    rank_options = ("private_rank",)

    def __init__(self, private_rank: int = 0):
        if isinstance(private_rank, bool) or not isinstance(private_rank, int) or private_rank < 0:
            raise ValueError(f"private_rank must be an integer >= 0, got {private_rank!r}")
        self.private_rank = private_rank

    def shapes(self, d_out, d_in, rank):
        out = {"B": (d_out, rank), "C": (d_in, rank), "S": (rank, rank)}
        if self.private_rank:
            out.update(U=(d_out, self.private_rank), V=(d_in, self.private_rank))
        return out

    def init(self, rng, d_out, d_in, rank, T):
        p = self.private_rank
        out = {"B": rng.standard_normal((d_out, rank)) / np.sqrt(d_out),
               "C": rng.standard_normal((d_in, rank)) / np.sqrt(d_in), "S": np.zeros((T, rank, rank))}
        if p:
            out.update(U=np.zeros((T, d_out, p)), V=rng.standard_normal((T, d_in, p)) / np.sqrt(d_in))
        return out

    def delta(self, params):
        out = params["B"] @ params["S"] @ params["C"].T
        if "U" in params:
            out = out + params["U"] @ params["V"].swapaxes(1, 2)
        return out

    def pullback(self, params, G):
        xp = array_module(G)
        B, C, S = params["B"], params["C"], params["S"]
        GC, GtB = G @ C, G.swapaxes(1, 2) @ B
        out = {"S": B.T @ GC, "B": xp.sum(GC @ S.swapaxes(1, 2), axis=0), "C": xp.sum(GtB @ S, axis=0)}
        if "U" in params:
            out.update(U=G @ params["V"], V=G.swapaxes(1, 2) @ params["U"])
        return out


@dataclass(frozen=True, eq=False)
class SharedBasisProblem(Problem):
    """Tasks W*_t = A* + B* S*_t C*ᵀ + u_t v_tᵀ (shared rank k − p, private rank p)."""

    basis_B: np.ndarray | None = None
    basis_C: np.ndarray | None = None
    private_rank: int = 0

    def new_task(self, seed: int) -> Task:
        if seed not in self._extra:
            self._extra[seed] = _task(self, ROLE_NEW, seed)[0]
        return self._extra[seed]


def shared_basis(d, k, T, n, noise, seed, d_out, n_test_tasks, private_rank=0):
    """The law of SBLoRA's tasks: each W*_t − A* of rank k, k − private_rank of it in a shared basis."""
    private_rank = check_int("private_rank", private_rank, low=0, high=k - 1)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(ROLE_SHARED,)))
    r = k - private_rank
    A_star, basis_B, basis_C = (rng.standard_normal((d_out, d)), rng.standard_normal((d_out, r)),
                                rng.standard_normal((d, r)))
    proto = SharedBasisProblem(A_star, np.zeros((T, d_out, k)), np.zeros((T, d, k)), [], [], d, d_out, k, T, n,
                               noise, False, seed, basis_B=basis_B, basis_C=basis_C, private_rank=private_rank)
    for t in range(T):
        task, left, right = _task(proto, ROLE_TRAIN, t)
        proto.tasks.append(task)
        proto.B_star[t], proto.C_star[t] = left, right
    proto.test_tasks.extend(_task(proto, ROLE_TEST, t)[0] for t in range(n_test_tasks))
    return proto


def _task(prob, role, index):
    rng = np.random.default_rng(np.random.SeedSequence(prob.seed, spawn_key=(role, index)))
    r, p = prob.k - prob.private_rank, prob.private_rank
    S = rng.standard_normal((r, r))
    u, v = rng.standard_normal((prob.d_out, p)), rng.standard_normal((prob.d, p))
    left, right = np.concatenate([prob.basis_B @ S, u], axis=1), np.concatenate([prob.basis_C, v], axis=1)
    task = Task.population(prob.A_star + left @ right.T)
    if prob.n is not None:
        task = task.sample(prob.n, seed=rng, noise=prob.noise)
    task.noise = prob.noise
    return task, left, right
