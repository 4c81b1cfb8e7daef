"""Run configurations: choose their backends, skip what cannot run here (with the reason), time
every case, and attach the scores against the references measured in the same run."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from ..backends import backend_status
from ..errors import FastLoRAError
from .case import Measured, case_name, measure, timed_rounds
from .configs import CONFIGS, Config
from .suites import Options, build_cases

NUMPY_REFERENCE_MAX_DIM = 2048  # population configs also time numpy (the reference backend) up to this d


@dataclass
class Skipped:
    config: str
    reason: str


@dataclass
class BenchRun:
    options: Options
    configs: list[str]
    results: list[Measured] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    machine_info: dict = field(default_factory=dict)
    commit_info: dict = field(default_factory=dict)

    def find(self, name: str) -> Measured | None:
        return next((m for m in self.results if m.case.name == name), None)


def check_configs(names, peft: str | None) -> None:
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        raise FastLoRAError(f"--config {', '.join(unknown)}: unknown; available: {', '.join(CONFIGS)}")
    if peft is not None:
        refused = [n for n in names if not CONFIGS[n].takes_peft]
        if refused:
            raise FastLoRAError(f"--config {', '.join(refused)} does not take --peft; configs that do: "
                                f"{', '.join(n for n, c in CONFIGS.items() if c.takes_peft)}")


def backends_for(cfg: Config, asked: list[str] | None) -> tuple[list[str], str]:
    """(backends to run ``cfg`` on, numpy first; why none, where none can run here).

    ``asked`` None: every backend of the config that can run here.  Population configs also time
    numpy, the reference backend, up to ``NUMPY_REFERENCE_MAX_DIM``."""
    wanted = [b for b in cfg.backends if asked is None or b in asked]
    if not wanted:
        return [], f"runs on {', '.join(cfg.backends)} only (--backend {','.join(asked)})"
    status = {b: backend_status(b) for b in wanted}
    usable = [b for b in wanted if status[b][0]]
    if not usable:
        return [], "; ".join(f"{b} cannot run here: {status[b][1]}" for b in wanted)
    if cfg.kind == "population" and "numpy" in cfg.backends and cfg.d <= NUMPY_REFERENCE_MAX_DIM:
        usable = ["numpy", *usable]
    return sorted(dict.fromkeys(usable), key=lambda b: b != "numpy"), ""


def plan(names, asked: list[str] | None, quick: bool) -> tuple[list[tuple[Config, list[str]]], list[Skipped]]:
    """The configs that will run (sized, with their backends) and those skipped, with the reason."""
    runnable, skipped = [], []
    for name in names:
        cfg = CONFIGS[name].sized(quick)
        backends, why = backends_for(cfg, asked)
        if backends:
            runnable.append((cfg, backends))
        else:
            skipped.append(Skipped(name, why))
    return runnable, skipped


def run_bench(names, asked: list[str] | None, options: Options, echo=print) -> BenchRun:
    """Run ``names`` (each sized for ``options.quick``); a config none of whose backends can run
    here is skipped with its reason, a case that fails is reported and the others go on."""
    check_configs(names, options.peft)
    run = BenchRun(options, list(names))
    runnable, run.skipped = plan(names, asked, options.quick)
    for skip in run.skipped:
        echo(f"== {skip.config}: skipped: {skip.reason}")
    for cfg, backends in runnable:
        started = time.perf_counter()
        echo(f"== {cfg.name}: {cfg.describe()} on {', '.join(backends)}"
             + (f", peft {options.peft}" if options.peft else "") + f" — {cfg.note}")
        measured = []
        for case in build_cases(cfg, backends, options):
            try:
                result = measure(case, run.find)
            except (KeyboardInterrupt, FastLoRAError):
                raise
            except Exception as exc:  # noqa: BLE001 - one failing case is reported, the others go on
                reason = f"{case.name} failed: {type(exc).__name__}: {exc}"
                run.skipped.append(Skipped(cfg.name, reason))
                echo(f"  {reason}")
                continue
            run.results.append(result)
            measured.append(result)
            echo(line(result))
        for ref in (m for m in measured if m.case.reference is None):
            ref.data += timed_rounds(ref.case)[0]
            echo(f"  {ref.case.name}: fastest of {len(ref.data)} rounds (before and after the others) "
                 f"{format_seconds(ref.unit_seconds)}: the unit of this config's scores")
        for result in measured:
            score(result, run)
        echo(f"  ({cfg.name}: {time.perf_counter() - started:.1f} s)")
    return run


def score(result: Measured, run: BenchRun) -> None:
    """The machine-independent figures: the median in units of the case's reference (same run,
    same machine; the reference's fastest round) and the figures made from it, and the ratio to
    numpy's time for the same case."""
    case, info = result.case, result.extra_info
    if case.reference is None:
        info.update(is_reference=True, unit=case.unit)
    else:
        ref = run.find(case.reference)
        if ref is not None:
            unit = ref.unit_seconds
            info.update(score=result.median / unit, score_unit=ref.case.unit, reference=ref.case.name,
                        reference_seconds=unit)
            if ref.case.variant == "gemm" and case.per == "iteration":
                info["fraction_of_gemm"] = unit / result.median
            elif ref.case.variant == "gemm":
                info["gemm_equivalents"] = result.median / unit
            if case.per == "row":
                info["data_units_per_row"] = result.median / unit
    twin = run.find(case_name(case.config, "numpy", case.variant))
    if case.backend != "numpy" and twin is not None:
        info["speedup_vs_numpy"] = twin.median / result.median


def format_seconds(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if abs(seconds) >= scale:
            return f"{seconds / scale:.4g} {unit}"
    return f"{seconds / 1e-9:.4g} ns"


SHOWN_FIGURES = ("speedup_vs_numpy", "speedup_vs_paper_gd", "speedup_vs_dense_als", "speedup_vs_paper_shallow",
                 "fraction_of_gemm", "useful_gflops", "gemm_gflops", "rows_per_second", "data_units_per_row",
                 "startup_seconds", "problems_per_second", "converged", "at_optimum",
                 "iterations", "iterations_to_1e8", "reached", "rel_err_A", "peak_rss_gib", "solver")


def line(result: Measured) -> str:
    """One measured case: median, spread, rounds, score and the main figures."""
    from ..tables import fmt
    info = result.extra_info
    text = (f"  {result.case.name:34s} median {format_seconds(result.median)}"
            f" (IQR {format_seconds(iqr(result.data))}, {len(result.data)} rounds"
            + (f", per {result.case.per})" if result.case.per != "call" else ")"))
    if "score" in info:
        text += f"  score {fmt(info['score'])}"
    figures = [f"{k}={fmt(info[k])}" for k in SHOWN_FIGURES if info.get(k) is not None]
    return text + ("  " + " ".join(figures) if figures else "")


def iqr(data: list[float]) -> float:
    from pytest_benchmark.stats import Stats
    stats = Stats()
    for x in data:
        stats.update(x)
    return stats.iqr
