"""Landscape tools: exact Hessian-vector products, symmetry projection, classification, census."""
import json

import click
import numpy as np
import pytest
from click.testing import CliRunner

import fastlora as fl
from fastlora.cli import FastLoRAGroup
from fastlora.errors import DivergenceError, FastLoRAError
from fastlora.landscape import (
    CENSUS_KINDS,
    LandscapeModel,
    Point,
    census,
    classify,
    draw_starts,
    embedded_spurious_minimum,
    hessian_spectrum,
    landscape_metrics,
    spurious_minimum_example,
)
from fastlora.landscape.census import one_blas_thread
from fastlora.landscape.cli import landscape_command
from fastlora.peft.builtins import LoRA


@pytest.fixture(autouse=True)
def _one_blas_thread():
    """These problems are tiny: extra BLAS threads only contend (and slow L-BFGS-B badly)."""
    with one_blas_thread():
        yield


def _F(tasks, peft, point):
    """F computed straight from the tasks' own losses (independent of the landscape model)."""
    deltas = fl.peft.get(peft).delta(point.params)
    return sum(task.loss(point.A + deltas[t]) for t, task in enumerate(tasks))


@pytest.mark.parametrize("n", [None, 300])
@pytest.mark.parametrize("peft,symmetric", [("lora_sym", True), ("lora", False),
                                            pytest.param(LoRA(alpha=4.0), False, id="lora-alpha4")])
def test_hvp_matches_central_differences_of_the_gradient(n, peft, symmetric):
    prob = fl.make_problem(d=5, k=2, T=3, n=n, noise=0.1, seed=3, symmetric=symmetric, n_test_tasks=0)
    model = LandscapeModel(prob, peft, 2)
    rng = np.random.default_rng(0)
    x, d = rng.standard_normal(model.dim), rng.standard_normal(model.dim)
    point = model.point_from_vector(x)

    def grad(v):
        return model.flatten(model.gradient(model.point_from_vector(v)))

    h = 1e-5
    fd = (grad(x + h * d) - grad(x - h * d)) / (2 * h)
    hv = model.flatten(model.hvp(point, model.unflatten(d)))
    assert np.linalg.norm(hv - fd) <= 1e-7 * np.linalg.norm(hv)
    # the gradient itself against central differences of F (from the tasks' losses)
    fd_value = (_F(prob.tasks, peft, model.point_from_vector(x + h * d))
                - _F(prob.tasks, peft, model.point_from_vector(x - h * d))) / (2 * h)
    assert grad(x) @ d == pytest.approx(fd_value, rel=1e-7)
    # the dense Hessian is the batched HVP with the identity
    H = model.hessian_matrix(point)
    assert np.allclose(H @ d, hv, rtol=1e-10, atol=1e-10 * np.abs(hv).max())


def test_zero_adapters_at_the_standard_solution_are_a_saddle_with_a_checked_descent_direction():
    prob = fl.make_problem(d=6, k=1, T=3, seed=1, n_test_tasks=0)
    W_star = np.stack([t.W_star for t in prob.tasks])
    A = W_star.mean(axis=0)
    point = {"A": A, "U": np.zeros((3, 6, 1))}
    model = LandscapeModel(prob, "lora_sym", 1)
    grad = model.flatten(model.gradient(Point(A, {"U": point["U"]})))
    assert np.linalg.norm(grad) < 1e-12 * np.linalg.norm(W_star)

    c = classify(point, prob, peft="lora_sym")
    assert c.kind == "saddle"
    # at U = 0 the Hessian is block diagonal: T·I on A, 2(A − W*_t) on U_t
    expected = -2 * max(np.linalg.eigvalsh(W - A)[-1] for W in W_star)
    assert c.min_eig == pytest.approx(expected, rel=1e-9)
    assert c.direction_eig == c.min_eig
    assert set(c.direction) == {"A", "U"} and c.direction["U"].shape == (3, 6, 1)
    step = c.descent["step"]
    moved = Point(A + step * c.direction["A"], {"U": step * c.direction["U"]})
    F0 = _F(prob.tasks, "lora_sym", Point(A, {"U": point["U"]}))
    assert _F(prob.tasks, "lora_sym", moved) < F0 - 0.25 * step ** 2 * abs(c.min_eig)


