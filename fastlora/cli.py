"""The ``fastlora`` command line (click): solve, demo, sweep, export, plot, bench, plugins, cache.

Exit status:

====  ===========================================================================
 0    success
 1    runtime failure: an unexpected error (one line ``Error: TypeName: ...``), or
      sweep rows that failed (how many, and their first distinct messages)
 2    bad input or usage: one line ``Error: ...`` naming the argument, or click's
      usage message
130   interrupted (Ctrl-C): finished sweep rows are committed, workers stopped
143   terminated (SIGTERM): the same clean path as Ctrl-C
====  ===========================================================================

Set ``FASTLORA_DEBUG=1`` to see tracebacks of unexpected errors.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sys
import threading

import click

from .errors import FastLoRAError, check_output_folder

EXIT_RUNTIME, EXIT_INPUT, EXIT_INTERRUPTED, EXIT_TERMINATED = 1, 2, 130, 143


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that it takes Ctrl-C's clean path."""


def _raise_terminated(signum, frame):
    raise Terminated()


class FastLoRAGroup(click.Group):
    """Turns errors into one readable line and the documented exit status (module docstring)."""

    def invoke(self, ctx):
        in_main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main_thread else None
        try:
            with _deprecations_as_notes():
                return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except FastLoRAError as exc:
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(EXIT_INPUT)
        except Terminated:
            click.echo("Terminated.", err=True)
            ctx.exit(EXIT_TERMINATED)
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            ctx.exit(EXIT_INTERRUPTED)
        except Exception as exc:  # the CLI must not dump tracebacks on users
            if isinstance(exc, BrokenPipeError) and _stdout_closed():
                # the reader stopped early (| head): as for any filter, no error (another pipe's break is one)
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # for Python's flush at exit
                ctx.exit(0)
            if os.environ.get("FASTLORA_DEBUG"):
                raise
            click.echo(f"Error: {type(exc).__name__}: {exc} (set FASTLORA_DEBUG=1 for the traceback)", err=True)
            ctx.exit(EXIT_RUNTIME)
        finally:
            if in_main_thread:
                signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _stdout_closed() -> bool:
    """Whether standard output's reader is gone: a flush meets a broken pipe, or (nothing left to flush)
    the pipe reports an error to poll()."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        return True
    except (OSError, ValueError):
        return False
    try:
        import select
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(event & select.POLLERR for _, event in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll() here, or stdout has no descriptor
        return False


@contextlib.contextmanager
def _deprecations_as_notes():
    """Old spellings (fastlora.options.DEPRECATED_NAMES) and slow configurations (PerformanceWarning): one
    ``note:`` line each, in the command's words."""
    import warnings

    from .errors import PerformanceWarning, RegimeWarning
    from .options import FastLoRADeprecationWarning
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, (FastLoRADeprecationWarning, PerformanceWarning, RegimeWarning)):
            click.echo(f"note: {in_flag_words(str(message), _CLI_RUN_NAMES)}", err=True)
        else:
            shown(message, category, filename, lineno, file, line)

    with warnings.catch_warnings():
        warnings.simplefilter("always", FastLoRADeprecationWarning)
        warnings.simplefilter("always", PerformanceWarning)
        warnings.simplefilter("always", RegimeWarning)
        warnings.showwarning = show
        yield


# arguments of run_sweep that are the sweep command's flags (spec keys are not: they stay spec words)
_CLI_RUN_NAMES = ("workers", "scheduler", "scheduler_timeout", "stall_timeout")


def parse_n(value, option: str = "--n"):
    """``population``/``none`` -> None, else a positive integer; errors name ``option``."""
    if value is None or str(value).lower() in {"population", "none", "inf"}:
        return None
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise FastLoRAError(f"{option}={value!r} must be a positive integer or 'population'")
    return n


def _existing_folder(ctx, param, value):
    """Click callback: an output file's folder must exist (a mistyped path must not create folders)."""
    if value is not None:
        check_output_folder(value, f"{max(param.opts, key=len)} {value!r}")
    return value


