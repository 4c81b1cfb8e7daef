"""Real data under the paper's image protocol (fastlora.datasets): the split, standardisation
without leakage, metrics on held-out splits, seeding, errors, the optional extra, sweeps."""
import sqlite3
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from scipy.special import expit
from sklearn import datasets as sklearn_datasets  # the extra 'data', part of the extra 'test'

import fastlora as fl
from fastlora import datasets
from fastlora.cli import main
from fastlora.datasets import HeldOutTask, digit_pairs, labelled_tasks
from fastlora.datasets.digits import digits_arrays
from fastlora.errors import FastLoRAError
from fastlora.shallow import evaluate_shallow
from fastlora.shallow.scores import sign_accuracy
from fastlora.sweep import parse_spec


@pytest.fixture(scope="module")
def digits():
    return digit_pairs(seed=0)


def _source():
    data = sklearn_datasets.load_digits()
    return data.data.astype(float), data.target


# ---------------------------------------------------------------------------- the split
def test_the_split_is_the_papers(digits):
    _, labels = _source()
    assert (digits.d, digits.T, digits.k, digits.model) == (64, 4, 1, "shallow")
    assert [t.classes for t in digits.tasks] == [(0, 1), (2, 3), (4, 5), (6, 7)]
    assert [t.classes for t in digits.test_tasks] == [(8, 9)]
    for task in [*digits.tasks, *digits.test_tasks]:
        train, test = task.train_index, task.test_index
        assert not set(train) & set(test)                                   # disjoint parts
        everything = np.flatnonzero(np.isin(labels, task.classes))
        assert sorted([*train, *test]) == list(everything)                  # every sample of the pair, once
        # label = class mod 2 with odd -> +1, even -> -1, on both parts
        np.testing.assert_array_equal(task.y, np.where(labels[train] % 2 == 1, 1.0, -1.0))
        np.testing.assert_array_equal(task.y_test, np.where(labels[test] % 2 == 1, 1.0, -1.0))
        for cls in task.classes:                                            # 30% of each class held out
            assert np.sum(labels[test] == cls) == int(np.floor(0.3 * np.sum(labels == cls) + 0.5))
    assert digits.n == tuple(len(t.train_index) for t in digits.tasks)
    seen = np.concatenate([np.concatenate([t.train_index, t.test_index]) for t in digits.tasks])
    assert not np.isin(labels[seen], [8, 9]).any()                          # the test task's classes: never


def test_standardisation_uses_the_retraining_training_parts_only(digits):
    from sklearn.preprocessing import StandardScaler
    X_src, labels = _source()
    train_rows = np.concatenate([t.train_index for t in digits.tasks])
    scaler = StandardScaler().fit(X_src[train_rows])
    np.testing.assert_allclose(digits.mean, scaler.mean_, rtol=1e-12)
    np.testing.assert_allclose(digits.scale, scaler.scale_, rtol=1e-12)
    task = digits.test_tasks[0]
    np.testing.assert_allclose(task.X_test, scaler.transform(X_src[task.test_index]), rtol=1e-12, atol=1e-12)
    # changing every sample no statistic may read (held-out parts, the whole test task) changes nothing
    held = np.concatenate([*(t.test_index for t in digits.tasks), np.flatnonzero(np.isin(labels, [8, 9]))])
    X_other = X_src.copy()
    X_other[held] = 100.0 + 7.0 * X_other[held]
    other = labelled_tasks(X_other, labels, seed=0)
    np.testing.assert_array_equal(other.mean, digits.mean)
    np.testing.assert_array_equal(other.scale, digits.scale)
    np.testing.assert_array_equal(other.tasks[2].X, digits.tasks[2].X)


def test_a_constant_feature_keeps_scale_one_whatever_its_value():
    from sklearn.preprocessing import StandardScaler
    X = np.random.default_rng(0).standard_normal((40, 3))
    X[:, 1] = 0.1  # not exactly representable: its computed deviation is ~1e-17, not 0
    _, scale = datasets.protocol.standardization(X)
    np.testing.assert_allclose(scale, StandardScaler().fit(X).scale_, rtol=1e-12)
    assert scale[1] == 1.0


def test_retraining_never_reads_the_test_task():
    X_src, labels = _source()
    X_noise = X_src.copy()
    test_rows = np.isin(labels, [8, 9])
    X_noise[test_rows] = np.random.default_rng(5).uniform(0, 16, (test_rows.sum(), 64))
    results = [fl.retrain(labelled_tasks(X, labels, seed=3), method="lora-ml", peft="lora", max_iter=15)
               for X in (X_src, X_noise)]
    np.testing.assert_array_equal(results[0].A, results[1].A)
    np.testing.assert_array_equal(results[0].shared["c"], results[1].shared["c"])


