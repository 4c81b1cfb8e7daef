"""Protocol additions of issue 25, each backward compatible, with a kit check and a solver that uses it:
``best_fit_given_shared`` (ALS's per-task step), ``init_from_residuals`` (init sees the tasks),
``basis_equivariance`` / ``change_basis`` (what the span reduction reads instead of a family
whitelist) and ``rank_options`` (a second rank); errors that name ``ft_rank``; tied_lora's kernels
calling ``threads_for``."""
import typing

import numpy as np
import pytest
from plugin_authors_fixture import SBLoRA

import fastlora as fl
from fastlora import array_module
from fastlora.peft.protocol import protocol_errors
from fastlora.testing import ConformanceError, check_parameterization


class SharedSubspace:
    """Δ_t = B M_t Cᵀ, B and C shared (docs/plugins.md)."""

    name = "subspace_core"
    api_version = 2
    shared = ("B", "C")

    def shapes(self, d_out, d_in, rank):
        return {"B": (d_out, rank), "C": (d_in, rank), "M": (rank, rank)}

    def init(self, rng, d_out, d_in, rank, T):
        return {"B": rng.standard_normal((d_out, rank)) / np.sqrt(d_out),
                "C": rng.standard_normal((d_in, rank)) / np.sqrt(d_in), "M": np.zeros((T, rank, rank))}

    def delta(self, params):
        return params["B"] @ params["M"] @ params["C"].T

    def pullback(self, params, G):
        xp = array_module(G)
        B, C, M = params["B"], params["C"], params["M"]
        GC, GtB = G @ C, G.swapaxes(1, 2) @ B
        return {"M": B.T @ GC, "B": xp.sum(GC @ M.swapaxes(1, 2), axis=0), "C": xp.sum(GtB @ M, axis=0)}


class WithCoreFit(SharedSubspace):
    name = "subspace_core_fit"
    calls = 0

    def best_fit_given_shared(self, R, rank, shared):
        type(self).calls += 1
        xp = array_module(R)
        return {"M": xp.linalg.pinv(shared["B"]) @ R @ xp.linalg.pinv(shared["C"]).T}


@pytest.fixture(scope="module")
def tied():
    return fl.make_problem(law="tied", d=8, k=2, T=5, seed=3)


# -- best_fit_given_shared ----------------------------------------------------------------------------

def test_the_kit_checks_a_per_task_fit_given_the_shared_parameters():
    assert "best fit given shared" in check_parameterization(WithCoreFit)
    assert "best fit given shared" not in check_parameterization(SharedSubspace)

    class Shrunk(WithCoreFit):
        def best_fit_given_shared(self, R, rank, shared):
            return {"M": 0.9 * super().best_fit_given_shared(R, rank, shared)["M"]}

    with pytest.raises(ConformanceError, match=r"^\[best fit given shared\] best_fit_given_shared\(Δ\(θ\)\) does "
                                               r"not reproduce"):
        check_parameterization(Shrunk)

    class AllKeys(WithCoreFit):
        def best_fit_given_shared(self, R, rank, shared):
            return {**shared, **super().best_fit_given_shared(R, rank, shared)}

    with pytest.raises(ConformanceError, match=r"returned \['B', 'C', 'M'\], expected the per-task parameters "
                                               r"\['M'\]"):
        check_parameterization(AllKeys)


def test_a_per_task_fit_needs_shared_parameters():
    class NoShared(WithCoreFit):
        api_version = 1
        shared = None

    assert any("best_fit_given_shared" in e for e in protocol_errors(NoShared()))


def test_als_uses_the_per_task_fit_given_the_shared_parameters(tied):
    WithCoreFit.calls = 0
    fitted = fl.retrain(tied, peft=WithCoreFit(), rank=2, solver="als", backend="numpy", max_iter=500, tol=1e-12)
    assert WithCoreFit.calls > 0
    stepped = fl.retrain(tied, peft=SharedSubspace(), rank=2, solver="als", backend="numpy", max_iter=500, tol=1e-12)
    scale = fl.retrain(tied, method="standard", backend="numpy").objective
    assert fitted.objective < 1e-10 * scale and fitted.n_iter < stepped.n_iter, (fitted.n_iter, stepped.n_iter)
    for t in range(tied.T):
        np.testing.assert_allclose(fitted.A + fitted.delta(t), tied.tasks[t].W_star, atol=1e-5)


# -- init_from_residuals ------------------------------------------------------------------------------

class SpectralStart(SharedSubspace):
    """The shared basis from an SVD of the tasks' residuals at the start (task differences)."""

    name = "subspace_spectral"
    init_from_residuals = True
    seen: typing.ClassVar[list] = []

    def init(self, rng, d_out, d_in, rank, T, residuals=None):
        params = super().init(rng, d_out, d_in, rank, T)
        if residuals is not None:
            type(self).seen.append(np.array(residuals))
            left = np.linalg.svd(np.concatenate(list(residuals), axis=1))[0]
            right = np.linalg.svd(np.concatenate(list(residuals), axis=0))[2]
            params["B"], params["C"] = left[:, :rank], right[:rank].T
        return params


