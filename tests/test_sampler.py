"""The exact sufficient-statistics sampler (sampler="stats") against raw sampling.

Both samplers must draw (Σ, C, s) from the same law: two-sample KS tests on several
functionals over many draws agree, and the same check, at the same sample size, rejects
deliberately wrong variants (so it has the power to see a mistake).  Seeds are fixed, so
every test is deterministic.
"""
import functools

import numpy as np
import pytest
from scipy.stats import ks_2samp

import fastlora as fl
from fastlora.tasks import exact_statistics, sample_statistics

DRAWS = 2000
AGREE_P = 1e-3    # every functional's KS p-value above this: same law
DETECT_P = 1e-6   # some functional's KS p-value below this: a different law


def functionals(Sigma, C, s):
    """Scalars of one draw whose laws the KS tests compare."""
    W_hat = np.linalg.lstsq(Sigma, C.T, rcond=None)[0].T if np.linalg.matrix_rank(Sigma) == len(Sigma) else None
    residual = s - 0.5 * float(np.sum(W_hat * C)) if W_hat is not None else np.nan  # min_W L(W)
    return {"Sigma[0,0]": Sigma[0, 0], "Sigma[0,1]": Sigma[0, 1], "trace(Sigma)": np.trace(Sigma),
            "lambda_max(Sigma)": np.linalg.eigvalsh(Sigma)[-1], "C[0,0]": C[0, 0], "C[-1,1]": C[-1, 1],
            "s": s, "least-squares residual": residual}


def draw(sampler_fn, target, n, noise, seed, draws=DRAWS):
    rng = np.random.default_rng(seed)
    rows = [functionals(*sampler_fn(target, n, noise, rng)) for _ in range(draws)]
    return {k: np.array([r[k] for r in rows]) for k in rows[0]}


def raw(target, n, noise, rng):
    return sample_statistics(target, n, noise, rng, sampler="raw")


@functools.cache
def raw_reference(case):
    """The raw sampler's draws for one case (shared by the agreement and the power tests)."""
    d_out, d_in, n, noise = case
    target = make_target(d_out, d_in, 1, seed=d_out * 10 + d_in)
    return target, draw(raw, target, n, noise, seed=1)


def ks_pvalues(a, b):
    return {k: ks_2samp(a[k], b[k]).pvalue for k in a if not np.isnan(a[k]).any()}


def make_target(d_out, d_in, k, seed):
    rng = np.random.default_rng(seed)
    return fl.LowRankTarget(rng.standard_normal((d_out, d_in)), rng.standard_normal((d_out, k)),
                            rng.standard_normal((d_in, k)))


class WrongChiSquare:
    """A Generator whose chi-square draws get ``shift`` more degrees of freedom — a planted bug
    in the Bartlett diagonal (array df) or in the residual ‖P⊥E‖² (scalar df)."""

    def __init__(self, rng, shift, where):
        self.rng, self.shift, self.where = rng, shift, where

    def chisquare(self, df):
        scalar = np.ndim(df) == 0
        hit = (self.where == "residual") == scalar
        return self.rng.chisquare(np.asarray(df) + (self.shift if hit else 0))

    def standard_normal(self, *args, **kwargs):
        return self.rng.standard_normal(*args, **kwargs)


CASES = [  # (d_out, d_in, n, noise): rectangular both ways, square, n just above d_in
    (3, 4, 6, 0.7),
    (5, 2, 9, 0.3),
    (4, 4, 5, 1.0),
]


@pytest.mark.parametrize("d_out,d_in,n,noise", CASES)
def test_the_two_samplers_agree_in_distribution(d_out, d_in, n, noise):
    target, a = raw_reference((d_out, d_in, n, noise))
    b = draw(exact_statistics, target, n, noise, seed=2)
    p = ks_pvalues(a, b)
    assert len(p) == 8
    assert min(p.values()) > AGREE_P, p


@pytest.mark.parametrize("where", ["bartlett", "residual"])
def test_the_check_detects_a_wrong_degrees_of_freedom(where):
    """One extra degree of freedom, in the Wishart factor or in ‖P⊥E‖², fails the same check."""
    _, _, n, noise = CASES[0]
    target, a = raw_reference(CASES[0])

    def wrong(target, n, noise, rng):
        return exact_statistics(target, n, noise, WrongChiSquare(rng, 1, where))

    b = draw(wrong, target, n, noise, seed=2)
    p = ks_pvalues(a, b)
    assert min(p.values()) < DETECT_P, p


