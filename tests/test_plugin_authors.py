"""Plugin authors, third round (issue 25): options that survive fine-tuning, problem generators as
plugins, protocol additions, a kit that never loses context.

An outside author's distribution (tests/plugin_authors_fixture.py) is installed on sys.path with
entry points in both groups: ``sblora`` (fastlora.peft; Δ_t = B S_t Cᵀ + U_t V_tᵀ with the option
``private_rank``) and ``shared_basis`` (fastlora.problems; the law of its tasks).
"""
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import fastlora as fl
from fastlora import generators
from fastlora.cli import main
from fastlora.peft.builtins import LoRA
from fastlora.testing import (
    ConformanceError,
    ConformanceWarning,
    check_installed,
    check_parameterization,
    check_problem_generator,
)

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def authors(tmp_path_factory):
    """The fixture distribution, importable as ``fakeplugin_authors``, with its two entry points."""
    root = tmp_path_factory.mktemp("authors")
    shutil.copy(HERE / "plugin_authors_fixture.py", root / "fakeplugin_authors.py")
    info = root / "fakeplugin_authors-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakeplugin-authors\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[fastlora.peft]\nsblora = fakeplugin_authors:SBLoRA\n\n"
                                           "[fastlora.problems]\nshared_basis = fakeplugin_authors:shared_basis\n")
    sys.path.insert(0, str(root))
    fl.peft.reload()
    generators.reload()
    import fakeplugin_authors
    yield fakeplugin_authors
    sys.path.remove(str(root))
    fl.peft.reload()
    generators.reload()
    sys.modules.pop("fakeplugin_authors", None)


def _shared_basis_problem(**kwargs):
    return fl.make_problem(law="shared_basis", **{"d": 8, "k": 3, "T": 6, "seed": 0, "private_rank": 1, **kwargs})


@pytest.fixture(scope="module")
def optioned(authors):
    prob = _shared_basis_problem()
    res = fl.retrain(prob, peft="sblora", peft_options={"private_rank": 1}, rank=2, solver="gd", optimizer="lbfgs",
                     max_iter=3000, tol=1e-12, backend="numpy")
    return prob, res


# -- 1. fine-tuning by name keeps the retrained options --------------------------------------------

def test_finetuning_by_name_reuses_the_retrained_instance_and_its_options(optioned):
    prob, res = optioned
    assert res.peft.private_rank == 1 and res.objective < 1e-8 * fl.retrain(prob, method="standard").objective
    by_name = fl.evaluate(res, prob, ft_peft="sblora")
    by_instance = fl.evaluate(res, prob, ft_peft=res.peft)
    assert by_name["excess_risk"] == by_instance["excess_risk"] < 1e-6
    same_options = fl.evaluate(res, prob, ft_peft="sblora", ft_peft_options={"private_rank": 1})
    assert same_options["excess_risk"] == by_name["excess_risk"]
    ft = fl.finetune(res, prob.test_tasks[0], peft="sblora")
    assert sorted(ft.params) == ["S", "U", "V"] and ft.excess_risk < 1e-6


@pytest.mark.parametrize("call", ["evaluate", "finetune"])
def test_a_mismatch_with_the_retrained_options_is_refused_naming_both(optioned, call):
    prob, res = optioned
    with pytest.raises(fl.FastLoRAError) as err:
        if call == "evaluate":
            fl.evaluate(res, prob, ft_peft="sblora", ft_peft_options={"private_rank": 0})
        else:
            fl.finetune(res, prob.test_tasks[0], peft="sblora", peft_options={"private_rank": 0})
    message = str(err.value)
    argument = "ft_peft_options" if call == "evaluate" else "peft_options"
    assert f"{argument}={{'private_rank': 0}}" in message and "{'private_rank': 1}" in message, message
    # an instance built elsewhere with other parameters than the retrained ones is refused too
    with pytest.raises(fl.FastLoRAError, match=r"\['B', 'C', 'S'\].*\['B', 'C', 'S', 'U', 'V'\]"):
        fl.evaluate(res, prob, ft_peft=type(res.peft)())