def test_splits_follow_the_seed(digits):
    again, other = digit_pairs(seed=0), digit_pairs(seed=1)
    for a, b, c in zip(digits.tasks, again.tasks, other.tasks):
        np.testing.assert_array_equal(a.train_index, b.train_index)
        np.testing.assert_array_equal(a.X, b.X)
        assert set(a.test_index) != set(c.test_index)


def test_fine_tuning_samples_are_drawn_from_the_training_part_by_seed(digits):
    task = digits.test_tasks[0]
    first, same, other = task.sample(50, seed=3), task.sample(50, seed=3), task.sample(50, seed=4)
    assert first.n == 50 and set(first.train_index) <= set(task.train_index)
    assert len(set(first.train_index)) == 50                               # without replacement
    np.testing.assert_array_equal(first.X, same.X)
    assert set(first.train_index) != set(other.train_index)
    assert first.held_out[0] is task.X_test                                # scored on the same held-out part
    with pytest.raises(FastLoRAError, match=r"n=249 is more than the 248 samples"):
        task.sample(249)


def test_user_arrays_get_the_same_protocol():
    """Images (N, 2, 2) are flattened; labels -1 / +1 go by position in the pair (here both classes odd)."""
    rng = np.random.default_rng(0)
    labels = np.repeat([3, 5, 7, 9], 10)
    X = rng.standard_normal((40, 2, 2))
    prob = labelled_tasks(X, labels, pairs=[(3, 5)], test_pair=(9, 7), test_fraction=0.5, seed=2,
                          standardize=False)
    assert (prob.d, prob.T, prob.mean) == (4, 1, None)
    task, test = prob.tasks[0], prob.test_tasks[0]
    np.testing.assert_array_equal(task.y, np.where(labels[task.train_index] == 3, -1.0, 1.0))
    np.testing.assert_array_equal(test.y_test, np.where(labels[test.test_index] == 9, -1.0, 1.0))
    np.testing.assert_array_equal(task.X, X.reshape(40, 4)[task.train_index])
    assert (task.n, task.n_test) == (10, 10)


# ---------------------------------------------------------------------------- metrics without ground truth
@pytest.mark.parametrize("method", ["standard", "lora-ml", "reptile"])
def test_retrain_finetune_evaluate_score_the_held_out_split(digits, method):
    res = fl.retrain(digits, method=method, peft="lora", max_iter=10, seed=1)
    m = fl.evaluate(res, digits, ft_rank=1, n_ft=20, seed=4)
    ft = fl.finetune(res, digits.test_tasks[0], peft="lora", rank=1, n=20, seed=4, backend="auto")
    task = digits.test_tasks[0]
    prediction = expit(task.X_test @ (res.A + ft.delta).T) @ res.shared["c"]
    assert m["test_accuracy"] == ft.test_accuracy == np.mean(np.sign(prediction) == task.y_test)
    assert m["test_loss"] == ft.test_loss
    np.testing.assert_allclose(ft.test_loss, np.mean((prediction - task.y_test) ** 2), rtol=1e-12)
    assert m["metrics_available"] == ["test_loss", "test_accuracy", "train_fit"]
    assert np.isnan(m["rel_err_A"]) and "no ground truth" in m["metrics_note"]


def test_accuracy_needs_plus_minus_one_labels(digits):
    with pytest.raises(FastLoRAError, match=r"^labels: accuracy .* \{-1, \+1\}.*e\.g\. 0\.5"):
        sign_accuracy([1.0, -2.0], [1.0, 0.5])
    task = digits.test_tasks[0]
    real = HeldOutTask(task.X[:30], 0.5 * task.y[:30], task.X_test, 0.5 * task.y_test)   # labels ±0.5
    res = fl.retrain(digits, method="standard", max_iter=5)
    m = evaluate_shallow(res, None, ft_rank=1, n_ft=None, test_tasks=[real], ft_max_iter=5, ft_restarts=1)
    assert np.isnan(m["test_accuracy"]) and np.isfinite(m["test_loss"])
    assert m["metrics_available"] == ["test_loss", "train_fit"]
    assert "test_accuracy: NaN (the held-out labels of test task 0 are not all ±1)" in m["metrics_note"]
    with pytest.raises(FastLoRAError, match=r"^metrics: 'test_accuracy' cannot be computed .* not all ±1"):
        evaluate_shallow(res, None, ft_rank=1, test_tasks=[real], metrics=("test_accuracy",))
    with pytest.raises(FastLoRAError, match=r"^metrics='accuracy' is not allowed"):
        evaluate_shallow(res, None, ft_rank=1, test_tasks=[real], metrics="accuracy")