def test_noise_free_statistics_are_exact_functions_of_sigma():
    """σ = 0: C = W*Σ and s = ½ tr(W*ΣW*ᵀ) exactly; Σ's law still matches raw sampling."""
    target = make_target(3, 4, 2, seed=5)
    W = target.dense()
    rng = np.random.default_rng(0)
    for _ in range(5):
        Sigma, C, s = exact_statistics(target, 7, 0.0, rng)
        np.testing.assert_allclose(C, W @ Sigma, rtol=1e-12, atol=1e-12)
        assert s == pytest.approx(0.5 * np.sum((W @ Sigma) * W), rel=1e-12)
    a = draw(raw, target, 7, 0.0, seed=1, draws=1000)
    b = draw(exact_statistics, target, 7, 0.0, seed=2, draws=1000)
    p = ks_pvalues(a, b)
    assert min(p[k] for k in ("Sigma[0,0]", "Sigma[0,1]", "lambda_max(Sigma)", "s")) > AGREE_P, p


def test_n_equal_to_d_in_leaves_no_residual_and_n_below_d_in_draws_x():
    target = make_target(2, 5, 1, seed=1)
    Sigma, C, s = sample_statistics(target, 5, 0.5, np.random.default_rng(0), sampler="stats")
    W_hat = np.linalg.solve(Sigma, C.T).T
    assert s - 0.5 * np.sum(W_hat * C) == pytest.approx(0.0, abs=1e-12 * s)  # n = d_in: Y is fitted exactly
    # n < d_in: XᵀX is singular (rank n) and "stats" draws X itself, the same draws as "raw"
    stats = sample_statistics(target, 3, 0.5, np.random.default_rng(4), sampler="stats")
    raws = sample_statistics(target, 3, 0.5, np.random.default_rng(4), sampler="raw")
    for x, y in zip(stats, raws):
        np.testing.assert_array_equal(x, y)
    assert np.linalg.matrix_rank(stats[0]) == 3


def test_make_problem_stats_is_deterministic_and_keeps_the_ground_truth():
    kwargs = {"d": 6, "k": 1, "T": 3, "n": 40, "noise": 0.2, "seed": 11, "n_test_tasks": 2}
    a, b = fl.make_problem(**kwargs, sampler="stats"), fl.make_problem(**kwargs, sampler="stats")
    r = fl.make_problem(**kwargs)
    for ta, tb in zip(a.tasks, b.tasks):
        np.testing.assert_array_equal(ta.Sigma, tb.Sigma)
        np.testing.assert_array_equal(ta.C, tb.C)
        assert ta.s == tb.s
    np.testing.assert_array_equal(a.A_star, r.A_star)
    np.testing.assert_array_equal(a.U_star, r.U_star)
    np.testing.assert_array_equal(a.test_tasks[1].W_star, r.test_tasks[1].W_star)
    assert not np.allclose(a.tasks[0].Sigma, r.tasks[0].Sigma)  # a different draw of the same law
    assert a.sampler == "stats" and r.sampler == "raw"
    assert all(t.sampler == "stats" for t in a.tasks + a.test_tasks)
    other = fl.make_problem(**{**kwargs, "seed": 12}, sampler="stats")
    assert not np.allclose(other.tasks[0].C, a.tasks[0].C)


def test_fine_tuning_draws_use_the_problems_sampler():
    prob = fl.make_problem(d=6, k=1, T=3, n=None, noise=0.2, seed=3, sampler="stats")
    task = prob.test_tasks[0]
    drawn = fl.finetune(prob.A_star, task, rank=1, n=50, seed=7)
    by_stats = fl.finetune(prob.A_star, task.sample(50, seed=7, sampler="stats"), rank=1)
    by_raw = fl.finetune(prob.A_star, task.sample(50, seed=7, sampler="raw"), rank=1)
    assert drawn.excess_risk == by_stats.excess_risk
    assert drawn.excess_risk != by_raw.excess_risk
    assert task.sample(50, seed=7).sampler == "stats"


