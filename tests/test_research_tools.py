"""Identifiability diagnostics (evaluate, census), restarts, Reptile's shallow budget, plots for few
seeds, sweep --dry-run and the conflicting-task real-data protocol."""
import warnings

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import TINY_SPEC, lines_without_notes

import fastlora as fl
from fastlora.cli import main
from fastlora.errors import FastLoRAError, RegimeWarning
from fastlora.sweep import parse_spec, run_sweep


def quiet_parse(text):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RegimeWarning)
        return parse_spec(text)


# ------------------------------------------------------------------------------------ identified
def test_evaluate_says_whether_a_was_identified_and_why():
    prob = fl.make_problem(d=8, k=1, T=3, n=None, seed=2)
    exact = fl.evaluate(fl.retrain(prob, rank=1), prob)
    assert exact["identified"] is True and exact["identification"] == "A = A*"
    wide = fl.evaluate(fl.retrain(prob, rank=2), prob)
    assert wide["rel_err_A"] > 1e-3 and wide["objective"] < 1e-12
    assert wide["identified"] is False and wide["identification"] == "at the floor, A ≠ A*"
    stopped = fl.evaluate(fl.retrain(prob, rank=2, solver="gd", optimizer="gd", max_iter=3), prob)
    assert stopped["identified"] is None and stopped["identification"] == "above the floor: not converged"
    standard = fl.evaluate(fl.retrain(prob, method="standard"), prob)
    assert standard["identified"] is False and standard["identification"] == "converged, A ≠ A*"


def test_two_tasks_reach_the_floor_without_identifying_a_star():
    prob = fl.make_problem(d=8, k=1, T=2, n=None, seed=0)
    m = fl.evaluate(fl.retrain(prob, rank=1), prob)
    assert m["identified"] is False and m["identification"] == "at the floor, A ≠ A*"


def test_noisy_samples_are_judged_against_their_estimation_error():
    from fastlora.identify import identification_tolerance
    prob = fl.make_problem(d=10, k=1, T=3, n=5000, noise=0.01, seed=0)
    m = fl.evaluate(fl.retrain(prob, rank=1), prob)
    assert 1e-6 < m["rel_err_A"] < identification_tolerance(prob) and m["identified"] is True
    wide = fl.evaluate(fl.retrain(prob, rank=2), prob)
    assert wide["rel_err_A"] > identification_tolerance(prob) and wide["identified"] is False
    assert identification_tolerance(fl.make_problem(d=10, k=1, T=3, n=None)) == 1e-6


def test_the_shallow_network_is_not_judged():
    prob = fl.make_problem(d=4, k=1, T=3, n=40, noise=0.1, seed=0, model="shallow", n_test_tasks=1)
    m = fl.evaluate(fl.retrain(prob, restarts=1, max_iter=20), prob, n_ft=10)
    assert m["identified"] is None and "not judged" in m["identification"]


def test_a_census_at_rank_above_k_records_each_start_and_flags_global_minima_that_miss_a_star():
    from fastlora.landscape import census, landscape_metrics
    prob = fl.make_problem(d=6, k=1, T=3, n=None, seed=1)
    wide = census(prob, rank=2, n_starts=6, seed=1, backend="numpy")
    assert wide.counts["global"] == 6
    assert wide.global_split == {"of which A = A*": 0, "of which A ≠ A*": 6}
    assert all(r["rel_err_A"] > 1e-3 and r["recovers_A"] is False for r in wide.records)
    assert "  of which A ≠ A*" in wide.table()
    exact = census(prob, rank=1, n_starts=6, seed=1, backend="numpy")
    assert exact.global_split == {"of which A = A*": 6, "of which A ≠ A*": 0}
    metrics = landscape_metrics(prob, n_starts=4, rank=2, seed=1, backend="numpy")
    assert metrics["global_fraction"] == 1.0 and metrics["global_unidentified_fraction"] == 1.0
    assert metrics["global_identified_fraction"] == 0.0


