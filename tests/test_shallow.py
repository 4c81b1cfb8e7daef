"""The shallow network (docs/design.md §6): kernels, gradients, solvers, problem law, errors."""
import numpy as np
import pytest
from scipy.special import expit

import fastlora as fl
from fastlora import peft
from fastlora.backends import get_backend, numba_status
from fastlora.errors import FastLoRAError
from fastlora.kernels import shallow_reference
from fastlora.shallow import (
    ShallowTask,
    align_hidden_units,
    evaluate_shallow,
    finetune_shallow,
    make_shallow_problem,
    optim,
    paper_ft_rank,
    retrain_shallow,
)
from fastlora.shallow.model import ShallowData, ShallowObjective

BACKENDS = ["numpy"] + (["numba"] if numba_status()[0] else [])
needs_numba = pytest.mark.skipif(not numba_status()[0], reason="numba is not installed")


def _tasks(rng, d, sizes):
    """Tasks of unequal size (so the kernels' padding is exercised) with random labels."""
    return [ShallowTask(rng.standard_normal((n, d)), rng.standard_normal(n)) for n in sizes]


def _naive_losses(X, y, W, c):
    """L_t = (1/2n) Σ_i (c·sigmoid(W x_i) − y_i)², one sample at a time."""
    return [0.5 * np.mean([(c_t @ expit(W_t @ x) - label) ** 2 for x, label in zip(X_t, y_t)])
            for X_t, y_t, W_t, c_t in zip(X, y, W, c)]


# ---------------------------------------------------------------------------- kernels
def test_reference_kernel_matches_the_per_sample_formula():
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((2, 40, 3)), rng.standard_normal((2, 40))
    W, c = 2.0 * rng.standard_normal((2, 4, 3)), rng.standard_normal((2, 4))
    losses, _, _ = shallow_reference.shallow_loss_grad(X, y, np.array([40, 40]), W, c)
    np.testing.assert_allclose(losses, _naive_losses(X, y, W, c), rtol=1e-13)
    # padded rows (beyond n_rows) must not count: task 1 with 25 real rows
    losses, _, _ = shallow_reference.shallow_loss_grad(X, y, np.array([40, 25]), W, c)
    np.testing.assert_allclose(losses[1], _naive_losses(X[1:, :25], y[1:, :25], W[1:], c[1:])[0], rtol=1e-13)


@needs_numba
def test_numba_kernel_matches_the_reference():
    from fastlora.kernels import shallow_numba
    rng = np.random.default_rng(1)
    T, n, d, h = 3, 600, 7, 5
    X, y = rng.standard_normal((T, n, d)), rng.standard_normal((T, n))
    W, c = rng.standard_normal((T, h, d)), rng.standard_normal((T, h))
    W[1] *= 300.0                       # pre-activations up to ~±5000: the sigmoid must not overflow
    n_rows = np.array([600, 257, 31])   # several row blocks, padding, a block that is all padding
    assert shallow_numba.blocks_per_task(T, n) > 1
    want = shallow_reference.shallow_loss_grad(X, y, n_rows, W, c)
    got = shallow_numba.shallow_loss_grad(X, y, n_rows, W, c)
    for name, a, b in zip(("losses", "G", "gc"), want, got):
        assert np.isfinite(b).all()
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-14 * np.abs(a).max(), err_msg=name)


# ---------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("peft_name", [None, "lora", "lora_sym"])
def test_gradients_match_central_differences(backend, peft_name):
    rng = np.random.default_rng(2)
    d, rank = 4, 2
    tasks = _tasks(rng, d, (30, 23))
    parameterization = None if peft_name is None else peft.get(peft_name)
    x = {"A": rng.standard_normal((d, d)), "c": rng.standard_normal(d)}
    if parameterization is not None:
        x.update({k: rng.standard_normal(v.shape) for k, v in parameterization.init(rng, d, d, rank, 2).items()})
    names = list(x)
    objective = ShallowObjective(ShallowData(tasks, get_backend(backend), np.float64), parameterization, names)
    _, grads = objective.value_and_grad(x)
    step = 1e-6
    for name in names:
        numeric = np.zeros_like(x[name])
        for index in np.ndindex(x[name].shape):
            plus, minus = {k: v.copy() for k, v in x.items()}, {k: v.copy() for k, v in x.items()}
            plus[name][index] += step
            minus[name][index] -= step
            numeric[index] = (objective.value(plus) - objective.value(minus)) / (2 * step)
        np.testing.assert_allclose(grads[name], numeric, rtol=1e-6, atol=1e-8, err_msg=f"{backend} {peft_name} {name}")


