"""Protocol v2 (shared trainable parameters) end to end with the shipped tied LoRA, and the
conformance kit on shared and per-task gradients (docs/design.md §4, docs/plugins.md).

Tied tasks W*_t = A* + B*·diag(s*_t)·C*ᵀ: LoRA-ML with tied_lora reaches objective 0, learns
the shared basis (B*, C*) up to column order, scale and sign, and a new task is then fitted
by training only its r scales.  A itself is not unique: A + B·diag(c)·Cᵀ with s_t − c gives
every task the same model for any c ∈ R^r, so gd and als may stop at different A of that
family — they agree on the objective, the basis, the fitted models W_t and the fine-tuned risk.
"""
import numpy as np
import pytest
from fastlora_tied_lora import TiedLoRA, make_tied_problem

import fastlora as fl
from fastlora.testing import ConformanceError, check_installed, check_parameterization

D, R, T = 10, 2, 5


@pytest.fixture(scope="module")
def tied():
    prob = make_tied_problem(d=D, r=R, T=T, noise=0.5, seed=0)  # population tasks; noise for fine-tuning draws
    results = {solver: fl.retrain(prob, peft="tied_lora", rank=R, solver=solver, backend="numpy", max_iter=3000,
                                  tol=1e-12) for solver in ("gd", "als")}
    return prob, results


def _canonical_truth(prob):
    return TiedLoRA().canonicalize({"B": prob.B_basis, "C": prob.C_basis, "s": prob.s_star})


def _offset_outside_the_shared_family(A, prob) -> float:
    """‖A − A* − B*·diag(c)·C*ᵀ‖_F for the best c, relative to ‖A*‖_F."""
    basis = np.stack([np.outer(prob.B_basis[:, k], prob.C_basis[:, k]).ravel() for k in range(prob.k)], axis=1)
    offset = (A - prob.A_star).ravel()
    c, *_ = np.linalg.lstsq(basis, offset, rcond=None)
    return float(np.linalg.norm(offset - basis @ c) / np.linalg.norm(prob.A_star))


@pytest.mark.parametrize("solver", ["gd", "als"])
def test_tied_lora_ml_fits_tied_tasks_and_learns_the_shared_basis(tied, solver):
    prob, results = tied
    res = results[solver]
    null = sum(0.5 * float(np.sum(t.W_star ** 2)) for t in prob.tasks)
    assert res.converged and res.objective < 1e-14 * null
    assert sorted(res.shared) == ["B", "C"] and res.shared["B"].shape == (D, R) and res.shared["C"].shape == (D, R)
    assert list(res.params) == ["s"] and res.params["s"].shape == (T, R)
    truth = _canonical_truth(prob)
    np.testing.assert_allclose(res.shared["B"], truth["B"], atol=1e-6)
    np.testing.assert_allclose(res.shared["C"], truth["C"], atol=1e-6)
    assert _offset_outside_the_shared_family(res.A, prob) < 1e-8
    for t in range(T):
        np.testing.assert_allclose(res.A + res.delta(t), prob.tasks[t].W_star, atol=1e-8)


@pytest.mark.parametrize("solver", ["gd", "als"])
def test_a_new_tied_task_is_fitted_by_its_scales_alone(tied, solver):
    prob, results = tied
    res = results[solver]
    new = prob.new_task(7)
    ft = fl.finetune(res, new, peft="tied_lora", rank=R)
    assert sorted(ft.params) == ["s"] and ft.params["s"].shape == (1, R)
    scale = 0.5 * float(np.sum(new.W_star ** 2))
    assert ft.excess_risk < 1e-12 * scale
    metrics = fl.evaluate(res, prob, ft_peft="tied_lora", ft_rank=R)
    assert metrics["excess_risk"] < 1e-12 * scale and metrics["adapt_rank"] == R


