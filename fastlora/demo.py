"""``fastlora demo``: the paper's synthetic comparison at small size, as a built-in sweep.

Runs ``fastlora/specs/demo.toml`` (standard retraining, LoRA-ML and Reptile; d=10, k=1,
n=5000 samples per task, σ=0.01) into ``OUT/results.sqlite``, prints per method the mean
over seeds of rel_err_A and the excess risk after fine-tuning, and the median adapt_rank —
the rank of W*_new − A above the estimation-noise floor (:func:`fastlora.evaluate`), which
the theory puts at (T+1)k for standard retraining and k for LoRA-ML once T ≥ 3 (≤ 3k at
T = 2, where the spec also fine-tunes at rank 3k) — and writes ``excess_risk_vs_T.png``
and ``excess_risk_vs_n_ft.png`` (with the theory's σ²·k(d_in + d_out − k)/(2 n_ft) rate of
rank-k fine-tuning as a reference line).  Rerunning resumes.
"""
from __future__ import annotations

from collections import defaultdict
from importlib import resources
from pathlib import Path

import numpy as np

from .errors import FastLoRAError, StoreConflictError, check_output_folder
from .sweep.plot import plot_results
from .sweep.runner import run_sweep
from .sweep.spec import parse_spec
from .sweep.store import ResultsStore
from .tables import render


def demo_spec(quick: bool = False):
    text = resources.files("fastlora").joinpath("specs/demo.toml").read_text()
    if quick:
        text = text.replace("repeats = 5", "repeats = 1")
    return parse_spec(text, origin="demo.toml")


def summarise(path, by: tuple[str, ...], where: dict) -> list[dict]:
    """Mean (over seeds) of the metrics per combination of ``by``, for rows matching ``where``;
    adapt_rank is the median (a rank)."""
    with ResultsStore(path) as store:
        columns, rows = store.rows()
    index = {c: i for i, c in enumerate(columns)}
    groups = defaultdict(list)
    for r in rows:
        if r[index["status"]] != "ok" or any(r[index[k]] != v for k, v in where.items()):
            continue
        groups[tuple(r[index[k]] for k in by)].append(r)
    order = {"standard": 0, "lora-ml": 1, "reptile": 2}
    out = []
    for key in sorted(groups, key=lambda k: tuple(order.get(v, v) if isinstance(v, str) else v for v in k)):
        members = groups[key]
        risk = np.array([m[index["excess_risk"]] for m in members])
        out.append({**dict(zip(by, key)), "seeds": len(members),
                    "rel_err_A": float(np.mean([m[index["rel_err_A"]] for m in members])),
                    "adapt_rank": float(np.median([m[index["adapt_rank"]] for m in members])),
                    "excess_risk": float(risk.mean()), "excess_risk_sd": float(risk.std())})
    return out


def fine_tuning_rate(d_in: int, d_out: int, k: int, noise: float):
    """The theory's excess risk of rank-k fine-tuning from n_ft samples around the right A:
    σ²·k(d_in + d_out − k)/(2 n_ft) — noise variance times the dimension of the rank-k
    matrices, over 2n_ft: the O(k·d/n_ft) rate."""
    dof = k * (d_in + d_out - k)
    return lambda n_ft: noise ** 2 * dof / (2 * np.asarray(n_ft, dtype=float))


def run_demo(out_dir, workers=None, quick=False, echo=print, progress=None) -> dict:
    out_dir = Path(out_dir).expanduser()
    check_output_folder(out_dir, f"out_dir={str(out_dir)!r}")
    out_dir.mkdir(exist_ok=True)
    store = out_dir / "results.sqlite"
    spec = demo_spec(quick)
    fixed = spec.fixed
    d, k, noise = fixed["d"], fixed["k"], fixed["noise"]
    d_out = fixed.get("d_out") or d
    echo(f"fastlora demo: {spec.description}")
    echo(f"d={d}, k={k}, n={fixed['n']} samples per retraining task, noise={noise}; fine-tuning: rank-{k} "
         f"{fixed['ft_peft']} (and rank {3 * k} at T=2); {spec.repeats} seed(s) per point")
    try:
        summary = run_sweep(spec, store, workers=workers, progress=progress, echo=echo)
    except StoreConflictError as exc:
        raise FastLoRAError(f"{str(out_dir)!r} holds results of another version of the demo ({exc}); remove the "
                            f"folder or pass --out NEW_FOLDER") from None
    by_T = summarise(store, ("method", "T", "ft_rank"), {"n_ft": 100})
    by_n = summarise(store, ("method", "n_ft"), {"T": 5, "ft_rank": k})
    echo("\nExcess risk after fine-tuning (n_ft = 100) vs retraining tasks T:")
    echo(render(by_T, ["method", "T", "ft_rank", "seeds", "rel_err_A", "adapt_rank", "excess_risk", "excess_risk_sd"]))
    echo("\nExcess risk vs fine-tuning samples n_ft (T = 5):")
    echo(render(by_n, ["method", "n_ft", "seeds", "rel_err_A", "adapt_rank", "excess_risk", "excess_risk_sd"]))
    echo(f"\nadapt_rank: rank of W*_new − A above the estimation-noise floor 2σ(√d_out + √d_in)/√n; theory: "
         f"(T+1)k for standard retraining, {k} (= k) for LoRA-ML at T ≥ 3, ≤ 3k at T = 2")
    rate = fine_tuning_rate(d, d_out, k, noise)
    figures = [plot_results(store, "T", "excess_risk", hue=["method", "ft_rank"], logy=True, where=["n_ft=100"],
                            out=out_dir / "excess_risk_vs_T.png"),
               plot_results(store, "n_ft", "excess_risk", hue="method", logy=True, logx=True,
                            where=["T=5", f"ft_rank={k}"], out=out_dir / "excess_risk_vs_n_ft.png",
                            reference=(f"theory σ²k(d_in+d_out−k)/2n_ft = {float(rate(1)):.3g}/n_ft", rate))]
    echo("\nfigures: " + ", ".join(figures))
    return {"by_T": by_T, "by_n_ft": by_n, "figures": figures, "store": str(store), "summary": summary,
            "spec": spec}