@pytest.mark.parametrize("peft,k,symmetric", [("lora_sym", 2, True), ("lora", 1, False)])
def test_projection_removes_exactly_the_symmetry_null_space_at_a_global_minimum(peft, k, symmetric):
    prob = fl.make_problem(d=5, k=k, T=3, seed=1, symmetric=symmetric, n_test_tasks=0)
    res = fl.retrain(prob, method="lora-ml", peft=peft, rank=k, solver="gd", optimizer="lbfgs", tol=1e-13,
                     max_iter=5000, backend="numpy")
    full = hessian_spectrum(res, prob, k_eigs=1000, project=False)
    projected = hessian_spectrum(res, prob, k_eigs=1000)
    per_task = k * (k - 1) // 2 if peft == "lora_sym" else k * k
    assert projected.n_symmetry == 3 * per_task == 3
    assert projected.projected_dim == full.dim - 3
    scale = full.max_eig
    assert np.sum(np.abs(full.smallest) < 1e-7 * scale) == 3       # the orbit's tangents
    assert np.sum(np.abs(projected.smallest) < 1e-7 * scale) == 0
    assert projected.min_eig > 1e-5 * scale
    # the projected spectrum is the full one without those zeros
    assert np.allclose(np.sort(projected.smallest), np.sort(full.smallest)[3:], atol=1e-8 * scale)
    assert classify(res, prob).kind == "global"


def test_lanczos_agrees_with_the_dense_eigensolver():
    prob = fl.make_problem(d=6, k=2, T=3, seed=4, n_test_tasks=0)
    rng = np.random.default_rng(5)
    point = {"A": rng.standard_normal((6, 6)), "U": rng.standard_normal((3, 6, 2))}
    dense = hessian_spectrum(point, prob, "lora_sym", k_eigs=3, method="dense")
    lanczos = hessian_spectrum(point, prob, "lora_sym", k_eigs=3, method="lanczos")
    assert lanczos.method == "lanczos" and dense.method == "dense"
    assert np.allclose(lanczos.smallest, dense.smallest, rtol=1e-8, atol=1e-8)
    assert np.allclose(lanczos.largest, dense.largest, rtol=1e-8)
    v = dense.smallest_directions[0]
    assert np.linalg.norm(np.concatenate([v["A"].ravel(), v["U"].ravel()])) == pytest.approx(1.0)


def test_finite_sample_global_minimum_and_a_random_point():
    prob = fl.make_problem(d=6, k=1, T=3, n=2000, noise=0.01, seed=0, n_test_tasks=0)
    res = fl.retrain(prob, method="lora-ml", rank=1, solver="gd", optimizer="lbfgs", tol=1e-12, backend="numpy")
    c = classify(res, prob)
    assert c.kind == "global" and c.min_eig > 0 and c.objective > 0
    rng = np.random.default_rng(0)
    random_point = {"A": rng.standard_normal((6, 6)), "U": rng.standard_normal((3, 6, 1))}
    assert classify(random_point, prob, global_value=c.global_value).kind == "not stationary"


def test_spurious_minimum_for_three_tasks_is_certified_and_locally_minimal():
    found = spurious_minimum_example()
    prob = found.problem
    assert found.classification.kind == "spurious"
    assert found.objective > 1e-3 and found.global_value == 0.0
    # λ_min / λ_max ≈ 5e-6: small, but the gradient is at rounding level, so λ_min is accurate to ~1e-12
    assert found.grad_norm < 1e-11 and found.min_eig > 1e-4
    F0 = _F(prob.tasks, "lora_sym", found.point)
    assert F0 == pytest.approx(found.objective, rel=1e-10)
    model = LandscapeModel(prob, "lora_sym", 1)
    x = model.point_vector(found.point)
    rng = np.random.default_rng(0)
    for v in rng.standard_normal((200, model.dim)):
        nearby = model.point_from_vector(x + 1e-3 * v / np.linalg.norm(v))
        assert _F(prob.tasks, "lora_sym", nearby) > F0
    # a fresh solve from a perturbed copy returns to the same value, not to 0
    start = model.point_from_vector(x + 1e-2 * rng.standard_normal(model.dim))
    res = fl.retrain(prob, method="lora-ml", rank=1, solver="gd", optimizer="lbfgs", init_A=start.A,
                     init_params=start.params, tol=1e-12, backend="numpy")
    assert res.objective == pytest.approx(found.objective, rel=1e-8)


def test_the_spurious_minimum_embeds_into_higher_dimension():
    found = embedded_spurious_minimum(6)
    small = spurious_minimum_example()
    assert found.classification.kind == "spurious" and found.point.A.shape == (6, 6)
    assert found.objective == pytest.approx(small.objective, rel=1e-12)
    assert _F(found.problem, "lora_sym", found.point) == pytest.approx(found.objective, rel=1e-10)
    assert found.min_eig > 1e-4 and found.grad_norm < 1e-11


def test_two_task_census_finds_no_certified_spurious_minimum():
    prob = fl.make_problem(d=3, k=1, T=2, seed=0, n_test_tasks=0)
    result = census(prob, n_starts=200, init="normal", init_scale=1.0, seed=0)
    assert sum(result.counts.values()) == 200 == len(result.records)
    assert result.counts["spurious"] == 0
    assert result.counts["global"] >= 190
    assert result.global_source.startswith("realisable")


