"""``fastlora bench`` (a run), ``fastlora bench compare`` and ``fastlora bench history``."""
from __future__ import annotations

import click
from click.core import ParameterSource

from ..backends import BACKENDS, backend_status
from ..errors import FastLoRAError, check_choice, check_output_folder
from .configs import CONFIGS, DEFAULT_CONFIGS

EXIT_RUNTIME = 1


def _existing_folder(ctx, param, value):
    if value is not None:
        check_output_folder(value, f"{max(param.opts, key=len)} {value!r}")
    return value


@click.group("bench", invoke_without_command=True)
@click.option("--config", "configs", multiple=True,
              help=f"configuration(s) to run (default: {', '.join(DEFAULT_CONFIGS)}; with --quick, all; --list)")
@click.option("--backend", "backends", default=None,
              help="comma-separated backends (default: each config's backends that can run here); population "
                   "configs also time numpy, the reference")
@click.option("--repeat", type=click.IntRange(min=1), default=3, show_default=True,
              help="timed rounds per case (the paper's default call: at least 25)")
@click.option("--quick", is_flag=True, help="every config at small sizes (under a minute on 2 cores)")
@click.option("--peft", default=None,
              help="time the configs that take a parameterization with this one (any installed, e.g. a plugin); "
                   "--list says which configs take it")
@click.option("--baselines/--no-baselines", default=True, help="measure bench/baselines in the same run")
@click.option("--full-baselines", is_flag=True, help="run slow baselines to tolerance instead of extrapolating")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, callback=_existing_folder,
              help="write the run as pytest-benchmark JSON (its folder must exist)")
@click.option("--save", "save_name", default=None,
              help="save the run as STORAGE/<machine id>/NNNN_NAME.json, as pytest --benchmark-save does")
@click.option("--autosave", is_flag=True,
              help="save the run as STORAGE/<machine id>/NNNN_<commit>_<date>.json, as pytest --benchmark-autosave")
@click.option("--storage", default=".benchmarks", show_default=True, type=click.Path(file_okay=False),
              help="where --save/--autosave keep runs (pytest-benchmark's --benchmark-storage)")
@click.option("--list", "list_configs", is_flag=True, help="list the configurations and exit")
@click.pass_context
def bench_command(ctx, configs, backends, repeat, quick, peft, baselines, full_baselines, json_path, save_name,
                  autosave, storage, list_configs):
    """Time the solvers against references measured in the same run (GEMM, drawing the data,
    the baselines), in pytest-benchmark's format; see also 'bench compare' and 'bench history'."""
    if ctx.invoked_subcommand is not None:
        given = [max(p.opts, key=len) for p in ctx.command.params
                 if ctx.get_parameter_source(p.name) is not ParameterSource.DEFAULT]
        if given:
            raise FastLoRAError(f"{', '.join(given)}: options of a bench run, not of 'bench {ctx.invoked_subcommand}'")
        return
    from .results import check_save_name, pytest_benchmark
    pytest_benchmark()
    if list_configs:
        _list_configs()
        return
    if save_name is not None and autosave:
        raise FastLoRAError("--save and --autosave: choose one")
    if save_name is not None:
        check_save_name(save_name)
    if peft is not None:
        import fastlora as fl
        installed = fl.peft.available()
        if peft not in installed:
            raise FastLoRAError(f"--peft {peft!r} is not an installed parameterization; installed: "
                                f"{', '.join(installed)}")
    names = list(dict.fromkeys(configs)) or list(CONFIGS if quick else DEFAULT_CONFIGS)
    if peft is not None and not configs:
        names = [n for n in names if CONFIGS[n].takes_peft]
    asked = _backends(backends)
    _run(names, asked, repeat, quick, peft, baselines, full_baselines, json_path, save_name, autosave, storage)


def _backends(text: str | None) -> list[str] | None:
    if text is None:
        return None
    chosen = [b.strip() for b in text.split(",") if b.strip()]
    for b in chosen:
        check_choice("--backend", b, BACKENDS)
    unusable = {b: why for b in chosen for ok, why in [backend_status(b)] if not ok}
    if len(unusable) == len(chosen):  # skipping some of the chosen backends is a note; all of them an error
        raise FastLoRAError("; ".join(f"--backend {b} cannot run here: {why}" for b, why in unusable.items()))
    return chosen


def _list_configs() -> None:
    width = max(len(name) for name in CONFIGS)
    for c in CONFIGS.values():
        peft = "takes --peft" if c.takes_peft else "           "
        quick = c.sized(True)
        sizes = c.describe() + (f" (--quick: {quick.describe()})" if quick != c else "")
        click.echo(f"{c.name:{width}s}  {peft}  {sizes}: {c.note}")


