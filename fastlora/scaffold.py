"""``fastlora plugins new NAME [--numba] [--shared]``: a plugin package to start from.

It writes ``fastlora-NAME/`` — ``pyproject.toml`` with the entry point in ``fastlora.peft``, the
package ``fastlora_NAME`` with the class (docstrings say what to fill in), ``tests/`` with the
conformance kit and (``--numba``) a test that the fast path matches the plain members and that
the solvers call it, and a README.  As written it works (plain LoRA Δ_t = B_t C_tᵀ, or with
``--shared`` a shared basis Δ_t = B M_t Cᵀ), so its tests pass before anything is changed;
docs/plugins.md, "Start from the scaffold", has the steps to make it another parameterization.
"""
from __future__ import annotations

import keyword
import re
from pathlib import Path
from string import Template

from .errors import FastLoRAError

NAME_PATTERN = re.compile(r"[a-z][a-z0-9_]*\Z")


def check_plugin_name(name: str) -> str:
    """A registry key usable as a module suffix: lower-case letters, digits and _, not a built-in name."""
    from .peft.registry import BUILTINS
    if not isinstance(name, str) or not NAME_PATTERN.match(name) or keyword.iskeyword(name):
        raise FastLoRAError(f"NAME={name!r} must be a lower-case Python identifier (letters, digits, _; e.g. "
                            f"'loha'): it is the registry key and names the module fastlora_NAME")
    if name in BUILTINS:
        raise FastLoRAError(f"NAME={name!r} is a built-in parameterization's name, which always resolves to "
                            f"fastlora's own class; choose another")
    return name


def write_plugin(name: str, folder=".", *, numba: bool = False, shared: bool = False) -> Path:
    """Write the package for parameterization ``name`` into ``folder``/fastlora-NAME; returns that path."""
    name = check_plugin_name(name)
    folder = Path(folder)
    if not folder.is_dir():
        raise FastLoRAError(f"--out {str(folder)!r} is not an existing folder")
    dist = name.replace("_", "-")
    root = folder / f"fastlora-{dist}"
    if root.exists():
        raise FastLoRAError(f"{str(root)!r} exists already; remove it or choose another --out")
    module = f"fastlora_{name}"
    words = {"name": name, "dist": dist, "module": module,
             "Class": "".join(part.capitalize() for part in name.split("_") if part),
             "numba_dep": ', "numba>=0.58"' if numba else "",
             "variant": "shared" if shared else "plain"}
    files = {
        "pyproject.toml": PYPROJECT,
        "README.md": README_SHARED if shared else README_PLAIN,
        f"{module}/__init__.py": (CLASS_SHARED if shared else CLASS_PLAIN) + (FAST_PATH_CLASS if numba else ""),
        f"tests/test_{name}.py": TESTS,
    }
    if numba:
        files[f"{module}/_numba.py"] = KERNELS + (WRAPPERS_SHARED if shared else WRAPPERS_PLAIN)
        files[f"tests/test_{name}_fast_path.py"] = FAST_PATH_TESTS
    fast_line = 'self.fast_paths = {"numba": NumbaFastPath(self)}  # compiled delta and pullback (numba backend)'
    words["fast_paths_line"] = fast_line if numba else "# fast_paths: see docs/plugins.md (--numba writes one)"
    words["fast_passed"] = ' and "fast path numba" in passed' if numba else ""
    words["numba_step"] = ("\n6. keep ``_numba.py`` computing what ``delta`` and ``pullback`` compute "
                           f"(tests/test_{name}_fast_path.py);" if numba else "")
    root.mkdir()
    for relative, template in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(Template(template).substitute(words), encoding="utf-8")
    return root


PYPROJECT = '''\
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "fastlora-$dist"
version = "0.1.0"
description = "$Class: a PEFT parameterization for fastlora"
requires-python = ">=3.11"
dependencies = ["fastlora", "numpy>=1.24"$numba_dep]

# the registry key (left) must equal the class's `name`
[project.entry-points."fastlora.peft"]
$name = "$module:$Class"

[tool.setuptools]
packages = ["$module"]
'''

