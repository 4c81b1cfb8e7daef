"""The open registry: entry points, isolation of broken plugins, collisions, register()."""
import sys
import textwrap

import numpy as np
import pytest
from click.testing import CliRunner

import fastlora as fl
from fastlora.cli import main
from fastlora.peft.builtins import LoRA
from fastlora.testing import ConformanceError, check_parameterization


def make_distribution(root, dist, module, source, entry_points):
    """An installed distribution on sys.path: a module plus a .dist-info with entry points."""
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    lines = "\n".join(f"{name} = {value}" for name, value in entry_points.items())
    (info / "entry_points.txt").write_text(f"[fastlora.peft]\n{lines}\n")


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    fl.peft.reload()
    yield tmp_path
    fl.peft.reload()
    for name in [m for m in sys.modules if m.startswith("fakeplugin")]:
        del sys.modules[name]


GOOD = """
from fastlora.peft.builtins import LoRA
class Good(LoRA):
    name = "good_lora"
"""


def test_a_broken_plugin_is_reported_and_does_not_break_others(plugin_dir):
    make_distribution(plugin_dir, "fakeplugin-broken", "fakeplugin_broken", "raise ImportError('no such wheel')",
                      {"broken": "fakeplugin_broken:Broken"})
    make_distribution(plugin_dir, "fakeplugin-good", "fakeplugin_good", GOOD, {"good_lora": "fakeplugin_good:Good"})
    with pytest.warns(RuntimeWarning, match="broken.*fakeplugin-broken.*no such wheel"):
        names = fl.peft.available()
    assert "good_lora" in names and "lora" in names and "broken" not in names
    with pytest.raises(fl.PluginError, match=r"broken.*fakeplugin-broken.*ImportError: no such wheel"):
        fl.peft.get("broken")
    prob = fl.make_problem(d=8, k=1, T=3, seed=0)
    res = fl.retrain(prob, peft="good_lora", rank=1, backend="numpy")
    assert res.converged
    result = CliRunner().invoke(main, ["plugins"])
    assert result.exit_code == 0
    assert "fakeplugin-broken" in result.output and "ERROR" in result.output and "good_lora" in result.output


def test_a_plugin_violating_the_protocol_is_reported_by_name(plugin_dir):
    make_distribution(plugin_dir, "fakeplugin-bad", "fakeplugin_bad",
                      "class Bad:\n    name = 'bad'\n    api_version = 1\n", {"bad": "fakeplugin_bad:Bad"})
    with pytest.raises(fl.PluginError, match=r"bad.*fakeplugin-bad.*lacks the required method delta"):
        fl.peft.get("bad")


def test_two_distributions_claiming_one_name_is_an_error_naming_both(plugin_dir):
    make_distribution(plugin_dir, "fakeplugin-one", "fakeplugin_one", GOOD, {"good_lora": "fakeplugin_one:Good"})
    make_distribution(plugin_dir, "fakeplugin-two", "fakeplugin_two", GOOD, {"good_lora": "fakeplugin_two:Good"})
    with pytest.raises(fl.PluginError, match=r"fakeplugin-one.*fakeplugin-two|fakeplugin-two.*fakeplugin-one"):
        fl.peft.get("good_lora")
    with pytest.warns(RuntimeWarning, match="'good_lora' is claimed by two distributions"):
        assert "lora" in fl.peft.available()


def test_autoload_can_be_disabled(plugin_dir, monkeypatch):
    make_distribution(plugin_dir, "fakeplugin-good", "fakeplugin_good", GOOD, {"good_lora": "fakeplugin_good:Good"})
    from fastlora.config import settings
    monkeypatch.setattr(settings, "plugin_autoload", False)
    fl.peft.reload()
    assert "good_lora" not in fl.peft.available()
    assert {"lora", "lora_sym", "full"} <= set(fl.peft.available())


def test_register_in_a_notebook():
    class Scaled(LoRA):
        name = "scaled_lora_test"
    try:
        fl.peft.register(Scaled)
        assert "scaled_lora_test" in fl.peft.available()
        with pytest.raises(fl.PluginError, match="already registered"):
            fl.peft.register(Scaled)
        prob = fl.make_problem(d=8, k=1, T=3, seed=0)
        assert fl.retrain(prob, peft="scaled_lora_test", rank=1, backend="numpy").converged
    finally:
        fl.peft.unregister("scaled_lora_test")