# commands of subpackages, imported when asked for (fastlora.landscape costs ~30 ms to import,
# which every command and every spawned sweep worker would otherwise pay)
_LAZY_COMMANDS = {"landscape": ("fastlora.landscape.cli", "landscape_command"),
                  "bench": ("fastlora.bench.cli", "bench_command")}


class _MainGroup(FastLoRAGroup):
    """``fastlora``, with the :data:`_LAZY_COMMANDS` loaded on first use."""

    def list_commands(self, ctx):
        return sorted({*super().list_commands(ctx), *_LAZY_COMMANDS})

    def get_command(self, ctx, name):
        if name in _LAZY_COMMANDS and name not in self.commands:
            import importlib
            module, attribute = _LAZY_COMMANDS[name]
            self.add_command(getattr(importlib.import_module(module), attribute))
        return super().get_command(ctx, name)


@click.group(cls=_MainGroup, context_settings={"help_option_names": ["-h", "--help"]})
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


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


_UNSET = object()


def schema_option(name: str, *, given_only: bool = False, default=_UNSET, flag: str | None = None,
                  shown=_UNSET):
    """A click option built from the options schema (fastlora.options): its help, allowed values
    and default come from there.  ``given_only``: default None, passed on only when given (the
    library then applies the schema's default, ``shown`` in the help).  ``default`` and ``flag``
    (``--name``, the parameter keeping ``name``): a command's own, e.g. the census's smaller
    problem.  Values are checked by the library, so a bad one is one ``Error:`` line naming the
    option."""
    from .options import OPTIONS
    option = OPTIONS[name]
    if default is _UNSET:
        default = option.default_for("lora-ml")
        if default is None and option.model_defaults:
            default = option.default_for("retrain", "linear")  # what the library resolves None to
    if shown is _UNSET:
        shown = "population" if option.kind == "count" and default is None else default
    # an array start (init_A) exists only in Python
    allowed = " | ".join(option.choices) if option.kind == "init_A" else option.describe()
    if option.kind == "seed":
        allowed = "int >= 0"  # a numpy Generator exists only in Python
    help_text = f"{option.doc} [{allowed}; default: {shown}]"
    flag = flag or _flag(name)
    if option.kind == "bool":
        return click.option(f"{flag}/--no-{flag.removeprefix('--')}", name, default=None if given_only else default,
                            help=help_text)
    kind = {"int": int, "float": float, "seed": int}.get(option.kind, str)
    if option.kind == "init_A":
        kind = click.Choice(option.choices)
    value = None if given_only else ("population" if option.kind == "count" and default is None else default)
    return click.option(flag, name, type=kind, default=value, help=help_text, show_default=False)


def schema_options(*names, given_only: bool = False):
    """:func:`schema_option` of each of ``names``, in that order."""
    def decorate(fn):
        for name in reversed(names):
            fn = schema_option(name, given_only=given_only)(fn)
        return fn
    return decorate


@contextlib.contextmanager
def speaking_flags(names):
    """Library errors in the command's words: ``rank=100`` becomes ``--rank 100`` and ``implicit=True``
    ``--implicit`` for the API arguments ``names`` (call reprs such as ``make_problem(d=...)`` stay)."""
    try:
        yield
    except FastLoRAError as exc:
        raise type(exc)(in_flag_words(str(exc), names)) from None


def in_flag_words(message: str, names) -> str:
    pattern = re.compile(r"(?<![\w.-])(" + "|".join(map(re.escape, sorted(names, key=len, reverse=True)))
                         + r")=('[^']*'|[^\s,;:)]+)")

    def flag(match):
        name, value = match.group(1), match.group(2)
        if name in _INVERTED_FLAGS and value in ("True", "False"):  # the CLI spells it as its opposite's flag
            return _INVERTED_FLAGS[name][value == "True"]
        if value == "None" and name in _COUNT_FLAGS:
            return f"{_flag(name)} population"
        if value == "True":
            return _flag(name)
        if value == "False":
            return "--no-" + _flag(name)[2:]
        return f"{_flag(name)} {value.strip(chr(39))}"

    pieces = re.split(r"(\b\w+\([^()]*\))", message)  # odd pieces: call reprs, kept as they are
    spoken = "".join(piece if i % 2 else pattern.sub(flag, piece) for i, piece in enumerate(pieces))
    return spoken.replace(" population (population)", " population")