def test_a_sweep_finetunes_by_name_with_the_retrained_options(authors, tmp_path):
    spec = tmp_path / "sb.toml"
    spec.write_text('name = "sb"\nrepeats = 1\n[grid]\nft_peft = ["sblora", "lora"]\n'
                    '[fixed]\nlaw = "shared_basis"\nlaw_options = { private_rank = 1 }\npeft = "sblora"\n'
                    'peft_options = { private_rank = 1 }\nd = 8\nk = 3\nT = 6\nrank = 2\n'
                    'solver = "gd"\noptimizer = "lbfgs"\nmax_iter = 3000\ntol = 1e-12\nbackend = "numpy"\n')
    out = tmp_path / "sb.sqlite"
    result = CliRunner().invoke(main, ["sweep", str(spec), "--out", str(out), "--workers", "1"])
    assert result.exit_code == 0, result.output
    rows = fl.load_results(out, status=None).to_dict("records")
    assert len(rows) == 2 and {row["status"] for row in rows} == {"ok"}, rows
    for row in rows:
        seed = int(row["seed"])
        prob = _shared_basis_problem(seed=seed)
        res = fl.retrain(prob, peft="sblora", peft_options={"private_rank": 1}, rank=2, solver="gd",
                         optimizer="lbfgs", max_iter=3000, tol=1e-12, backend="numpy", seed=seed)
        ft_peft = res.peft if row["ft_peft"] == "sblora" else "lora"
        assert row["excess_risk"] == pytest.approx(fl.evaluate(res, prob, ft_peft=ft_peft, seed=seed)["excess_risk"],
                                                   rel=1e-6, abs=1e-12)
    assert next(r for r in rows if r["ft_peft"] == "sblora")["excess_risk"] < 1e-6


def test_specs_take_ft_peft_options_and_refuse_a_mismatch_when_read(authors, tmp_path):
    from fastlora.sweep.spec import parse_spec
    base = ('name = "x"\n[grid]\nT = [3]\n[fixed]\nd = 6\nk = 1\nrank = 1\nsymmetric = false\npeft = "sblora"\n'
            'peft_options = { private_rank = 1 }\nft_peft = "sblora"\n')
    spec = parse_spec(base + "ft_peft_options = { private_rank = 1 }\n")
    assert spec.points()[0]["ft_peft_options"] == {"private_rank": 1}
    with pytest.raises(fl.FastLoRAError, match=r"ft_peft_options=\{'private_rank': 0\}.*\{'private_rank': 1\}"):
        parse_spec(base + "ft_peft_options = { private_rank = 0 }\n")
    with pytest.raises(fl.FastLoRAError, match=r"ft_peft_options.*not accepted"):
        parse_spec(base.replace('ft_peft = "sblora"', 'ft_peft = "lora"') + "ft_peft_options = { bogus = 1 }\n")


# -- 2. unknown keys are unknown whatever their value -------------------------------------------------

@pytest.mark.parametrize("where, text", [
    ("fixed", "ft_peft_option = { init_scale = 1.0 }"),
    ("fixed", "frobnicate = [1, 2]"),
    ("grid", "frobnicate = 3"),
    ("grid", "frobnicate = { a = 1 }"),
])
def test_an_unknown_spec_key_is_reported_as_unknown_whatever_its_value(where, text):
    from fastlora.sweep.spec import parse_spec
    grid, fixed = ("T = [3]", "d = 6") if where == "fixed" else (f"T = [3]\n{text}", "d = 6")
    if where == "fixed":
        fixed = f"d = 6\n{text}"
    with pytest.raises(fl.FastLoRAError, match=r"unknown key '(ft_peft_option|frobnicate)'"):
        parse_spec(f'name = "x"\n[grid]\n{grid}\n[fixed]\n{fixed}\n')


