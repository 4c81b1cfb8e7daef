"""Task laws (fastlora.laws): each input and noise law's moments, named covariance spectra, the exact
statistics sampler against raw sampling for Gaussian inputs of any covariance (and its refusal of
other laws), per-task ranks and scales, and the law reaching fine-tuning draws and sweep specs."""
import numpy as np
import pytest
from scipy.stats import ks_2samp

import fastlora as fl
from fastlora.errors import FastLoRAError
from fastlora.laws import make_law, spectrum
from fastlora.sweep import parse_spec
from fastlora.tasks import sample_statistics

DRAWS = 400_000


def moments(x):
    x = np.asarray(x).ravel()
    return x.mean(), x.var(), np.mean(x ** 4) / x.var() ** 2


@pytest.mark.parametrize("law, df, kurtosis", [("gaussian", None, 3.0), ("rademacher", None, 1.0),
                                               ("student-t", 10.0, 3.0 + 6.0 / (10.0 - 4.0))])
def test_each_input_law_has_mean_zero_variance_one_and_its_kurtosis(law, df, kurtosis):
    x = make_law(1, input_law=law, input_df=df).inputs(np.random.default_rng(0), DRAWS, 1)
    mean, var, kurt = moments(x)
    assert abs(mean) < 0.01 and abs(var - 1) < 0.01
    assert abs(kurt - kurtosis) < 0.15 * kurtosis
    if law == "rademacher":
        assert set(np.unique(x)) == {-1.0, 1.0}


@pytest.mark.parametrize("law, kurtosis", [("gaussian", 3.0), ("rademacher", 1.0), ("laplace", 6.0),
                                           ("student-t", 3.0 + 6.0 / (12.0 - 4.0))])
def test_each_noise_law_has_unit_variance_and_its_kurtosis(law, kurtosis):
    df = 12.0 if law == "student-t" else None
    e = make_law(1, noise_law=law, noise_df=df).noise(np.random.default_rng(1), DRAWS, 1)
    mean, var, kurt = moments(e)
    assert abs(mean) < 0.01 and abs(var - 1) < 0.015
    assert abs(kurt - kurtosis) < 0.15 * kurtosis


def test_named_spectra_have_mean_one_and_their_shape():
    spiked, power = spectrum("spiked:5", 4), spectrum("power-law:2", 4)
    np.testing.assert_allclose(spiked.mean(), 1.0)
    np.testing.assert_allclose(spiked / spiked[1], [5, 1, 1, 1])
    np.testing.assert_allclose(power / power[0], [1, 1 / 4, 1 / 9, 1 / 16])
    np.testing.assert_allclose(spectrum("identity", 3), np.ones(3))
    assert make_law(4, input_cov="spiked").cov_name == "spiked:10"