# ``symmetric`` is solve's default, turned off by --asymmetric: (symmetric=False, symmetric=True) in flag words
_INVERTED_FLAGS = {"symmetric": ("--asymmetric", "the symmetric default (no --asymmetric)")}
_COUNT_FLAGS = ("n",)  # None is spelled "population" on the command line


def _solve_flags(group: str, *, lora_ml_only: bool | None = None) -> tuple[str, ...]:
    """The options of ``group`` that are flags of ``fastlora solve`` (``cli`` in the schema), in
    the schema's order; ``lora_ml_only``: only those that apply to LoRA-ML alone (or only the others)."""
    from .options import OPTIONS
    return tuple(name for name, option in OPTIONS.items() if option.group == group and option.cli
                 and (lora_ml_only is None or bool(option.applies) == lora_ml_only))


SOLVE_PROBLEM = _solve_flags("problem")
SOLVE_RETRAIN = _solve_flags("retrain", lora_ml_only=False)
# passed on only when given: method='lora-ml' alone takes them
SOLVE_LORA_ML = _solve_flags("retrain", lora_ml_only=True)
SOLVE_EVALUATE = _solve_flags("evaluate")
SOLVE_SOLVER = _solve_flags("solver")


@main.command()
@schema_options(*SOLVE_PROBLEM)
@click.option("--seed", type=int, default=0, help="seed of the problem draw and the solver [int >= 0; default: 0]")
@click.option("--asymmetric", is_flag=True, help="general ground truth B*C*ᵀ instead of U*U*ᵀ")
@click.option("--implicit", is_flag=True, help="A* generated tile by tile, never stored (population, symmetric; "
              "for d beyond memory: the solve keeps A as S + Q E Qᵀ)")
@schema_options(*SOLVE_RETRAIN)
@schema_options(*SOLVE_LORA_ML, *SOLVE_SOLVER, given_only=True)
@schema_options(*SOLVE_EVALUATE)
@click.option("--peft-options", "peft_options", default=None, metavar="TABLE",
              help="keyword arguments of the --peft class, as a JSON object or a TOML inline table, "
                   "e.g. '{ alpha = 16 }' (as peft_options in a sweep spec)")
@click.option("--ft-peft-options", "ft_peft_options", default=None, metavar="TABLE",
              help="keyword arguments of the --ft-peft class, likewise (default: fine-tuning with the retrained "
                   "class keeps its options)")
@click.option("--json", "as_json", is_flag=True, help="print the summary as JSON")
@click.option("--progress/--no-progress", default=None, help="progress bar (default: when stderr is a terminal)")
def solve(seed, asymmetric, implicit, as_json, progress, **options):
    """Solve one problem and print a summary table (options: fastlora.options)."""
    with speaking_flags({*options, "seed", "implicit", "dense_A", "symmetric"} - {"peft_options", "ft_peft_options"}):
        _solve(seed, asymmetric, implicit, as_json, progress, **options)


def parse_table(text: str | None, flag: str) -> dict | None:
    """A JSON object or a TOML inline table given on the command line, as a dict (None: not given)."""
    import tomllib
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        try:
            value = tomllib.loads(f"value = {text}")["value"]
        except tomllib.TOMLDecodeError:
            value = None
    if not isinstance(value, dict):
        raise FastLoRAError(f"{flag} must be a JSON object or a TOML inline table, e.g. '{{\"alpha\": 16}}' or "
                            f"'{{ alpha = 16 }}'; got {text!r}")
    return value


def _checked_peft_options(peft, options: dict | None, flag: str):
    """``options`` as a sweep spec checks peft_options: a table its class takes."""
    import fastlora as fl
    if options is None:
        return None
    try:
        fl.peft.get(peft, **options)
    except FastLoRAError as exc:
        raise FastLoRAError(f"{flag} {json.dumps(options)} for {flag.removesuffix('-options')} {peft}: {exc}") from None
    return options


