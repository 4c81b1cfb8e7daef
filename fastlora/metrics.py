"""``fastlora.evaluate``: how adaptable a retrained A is (DESIGN.md §3)."""
from __future__ import annotations

import numpy as np

from . import peft as peft_registry
from .errors import FastLoRAError, check_float, check_int
from .finetune import finetune


def numerical_rank(M, rtol: float, scale: float) -> int:
    """Number of singular values of M above ``rtol · scale``."""
    s = np.linalg.svd(M, compute_uv=False)
    return int(np.sum(s > rtol * scale))


def evaluate(res, prob, ft_rank: int | None = None, n_ft: int | None = None, ft_peft="lora", seed: int = 0,
             rank_tol: float = 1e-6, test_tasks=None) -> dict:
    """Metrics of a retrained model on held-out tasks.

    Returns a dict with
    ``rel_err_A``  ‖A − A*‖_F / ‖A*‖_F (NaN when the problem has no A*);
    ``adapt_rank`` median numerical rank of W*_new − A over the test tasks (singular values
                   above ``rank_tol``·‖W*_new‖₂);
    ``excess_risk`` mean over test tasks of ½‖A + Δ̂ − W*_new‖²_F after fine-tuning with
                   ``ft_peft`` (asymmetric LoRA by default, as the paper does) at ``ft_rank``
                   (default: the problem's k) from ``n_ft`` samples (None: population);
    ``excess_risk_std``, ``excess_risk_per_task`` and the retraining ``objective``,
    ``n_iter``, ``seconds`` and ``converged``.
    """
    A = np.asarray(getattr(res, "A", res), dtype=np.float64)
    tasks = list(test_tasks if test_tasks is not None else getattr(prob, "test_tasks", []))
    if not tasks:
        raise FastLoRAError("evaluate needs test tasks: the problem has none (n_test_tasks=0) and test_tasks was not given")
    if ft_rank is None:
        ft_rank = getattr(prob, "k", None)
        if ft_rank is None:
            raise FastLoRAError("ft_rank is required when the problem has no k")
    ft_rank = check_int("ft_rank", ft_rank, low=1, high=min(A.shape))
    n_ft = check_int("n_ft", n_ft, low=1, allow_none=True)
    rank_tol = check_float("rank_tol", rank_tol, low=0.0, low_open=True)
    try:
        peft_registry.get(ft_peft)
    except FastLoRAError as exc:
        raise type(exc)(f"ft_peft: {exc}") from None
    A_star = getattr(prob, "A_star", None)
    rel_err = float(np.linalg.norm(A - A_star) / np.linalg.norm(A_star)) if A_star is not None else float("nan")
    ranks, risks = [], []
    for i, task in enumerate(tasks):
        W_star = task.W_star
        ranks.append(numerical_rank(W_star - A, rank_tol, np.linalg.norm(W_star, 2)))
        ft = finetune(A, task, peft=ft_peft, rank=ft_rank, n=n_ft, seed=seed + i)
        risks.append(ft.excess_risk)
    risks = np.asarray(risks)
    out = {"rel_err_A": rel_err, "adapt_rank": float(np.median(ranks)), "excess_risk": float(risks.mean()),
           "excess_risk_std": float(risks.std()), "excess_risk_per_task": risks.tolist()}
    for name in ("objective", "n_iter", "seconds", "converged"):
        if hasattr(res, name):
            out[name] = getattr(res, name)
    return out