def test_classes_and_instances_are_accepted_wherever_names_are():
    prob = fl.make_problem(d=8, k=1, T=3, seed=0, symmetric=False)
    a = fl.retrain(prob, peft="lora", rank=1, backend="numpy")
    b = fl.retrain(prob, peft=LoRA, rank=1, backend="numpy")
    c = fl.retrain(prob, peft=LoRA(alpha=2.0), rank=1, backend="numpy")
    np.testing.assert_allclose(a.A, b.A)
    np.testing.assert_allclose(a.A, c.A, atol=1e-8)
    assert fl.retrain(prob, peft="lora", peft_options={"alpha": 4}, rank=1, backend="numpy").peft.alpha == 4


def test_builtins_pass_the_conformance_kit():
    for name in ("lora", "lora_sym", "full"):
        check_parameterization(type(fl.peft.get(name)))


def test_the_kit_catches_a_planted_wrong_pullback():
    class WrongPullback(LoRA):
        name = "wrong"

        def pullback(self, params, G):
            grads = super().pullback(params, G)
            grads["C"] = 1.01 * grads["C"]  # a plausible-looking bug
            return grads

    with pytest.raises(ConformanceError, match=r"\[pullback\] pullback\(\)\['C'\] disagrees with finite differences"):
        check_parameterization(WrongPullback)

    class WrongB(LoRA):  # the kit checks each parameter on its own: the message names the wrong one
        name = "wrong_b"

        def pullback(self, params, G):
            grads = super().pullback(params, G)
            grads["B"] = grads["B"] + 1e-3 * params["B"]
            return grads

    with pytest.raises(ConformanceError, match=r"pullback\(\)\['B'\] disagrees"):
        check_parameterization(WrongB)


def test_the_kit_catches_a_wrong_best_fit_and_dtype_loss():
    class NotOptimal(LoRA):
        name = "not_optimal"

        def best_fit(self, R, rank):
            fit = super().best_fit(R, rank)
            return {"B": 0.9 * fit["B"], "C": fit["C"]}

    with pytest.raises(ConformanceError, match="best fit"):
        check_parameterization(NotOptimal)

    class Upcasts(LoRA):
        name = "upcasts"

        def delta(self, params):
            return super().delta(params).astype(np.float64)

    with pytest.raises(ConformanceError, match="dtype"):
        check_parameterization(Upcasts)