# -- 3. the kit keeps its context -------------------------------------------------------------------

class RaisesOnImplicit(LoRA):
    name = "raises_on_implicit"

    def pullback(self, params, G):
        if not isinstance(G, np.ndarray):
            raise TypeError("unsupported operand type(s) for @: 'SharedPlusLowRank' and 'ndarray'")
        return super().pullback(params, G)


def test_an_exception_of_plugin_code_becomes_a_conformance_error_naming_check_and_member():
    with pytest.raises(ConformanceError) as err:
        check_parameterization(RaisesOnImplicit)
    exc = err.value
    assert str(exc).startswith("[implicit gradient] pullback() raised TypeError: unsupported operand")
    assert exc.check == "implicit gradient" and exc.member == "pullback"
    assert exc.passed == ["protocol", "shapes", "delta at init", "dtype preservation",
                          "pullback vs finite differences", "batch vs loop", "factors"]
    fl.peft.register(RaisesOnImplicit)
    try:
        rows = {row["name"]: row for row in check_installed()}
    finally:
        fl.peft.unregister("raises_on_implicit")
    row = rows["raises_on_implicit"]
    assert not row["ok"] and len(row["passed"]) == 7 and row["failure"].startswith("[implicit gradient] pullback()")


def test_exceptions_from_init_properties_and_fast_paths_are_wrapped_too():
    class BadInit(LoRA):
        name = "bad_init"

        def init(self, rng, d_out, d_in, rank, T):
            raise ValueError("no")

    with pytest.raises(ConformanceError, match=r"^\[shapes\] init\(\) raised ValueError: no") as err:
        check_parameterization(BadInit)
    assert err.value.passed == ["protocol"]

    class BrokenFast:
        @property
        def delta(self):
            raise ImportError("the kernels do not compile")

    class BadFast(LoRA):
        name = "bad_fast"
        def __init__(self):
            super().__init__()
            self.fast_paths = {"numba": BrokenFast()}

    with pytest.raises(ConformanceError, match=r"\[fast path numba\] reading fast_paths\['numba'\]\.delta raised "
                                               r"ImportError: the kernels do not compile") as err:
        check_parameterization(BadFast)
    assert err.value.member == "fast_paths['numba'].delta" and "best fit" in err.value.passed


def test_the_kit_warns_at_a_start_where_every_gradient_is_zero():
    class BothZero(LoRA):
        name = "both_zero"

        def init(self, rng, d_out, d_in, rank, T):
            return {"B": np.zeros((T, d_out, rank)), "C": np.zeros((T, d_in, rank))}

    with pytest.warns(ConformanceWarning, match=r"every gradient is zero.*'B', 'C'"):
        passed = check_parameterization(BothZero)
    assert "best fit" in passed  # a warning, not a failure
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConformanceWarning)
        for name in ("lora", "lora_sym", "full"):  # LoRA's B = 0 leaves C's gradient alive
            check_parameterization(fl.peft.get(name))


# -- 5. fastlora solve --peft-options ----------------------------------------------------------------

SOLVE = ["solve", "--d", "6", "--k", "1", "--T", "3", "--backend", "numpy", "--json", "--peft", "lora", "--rank", "1"]


@pytest.mark.parametrize("text", ['{"alpha": 2}', "{ alpha = 2 }"])
def test_solve_takes_peft_options_as_json_or_a_toml_inline_table(text, monkeypatch):
    seen = []
    real = fl.retrain

    def spy(*args, **kwargs):
        seen.append(kwargs.get("peft_options"))
        return real(*args, **kwargs)

    monkeypatch.setattr(fl, "retrain", spy)
    result = CliRunner().invoke(main, [*SOLVE, "--peft-options", text, "--ft-peft-options", "{}"])
    assert result.exit_code == 0, result.output
    assert seen == [{"alpha": 2}]