_STEPS = '''\
Make it yours in the steps of fastlora's docs/plugins.md ("Start from the scaffold"):

1. say in the class docstring what Δ is, and list your parameters in ``shapes``;
2. ``init``: draw them (numpy, task axis first); start where some gradient is nonzero;
3. ``delta`` and ``pullback``: Δ and the gradient of Σ_t ⟨G_t, Δ_t⟩, batched over tasks;
4. run ``python -m pytest tests``: the conformance kit names the check and the member that fail;
5. add the optional members that apply (docs/plugins.md, "The protocol");$numba_step
then ``pip install .`` and ``fastlora plugins --check``.
'''

CLASS_PLAIN = '''\
"""$Class for fastlora — a PEFT parameterization written by ``fastlora plugins new $name``.

As generated it is plain LoRA, Δ_t = B_t C_tᵀ, so that its tests pass before you change anything.
''' + _STEPS + '''"""
from __future__ import annotations

import numpy as np


class $Class:
    """Δ_t = B_t C_tᵀ with B_t (d_out, r) and C_t (d_in, r) per task.

    FILL IN: what your Δ is, with the parameters' shapes (``help()`` and the README show it).
    """

    name = "$name"       # the registry key: the same as the entry point in pyproject.toml
    api_version = 1

    def __init__(self, init_scale: float = 1.0):
        """Options, each with a default: ``fl.retrain(..., peft="$name", peft_options={"init_scale": 0.5})``,
        ``peft_options = { init_scale = 0.5 }`` in a sweep spec, ``fastlora solve --peft-options``.
        Fine-tuning by name reuses the retrained instance with its options.  FILL IN yours; refuse
        a bad value with ValueError naming it."""
        if isinstance(init_scale, bool) or not isinstance(init_scale, (int, float)) or not init_scale > 0:
            raise ValueError(f"init_scale must be a positive number, got {init_scale!r}")
        self.init_scale = float(init_scale)
        $fast_paths_line

    def shapes(self, d_out, d_in, rank):
        """One task's parameter shapes, without the task axis.  FILL IN: your parameters."""
        return {"B": (d_out, rank), "C": (d_in, rank)}

    def init(self, rng, d_out, d_in, rank, T):
        """The starting parameters: numpy arrays (T, *shape); ``rng`` is a numpy Generator.

        FILL IN.  Refuse a shape or rank you cannot represent here (ValueError naming the
        argument): the solvers never call ``shapes``.  Do not start where every gradient is zero
        (e.g. both factors of a product at 0): no gradient method leaves such a point, and the kit
        warns about it.  Here, as in LoRA: B = 0 and C random, so Δ = 0 at the start."""
        return {"B": np.zeros((T, d_out, rank)),
                "C": self.init_scale * rng.standard_normal((T, d_in, rank)) / np.sqrt(d_in)}

    def delta(self, params):
        """Δ_t for every task, (T, d_out, d_in).  FILL IN.  Keep the parameters' dtype, and call
        ``fastlora.array_module(x)`` instead of numpy for functions (the arrays may be cupy)."""
        return params["B"] @ params["C"].swapaxes(1, 2)

    def pullback(self, params, G):
        """The gradient of Σ_t ⟨G_t, Δ_t(θ)⟩ for every trainable parameter, each in its
        parameter's shape; G is (T, d_out, d_in).  FILL IN: the chain rule through ``delta``
        (the kit checks it against finite differences, one parameter at a time)."""
        return {"B": G @ params["C"], "C": G.swapaxes(1, 2) @ params["B"]}
'''