def test_evaluate_forwards_required_metrics(digits):
    res = fl.retrain(digits, method="standard", max_iter=5)
    with pytest.raises(FastLoRAError, match=r"^metrics: 'rel_err_A' cannot be computed"):
        fl.evaluate(res, digits, ft_rank=1, n_ft=10, metrics=("rel_err_A",))
    m = fl.evaluate(res, digits, ft_rank=1, n_ft=10, metrics=("test_accuracy",))
    assert 0.0 <= m["test_accuracy"] <= 1.0
    linear = fl.make_problem(d=6, k=1, T=3, n=None, seed=0)
    fit = fl.retrain(linear, method="standard", backend="numpy")
    with pytest.raises(FastLoRAError, match=r"^metrics='test_accuracy' is not allowed; choose one of 'rel_err_A'"):
        fl.evaluate(fit, linear, metrics=("test_accuracy",))
    for model_result, problem in ((res, digits), (fit, linear)):
        with pytest.raises(FastLoRAError, match=r"^metrics must be a name or a list of names"):
            fl.evaluate(model_result, problem, ft_rank=1, n_ft=10, metrics=5)
    with pytest.raises(FastLoRAError, match=r"^metrics: 'rel_err_A' cannot be computed"):
        fl.evaluate(fit, None, test_tasks=linear.test_tasks, metrics="rel_err_A")
    assert np.isfinite(fl.evaluate(fit, linear, metrics=("excess_risk",))["excess_risk"])


# ---------------------------------------------------------------------------- errors
def test_tasks_of_mismatched_width_are_refused():
    rng = np.random.default_rng(0)
    y = np.sign(rng.standard_normal(10))
    with pytest.raises(FastLoRAError, match=r"^X_test has 3 features .* d=4"):
        HeldOutTask(rng.standard_normal((10, 4)), y, rng.standard_normal((10, 3)), y)
    narrow = HeldOutTask(rng.standard_normal((10, 4)), y, rng.standard_normal((10, 4)), y)
    wide = HeldOutTask(rng.standard_normal((10, 5)), y, rng.standard_normal((10, 5)), y)
    with pytest.raises(FastLoRAError, match=r"same input dimension d; task 0 has 4, task 1 has 5"):
        fl.retrain([narrow, wide], method="standard", max_iter=2)


@pytest.mark.parametrize("kwargs, needle", [
    (dict(pairs=[(0, 1), (2, 3)], test_pair=(4, 5)), r"^pairs\[1\]=\(2, 3\): class 3 has no samples in labels"),
    (dict(pairs=[(0, 1)], test_pair=(4, 5)), r"^test_pair=\(4, 5\): class 5 has no samples"),
    (dict(pairs=[(0, 1)], test_pair=(1, 4)), r"^class 1 appears in both pairs\[0\] and test_pair"),
    (dict(pairs=[(0, 0)], test_pair=(2, 4)), r"^pairs\[0\]=\(0, 0\) must name two different classes"),
    (dict(pairs=[], test_pair=(2, 4)), r"^pairs must be a non-empty sequence"),
    (dict(test_fraction=1.0, pairs=[(0, 1)], test_pair=(2, 4)), r"^test_fraction=1.0 leaves no training"),
    (dict(k=9, pairs=[(0, 1)], test_pair=(2, 4)), r"^k=9 is too large; it must be <= 8"),
    (dict(model="linear", pairs=[(0, 1)], test_pair=(2, 4)), r"^model='linear' is not allowed"),
])
def test_bad_protocol_arguments_name_the_argument(kwargs, needle):
    labels = np.repeat([0, 1, 2, 4, 6], 4)          # classes 3 and 5 are empty
    X = np.random.default_rng(0).standard_normal((20, 8))
    with pytest.raises(FastLoRAError, match=needle):
        labelled_tasks(X, labels, **kwargs)


def test_bad_arrays_name_the_argument():
    X = np.zeros((6, 3))
    with pytest.raises(FastLoRAError, match=r"^labels must be integer class ids"):
        labelled_tasks(X, [0, 1, 0, 1, 2, 3.5], pairs=[(0, 1)], test_pair=(2, 3))
    with pytest.raises(FastLoRAError, match=r"^labels must hold one class id per sample of X, shape \(6,\)"):
        labelled_tasks(X, [0, 1, 0, 1], pairs=[(0, 1)], test_pair=(2, 3))
    with pytest.raises(FastLoRAError, match=r"^test_pair=\(2, 3\): class 2 has only 1 sample"):
        labelled_tasks(X, [0, 1, 0, 1, 2, 3], pairs=[(0, 1)], test_pair=(2, 3))