@pytest.mark.parametrize("args, needle", [
    (["--peft-options", "[1, 2]"], "--peft-options must be a JSON object or a TOML inline table"),
    (["--peft-options", "{alpha: }"], "--peft-options must be a JSON object or a TOML inline table"),
    (["--peft-options", '{"alpha": -1}'], "alpha must be a positive number"),
    (["--peft-options", '{"bogus": 1}'], "not accepted by LoRA"),
    (["--ft-peft-options", '{"bogus": 1}'], "--ft-peft-options"),
])
def test_solve_refuses_bad_peft_options_in_one_line(args, needle):
    result = CliRunner().invoke(main, [*SOLVE, *args])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:") and needle in lines[0], result.output


# -- 6. problem generators as plugins ----------------------------------------------------------------

def test_make_problem_draws_from_a_generator_plugin_by_law(authors):
    prob = _shared_basis_problem()
    assert type(prob).__name__ == "SharedBasisProblem" and prob.private_rank == 1
    assert (prob.d, prob.k, prob.T) == (8, 3, 6) and len(prob.test_tasks) == 4
    again = authors.shared_basis(d=8, k=3, T=6, n=None, noise=0.0, seed=0, d_out=8, n_test_tasks=4, private_rank=1)
    np.testing.assert_array_equal(prob.tasks[2].W_star, again.tasks[2].W_star)
    assert "shared_basis" in generators.available()


@pytest.mark.parametrize("kwargs, needle", [
    ({"law": "nope"}, "law='nope' is not a registered problem generator; available: .*'shared_basis'"),
    ({"law": "shared_basis", "colour": "red"}, r"law='shared_basis' takes no option\(s\) colour; its options: "
                                                r"private_rank=0"),
    ({"law": "shared_basis", "private_rank": 5}, "private_rank=5 is too large"),
    ({"law": "shared_basis", "sampler": "stats"}, "law='shared_basis' does not take sampler='stats'"),
    ({"colour": "red"}, r"make_problem\(\) has no argument\(s\) colour.*law='name'"),
    ({"law": "shared_basis", "k": 0}, "k=0 is too small"),
])
def test_bad_law_arguments_are_refused_by_name(authors, kwargs, needle):
    with pytest.raises(fl.FastLoRAError, match=needle):
        fl.make_problem(**{"d": 6, "k": 2, "T": 3, **kwargs})


def test_the_tied_generator_is_a_plugin_of_the_problems_group():
    from fastlora_tied_lora import make_tied_problem
    assert "tied" in generators.available()
    prob = fl.make_problem(law="tied", d=6, k=2, T=3, seed=4, d_out=5, n_test_tasks=2)
    direct = make_tied_problem(d=6, r=2, T=3, seed=4, d_out=5, n_test_tasks=2)
    np.testing.assert_array_equal(prob.A_star, direct.A_star)
    np.testing.assert_array_equal(prob.s_star, direct.s_star)
    row = next(r for r in generators.info() if r["name"] == "tied")
    assert row["distribution"] == "fastlora-tied-lora" and row["group"] == "fastlora.problems"


def test_a_spec_sweeps_a_generator_plugin(tmp_path):
    spec = tmp_path / "tied.toml"
    spec.write_text('name = "tied"\nrepeats = 2\n[grid]\nft_peft = ["tied_lora", "lora"]\n'
                    '[fixed]\nlaw = "tied"\npeft = "tied_lora"\nd = 8\nk = 2\nT = 4\nrank = 2\n'
                    'max_iter = 2000\ntol = 1e-12\nbackend = "numpy"\n')
    out = tmp_path / "tied.sqlite"
    result = CliRunner().invoke(main, ["sweep", str(spec), "--out", str(out), "--workers", "1"])
    assert result.exit_code == 0, result.output
    rows = fl.load_results(out, status=None).to_dict("records")
    assert len(rows) == 4 and {r["status"] for r in rows} == {"ok"} and {r["law"] for r in rows} == {"tied"}
    tied = [r for r in rows if r["ft_peft"] == "tied_lora"]
    assert all(r["excess_risk"] < 1e-10 for r in tied), tied  # a tied task is its r scales
    for row in rows:
        seed = int(row["seed"])
        prob = fl.make_problem(law="tied", d=8, k=2, T=4, seed=seed)
        res = fl.retrain(prob, peft="tied_lora", rank=2, max_iter=2000, tol=1e-12, backend="numpy", seed=seed)
        assert row["objective"] == pytest.approx(res.objective, abs=1e-14)
        risk = fl.evaluate(res, prob, ft_peft=row["ft_peft"], seed=seed)["excess_risk"]
        assert row["excess_risk"] == pytest.approx(risk, rel=1e-6, abs=1e-12)