CLASS_SHARED = '''\
"""$Class for fastlora — a PEFT parameterization written by ``fastlora plugins new $name --shared``.

As generated it is a shared-basis LoRA, Δ_t = B M_t Cᵀ with B, C shared by all tasks and a core
M_t per task (protocol version 2), so that its tests pass before you change anything.
''' + _STEPS + '''"""
from __future__ import annotations

import numpy as np

from fastlora import array_module


class $Class:
    """Δ_t = B M_t Cᵀ: B (d_out, r) and C (d_in, r) shared by every task and trained, M_t (r, r) per task.

    FILL IN: what your Δ is, with the parameters' shapes (``help()`` and the README show it).
    """

    name = "$name"       # the registry key: the same as the entry point in pyproject.toml
    api_version = 2          # shared parameters need protocol version 2
    shared = ("B", "C")      # no task axis: init returns them once, pullback sums their gradient over tasks

    def __init__(self, init_scale: float = 1.0):
        """Options, each with a default: ``fl.retrain(..., peft="$name", peft_options={"init_scale": 0.5})``,
        ``peft_options = { init_scale = 0.5 }`` in a sweep spec, ``fastlora solve --peft-options``.
        Fine-tuning by name reuses the retrained instance with its options, and keeps its A and
        shared parameters (``fl.finetune(res, task, peft="$name")``).  A second rank (e.g. of a
        private per-task part) is an option too: list it in ``rank_options`` (docs/plugins.md).
        FILL IN yours; refuse a bad value with ValueError naming it."""
        if isinstance(init_scale, bool) or not isinstance(init_scale, (int, float)) or not init_scale > 0:
            raise ValueError(f"init_scale must be a positive number, got {init_scale!r}")
        self.init_scale = float(init_scale)
        $fast_paths_line

    def shapes(self, d_out, d_in, rank):
        """One task's view: shared parameters as they are, per-task ones without the task axis."""
        return {"B": (d_out, rank), "C": (d_in, rank), "M": (rank, rank)}

    def init(self, rng, d_out, d_in, rank, T):
        """Shared parameters once (no task axis), per-task ones (T, *shape), numpy.  FILL IN.

        Do not start where every gradient is zero (M = 0 needs B, C nonzero, as here)."""
        return {"B": self.init_scale * rng.standard_normal((d_out, rank)) / np.sqrt(d_out),
                "C": self.init_scale * rng.standard_normal((d_in, rank)) / np.sqrt(d_in),
                "M": np.zeros((T, rank, rank))}

    def delta(self, params):
        """Δ_t for every task, (T, d_out, d_in): shared parameters arrive unbatched.  FILL IN."""
        return params["B"] @ params["M"] @ params["C"].T

    def pullback(self, params, G):
        """The gradient of Σ_t ⟨G_t, Δ_t(θ)⟩: per-task parameters per task, shared ones summed over
        tasks.  FILL IN: the chain rule through ``delta`` (checked against finite differences)."""
        xp = array_module(G)
        B, C, M = params["B"], params["C"], params["M"]
        GC, GtB = G @ C, G.swapaxes(1, 2) @ B
        return {"M": B.T @ GC, "B": xp.sum(GC @ M.swapaxes(1, 2), axis=0), "C": xp.sum(GtB @ M, axis=0)}

    def best_fit_given_shared(self, R, rank, shared):
        """Optional: the per-task parameters minimising ½‖Δ_t − R_t‖²_F with the shared ones fixed
        (here M_t = B⁺ R_t C⁺ᵀ).  ALS uses it on population tasks instead of inner gradient steps.
        Delete it if your Δ has no such closed form."""
        xp = array_module(R)
        return {"M": xp.linalg.pinv(shared["B"]) @ R @ xp.linalg.pinv(shared["C"]).T}
'''

FAST_PATH_CLASS = '''

class NumbaFastPath:
    """``fast_paths["numba"]``: compiled ``delta`` and ``pullback`` (``_numba.py``) for the numba backend.

    Numba and the kernels are imported (and compiled, or loaded from fastlora's kernel cache) on
    first use, never when fastlora loads the plugin.  The solvers call ``pullback`` at every
    gradient (gd, ALS's inner steps) and ``delta`` wherever the class has no ``factors``
    (docs/plugins.md, "Fast paths").  FILL IN: keep both computing what the plain members
    compute — tests/test_${name}_fast_path.py checks it, and that the solvers call them.
    """

    def __init__(self, peft):
        self.peft = peft

    @property
    def delta(self):
        from . import _numba
        return _numba.delta

    @property
    def pullback(self):
        from . import _numba
        return _numba.pullback
'''