def _solve(seed, asymmetric, implicit, as_json, progress, **options):
    import fastlora as fl

    from .options import OPTIONS
    from .tables import render

    peft_options = parse_table(options.pop("peft_options"), "--peft-options")
    ft_peft_options = parse_table(options.pop("ft_peft_options"), "--ft-peft-options")
    options["n"], options["n_ft"] = parse_n(options["n"], "--n"), parse_n(options["n_ft"], "--n-ft")
    if options["n_test_tasks"] < 1:
        raise FastLoRAError(f"--n-test-tasks {options['n_test_tasks']}: solve fine-tunes and measures on held-out "
                            f"tasks; it needs --n-test-tasks >= 1")
    problem = {k: options.pop(k) for k in SOLVE_PROBLEM}
    retrain = {k: options.pop(k) for k in SOLVE_RETRAIN}
    retrain.update({k: v for k in SOLVE_LORA_ML if (v := options.pop(k)) is not None})
    if peft_options is not None:
        retrain["peft_options"] = _checked_peft_options(retrain.get("peft", OPTIONS["peft"].default), peft_options,
                                                        "--peft-options")
    if retrain["method"] != "lora-ml" and set(retrain) & {*SOLVE_LORA_ML, "peft_options"}:
        given = ", ".join(_flag(k) for k in (*SOLVE_LORA_ML, "peft_options") if k in retrain)
        raise FastLoRAError(f"{given} appl{'ies' if ',' not in given else 'y'} to --method lora-ml only: --method "
                            f"{retrain['method']} retrains A alone, without adapters; leave "
                            f"{'it' if ',' not in given else 'them'} out")
    evaluate = {k: options.pop(k) for k in SOLVE_EVALUATE}
    if ft_peft_options is not None:
        evaluate["ft_peft_options"] = _checked_peft_options(evaluate["ft_peft"], ft_peft_options, "--ft-peft-options")
    solver_options = {k: v for k, v in options.items() if v is not None}
    prob = fl.make_problem(**problem, seed=seed, symmetric=not asymmetric, implicit=implicit)
    show = sys.stderr.isatty() if progress is None else progress
    bar, callback = _progress(retrain["max_iter"], show and retrain["method"] != "standard", retrain["method"])
    try:
        res = fl.retrain(prob, **retrain, seed=seed, callback=callback, dense_A=not implicit, **solver_options)
    finally:
        if bar is not None:
            bar.close()
    metrics = fl.evaluate(res, prob, **evaluate, seed=seed)
    summary = {**res.summary(), "ran": res.info.get("solver") or "-", "rel_err_A": metrics["rel_err_A"],
               "identified": metrics["identification"], "adapt_rank": metrics["adapt_rank"],
               "excess_risk": metrics["excess_risk"], "message": res.message}
    if as_json:
        click.echo(json.dumps(summary, indent=2, default=str))
    else:
        click.echo(repr(prob))
        click.echo(render([{"quantity": key, "value": value} for key, value in summary.items()]))


@main.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="fastlora-demo", show_default=True,
              callback=_existing_folder, help="folder for the results store and the figures (created; its parent "
              "must exist)")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="worker processes (default: all cores)")
@click.option("--quick", is_flag=True, help="fewer seeds (a smoke test)")
def demo(out_dir, workers, quick):
    """Reproduce the paper's synthetic comparison at small size (table and figures)."""
    from .demo import run_demo
    out = run_demo(out_dir, workers=workers, quick=quick, echo=click.echo)
    if out["summary"].failed:
        click.echo(f"Error: {out['summary'].failure_line(out['spec'].name, out['store'])}", err=True)
        click.get_current_context().exit(EXIT_RUNTIME)


@main.command()
@click.argument("spec_path", metavar="SPEC.toml", type=click.Path(dir_okay=False))
@click.option("--out", default=None, type=click.Path(dir_okay=False), callback=_existing_folder,
              help="SQLite results store (created or resumed; its folder must exist); required unless --dry-run")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="local worker processes (default: all cores)")
