"""Faults a new user hit: huge sizes, malformed environment, results that print or plot badly."""
import os
import subprocess
import sys
import time
import tracemalloc

import numpy as np
import pytest

import fastlora as fl
from fastlora import config
from fastlora.problems import problem_bytes

GB = 10**9


# -- huge sizes are refused before any work, naming the size and what to change ----------------
@pytest.mark.parametrize("kwargs,needle", [
    ({"d": 120000}, r"needs about 2\d\d GB of memory.*use a smaller d"),
    ({"d": 64, "T": 10**9}, r"needs about \d.* TB of memory.*smaller d, d_out, T"),
    ({"d": 2000, "T": 2000, "n": 100}, r"needs about .* GB.*population mode \(n=None"),
])
def test_problems_that_do_not_fit_in_memory_are_refused_at_once(monkeypatch, kwargs, needle):
    monkeypatch.setattr(config, "available_memory_bytes", lambda: 16 * GB)
    started = time.perf_counter()
    with pytest.raises(fl.FastLoRAError, match=needle) as info:
        fl.make_problem(**{"k": 2, **kwargs})
    assert "16 GB is available" in str(info.value)
    assert time.perf_counter() - started < 1.0  # refused before drawing anything


@pytest.mark.parametrize("method", ["standard", "lora-ml"])
def test_a_cpu_solve_that_does_not_fit_in_memory_is_refused_before_it_starts(monkeypatch, method):
    """Dense targets that share one array take little memory until the solve densifies them."""
    monkeypatch.setattr(config, "available_memory_bytes", lambda: 1 * GB)
    W = np.ones((1000, 1000))
    tasks = [fl.Task.population(W) for _ in range(200)]  # 8 MB shared; a (T, d, d) solve needs ≥ 1.6 GB
    started = time.perf_counter()
    with pytest.raises(fl.FastLoRAError, match=r"needs about .* of memory, but only 1.* is available"):
        fl.retrain(tasks, method=method, rank=1, backend="numpy")
    assert time.perf_counter() - started < 1.0


def test_raw_sampling_of_a_huge_n_is_refused_and_points_to_the_stats_sampler():
    started = time.perf_counter()
    with pytest.raises(fl.FastLoRAError, match=r"would draw 7.68e\+14 random normals.*sampler='stats'"):
        fl.make_problem(d=64, k=2, T=8, n=10**12)
    task = fl.make_problem(d=64, k=2, T=2).test_tasks[0]
    with pytest.raises(fl.FastLoRAError, match="sampler='stats'"):
        task.sample(10**12)
    assert time.perf_counter() - started < 1.0


def test_the_memory_estimate_bounds_what_make_problem_allocates():
    """Within [1x, 2.5x] of the measured peak, population and finite-sample alike — also with many
    tasks, whose statistics are drawn together (tasks.sample_many)."""
    import numba  # noqa: F401 - loaded, the first draw loads the compiled seed hash: not make_problem's memory
    fl.make_problem(d=2, k=1, T=1, seed=0)
    for kwargs in ({"d": 1000, "k": 4, "T": 32, "n": None}, {"d": 300, "k": 2, "T": 8, "n": 400, "noise": 0.1},
                   {"d": 600, "d_out": 900, "k": 3, "T": 16, "symmetric": False},
                   {"d": 200, "k": 2, "T": 128, "n": 300, "noise": 0.1},
                   {"d": 300, "k": 2, "T": 64, "n": 400, "noise": 0.1, "sampler": "stats"}):
        tracemalloc.start()
        fl.make_problem(**kwargs)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        d, d_out = kwargs["d"], kwargs.get("d_out", kwargs["d"])
        estimate = problem_bytes(d, d_out, kwargs["k"], kwargs["T"], kwargs.get("n"), 4,
                                 kwargs.get("symmetric", True), kwargs.get("sampler", "raw"))
        assert peak <= estimate <= 2.5 * peak, (kwargs, peak, estimate)