def _guide_blocks():
    """The python blocks of docs/plugins.md: notebook cells, and files of a package ("# file: ...")."""
    import re
    from pathlib import Path
    text = (Path(__file__).resolve().parents[1] / "docs" / "plugins.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, re.DOTALL)


def test_the_plugin_guide_examples_work_when_copied(capsys):
    """Every notebook block of docs/plugins.md runs as written, in order in one namespace (each builds
    on the ones before), and prints what its comments say; the package files are built and tested
    by tests/test_scaffold.py."""
    from fastlora import generators
    cells = [b for b in _guide_blocks() if not b.startswith("# file:")]
    assert len(cells) == 7, "docs/plugins.md: every ```python block is executed here; update this test"
    namespace, printed = {}, []
    try:
        for i, cell in enumerate(cells):
            exec(compile(cell, f"docs/plugins.md[{i}]", "exec"), namespace)  # the guide's own code
            printed.append(capsys.readouterr().out.split("\n"))
        assert {"scaled_sym", "shared_subspace", "shared_private"} <= set(fl.peft.available())
        assert "shared_basis" in generators.available()
    finally:
        for name in ("scaled_sym", "shared_subspace", "shared_private"):
            if name in fl.peft.available():
                fl.peft.unregister(name)
        if "shared_basis" in generators.available():
            generators.unregister("shared_basis")
    scaled, shared, fit, spectral, equivariant, law, private = printed
    assert float(scaled[0].split()[0]) < 1e-8
    assert float(shared[0].split()[0]) < 1e-8
    assert namespace["ft"].excess_risk < 1e-10 and sorted(namespace["ft"].params) == ["M"]
    assert fit[0] == "best fit given shared" and int(fit[1].split()[0]) < int(fit[1].split()[1])
    assert spectral[0] == "init from residuals" and float(spectral[1].split()[0]) < 1e-8
    assert equivariant[0] == "basis equivariance" and equivariant[1].split()[0] == "4"
    assert float(equivariant[1].split()[1]) < 1e-6
    assert "finite samples" in law[0] and law[1].startswith("Problem(d=10, d_out=10, k=3, T=6")
    assert private[0] == "rank options" and float(private[1]) < 1e-6


def test_installed_plugins_run_through_a_sweep(tmp_path):
    """DoRA and VeRA (installed from plugins/ by the test command) through `fastlora sweep`: each row
    holds exactly what a direct make_problem / retrain / evaluate with the row's seed gives, and the
    retrained objective is below standard retraining's on the same problem."""
    assert {"dora", "vera"} <= set(fl.peft.available()), "install ./plugins/dora ./plugins/vera"
    spec = tmp_path / "plugins.toml"
    spec.write_text('name = "plugins"\nrepeats = 1\n[grid]\npeft = ["dora", "vera"]\n'
                    '[fixed]\nd = 8\nk = 1\nT = 3\nrank = 1\nsolver = "gd"\noptimizer = "lbfgs"\nmax_iter = 300\n'
                    'backend = "numpy"\n')
    out = tmp_path / "p.sqlite"
    result = CliRunner().invoke(main, ["sweep", str(spec), "--out", str(out), "--workers", "1"])
    assert result.exit_code == 0, result.output
    from fastlora.sweep import load_results
    frame = load_results(out, status=None)
    assert sorted(frame["peft"]) == ["dora", "vera"] and set(frame["status"]) == {"ok"}
    for row in frame.to_dict("records"):
        seed, truth_seed = int(row["seed"]), int(row["truth_seed"])  # paired: the truth has its own seed
        prob = fl.make_problem(d=8, k=1, T=3, seed=truth_seed, sample_seed=seed)
        res = fl.retrain(prob, peft=row["peft"], rank=1, solver="gd", optimizer="lbfgs", max_iter=300,
                         backend="numpy", seed=seed)
        metrics = fl.evaluate(res, prob, seed=truth_seed)
        assert row["objective"] == pytest.approx(res.objective, rel=1e-9, abs=1e-14)
        assert row["rel_err_A"] == pytest.approx(metrics["rel_err_A"], rel=1e-6)
        assert row["excess_risk"] == pytest.approx(metrics["excess_risk"], rel=1e-6, abs=1e-14)
        assert row["n_iter"] == res.n_iter
        standard = fl.retrain(prob, method="standard", backend="numpy").objective
        # adapters can only help from standard retraining's A; a solver that left them at 0 would tie
        assert row["objective"] < standard, (row["peft"], row["objective"], standard)


EVIL = """
raise ImportError("this plugin is broken")
"""
IMPOSTOR = """
from fastlora.peft.builtins import SymmetricLoRA
class Impostor(SymmetricLoRA):
    def delta(self, params):
        return 2 * super().delta(params)
"""


def test_a_plugin_claiming_a_builtin_name_never_takes_it_away(plugin_dir):
    make_distribution(plugin_dir, "fakeplugin-evil", "fakeplugin_evil", EVIL, {"lora": "fakeplugin_evil:LoRA"})
    make_distribution(plugin_dir, "fakeplugin-impostor", "fakeplugin_impostor", IMPOSTOR,
                      {"lora_sym": "fakeplugin_impostor:Impostor", "full": "fakeplugin_impostor:Impostor"})
    from fastlora.peft import builtins
    with pytest.warns(RuntimeWarning) as caught:
        lora = fl.peft.get("lora")
    messages = " ".join(str(w.message) for w in caught)
    assert "fakeplugin-evil 1.0 (fakeplugin_evil:LoRA) registers the built-in peft name 'lora'" in messages
    assert "fakeplugin-impostor" in messages and "ignored" in messages
    assert type(lora) is builtins.LoRA
    assert type(fl.peft.get("lora_sym")) is builtins.SymmetricLoRA
    assert type(fl.peft.get("full")) is builtins.Full
    assert "fakeplugin_impostor" not in sys.modules and "fakeplugin_evil" not in sys.modules  # never imported
    assert {"lora", "lora_sym", "full"} <= set(fl.peft.available())
    rows = {row["name"]: row for row in fl.peft.info()}
    assert rows["lora"]["distribution"] == "fastlora" and rows["lora"]["error"] is None
    assert rows["lora"]["ignored_claims"] == ["fakeplugin-evil 1.0 (fakeplugin_evil:LoRA)"]
    assert rows["full"]["ignored_claims"] == ["fakeplugin-impostor 1.0 (fakeplugin_impostor:Impostor)"]
    prob = fl.make_problem(d=8, k=1, T=3, seed=0)
    assert fl.retrain(prob, peft="lora", rank=1, backend="numpy").converged
    result = CliRunner().invoke(main, ["solve", "--d", "8", "--k", "1", "--T", "3", "--backend", "numpy",
                                       "--no-progress"])
    assert result.exit_code == 0, result.output


def test_builtin_names_cannot_be_registered_over_or_removed():
    class Mine(LoRA):
        pass
    with pytest.raises(fl.PluginError, match="cannot register 'lora': built-in names"):
        fl.peft.register(Mine)
    with pytest.raises(fl.PluginError, match="cannot unregister 'full'"):
        fl.peft.unregister("full")
    assert type(fl.peft.get("lora")) is LoRA


class FrozenBasis:
    """Δ_t = P_t C_tᵀ with P_t a fixed random basis (frozen, like VeRA's) and C_t trained.

    best_fit: C_t = R_tᵀ P (PᵀP)⁻¹, the least-squares fit for the frozen P.
    """

    name = "frozen_basis"
    api_version = 1
    frozen = frozenset({"P"})

    def shapes(self, d_out, d_in, rank):
        return {"P": (d_out, rank), "C": (d_in, rank)}

    @staticmethod
    def basis(d_out, rank, T, dtype=np.float64):
        P = np.random.default_rng(1234).standard_normal((d_out, rank)).astype(dtype)
        return np.broadcast_to(P, (T, d_out, rank)).copy()

    def init(self, rng, d_out, d_in, rank, T):
        return {"P": self.basis(d_out, rank, T), "C": 0.1 * rng.standard_normal((T, d_in, rank))}

    def delta(self, params):
        return params["P"] @ params["C"].swapaxes(1, 2)

    def pullback(self, params, G):
        return {"C": G.swapaxes(1, 2) @ params["P"]}

    def best_fit(self, R, rank):
        T, d_out, _ = R.shape
        P = self.basis(d_out, rank, T, R.dtype)
        C = np.linalg.solve(P.swapaxes(1, 2) @ P, P.swapaxes(1, 2) @ R).swapaxes(1, 2)
        return {"P": P, "C": C}


def test_the_kit_accepts_frozen_parameters_with_a_best_fit():
    """Its optimality check perturbs only trainable parameters (moving a frozen basis is not a fit)."""
    passed = check_parameterization(FrozenBasis)
    assert "best fit" in passed

    class WrongFit(FrozenBasis):
        def best_fit(self, R, rank):
            fit = super().best_fit(R, rank)
            return {"P": fit["P"], "C": 0.95 * fit["C"]}

    with pytest.raises(ConformanceError, match="best fit"):
        check_parameterization(WrongFit)

    class ForgetsTheFrozenBasis(FrozenBasis):
        def best_fit(self, R, rank):
            return {"C": super().best_fit(R, rank)["C"]}

    with pytest.raises(ConformanceError, match=r"best_fit\(\) returned \['C'\], expected every parameter "
                                               r"\['C', 'P'\] \(frozen ones too\)"):
        check_parameterization(ForgetsTheFrozenBasis)

    class ReturnsTheFrozenGradient(FrozenBasis):
        def pullback(self, params, G):
            return {**super().pullback(params, G), "P": G @ params["C"]}

    with pytest.raises(ConformanceError, match=r"pullback\(\) returned \['C', 'P'\], expected the trainable "
                                               r"parameters \['C'\] \(frozen ones are not returned\)"):
        check_parameterization(ReturnsTheFrozenGradient)

    class FrozenNotDeclared(FrozenBasis):
        frozen = frozenset({"P", "Q"})

    with pytest.raises(ConformanceError, match=r"\['Q'\] are declared frozen/shared but are not in shapes"):
        check_parameterization(FrozenNotDeclared)


def test_a_parameterizations_refusal_of_an_option_value_is_a_fastlora_error():
    with pytest.raises(fl.FastLoRAError, match="peft_options for LoRA: alpha must be a positive number"):
        fl.peft.get("lora", alpha=-1)


@pytest.mark.parametrize("count", [1, 2])
def test_lbfgs_with_A_eliminated_returns_only_the_parameterization_s_parameters(count):
    """With A eliminated, A is not packed but carried beside the frozen parameters; it used to come
    back in res.params as a stale (P, d_out, d_in) 'A' (VeRA: r.delta(1) then failed)."""
    problems = [fl.make_problem(d=6, k=1, T=3, n=200, noise=0.01, seed=s) for s in range(count)]
    results = fl.retrain_many(problems, peft=FrozenBasis, rank=1, solver="gd", optimizer="lbfgs", backend="numpy",
                              max_iter=30)
    for res in results:
        assert res.info["eliminate_A"] is True
        assert set(res.params) == {"P", "C"}, {k: v.shape for k, v in res.params.items()}
        assert all(v.shape[0] == 3 for v in res.params.values())
        assert res.delta(2).shape == (6, 6)


def test_vera_default_solver_returns_its_own_parameters():
    pytest.importorskip("fastlora_vera")
    prob = fl.make_problem(d=10, k=1, T=3, n=500, noise=0.01)
    res = fl.retrain(prob, peft="vera")
    assert set(res.params) == {"b", "s", "B0", "C0"} and res.A.shape == (10, 10)
    assert repr(res).count("A(") == 1
    assert res.delta(1).shape == (10, 10)
    many = fl.retrain_many([prob, fl.make_problem(d=10, k=1, T=3, n=500, noise=0.01, seed=1)], peft="vera")
    assert all(set(r.params) == {"b", "s", "B0", "C0"} for r in many)
