"""The ``fastlora`` command line (click): solve, demo, sweep, export, plot, bench, plugins, cache.

Every error caused by the input prints one line ``Error: ...`` on stderr and exits with
status 2; set ``FASTLORA_DEBUG=1`` to see tracebacks of unexpected errors.
"""
from __future__ import annotations

import json
import os
import sys

import click

from .errors import FastLoRAError


class FastLoRAGroup(click.Group):
    """Turns library errors into one readable line and a non-zero exit status."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except FastLoRAError as exc:
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(2)
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            ctx.exit(130)
        except Exception as exc:  # noqa: BLE001 - the CLI must not dump tracebacks on users
            if os.environ.get("FASTLORA_DEBUG"):
                raise
            click.echo(f"Error: {type(exc).__name__}: {exc} (set FASTLORA_DEBUG=1 for the traceback)", err=True)
            ctx.exit(1)


def parse_n(value):
    """``population``/``none`` -> None, else a positive integer."""
    if value is None or str(value).lower() in {"population", "none", "inf"}:
        return None
    try:
        n = int(value)
    except ValueError:
        raise FastLoRAError(f"n={value!r} must be a positive integer or 'population'") from None
    if n < 1:
        raise FastLoRAError(f"n={value!r} must be a positive integer or 'population'")
    return n


@click.group(cls=FastLoRAGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="fastlora")
def main():
    """fastlora: fast, exact solvers for PEFT-based meta-learning (LoRA-ML)."""


def _progress(total: int, enabled: bool, desc: str):
    """A tqdm progress bar fed by the retrain callback (None when disabled)."""
    if not enabled:
        return None, None
    from tqdm import tqdm
    bar = tqdm(total=total, desc=desc, unit="it", leave=False, file=sys.stderr)

    def callback(iteration, elapsed, objective):
        bar.n = iteration
        bar.set_postfix_str(f"objective={objective:.3e}", refresh=False)
        bar.update(0)

    return bar, callback


@main.command()
@click.option("--d", "d", type=int, default=64, show_default=True, help="input dimension d (= d_in)")
@click.option("--d-out", type=int, default=None, help="output dimension (default d)")
@click.option("--k", "k", type=int, default=2, show_default=True, help="rank of each task's perturbation")
@click.option("--T", "T", type=int, default=8, show_default=True, help="number of retraining tasks")
@click.option("--n", "n", default="population", show_default=True, help="samples per task, or 'population'")
@click.option("--noise", type=float, default=0.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--asymmetric", is_flag=True, help="general ground truth B*C*ᵀ instead of U*U*ᵀ")
@click.option("--method", default="lora-ml", show_default=True, help="standard | lora-ml | reptile")
@click.option("--peft", default="lora_sym", show_default=True, help="parameterization (fastlora plugins)")
@click.option("--rank", type=int, default=None, help="adapter rank (default k)")
@click.option("--solver", default="als", show_default=True, help="als | gd")
@click.option("--backend", default="auto", show_default=True, help="auto | numpy | numba | cupy")
@click.option("--dtype", default="float64", show_default=True, help="float64 | float32")
@click.option("--max-iter", type=int, default=1000, show_default=True)
@click.option("--tol", type=float, default=1e-10, show_default=True)
@click.option("--threads", type=int, default=None, help="Numba threads")
@click.option("--ft-rank", type=int, default=None, help="fine-tuning rank for evaluation (default k)")
@click.option("--n-ft", default="population", show_default=True, help="fine-tuning samples, or 'population'")
@click.option("--ft-peft", default="lora", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print the summary as JSON")
@click.option("--progress/--no-progress", default=None, help="progress bar (default: when stderr is a terminal)")
def solve(d, d_out, k, T, n, noise, seed, asymmetric, method, peft, rank, solver, backend, dtype, max_iter, tol,
          threads, ft_rank, n_ft, ft_peft, as_json, progress):
    """Solve one problem and print a summary table."""
    import fastlora as fl
    from .tables import render

    prob = fl.make_problem(d=d, k=k, T=T, n=parse_n(n), noise=noise, seed=seed, d_out=d_out,
                           symmetric=not asymmetric)
    show = sys.stderr.isatty() if progress is None else progress
    bar, callback = _progress(max_iter, show and method != "standard", f"{method}")
    try:
        res = fl.retrain(prob, method=method, peft=peft, rank=rank, solver=solver, backend=backend,
                         max_iter=max_iter, tol=tol, seed=seed, dtype=dtype, threads=threads, callback=callback)
    finally:
        if bar is not None:
            bar.close()
    metrics = fl.evaluate(res, prob, ft_rank=ft_rank, n_ft=parse_n(n_ft), ft_peft=ft_peft, seed=seed)
    summary = {**res.summary(), "rel_err_A": metrics["rel_err_A"], "adapt_rank": metrics["adapt_rank"],
               "excess_risk": metrics["excess_risk"], "message": res.message}
    if as_json:
        click.echo(json.dumps(summary, indent=2, default=str))
    else:
        click.echo(repr(prob))
        click.echo(render([{"quantity": key, "value": value} for key, value in summary.items()]))


@main.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="fastlora-demo", show_default=True,
              help="folder for the results store and the figures")
@click.option("--workers", type=int, default=None, help="worker processes (default: all cores)")
@click.option("--quick", is_flag=True, help="fewer seeds (a smoke test)")
def demo(out_dir, workers, quick):
    """Reproduce the paper's synthetic comparison at small size (table and figures)."""
    from .demo import run_demo
    run_demo(out_dir, workers=workers, quick=quick, echo=click.echo)


