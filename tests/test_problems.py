import numpy as np
import pytest

import fastlora as fl


def test_make_problem_follows_the_paper_law_and_is_reproducible():
    a, b = fl.make_problem(d=16, k=2, T=3, seed=7), fl.make_problem(d=16, k=2, T=3, seed=7)
    np.testing.assert_array_equal(a.A_star, b.A_star)
    np.testing.assert_array_equal(a.U_star, b.U_star)
    np.testing.assert_array_equal(a.A_star, a.A_star.T)  # A* = (G + Gᵀ)/2
    assert a.U_star.shape == (3, 16, 2)
    assert len(a.tasks) == 3 and len(a.test_tasks) == 4
    np.testing.assert_allclose(a.tasks[1].W_star, a.A_star + a.U_star[1] @ a.U_star[1].T)
    c = fl.make_problem(d=16, k=2, T=3, seed=8)
    assert not np.allclose(a.A_star, c.A_star)


def test_ground_truth_does_not_depend_on_n_noise_or_T():
    pop = fl.make_problem(d=8, k=1, T=2, seed=5)
    fin = fl.make_problem(d=8, k=1, T=5, n=50, noise=0.3, seed=5)
    np.testing.assert_array_equal(pop.A_star, fin.A_star)
    np.testing.assert_array_equal(pop.U_star, fin.U_star[:2])
    np.testing.assert_array_equal(pop.test_tasks[0].W_star, fin.test_tasks[0].W_star)


def test_general_problem_is_rectangular_and_keeps_factors():
    prob = fl.make_problem(d=9, d_out=5, k=2, T=3, seed=0, symmetric=False)
    assert prob.A_star.shape == (5, 9) and prob.B_star.shape == (3, 5, 2) and prob.C_star.shape == (3, 9, 2)
    assert prob.tasks[0].target.B.shape == (5, 2)
    with pytest.raises(fl.FastLoRAError, match="U_star"):
        _ = prob.U_star


def test_population_tasks_stay_factored_and_share_A_star():
    prob = fl.make_problem(d=32, k=2, T=5, seed=0)
    targets = [t.target for t in prob.tasks]
    assert all(isinstance(g, fl.LowRankTarget) for g in targets)
    assert all(g.base is prob.A_star for g in targets)


def test_finite_sample_statistics_match_the_data():
    rng = np.random.default_rng(0)
    X, W = rng.standard_normal((200, 6)), rng.standard_normal((4, 6))
    Y = X @ W.T + 0.1 * rng.standard_normal((200, 4))
    task = fl.Task(X, Y)
    np.testing.assert_allclose(task.Sigma, X.T @ X / 200)
    np.testing.assert_allclose(task.C, Y.T @ X / 200)
    A = rng.standard_normal((4, 6))
    np.testing.assert_allclose(task.loss(A), 0.5 * np.mean(np.sum((X @ A.T - Y) ** 2, axis=1)))


def test_sampled_statistics_have_the_right_expectation():
    prob = fl.make_problem(d=5, k=1, T=1, n=200000, noise=0.5, seed=2)
    task = prob.tasks[0]
    np.testing.assert_allclose(task.Sigma, np.eye(5), atol=0.02)
    np.testing.assert_allclose(task.C, task.W_star, atol=0.05 * np.abs(task.W_star).max())
    expected_s = 0.5 * (np.sum(task.W_star ** 2) + 5 * 0.25)
    assert abs(task.s - expected_s) < 0.02 * expected_s


def test_new_task_is_reproducible_and_distinct():
    prob = fl.make_problem(d=10, k=1, T=2, seed=1)
    np.testing.assert_array_equal(prob.new_task(3).W_star, prob.new_task(3).W_star)
    assert not np.allclose(prob.new_task(3).W_star, prob.new_task(4).W_star)
    assert not np.allclose(prob.new_task(0).W_star, prob.test_tasks[0].W_star)


def test_retrain_accepts_user_tasks():
    rng = np.random.default_rng(0)
    A_star = rng.standard_normal((6, 6))
    tasks = [fl.Task.population(A_star + np.outer(u, u)) for u in rng.standard_normal((4, 6))]
    res = fl.retrain(tasks, peft="lora_sym", rank=1, backend="numpy")
    assert res.info["batch"] == "dense"
    np.testing.assert_allclose(res.A, A_star, atol=1e-6)
    # factored targets are solved factored above the size that is batched densely
    # (taskbatch.DENSE_MAX_DIM), in the full space (reduction="none": no reduced dense problem)
    from fastlora.taskbatch import DENSE_MAX_DIM
    d = DENSE_MAX_DIM + 8
    A_star = rng.standard_normal((d, d))
    factored = [fl.Task.population(base=A_star, B=u[:, None]) for u in rng.standard_normal((4, d))]
    res = fl.retrain(factored, peft="lora_sym", rank=1, backend="numpy", reduction="none")
    assert res.info["batch"] == "factored"
    np.testing.assert_allclose(res.A, A_star, atol=1e-6)


