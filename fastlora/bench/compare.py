"""``fastlora bench compare``: two or more runs, per config, with a verdict that accounts for spread.

The first file is the baseline; each later one is compared with it, benchmark by benchmark
(matched by ``config[backend-variant]``).  The verdict on medians m_A, m_B with interquartile
ranges iqr_A, iqr_B:

* the band is the larger relative IQR, max(iqr_A/m_A, iqr_B/m_B), and at least ``NOISE_FLOOR``
  (``FEW_ROUNDS_BAND`` where a run has 2 rounds; with one, the spread is unknown: no verdict);
* **slower** when m_B/m_A − 1 exceeds the band and B's lower quartile is above A's upper one,
  **faster** in the mirror case, **within noise** otherwise.

Runs on different machines (CPU, cores, threads, GPU) are compared by their machine-independent
scores — each time in units of a reference measured in the same run on its own machine (one GEMM
of the solvers' shape, drawing the point's data) — and the header says so.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import FastLoRAError
from .results import case_key, load_run, machine_summary, same_machine

NOISE_FLOOR = 0.02
FEW_ROUNDS_BAND = 0.10
SIZE_KEYS = ("d", "T", "k", "n", "dtype", "iters", "baseline_steps", "rows", "outer_steps", "steps", "width",
             "normals")


@dataclass
class Summary:
    median: float
    q1: float
    q3: float
    rounds: int

    @property
    def relative_iqr(self) -> float:
        return (self.q3 - self.q1) / self.median if self.median else 0.0

    def scaled(self, unit: float) -> Summary:
        return Summary(self.median / unit, self.q1 / unit, self.q3 / unit, self.rounds)


def summary(bench: dict, by_score: bool) -> Summary | None:
    """Median and quartiles of a benchmark's rounds, in seconds or (``by_score``) in units of its reference."""
    s = bench["stats"]
    out = Summary(s["median"], s["q1"], s["q3"], s["rounds"])
    if not by_score:
        return out
    unit = (bench.get("extra_info") or {}).get("reference_seconds")
    return out.scaled(unit) if unit else None


def verdict(a: Summary, b: Summary) -> str:
    """faster / slower / within noise: B against A (module docstring)."""
    if min(a.rounds, b.rounds) < 2:
        return "1 round: spread unknown"
    change = b.median / a.median - 1.0
    floor = NOISE_FLOOR if min(a.rounds, b.rounds) >= 3 else FEW_ROUNDS_BAND
    band = max(a.relative_iqr, b.relative_iqr, floor)
    if change > band and b.q1 > a.q3:
        return "slower"
    if change < -band and b.q3 < a.q1:
        return "faster"
    return "within noise"


def parse_threshold(text: str) -> float:
    """``10%`` or ``10`` -> 0.10 (a slowdown beyond which ``--fail-on`` fails)."""
    value = str(text).strip().rstrip("%").strip()
    try:
        fraction = float(value) / 100.0
    except ValueError:
        fraction = -1.0
    if not fraction > 0:
        raise FastLoRAError(f"--fail-on {text!r} must be a positive percentage such as 10%")
    return fraction


@dataclass
class Comparison:
    text: str
    regressions: list[str]


def compare(paths: list[str], fail_on: float | None = None, by: str = "auto") -> Comparison:
    if len(paths) < 2:
        raise FastLoRAError("bench compare needs at least two JSON files (the first is the baseline)")
    runs = [load_run(p) for p in paths]
    labels = [_label(p) for p in paths]
    one_machine = all(same_machine(r["machine_info"], runs[0]["machine_info"]) for r in runs)
    by_score = by == "score" or (by == "auto" and not one_machine)
    out = [f"{chr(65 + i)}: {labels[i]} — {_describe(r)}" for i, r in enumerate(runs)]
    if by_score:
        out.append("machines differ: comparing machine-independent scores (each time in units of a reference "
                   "measured in the same run on its own machine; see 'unit'), not seconds"
                   if not one_machine else "comparing machine-independent scores (--by score)")
    else:
        out.append("same machine: comparing medians of seconds"
                   + ("" if one_machine else " (--by time: the machines differ, seconds may not compare)"))
    pefts = {(r.get("fastlora") or {}).get("peft") or "default" for r in runs}
    if len(pefts) > 1:
        out.append("parameterizations differ: " + " vs ".join((r.get("fastlora") or {}).get("peft") or "default"
                                                             for r in runs))
    tables, regressions = _tables(runs, by_score, fail_on)
    out += tables
    for label, r in zip(labels[1:], runs[1:]):
        for s in (r.get("fastlora") or {}).get("skipped") or []:
            out.append(f"skipped in {label}: {s['config']}: {s['reason']}")
        groups = [_groups(run) for run in (runs[0], r)]
        absent = [g for g in groups[0] if g not in groups[1]]
        if absent:
            out.append(f"configs not in {label}: {', '.join(absent)}")
        missing = [k for g, keys in groups[0].items() if g in groups[1] for k in keys if k not in groups[1][g]]
        if missing:
            out.append(f"benchmarks not in {label}: {', '.join(missing)}")
    if fail_on is not None:
        out.append(f"--fail-on {fail_on:.0%}: " + (f"{len(regressions)} regression(s)" if regressions else "passed"))
    return Comparison("\n".join(out), regressions)