KERNELS = '''\
"""Numba kernels of $Class (``fast_paths["numba"]``), imported on first use only.

They compute what ``$Class.delta`` and ``$Class.pullback`` compute (tests/test_${name}_fast_path.py:
1e-12): one pass over each task's gradient G_t gives both of pullback's products.  They are
compiled with fastlora's ``kernel`` decorator (its on-disk cache and fastmath flags), and each
wrapper first calls ``threads_for`` with the size of what the kernel reads, so that small inputs
run on the calling thread (waking Numba's pool costs more than they do) and large ones on all
cores.  FILL IN: kernels for your own delta and pullback.
"""
from __future__ import annotations

import numpy as np
from numba import prange

from fastlora.kernels.numba_cpu import kernel, threads_for


@kernel(parallel=True)
def _products(L, R, out):
    """out[t] = L[t] R[t]ᵀ: rows of out spread over threads."""
    T, d_out, d_in = out.shape
    r = L.shape[2]
    for row in prange(T * d_out):
        t, i = row // d_out, row % d_out
        for j in range(d_in):
            acc = 0.0
            for k in range(r):
                acc += L[t, i, k] * R[t, j, k]
            out[t, i, j] = acc


@kernel(parallel=True)
def _gradient_products(G, X, Y, GX, GtY):
    """GX[t] = G[t] X[t] and GtY[t] = G[t]ᵀ Y[t] from one pass over G[t]; tasks spread over threads."""
    T, d_out, d_in = G.shape
    r = X.shape[2]
    for t in prange(T):
        for j in range(d_in):
            for k in range(r):
                GtY[t, j, k] = 0.0
        for i in range(d_out):
            for k in range(r):
                acc = 0.0
                y = Y[t, i, k]
                for j in range(d_in):
                    g = G[t, i, j]
                    acc += g * X[t, j, k]
                    GtY[t, j, k] += g * y
                GX[t, i, k] = acc


def _contiguous(dtype, *arrays):
    return [np.ascontiguousarray(a, dtype=dtype) for a in arrays]


def _per_task(matrix, T):
    """A shared (d, r) factor repeated for each of T tasks, (T, d, r) (small: r columns)."""
    return np.broadcast_to(matrix, (T, *matrix.shape))
'''

WRAPPERS_PLAIN = '''

def delta(params):
    """$Class.delta: (T, d_out, d_in) in the parameters' dtype."""
    dtype = params["B"].dtype
    B, C = _contiguous(dtype, params["B"], params["C"])
    out = np.empty((B.shape[0], B.shape[1], C.shape[1]), dtype=dtype)
    threads_for(out.size)
    _products(B, C, out)
    return out


def pullback(params, G):
    """$Class.pullback for a dense G (T, d_out, d_in)."""
    dtype = params["B"].dtype
    B, C, G = _contiguous(dtype, params["B"], params["C"], G)
    T, d_out, d_in = G.shape
    GC, GtB = np.empty((T, d_out, B.shape[2]), dtype), np.empty((T, d_in, B.shape[2]), dtype)
    threads_for(G.size)
    _gradient_products(G, C, B, GC, GtB)
    return {"B": GC, "C": GtB}
'''

WRAPPERS_SHARED = '''

def delta(params):
    """$Class.delta: (T, d_out, d_in) in the parameters' dtype (B M_t, small, by numpy)."""
    dtype = params["M"].dtype
    T = params["M"].shape[0]
    left, C = _contiguous(dtype, params["B"] @ params["M"], _per_task(params["C"], T))
    out = np.empty((left.shape[0], left.shape[1], C.shape[1]), dtype=dtype)
    threads_for(out.size)
    _products(left, C, out)
    return out


def pullback(params, G):
    """$Class.pullback for a dense G (T, d_out, d_in): the passes over G compiled, the r × r rest numpy."""
    dtype = params["M"].dtype
    B, C, M = params["B"], params["C"], params["M"]
    T, d_out, d_in = G.shape
    G, Cb, Bb = _contiguous(dtype, G, _per_task(C, T), _per_task(B, T))
    r = B.shape[1]
    GC, GtB = np.empty((T, d_out, r), dtype), np.empty((T, d_in, r), dtype)
    threads_for(G.size)
    _gradient_products(G, Cb, Bb, GC, GtB)
    return {"M": B.T @ GC, "B": (GC @ M.swapaxes(1, 2)).sum(axis=0), "C": (GtB @ M).sum(axis=0)}
'''