def test_adamw_steps_are_torchs():
    """AdamW as torch.optim.AdamW: decoupled decay first, bias-corrected moments, eps outside the root."""
    g = np.array([0.3, -2.0, 1e-9])

    class Linear:  # F(x) = g·x: a constant gradient makes the moments easy to follow
        def value_and_grad(self, x):
            return float(g @ x["w"]), {"w": g.copy()}

    x0 = np.array([1.0, -1.0, 0.5])
    lr, wd, eps, (b1, b2) = 0.1, 0.01, 1e-8, (0.9, 0.999)
    monitor = optim.StallMonitor(None, 0.0, 2, 1.0, np.float64)
    x, n_iter, _ = optim.adam(Linear(), {"w": x0}, ["w"], monitor, max_iter=2, xp=np, decoupled=True, lr=lr,
                              weight_decay=wd)
    want = x0.copy()
    m = v = np.zeros(3)
    for t in (1, 2):
        want = want * (1 - lr * wd)
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        want = want - (lr / (1 - b1 ** t)) * m / (np.sqrt(v) / np.sqrt(1 - b2 ** t) + eps)
    assert n_iter == 2
    np.testing.assert_allclose(x["w"], want, rtol=1e-15)


# ---------------------------------------------------------------------------- solvers
def _relative_task_losses(res, prob):
    data = ShallowData(prob.tasks, get_backend("numpy"), np.float64)
    x = {"A": res.A, "c": res.shared["c"], **res.params}
    losses = ShallowObjective(data, res.peft, []).losses(x)
    return losses / np.array([0.5 * np.mean(task.y ** 2) for task in prob.tasks])


def test_lora_ml_fits_every_noise_free_task_and_standard_does_not():
    # d=5, n=100: measured over seeds 0-4 and d=4, every run reaches max_t L_t/L_t(0) <= 4e-3 (the
    # landscape has shallow spurious minima); this seed reaches 4e-6
    prob = make_shallow_problem(d=5, k=1, T=3, n=100, noise=0.0, seed=3, n_test_tasks=0)
    res = retrain_shallow(prob, method="lora-ml", seed=0, restarts=1)  # measured for one start (above)
    assert res.converged and res.info["optimizer"] == "lbfgs"
    assert res.params["B"].shape == (3, 5, 1) and res.shared["c"].shape == (5,)
    assert _relative_task_losses(res, prob).max() < 1e-4
    standard = retrain_shallow(prob, method="standard", seed=0, restarts=1)
    assert standard.params == {}
    assert _relative_task_losses(standard, prob).min() > 1e-2


def test_retraining_is_deterministic_by_seed():
    prob = make_shallow_problem(d=4, k=1, T=2, n=60, seed=5, n_test_tasks=0)
    a, b = (retrain_shallow(prob, seed=7, max_iter=200) for _ in range(2))
    np.testing.assert_array_equal(a.A, b.A)
    np.testing.assert_array_equal(a.shared["c"], b.shared["c"])
    np.testing.assert_array_equal(a.history, b.history)
    for name in a.params:
        np.testing.assert_array_equal(a.params[name], b.params[name])
    other = retrain_shallow(prob, seed=8, max_iter=200)
    assert not np.array_equal(other.A, a.A)


@needs_numba
def test_numba_and_numpy_backends_retrain_alike():
    prob = make_shallow_problem(d=4, k=1, T=2, n=80, seed=2, n_test_tasks=0)
    a = retrain_shallow(prob, backend="numpy", seed=0, max_iter=20, ftol=0.0)
    b = retrain_shallow(prob, backend="numba", seed=0, max_iter=20, ftol=0.0)
    assert (a.backend, b.backend) == ("numpy", "numba")
    np.testing.assert_allclose(b.history, a.history, rtol=1e-9)