@main.command()
@click.argument("spec_path", metavar="SPEC.toml", type=click.Path(dir_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="SQLite results store (created or resumed)")
@click.option("--workers", type=int, default=None, help="local worker processes (default: all cores)")
@click.option("--scheduler", default=None, help="dask.distributed scheduler address, e.g. tcp://host:8786")
@click.option("--retry-errors", is_flag=True, help="rerun rows stored with status='error'")
@click.option("--progress/--no-progress", default=None, help="progress bar (default: when stderr is a terminal)")
def sweep(spec_path, out, workers, scheduler, retry_errors, progress):
    """Run every (point, seed) of a grid spec; rerunning resumes where it stopped."""
    from .sweep import load_spec, run_sweep
    spec = load_spec(spec_path)  # every key is checked before any work starts
    run_sweep(spec, out, workers=workers, scheduler=scheduler, retry_errors=retry_errors, progress=progress,
              echo=click.echo)


@main.command("export")
@click.argument("store", type=click.Path(exists=True, dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["csv", "parquet"]), default="csv", show_default=True)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False))
def export_cmd(store, fmt, output):
    """Write a results store's rows to CSV or Parquet."""
    from .sweep import export_results
    n = export_results(store, output, fmt)
    click.echo(f"wrote {n} row(s) to {output}")


@main.command()
@click.argument("store", type=click.Path(exists=True, dir_okay=False))
@click.option("--x", "x", required=True, help="key on the x axis, e.g. T")
@click.option("--y", "y", default="excess_risk", show_default=True, help="metric on the y axis")
@click.option("--hue", default=None, help="one line per value of this key, e.g. method")
@click.option("--facet", default=None, help="one panel per value of this key, e.g. d")
@click.option("--where", multiple=True, help="keep rows with key=value (repeatable)")
@click.option("--logy", is_flag=True)
@click.option("--logx", is_flag=True)
@click.option("-o", "--output", default="fig.png", show_default=True, type=click.Path(dir_okay=False))
def plot(store, x, y, hue, facet, where, logy, logx, output):
    """Plot a metric against a key: mean over seeds with a min–max band."""
    from .sweep.plot import plot_results
    click.echo(plot_results(store, x, y, hue=hue, facet=facet, logy=logy, logx=logx, where=where, out=output))