@click.option("--scheduler", default=None, help="dask.distributed scheduler address, e.g. tcp://host:8786")
@click.option("--scheduler-timeout", type=click.FloatRange(min=0, min_open=True), default=5.0, show_default=True,
              help="seconds to wait for the Dask scheduler before giving up")
@click.option("--stall-timeout", type=click.FloatRange(min=0, min_open=True), default=60.0, show_default=True,
              help="seconds a local worker may run rows without getting CPU time (stopped, e.g. by SIGSTOP, or "
                   "hung) before it is killed and the sweep ends as for a dead worker (rerun to resume)")
@click.option("--retry-errors", is_flag=True, help="rerun rows stored with status='error'")
@click.option("--append", is_flag=True,
              help="add to a store holding rows of a changed version of this spec, or of this spec under another "
                   "name (those rows are reused)")
@click.option("--progress/--no-progress", default=None, help="progress bar (default: when stderr is a terminal)")
@click.option("--dry-run", is_flag=True, help="report rows, distinct retrainings, points outside the theorem's "
              "regime, memory and a time estimate from a few timed retrainings; write nothing")
def sweep(spec_path, out, workers, scheduler, scheduler_timeout, stall_timeout, retry_errors, append, progress,
          dry_run):
    """Run every (point, seed) of a grid spec; rerunning resumes where it stopped.

    Exits with status 1 when rows of the spec failed (stored with status='error')."""
    from .sweep import load_spec, run_sweep
    spec = load_spec(spec_path)  # every key is checked before any work starts
    if dry_run:
        from .sweep.dryrun import dry_run as plan_sweep
        for line in plan_sweep(spec, out, workers=workers, scheduler=scheduler, append=append,
                               retry_errors=retry_errors).lines():
            click.echo(line)
        return
    if out is None:
        raise FastLoRAError("--out is required: the results store to create or resume (or pass --dry-run)")
    with speaking_flags(_CLI_RUN_NAMES):
        summary = run_sweep(spec, out, workers=workers, scheduler=scheduler, scheduler_timeout=scheduler_timeout,
                            retry_errors=retry_errors, append=append, progress=progress, echo=click.echo,
                            stall_timeout=stall_timeout)
    if summary.failed:
        click.echo(f"Error: {summary.failure_line(spec.name, out)}", err=True)
        click.get_current_context().exit(EXIT_RUNTIME)


@main.command("export")
@click.argument("store", type=click.Path(exists=True, dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["csv", "parquet"]), default=None,
              help="file format (default: from the output's extension, .parquet or else csv)")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, allow_dash=True),
              callback=_existing_folder, help="file to write (its folder must exist), or - for standard output "
              "(CSV only)")
def export_cmd(store, fmt, output):
    """Write a results store's rows to CSV or Parquet (``-o -``: CSV on standard output)."""
    from .sweep import export_results
    if output != "-":
        n = export_results(store, output, fmt)
        click.echo(f"wrote {n} row(s) to {output}")
        return
    if fmt == "parquet":
        raise FastLoRAError("--output - (standard output) takes CSV only; write Parquet to a file, "
                            "e.g. -o results.parquet")
    n = export_results(store, sys.stdout, "csv")  # a reader that stops early (| head): FastLoRAGroup
    sys.stdout.flush()
    click.echo(f"wrote {n} row(s) to standard output", err=True)  # stderr: stdout holds only the CSV


@main.command()
@click.argument("store", type=click.Path(exists=True, dir_okay=False))
@click.option("--x", "x", required=True, help="key on the x axis, e.g. T")
@click.option("--y", "y", default="excess_risk", show_default=True,
              help="metric on the y axis, or a condition on one, e.g. 'rel_err_A < 1e-6' (the fraction of seeds "
                   "meeting it)")
@click.option("--hue", multiple=True, help="one line per value of this key, e.g. method; or per truth value of a "
                                           "relation, e.g. 'ft_rank = rank' (repeatable: one line per combination)")