def test_legitimate_large_problems_stay_allowed(monkeypatch):
    # the README's d=4096, T=1024, k=8 population problem: ~0.5 GB to draw (its solve ~1.9 GB)
    assert 0.4 * GB < problem_bytes(4096, 4096, 8, 1024, None, 4, True) < 0.7 * GB
    monkeypatch.setattr(config, "available_memory_bytes", lambda: 1 * GB)
    prob = fl.make_problem(d=2048, k=8, T=256, n_test_tasks=0)  # ~0.1 GB
    assert prob.B_star.shape == (256, 2048, 8)


def test_available_memory_is_read_from_the_os_and_small_requests_never_ask(monkeypatch):
    available = config.available_memory_bytes()
    assert isinstance(available, int) and 0 < available
    with open("/proc/meminfo") as f:
        total = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemTotal:"))
    assert available <= total

    def fail():
        raise AssertionError("the OS must not be asked for a small request")
    monkeypatch.setattr(config, "available_memory_bytes", fail)
    config.require_memory(config.ALWAYS_ALLOWED_BYTES, "a small thing", "nothing")


# -- a malformed environment is reported where it is used, naming the variable ----------------
def _run(code_or_args, **env):
    environment = {k: v for k, v in os.environ.items() if not k.startswith("FASTLORA_")}
    environment.update(env)
    args = [sys.executable, "-c", code_or_args] if isinstance(code_or_args, str) else [sys.executable, *code_or_args]
    return subprocess.run(args, capture_output=True, text=True, env=environment, timeout=120, check=False)


@pytest.mark.parametrize("variable,value", [("FASTLORA_NUM_THREADS", "abc"), ("FASTLORA_NUM_THREADS", "0"),
                                            ("FASTLORA_BACKEND", "tpu")])
def test_a_malformed_variable_breaks_neither_import_nor_unrelated_commands(variable, value):
    done = _run("import fastlora as fl; print(fl.retrain(fl.make_problem(d=6, k=1, T=3), backend='numpy').n_iter > 0)",
                **{variable: value})
    assert done.returncode == 0 and done.stdout.split() == ["True"], done.stderr
    plugins = _run(["-m", "fastlora.cli", "plugins"], **{variable: value})
    assert plugins.returncode == 0 and "lora_sym" in plugins.stdout and "Traceback" not in plugins.stderr


def test_threads_from_a_malformed_variable_are_an_error_naming_it():
    done = _run(["-m", "fastlora.cli", "solve", "--d", "6", "--k", "1", "--T", "3", "--backend", "numba",
                 "--no-progress"], FASTLORA_NUM_THREADS="abc")
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in done.stderr
    assert lines[0].startswith("Error: FASTLORA_NUM_THREADS='abc' is not allowed; it must be a positive integer")


def test_a_malformed_default_backend_is_an_error_naming_the_variable():
    done = _run(["-m", "fastlora.cli", "solve", "--d", "6", "--k", "1", "--T", "3", "--no-progress"],
                FASTLORA_BACKEND="tpu")
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().startswith("Error: FASTLORA_BACKEND='tpu' is not a backend; choose one of 'auto'")


def test_settings_validate_on_use_and_on_assignment(monkeypatch):
    monkeypatch.setenv("FASTLORA_NUM_THREADS", "-2")
    monkeypatch.setenv("FASTLORA_BACKEND", "gpu")
    try:
        config.reset()
        with pytest.raises(fl.FastLoRAError, match="FASTLORA_NUM_THREADS='-2'"):
            _ = config.settings.num_threads
        with pytest.raises(fl.FastLoRAError, match="FASTLORA_BACKEND='gpu'"):
            fl.get_backend("auto")
        assert fl.get_backend("numpy").name == "numpy"  # an explicit backend does not read the variable
        config.settings.num_threads = 3
        assert config.settings.num_threads == 3
        with pytest.raises(fl.FastLoRAError, match="num_threads=0"):
            config.settings.num_threads = 0
    finally:
        monkeypatch.undo()
        config.reset()
    assert config.settings.num_threads is None or config.settings.num_threads >= 1