def test_huge_n_is_cheap_and_concentrates():
    """n = 10¹² in O(d²) draws: Σ → I, C → W*, s → ½(‖W*‖² + d_out σ²) at the 1/√n scale."""
    prob = fl.make_problem(d=8, k=1, T=2, n=10**12, noise=0.5, seed=0, sampler="stats", n_test_tasks=0)
    task = prob.tasks[0]
    np.testing.assert_allclose(task.Sigma, np.eye(8), atol=1e-5)
    np.testing.assert_allclose(task.C, task.W_star, atol=1e-4)
    assert task.s == pytest.approx(0.5 * (np.sum(task.W_star ** 2) + 8 * 0.25), rel=1e-5)


def test_sampler_is_validated():
    with pytest.raises(fl.FastLoRAError, match="sampler"):
        fl.make_problem(d=4, k=1, T=2, n=10, sampler="wishart")
    task = fl.make_problem(d=4, k=1, T=2).test_tasks[0]
    with pytest.raises(fl.FastLoRAError, match="sampler"):
        task.sample(10, sampler="exact")


def _exact_statistics_alone(target, n, noise, rng):
    """The one-task form sample_many's stacks must reproduce bit for bit (its draws, order and products)."""
    from fastlora.tasks import _apply_transposed, bartlett_factor
    d_out, d_in = target.shape
    R = bartlett_factor(d_in, n, rng)
    M = _apply_transposed(target, R)
    residual = 0.0
    if noise > 0:
        M += noise * rng.standard_normal((d_in, d_out))
        if n > d_in:
            residual = noise * noise * float(rng.chisquare(float(d_out) * float(n - d_in)))
    return R.T @ R / n, M.T @ R / n, (float(np.sum(M * M)) + residual) / (2 * n)


def test_sample_many_draws_what_each_task_draws_alone(monkeypatch):
    from fastlora.seeding import PURPOSE_SAMPLE, task_seed
    from fastlora.tasks import sample_many
    prob = fl.make_problem(d=7, k=2, T=2, n=40, noise=0.3, seed=3, sampler="stats")
    rng = np.random.default_rng(0)
    dense = fl.Task.population(rng.standard_normal((5, 7)), sampler="stats")  # another shape, a dense target
    raw = fl.Task.population(rng.standard_normal((7, 7)))  # the raw sampler: stacks of its own
    raw_problem = fl.make_problem(d=7, k=1, T=2, n=40, noise=0.3, seed=5, n_test_tasks=2)  # factored, raw
    tasks = [*prob.test_tasks, dense, raw, prob.test_tasks[1], *raw_problem.test_tasks]
    seeds = [11, 12, 13, 14, 15, 16, 17, 18, 19]
    together = sample_many(tasks, 40, seeds, noise=0.3)
    for task, seed, got in zip(tasks, seeds, together):
        alone = task.sample(40, seed=seed, noise=0.3)
        for a, b in ((got.Sigma, alone.Sigma), (got.C, alone.C), (got.s, alone.s)):
            np.testing.assert_array_equal(a, b)
        assert (got.key, got.sampler, got.noise, got.n) == (task.key, task.sampler, 0.3, 40)
        if task.sampler == "stats":  # the stacks reproduce the one-task products exactly
            Sigma, C, s = _exact_statistics_alone(task.target, 40, 0.3,
                                                  np.random.default_rng(task_seed(seed, task.key, PURPOSE_SAMPLE)))
            np.testing.assert_array_equal(got.Sigma, 0.5 * (Sigma + Sigma.T))
            np.testing.assert_array_equal(got.C, C)
            assert got.s == s
        else:  # the raw stacks: one task's statistics as the one-task sampler gives them
            Sigma, C, s = sample_statistics(task.target, 40, 0.3, np.random.default_rng(
                task_seed(seed, task.key, PURPOSE_SAMPLE)), sampler="raw", law=task.law)
            np.testing.assert_array_equal(got.Sigma, 0.5 * (Sigma + Sigma.T))
            np.testing.assert_array_equal(got.C, C)
            assert got.s == s
    with pytest.raises(fl.FastLoRAError, match="without ground truth"):
        sample_many([tasks[0], fl.Task(rng.standard_normal((30, 7)), rng.standard_normal((30, 7)))], 40, [1, 2])
    from fastlora.laws import DataLaw

    class Uniform(DataLaw):  # the standard law's fields, its own inputs: never stacked with the standard law's
        def inputs(self, rng, m, d):
            return rng.uniform(-np.sqrt(3.0), np.sqrt(3.0), (m, d))

    standard, uniform = fl.Task.population(np.ones((2, 3))), fl.Task.population(np.ones((2, 3)))
    uniform.law = Uniform()
    np.testing.assert_array_equal(sample_many([standard, uniform], 200, [1, 2])[1].Sigma,
                                  sample_many([uniform], 200, [2])[0].Sigma)
    import fastlora.tasks as tasks_module
    monkeypatch.setattr(tasks_module, "RAW_BATCH_BYTES", 16 << 20)  # these stack (1.5 MB each)
    wide = [fl.Task.population(rng.standard_normal((100, 100))) for _ in range(3)]  # long sums: einsum reorders
    for i, got in enumerate(sample_many(wide, 200, [1, 2, 3], noise=0.1)):
        alone = wide[i].sample(200, seed=i + 1, noise=0.1)
        assert (got.s, float(np.sum(got.C))) == (alone.s, float(np.sum(alone.C)))