def test_unknown_dataset_names_the_argument(tmp_path):
    with pytest.raises(FastLoRAError, match=r"^dataset='mnist' is not allowed; choose one of 'digits'"):
        datasets.load("mnist")
    spec = tmp_path / "bad.toml"
    spec.write_text('name = "x"\n[grid]\nmethod = ["standard"]\n[fixed]\ndataset = "mnist"\n')
    result = CliRunner().invoke(main, ["sweep", str(spec), "--out", str(tmp_path / "x.sqlite")])
    assert result.exit_code == 2 and "dataset='mnist' is not allowed" in result.output, result.output


@pytest.mark.parametrize("fixed, needle", [
    ('dataset = "digits"\nd = 10', "key(s) d do not apply with 'dataset'"),
    ('dataset = "digits"\nmodel = "linear"', "model='linear' is not available"),
    ('dataset = "digits"\nsolver = "als"', "no ALS"),
    ('dataset = "digits"\nft_rank = 65', "ft_rank=65 is impossible with the 64 features"),
    ("test_fraction = 0.2", "test_fraction apply only to a spec with a 'dataset' key"),
])
def test_bad_dataset_specs_are_refused(fixed, needle):
    with pytest.raises(FastLoRAError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        parse_spec(f'name = "x"\n[grid]\nmethod = ["standard"]\n[fixed]\n{fixed}\n')


def test_missing_scikit_learn_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    digits_arrays.cache_clear()
    try:
        with pytest.raises(FastLoRAError, match=r"scikit-learn.*pip install 'fastlora\[data\]'"):
            digit_pairs()
    finally:
        digits_arrays.cache_clear()


def test_sweep_dataset_choices_are_the_loaders():
    from fastlora.options import OPTIONS
    assert set(OPTIONS["dataset"].choices) == set(datasets.LOADERS) == set(datasets.WIDTHS)
    assert datasets.dataset_width("digits") == digits_arrays()[0].shape[1]


# ---------------------------------------------------------------------------- sweeps
SPEC = """
name = "digits_tiny"
repeats = 2
[grid]
method = ["standard", "lora-ml", "reptile"]
[fixed]
dataset = "digits"
test_fraction = 0.25
peft = "lora"
n_ft = 10
max_iter = 4
"""


def _stored(path):
    with sqlite3.connect(path) as db:
        return db.execute("SELECT row_key, seed, method, status, test_accuracy, test_loss, objective FROM results "
                          "ORDER BY row_key").fetchall()


def test_a_dataset_spec_runs_through_fastlora_sweep_with_identical_rows_for_fixed_seeds(tmp_path):
    spec = tmp_path / "digits.toml"
    spec.write_text(SPEC)
    for out in ("a.sqlite", "b.sqlite"):
        result = CliRunner().invoke(main, ["sweep", str(spec), "--out", str(tmp_path / out), "--workers", "1"])
        assert result.exit_code == 0, result.output
    first, second = _stored(tmp_path / "a.sqlite"), _stored(tmp_path / "b.sqlite")
    assert first == second and len(first) == 6
    assert all(row[3] == "ok" and 0.0 <= row[4] <= 1.0 and row[5] > 0 for row in first)
    by_seed = {}
    for _, seed, method, *_ in first:
        by_seed.setdefault(seed, set()).add(method)
    assert list(by_seed.values()) == [{"standard", "lora-ml", "reptile"}] * 2   # methods share each split
    # a row equals the API's own numbers for its seed
    seed = first[0][1]
    ds = digit_pairs(seed=seed, test_fraction=0.25)
    res = fl.retrain(ds, method=first[0][2], peft="lora", max_iter=4, seed=seed)
    m = fl.evaluate(res, ds, n_ft=10, seed=seed)
    assert (m["test_accuracy"], m["test_loss"], res.objective) == first[0][4:]


def test_unknown_loader_arguments_and_bad_arrays_name_the_argument():
    with pytest.raises(FastLoRAError, match="'foo' is not an argument of dataset 'digits'; allowed: pairs"):
        datasets.load("digits", foo=1)
    with pytest.raises(FastLoRAError, match="X must be a 2-d array"):
        datasets.standardization(np.ones(5))
