"""Benchmark results in pytest-benchmark's JSON format, and its storage (``.benchmarks/``).

A run is the JSON pytest-benchmark writes with ``--benchmark-json``: ``machine_info``,
``commit_info``, ``benchmarks`` (one per config × backend × variant, ``stats`` over its timed
rounds from pytest-benchmark's own :class:`~pytest_benchmark.stats.Stats`, our figures in
``extra_info``), ``datetime`` and ``version``; fastlora adds a top-level ``fastlora`` object (the
command's options, skipped configs, notes) that pytest-benchmark ignores.  Saved runs go where
``pytest --benchmark-save`` puts them: ``<storage>/<machine id>/NNNN_<name>.json``.
"""
from __future__ import annotations

import json
import os
import platform
from datetime import UTC, datetime
from pathlib import Path

from ..errors import FastLoRAError

STAT_FIELDS = ("min", "max", "mean", "stddev", "median", "iqr", "q1", "q3", "rounds")
DEFAULT_STORAGE = ".benchmarks"


def pytest_benchmark():
    """The pytest_benchmark package, or a one-line error saying how to install it."""
    try:
        import pytest_benchmark
        import pytest_benchmark.stats
        import pytest_benchmark.utils
    except ImportError as exc:
        raise FastLoRAError(f"fastlora bench writes pytest-benchmark's format and needs it: "
                            f"pip install 'fastlora[bench]' ({exc})") from None
    return pytest_benchmark


# -- machine and commit ---------------------------------------------------------------------------

def machine_info(gpu_used: bool = False) -> dict:
    """pytest-benchmark's machine_info (platform, python, ``cpu`` from py-cpuinfo) plus what a
    solver's speed depends on: CPU model and cores, memory, BLAS library and threads, Numba
    threads, library versions, the GPU."""
    pytest_benchmark()
    from pytest_benchmark.plugin import pytest_benchmark_generate_machine_info
    from pytest_benchmark.utils import get_machine_id

    from ..backends import cupy_status, get_backend, numba_status
    from ..config import usable_cores
    info = pytest_benchmark_generate_machine_info()
    info.update(machine_id=get_machine_id(), cpu_model=cpu_model(), cores=os.cpu_count(),
                usable_cores=usable_cores(), memory_gb=_memory_gb(), blas=_blas(), versions=_versions())
    info["blas_threads"] = max((lib["threads"] for lib in info["blas"]), default=None)
    if numba_status()[0]:
        import numba

        from ..config import settings
        info["numba_threads"] = settings.num_threads or usable_cores()  # what a solve uses
        info["numba_threading_layer"] = numba.config.THREADING_LAYER
    ok, why = cupy_status()
    info["gpu"] = get_backend("cupy").describe() if ok else None
    info["gpu_used"] = bool(ok and gpu_used)
    if not ok:
        info["gpu_missing"] = why
    return info


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gb() -> float | None:
    try:
        return round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 1e9, 2)
    except (AttributeError, ValueError, OSError):  # pragma: no cover - platforms without sysconf
        return None


def _blas() -> list[dict]:
    from threadpoolctl import threadpool_info
    return [{"library": lib.get("internal_api"), "version": lib.get("version"), "threads": lib.get("num_threads"),
             "architecture": lib.get("architecture"), "file": os.path.basename(lib.get("filepath", ""))}
            for lib in sorted(threadpool_info(), key=lambda lib: lib.get("filepath", ""))
            if lib.get("user_api") == "blas"]


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version
    out = {}
    for name in ("fastlora", "numpy", "scipy", "numba", "cupy", "threadpoolctl", "pytest-benchmark"):
        try:
            out[name] = version(name if name != "cupy" else _cupy_distribution())
        except (PackageNotFoundError, ValueError):
            out[name] = None
    return out


def _cupy_distribution() -> str:
    from importlib.metadata import packages_distributions
    return next(iter(packages_distributions().get("cupy", [])), "cupy")


def machine_summary(info: dict) -> str:
    """One line naming a machine: CPU, cores, memory, BLAS and its threads, GPU."""
    blas = ", ".join(f"{b['library']} {b['version']} x{b['threads']}" for b in info.get("blas") or []) or "BLAS ?"
    gpu = f", GPU {info['gpu']}" if info.get("gpu") else ""
    return (f"{info.get('cpu_model') or info.get('cpu', {}).get('brand_raw', '?')}, {info.get('cores', '?')} cores, "
            f"{info.get('memory_gb', '?')} GB, {blas}, numba threads {info.get('numba_threads', '?')}{gpu}")


def machine_traits(info: dict) -> dict:
    """What makes two runs' seconds comparable: the same hardware and thread settings (pytest's own
    runs of bench/bench_solvers.py record the CPU only)."""
    cpu = info.get("cpu") or {}
    return {"cpu": info.get("cpu_model") or cpu.get("brand_raw"), "cores": info.get("cores") or cpu.get("count"),
            "usable_cores": info.get("usable_cores"), "blas_threads": info.get("blas_threads"),
            "numba_threads": info.get("numba_threads"), "gpu": info.get("gpu")}


def same_machine(a: dict, b: dict) -> bool:
    """The traits both runs record are equal."""
    ta, tb = machine_traits(a), machine_traits(b)
    return all(ta[k] == tb[k] for k in ta if ta[k] is not None and tb[k] is not None)