def _groups(run: dict) -> dict[str, list[str]]:
    """{config: its benchmarks' names} of a run, in its order."""
    groups: dict[str, list[str]] = {}
    for bench in run["benchmarks"]:
        key = case_key(bench)
        groups.setdefault(bench.get("group") or key.split("[")[0], []).append(key)
    return groups


def _tables(runs, by_score: bool, fail_on: float | None) -> tuple[list[str], list[str]]:
    """One table per config the first run shares with another."""
    from ..tables import render
    from .runner import format_seconds
    base = {case_key(b): b for b in runs[0]["benchmarks"]}
    others = [{case_key(b): b for b in r["benchmarks"]} for r in runs[1:]]
    shared = {g for r in runs[1:] for g in _groups(r)}
    out, regressions = [], []
    for group, keys in _groups(runs[0]).items():
        if group not in shared:
            continue
        rows = []
        for key in keys:
            a_bench = base[key]
            a = summary(a_bench, by_score)
            info = a_bench.get("extra_info") or {}
            is_reference = bool(info.get("is_reference"))
            row = {"benchmark": key}
            show = (lambda s: f"{s.median:.4g}") if by_score and not is_reference else \
                (lambda s: format_seconds(s.median))
            if by_score and is_reference:
                a = summary(a_bench, False)  # a reference is the unit: its seconds show the machines' speeds
            row["A"] = show(a) if a else "-"
            for i, other in enumerate(others):
                letter = chr(66 + i)
                b_bench = other.get(key)
                b = None if b_bench is None else summary(b_bench, by_score and not is_reference)
                row[letter] = show(b) if b else "-"
                row[f"{letter}/A"] = f"{b.median / a.median:.3f}" if (a and b and a.median) else "-"
                row[f"verdict {letter}"] = _verdict_text(a_bench, b_bench, a, b, by_score, is_reference)
                if fail_on is not None and row[f"verdict {letter}"] == "slower" and b.median / a.median - 1 > fail_on:
                    regressions.append(f"{key} ({letter}: +{b.median / a.median - 1:.0%})")
            row["unit"] = ("seconds (reference)" if is_reference else info.get("score_unit", "-")) if by_score \
                else f"seconds per {info.get('per', 'call')}"
            rows.append(row)
        out += ["", f"{group}", render(rows)]
    return out, regressions


def _verdict_text(a_bench, b_bench, a, b, by_score: bool, is_reference: bool) -> str:
    if b_bench is None:
        return "missing"
    if a is None or b is None:
        return "no score"
    sizes = [_params(a_bench), _params(b_bench)]
    different = [k for k in SIZE_KEYS if sizes[0].get(k) != sizes[1].get(k)]
    if different:
        return "sizes differ (" + ", ".join(different) + ")"
    if by_score and is_reference:
        return "machine speed"
    per = [(bench.get("extra_info") or {}).get("per", "call") for bench in (a_bench, b_bench)]
    if not by_score and per[0] != per[1]:  # pytest's fixture times a whole call; a score is per figure in both
        return f"per {per[0]} vs per {per[1]}: --by score"
    return verdict(a, b)


def _params(bench: dict) -> dict:
    """A case's parameters (pytest's runs of bench/bench_solvers.py keep them in extra_info)."""
    return (bench.get("extra_info") or {}).get("params") or bench.get("params") or {}


def _label(path) -> str:
    from pathlib import Path
    return Path(path).stem


def _describe(run: dict) -> str:
    commit = run.get("commit_info") or {}
    extra = run.get("fastlora") or {}
    parts = [f"commit {str(commit.get('id', '?'))[:10]}" + (" (dirty)" if commit.get("dirty") else ""),
             str(run.get("datetime", "?"))[:19], machine_summary(run["machine_info"])]
    if extra.get("quick"):
        parts.append("--quick")
    if extra.get("peft"):
        parts.append(f"--peft {extra['peft']}")
    return ", ".join(parts)
