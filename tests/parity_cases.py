"""Parity cases shared by the Numba (CPU) and CuPy (GPU) suites: every kernel against the numpy
reference and the naive oracle (tests/naive.py), and every solver/mode/dtype against numpy."""
import itertools

import naive
import numpy as np

import fastlora as fl
from fastlora.kernels import KernelSet
from fastlora.kernels import reference as ref

TOL = {"float64": 1e-10, "float32": 1e-4}

SOLVER_CASES = {
    # name: (problem kwargs, retrain kwargs)
    # reduction="none": these exercise the full-space factored kernels (the reduced solver is
    # tested against them in tests/test_reduction.py)
    "als-factored-psd": (dict(d=40, k=2, T=4, seed=1), dict(peft="lora_sym", solver="als", reduction="none")),
    "als-factored-general": (dict(d=36, d_out=34, k=2, T=4, seed=2, symmetric=False),
                             dict(peft="lora", solver="als", reduction="none")),
    "als-reduced": (dict(d=40, k=2, T=4, seed=11), dict(peft="lora_sym", solver="als")),
    "als-small-exact": (dict(d=16, k=2, T=4, seed=11), dict(peft="lora_sym", solver="als", adapter_step="exact",
                                                           reduction="none")),
    "als-dense-exact": (dict(d=16, k=2, T=4, seed=3), dict(peft="lora_sym", adapter_step="exact")),
    # n=2000: at n=300, σ=0.1 the objective pins A only to ~3e-9 (plain and extrapolated ALS on one
    # backend stop that far apart, F constant to rounding), so no solver pair can agree to 1e-10 there
    "als-finite-whitened": (dict(d=10, k=1, T=3, n=2000, noise=0.05, seed=4, symmetric=False),
                            dict(peft="lora", solver="als")),
    "als-finite-inner": (dict(d=8, k=1, T=3, n=300, noise=0.1, seed=5), dict(peft="lora_sym", solver="als",
                                                                             max_iter=60)),
    "gd-factored": (dict(d=40, k=1, T=3, seed=6), dict(peft="lora_sym", solver="gd", max_iter=80,
                                                       reduction="none")),
    "gd-finite": (dict(d=8, k=1, T=3, n=300, noise=0.1, seed=7, symmetric=False),
                  dict(peft="lora", solver="gd", max_iter=300)),
    "lbfgs-finite": (dict(d=8, k=1, T=3, n=300, noise=0.1, seed=12), dict(peft="lora_sym", max_iter=300)),
    # tol=0: 100 iterations on both (Reptile's F stalls at rounding while A still moves ~1e-9, so where
    # each backend stops is rounding's choice)
    "reptile-population": (dict(d=10, k=1, T=3, seed=8), dict(method="reptile", max_iter=100, tol=0.0)),
    "reptile-finite": (dict(d=8, k=1, T=3, n=300, noise=0.1, seed=9), dict(method="reptile", max_iter=50)),
    "standard-finite": (dict(d=8, k=1, T=3, n=300, noise=0.1, seed=10), dict(method="standard")),
}


def rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def check_solver_case(backend, name, dtype):
    prob_kw, kw = SOLVER_CASES[name]
    prob = fl.make_problem(**prob_kw)
    # converged to well below the parity tolerance, so that where the two backends' roundings
    # make an extrapolating solver stop an iteration apart, both are at the optimum
    kw = {"max_iter": 2000, "tol": 1e-13 if dtype == "float64" else 1e-6, **kw}
    fast = fl.retrain(prob, backend=backend, dtype=dtype, **kw)
    slow = fl.retrain(prob, backend="numpy", dtype=dtype, **kw)
    assert fast.A.dtype == np.dtype(dtype)
    assert fast.info.get("solver") == slow.info.get("solver")
    assert rel(fast.A, slow.A) <= TOL[dtype], (name, rel(fast.A, slow.A))
    for t in range(prob.T):
        assert rel(fast.delta(t), slow.delta(t)) <= 10 * TOL[dtype] or np.abs(slow.delta(t)).max() < 1e-12
    # extrapolation accepts or rejects a step on a comparison of two objectives, which rounding
    # can flip near the optimum: the iteration counts then differ, the optimum does not
    slack = 2 if fast.info.get("acceleration", "none") == "none" else max(2, 0.4 * slow.n_iter)
    if dtype == "float32":  # the compiled engine's products round otherwise than BLAS: float32 paths drift apart
        slack = max(slack, 0.05 * slow.n_iter)
    assert abs(fast.n_iter - slow.n_iter) <= slack, (fast.n_iter, slow.n_iter)