@pytest.mark.parametrize("solver", ["gd", "als"])
def test_init_receives_the_tasks_residuals_at_the_start(tied, solver):
    SpectralStart.seen.clear()
    res = fl.retrain(tied, peft=SpectralStart(), rank=2, solver=solver, backend="numpy", max_iter=2000, tol=1e-12)
    W = np.stack([task.W_star for task in tied.tasks])
    (residuals,) = SpectralStart.seen
    np.testing.assert_allclose(residuals, W - W.mean(axis=0), atol=1e-12)  # A₀: the standard solution
    assert res.objective < 1e-10 * fl.retrain(tied, method="standard", backend="numpy").objective


def test_the_kit_and_the_protocol_check_an_init_that_takes_residuals():
    assert "init from residuals" in check_parameterization(SpectralStart)

    class NoKeyword(SharedSubspace):
        init_from_residuals = True

    assert any("residuals=None" in e for e in protocol_errors(NoKeyword()))

    class WrongShapes(SpectralStart):
        def init(self, rng, d_out, d_in, rank, T, residuals=None):
            params = super().init(rng, d_out, d_in, rank, T, residuals)
            if residuals is not None:
                params["M"] = params["M"][:1]
            return params

    with pytest.raises(ConformanceError, match=r"^\[init from residuals\] init\(\)\['M'\] has shape"):
        check_parameterization(WrongShapes)


# -- basis_equivariance -------------------------------------------------------------------------------

class ScaledSymmetric:
    """Δ_t = g_t U_t U_tᵀ (docs/plugins.md), declared equivariant under one change of basis."""

    name = "scaled_sym_eq"
    api_version = 1
    square_only = True
    basis_equivariance = "same_basis"

    def shapes(self, d_out, d_in, rank):
        return {"U": (d_in, rank), "g": (1,)}

    def init(self, rng, d_out, d_in, rank, T):
        return {"U": rng.standard_normal((T, d_in, rank)) / np.sqrt(d_in), "g": np.ones((T, 1))}

    def delta(self, params):
        return params["g"][:, :, None] * (params["U"] @ params["U"].swapaxes(1, 2))

    def pullback(self, params, G):
        xp = array_module(params["U"])
        U, g = params["U"], params["g"]
        return {"U": g[:, :, None] * ((G + G.swapaxes(1, 2)) @ U),
                "g": xp.sum((G * (U @ U.swapaxes(1, 2))).reshape(G.shape[0], -1), axis=1, keepdims=True)}

    def change_basis(self, params, Q_out, Q_in):
        return {"U": Q_out @ params["U"], "g": params["g"]}


class NotDeclared(ScaledSymmetric):
    name = "scaled_sym_plain"
    basis_equivariance = None
    change_basis = None


def test_the_span_reduction_reads_the_declared_equivariance():
    prob = fl.make_problem(d=30, k=1, T=3, seed=1)
    solve = {"peft": ScaledSymmetric(), "rank": 1, "solver": "gd", "optimizer": "lbfgs", "backend": "numpy",
             "max_iter": 3000, "tol": 1e-12}
    reduced, full = fl.retrain(prob, **solve), fl.retrain(prob, **solve, reduction="none")
    assert reduced.info["reduction"]["m_out"] <= 3 and "reduction" not in full.info
    assert reduced.converged and full.converged
    np.testing.assert_allclose(reduced.A, prob.A_star, atol=1e-9)  # both recover A* (T = 3)
    np.testing.assert_allclose(full.A, prob.A_star, atol=1e-9)
    for t in range(prob.T):
        np.testing.assert_allclose(reduced.delta(t), full.delta(t), atol=1e-9)
    plain = fl.retrain(prob, peft=NotDeclared(), rank=1, solver="gd", backend="numpy", max_iter=20)
    assert "reduction" not in plain.info  # no family, no declaration: the full space (safe for a LoHa)
    assert fl.peft.capabilities(ScaledSymmetric())["basis_equivariance"] == "same_basis"
    assert fl.peft.capabilities(fl.peft.get("lora"))["basis_equivariance"] == "two_sided"


def test_the_kit_and_the_protocol_check_a_declared_equivariance():
    assert "basis equivariance" in check_parameterization(ScaledSymmetric)
    assert "basis equivariance" in check_parameterization(fl.peft.get("lora"))  # implied by its family

    class Doubles(ScaledSymmetric):
        def change_basis(self, params, Q_out, Q_in):
            return {"U": Q_out @ params["U"], "g": 2 * params["g"]}

    with pytest.raises(ConformanceError, match=r"^\[basis equivariance\] delta\(change_basis\(θ, U, V\)\) differs"):
        check_parameterization(Doubles)

    class Undeclared(ScaledSymmetric):
        change_basis = None

    assert any("needs the method change_basis" in e for e in protocol_errors(Undeclared()))

    class Hadamard(ScaledSymmetric):  # LoHa-like: an elementwise product is not equivariant
        def delta(self, params):
            D = super().delta(params)
            return D * D

        def pullback(self, params, G):
            return super().pullback(params, 2 * G * super().delta(params))

    with pytest.raises(ConformanceError, match=r"\[basis equivariance\]"):
        check_parameterization(Hadamard)
    bad = type("Bad", (ScaledSymmetric,), {"basis_equivariance": "sideways"})
    assert any("basis_equivariance='sideways'" in e for e in protocol_errors(bad()))