def commit_info() -> dict:
    """pytest-benchmark's commit_info of fastlora's own source tree (the version benchmarked),
    ``unversioned`` for an installed package; with fastlora's version."""
    pytest_benchmark()
    from pytest_benchmark.utils import get_commit_info

    import fastlora
    root = Path(fastlora.__file__).resolve().parent.parent
    if (root / ".git").exists():
        previous = os.getcwd()
        os.chdir(root)
        try:
            info = get_commit_info("fastlora")
        finally:
            os.chdir(previous)
    else:
        info = {"id": "unversioned", "time": None, "author_time": None, "dirty": False, "project": "fastlora",
                "branch": "(unknown)"}
    info["fastlora_version"] = fastlora.__version__
    return info


# -- the JSON -------------------------------------------------------------------------------------

def benchmark_json(measured) -> dict:
    """One entry of ``benchmarks``, as pytest-benchmark's ``Metadata.as_dict`` writes it."""
    from pytest_benchmark.stats import Stats
    case = measured.case
    stats = Stats()
    for seconds in measured.data:
        stats.update(seconds)
    timing = {**stats.as_dict(), "data": list(measured.data), "iterations": case.iterations}
    return {"group": case.config, "name": case.name, "fullname": f"fastlora bench::{case.name}",
            "params": {"backend": case.backend, "variant": case.variant, **case.params}, "param": case.param,
            "extra_info": {"case": case.name, "per": case.per, **measured.extra_info},
            "options": {"disable_gc": False, "timer": "perf_counter", "min_rounds": case.rounds, "max_time": None,
                        "min_time": None, "warmup": case.warmup > 0},
            "stats": timing}


def run_json(run) -> dict:
    """A :class:`~fastlora.bench.runner.BenchRun` as pytest-benchmark's JSON."""
    return {"machine_info": run.machine_info, "commit_info": run.commit_info,
            "benchmarks": [benchmark_json(m) for m in run.results],
            "datetime": datetime.now(UTC).isoformat(), "version": pytest_benchmark().__version__,
            "fastlora": {"configs": run.configs, "quick": run.options.quick,
                         "peft": run.options.peft, "repeat": run.options.repeat,
                         "skipped": [{"config": s.config, "reason": s.reason} for s in run.skipped],
                         "notes": run.notes}}


def dumps(data: dict) -> str:
    from pytest_benchmark.utils import safe_dumps
    return safe_dumps(data, ensure_ascii=True, indent=4)


def write_json(data: dict, path) -> None:
    Path(path).write_text(dumps(data))


def _storage(storage_dir):
    pytest_benchmark()
    from pytest_benchmark.logger import Logger
    from pytest_benchmark.storage.file import FileStorage
    from pytest_benchmark.utils import get_machine_id
    return FileStorage(storage_dir, logger=Logger(Logger.QUIET), default_machine_id=get_machine_id())


def autosave_name(commit: dict) -> str:
    """pytest-benchmark's ``--benchmark-autosave`` name: ``<commit>_<UTC time>[_uncommitted-changes]``."""
    from pytest_benchmark.utils import get_current_time
    return "_".join([commit["id"], get_current_time()] + (["uncommitted-changes"] if commit.get("dirty") else []))


def check_save_name(name: str) -> str:
    pytest_benchmark()
    from argparse import ArgumentTypeError

    from pytest_benchmark.utils import parse_save
    try:
        return parse_save(name)
    except ArgumentTypeError as exc:
        raise FastLoRAError(f"--save {name!r}: {exc}") from None


def save(data: dict, storage_dir, name: str) -> Path:
    """Save as ``pytest --benchmark-save NAME`` does: ``<storage>/<machine id>/NNNN_NAME.json``; its path."""
    storage = _storage(storage_dir)
    storage.save(data, name)
    return max(storage.query(f"[0-9][0-9][0-9][0-9]_{name}"), key=lambda p: p.name)


def saved_runs(storage_dir) -> list[tuple[Path, dict]]:
    """Every run saved under ``storage_dir`` (all machine ids), oldest number first."""
    if not Path(storage_dir).is_dir():
        return []
    storage = _storage(storage_dir)
    storage.default_machine_id = None  # every machine's folder
    return [(storage.path / relpath, data) for relpath, data in storage.load()]


# -- reading --------------------------------------------------------------------------------------

def load_run(path) -> dict:
    """A pytest-benchmark JSON file (ours or pytest's own), checked; one clear error otherwise."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf8"))
    except OSError as exc:
        raise FastLoRAError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise FastLoRAError(f"{path}: not JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise FastLoRAError(f"{path}: not a pytest-benchmark JSON file (it has no list 'benchmarks')")
    for bench in data["benchmarks"]:
        missing = [f for f in STAT_FIELDS if f not in (bench.get("stats") or {})]
        if not isinstance(bench.get("name"), str) or missing:
            raise FastLoRAError(f"{path}: benchmark {bench.get('name')!r} lacks "
                                f"{', '.join(missing) or 'a name'} (not pytest-benchmark's format)")
    data.setdefault("machine_info", {})
    data.setdefault("commit_info", {})
    return data


def case_key(bench: dict) -> str:
    """The name a benchmark is matched by across runs: ``config[backend-variant]`` (pytest-benchmark's
    own runs of bench/bench_solvers.py carry it in extra_info)."""
    return (bench.get("extra_info") or {}).get("case") or bench["name"]
