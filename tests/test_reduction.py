"""The exact reduction to the span of the task factors (fastlora.reduction), the structured A
(fastlora.linop.LowRankUpdate) and implicit ground truths (fastlora.implicit)."""
import numpy as np
import pytest

import fastlora as fl
from fastlora.linop import LowRankUpdate
from fastlora.reduction import extend_basis, orthonormal_bases, orthonormal_basis

CASES = {
    # name: (problem, peft, rank)
    "symmetric lora_sym": (dict(d=40, k=2, T=4, seed=1), "lora_sym", 2),
    "symmetric lora r>k": (dict(d=40, k=2, T=4, seed=2), "lora", 3),
    "general lora, d_out != d_in": (dict(d=36, d_out=30, k=2, T=4, seed=3, symmetric=False), "lora", 2),
    "general lora_sym (one basis)": (dict(d=30, k=1, T=5, seed=4, symmetric=False), "lora_sym", 2),
    "full": (dict(d=40, k=2, T=3, seed=5), "full", 2),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_reduced_and_full_space_als_agree(case):
    """The same ALS (exact steps, no extrapolation) from the same standard start: the reduced
    iterates are the full ones expressed in the bases, so A, adapters, objective and metrics agree
    — also where the optimum is not unique (r > k, a PSD fit of general targets)."""
    problem, peft, rank = CASES[case]
    prob = fl.make_problem(**problem)
    kw = dict(peft=peft, rank=rank, solver="als", adapter_step="exact", acceleration="none", backend="numpy",
              tol=1e-13, max_iter=5000)
    reduced = fl.retrain(prob, **kw)
    full = fl.retrain(prob, reduction="none", **kw)
    assert "reduction" in reduced.info and "reduction" not in full.info
    assert reduced.info["reduction"]["m_out"] < max(prob.d, prob.d_out)
    scale = np.abs(full.A).max()
    np.testing.assert_allclose(reduced.A, full.A, atol=1e-10 * scale)
    for t in range(prob.T):
        np.testing.assert_allclose(reduced.delta(t), full.delta(t), atol=1e-9 * scale)
    reference = fl.retrain(prob, method="standard").objective
    assert reduced.objective == pytest.approx(full.objective, abs=1e-12 * reference)
    assert abs(reduced.n_iter - full.n_iter) <= 1
    mr, mf = fl.evaluate(reduced, prob), fl.evaluate(full, prob)
    for key in ("rel_err_A", "excess_risk"):
        assert mr[key] == pytest.approx(mf[key], rel=1e-6, abs=1e-12 * reference)
    assert mr["adapt_rank"] == mf["adapt_rank"]


@pytest.mark.parametrize("case", sorted(c for c in CASES if c != "general lora_sym (one basis)"))
@pytest.mark.parametrize("solver", ["auto", "gd"])
def test_reduced_and_full_space_reach_the_same_optimum(case, solver):
    """The default solvers (whatever they choose in each space) reach the same objective, and the
    same A where the optimum is unique (r = k, T ≥ 3).  (PSD fits of general targets are left
    out: that problem has local minima, and different algorithms may end in different ones —
    the exact-ALS test above shows the reduction itself is exact there too.)"""
    problem, peft, rank = CASES[case]
    prob = fl.make_problem(**problem)
    kw = dict(peft=peft, rank=rank, solver=solver, backend="numpy", tol=1e-13, max_iter=5000)
    reduced, full = fl.retrain(prob, **kw), fl.retrain(prob, reduction="none", **kw)
    reference = fl.retrain(prob, method="standard").objective
    assert reduced.objective == pytest.approx(full.objective, abs=1e-9 * reference)
    unique = rank == problem["k"] and peft != "full"
    if unique:
        np.testing.assert_allclose(reduced.A, full.A, atol=1e-7 * np.abs(full.A).max())


def test_the_full_space_is_chosen_when_the_span_is_not_smaller():
    prob = fl.make_problem(d=8, k=2, T=4, seed=0)  # T·k = 8 = d: nothing to gain
    res = fl.retrain(prob, backend="numpy")
    assert "reduction" not in res.info
    prob = fl.make_problem(d=40, k=2, T=4, seed=0)
    assert "reduction" not in fl.retrain(prob, backend="numpy", init_A="zeros").info  # A − S not in the span
    assert "reduction" not in fl.retrain(prob, backend="numpy", peft="vera", rank=2, max_iter=3).info  # no family
    assert fl.retrain(prob, backend="numpy").info["reduction"]["m_out"] == 8


def test_many_factors_in_a_small_span_are_still_reduced():
    """T·k ≥ d factor columns that span only 6 dimensions: the reduction is found (rank, not count)."""
    from fastlora.reduction import spans_everything
    rng = np.random.default_rng(3)
    d, k, T = 24, 2, 16
    basis = np.linalg.qr(rng.standard_normal((d, 6)))[0]
    U = np.einsum("dm,tmk->tdk", basis, rng.standard_normal((T, 6, k)))
    S = rng.standard_normal((d, d))
    tasks = [fl.Task.population(base=S + S.T, B=U[t], C=U[t]) for t in range(T)]
    reduced = fl.retrain(tasks, rank=k, backend="numpy")
    full = fl.retrain(tasks, rank=k, backend="numpy", reduction="none")
    assert reduced.info["reduction"]["m_out"] == 6
    np.testing.assert_allclose(reduced.A, full.A, atol=1e-8 * np.abs(full.A).max())
    assert not spans_everything(U.transpose(1, 0, 2).reshape(d, -1))
    assert spans_everything(rng.standard_normal((d, T * k)))
    assert not spans_everything(rng.standard_normal((d, d - 1)))


def test_the_theory_holds_on_the_reduced_solver():
    """docs/design.md §2, facts 2 and 3, through the default (reduced) path."""
    prob = fl.make_problem(d=60, k=2, T=3, seed=3, n_test_tasks=3)
    res = fl.retrain(prob, backend="numpy")
    assert res.info["reduction"]["m_out"] == 6 and res.converged
    assert np.linalg.norm(res.A - prob.A_star) / np.linalg.norm(prob.A_star) < 1e-6
    assert fl.evaluate(res, prob)["adapt_rank"] == prob.k
    two = fl.make_problem(d=60, k=2, T=2, seed=4, n_test_tasks=3)
    res = fl.retrain(two, backend="numpy", max_iter=3000)
    assert res.objective < 1e-10 * fl.retrain(two, method="standard").objective
    assert np.linalg.matrix_rank(res.A - two.A_star, tol=1e-6 * np.abs(two.A_star).max()) <= 2 * two.k


@pytest.mark.parametrize("peft", ["lora", "lora_sym"])
def test_a_structured_A_fine_tunes_and_evaluates_like_the_dense_one(peft):
    prob = fl.make_problem(d=50, k=2, T=6, seed=7, n_test_tasks=3)
    structured = fl.retrain(prob, backend="numpy", dense_A=False)
    dense = fl.retrain(prob, backend="numpy")
    assert isinstance(structured.A, LowRankUpdate) and isinstance(dense.A, np.ndarray)
    np.testing.assert_allclose(structured.A.dense(), dense.A, atol=1e-12 * np.abs(dense.A).max())
    for rank in (1, 2, 3):
        a = fl.finetune(structured.A, prob.test_tasks[0], peft=peft, rank=rank)
        b = fl.finetune(dense.A, prob.test_tasks[0], peft=peft, rank=rank)
        assert isinstance(a.delta, LowRankUpdate)
        assert a.excess_risk == pytest.approx(b.excess_risk, rel=1e-8, abs=1e-14)
        np.testing.assert_allclose(a.delta.dense(), b.delta, atol=1e-8 * max(np.abs(b.delta).max(), 1.0))
    ms, md = fl.evaluate(structured, prob, ft_peft=peft), fl.evaluate(dense, prob, ft_peft=peft)
    assert ms["adapt_rank"] == md["adapt_rank"]
    assert ms["rel_err_A"] == pytest.approx(md["rel_err_A"], rel=1e-6)
    assert ms["excess_risk"] == pytest.approx(md["excess_risk"], rel=1e-6, abs=1e-14)


def test_low_rank_update_products_and_norm():
    rng = np.random.default_rng(0)
    base, left, right = rng.standard_normal((7, 5)), rng.standard_normal((7, 2)), rng.standard_normal((5, 2))
    A = LowRankUpdate(base, left, right)
    dense = base + left @ right.T
    X = rng.standard_normal((5, 3))
    np.testing.assert_allclose(A.dense(), dense)
    np.testing.assert_allclose(A @ X, dense @ X)
    np.testing.assert_allclose(X.T @ A.T, X.T @ dense.T)
    assert A.correction_norm() == pytest.approx(np.linalg.norm(left @ right.T))
    with pytest.raises(ValueError, match="do not fit"):
        LowRankUpdate(base, left, right[:4])


def test_bases_span_the_columns_even_when_rank_deficient():
    rng = np.random.default_rng(1)
    F = rng.standard_normal((30, 4))
    for G in (F, np.concatenate([F, F[:, :2]], axis=1), np.concatenate([F, 1e-9 * rng.standard_normal((30, 1))], 1)):
        Q = orthonormal_basis(G)
        np.testing.assert_allclose(Q.T @ Q, np.eye(Q.shape[1]), atol=1e-12)
        np.testing.assert_allclose(Q @ (Q.T @ G), G, atol=1e-10 * np.abs(G).max())
    Q = orthonormal_basis(F)
    extended = extend_basis(Q, rng.standard_normal((30, 2)))
    assert extended.shape[1] == 6
    np.testing.assert_allclose(extended.T @ extended, np.eye(6), atol=1e-12)
    assert extend_basis(Q, F[:, :1] * 3.0) is Q  # nothing new to add


def test_stacked_bases_are_the_bases_of_each_matrix_alone():
    # orthonormal_bases (retrain_many's reductions) runs CholeskyQR2 as stacks: it must give each matrix's
    # orthonormal_basis bit for bit, well-conditioned, rank-deficient and empty matrices mixed
    rng = np.random.default_rng(3)
    F = rng.standard_normal((30, 4))
    mixed = [rng.standard_normal((30, 4)), np.concatenate([F[:, :2], F[:, :2]], axis=1), F,
             np.concatenate([F[:, :3], 1e-9 * rng.standard_normal((30, 1))], 1), rng.standard_normal((12, 3)),
             F[:, :0], rng.standard_normal((30, 4)) * 1e-3, rng.standard_normal((12, 3))]
    stacked = orthonormal_bases(mixed)
    for G, Q in zip(mixed, stacked):
        alone = orthonormal_basis(G)
        assert Q.shape == alone.shape and np.array_equal(Q, alone)
        assert Q.flags.c_contiguous
    assert [Q.shape[1] for Q in stacked] == [4, 2, 4, 4, 3, 0, 4, 3]  # spectral bases find the ranks


def test_a_batch_reduces_each_problem_as_alone_even_when_the_first_does_not_reduce():
    # task ranks 2,2,2 at d = 6 span everything (no reduction); 1,1,1 and 1,1,2 span less: retrain_many used to
    # reduce none of them because problems[0] did not, so their results depended on the batch
    probs = [fl.make_problem(d=6, k=2, T=3, seed=0, task_ranks=r) for r in ([2, 2, 2], [1, 1, 1], [2, 2, 2], [1, 1, 2])]
    for batch in (probs, probs[1:]):
        for p, res in zip(batch, fl.retrain_many(batch, seeds=[0] * len(batch), rank=2)):
            alone = fl.retrain(p, rank=2, seed=0)
            assert res.n_iter == alone.n_iter and np.array_equal(res.A, alone.A)


def test_an_implicit_A_star_gives_what_its_dense_twin_gives():
    prob = fl.make_problem(d=80, k=2, T=5, seed=2, implicit=True, n_test_tasks=2)
    S = prob.A_star.dense()
    np.testing.assert_array_equal(S, S.T)
    np.testing.assert_allclose(prob.A_star @ np.eye(80)[:, :7], S[:, :7])
    assert prob.A_star.frobenius_sq() == pytest.approx(np.sum(S * S), rel=1e-12)
    res = fl.retrain(prob, backend="numpy", dense_A=False)
    assert isinstance(res.A, LowRankUpdate) and res.A.base is prob.A_star
    twin = [fl.Task.population(base=S, B=t.target.B) for t in prob.tasks]
    dense = fl.retrain(twin, rank=2, backend="numpy")
    np.testing.assert_allclose(res.A.dense(), dense.A, atol=1e-10 * np.abs(S).max())
    m = fl.evaluate(res, prob)
    twin_tests = [fl.Task.population(base=S, B=t.target.B) for t in prob.test_tasks]
    md = fl.evaluate(dense, None, test_tasks=twin_tests, ft_rank=2)
    assert m["rel_err_A"] == pytest.approx(np.linalg.norm(dense.A - S) / np.linalg.norm(S), rel=1e-6)
    assert m["excess_risk"] == pytest.approx(md["excess_risk"], rel=1e-6, abs=1e-14)


def test_implicit_problems_refuse_what_needs_a_dense_A_star(monkeypatch):
    with pytest.raises(ValueError, match=r"implicit=True .* needs n=None"):
        fl.make_problem(d=50, k=1, T=3, n=100, implicit=True)
    from fastlora import config
    prob = fl.make_problem(d=50, k=1, T=3, seed=0, implicit=True)
    monkeypatch.setattr(config, "available_memory_bytes", lambda: 1000)
    monkeypatch.setattr(config, "ALWAYS_ALLOWED_BYTES", 0)
    with pytest.raises(ValueError, match="dense_A=False"):
        fl.retrain(prob, backend="numpy")
