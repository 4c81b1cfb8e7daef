"""The facts of docs/design.md §2, at small size, in population and finite-sample modes."""
import numpy as np
import pytest
from helpers import numerical_rank, procrustes_error

import fastlora as fl


def test_standard_retraining_population_is_the_mean_and_leaves_rank_Tk(cpu_backend):
    prob = fl.make_problem(d=30, k=2, T=3, seed=0, n_test_tasks=2)
    res = fl.retrain(prob, method="standard", backend=cpu_backend)
    expected = prob.A_star + np.mean(prob.U_star @ prob.U_star.transpose(0, 2, 1), axis=0)
    np.testing.assert_allclose(res.A, expected, rtol=1e-12, atol=1e-12)
    for task in prob.tasks:  # training residual W*_t − Â has rank T·k
        assert numerical_rank(task.W_star - res.A) == prob.T * prob.k
    for task in prob.test_tasks:  # a new task's residual has rank (T+1)·k
        assert numerical_rank(task.W_star - res.A) == (prob.T + 1) * prob.k
    assert fl.evaluate(res, prob)["adapt_rank"] == (prob.T + 1) * prob.k


def test_standard_retraining_finite_sample_is_the_least_squares_solution(cpu_backend):
    prob = fl.make_problem(d=12, k=1, T=3, n=40, noise=0.1, seed=1)
    res = fl.retrain(prob, method="standard", backend=cpu_backend)
    grad = sum(res.A @ t.Sigma - t.C for t in prob.tasks)
    assert np.linalg.norm(grad) < 1e-10 * np.linalg.norm(sum(t.C for t in prob.tasks))


@pytest.mark.parametrize("adapter_step", ["subspace", "exact"])
@pytest.mark.parametrize("T", [3, 5])
def test_symmetric_lora_ml_recovers_A_star_for_T_at_least_3(cpu_backend, adapter_step, T):
    prob = fl.make_problem(d=24, k=2, T=T, seed=T)
    res = fl.retrain(prob, method="lora-ml", peft="lora_sym", rank=2, backend=cpu_backend,
                     adapter_step=adapter_step, max_iter=3000)
    assert res.converged
    assert np.linalg.norm(res.A - prob.A_star) / np.linalg.norm(prob.A_star) < 1e-6
    assert res.objective < 1e-10 * fl.retrain(prob, method="standard", backend="numpy").objective
    for t in range(T):  # U_t equals U*_t up to a k×k orthogonal matrix
        err, rotation = procrustes_error(res.params["U"][t], prob.U_star[t])
        assert err < 1e-5
        np.testing.assert_allclose(rotation @ rotation.T, np.eye(2), atol=1e-12)
    assert fl.evaluate(res, prob)["adapt_rank"] == prob.k


def test_lora_ml_with_two_tasks_fits_exactly_but_only_up_to_rank_2k(cpu_backend):
    prob = fl.make_problem(d=24, k=2, T=2, seed=4, n_test_tasks=3)
    res = fl.retrain(prob, method="lora-ml", peft="lora_sym", rank=2, backend=cpu_backend, max_iter=3000)
    scale = fl.retrain(prob, method="standard", backend="numpy").objective
    assert res.objective < 1e-10 * scale
    assert numerical_rank(res.A - prob.A_star) <= 2 * prob.k
    for task in prob.test_tasks:
        assert numerical_rank(task.W_star - res.A) <= 3 * prob.k


def test_general_lora_ml_recovers_A_star_with_rectangular_weights(cpu_backend):
    prob = fl.make_problem(d=20, d_out=14, k=2, T=4, seed=2, symmetric=False)
    res = fl.retrain(prob, method="lora-ml", peft="lora", rank=2, backend=cpu_backend, max_iter=3000)
    assert np.linalg.norm(res.A - prob.A_star) / np.linalg.norm(prob.A_star) < 1e-6
    for t in range(prob.T):
        np.testing.assert_allclose(res.delta(t), prob.B_star[t] @ prob.C_star[t].T, atol=1e-5)


@pytest.mark.parametrize("peft", ["lora", "lora_sym"])
def test_finite_sample_lora_ml_beats_standard_after_rank_k_finetuning(cpu_backend, peft):
    risks = {}
    for method in ("standard", "lora-ml"):
        values = []
        for seed in range(3):
            prob = fl.make_problem(d=10, k=1, T=5, n=2000, noise=0.05, seed=seed)
            res = fl.retrain(prob, method=method, peft=peft, rank=1, backend=cpu_backend, max_iter=500, tol=1e-9)
            values.append(fl.evaluate(res, prob, n_ft=100, seed=seed)["excess_risk"])
        risks[method] = np.mean(values)
    assert risks["lora-ml"] < 0.01 * risks["standard"]
    assert risks["standard"] > 1.0  # standard retraining's excess risk does not vanish at rank k


def test_finite_sample_lora_ml_excess_risk_scales_like_1_over_n_ft_and_not_with_T():
    def risk(T, n_ft):
        values = []
        for seed in range(4):
            prob = fl.make_problem(d=10, k=1, T=T, n=20000, noise=0.01, seed=seed, n_test_tasks=6)
            res = fl.retrain(prob, method="lora-ml", peft="lora", rank=1, backend="numpy", tol=1e-9)
            values.append(fl.evaluate(res, prob, n_ft=n_ft, seed=100 + seed)["excess_risk"])
        return np.mean(values)

    small, large = risk(5, 50), risk(5, 800)
    assert 6 < small / large < 40  # 16x the samples: ~16x less excess risk
    assert risk(10, 50) < 2 * small  # more retraining tasks do not hurt