@pytest.mark.parametrize("cov", ["spiked:8", "power-law:1.5", "matrix"])
def test_inputs_have_the_asked_covariance_under_every_law(cov):
    d = 4
    matrix = np.array([[2.0, 0.5, 0, 0], [0.5, 1.0, 0.2, 0], [0, 0.2, 0.5, 0], [0, 0, 0, 0.25]])
    wanted = matrix if cov == "matrix" else np.diag(spectrum(cov, d))
    for law in ("gaussian", "rademacher", "student-t"):
        X = make_law(d, input_law=law, input_cov=matrix if cov == "matrix" else cov).inputs(
            np.random.default_rng(2), DRAWS // 2, d)
        np.testing.assert_allclose(X.T @ X / len(X), wanted, atol=0.03 * np.abs(wanted).max())


def test_a_problem_s_statistics_follow_its_law_on_average():
    """E[Σ_t] is the input covariance whatever the input law, and E[C_t] = W*_t Σ."""
    d = 3
    sums = np.zeros((d, d))
    for seed in range(300):
        prob = fl.make_problem(d=d, k=1, T=1, n=200, noise=0.3, seed=seed, input_law="student-t", input_df=6,
                               input_cov="power-law:1", noise_law="laplace", n_test_tasks=0)
        sums += prob.tasks[0].Sigma
    np.testing.assert_allclose(sums / 300, np.diag(spectrum("power-law:1", d)), atol=0.04)
    task = prob.tasks[0]
    assert task.law.input_law == "student-t" and task.law.noise_law == "laplace"


def functionals(Sigma, C, s):
    W_hat = np.linalg.solve(Sigma, C.T).T
    return {"Sigma[0,0]": Sigma[0, 0], "Sigma[0,1]": Sigma[0, 1], "trace": np.trace(Sigma),
            "lambda_max": np.linalg.eigvalsh(Sigma)[-1], "C[0,0]": C[0, 0], "C[1,2]": C[1, 2], "s": s,
            "residual": s - 0.5 * float(np.sum(W_hat * C))}


def draw(target, law, sampler, n, noise, seed, draws=1500):
    rng = np.random.default_rng(seed)
    rows = [functionals(*sample_statistics(target, n, noise, rng, sampler=sampler, law=law)) for _ in range(draws)]
    return {k: np.array([r[k] for r in rows]) for k in rows[0]}


def test_stats_sampler_draws_the_raw_law_for_gaussian_inputs_of_any_covariance():
    """Two-sample KS tests on several functionals agree (p > 1e-3), and the same test rejects the
    identity covariance in place of the asked one (so it has the power to see a wrong law)."""
    d, n, noise = 3, 7, 0.6
    rng = np.random.default_rng(5)
    target = fl.LowRankTarget(rng.standard_normal((d, d)), rng.standard_normal((d, 1)), rng.standard_normal((d, 1)))
    law = make_law(d, input_cov=np.array([[2.0, 0.6, 0.0], [0.6, 1.0, 0.3], [0.0, 0.3, 0.4]]))
    raw = draw(target, law, "raw", n, noise, seed=1)
    stats = draw(target, law, "stats", n, noise, seed=2)
    assert min(ks_2samp(raw[k], stats[k]).pvalue for k in raw) > 1e-3
    wrong = draw(target, make_law(d), "stats", n, noise, seed=3)
    assert min(ks_2samp(raw[k], wrong[k]).pvalue for k in raw) < 1e-6


@pytest.mark.parametrize("law", [{"input_law": "rademacher"}, {"input_law": "student-t"},
                                 {"noise_law": "laplace"}, {"noise_law": "student-t"}])
def test_stats_sampler_refuses_laws_it_cannot_draw_exactly_naming_them(law):
    name, value = next(iter(law.items()))
    with pytest.raises(FastLoRAError, match=rf"sampler='stats'.*{name}='{value}'.*sampler='raw'"):
        fl.make_problem(d=4, k=1, T=2, n=50, noise=0.1, sampler="stats", **law)
    fl.make_problem(d=4, k=1, T=2, n=50, noise=0.1, sampler="stats", input_cov="spiked:3")  # Gaussian: exact


@pytest.mark.parametrize("kwargs, needle", [
    ({"input_law": "cauchy"}, "input_law='cauchy' is not allowed"),
    ({"input_law": "student-t", "input_df": 2}, "input_df"),
    ({"input_df": 5}, "input_df=5 applies to input_law='student-t' only"),
    ({"noise_df": 4}, "noise_df=4 applies to noise_law='student-t' only"),
    ({"input_cov": "wishart"}, "input_cov='wishart' is not allowed"),
    ({"input_cov": "spiked:-1"}, "the spike s"),
    ({"input_cov": np.eye(3)}, r"\(4, 4\)"),
    ({"input_cov": -np.eye(4)}, "positive semi-definite"),
    ({"input_cov": "power-law", "n": None}, "needs a finite n"),
    ({"task_ranks": [1, 5]}, "task_ranks=.*<= min"),
    ({"task_ranks": [1, 1, 1, 1]}, "task_ranks has 4 entries for T=3"),
    ({"task_ranks": []}, "task_ranks must be a non-empty list"),
    ({"task_scales": [1.0, 0.0]}, r"task_scales\[1\]"),
])
def test_bad_task_law_arguments_are_refused_naming_the_argument(kwargs, needle):
    args = {"d": 4, "k": 1, "T": 3, "n": 50, "noise": 0.1, **kwargs}
    with pytest.raises(FastLoRAError, match=needle):
        fl.make_problem(**args)


def test_per_task_ranks_and_scales_shape_each_task_and_cycle():
    base = fl.make_problem(d=6, k=1, T=4, n=None, seed=3)
    prob = fl.make_problem(d=6, k=1, T=4, n=None, seed=3, task_ranks=[1, 2], task_scales=[1.0, 4.0])
    assert prob.task_ranks == (1, 2, 1, 2) and prob.task_scales == (1.0, 4.0, 1.0, 4.0)
    assert prob.B_star.shape == (4, 6, 2) and np.all(prob.B_star[0][:, 1] == 0)
    np.testing.assert_array_equal(prob.B_star[0][:, :1], base.B_star[0])  # task 0's truth as without them
    for t, task in enumerate(prob.tasks):
        delta = task.W_star - prob.A_star
        assert np.linalg.matrix_rank(delta, tol=1e-9) == prob.task_ranks[t]
    U1 = fl.make_problem(d=6, k=2, T=4, n=None, seed=3).B_star[1]
    np.testing.assert_allclose(prob.tasks[1].W_star - prob.A_star, 4.0 * U1 @ U1.T)
    assert all(t.W_star.shape == (6, 6) for t in prob.test_tasks)
    assert np.linalg.matrix_rank(prob.test_tasks[0].W_star - prob.A_star, tol=1e-9) == 1  # held-out: rank k


def test_default_law_draws_exactly_what_it_drew_before_laws_existed():
    plain = fl.make_problem(d=5, k=1, T=2, n=30, noise=0.2, seed=4)
    named = fl.make_problem(d=5, k=1, T=2, n=30, noise=0.2, seed=4, input_law="gaussian", input_cov="identity",
                            noise_law="gaussian", sample_seed=4)
    for a, b in zip(plain.tasks, named.tasks):
        np.testing.assert_array_equal(a.Sigma, b.Sigma)
        np.testing.assert_array_equal(a.C, b.C)


def test_sample_seed_changes_the_samples_and_keeps_the_truth():
    a = fl.make_problem(d=5, k=1, T=2, n=30, noise=0.2, seed=4)
    b = fl.make_problem(d=5, k=1, T=2, n=30, noise=0.2, seed=4, sample_seed=99)
    np.testing.assert_array_equal(a.A_star, b.A_star)
    np.testing.assert_array_equal(a.B_star, b.B_star)
    assert not np.allclose(a.tasks[0].Sigma, b.tasks[0].Sigma)


def test_fine_tuning_draws_follow_the_problem_s_law():
    prob = fl.make_problem(d=4, k=1, T=2, n=50, noise=0.1, seed=0, input_law="rademacher", input_cov="spiked:9")
    fresh = prob.test_tasks[0].sample(20000, seed=1)
    assert fresh.law is prob.law
    np.testing.assert_allclose(fresh.Sigma, np.diag(spectrum("spiked:9", 4)), atol=0.1)


def test_the_shallow_network_takes_noise_law_and_task_ranks_and_refuses_input_laws():
    prob = fl.make_problem(d=5, k=1, T=3, n=40, noise=0.1, seed=0, model="shallow", noise_law="rademacher",
                           task_ranks=[1, 2])
    assert prob.U_star.shape == (3, 5, 2) and prob.task_ranks == (1, 2, 1)
    noise = prob.tasks[0].y - prob.tasks[0].y_clean
    np.testing.assert_allclose(np.abs(noise), 0.1)
    with pytest.raises(FastLoRAError, match="input_law, input_cov and task_scales do not apply"):
        fl.make_problem(d=5, k=1, T=3, n=40, model="shallow", input_cov="spiked")


SPEC = """
name = "laws"
repeats = 1
[grid]
input_law = ["gaussian", "student-t"]
task_ranks = [[1, 2], 1]
[fixed]
d = 6
k = 1
T = 3
n = 60
noise = 0.1
input_cov = "power-law:1"
noise_law = "laplace"
method = "lora-ml"
rank = 2
backend = "numpy"
max_iter = 30
"""


def test_spec_keys_carry_the_task_laws_to_make_problem():
    import warnings

    from fastlora.sweep.spec import problem_args
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        spec = parse_spec(SPEC)
    points = spec.points()
    assert [p["task_ranks"] for p in points[:2]] == [[1, 2], [1]]
    assert {p["input_df"] for p in points} == {None, 5.0}  # resolved where student-t, recorded in every row
    prob = fl.make_problem(**problem_args(points[2], seed=1, truth_seed=2))
    assert prob.law.input_law == "student-t" and prob.law.cov_name == "power-law:1"
    assert prob.task_ranks == (1, 2, 1) and prob.seed == 2 and prob.sample_seed == 1


@pytest.mark.parametrize("change, needle", [
    (('noise_law = "laplace"', 'noise_law = "laplace"\nsampler = "stats"'), "sampler='stats'"),
    (('input_cov = "power-law:1"', 'input_cov = "cubic"'), "input_cov='cubic' is not allowed"),
    (("task_ranks = [[1, 2], 1]", "task_ranks = [[1, 9]]"), "task_ranks=.*<= min"),
    (("n = 60", 'n = "population"'), "needs a finite n"),
])
def test_a_spec_with_an_impossible_task_law_is_refused_when_read(change, needle):
    with pytest.raises(FastLoRAError, match=needle):
        parse_spec(SPEC.replace(*change))