# -- results print short; a loss is never negative -------------------------------------------------
def test_finetune_result_prints_shapes_and_scalars_not_arrays():
    prob = fl.make_problem(d=40, k=2, T=3, seed=0)
    ft = fl.finetune(prob.A_star, prob.test_tasks[0], rank=2, n=100)
    text = repr(ft)
    assert text.startswith("FinetuneResult(params={B(1, 40, 2), C(1, 40, 2)}, delta(40, 40), loss=")
    assert f"excess_risk={ft.excess_risk:.6g}" in text and "array" not in text and len(text) < 200


def test_the_fine_tuning_loss_is_never_negative():
    """Noise-free data: L(A + Δ̂) = 0 exactly, but the expanded form s − ⟨W, C⟩ + ½⟨WΣ, W⟩ rounds to
    ±1e-14; Task.loss and the fine-tuning loss use the stable form (fastlora.tasks.quadratic_losses)."""
    prob = fl.make_problem(d=10, k=1, T=1, seed=0)
    expanded, stable, reported = [], [], []
    for task in prob.test_tasks:
        for seed in range(3):
            ft = fl.finetune(prob.A_star, task, rank=1, n=100, seed=seed)
            data = task.sample(100, seed=seed)
            W = prob.A_star + ft.delta
            expanded.append(data.s - np.sum(W * data.C) + 0.5 * np.sum((W @ data.Sigma) * W))
            stable.append(data.loss(W))
            reported.append(ft.loss)
    assert min(expanded) < 0  # the rounding this test is about
    assert min(stable) >= 0 and reported == pytest.approx(stable, rel=1e-12, abs=1e-30)
    assert max(reported) < 1e-12  # the rounding of the statistics themselves, ~eps·s


# -- adapt_rank in the theory's terms on noisy data --------------------------------------------------
def test_adapt_rank_counts_directions_above_the_estimation_noise():
    """n=5000, σ=0.01 (the paper's defaults): standard retraining needs (T+1)k, LoRA-ML k at T=5.
    Without the noise floor every method reads full rank d (what the demo showed before)."""
    prob = fl.make_problem(d=10, k=1, T=5, n=5000, noise=0.01, seed=1, n_test_tasks=3)
    standard = fl.retrain(prob, method="standard", backend="numpy")
    lora_ml = fl.retrain(prob, method="lora-ml", peft="lora_sym", rank=1, backend="numpy", max_iter=500, tol=1e-8)
    assert fl.evaluate(standard, prob)["adapt_rank"] == (prob.T + 1) * prob.k
    assert fl.evaluate(lora_ml, prob)["adapt_rank"] == prob.k
    assert fl.evaluate(lora_ml, prob, noise_floor=False)["adapt_rank"] == 10
    from fastlora.metrics import estimation_noise_floor
    assert estimation_noise_floor(0.01, 5000, 10, 10) == pytest.approx(2 * 0.01 * 2 * np.sqrt(10) / np.sqrt(5000))
    assert estimation_noise_floor(0.01, None, 10, 10) == 0.0 and estimation_noise_floor(0.0, 50, 10, 10) == 0.0


def test_adapt_rank_is_the_median_of_each_test_tasks_count_above_its_own_cut():
    """Each test task's rank counts the singular values of W*_t − A above rank_tol·‖W*_t‖₂ (its own cut); the
    metric is their median (a half with an even count of tasks), as np.median of the counts."""
    rng = np.random.default_rng(3)
    A = rng.standard_normal((6, 6))
    U = np.linalg.qr(rng.standard_normal((6, 6)))[0]
    gaps = ([1.0], [1.0, 0.5], [2.0, 1.0, 1e-3], [3.0, 2.0, 1.0, 0.5])  # ranks 1, 2, 2 (1e-3 under the cut), 4
    tasks = [fl.Task.population(A + (U[:, :len(g)] * g) @ U[:, :len(g)].T) for g in gaps]
    for chosen, median in (([0, 1], 1.5), ([0, 1, 2], 2.0), ([0, 3], 2.5), ([3, 0, 2, 1], 2.0), ([3, 1, 3], 4.0)):
        metrics = fl.evaluate(A, None, test_tasks=[tasks[i] for i in chosen], ft_rank=1, rank_tol=1e-2)
        assert metrics["adapt_rank"] == median
    # the cut is each task's own: a task whose perturbation is 1e3 times larger leaves the others' cuts alone
    big = fl.Task.population(A + 1e3 * (U[:, :1] @ U[:, :1].T))
    assert fl.evaluate(A, None, test_tasks=[big, tasks[1]], ft_rank=1, rank_tol=1e-2)["adapt_rank"] == 1.5


