"""The configurations ``fastlora bench`` runs: sizes, backends, and their ``--quick`` sizes."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

# kinds whose solves take a parameterization (``fastlora bench --peft NAME``)
PEFT_KINDS = ("paper", "population", "points")


@dataclass(frozen=True)
class Config:
    name: str
    kind: str           # paper | population | memory | reduced | implicit | points | shallow
    d: int
    T: int
    k: int
    n: int | None = None
    noise: float = 0.0
    dtype: str = "float64"
    iters: int = 20
    note: str = ""
    backends: tuple = ("numpy", "numba", "cupy")
    baseline_steps: int = 0   # outer steps of the paper procedure (paper, shallow)
    rows: int = 200           # points: the small sweep (the big one is 3x)
    quick: dict = field(default_factory=dict)  # the --quick sizes

    @property
    def takes_peft(self) -> bool:
        return self.kind in PEFT_KINDS

    def sized(self, quick: bool) -> Config:
        return replace(self, **self.quick) if quick else self

    def sizes(self) -> dict:
        """The sizes a result depends on (two results compare only at equal sizes)."""
        out = {"d": self.d, "T": self.T, "k": self.k, "n": self.n, "dtype": self.dtype}
        if self.kind in ("population", "memory"):
            out["iters"] = self.iters
        if self.baseline_steps:
            out["baseline_steps"] = self.baseline_steps
        if self.kind == "points":
            out["rows"] = self.rows
        return out

    def describe(self) -> str:
        extra = (f" baseline {self.baseline_steps} steps" if self.baseline_steps else "") + \
            (f" rows {self.rows}+{3 * self.rows} (two workers: 4x)" if self.kind == "points" else "")
        return f"d={self.d} T={self.T} k={self.k}" + (f" n={self.n}" if self.n else "") + f" {self.dtype}" + extra


CONFIGS = {c.name: c for c in (
    Config("paper", "paper", d=10, T=3, k=1, n=5000, noise=0.01, baseline_steps=3000,
           note="the paper's point on raw data: the default fl.retrain (median of >= 25 runs) and the solvers "
                "to the paper procedure's final objective, vs that procedure (the authors' batched GD, 10 inner steps)",
           quick=dict(baseline_steps=300)),
    Config("pop-384", "population", d=384, T=48, k=4,
           note="full-space ALS: time to rel. error 1e-8 in A, vs textbook dense ALS",
           quick=dict(d=96, T=12, k=4)),
    Config("pop-512", "population", d=512, T=64, k=4, note="full-space ALS iteration: numba vs numpy",
           quick=dict(d=128, T=16, k=4)),
    Config("pop-1024", "population", d=1024, T=128, k=8, iters=20,
           note="full-space ALS iteration (T·k = d: no reduction) as a fraction of the DGEMM rate (2·d²·T·k flops)",
           quick=dict(d=128, T=16, k=8)),
    Config("pop-4096", "memory", d=4096, T=1024, k=8, iters=10, backends=("numba", "cupy"),
           note="peak memory of 10 full-space ALS iterations (a fresh process)",
           quick=dict(d=512, T=128, k=4)),
    Config("reduced-8192", "reduced", d=8192, T=32, k=4,
           note="the default retrain to rel. error 1e-8 in A, in GEMM-equivalents (one d×d×T·k GEMM, same run)",
           quick=dict(d=1024, T=8, k=2)),
    Config("implicit-100k", "implicit", d=100_000, T=64, k=4, backends=("numba", "numpy"),
           note="the paper's law at d=100,000 with A* never stored: retrain + evaluate, peak memory, exact metrics",
           quick=dict(d=10_000, T=16, k=2)),
    Config("gpu-8192", "population", d=8192, T=2048, k=8, dtype="float32", iters=10, backends=("cupy",),
           note="GPU full-space ALS iteration vs the SGEMM rate, and vs numba",
           quick=dict(d=1024, T=128, k=8)),
    Config("points", "points", d=10, T=3, k=1, n=5000, noise=0.01,
           note="sweep rows at the paper's size (make_problem + retrain + evaluate): marginal cost per row "
                "(a big minus a small sweep) in units of drawing the row's data, and start-up timed on its own",
           quick=dict(rows=20)),
    Config("smoke", "population", d=64, T=8, k=2, iters=10, note="a quick check of the harness"),
    Config("shallow-paper", "shallow", d=10, T=3, k=1, n=1000, noise=0.1, backends=("numba", "numpy"),
           baseline_steps=40000,
           note="shallow network, LoRA-ML: time to the paper procedure's final loss (AdamW, 40,000 steps), "
                "same data and kernel",
           quick=dict(n=200, baseline_steps=100)),
)}

DEFAULT_CONFIGS = ("paper", "pop-384", "pop-512", "pop-1024")
