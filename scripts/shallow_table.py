"""The shallow network's two figures as a table: median test loss vs T (d=10) and vs d (T=3).

Standard retraining, LoRA-ML and Reptile on the paper's law (k=1, N=1000, σ=0.1, fine-tuning on
n=100 fresh samples with asymmetric LoRA at rank k, 3k when T=2), fastlora's default solvers,
problem seeds 0..S-1.  Prints a markdown table of the median over seeds of each seed's mean
test loss over its 4 held-out tasks (against clean labels on 10,000 fresh inputs), the same for
the paper's own number (clean-label error on the fine-tuning inputs), and the ratio
standard / LoRA-ML; writes every row as JSON.

    python scripts/shallow_table.py --seeds 5 --out shallow_table.json
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from fastlora.shallow import evaluate_shallow, make_shallow_problem, retrain_shallow

METHODS = ("standard", "lora-ml", "reptile")
POINTS = [("T", {"d": 10, "T": T}) for T in (2, 3, 5, 10)] + [("d", {"d": d, "T": 3}) for d in (5, 20)]


def run(seeds: int, echo=print) -> list[dict]:
    rows = []
    for axis, point in POINTS:
        for seed in range(seeds):
            prob = make_shallow_problem(k=1, n=1000, noise=0.1, seed=seed, **point)
            for method in METHODS:
                started = time.perf_counter()
                res = retrain_shallow(prob, method=method, seed=0)
                metrics = evaluate_shallow(res, prob, n_ft=100, seed=0)
                row = {"axis": axis, **point, "seed": seed, "method": method, "seconds": time.perf_counter() - started,
                       **{k: metrics[k] for k in ("test_loss", "train_fit", "rel_err_A", "objective", "n_iter",
                                                  "converged", "ft_rank")}}
                rows.append(row)
                echo(json.dumps(row), flush=True)
    return rows


def table(rows) -> str:
    lines = ["| d | T | ft rank | standard | LoRA-ML | Reptile | standard / LoRA-ML | paper metric: standard | "
             "LoRA-ML | Reptile |", "|---|---|---|---|---|---|---|---|---|---|"]
    for point in sorted({(r["d"], r["T"]) for r in rows}):
        sel = {m: [r for r in rows if (r["d"], r["T"]) == point and r["method"] == m] for m in METHODS}
        test = {m: float(np.median([r["test_loss"] for r in sel[m]])) for m in METHODS}
        fit = {m: float(np.median([r["train_fit"] for r in sel[m]])) for m in METHODS}
        lines.append(f"| {point[0]} | {point[1]} | {sel['lora-ml'][0]['ft_rank']} | {test['standard']:.4f} | "
                     f"{test['lora-ml']:.4f} | {test['reptile']:.4f} | {test['standard'] / test['lora-ml']:.1f} | "
                     f"{fit['standard']:.4f} | {fit['lora-ml']:.4f} | {fit['reptile']:.4f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--out", default="shallow_table.json")
    args = parser.parse_args()
    rows = run(args.seeds)
    with open(args.out, "w") as handle:
        json.dump(rows, handle, indent=1)
    print(table(rows))


if __name__ == "__main__":
    main()