def test_gd_and_als_agree(tied):
    prob, results = tied
    gd, als = results["gd"], results["als"]
    for name in ("B", "C"):
        np.testing.assert_allclose(gd.shared[name], als.shared[name], atol=1e-6)
    for t in range(T):
        np.testing.assert_allclose(gd.A + gd.delta(t), als.A + als.delta(t), atol=1e-8)
    risks = [fl.evaluate(res, prob, ft_peft="tied_lora", ft_rank=R)["excess_risk"] for res in (gd, als)]
    assert max(risks) < 1e-12 * float(np.sum(prob.test_tasks[0].W_star ** 2))


def test_scales_alone_beat_plain_lora_on_few_noisy_samples(tied):
    """The point of shared parameters: a new task costs r numbers, not r·(d_out + d_in), so from
    n_ft noisy samples tied LoRA's excess risk is far below plain LoRA's at the same rank
    (both are exact in population mode)."""
    prob, results = tied
    lora = fl.retrain(prob, peft="lora", rank=R, backend="numpy", tol=1e-12)
    assert fl.evaluate(lora, prob, ft_rank=R)["excess_risk"] < 1e-12 * float(np.sum(prob.test_tasks[0].W_star ** 2))
    tied_risk = fl.evaluate(results["als"], prob, ft_peft="tied_lora", ft_rank=R, n_ft=50)["excess_risk"]
    lora_risk = fl.evaluate(lora, prob, ft_peft="lora", ft_rank=R, n_ft=50)["excess_risk"]
    assert 0 < tied_risk < 0.3 * lora_risk


def test_finetuning_a_shared_parameterization_needs_the_retrain_result(tied):
    prob, results = tied
    with pytest.raises(fl.FastLoRAError, match="pass the retrain result"):
        fl.finetune(results["gd"].A, prob.test_tasks[0], peft="tied_lora", rank=R)
    lora = fl.retrain(prob, peft="lora", rank=R, backend="numpy")
    with pytest.raises(fl.FastLoRAError, match="this result was retrained with peft='lora'; retrain with "
                                               "peft='tied_lora' first"):
        fl.evaluate(lora, prob, ft_peft="tied_lora", ft_rank=R)
    with pytest.raises(fl.FastLoRAError, match="rank=1 differs from the retrained shared parameters' rank 2"):
        fl.finetune(results["gd"], prob.test_tasks[0], peft="tied_lora", rank=1)


# -- the conformance kit -----------------------------------------------------------------------

class _MeanNotSum(TiedLoRA):
    """A plausible bug: the shared gradient averaged over tasks instead of summed."""

    def pullback(self, params, G):
        grads = super().pullback(params, G)
        grads["C"] = grads["C"] / params["s"].shape[0]
        return grads


class _WrongScaleGradient(TiedLoRA):
    def pullback(self, params, G):
        grads = super().pullback(params, G)
        grads["s"] = 1.01 * grads["s"]
        return grads


def test_the_kit_names_a_wrong_shared_gradient():
    with pytest.raises(ConformanceError, match=r"\[pullback\] pullback\(\)\['C'\] disagrees with finite "
                                               r"differences \(shared parameter, gradient summed over tasks\)") as err:
        check_parameterization(_MeanNotSum)
    assert err.value.passed == ["protocol", "shapes", "delta at init", "dtype preservation"]


def test_the_kit_names_a_wrong_per_task_gradient():
    with pytest.raises(ConformanceError, match=r"pullback\(\)\['s'\] disagrees with finite differences "
                                               r"\(per-task parameter\)"):
        check_parameterization(_WrongScaleGradient)