@main.command()
@click.option("--config", "configs", multiple=True, help="configuration(s) to run (default: paper, pop-384, pop-512, pop-1024)")
@click.option("--backend", "backends", default="numba,numpy", show_default=True,
              help="comma-separated backends (numpy is always measured as the reference)")
@click.option("--repeat", type=int, default=3, show_default=True, help="timed repeats (median reported)")
@click.option("--baselines/--no-baselines", default=True, help="measure bench/baselines in the same run")
@click.option("--full-baselines", is_flag=True, help="run slow baselines to tolerance instead of extrapolating")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="write the report as JSON")
@click.option("--list", "list_configs", is_flag=True, help="list the configurations and exit")
def bench(configs, backends, repeat, baselines, full_baselines, json_path, list_configs):
    """Time the solvers against the numpy reference and the baselines, in one run."""
    from .bench import CONFIGS, run_bench
    if list_configs:
        for c in CONFIGS.values():
            click.echo(f"{c.name:10s} d={c.d} T={c.T} k={c.k} {c.dtype}: {c.note}")
        return
    names = list(configs) or ["paper", "pop-384", "pop-512", "pop-1024"]
    chosen = [b.strip() for b in backends.split(",") if b.strip()]
    for b in chosen:
        if b not in ("numpy", "numba", "cupy"):
            raise FastLoRAError(f"--backend {b!r} is not allowed; choose from numpy, numba, cupy")
    report = run_bench(names, chosen, repeat=repeat, baselines=baselines, full_baselines=full_baselines,
                       echo=click.echo)
    from .tables import render
    columns = ["config", "backend", "solver", "sec_per_iter", "useful_gflops", "fraction_of_gemm", "speedup_vs_numpy",
               "time_to_1e8", "speedup_vs_dense_als", "seconds", "speedup_vs_paper_gd", "peak_rss_gib",
               "points_per_second"]
    present = [c for c in columns if any(row.get(c) is not None for row in report.rows)]
    click.echo("\n" + render(report.rows, present) + "\n")
    click.echo("machine: " + ", ".join(f"{k}={v}" for k, v in report.machine.items()))
    for note in report.notes:
        click.echo(f"note: {note}")
    if json_path:
        with open(json_path, "w") as fh:
            fh.write(report.to_json())
        click.echo(f"wrote {json_path}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="print as JSON")
def plugins(as_json):
    """List the registered PEFT parameterizations, their capabilities and load errors."""
    import fastlora as fl
    from .tables import render

    rows = fl.peft.info()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = []
    for row in rows:
        caps = row["capabilities"] or {}
        table.append({"name": row["name"], "distribution": row["distribution"], "version": row["version"],
                      "best_fit": caps.get("best_fit") if caps else None, "family": caps.get("family") or "-",
                      "fast_paths": ",".join(caps.get("fast_paths", [])) or "-",
                      "notes": ", ".join(filter(None, ["uses A (gd only)" if caps.get("uses_base") else "",
                                                       "frozen: " + ",".join(caps["frozen"]) if caps.get("frozen") else "",
                                                       "implicit gradient" if caps.get("implicit_gradient") else ""]))
                      or "-",
                      "status": "ok" if row["error"] is None else "ERROR"})
    click.echo(render(table))
    for row in rows:
        if row["error"]:
            click.echo(f"error: {row['error']}")


@main.group()
def cache():
    """Manage the on-disk cache of compiled Numba kernels."""


@cache.command("clear")
def cache_clear():
    """Delete every cached compiled kernel."""
    from .config import settings
    from .kernels_cache import clear_cache
    removed = clear_cache()
    click.echo(f"removed {removed} cached file(s) from {settings.numba_cache_dir}")


@cache.command("info")
def cache_info():
    """Show where compiled kernels are cached and how much space they take."""
    from .kernels_cache import cache_summary
    click.echo(cache_summary())


if __name__ == "__main__":  # pragma: no cover
    main()