def test_adamw_and_reptile_decrease_the_objective():
    prob = make_shallow_problem(d=4, k=1, T=2, n=60, seed=1, n_test_tasks=0)
    start = retrain_shallow(prob, solver="gd", max_iter=1, seed=0).history[0]
    adamw = retrain_shallow(prob, solver="gd", max_iter=300, seed=0)
    assert adamw.info["optimizer"] == "adamw" and adamw.info["weight_decay"] == 0.01 and adamw.n_iter == 300
    assert adamw.objective < 0.5 * start
    reptile = retrain_shallow(prob, method="reptile", max_iter=100, seed=0)
    assert reptile.solver is None and reptile.params == {} and reptile.history[-1] < reptile.history[0]


def test_finetune_trains_only_the_adapter():
    prob = make_shallow_problem(d=4, k=1, T=2, n=60, noise=0.05, seed=4, n_test_tasks=1)
    task = prob.test_tasks[0]
    ft = finetune_shallow((prob.A_star, prob.c_star), task, rank=1, seed=0, n_eval=500)
    lora = peft.get("lora")
    np.testing.assert_allclose(ft.delta, lora.delta(ft.params)[0], atol=1e-14)
    assert ft.loss == pytest.approx(task.loss(prob.A_star + ft.delta, prob.c_star), rel=1e-12)
    # from the truth, the rank-1 adapter can fit this task to its noise level
    assert ft.loss < 0.05 ** 2 and ft.test_loss < 0.01 and np.isfinite(ft.train_fit)
    user_task = ShallowTask(task.X, task.y)  # no ground truth: no test loss
    assert np.isnan(finetune_shallow((prob.A_star, prob.c_star), user_task, restarts=1).test_loss)


def test_evaluate_aligns_hidden_units_and_follows_the_paper_rank_rule():
    prob = make_shallow_problem(d=4, k=1, T=2, n=60, noise=0.05, seed=6, n_test_tasks=1)
    perm = np.array([2, 0, 3, 1])
    m = evaluate_shallow((prob.A_star[perm], prob.c_star[perm]), prob, n_eval=500)
    assert m["rel_err_A"] < 1e-15 and m["rel_err_c"] < 1e-15   # a permutation of units is the same network
    assert m["ft_rank"] == 3 == paper_ft_rank(1, 2) and paper_ft_rank(2, 3) == 2
    assert m["test_loss"] < 0.01 and len(m["test_loss_per_task"]) == 1
    A, c, found = align_hidden_units(prob.A_star[perm], prob.c_star[perm], prob.A_star, prob.c_star)
    np.testing.assert_array_equal(perm[found], np.arange(4))
    np.testing.assert_array_equal(A, prob.A_star)
    np.testing.assert_array_equal(c, prob.c_star)