def test_sweep_rows_carry_identified_and_census_splits(tmp_path):
    spec = quiet_parse(TINY_SPEC.replace("T = [2, 3]", "T = [3]\nrank = [1, 2]").replace(
        'method = ["standard", "lora-ml"]', 'method = ["lora-ml"]').replace("n = 400", 'n = "population"')
        .replace("max_iter = 200", 'max_iter = 1000\nn_starts = 3\nsolver = "gd"\noptimizer = "lbfgs"'))
    out = tmp_path / "r.sqlite"
    assert run_sweep(spec, out, workers=1, progress=False).failed == 0
    rows = fl.load_results(out)
    exact, wide = rows[rows["rank"] == 1], rows[rows["rank"] == 2]
    assert set(exact["identified"]) == {1} and set(wide["identified"]) == {0}
    assert set(wide["identification"]) == {"at the floor, A ≠ A*"}
    assert set(wide["global_unidentified_fraction"]) == {1.0} and set(exact["global_identified_fraction"]) == {1.0}


# ------------------------------------------------------------------------------------ restarts
def test_shallow_restarts_keep_the_best_objective_and_count_who_reached_it():
    from fastlora.shallow import retrain_shallow
    prob = fl.make_problem(d=5, k=1, T=3, n=80, noise=0.1, seed=1, model="shallow", n_test_tasks=0)
    res = retrain_shallow(prob, method="lora-ml", restarts=4, seed=3, max_iter=150)
    objectives = res.info["restart_objectives"]
    assert len(objectives) == 4 and res.objective == min(objectives)
    assert objectives[res.info["kept_start"]] == res.objective
    assert 1 <= res.info["restarts_reached"] <= 4
    resolution = res.objective * np.sqrt(2 / (3 * 80))
    assert res.info["restarts_reached"] == sum(v - res.objective <= resolution for v in objectives)
    alone = [retrain_shallow(prob, method="lora-ml", restarts=1, seed=s, max_iter=150).objective for s in range(4)]
    assert len(set(np.round(alone, 12))) > 1  # starts differ: keeping the best matters


def test_linear_restarts_report_the_start_they_kept():
    """kept_start was once looked up with list.index, which compares results with == (an array
    comparison that raised) instead of finding the kept result itself."""
    prob = fl.make_problem(d=6, k=2, T=3, n=40, noise=0.3, seed=0)
    res = fl.retrain(prob, restarts=4, seed=0, solver="gd", max_iter=30)
    objectives = res.info["restart_objectives"]
    assert res.info["kept_start"] == int(np.argmin(objectives)) != 0 and res.objective == min(objectives)


def test_shallow_default_restarts_follow_the_method():
    from fastlora.options import OPTIONS
    prob = fl.make_problem(d=4, k=1, T=2, n=30, noise=0.1, seed=0, model="shallow", n_test_tasks=0)
    assert fl.retrain(prob, method="lora-ml", max_iter=5).info["restarts"] == 8
    assert OPTIONS["restarts"].default_for("lora-ml", "shallow") == 8
    assert fl.retrain(prob, method="standard", max_iter=5).info["restarts"] == 1
    assert fl.retrain(prob, method="lora-ml", max_iter=5, restarts=2).info["restarts"] == 2
    with pytest.raises(FastLoRAError, match="restarts"):
        fl.retrain(prob, restarts=0)


def test_linear_restarts_run_seeded_starts_in_one_batch_and_keep_the_best():
    prob = fl.make_problem(d=6, k=1, T=3, n=None, seed=0)
    res = fl.retrain(prob, rank=1, solver="gd", init_A="zeros", restarts=3, seed=5, backend="numpy")
    assert len(res.info["restart_objectives"]) == 3 and res.objective == min(res.info["restart_objectives"])
    first = fl.retrain(prob, rank=1, solver="gd", init_A="zeros", seed=5, backend="numpy")
    assert res.info["restart_objectives"][0] == first.objective  # start 0 is the plain call
    with pytest.raises(FastLoRAError, match="callback"):
        fl.retrain(prob, restarts=2, callback=lambda *a: None)
    many = fl.retrain_many([prob, prob], restarts=2, seeds=[1, 2], backend="numpy")
    assert [r.info["restarts"] for r in many] == [2, 2]


def test_shallow_reptile_stops_at_its_budget_and_says_so():
    prob = fl.make_problem(d=5, k=1, T=3, n=200, noise=0.1, seed=0, model="shallow", n_test_tasks=0)
    res = fl.retrain(prob, method="reptile", tol=1e-14)
    assert res.n_iter == 500 and not res.converged
    assert "Reptile's budget" in res.message and "still moved" in res.message