# -- plots: the paper's median-and-IQR figures, titles, integer ticks --------------------------------
def test_summarise_values_gives_mean_or_median_with_minmax_or_iqr_bands():
    from fastlora.sweep.plot import summarise_values
    v = [1.0, 2.0, 3.0, 4.0, 100.0]
    assert summarise_values(v) == (22.0, 1.0, 100.0)
    assert summarise_values(v, "median", "iqr") == (3.0, 2.0, 4.0)
    assert summarise_values(v, "median", "none") == (3.0, 3.0, 3.0)


@pytest.fixture(scope="module")
def small_store(tmp_path_factory):
    from fastlora.sweep import parse_spec, run_sweep
    spec = parse_spec('name = "p"\nrepeats = 3\n[grid]\nT = [1, 2, 3]\nmethod = ["standard", "lora-ml"]\n'
                      '[fixed]\nd = 6\nk = 1\nbackend = "numpy"\nmax_iter = 50\n')
    out = tmp_path_factory.mktemp("plot") / "s.sqlite"
    run_sweep(spec, out, workers=1, progress=False)
    return out


def test_plot_draws_the_chosen_statistic_band_title_and_integer_ticks(small_store, tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from fastlora.sweep import plot
    from fastlora.sweep.store import ResultsStore

    captured = {}
    monkeypatch.setattr(plt, "close", lambda fig: captured.setdefault("fig", fig))
    out = plot.plot_results(small_store, "T", "rel_err_A", hue="method", stat="median", band="iqr",
                            reference=("one", lambda x: np.ones_like(x)), out=tmp_path / "f.png")
    assert (tmp_path / "f.png").stat().st_size > 1000 and out.endswith("f.png")
    fig = captured["fig"]
    ax = fig.axes[0]
    with ResultsStore(small_store) as store:
        columns, rows = store.rows()
    i = {c: j for j, c in enumerate(columns)}
    lines = {line.get_label(): line for line in ax.get_lines()}
    for method in ("standard", "lora-ml"):
        expected = [np.median([r[i["rel_err_A"]] for r in rows if r[i["method"]] == method and r[i["T"]] == T])
                    for T in (1, 2, 3)]
        np.testing.assert_allclose(lines[method].get_ydata(), expected)
        assert np.all(np.abs(lines[method].get_xdata() - [1, 2, 3]) < 0.05)  # offset, but slightly
    assert not np.allclose(lines["standard"].get_xdata(), lines["lora-ml"].get_xdata())
    assert lines["standard"].get_marker() != lines["lora-ml"].get_marker()
    assert "one" in lines
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "3"]
    title = fig._suptitle.get_text()
    assert "d=6, k=1" in title and "median over 3 seed(s) per point; band: interquartile range" in title
    assert "backend" not in title


def test_plot_rejects_an_unknown_statistic_or_band(small_store, tmp_path):
    from fastlora.sweep.plot import plot_results
    with pytest.raises(fl.FastLoRAError, match="stat='mode' is not allowed"):
        plot_results(small_store, "T", "rel_err_A", hue="method", stat="mode", out=tmp_path / "f.png")
    with pytest.raises(fl.FastLoRAError, match="band='sd' is not allowed"):
        plot_results(small_store, "T", "rel_err_A", hue="method", band="sd", out=tmp_path / "f.png")


