"""Parity cases shared by the Numba (CPU) and CuPy (GPU) suites: fast backend vs numpy."""
import numpy as np

import fastlora as fl
from fastlora.kernels import reference as ref

TOL = {"float64": 1e-10, "float32": 1e-4}

SOLVER_CASES = {
    # name: (problem kwargs, retrain kwargs)
    "als-factored-psd": (dict(d=20, k=2, T=4, seed=1), dict(peft="lora_sym")),
    "als-factored-general": (dict(d=18, d_out=12, k=2, T=4, seed=2, symmetric=False), dict(peft="lora")),
    "als-dense-exact": (dict(d=16, k=2, T=4, seed=3), dict(peft="lora_sym", adapter_step="exact")),
    "als-finite-whitened": (dict(d=10, k=1, T=3, n=300, noise=0.1, seed=4, symmetric=False), dict(peft="lora")),
    "als-finite-inner": (dict(d=8, k=1, T=3, n=300, noise=0.1, seed=5), dict(peft="lora_sym", max_iter=60)),
    "gd-factored": (dict(d=12, k=1, T=3, seed=6), dict(peft="lora_sym", solver="gd", max_iter=300)),
    "gd-finite": (dict(d=8, k=1, T=3, n=300, noise=0.1, seed=7, symmetric=False),
                  dict(peft="lora", solver="gd", max_iter=300)),
    "reptile-population": (dict(d=10, k=1, T=3, seed=8), dict(method="reptile", max_iter=100)),
    "reptile-finite": (dict(d=8, k=1, T=3, n=300, noise=0.1, seed=9), dict(method="reptile", max_iter=50)),
    "standard-finite": (dict(d=8, k=1, T=3, n=300, noise=0.1, seed=10), dict(method="standard")),
}


def rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def check_solver_case(backend, name, dtype):
    prob_kw, kw = SOLVER_CASES[name]
    prob = fl.make_problem(**prob_kw)
    kw = {"max_iter": 2000, **kw}
    if dtype == "float32":
        kw.setdefault("tol", 1e-6)
    fast = fl.retrain(prob, backend=backend, dtype=dtype, **kw)
    slow = fl.retrain(prob, backend="numpy", dtype=dtype, **kw)
    assert fast.A.dtype == np.dtype(dtype)
    assert rel(fast.A, slow.A) <= TOL[dtype], (name, rel(fast.A, slow.A))
    for t in range(prob.T):
        assert rel(fast.delta(t), slow.delta(t)) <= 10 * TOL[dtype] or np.abs(slow.delta(t)).max() < 1e-12
    assert fast.n_iter == slow.n_iter or abs(fast.n_iter - slow.n_iter) <= 2


def random_kernel_inputs(xp, dtype, seed=0, T=5, r=3, k=2, m=11, n=9):
    rng = np.random.default_rng(seed)
    a = lambda *s: xp.asarray(rng.standard_normal(s), dtype=dtype)  # noqa: E731
    S = a(n, n)
    return {"X": a(T, r, n), "D": a(n, n), "L": a(T, k, n), "R": a(T, k, n), "Q": ref.orthonormalize_rows(a(T, r, n)),
            "Y": a(T, r, n), "P": ref.orthonormalize_rows(a(T, r, m)), "Z": a(T, r, n), "M": a(n, n), "S": S,
            "A_old": a(n, n), "B": a(T, r, n), "C": a(T, r, n), "B2": a(T, k, n), "C2": a(T, k, n)}


def projector(Q):
    Q = np.asarray(Q, dtype=np.float64)
    return Q.swapaxes(1, 2) @ Q


def check_kernels(kernels, xp, dtype, to_numpy):
    """Every kernel of ``kernels`` against reference on the same inputs (sign-invariant where needed)."""
    tol = TOL[dtype]
    i = random_kernel_inputs(xp, dtype)
    n = lambda v: to_numpy(v)  # noqa: E731
    names = set(vars(kernels)) if not isinstance(kernels, dict) else set(kernels)
    get = (lambda f: getattr(kernels, f)) if not isinstance(kernels, dict) else kernels.__getitem__
    checked = []
    if "apply_shared_lowrank" in names:
        assert rel(n(get("apply_shared_lowrank")(i["X"], i["D"], i["L"], i["R"])),
                   n(ref.apply_shared_lowrank(i["X"], i["D"], i["L"], i["R"]))) <= tol
        checked.append("apply_shared_lowrank")
    if "orthonormalize_rows" in names:
        Q = n(get("orthonormalize_rows")(i["Y"]))
        assert rel(projector(Q), projector(n(ref.orthonormalize_rows(i["Y"])))) <= 10 * tol
        np.testing.assert_allclose(Q @ Q.swapaxes(1, 2), np.broadcast_to(np.eye(Q.shape[1]), (Q.shape[0],) * 1 + (Q.shape[1],) * 2), atol=10 * tol)
        checked.append("orthonormalize_rows")
    if "ritz_psd" in names:
        U, Ur = n(get("ritz_psd")(i["Q"], i["Y"])), n(ref.ritz_psd(i["Q"], i["Y"]))
        assert rel(U.swapaxes(1, 2) @ U, Ur.swapaxes(1, 2) @ Ur) <= 10 * tol
        checked.append("ritz_psd")
    if "ritz_general" in names:
        got, want = get("ritz_general")(i["P"], i["Z"]), ref.ritz_general(i["P"], i["Z"])
        B, C, V = (n(v) for v in got)
        Br, Cr, Vr = (n(v) for v in want)
        assert rel(B.swapaxes(1, 2) @ C, Br.swapaxes(1, 2) @ Cr) <= 10 * tol
        assert rel(projector(V), projector(Vr)) <= 10 * tol
        checked.append("ritz_general")
    if "psd_subspace_step" in names:
        Yc = i["Y"].copy()
        U, Qn = (n(v) for v in get("psd_subspace_step")(i["Q"], Yc, 0.7))
        Ur, Qr = (n(v) for v in ref.psd_subspace_step(i["Q"], i["Y"], 0.7))
        assert rel(U.swapaxes(1, 2) @ U, Ur.swapaxes(1, 2) @ Ur) <= 10 * tol
        assert rel(projector(Qn), projector(Qr)) <= 10 * tol
        checked.append("psd_subspace_step")
    for name, args in (("gram_inner", ("B", "C", "B2", "C2")), ("lowrank_diff_sq", ("B2", "C2", "B", "C"))):
        if name in names:
            assert rel(n(get(name)(*(i[a] for a in args))), n(getattr(ref, name)(*(i[a] for a in args)))) <= 10 * tol
            checked.append(name)
    for sym in (True, False):
        if "residual_stats" in names:
            D, stats = get("residual_stats")(i["S"], i["M"], i["A_old"], sym)
            Dr, statsr = ref.residual_stats(i["S"], i["M"], i["A_old"], sym)
            assert rel(n(D), n(Dr)) <= tol and rel(stats, statsr) <= 10 * tol
            checked.append("residual_stats")
        if "shared_update_stats" in names:
            for same in (True, False):
                C = i["B"] if same else i["C"]
                A, D, stats = get("shared_update_stats")(i["M"], i["B"], C, -0.3, i["S"], i["A_old"], sym)
                Ar, Dr, statsr = ref.shared_update_stats(i["M"], i["B"], C, -0.3, i["S"], i["A_old"], sym)
                assert rel(n(A), n(Ar)) <= tol and rel(n(D), n(Dr)) <= tol and rel(stats, statsr) <= 10 * tol
            checked.append("shared_update_stats")
    return set(checked)