# ------------------------------------------------------------------------------------ plots
@pytest.fixture(scope="module")
def five_seed_store(tmp_path_factory):
    spec = quiet_parse(TINY_SPEC.replace("repeats = 2", "repeats = 5").replace("T = [2, 3]", "T = [3, 4]\n"
                                                                               "rank = [1, 2]"))
    out = tmp_path_factory.mktemp("plots") / "s.sqlite"
    run_sweep(spec, out, workers=1, progress=False)
    return out


def captured_figure(monkeypatch):
    import matplotlib.pyplot as plt
    captured = {}
    monkeypatch.setattr(plt, "close", lambda fig: captured.setdefault("figure", fig))
    return captured


def test_few_seeds_default_to_the_median_and_interquartile_band_and_the_legend_says_so(five_seed_store, tmp_path,
                                                                                       monkeypatch):
    from fastlora.sweep.plot import plot_results
    captured = captured_figure(monkeypatch)
    plot_results(five_seed_store, "T", "excess_risk", hue="method", where=["rank=1"], out=tmp_path / "f.png")
    fig = captured["figure"]
    assert "median over 5 seed(s) per point; band: interquartile range" in fig._suptitle.get_text()
    assert fig.axes[0].get_legend().get_title().get_text() == "method — median, IQR band"
    rows = fl.load_results(five_seed_store)
    line = {ln.get_label(): ln for ln in fig.axes[0].get_lines()}["standard"]
    wanted = [np.median(rows[(rows.method == "standard") & (rows["T"] == T) & (rows["rank"] == 1)].excess_risk)
              for T in (3, 4)]
    np.testing.assert_allclose(line.get_ydata(), wanted)


def test_ten_seeds_default_to_the_mean_and_min_max_band():
    from fastlora.sweep.plot import resolve_stat
    assert resolve_stat("auto", "auto", 9) == ("median", "iqr")
    assert resolve_stat("auto", "auto", 10) == ("mean", "minmax")
    assert resolve_stat("mean", "auto", 3) == ("mean", "iqr")


def test_a_condition_as_y_draws_the_fraction_of_seeds_meeting_it(five_seed_store, tmp_path, monkeypatch):
    from fastlora.sweep.plot import plot_results
    captured = captured_figure(monkeypatch)
    plot_results(five_seed_store, "T", "rel_err_A < 1e-3", hue="rank", where=["method=lora-ml"],
                 out=tmp_path / "f.png")
    fig = captured["figure"]
    rows = fl.load_results(five_seed_store)
    rows = rows[rows.method == "lora-ml"]
    lines = {ln.get_label(): ln for ln in fig.axes[0].get_lines()}
    for rank in (1, 2):
        wanted = [np.mean(rows[(rows["rank"] == rank) & (rows["T"] == T)].rel_err_A < 1e-3) for T in (3, 4)]
        np.testing.assert_allclose(lines[str(rank)].get_ydata(), wanted)
    assert "fraction of 5 seed(s) per point with rel_err_A < 1e-3" in fig._suptitle.get_text()
    with pytest.raises(FastLoRAError, match="--stat and --band do not apply"):
        plot_results(five_seed_store, "T", "rel_err_A < 1e-3", stat="median", where=["method=lora-ml"],
                     hue="rank", out=tmp_path / "g.png")
    with pytest.raises(FastLoRAError, match="'nope' is not a column"):
        plot_results(five_seed_store, "T", "nope < 1", out=tmp_path / "g.png")
    # a condition on a fine-tuning metric keeps the fine-tuning settings in the title, as the metric does;
    # a selection on a metric is stated
    captured.clear()
    plot_results(five_seed_store, "T", "excess_risk < 1", hue="method", where=["rank=1", "converged=1", "in_regime=1"],
                 out=tmp_path / "h.png")
    title = captured["figure"]._suptitle.get_text()
    assert "n_ft=50" in title and "only rows with converged=1, in_regime=1" in title, title


def test_a_relation_as_hue_splits_the_rows_where_it_holds(five_seed_store, tmp_path, monkeypatch):
    captured = captured_figure(monkeypatch)
    result = CliRunner().invoke(main, ["plot", str(five_seed_store), "--x", "T", "--y", "identified",
                                       "--hue", "rank = k", "--where", "method=lora-ml", "-o",
                                       str(tmp_path / "f.png")])
    assert result.exit_code == 0, result.output
    lines = {ln.get_label(): ln for ln in captured["figure"].axes[0].get_lines()}
    assert set(lines) == {"rank = k", "not rank = k"}
    np.testing.assert_allclose(lines["rank = k"].get_ydata(), [1.0, 1.0])  # T ≥ 3, r = k: identified