def test_sample_many_with_a_shared_generator_draws_task_by_task(monkeypatch):
    """One Generator serving several tasks: each task draws in turn, as separate calls would (stacking
    the exact ones first reordered the draws); stacks are bounded (SAMPLE_BATCH_BYTES) and a task keeps
    its own arrays, not a view of a stack."""
    from fastlora import tasks as tasks_module
    from fastlora.tasks import sample_many
    rng = np.random.default_rng(0)
    raw = fl.Task.population(rng.standard_normal((6, 6)))
    stats = fl.Task.population(rng.standard_normal((6, 6)), sampler="stats")
    chosen = [raw, stats, raw, stats]
    together = sample_many(chosen, 30, [np.random.default_rng(1)] * 4, noise=0.2)
    shared = np.random.default_rng(1)
    for task, got in zip(chosen, together):
        alone = task.sample(30, seed=shared, noise=0.2)
        np.testing.assert_array_equal(got.C, alone.C)
        assert got.s == alone.s
    prob = fl.make_problem(d=5, k=1, T=2, n=40, noise=0.3, seed=3, sampler="stats")
    many = [prob.test_tasks[i % 4] for i in range(9)]
    expected = [t.sample(40, seed=10 + i) for i, t in enumerate(many)]
    monkeypatch.setattr(tasks_module, "SAMPLE_BATCH_BYTES", 1)  # one task per stack
    for batched in (sample_many(many, 40, list(range(10, 19))),):
        for got, want in zip(batched, expected):
            np.testing.assert_array_equal(got.C, want.C)
            assert got.C.base is None and got.Sigma.base is None
    with pytest.raises(fl.FastLoRAError, match="2 seed"):
        sample_many(many[:3], 40, [1, 2])


def test_finetune_many_with_a_shared_generator_samples_task_by_task():
    """finetune_many(seeds=one Generator): task i samples, then task i + 1 — as before the stacked draws
    (sample_many's rule, reached through finetune_many; tests/test_plugins_v2.py checks finetune_many's
    own, with a parameterization that draws a start per task)."""
    rng = np.random.default_rng(0)
    chosen = [fl.Task.population(rng.standard_normal((6, 6))),
              fl.Task.population(rng.standard_normal((6, 6)), sampler="stats")]
    A = np.zeros((6, 6))
    got = fl.finetune_many([A, A], chosen, rank=2, n=30, seeds=np.random.default_rng(1))
    shared = np.random.default_rng(1)
    sampled = [t.sample(30, seed=shared) for t in chosen]
    want = fl.finetune_many([A, A], sampled, rank=2, seeds=shared)
    assert [g.excess_risk for g in got] == [w.excess_risk for w in want]


def _raw_statistics_by_definition(target, n, noise, rng, law, chunk):
    """(XᵀX/n, YᵀX/n, ‖Y‖²/2n) of Y = X W*ᵀ + σE, drawing X then E chunk by chunk as the raw sampler does."""
    W = target.dense() if isinstance(target, fl.LowRankTarget) else target
    X, Y = [], []
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        X.append(law.inputs(rng, m, W.shape[1]))
        Y.append(X[-1] @ W.T + (noise * law.noise(rng, m, W.shape[0]) if noise > 0 else 0.0))
    X, Y = np.concatenate(X), np.concatenate(Y)
    return X.T @ X / n, Y.T @ X / n, float(np.sum(Y * Y)) / (2 * n)


