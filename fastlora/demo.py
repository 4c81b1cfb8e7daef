"""``fastlora demo``: the paper's synthetic comparison at small size, as a built-in sweep.

Runs ``fastlora/specs/demo.toml`` (standard retraining, LoRA-ML and Reptile; d=10, k=1,
N=5000 samples per task, σ=0.01) into ``OUT/results.sqlite``, prints the mean over seeds
of rel_err_A, adapt_rank and the excess risk after rank-k fine-tuning, and writes
``excess_risk_vs_T.png`` and ``excess_risk_vs_n_ft.png``.  Rerunning resumes.
"""
from __future__ import annotations

from collections import defaultdict
from importlib import resources
from pathlib import Path

import numpy as np

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
    """Mean (over seeds) of the metrics per combination of ``by``, for rows matching ``where``."""
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


def run_demo(out_dir, workers=None, quick=False, echo=print, progress=None) -> dict:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    store = out_dir / "results.sqlite"
    spec = demo_spec(quick)
    echo(f"fastlora demo: {spec.description}")
    echo(f"d=10, k=1, N=5000 per task, noise=0.01, fine-tuning: rank-1 LoRA; {spec.repeats} seed(s) per point")
    run_sweep(spec, store, workers=workers, progress=progress, echo=echo)
    by_T = summarise(store, ("method", "T"), {"n_ft": 100})
    by_n = summarise(store, ("method", "n_ft"), {"T": 5})
    echo("\nExcess risk after rank-k fine-tuning (n_ft = 100) vs retraining tasks T:")
    echo(render(by_T, ["method", "T", "seeds", "rel_err_A", "adapt_rank", "excess_risk", "excess_risk_sd"]))
    echo("\nExcess risk vs fine-tuning samples n_ft (T = 5):")
    echo(render(by_n, ["method", "n_ft", "seeds", "rel_err_A", "adapt_rank", "excess_risk", "excess_risk_sd"]))
    figures = [plot_results(store, "T", "excess_risk", hue="method", logy=True, where=["n_ft=100"],
                            out=out_dir / "excess_risk_vs_T.png"),
               plot_results(store, "n_ft", "excess_risk", hue="method", logy=True, logx=True, where=["T=5"],
                            out=out_dir / "excess_risk_vs_n_ft.png")]
    echo("\nfigures: " + ", ".join(figures))
    return {"by_T": by_T, "by_n_ft": by_n, "figures": figures, "store": str(store)}