TESTS = '''\
"""$Class: the conformance kit, its entry point, and a retrain through fastlora
(written by ``fastlora plugins new``; keep these passing while you fill the class in)."""
import numpy as np
from $module import $Class

import fastlora as fl
from fastlora.testing import check_parameterization


def test_the_class_passes_the_conformance_kit():
    passed = check_parameterization($Class)
    assert "pullback vs finite differences" in passed$fast_passed


def test_it_is_registered_through_its_entry_point():
    assert "$name" in fl.peft.available()
    row = next(r for r in fl.peft.info() if r["name"] == "$name")
    assert row["distribution"] == "fastlora-$dist" and row["error"] is None, row


def test_it_retrains_and_finetunes():
    prob = fl.make_problem(d=8, k=1, T=4, symmetric=False, seed=0)
    res = fl.retrain(prob, peft="$name", rank=1, solver="gd", backend="numpy", max_iter=500)
    assert res.objective < fl.retrain(prob, method="standard", backend="numpy").objective
    assert np.isfinite(fl.evaluate(res, prob, ft_peft="$name")["excess_risk"])
'''

FAST_PATH_TESTS = '''\
"""The Numba fast path of $Class: its kernels give the plain members' numbers and dtypes, and the
solvers call them on the numba backend (written by ``fastlora plugins new --numba``)."""
import numpy as np
import pytest
from $module import $Class, _numba

import fastlora as fl


@pytest.mark.parametrize("T, d_out, d_in, r", [(3, 7, 6, 2), (1, 1, 1, 1), (4, 33, 20, 3)])
def test_the_kernels_match_the_plain_members(T, d_out, d_in, r):
    peft, rng = $Class(), np.random.default_rng(T + d_out)
    params = {k: v + 0.3 * rng.standard_normal(np.shape(v)) for k, v in peft.init(rng, d_out, d_in, r, T).items()}
    G = rng.standard_normal((T, d_out, d_in))
    fast = peft.fast_paths["numba"]
    np.testing.assert_allclose(fast.delta(params), peft.delta(params), rtol=1e-12, atol=1e-12)
    plain, compiled = peft.pullback(params, G), fast.pullback(params, G)
    assert set(compiled) == set(plain)
    for name in plain:
        np.testing.assert_allclose(compiled[name], plain[name], rtol=0, atol=1e-12 * np.abs(plain[name]).max())
    as32 = {k: v.astype(np.float32) for k, v in params.items()}
    assert fast.delta(as32).dtype == np.float32
    assert {g.dtype for g in fast.pullback(as32, G.astype(np.float32)).values()} == {np.dtype(np.float32)}


def test_the_numba_backend_calls_the_kernels(monkeypatch):
    calls = []
    compiled = _numba.pullback
    monkeypatch.setattr(_numba, "pullback", lambda params, G: calls.append(G.shape) or compiled(params, G))
    prob = fl.make_problem(d=8, k=1, T=4, n=200, noise=0.1, symmetric=False, seed=1)  # finite samples: dense G
    runs = {}
    for backend in ("numpy", "numba"):
        calls.clear()
        runs[backend] = fl.retrain(prob, peft="$name", rank=1, solver="gd", backend=backend, max_iter=300)
        assert (len(calls) > 0) == (backend == "numba"), (backend, len(calls))
    assert runs["numba"].objective == pytest.approx(runs["numpy"].objective, rel=1e-6)
'''

_README = '''\
# fastlora-$dist

`$name`: a PEFT parameterization for [fastlora](https://pypi.org/project/fastlora/), written by
`fastlora plugins new`.  DESCRIPTION

```bash
pip install .                 # registers "$name" in the entry-point group fastlora.peft
fastlora plugins              # lists it
fastlora plugins --check      # runs fastlora's conformance kit on it
python -m pytest tests        # the kit, the entry point, a retrain (and the fast path with --numba)
```

```python
import fastlora as fl
prob = fl.make_problem(d=16, k=2, T=6, symmetric=False, seed=0)
res = fl.retrain(prob, peft="$name", rank=2, peft_options={"init_scale": 1.0})
print(fl.evaluate(res, prob, ft_peft="$name"))   # by name: the retrained instance, its options kept
```

To make it another parameterization, follow fastlora's docs/plugins.md, "Start from the
scaffold": the class's docstrings say what to fill in, and the kit names what is wrong.
'''

README_PLAIN = _README.replace("DESCRIPTION", "As generated it is plain LoRA, Δ_t = B_t C_tᵀ.")
README_SHARED = _README.replace("DESCRIPTION", "As generated it is a shared-basis LoRA, Δ_t = B M_t Cᵀ (B, C shared "
                                               "by all tasks; protocol version 2).")