# ---------------------------------------------------------------------------- the law
def test_truth_does_not_depend_on_n_noise_or_T():
    a = make_shallow_problem(d=5, k=2, T=3, n=50, noise=0.1, seed=11)
    b = make_shallow_problem(d=5, k=2, T=6, n=80, noise=0.3, seed=11)
    np.testing.assert_array_equal(a.A_star, b.A_star)
    np.testing.assert_array_equal(a.c_star, b.c_star)
    np.testing.assert_array_equal(a.U_star, b.U_star[:3])
    np.testing.assert_array_equal(a.tasks[2].W_star, a.A_star + a.U_star[2] @ a.U_star[2].T)
    np.testing.assert_array_equal(a.test_tasks[0].W_star, b.test_tasks[0].W_star)
    same_n = make_shallow_problem(d=5, k=2, T=3, n=50, noise=0.3, seed=11)
    np.testing.assert_array_equal(a.tasks[0].X, same_n.tasks[0].X)   # inputs are drawn before the noise
    np.testing.assert_allclose(a.tasks[0].y_clean, a.tasks[0].clean_labels(a.tasks[0].X), rtol=1e-15)
    assert not np.array_equal(a.A_star, make_shallow_problem(d=5, k=2, T=3, n=50, seed=12).A_star)
    assert a.model == "shallow" and a.new_task(3) is a.new_task(3)


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("call, word", [
    (lambda: ShallowTask(np.zeros((5, 3)), np.zeros((5, 2))), "y must hold one label"),
    (lambda: ShallowTask(np.zeros((5, 3)), np.zeros(4)), "same number of samples"),
    (lambda: make_shallow_problem(d=4, n=None), "n=None"),
    (lambda: make_shallow_problem(d=4, k=5), "k=5"),
    (lambda: retrain_shallow(make_shallow_problem(d=4, n=20), rank=5), "rank=5"),
    (lambda: retrain_shallow(make_shallow_problem(d=4, n=20), method="maml"), "method='maml'"),
    (lambda: retrain_shallow(make_shallow_problem(d=4, n=20), optimizer="sgd"), "optimizer='sgd'"),
    (lambda: retrain_shallow(make_shallow_problem(d=4, n=20), solver="als"), "solver='als'"),
    (lambda: retrain_shallow(make_shallow_problem(d=4, n=20), lr=0.1), "lr applies to"),
    (lambda: retrain_shallow(make_shallow_problem(d=4, n=20), method="reptile", optimizer="adamw"), "optimizer"),
    (lambda: retrain_shallow([np.zeros(3)]), "ShallowTask"),
    (lambda: evaluate_shallow((np.zeros((4, 4)), np.zeros(4)), make_shallow_problem(d=4, n=20, n_test_tasks=0)),
     "test tasks"),
])
def test_bad_input_names_the_argument(call, word):
    with pytest.raises(FastLoRAError, match=word.replace("(", r"\(").replace(")", r"\)")):
        call()


# ---------------------------------------------------------------------------- the baseline
def test_paper_baseline_uses_the_papers_loss_and_descends():
    from fastlora.baselines.paper_shallow import numpy_loss_grad, paper_shallow
    rng = np.random.default_rng(3)
    X, y = rng.standard_normal((2, 50, 4)), rng.standard_normal((2, 50))
    W, c = rng.standard_normal((2, 4, 4)), rng.standard_normal(4)
    mse, dW, dc = numpy_loss_grad(X, y, W, c)
    losses, G, gc = shallow_reference.shallow_loss_grad(X, y, np.array([50, 50]), W, np.stack([c, c]))
    for got, half in ((mse, losses), (dW, G), (dc, gc)):  # the paper's MSE is 2·L_t
        np.testing.assert_allclose(got, 2 * half, rtol=1e-12)
    out = paper_shallow(X, y, k=1, steps=200, record_every=199)
    assert out["objective"] < out["history"][0][1]
    assert out["B"].shape == (2, 4, 1)


def test_shared_parameterizations_are_refused_and_any_seed_kind_fine_tunes():
    """The shallow solvers carry per-task adapters only (a shared B, C once landed in res.params with
    no task axis); a SeedSequence seed once crashed the evaluation draw."""
    from fastlora.shallow import finetune_shallow
    prob = fl.make_problem(d=4, k=1, T=3, n=60, model="shallow", seed=0)
    with pytest.raises(ValueError, match="peft='tied_lora' has shared parameters"):
        fl.retrain(prob, peft="tied_lora", rank=1, max_iter=5)
    res = fl.retrain(prob, max_iter=20)
    same = [finetune_shallow(res, prob.test_tasks[0], n=10, seed=s, max_iter=20).test_loss
            for s in (np.random.SeedSequence(3), np.random.SeedSequence(3))]
    assert np.isfinite(same[0]) and same[0] == same[1]