@pytest.mark.parametrize("text, needle", [
    ('law = "nope"', "law='nope' is not a registered problem generator"),
    ('law = "tied"\nsampler = "stats"', "law='tied' does not take sampler='stats'"),
    ('law = "tied"\nlaw_options = { colour = 1 }', r"takes no option\(s\) colour"),
    ('law_options = { colour = 1 }', "law_options applies only with a law"),
])
def test_specs_check_the_law_when_read(text, needle):
    from fastlora.sweep.spec import parse_spec
    with pytest.raises(fl.FastLoRAError, match=needle):
        parse_spec(f'name = "x"\n[grid]\nT = [3]\n[fixed]\nd = 6\nk = 1\n{text}\n')


def test_fastlora_plugins_lists_both_groups(authors):
    result = CliRunner().invoke(main, ["plugins"])
    assert result.exit_code == 0, result.output
    text = result.output
    assert "problem generators (fastlora.problems)" in text
    after = text.split("problem generators (fastlora.problems)")[1]
    line = next(line for line in after.splitlines() if line.startswith("shared_basis"))
    assert "fakeplugin-authors" in line and "private_rank=0" in line and line.split()[-1] == "ok"
    assert any(line.startswith("tied ") for line in after.splitlines())
    checked = CliRunner().invoke(main, ["plugins", "--check"])
    assert checked.exit_code == 0, checked.output
    rows = {line.split()[0]: line.split() for line in checked.output.splitlines()[2:] if line.strip()}
    assert rows["shared_basis"][1] == "fastlora.problems" and rows["shared_basis"][-1] == "ok"


def test_the_kit_checks_a_generator(authors):
    passed = check_problem_generator(authors.shared_basis, private_rank=1)
    assert passed == ["protocol", "problem", "shapes", "ground truth", "determinism", "finite samples"]
    assert check_problem_generator("tied") == passed

    def random_each_time(d, k, T, n, noise, seed, d_out, n_test_tasks):
        return authors.shared_basis(d, k, T, n, noise, int(np.random.default_rng().integers(1000)), d_out,
                                    n_test_tasks)

    with pytest.raises(ConformanceError, match=r"\[(problem|determinism)\]"):
        check_problem_generator(random_each_time)

    def no_ground_truth(d, k, T, n, noise, seed, d_out, n_test_tasks):
        prob = authors.shared_basis(d, k, T, n, noise, seed, d_out, n_test_tasks)
        for task in prob.test_tasks:
            task.target = None
        return prob

    with pytest.raises(ConformanceError, match=r"\[ground truth\] task 3 has no W_star") as err:
        check_problem_generator(no_ground_truth)
    assert err.value.passed == ["protocol", "problem", "shapes"]

    def raises(d, k, T, n, noise, seed, d_out, n_test_tasks):
        raise RuntimeError("boom")

    with pytest.raises(ConformanceError, match=r"\[problem\] generate\(\) raised RuntimeError: boom"):
        check_problem_generator(raises)
    with pytest.raises(ConformanceError, match=r"\[protocol\] .*does not take the argument\(s\) n_test_tasks"):
        check_problem_generator(lambda d, k, T, n, noise, seed, d_out: None)