def test_the_kit_checks_shared_shapes_and_batches():
    class TaskAxisOnShared(TiedLoRA):
        def init(self, rng, d_out, d_in, rank, T):
            params = super().init(rng, d_out, d_in, rank, T)
            params["B"] = np.repeat(params["B"][None], T, axis=0)
            return params

    with pytest.raises(ConformanceError, match=r"init\(\)\['B'\] has shape \(3, 7, 2\), expected \(7, 2\) "
                                               r"for a shared parameter"):
        check_parameterization(TaskAxisOnShared)

    class SharedGradientOfTheFirstTaskOnly(TiedLoRA):
        def pullback(self, params, G):
            grads = super().pullback(params, G)
            grads["B"] = super().pullback({**params, "s": params["s"][:1]}, G[:1])["B"]
            return grads

    with pytest.raises(ConformanceError, match=r"pullback\(\)\['B'\] disagrees"):
        check_parameterization(SharedGradientOfTheFirstTaskOnly)


def test_the_kit_checks_a_numba_fast_path_against_the_plain_members():
    from fastlora_tied_lora import NumbaFastPath

    class OffByOne(NumbaFastPath):
        @property
        def pullback(self):
            fast = super().pullback

            def wrong(params, G):
                grads = fast(params, G)
                grads["B"] = grads["B"] * (1 + 1e-6)
                return grads
            return wrong

    class WrongFastPath(TiedLoRA):
        def __init__(self):
            super().__init__()
            self.fast_paths = {"numba": OffByOne(self)}

    with pytest.raises(ConformanceError, match=r"\[fast path numba\] fast_paths\['numba'\]\.pullback\(\)\['B'\]"):
        check_parameterization(WrongFastPath)


def test_the_kit_arguments_are_validated():
    with pytest.raises(fl.FastLoRAError, match="rank"):
        check_parameterization(TiedLoRA, rank=9)
    with pytest.raises(fl.FastLoRAError, match="fd_rtol"):
        check_parameterization(TiedLoRA, fd_rtol=0)


@pytest.mark.parametrize("name", ["lora", "lora_sym", "full", "dora", "vera"])
def test_version_1_parameterizations_pass_the_kit_unchanged(name):
    peft = fl.peft.get(name)
    assert peft.api_version == 1
    passed = check_parameterization(peft)
    assert "pullback vs finite differences" in passed and "batch vs loop" in passed


def test_check_installed_reports_every_parameterization_and_names_a_failure():
    class MeanNotSum(_MeanNotSum):
        name = "mean_not_sum"

    try:
        fl.peft.register(MeanNotSum)
        rows = {row["name"]: row for row in check_installed()}
    finally:
        fl.peft.unregister("mean_not_sum")
    assert {"lora", "lora_sym", "full", "dora", "vera", "tied_lora"} <= set(rows)
    for name in ("lora", "lora_sym", "full", "dora", "vera", "tied_lora"):
        assert rows[name]["ok"] and rows[name]["failure"] is None, rows[name]
    assert rows["tied_lora"]["distribution"] == "fastlora-tied-lora"
    assert "fast path numba" in rows["tied_lora"]["passed"] and "best fit" in rows["lora"]["passed"]
    bad = rows["mean_not_sum"]
    assert not bad["ok"] and "pullback()['C'] disagrees" in bad["failure"] and "shapes" in bad["passed"]


def test_finetune_many_draws_in_turn_from_one_shared_stream(tied):
    """Fine-tuning keeps tied_lora's shared parameters and draws each task's own start: where one random
    stream serves several tasks (one Generator, or two over one bit generator), each task samples and
    draws its start in turn — the same numbers either way (sampling every task first changed them)."""
    prob, results = tied
    tasks = [prob.new_task(3), prob.new_task(4)]
    one = fl.finetune_many([results["als"]] * 2, tasks, peft="tied_lora", rank=R, n=40,
                           seeds=np.random.default_rng(7))
    shared = np.random.default_rng(7)
    two = fl.finetune_many([results["als"]] * 2, tasks, peft="tied_lora", rank=R, n=40,
                           seeds=[shared, np.random.Generator(shared.bit_generator)])
    assert [f.excess_risk for f in one] == [f.excess_risk for f in two]