def kernel_inputs(xp, dtype, seed=0, T=5, r=3, k=2, m=11, n=9):
    rng = np.random.default_rng(seed)

    def a(*shape):
        return xp.asarray(rng.standard_normal(shape), dtype=dtype)

    return {"X": a(T, r, n), "D": a(n, n), "L": a(T, k, n), "R": a(T, k, n),
            "Q": ref.orthonormalize_rows(a(T, r, n)), "Y": a(T, r, n), "P": ref.orthonormalize_rows(a(T, r, m)),
            "Z": a(T, r, n), "M": a(n, n), "S": a(n, n), "A_old": a(n, n), "B": a(T, r, n), "C": a(T, r, n),
            "B2": a(T, k, n), "C2": a(T, k, n)}


def _copies(inputs, to_numpy):
    return {name: np.array(to_numpy(v), copy=True) for name, v in inputs.items()}


# Each check: (kernels, inputs, to_numpy) -> (got, reference, naive) as numpy arrays in a
# basis-independent form (projectors, products) where the kernel's output is unique only up
# to signs or rotations; naive may be None where the reference itself is the definition.
def _apply_shared_lowrank(ks, i, n):
    args = (i["X"], i["D"], i["L"], i["R"])
    return n(ks.apply_shared_lowrank(*args)), n(ref.apply_shared_lowrank(*args)), \
        naive.apply_shared_lowrank(*(n(a) for a in args))


def _orthonormalize_rows(ks, i, n):
    Q = n(ks.orthonormalize_rows(i["Y"]))
    ortho = Q @ Q.swapaxes(1, 2)
    assert np.allclose(ortho, np.eye(Q.shape[1])[None], atol=1e-5 if Q.dtype == np.float32 else 1e-12)
    return naive.projector(Q), naive.projector(n(ref.orthonormalize_rows(i["Y"]))), \
        naive.projector(naive.gram_schmidt_rows(n(i["Y"])))


def _ritz_psd(ks, i, n):
    def product(U):
        U = np.asarray(U, np.float64)
        return U.swapaxes(1, 2) @ U
    return product(n(ks.ritz_psd(i["Q"], i["Y"]))), product(n(ref.ritz_psd(i["Q"], i["Y"]))), \
        naive.ritz_psd_product(n(i["Q"]), n(i["Y"]))


def _ritz_general(ks, i, n):
    B, C, V = (n(v) for v in ks.ritz_general(i["P"], i["Z"]))
    Br, Cr, Vr = (n(v) for v in ref.ritz_general(i["P"], i["Z"]))
    assert rel(naive.projector(V), naive.projector(Vr)) <= (1e-3 if V.dtype == np.float32 else 1e-9)
    return np.asarray(B, np.float64).swapaxes(1, 2) @ C, np.asarray(Br, np.float64).swapaxes(1, 2) @ Cr, \
        naive.ritz_general_product(n(i["P"]), n(i["Z"]))


def _psd_subspace_step(ks, i, n):
    scratch = i["Y"].copy()  # documented scratch: the kernel may return the next basis in it
    U, Q = (n(v) for v in ks.psd_subspace_step(i["Q"], scratch, 0.7))
    Ur, Qr = (n(v) for v in ref.psd_subspace_step(KernelSet("numpy"), i["Q"], i["Y"].copy(), 0.7))
    U64, Ur64 = np.asarray(U, np.float64), np.asarray(Ur, np.float64)
    got = np.concatenate([U64.swapaxes(1, 2) @ U64, naive.projector(Q)], axis=1)
    want = np.concatenate([Ur64.swapaxes(1, 2) @ Ur64, naive.projector(Qr)], axis=1)
    oracle = np.concatenate([naive.ritz_psd_product(n(i["Q"]), n(i["Y"])),
                             naive.projector(naive.gram_schmidt_rows(n(i["Y"]) + 0.7 * n(i["Q"])))], axis=1)
    return got, want, oracle


def _gram_sum(ks, i, n):
    return n(ks.gram_sum(i["B"], i["C"])), n(ref.gram_sum(i["B"], i["C"])), naive.gram_sum(n(i["B"]), n(i["C"]))


def _shared_plus_gram(ks, i, n):
    got = n(ks.shared_plus_gram(i["M"], i["B"], i["C"], -0.3))
    return got, n(ref.shared_plus_gram(i["M"], i["B"], i["C"], -0.3)), \
        n(i["M"]) - 0.3 * naive.gram_sum(n(i["B"]), n(i["C"]))