def test_census_counts_failures_and_is_deterministic(monkeypatch):
    prob = fl.make_problem(d=4, k=1, T=3, seed=0, n_test_tasks=0)
    first = census(prob, n_starts=6, seed=7)
    again = census(prob, n_starts=6, seed=7)
    assert [r["objective"] for r in first.records] == [r["objective"] for r in again.records]
    other = census(prob, n_starts=6, seed=8)
    assert [r["n_iter"] for r in first.records] != [r["n_iter"] for r in other.records] or \
        [r["objective"] for r in first.records] != [r["objective"] for r in other.records]
    assert set(first.counts) == set(CENSUS_KINDS) and sum(first.counts.values()) == 6
    frame = first.to_frame()
    assert len(frame) == 6 and {"kind", "objective", "grad_norm", "min_eig", "n_iter"} <= set(frame.columns)

    real = fl.retrain_many

    def flaky(*args, **kwargs):  # every second start diverges
        results = real(*args, **kwargs)
        return [DivergenceError("diverged on purpose") if i % 2 else r for i, r in enumerate(results)]

    monkeypatch.setattr(fl, "retrain_many", flaky)
    result = census(prob, n_starts=6, seed=7)
    assert result.counts["failed"] == 3 and sum(result.counts.values()) == 6
    failed = [r for r in result.records if r["kind"] == "failed"]
    assert all("diverged on purpose" in r["error"] for r in failed)
    assert "failed" in result.table()


def test_initialisation_laws():
    prob = fl.make_problem(d=4, k=1, T=3, seed=0, n_test_tasks=0)
    model = LandscapeModel(prob, "lora_sym", 1)
    normal = draw_starts(model, 400, "normal", 0.1, 0)
    values = np.concatenate([np.concatenate([p.A.ravel(), p.params["U"].ravel()]) for p in normal])
    assert np.std(values) == pytest.approx(0.1, rel=0.05)
    uniform = draw_starts(model, 50, "uniform", 0.3, 0)
    assert all(np.abs(p.A).max() <= 0.3 and np.abs(p.params["U"]).max() <= 0.3 for p in uniform)
    standard = draw_starts(model, 3, "standard", 0.1, 0)
    assert all(np.allclose(p.A, np.mean([t.W_star for t in prob.tasks], axis=0)) for p in standard)
    assert not np.allclose(standard[0].params["U"], standard[1].params["U"])
    assert np.array_equal(draw_starts(model, 2, "normal", 0.1, 0)[1].A, normal[1].A)  # start i ignores n_starts


def test_landscape_metrics_of_one_sweep_point():
    prob = fl.make_problem(d=6, k=1, T=3, seed=0, n_test_tasks=0)
    m = landscape_metrics(prob, n_starts=8, rank=1, peft="lora_sym", init="normal", init_scale=0.1, seed=0)
    assert set(m) == {"spurious_fraction", "saddle_fraction", "global_fraction", "min_hessian_eig",
                      "global_identified_fraction", "global_unidentified_fraction"}
    assert m["global_fraction"] == 1.0 and m["spurious_fraction"] == 0.0 and m["saddle_fraction"] == 0.0
    assert m["global_identified_fraction"] == 1.0 and m["global_unidentified_fraction"] == 0.0  # T = 3, r = k
    spectrum_min = hessian_spectrum(fl.retrain(prob, method="lora-ml", rank=1, backend="numpy"), prob).min_eig
    assert m["min_hessian_eig"] == pytest.approx(spectrum_min, rel=1e-5)


@pytest.mark.parametrize("kwargs,needle", [
    ({"n_starts": 0}, "n_starts"),
    ({"init": "gaussian"}, "init"),
    ({"init_scale": -0.1}, "init_scale"),
    ({"solver": "newton"}, "solver"),
    ({"peft": "full"}, "peft"),
    ({"rank": 9}, "rank"),
])
def test_census_rejects_bad_input(kwargs, needle):
    prob = fl.make_problem(d=4, k=1, T=3, seed=0, n_test_tasks=0)
    with pytest.raises(FastLoRAError, match=needle):
        census(prob, **{"n_starts": 2, **kwargs})


