"""``fastlora bench history``: the runs saved with ``--save``/``--autosave`` (or pytest's
``--benchmark-autosave``), and a figure of one config's results over them."""
from __future__ import annotations

from pathlib import Path

from ..errors import FastLoRAError
from .results import case_key, machine_summary, saved_runs


def history_rows(storage_dir, config: str | None = None) -> list[dict]:
    """One row per saved run (holding ``config``, where given), oldest first."""
    rows = []
    for path, data in saved_runs(storage_dir):
        benches = [b for b in data["benchmarks"] if config is None or b.get("group") == config]
        if config is not None and not benches:
            continue
        commit = data.get("commit_info") or {}
        extra = data.get("fastlora") or {}
        rows.append({"run": path.stem.split("_")[0], "machine": path.parent.name,
                     "commit": str(commit.get("id", "?"))[:10] + ("+" if commit.get("dirty") else ""),
                     "date": str(data.get("datetime", "?"))[:19].replace("T", " "),
                     "quick": ("yes" if extra.get("quick") else "no") if extra else "-",
                     "peft": extra.get("peft") or "-",
                     "benchmarks": len(benches), "configs": ",".join(dict.fromkeys(b.get("group") or "?"
                                                                                    for b in benches)),
                     "file": str(path), "_data": data, "_benches": benches})
    return rows


def plot_history(rows: list[dict], config: str, out) -> str:
    """Median seconds (with the interquartile band) and score of each of ``config``'s benchmarks
    over the saved runs, one line per benchmark; written to ``out``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    if not rows:
        raise FastLoRAError(f"no saved run holds config {config!r}")
    names = list(dict.fromkeys(case_key(b) for row in rows for b in row["_benches"]))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 7), sharex=True)
    xs = list(range(len(rows)))
    for i, name in enumerate(names):
        color = f"C{i % 10}"
        points = [(x, b) for x, row in zip(xs, rows) for b in row["_benches"] if case_key(b) == name]
        px = [x for x, _ in points]
        top.plot(px, [b["stats"]["median"] for _, b in points], marker="o", color=color, label=name)
        top.fill_between(px, [b["stats"]["q1"] for _, b in points], [b["stats"]["q3"] for _, b in points],
                         color=color, alpha=0.2)
        scored = [(x, b["extra_info"]["score"]) for x, b in points if (b.get("extra_info") or {}).get("score")]
        if scored:
            bottom.plot([x for x, _ in scored], [s for _, s in scored], marker="o", color=color)
    top.set_yscale("log")
    top.set_ylabel("median seconds (band: q1-q3)")
    bottom.set_yscale("log")
    bottom.set_ylabel("score (x its reference, same run)")
    bottom.set_xticks(xs, [f"{r['run']}\n{r['commit']}" for r in rows], fontsize=7)
    bottom.set_xlabel("saved run (number, commit)")
    top.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    machines = dict.fromkeys(machine_summary(r["_data"].get("machine_info") or {}) for r in rows)
    fig.suptitle(f"fastlora bench history: {config}\n" + "; ".join(machines), fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return str(Path(out))
