"""Where a problem lies relative to the theorem's regime of exact recovery (docs/identifiability.md).

LoRA-ML recovers A* exactly (the paper's theorem: population, generic factors) when T ≥ 3
tasks of one rank k are fitted with rank-k adapters that can represent them.  Outside that regime
a zero objective need not mean A = A*:

* ``T ≤ 2``: two tasks pin A* only up to a rank-2k error (one task: not at all);
* ``rank ≠ k``: wider adapters (r > k) reach the objective's floor away from A*; narrower ones
  (r < k) cannot represent the task perturbations;
* ``T = 3`` with ``T·k > d``: the task subspaces overlap; recovery failed in some or most draws
  measured (d = 10, k = 4: 6 of 6; d = 8, k = 3: 1 of 6; T·k = d never failed);
* ``T = 4`` with ``2k ≥ d``: recovery failed in most draws measured (d = 10, k = 5; d = 20, k = 10);
* unequal per-task ranks, and symmetric adapters (``lora_sym``) on asymmetric ground truth.

Only the linear model is judged (``None`` for the shallow network and real data: no theorem).
"""
from __future__ import annotations

# parameterizations whose Δ is U·Uᵀ: they represent symmetric PSD perturbations only
SYMMETRIC_PEFT = ("lora_sym",)


def regime_reasons(*, d: int, k: int, T: int, d_out: int | None = None, method: str = "lora-ml",
                   rank: int | None = None, peft: str = "lora_sym", symmetric: bool = True,
                   task_ranks=None, model: str = "linear") -> list[str] | None:
    """Why a point lies outside the theorem's regime (module docstring): [] inside, None where
    no theorem applies (a model other than the linear one).  ``rank`` None means k; the adapter
    reasons (rank, parameterization) apply to ``method="lora-ml"`` only."""
    if model != "linear":
        return None
    d_out = d if d_out is None else d_out
    ranks = sorted(set(task_ranks)) if task_ranks else [k]
    k_max = max(ranks)
    reasons = []
    if T <= 2:
        reasons.append("T = 1: one task does not pin A*" if T == 1 else
                       "T = 2: A* is pinned only up to a rank-2k error")
    if len(ranks) > 1:
        reasons.append(f"task ranks differ ({', '.join(map(str, ranks))}): the theorem has one k")
    if T == 3 and T * k_max > min(d, d_out):
        reasons.append(f"T = 3 with T·k = {T * k_max} > d = {min(d, d_out)}: the task subspaces overlap")
    if T == 4 and 2 * k_max >= min(d, d_out):
        reasons.append(f"T = 4 with 2k = {2 * k_max} >= d = {min(d, d_out)}")
    if method == "lora-ml":
        r = k_max if rank is None else rank
        if r > k_max:
            reasons.append(f"rank {r} > k = {k_max}: wider adapters reach the floor away from A*")
        elif r < k_max:
            reasons.append(f"rank {r} < k = {k_max}: the adapters cannot represent the tasks")
        if peft in SYMMETRIC_PEFT and not symmetric:
            reasons.append(f"peft={peft!r} (Δ = U·Uᵀ) on asymmetric ground truth")
    return reasons


def point_regime(point: dict) -> tuple[bool | None, str]:
    """(in_regime, note) of a sweep point: True and "" inside, False and the reasons joined by
    "; " outside, None and a note where no theorem applies (datasets, the shallow network)."""
    if point.get("dataset") is not None:
        return None, "real data: no theorem"
    if point.get("law") is not None:
        return None, f"problem generator {point['law']!r}: not judged"
    reasons = regime_reasons(d=point["d"], k=point.get("k", 2), T=point.get("T", 8), d_out=point.get("d_out"),
                             method=point.get("method", "lora-ml"), rank=point.get("rank"),
                             peft=point.get("peft", "lora_sym"), symmetric=point.get("symmetric", True),
                             task_ranks=point.get("task_ranks"), model=point.get("model", "linear"))
    if reasons is None:
        return None, f"model={point.get('model')!r}: no theorem"
    return (not reasons), "; ".join(reasons)