@click.option("--facet", default=None, help="one panel per value of this key, e.g. d")
@click.option("--where", multiple=True, help="keep rows with key=value (repeatable)")
@click.option("--logy", is_flag=True, help="logarithmic y axis (refused when a value is <= 0)")
@click.option("--logx", is_flag=True, help="logarithmic x axis (ticks at the values present)")
@click.option("--stat", type=click.Choice(["auto", "mean", "median"]), default="auto", show_default=True,
              help="the line: mean or median over seeds (auto: the median below 10 seeds per point, else the mean)")
@click.option("--band", type=click.Choice(["auto", "minmax", "iqr", "none"]), default="auto", show_default=True,
              help="the band around it: min-max, interquartile range, or none (auto: IQR below 10 seeds per "
                   "point, else min-max)")
@click.option("-o", "--output", default="fig.png", show_default=True, type=click.Path(dir_okay=False),
              callback=_existing_folder, help="image file to write (its folder must exist); its extension "
              "(png, pdf, svg, ...) sets the format")
def plot(store, x, y, hue, facet, where, logy, logx, stat, band, output):
    """Plot a metric against a key: the median (below 10 seeds) or mean over seeds with a band.

    Keys that vary with --x as functions of it (e.g. rank = k) need no --where: the title states them."""
    from .sweep.plot import check_image_path, plot_results
    check_image_path(output, "--output")  # before reading the store
    click.echo(plot_results(store, x, y, hue=list(hue) or None, facet=facet, logy=logy, logx=logx, where=where,
                            out=output, stat=stat, band=band))


@main.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="print as JSON")
@click.option("--check", is_flag=True, help="run the conformance kit (fastlora.testing) on every registered "
                                            "parameterization and problem generator; exit 1 if one fails")
@click.pass_context
def plugins(ctx, as_json, check):
    """List the registered PEFT parameterizations (entry-point group fastlora.peft) and problem
    generators (fastlora.problems), their capabilities and load errors; `plugins new NAME` starts one."""
    import fastlora as fl
    from fastlora import generators

    from .tables import render

    if ctx.invoked_subcommand is not None:
        if as_json or check:
            raise click.UsageError("--json and --check belong to `fastlora plugins` itself, not to a subcommand")
        return
    if check:
        _check_plugins(as_json)
        return
    rows = fl.peft.info()
    laws = generators.info()
    if as_json:
        click.echo(json.dumps(rows + laws, indent=2, default=repr))
        return
    table = []
    for row in rows:
        caps = row["capabilities"] or {}
        table.append({"name": row["name"], "distribution": row["distribution"], "version": row["version"],
                      "best_fit": caps.get("best_fit") if caps else None, "family": caps.get("family") or "-",
                      "fast_paths": ",".join(caps.get("fast_paths", [])) or "-",
                      "notes": _plugin_notes(caps),
                      "status": "ok" if row["error"] is None else "ERROR"})
    click.echo(render(table))
    for row in rows:
        if row["error"]:
            click.echo(f"error: {row['error']}")
        for claim in row.get("ignored_claims") or ():
            click.echo(f"ignored: {claim}")
    click.echo(f"\nproblem generators ({generators.GROUP}) for make_problem(law=NAME) and the spec key law:")
    if not laws:
        click.echo("(none installed)")
        return
    click.echo(render([{"name": row["name"], "distribution": row["distribution"], "version": row["version"],
                        "options": ", ".join(f"{k}={v!r}" for k, v in ((row["capabilities"] or {}).get("options")
                                                                          or {}).items()) or "-",
                        "status": "ok" if row["error"] is None else "ERROR"} for row in laws]))
    for row in laws:
        if row["error"]:
            click.echo(f"error: {row['error']}")


@plugins.command("new")
@click.argument("name")
@click.option("--numba", is_flag=True, help="add a Numba fast path (fast_paths['numba']) with its kernels and tests")
@click.option("--shared", is_flag=True, help="protocol version 2: a basis shared by all tasks (shared = ('B', 'C'))")
@click.option("--out", "folder", type=click.Path(file_okay=False), default=".", show_default=True,
              help="folder in which the package's folder fastlora-NAME is written")