# ---------------------------------------------------------------------------- the public functions
def test_the_public_functions_take_the_shallow_networks_arguments_by_position_and_name():
    """fastlora.api once dispatched on a positional slot: seeds given by position landed on another
    option, a list of task lists was sent to the linear model, and a test_tasks given by position
    was dropped."""
    p = fl.make_problem(d=4, k=1, T=2, n=40, noise=0.1, seed=0, model="shallow", n_test_tasks=2)
    q = fl.make_problem(d=4, k=1, T=2, n=40, noise=0.1, seed=1, model="shallow", n_test_tasks=2)
    by_position = fl.retrain_many([p, q], "lora-ml", "lora", 1, "auto", "auto", 15, None, [3, 4])
    by_name = [fl.retrain(x, max_iter=15, seed=s) for x, s in zip([p, q], [3, 4])]
    assert [r.objective for r in by_position] == [r.objective for r in by_name]
    assert by_position[0].objective != fl.retrain(p, max_iter=15, seed=0).objective  # the seed mattered
    from_lists = fl.retrain_many([p.tasks, q.tasks], rank=1, max_iter=15, seeds=[3, 4])
    assert [r.objective for r in from_lists] == [r.objective for r in by_name]
    r = by_name[0]
    one = p.test_tasks[:1]
    positional = fl.evaluate(r, p, None, 50, "lora", 0, None, one)
    assert len(positional["test_loss_per_task"]) == 1
    assert positional["test_loss"] == fl.evaluate(r, p, n_ft=50, test_tasks=one)["test_loss"]


def test_finetune_defaults_to_the_tasks_ground_truth_rank():
    p = fl.make_problem(d=5, k=2, T=2, n=40, noise=0.1, seed=0, model="shallow", n_test_tasks=1)
    r = fl.retrain(p, max_iter=10)
    task = p.test_tasks[0]
    assert task.k == 2 and task.sample(20, seed=1).k == 2
    assert fl.finetune(r, task, max_iter=5).params["B"].shape[-1] == 2
    with pytest.raises(FastLoRAError, match="rank is required"):
        fl.finetune(r, ShallowTask(task.X, task.y), max_iter=5)


@pytest.mark.parametrize("call, word", [
    (lambda p, r: fl.retrain_many(p), "problems must be a list"),
    (lambda p, r: fl.evaluate_many([r], p), "problems must be a list"),
    (lambda p, r: fl.finetune_many(r, p.test_tasks), "starts must be a list"),
    (lambda p, r: fl.finetune_many([r], p.test_tasks), "1 starts for 2 tasks"),
    (lambda p, r: fl.retrain_many([p, p], seeds=[1]), "seeds"),
    (lambda p, r: fl.evaluate_many([r], [p], test_tasks=p.test_tasks), "test_tasks"),
])
def test_the_many_functions_check_their_lists(call, word):
    p = fl.make_problem(d=4, k=1, T=2, n=40, noise=0.1, seed=0, model="shallow", n_test_tasks=2)
    r = fl.retrain(p, max_iter=5)
    with pytest.raises(FastLoRAError, match=word):
        call(p, r)


@pytest.fixture(scope="module")
def both_models():
    shallow = fl.make_problem(d=5, k=1, T=3, n=80, noise=0.1, seed=0, model="shallow", n_test_tasks=2)
    linear = fl.make_problem(d=5, k=1, T=3, n=80, noise=0.1, seed=0, n_test_tasks=2)
    return shallow, fl.retrain(shallow, restarts=1, max_iter=30), linear, fl.retrain(linear)