def _gram_inner(ks, i, n):
    args = (i["B"], i["C"], i["B2"][:, :1], i["C2"][:, :1])
    return n(ks.gram_inner(*args)), n(ref.gram_inner(*args)), naive.gram_inner(*(n(a) for a in args))


def _lowrank_diff_sq(ks, i, n):
    args = (i["B2"], i["C2"], i["B"], i["C"])
    return n(ks.lowrank_diff_sq(*args)), n(ref.lowrank_diff_sq(*args)), naive.lowrank_diff_sq(*(n(a) for a in args))


def _residual_stats(ks, i, n):
    outs = []
    for sym in (True, False):
        D, norms = ks.residual_stats(i["S"], i["M"], i["A_old"], sym)
        Dr, normsr = ref.residual_stats(i["S"], i["M"], i["A_old"], sym)
        Dn, normsn = naive.residual_stats(n(i["S"]), n(i["M"]), n(i["A_old"]), sym)
        outs.append((np.concatenate([n(D).ravel(), list(norms)]), np.concatenate([n(Dr).ravel(), list(normsr)]),
                     np.concatenate([Dn.ravel(), normsn])))
    return tuple(np.concatenate(parts) for parts in zip(*outs))


def _shared_update_stats(ks, i, n):
    outs = []
    for symmetrize, same, given in itertools.product((True, False), repeat=3):
        C = i["B"] if same else i["C"]
        # a given gram is used as it is (here Σ_t B_tᵀC_t + 0.25, so ignoring it shows); it may be overwritten
        offset = 0.25 if given else 0.0
        gram = ks.gram_sum(i["B"], C) + offset if given else None
        gram_ref = ref.gram_sum(n(i["B"]), n(C)) + offset if given else None
        A, D, norms = ks.shared_update_stats(i["M"], i["B"], C, -0.3, i["S"], i["A_old"], symmetrize, gram=gram)
        Ar, Dr, normsr = ref.shared_update_stats(KernelSet("numpy"), n(i["M"]), n(i["B"]), n(C), -0.3, n(i["S"]),
                                                 n(i["A_old"]), symmetrize, gram=gram_ref)
        An = n(i["M"]) - 0.3 * (naive.gram_sum(n(i["B"]), n(C)) + offset)
        Dn, normsn = naive.residual_stats(n(i["S"]), An, n(i["A_old"]), symmetrize)
        outs.append((np.concatenate([n(A).ravel(), n(D).ravel(), list(norms)]),
                     np.concatenate([n(Ar).ravel(), n(Dr).ravel(), list(normsr)]),
                     np.concatenate([An.ravel(), Dn.ravel(), normsn])))
    return tuple(np.concatenate(parts) for parts in zip(*outs))


KERNEL_CHECKS = {
    "apply_shared_lowrank": _apply_shared_lowrank, "orthonormalize_rows": _orthonormalize_rows,
    "ritz_psd": _ritz_psd, "ritz_general": _ritz_general, "psd_subspace_step": _psd_subspace_step,
    "gram_sum": _gram_sum, "shared_plus_gram": _shared_plus_gram, "gram_inner": _gram_inner,
    "lowrank_diff_sq": _lowrank_diff_sq, "residual_stats": _residual_stats, "shared_update_stats": _shared_update_stats,
}
SCRATCH = {"psd_subspace_step": {"Y"}}  # inputs a kernel's contract lets it overwrite


def check_kernel(kernels, name, xp, dtype, to_numpy):
    """``kernels.<name>`` agrees with the reference (to rounding of ``dtype``) and with the naive
    oracle (float64: to 1e-10; float32: to its rounding), and leaves its inputs untouched."""
    inputs = kernel_inputs(xp, dtype)
    before = _copies(inputs, to_numpy)
    got, want, oracle = KERNEL_CHECKS[name](kernels, inputs, lambda v: np.asarray(to_numpy(v)))
    tol = TOL[dtype]
    assert rel(got, want) <= 10 * tol, f"{name}: {rel(got, want):.2e} from the reference"
    assert rel(want, oracle) <= 10 * tol, f"reference {name}: {rel(want, oracle):.2e} from the naive oracle"
    assert rel(got, oracle) <= 10 * tol, f"{name}: {rel(got, oracle):.2e} from the naive oracle"
    after = _copies(inputs, to_numpy)
    changed = sorted(k for k in before if k not in SCRATCH.get(name, ()) and not np.array_equal(before[k], after[k]))
    assert not changed, f"{name} overwrote its input(s) {changed}"