# -- rank_options (a second rank) -----------------------------------------------------------------------

def test_a_second_rank_is_an_option_checked_like_rank():
    assert "rank options" in check_parameterization(SBLoRA(private_rank=1))
    assert fl.peft.capabilities(SBLoRA(private_rank=2))["rank_options"] == {"private_rank": 2}
    prob = fl.make_problem(d=5, k=1, T=3, symmetric=False, seed=0)
    with pytest.raises(fl.FastLoRAError, match=r"peft_options\['private_rank'\]=6 is too large for peft='sblora'"):
        fl.retrain(prob, peft=SBLoRA(private_rank=6), rank=1, backend="numpy")
    res = fl.retrain(prob, peft="lora", rank=1, backend="numpy")
    with pytest.raises(fl.FastLoRAError, match=r"^ft_peft_options\['private_rank'\]=6 is too large for "
                                               r"ft_peft='sblora'"):
        fl.evaluate(res, prob, ft_peft=SBLoRA(private_rank=6))

    class NoReadBack(SBLoRA):
        def __init__(self, private_rank=0):
            super().__init__(0)

    with pytest.raises(ConformanceError, match=r"\[rank options\] NoReadBack\(private_rank=1\)\.private_rank reads "
                                               r"back as 0"):
        check_parameterization(NoReadBack)
    widths = type("W", (SBLoRA,), {"rank_options": ("width",)})()
    assert any("rank option 'width'" in e for e in protocol_errors(widths))


# -- errors name ft_rank ------------------------------------------------------------------------------

def test_evaluate_names_ft_rank_and_defaults_it_to_the_retrained_rank_for_shared_parameters(tied):
    res = fl.retrain(tied, peft="tied_lora", rank=2, backend="numpy", max_iter=300)
    with pytest.raises(fl.FastLoRAError) as err:
        fl.evaluate(res, tied, ft_peft="tied_lora", ft_rank=1)
    assert str(err.value).startswith("ft_rank=1 differs from the rank 2"), str(err.value)
    wider = fl.make_problem(law="tied", d=8, k=1, T=5, seed=3)
    res = fl.retrain(wider, peft="tied_lora", rank=2, backend="numpy", max_iter=300)
    assert np.isfinite(fl.evaluate(res, wider, ft_peft="tied_lora")["excess_risk"])  # ft_rank: res.rank, not k


# -- tied_lora's kernels size their threads --------------------------------------------------------------

def test_tied_lora_kernels_call_threads_for(monkeypatch):
    from fastlora_tied_lora import _numba
    sizes = []
    monkeypatch.setattr(_numba, "threads_for", sizes.append)
    rng = np.random.default_rng(0)
    params = {"B": rng.standard_normal((5, 2)), "C": rng.standard_normal((4, 2)), "s": rng.standard_normal((3, 2))}
    _numba.delta(params)
    _numba.pullback(params, rng.standard_normal((3, 5, 4)))
    assert sizes == [3 * 5 * 4, 3 * 5 * 4]


# -- exact second derivatives (jvp, curvature, symmetry_tangents): what the landscape tools need ------
def test_the_kit_checks_second_order_members_and_catches_a_wrong_curvature():
    from fastlora.peft.builtins import LoRA

    class WrongCurvature(LoRA):
        name = "wrong_curvature"

        def curvature(self, params, G, direction):
            out = super().curvature(params, G, direction)
            return {**out, "B": 2 * out["B"]}

    assert "second order" in check_parameterization(fl.peft.get("lora_sym"))
    with pytest.raises(ConformanceError, match=r"second order.*curvature\(\)\['B'\]"):
        check_parameterization(WrongCurvature())


def test_the_landscape_takes_any_parameterization_with_second_order_members():
    from fastlora.landscape import hessian_spectrum
    from fastlora.peft.builtins import LoRA

    class Relabelled(LoRA):  # a plugin that inherits LoRA's derivatives: analysed like lora
        name = "relabelled"

    prob = fl.make_problem(d=4, k=1, T=3, seed=0, symmetric=False)
    res = fl.retrain(prob, peft="lora", rank=1, backend="numpy")
    ours = hessian_spectrum(res, prob, peft=Relabelled(), rank=1)
    theirs = hessian_spectrum(res, prob, peft="lora", rank=1)
    np.testing.assert_allclose(ours.smallest, theirs.smallest, atol=1e-10)
    with pytest.raises(ValueError, match="jvp, curvature, symmetry_tangents"):
        hessian_spectrum(res, prob, peft="full", rank=1)