@pytest.mark.parametrize("call, word", [
    (lambda s, rs, lin, rl: fl.evaluate(rs, lin), "res was retrained by model='shallow'"),
    (lambda s, rs, lin, rl: fl.evaluate_many([rs], [lin]), r"results\[0\] was retrained by model='shallow'"),
    (lambda s, rs, lin, rl: fl.finetune(rs, lin.test_tasks[0], rank=1), "A was retrained by model='shallow'"),
    (lambda s, rs, lin, rl: fl.finetune(rl, s.test_tasks[0], rank=1), "A was retrained by model='linear'"),
    (lambda s, rs, lin, rl: fl.evaluate(rl, lin, foo=1), "fastlora.evaluate takes no argument 'foo'"),
    (lambda s, rs, lin, rl: fl.finetune(rl.A, lin.test_tasks[0], foo=1), "fastlora.finetune takes no argument 'foo'"),
    (lambda s, rs, lin, rl: fl.evaluate(rs, s, foo=1), r"evaluate \(model='shallow'\) takes no argument 'foo'"),
    (lambda s, rs, lin, rl: fl.evaluate_many([rs], [s], foo=1), "takes no argument 'foo'"),
    (lambda s, rs, lin, rl: fl.retrain(s, foo=1), r"fastlora.retrain \(model='shallow'\) takes no argument 'foo'"),
    (lambda s, rs, lin, rl: fl.evaluate(rs, s, rank_tol=-5.0), "rank_tol and noise_floor"),
    (lambda s, rs, lin, rl: fl.evaluate(rs, s, n_ft=None), "n_ft=None: the shallow network has no population"),
    (lambda s, rs, lin, rl: fl.evaluate(rs, s, n_ft="population"), "has no population fine-tuning"),
    (lambda s, rs, lin, rl: fl.evaluate(rs, s, test_tasks=s.test_tasks[0]), "test_tasks must be a list"),
    (lambda s, rs, lin, rl: fl.evaluate_many([rs], [s], test_tasks=s.test_tasks[:1]), r"test_tasks\[0\] must be"),
    (lambda s, rs, lin, rl: fl.retrain(s, peft_options=[1]), "peft_options must be a table"),
    (lambda s, rs, lin, rl: fl.retrain(s, solver="gd", optimizer="adam", betas=3), "betas must be a pair"),
    (lambda s, rs, lin, rl: fl.make_problem(d=4, n=20, noise=1e200, model="shallow"), r"noise=1e\+200 is out of"),
    (lambda s, rs, lin, rl: fl.evaluate_many([rl, rs], [lin, lin]), r"results\[1\] was retrained by model='shallow'"),
    (lambda s, rs, lin, rl: fl.finetune_many([rl, rs], lin.test_tasks, rank=1), r"starts\[1\] was retrained"),
    (lambda s, rs, lin, rl: fl.evaluate(rs, s, problem=s), r"besides its public arguments it takes: n_eval"),
    (lambda s, rs, lin, rl: fl.finetune_many([rs], s.test_tasks[:1], foo=1),
     r"fastlora.finetune_many \(model='shallow'\) takes no argument 'foo'"),
    (lambda s, rs, lin, rl: fl.finetune(rs, s.test_tasks[0], lr=0.1), r"lr applies to optimizer='adamw' or 'adam'"),
])
def test_the_public_functions_refuse_what_the_model_cannot_take(both_models, call, word):
    """Each once returned numbers (a shallow A scored as a linear W; rank_tol, n_ft=None ignored or
    redefined) or raised a raw TypeError."""
    with pytest.raises(FastLoRAError, match=word):
        call(*both_models)


def test_the_shallow_networks_own_options_reach_it_through_the_public_functions(both_models):
    shallow, res, _, _ = both_models
    ft = fl.finetune(res, shallow.test_tasks[0], solver="gd", optimizer="adam", lr=1e-3, max_iter=7)
    assert ft.n_iter == 7 and ft.optimizer == "adam"
    metrics = fl.evaluate(res, shallow, n_eval=50, ft_max_iter=3)
    assert np.isfinite(metrics["test_loss"])
    with pytest.raises(TypeError, match=r"^retrain\(\): multiple values for argument 'method'"):
        fl.retrain(shallow, "standard", method="standard")


def test_none_test_tasks_entries_and_results_that_do_not_name_their_model_are_taken_as_given(both_models):
    import dataclasses
    shallow, res, _, _ = both_models
    out = fl.evaluate_many([res, res], [shallow, shallow], n_ft=20, ft_max_iter=3,
                           test_tasks=[None, shallow.test_tasks[:1]])
    assert len(out[0]["test_loss_per_task"]) == 2 and len(out[1]["test_loss_per_task"]) == 1
    anonymous = dataclasses.replace(res, info={})  # a result built by hand: its model is that of the task
    assert anonymous.model is None
    assert fl.finetune(anonymous, shallow.test_tasks[0], max_iter=3).n_iter <= 3