def test_point_and_spectrum_reject_bad_input():
    prob = fl.make_problem(d=4, k=1, T=3, seed=0, n_test_tasks=0)
    with pytest.raises(FastLoRAError, match="'A'"):
        hessian_spectrum({"U": np.zeros((3, 4, 1))}, prob)
    with pytest.raises(FastLoRAError, match="shape"):
        hessian_spectrum({"A": np.zeros((4, 4)), "U": np.zeros((2, 4, 1))}, prob)
    with pytest.raises(FastLoRAError, match="non-finite"):
        hessian_spectrum({"A": np.full((4, 4), np.nan), "U": np.zeros((3, 4, 1))}, prob)
    with pytest.raises(FastLoRAError, match="k_eigs"):
        hessian_spectrum({"A": np.zeros((4, 4)), "U": np.zeros((3, 4, 1))}, prob, k_eigs=0)
    with pytest.raises(FastLoRAError, match="rank is required"):
        census(prob.tasks, n_starts=2)


def _group():
    @click.group(cls=FastLoRAGroup)
    def main():
        pass

    main.add_command(landscape_command)
    return main


def test_cli_prints_the_census_table_and_json():
    runner = CliRunner()
    result = runner.invoke(_group(), ["landscape", "--d", "5", "--T", "3", "--n-starts", "4", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "global value 0" in result.output
    counts = {line.split()[0]: line.split()[1] for line in result.output.splitlines()
              if line.split()[:1] in (["global"], ["spurious"], ["failed"]) and line.split()[1].isdigit()}
    assert counts == {"global": "4", "spurious": "0", "failed": "0"}
    result = runner.invoke(_group(), ["landscape", "--d", "5", "--T", "3", "--n-starts", "3", "--json",
                                           "--no-progress"])
    data = json.loads(result.output)
    assert data["counts"]["global"] == 3 and len(data["records"]) == 3


def test_cli_bad_input_prints_one_error_line():
    result = CliRunner().invoke(_group(), ["landscape", "--d", "5", "--n-starts", "2", "--init", "bogus"])
    assert result.exit_code == 2
    assert result.output.strip().startswith("Error: --init bogus is not allowed")


def test_cli_errors_name_its_flags_and_the_old_spelling_of_starts_is_a_noted_alias():
    """--starts 0 used to report n_starts, the API's name; the starts are n_starts everywhere now."""
    result = CliRunner().invoke(_group(), ["landscape", "--d", "5", "--starts", "0"])
    assert result.exit_code == 2
    assert result.output.splitlines() == [
        "note: --starts is deprecated, write --n-starts (the old spelling goes in a future release)",
        "Error: --n-starts 0 is too small; it must be >= 1"]


def test_a_census_above_the_dense_size_solves_each_start_from_its_own_point():
    """Above taskbatch.DENSE_MAX_DIM retrain_many solves problems one at a time; each must get its
    own slice of the stacked starts (it was handed the whole stack and refused it)."""
    from fastlora.taskbatch import DENSE_MAX_DIM
    d = DENSE_MAX_DIM + 8
    prob = fl.make_problem(d=d, k=1, T=3, seed=0, n_test_tasks=0)
    result = census(prob, n_starts=3, seed=0, max_iter=300)
    assert sum(result.counts.values()) == 3 and result.counts["failed"] == 0
    rng = np.random.default_rng(1)
    starts_A = 0.1 * rng.standard_normal((3, d, d))
    starts_U = 0.1 * rng.standard_normal((9, d, 1))
    many = fl.retrain_many([prob] * 3, solver="gd", init_A=starts_A, init_params={"U": starts_U}, max_iter=50,
                           backend="numpy")
    for i in range(3):
        alone = fl.retrain(prob, solver="gd", init_A=starts_A[i], init_params={"U": starts_U[3 * i:3 * i + 3]},
                           max_iter=50, backend="numpy")
        assert np.array_equal(many[i].A, alone.A)
    assert not np.allclose(many[0].A, many[1].A)


def test_retrain_many_wants_one_start_per_task_whatever_the_problem_size():
    from fastlora.taskbatch import DENSE_MAX_DIM
    for d in (8, DENSE_MAX_DIM + 8):  # stacked, and one at a time
        prob = fl.make_problem(d=d, k=1, T=3, seed=0, n_test_tasks=0)
        with pytest.raises(ValueError, match="init_params"):
            fl.retrain_many([prob] * 2, solver="gd", init_params={"U": np.zeros((3, d, 1))}, max_iter=2,
                            backend="numpy")


def test_a_negative_global_value_is_refused():
    with pytest.raises(ValueError, match=r"global_value=-1\.0 is out of range"):
        census(fl.make_problem(d=4, k=1, T=3, seed=0, n_test_tasks=0), n_starts=2, global_value=-1)


def test_an_optimizer_with_the_als_solver_is_refused_not_ignored():
    prob = fl.make_problem(d=4, k=1, T=3, seed=0, n_test_tasks=0)
    with pytest.raises(ValueError, match="optimizer='adam' applies to solver='gd' only"):
        census(prob, n_starts=2, solver="als", optimizer="adam")
    assert sum(census(prob, n_starts=2, solver="als").counts.values()) == 2