def test_a_tasks_loss_follows_statistics_assigned_after_its_first_use():
    """The least-squares fit behind Task.loss is kept on the task; it once outlived new Σ, C, s."""
    task = fl.make_problem(d=6, k=1, T=2, n=50, noise=0.1, seed=0).tasks[0]
    W = np.random.default_rng(1).standard_normal((task.d_out, task.d_in))

    def direct(t):
        return 0.5 * np.trace(W @ t.Sigma @ W.T) - np.trace(W @ t.C.T) + t.s

    assert task.loss(W) == pytest.approx(direct(task), rel=1e-12)
    task.Sigma, task.C, task.s = 2 * task.Sigma, 3 * task.C, 5 * task.s  # the statistics of other data
    assert task.loss(W) == pytest.approx(direct(task), rel=1e-12)


def _arrays(prob):
    """Every array a problem holds: A*, the factors, each task's target and statistics."""
    out = [np.asarray(prob.A_star), prob.B_star, prob.C_star]
    for task in prob.tasks + prob.test_tasks:
        out += [task.W_star, *((task.Sigma, task.C, np.asarray(task.s)) if task.n is not None else ())]
    return out


@pytest.mark.parametrize("draws", ["compiled", "numpy", "beyond 32 bits"])
@pytest.mark.parametrize("args", [dict(d=10, k=2, T=3, n=5000, noise=0.01), dict(d=10, k=1, T=3, n=None),
                                  dict(d=6, k=2, T=2, n=300, noise=0.1, sampler="stats"),
                                  dict(d=5, d_out=7, k=2, T=3, n=40, noise=0.3, symmetric=False),
                                  dict(d=6, k=1, T=4, n=3000, task_ranks=[1, 2], task_scales=[2.0, 0.5]),
                                  dict(d=6, k=1, T=4, n=300, noise=0.1, sampler="stats", task_ranks=[1, 2]),
                                  dict(d=16, d_out=12, k=4, T=2, n=100, noise=0.1, sampler="stats", symmetric=False),
                                  dict(d=6, k=1, T=2, n=3000, noise=0.2, input_cov="spiked:4"),
                                  dict(d=8, k=2, T=2, n=None, implicit=True)])
def test_problems_drawn_together_are_the_problems_drawn_alone(monkeypatch, args, draws):
    """make_linear_problems (a sweep's rows of one point) gives, number for number, what make_problem gives
    seed by seed, with their own truth and sample seeds: drawn by the compiled streams, by numpy's
    Generators, or with a seed beyond 32 bits among them (then the whole stack draws with numpy)."""
    from fastlora import seeding
    from fastlora.problems import make_linear_problems
    if draws == "numpy":
        monkeypatch.setattr(seeding, "_keyed", None)
    seeds, sample_seeds = [0, 7, 12, 3], [None, 5, 9, None]
    if draws == "beyond 32 bits":
        seeds[2], sample_seeds[1] = 2**33, 2**40
    together = make_linear_problems(seeds, sample_seeds, **args)
    for prob, seed, sample_seed in zip(together, seeds, sample_seeds):
        alone = fl.make_problem(**args, seed=seed, sample_seed=sample_seed)
        assert repr(prob) == repr(alone)
        assert [t.key for t in prob.tasks + prob.test_tasks] == [t.key for t in alone.tasks + alone.test_tasks]
        for ours, theirs in zip(_arrays(prob), _arrays(alone), strict=True):
            np.testing.assert_array_equal(ours, theirs)
        for ours, theirs in zip(prob.tasks + prob.test_tasks, alone.tasks + alone.test_tasks):
            assert ours.target.symmetric == theirs.target.symmetric
            assert ours.noise == theirs.noise and ours.sampler == theirs.sampler
        # a held-out task's fine-tuning samples too
        np.testing.assert_array_equal(prob.test_tasks[1].sample(50, seed=2).C, alone.test_tasks[1].sample(50, seed=2).C)


def test_problems_drawn_together_check_their_seeds():
    """Each bad entry named (seeds[i], sample_seeds[i]); a lone seed as make_problem names it."""
    from fastlora.problems import make_linear_problems
    with pytest.raises(ValueError, match="at least one seed"):
        make_linear_problems([], d=4, k=1, T=2)
    with pytest.raises(ValueError, match="2 sample_seeds for 1 seeds"):
        make_linear_problems([1], [2, 3], d=4, k=1, T=2)
    with pytest.raises(ValueError, match=r"^seeds\[1\]=-2 is too small"):
        make_linear_problems([1, -2], d=4, k=1, T=2)
    with pytest.raises(ValueError, match=r"^sample_seeds\[1\] must be an integer, got 1.5"):
        make_linear_problems([1, 2], [None, 1.5], d=4, k=1, T=2)
    with pytest.raises(ValueError, match=r"^seed=-2 is too small"):
        make_linear_problems([-2], d=4, k=1, T=2)
    for bad in (5, None, "12"):
        with pytest.raises(ValueError, match=r"^seeds must be a list of seeds"):
            make_linear_problems(bad, d=4, k=1, T=2)
    with pytest.raises(ValueError, match=r"^sample_seeds must be a list of seeds"):
        make_linear_problems([1, 2], 5, d=4, k=1, T=2)