def plugins_new(name, numba, shared, folder):
    """Write a pip-installable plugin package for the parameterization NAME: pyproject.toml with its
    entry point, the class (docstrings say what to fill in), a conformance-kit test, a fast-path
    test (--numba) and a README.  It works as written (a plain LoRA); docs/plugins.md has the steps."""
    from .scaffold import write_plugin
    root = write_plugin(name, folder, numba=numba, shared=shared)
    click.echo(f"wrote {root}")
    click.echo(f"next: pip install -e {root} && python -m pytest {root / 'tests'} && fastlora plugins --check")


def _plugin_notes(caps: dict) -> str:
    notes = ["uses A (gd only)" if caps.get("uses_base") else "",
             "frozen: " + ",".join(caps["frozen"]) if caps.get("frozen") else "",
             "shared: " + ",".join(caps["shared"]) if caps.get("shared") else "",
             "implicit gradient" if caps.get("implicit_gradient") else "",
             "fit given shared" if caps.get("best_fit_given_shared") else "",
             "init from residuals" if caps.get("init_from_residuals") else "",
             "ranks: " + ",".join(f"{k}={v}" for k, v in caps["rank_options"].items()) if caps.get("rank_options")
             else "",
             f"equivariant: {caps['basis_equivariance']}" if caps.get("basis_equivariance") else ""]
    return ", ".join(filter(None, notes)) or "-"


def _check_plugins(as_json: bool) -> None:
    """``fastlora plugins --check``: the conformance kit on every registered parameterization;
    exit status 1 (EXIT_RUNTIME) when one fails or does not load."""
    from .tables import render
    from .testing import check_installed

    rows = check_installed()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        click.echo(render([{"name": r["name"], "group": r["group"], "distribution": r["distribution"],
                            "version": r["version"], "checks_passed": len(r["passed"]),
                            "status": "ok" if r["ok"] else "FAIL"} for r in rows]))
        for r in rows:
            if not r["ok"]:
                click.echo(f"FAIL {r['name']} ({r['distribution']}): {r['failure']}")
            for warning in r["warnings"]:
                click.echo(f"warning {r['name']} ({r['distribution']}): {warning}")
    failed = [r["name"] for r in rows if not r["ok"]]
    if failed:
        click.echo(f"Error: {len(failed)} plugin(s) failed the conformance kit: {', '.join(failed)}",
                   err=True)
        click.get_current_context().exit(EXIT_RUNTIME)



@main.group()
def store():
    """Inspect a results store and drop rows from it."""


@store.command("info")
@click.argument("path", metavar="STORE", type=click.Path(exists=True, dir_okay=False))
def store_info(path):
    """The sweeps of a store, their spec versions (numbered from 1, oldest first) and their rows."""
    from .sweep.store import describe_store, store_pairing
    from .tables import render
    rows = [{"sweep": e["sweep"], "spec_version": e["version"] or "all", "added_at": e["added_at"] or "-",
             "rows": "-" if e["rows"] is None else e["rows"], "errors": "-" if e["errors"] is None else e["errors"]}
            for e in describe_store(path)]
    click.echo(render(rows) if rows else f"{path} holds no rows")
    click.echo(f"pairing: {store_pairing(path)} (docs/pairing.md)")


@store.command("prune")
@click.argument("path", metavar="STORE", type=click.Path(exists=True, dir_okay=False))
@click.option("--errors", is_flag=True, help="drop the rows stored with status='error'")
@click.option("--spec-version", type=click.IntRange(min=1), default=None,
              help="drop the rows of this version of the sweep's spec, and its record (see fastlora store info)")
@click.option("--sweep", "sweep_name", default=None, help="only rows of this sweep (needed with --spec-version "
              "where the store holds several)")
def store_prune(path, errors, spec_version, sweep_name):
    """Drop failed rows, or an old spec version's rows, so that a fixed or changed spec runs
    into the same store (the store's writer lock is held meanwhile)."""
    from .sweep.store import prune_store
    dropped = prune_store(path, errors=errors, spec_version=spec_version, sweep=sweep_name)
    click.echo(f"dropped {dropped} row(s) from {path}")


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
