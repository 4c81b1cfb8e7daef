"""Paired ground truth across grid points (sweep.spec): the same truth across n within a repeat, a
new one across repeats; other rules a spec can name; a store keeps the rule it was made with (an old
store resumes with the old rule); resolved defaults in every row; regime flags."""
import sqlite3
import warnings

import numpy as np
import pytest
from helpers import TINY_SPEC

import fastlora as fl
from fastlora.errors import FastLoRAError, RegimeWarning, StoreConflictError
from fastlora.sweep import load_results, parse_spec, run_sweep
from fastlora.sweep.spec import problem_args

VARY_N = """
name = "pairs"
repeats = 3
[grid]
n = [200, 2000]
noise = [0.01, 0.1]
method = ["standard", "lora-ml"]
[fixed]
d = 6
k = 1
T = 3
n_ft = 50
backend = "numpy"
max_iter = 200
"""


def quiet_parse(text):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RegimeWarning)
        return parse_spec(text)


def problem_of(row):
    return fl.make_problem(**problem_args(row["point"], row["seed"], row["truth_seed"]))


def test_paired_rows_share_the_truth_across_n_and_noise_and_differ_across_repeats():
    rows = quiet_parse(VARY_N).rows()
    assert {r["pairing"] for r in rows} == {"paired"}
    by_repeat = {}
    for row in rows:
        by_repeat.setdefault(row["repeat"], []).append(row)
    truths = {}
    for repeat, group in by_repeat.items():
        assert len({r["truth_seed"] for r in group}) == 1  # one truth per repeat across n, noise and method
        assert len({r["seed"] for r in group}) == 4  # samples: one draw per (n, noise)
        first, other = problem_of(group[0]), problem_of(next(r for r in group if r["point"]["n"] == 2000))
        np.testing.assert_array_equal(first.A_star, other.A_star)
        np.testing.assert_array_equal(first.B_star, other.B_star)
        np.testing.assert_array_equal(first.test_tasks[0].W_star, other.test_tasks[0].W_star)
        truths[repeat] = first.A_star
    assert not np.allclose(truths[0], truths[1]) and not np.allclose(truths[1], truths[2])


def test_methods_at_one_point_share_both_seeds():
    rows = quiet_parse(VARY_N).rows()
    key = lambda r: (r["point"]["n"], r["point"]["noise"], r["repeat"])  # noqa: E731
    seen = {}
    for row in rows:
        seen.setdefault(key(row), set()).add((row["seed"], row["truth_seed"]))
    assert all(len(pairs) == 1 for pairs in seen.values())


def test_fresh_pairing_draws_a_new_truth_per_value_of_its_keys():
    rows = quiet_parse(VARY_N.replace("repeats = 3", 'repeats = 3\npairing = "fresh:n"')).rows()
    zero = [r for r in rows if r["repeat"] == 0]
    assert len({r["truth_seed"] for r in zero}) == 2  # one per n, shared across noise
    assert len({r["truth_seed"] for r in zero if r["point"]["n"] == 200}) == 1
    a, b = (problem_of(next(r for r in zero if r["point"]["n"] == n)) for n in (200, 2000))
    assert not np.allclose(a.A_star, b.A_star)


def test_per_point_pairing_is_the_rule_of_stores_before_pairing():
    """Row keys and seeds of a spec without the new keys are those fastlora computed before pairing
    existed (values from that version), and under "per-point" the truth uses the row's seed."""
    spec = quiet_parse(TINY_SPEC)
    rows = spec.rows("per-point")
    assert [(r["row_key"][:16], r["seed"]) for r in rows[:2]] == [("47fbcc6fe26a76da", 366881238),
                                                                  ("64d28306a58eebee", 195465833)]
    assert all(r["truth_seed"] == r["seed"] for r in rows)
    assert [r["row_key"] for r in spec.rows()] == [r["row_key"] for r in rows]  # keys do not depend on the rule


@pytest.mark.parametrize("rule, needle", [("unpaired", "must be 'paired'"), ("fresh:method", "after 'fresh:'"),
                                          ("fresh:d", "after 'fresh:'"), (3, "must be a string")])
def test_a_bad_pairing_rule_is_refused_when_read(rule, needle):
    value = f'"{rule}"' if isinstance(rule, str) else rule
    with pytest.raises(FastLoRAError, match=needle):
        parse_spec(VARY_N.replace("repeats = 3", f"repeats = 3\npairing = {value}"))


def make_old(store) -> None:
    """Turn a store into one as fastlora wrote it before pairing and the filled keys existed: no meta
    table, none of the columns added since."""
    added = ("truth_seed", "pairing", "identified", "identification", "in_regime", "regime_note", "restarts_reached",
             "global_identified_fraction", "global_unidentified_fraction", "sampler", "input_law", "input_cov",
             "noise_law", "rank", "restarts")
    with sqlite3.connect(store) as db:
        db.execute("DROP TABLE meta")
        for column in added:
            db.execute(f'ALTER TABLE results DROP COLUMN "{column}"')