def _run(names, asked, repeat, quick, peft, baselines, full_baselines, json_path, save_name, autosave, storage):
    from .results import autosave_name, commit_info, machine_info, run_json, save, write_json
    from .runner import check_configs, plan, run_bench
    from .suites import Options
    check_configs(names, peft)
    runnable, skipped = plan(names, asked, quick)
    if not runnable:
        raise FastLoRAError("nothing asked for can run here: " + "; ".join(f"{s.config}: {s.reason}" for s in skipped))
    options = Options(repeat=repeat, baselines=baselines, full_baselines=full_baselines, peft=peft, quick=quick)
    run = run_bench(names, asked, options, echo=click.echo)
    run.machine_info = machine_info(gpu_used=any(m.case.backend == "cupy" for m in run.results))
    run.commit_info = commit_info()
    _summary(run)
    data = run_json(run)
    if json_path:
        write_json(data, json_path)
        click.echo(f"wrote {json_path}")
    if save_name is not None or autosave:
        path = save(data, storage, save_name if save_name is not None else autosave_name(run.commit_info))
        click.echo(f"saved {path}")
    if not run.results:
        click.echo("Error: nothing asked for ran: " + "; ".join(f"{s.config}: {s.reason}" for s in run.skipped),
                   err=True)
        click.get_current_context().exit(EXIT_RUNTIME)


def _summary(run) -> None:
    from ..tables import fmt, render
    from .results import machine_summary
    from .runner import format_seconds, iqr
    rows = [{"benchmark": m.case.name, "median": format_seconds(m.median), "IQR": format_seconds(iqr(m.data)),
             "rounds": len(m.data), "per": m.case.per, "score": fmt(m.extra_info.get("score")),
             "vs numpy": fmt(m.extra_info.get("speedup_vs_numpy"))} for m in run.results]
    click.echo("\n" + render(rows) + "\n")
    units = {m.case.name: m.case.unit for m in run.results if m.extra_info.get("is_reference")}
    if units:
        click.echo("score = median / the fastest round of its reference, measured in the same run:")
        for name, unit in units.items():
            click.echo(f"  {name}: {unit}")
    for skip in run.skipped:
        click.echo(f"skipped: {skip.config}: {skip.reason}")
    click.echo("machine: " + machine_summary(run.machine_info))


@bench_command.command("compare")
@click.argument("files", nargs=-1, required=True)
@click.option("--fail-on", default=None,
              help="exit 1 when a benchmark is slower than in the first file, beyond noise, by more than this "
                   "(e.g. 10%)")
@click.option("--by", type=click.Choice(["auto", "time", "score"]), default="auto", show_default=True,
              help="compare seconds (time), machine-independent scores (score), or seconds on one machine and "
                   "scores across machines (auto)")
def compare_command(files, fail_on, by):
    """Compare runs (pytest-benchmark JSON files): per config, the medians, their ratio to the
    first file's, and a verdict that accounts for the spread (faster / slower / within noise)."""
    from .compare import compare, parse_threshold
    threshold = parse_threshold(fail_on) if fail_on is not None else None
    result = compare(list(files), threshold, by)
    click.echo(result.text)
    if result.regressions:
        click.echo(f"Error: {len(result.regressions)} benchmark(s) slower than A by more than {threshold:.0%} "
                   f"(beyond noise): {', '.join(result.regressions)}", err=True)
        click.get_current_context().exit(EXIT_RUNTIME)


@bench_command.command("history")
@click.option("--storage", default=".benchmarks", show_default=True, type=click.Path(file_okay=False),
              help="where the runs were saved (--save/--autosave, or pytest --benchmark-autosave)")
@click.option("--config", default=None, help="list the runs holding this config and draw its figures over them")
@click.option("-o", "--output", default=None, type=click.Path(dir_okay=False), callback=_existing_folder,
              help="the figure's file (default bench-history-CONFIG.png); its extension sets the format")
def history_command(storage, config, output):
    """List the saved runs; with --config, draw that config's medians and scores over them."""
    from ..sweep.plot import check_image_path
    from ..tables import render
    from .history import history_rows, plot_history
    output = output or (f"bench-history-{config}.png" if config else None)
    if output:
        check_image_path(output, "--output")
    rows = history_rows(storage, config)
    if not rows:
        where = f"no saved run in {storage!r}" + (f" holds config {config!r}" if config else "")
        if config:
            raise FastLoRAError(f"{where}; save runs with: fastlora bench --config {config} --autosave")
        click.echo(f"{where}; save one with: fastlora bench --quick --autosave")
        return
    click.echo(render(rows, ["run", "machine", "commit", "date", "quick", "peft", "benchmarks", "configs", "file"]))
    if config:
        click.echo(f"wrote {plot_history(rows, config, output)}")
    else:
        click.echo("draw a config's figures over these runs: fastlora bench history --config NAME")