# ------------------------------------------------------------------------------------ dry run
def test_dry_run_counts_rows_retrainings_and_points_outside_the_regime(tmp_path):
    from fastlora.sweep.dryrun import dry_run
    text = TINY_SPEC.replace("T = [2, 3]", "T = [2, 3]\nn_ft = [20, 40]").replace("n_ft = 50\n", "")
    spec = quiet_parse(text)
    report = dry_run(spec, time_budget=5.0)
    assert (report.points, report.rows, report.pending) == (8, 16, 16)
    assert report.retrainings == 8  # rows that differ only in n_ft share one retraining per seed
    assert len(report.outside) == 4  # T = 2, both methods, both n_ft
    assert report.timed and report.estimate_seconds > 0 and report.row_bytes > 0
    out = tmp_path / "r.sqlite"
    run_sweep(quiet_parse(text.replace("repeats = 2", "repeats = 1")), out, workers=1, progress=False)
    again = dry_run(spec, out, time_budget=5.0)
    assert (again.pending, again.retrainings, again.pairing) == (8, 4, "paired")


def test_dry_run_leaves_compiling_out_of_its_timings(monkeypatch):
    """An empty kernel cache: a kind's first rows compile (seconds, once a sweep); the estimate is of warm rows,
    without timing anything twice (a new user's dry run said ~16.8 h for a one-minute sweep)."""
    import time as clock

    from fastlora.compilation import slow_work_notice
    from fastlora.sweep import dryrun, runner
    calls = []

    def rows_compiling_once(rows):
        method = rows[0]["point"]["method"]
        if method not in calls:  # each kind's first rows, the warm-up's included: compiling
            with slow_work_notice("compiling (a test's stand-in)", after=60):
                clock.sleep(1.5)
        calls.append(method)
        clock.sleep(0.01)
        return []
    monkeypatch.setattr(runner, "run_rows", rows_compiling_once)
    report = dryrun.dry_run(quiet_parse(TINY_SPEC), time_budget=5.0)
    assert report.timed and all(seconds < 0.5 for _, seconds in report.timed), report.timed
    assert 0 < report.estimate_seconds < 5.0
    assert calls.count("standard") + calls.count("lora-ml") == len(calls) <= 1 + 2 * dryrun.TIMED_KEYS  # none twice


def test_dry_run_durations_read_in_their_unit():
    from fastlora.sweep.dryrun import _duration
    assert [_duration(s) for s in (0.0, 0.0123, 0.9994, 0.9995, 42, 600, 7200)] == [
        "0 ms", "12.3 ms", "999 ms", "1 s", "42 s", "10.0 min", "2.0 h"]