def test_a_boolean_variable_that_is_not_a_boolean_is_warned_about_naming_it(monkeypatch):
    monkeypatch.setenv("FASTLORA_ALLOW_TF32", "maybe")
    with pytest.warns(RuntimeWarning, match="FASTLORA_ALLOW_TF32='maybe' is not a boolean"):
        assert config._flag("FASTLORA_ALLOW_TF32") is False
    monkeypatch.setenv("FASTLORA_ALLOW_TF32", "Yes")
    assert config._flag("FASTLORA_ALLOW_TF32") is True


def test_a_dense_A_of_an_implicit_problem_is_refused_before_any_work(monkeypatch):
    """It used to be refused after the span reduction (~15 s at d = 100,000)."""
    from fastlora import planning as retrain_module
    monkeypatch.setattr(config, "available_memory_bytes", lambda: 1 * GB)

    def never(*args, **kwargs):
        raise AssertionError("the reduction was planned before the dense A was refused")

    monkeypatch.setattr(retrain_module, "plan_reduction", never)
    prob = fl.make_problem(d=20000, k=1, T=3, implicit=True, n_test_tasks=1)
    with pytest.raises(fl.FastLoRAError, match=r"a dense A for this implicit A\* \(d=20000\) needs about 9.6 GB.*"
                                               r"dense_A=False"):
        fl.retrain(prob, backend="numpy")


def test_evaluating_a_large_implicit_problem_never_regenerates_A_star(monkeypatch):
    """A − A* is low-rank there; only ‖A*‖_F needed A*, now taken from its law beyond EXACT_NORM_MAX_DIM."""
    from fastlora import implicit, metrics
    generated = []
    draw = implicit.SeededSymmetricGaussian._G
    monkeypatch.setattr(implicit.SeededSymmetricGaussian, "_G",
                        lambda self, r, c: generated.append(1) or draw(self, r, c))
    d = metrics.EXACT_NORM_MAX_DIM + 1
    prob = fl.make_problem(d=d, k=1, T=3, implicit=True, n_test_tasks=1)
    res = fl.retrain(prob, backend="numpy", dense_A=False)
    m = fl.evaluate(res, prob)
    assert not generated
    assert m["rel_err_A"] < 1e-8 and m["adapt_rank"] == 1
    assert abs(metrics.frobenius_norm(prob.A_star) / np.sqrt(prob.A_star.expected_frobenius_sq()) - 1) < 1e-12


def test_evaluate_many_returns_one_results_rank_error_and_goes_on(monkeypatch):
    """The adaptation ranks of all results are computed together; one result's failure there is that
    result's entry under errors="return" (the others are evaluated), and raised under "raise"."""
    from fastlora import metrics
    population = fl.make_problem(d=8, k=1, T=3, seed=0)
    finite = fl.make_problem(d=8, k=1, T=3, n=200, noise=0.01, seed=1, sampler="stats")
    results = [fl.retrain(population, method="lora-ml", dense_A=False), fl.retrain(finite, method="lora-ml")]
    assert isinstance(results[0].A, fl.linop.LowRankUpdate)  # its ranks: per task, through _adaptation_rank
    assert not isinstance(results[1].A, fl.linop.LowRankUpdate)  # its ranks: the batched SVDs
    expected = fl.evaluate_many(results, [population, finite], n_ft=50, seeds=[3, 4])

    def failing(*args):
        raise fl.FastLoRAError("no rank here")
    monkeypatch.setattr(metrics, "_adaptation_rank", failing)  # the structured result's path only
    got = fl.evaluate_many(results, [population, finite], n_ft=50, seeds=[3, 4], errors="return")
    assert isinstance(got[0], fl.FastLoRAError) and got[1] == expected[1]
    with pytest.raises(fl.FastLoRAError, match="no rank here"):
        fl.evaluate_many(results, [population, finite], n_ft=50, seeds=[3, 4])