def test_a_new_store_records_paired_and_an_old_store_resumes_per_point(tmp_path):
    spec = quiet_parse(TINY_SPEC)
    new = tmp_path / "new.sqlite"
    run_sweep(spec, new, workers=1, progress=False)
    rows = load_results(new)
    assert set(rows["pairing"]) == {"paired"} and (rows["truth_seed"] != rows["seed"]).all()
    old = tmp_path / "old.sqlite"
    run_sweep(spec, old, workers=1, progress=False)
    make_old(old)
    bigger = quiet_parse(TINY_SPEC.replace("repeats = 2", "repeats = 3"))
    notes = []
    summary = run_sweep(bigger, old, workers=1, progress=False, echo=notes.append)
    assert (summary.skipped, summary.done) == (8, 4)  # the old rows are found: their keys did not change
    assert any("made with pairing 'per-point'" in note for note in notes)
    rows = load_results(old)
    resumed = rows[rows["repeat"] == 2]
    assert set(resumed["pairing"]) == {"per-point"} and (resumed["truth_seed"] == resumed["seed"]).all()
    assert set(rows[rows["repeat"] < 2]["sampler"]) == {"raw"}  # backfilled: old stores drew raw samples
    assert rows[rows["repeat"] < 2]["rank"].isna().all()  # not recorded then: left empty
    with sqlite3.connect(old) as db:
        assert db.execute("SELECT value FROM meta WHERE key='pairing'").fetchone() == ("per-point",)
    from click.testing import CliRunner

    from fastlora.cli import main
    for store, rule in ((new, "paired"), (old, "per-point")):
        info = CliRunner().invoke(main, ["store", "info", str(store)])
        assert info.exit_code == 0 and f"pairing: {rule}" in info.output


def test_a_spec_naming_another_rule_than_its_store_s_is_refused(tmp_path):
    out = tmp_path / "s.sqlite"
    run_sweep(quiet_parse(TINY_SPEC), out, workers=1, progress=False)
    fresh = quiet_parse(TINY_SPEC.replace("repeats = 2", 'repeats = 2\npairing = "per-point"'))
    with pytest.raises(StoreConflictError, match=r"made with pairing 'paired'.*names pairing 'per-point'"):
        run_sweep(fresh, out, workers=1, progress=False)
    named = quiet_parse(TINY_SPEC.replace("repeats = 2", 'repeats = 2\npairing = "per-point"'))
    other = tmp_path / "p.sqlite"
    run_sweep(named, other, workers=1, progress=False)
    assert set(load_results(other)["pairing"]) == {"per-point"}


SHALLOW = """
name = "shallow"
repeats = 1
[grid]
T = [2, 3]
method = ["standard", "lora-ml"]
[fixed]
model = "shallow"
d = 4
k = 1
n = 60
noise = 0.1
n_ft = 20
max_iter = 20
"""


def test_rows_record_every_default_they_resolved(tmp_path):
    shallow = quiet_parse(SHALLOW)
    by_point = {(p["T"], p["method"]): p for p in shallow.points()}
    assert by_point[(2, "lora-ml")]["ft_rank"] == 3 and by_point[(3, "lora-ml")]["ft_rank"] == 1  # the paper's rule
    assert by_point[(3, "lora-ml")]["restarts"] == 8 and by_point[(3, "standard")]["restarts"] == 1
    assert {"sampler", "input_law", "input_cov", "noise_law", "rank", "ft_rank", "restarts"} <= set(shallow.keys)
    out = tmp_path / "r.sqlite"
    run_sweep(quiet_parse(TINY_SPEC), out, workers=1, progress=False)
    rows = load_results(out)
    for column, value in (("rank", 1), ("sampler", "raw"), ("input_law", "gaussian"), ("restarts", 1),
                          ("solver", "auto"), ("ft_peft", "lora"), ("ft_rank", 1)):
        assert set(rows[column]) == {value}, column


def test_a_spec_outside_the_theorem_s_regime_warns_per_point_and_its_rows_say_why(tmp_path):
    text = TINY_SPEC.replace("T = [2, 3]", "T = [2, 3]\nrank = [1, 2]")
    with pytest.warns(RegimeWarning) as caught:
        spec = parse_spec(text)
    message = str(caught[0].message)
    assert "lie outside the theorem's regime" in message
    assert "lora-ml at d=8, k=1, T=3, rank=2, peft=lora_sym: rank 2 > k = 1" in message
    assert "T = 2: A* is pinned only up to a rank-2k error" in message
    assert "lora-ml at d=8, k=1, T=3, rank=1," not in message  # the one point inside is not named
    out = tmp_path / "r.sqlite"
    run_sweep(spec, out, workers=1, progress=False)
    rows = load_results(out)
    inside = rows[(rows["T"] == 3) & ((rows["method"] == "standard") | (rows["rank"] == 1))]
    outside = rows.drop(inside.index)
    assert set(inside["in_regime"]) == {1} and set(outside["in_regime"]) == {0}
    assert outside["regime_note"].str.len().min() > 0
    with warnings.catch_warnings():
        warnings.simplefilter("error", RegimeWarning)
        parse_spec(TINY_SPEC.replace("T = [2, 3]", "T = [3, 4]"))  # inside: no warning


def test_regime_reasons_name_the_theorem_s_conditions():
    from fastlora.regime import regime_reasons
    assert regime_reasons(d=10, k=1, T=3) == []
    assert regime_reasons(d=10, k=3, T=3) == []  # T·k = 9 < d
    assert any("T·k = 12 > d = 10" in r for r in regime_reasons(d=10, k=4, T=3))
    assert any("2k = 10 >= d = 10" in r for r in regime_reasons(d=10, k=5, T=4))
    assert any("rank 1 < k = 2" in r for r in regime_reasons(d=10, k=2, T=5, rank=1))
    assert regime_reasons(d=10, k=2, T=5, rank=1, method="standard") == []
    assert any("task ranks differ" in r for r in regime_reasons(d=10, k=1, T=4, task_ranks=[1, 2]))
    assert any("asymmetric" in r for r in regime_reasons(d=10, k=1, T=4, symmetric=False))
    assert regime_reasons(d=10, k=1, T=2, model="shallow") is None