@pytest.mark.parametrize("case", ["dense", "factored", "noise-free", "several chunks", "n below d_in",
                                  "laws", "wide output"])
def test_raw_statistics_equal_their_definition_on_the_same_draws(case, monkeypatch):
    """The raw sampler reduces X and E by their Grams (Y is never formed at n ≥ d_in): the same
    numbers as forming Y, to rounding, with the draws in the same order."""
    import fastlora.tasks as tasks_module
    from fastlora.laws import STANDARD_LAW, make_law
    d_out, d_in, n, noise, law = 4, 6, 50, 0.3, STANDARD_LAW
    target = make_target(d_out, d_in, 2, seed=9)
    chunk = tasks_module._SAMPLE_CHUNK
    if case == "dense":
        target = target.dense()
    elif case == "noise-free":
        noise, chunk = 0.0, 16  # several chunks: an E drawn anyway would shift the next chunk's X
        monkeypatch.setattr(tasks_module, "_SAMPLE_CHUNK", chunk)
    elif case == "several chunks":
        chunk = 16
        monkeypatch.setattr(tasks_module, "_SAMPLE_CHUNK", chunk)
    elif case == "n below d_in":
        n = 4
    elif case == "laws":
        law = make_law(d_in, input_law="student-t", input_df=5.0, input_cov="spiked", noise_law="laplace")
    elif case == "wide output":
        target = make_target(9, 3, 1, seed=2)
    rngs = np.random.default_rng(5), np.random.default_rng(5)
    got = sample_statistics(target, n, noise, rngs[0], sampler="raw", law=law)
    want = _raw_statistics_by_definition(target, n, noise, rngs[1], law, chunk)
    for name, a, b in zip(("Sigma", "C", "s"), got, want):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13 * np.max(np.abs(b)), err_msg=name)
    assert rngs[0].random() == rngs[1].random()  # the same number of draws: the streams go on alike


@pytest.mark.parametrize("shape", [dict(d=5, d_out=3, k=2), dict(d=16, k=4), dict(d=48, d_out=20, k=5)])
@pytest.mark.parametrize("stack", ["factored", "a dense target among them", "ranks 1 and 2"])
def test_exact_statistics_of_a_stack_are_each_tasks_alone(monkeypatch, shape, stack):
    """exact_statistics_many (factored targets of several problems: R W*ᵀ as stacked products; with a dense
    target among them, or factors of two ranks, one by one) gives each task, bit for bit, what exact_statistics
    gives it alone, and what the products target by target give (STACKED_TARGET_ENTRIES = 0) — at sizes where
    BLAS rounds a product of C-ordered factors otherwise than of make_problem's F-ordered views."""
    from fastlora import tasks as tasks_module
    from fastlora.seeding import KeyedSeed, as_generator
    from fastlora.tasks import exact_statistics, exact_statistics_many
    ranks = dict(task_ranks=[1, 2]) if stack == "ranks 1 and 2" else {}
    targets = [task.target for seed in (1, 2) for task in
               fl.make_problem(**shape, T=2, symmetric="d_out" not in shape, seed=seed, **ranks).tasks]
    if stack == "a dense target among them":
        targets[1] = np.random.default_rng(0).standard_normal(targets[0].shape)
    sources = [KeyedSeed(7, (i,)) for i in range(len(targets))]
    stacked = exact_statistics_many(targets, 60, 0.3, sources)
    monkeypatch.setattr(tasks_module, "STACKED_TARGET_ENTRIES", 0)
    one_by_one = exact_statistics_many(targets, 60, 0.3, sources)
    for i, (target, source) in enumerate(zip(targets, sources)):
        alone = exact_statistics(target, 60, 0.3, as_generator(source))
        for ours, each, theirs in zip(stacked, one_by_one, alone, strict=True):
            np.testing.assert_array_equal(ours[i], theirs)
            np.testing.assert_array_equal(each[i], theirs)