def test_dry_run_from_the_command_line_writes_nothing(tmp_path):
    spec = tmp_path / "spec.toml"
    spec.write_text(TINY_SPEC)
    out = tmp_path / "never.sqlite"
    result = CliRunner().invoke(main, ["sweep", str(spec), "--dry-run", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "8 row(s), 8 to run; 8 distinct retraining(s); pairing 'paired'" in result.output
    assert "outside the theorem's regime: 2 point(s)" in result.output and "estimate: ~" in result.output
    assert not out.exists()
    missing = CliRunner().invoke(main, ["sweep", str(spec)])
    lines = lines_without_notes(missing.output)
    assert missing.exit_code == 2 and lines == ["Error: --out is required: the results store to create or resume "
                                                "(or pass --dry-run)"]


# ------------------------------------------------------------------------------------ real data
def test_the_partitions_protocol_shows_every_class_to_every_task_and_holds_one_labelling_out():
    from fastlora.datasets import DIGIT_PARTITIONS, digit_partitions, load
    from fastlora.datasets.digits import digits_arrays
    ds = digit_partitions(seed=3)
    _, labels = digits_arrays()
    assert ds.protocol == "partitions" and ds.T == 4 and ds.n == (300,) * 4
    test = ds.test_tasks[0]
    assert not set(test.train_index) & set(test.test_index)
    for task, members in zip(ds.tasks, DIGIT_PARTITIONS):
        assert set(labels[task.train_index]) == set(range(10))  # every digit in every task
        np.testing.assert_array_equal(task.y, np.where(np.isin(labels[task.train_index], members), 1.0, -1.0))
        assert set(task.train_index) <= set(test.train_index)  # one shared pool
        np.testing.assert_array_equal(task.X_test, test.X_test)  # one held-out part, labelled per task
    assert tuple(test.classes) not in DIGIT_PARTITIONS
    assert not np.array_equal(ds.tasks[0].train_index, digit_partitions(seed=4).tasks[0].train_index)
    assert load("digits-partitions", seed=3, n_per_task=100).n == (100,) * 4
    with pytest.raises(FastLoRAError, match="labels the classes as test_partition does"):
        digit_partitions(partitions=[(0, 1, 2, 3, 4), (5, 6, 7, 8, 9)], test_partition=(0, 1, 2, 3, 4))


def test_partition_tasks_conflict_where_class_pairs_do_not():
    from fastlora.datasets import digit_pairs, digit_partitions
    pairs = fl.retrain(digit_pairs(seed=0), method="standard", restarts=1, max_iter=300)
    partitions = fl.retrain(digit_partitions(seed=0), method="standard", restarts=1, max_iter=300)
    assert pairs.objective < 0.05 < 0.3 < partitions.objective  # one network fits the pairs, not the partitions


def test_a_spec_takes_the_partitions_dataset():
    spec = quiet_parse('name = "p"\n[grid]\nmethod = ["standard"]\n[fixed]\ndataset = "digits-partitions"\n'
                       'ft_rank = 1\nn_ft = 20\nmax_iter = 5\n')
    assert spec.points()[0]["dataset"] == "digits-partitions"
    with pytest.raises(FastLoRAError, match="n_ft=5000 is more than"):
        parse_spec('name = "p"\n[grid]\nmethod = ["standard"]\n[fixed]\ndataset = "digits-partitions"\n'
                   'n_ft = 5000\n')


def test_a_key_that_follows_the_hue_is_stated_in_the_title(tmp_path, monkeypatch):
    """Rows resolve keys per method (a shallow sweep's restarts: 8 for LoRA-ML, 1 otherwise); such a key
    needs no --where: the title says it per hue value."""
    from fastlora.sweep.plot import plot_results
    text = ('name = "h"\nrepeats = 2\n[[grid]]\nT = [3, 4]\nmethod = ["standard"]\nmax_iter = [100]\n'
            '[[grid]]\nT = [3, 4]\nmethod = ["lora-ml"]\nmax_iter = [200]\n'
            '[fixed]\nd = 6\nk = 1\nn = 300\nnoise = 0.05\nn_ft = 30\nbackend = "numpy"\n')
    out = tmp_path / "h.sqlite"
    run_sweep(quiet_parse(text), out, workers=1, progress=False)
    captured = captured_figure(monkeypatch)
    plot_results(out, "T", "excess_risk", hue="method", out=tmp_path / "f.png")
    assert "max_iter per method: lora-ml→200, standard→100" in captured["figure"]._suptitle.get_text()
    with pytest.raises(FastLoRAError, match=r"key '(max_iter|method)' varies"):
        plot_results(out, "T", "excess_risk", out=tmp_path / "g.png")


def test_dry_run_cost_model_keeps_a_rows_fixed_cost():
    """Two timed sizes of a kind: a fixed plus a proportional cost (proportional scaling alone multiplied a
    row's fixed overhead: a 1200-row estimate read ~5x the sweep); one size: proportional; never negative."""
    from fastlora.sweep.dryrun import _cost_model
    model = _cost_model([(1.0, 1.1), (10.0, 2.0)])
    assert model(5.0) == pytest.approx(1.5) and model(100.0) == pytest.approx(11.0)
    assert _cost_model([(2.0, 4.0)])(5.0) == pytest.approx(10.0)
    assert _cost_model([(1.0, 3.0), (10.0, 1.0)])(50.0) == pytest.approx(2.0)  # larger timed faster: the mean
    through_origin = _cost_model([(1.0, 0.5), (10.0, 20.0)])  # a negative fixed part: proportional instead
    assert through_origin(0.0) == 0.0 and through_origin(10.0) > 0
