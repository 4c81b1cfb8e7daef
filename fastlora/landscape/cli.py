"""``fastlora landscape``: a census of LoRA-ML endpoints on one problem, printed as a table.

The lead wires it into the ``fastlora`` group with ``main.add_command(landscape_command)``;
library errors (FastLoRAError) then print one ``Error: ...`` line and exit non-zero.
"""
from __future__ import annotations

import json
import sys

import click

from ..cli import schema_option, speaking_flags


@click.command("landscape")
@schema_option("d", default=10)
@schema_option("k", default=1)
@schema_option("T", default=3)
@schema_option("n")
@schema_option("noise")
@click.option("--asymmetric", is_flag=True, help="general ground truth B*C*ᵀ instead of U*U*ᵀ (use --peft lora)")
@schema_option("peft")
@schema_option("rank")
@schema_option("n_starts", default=100)
@click.option("--starts", "old_starts", type=int, default=None, hidden=True, help="deprecated: --n-starts")
@schema_option("census_init", flag="--init")
@schema_option("init_scale")
@schema_option("solver", default="gd")
@schema_option("optimizer", given_only=True, shown="lbfgs")
@schema_option("max_iter", given_only=True)
@schema_option("tol", given_only=True)
@schema_option("backend")
@schema_option("seed")
@click.option("--records", "show_records", is_flag=True, help="also print one row per start")
@click.option("--json", "as_json", is_flag=True, help="print the census (counts, summary, records) as JSON")
@click.option("--progress/--no-progress", default=None, help="progress bar (default: when stderr is a terminal)")
def landscape_command(d, k, T, n, noise, asymmetric, peft, rank, n_starts, old_starts, census_init, init_scale, solver,
                      optimizer, max_iter, tol, backend, seed, show_records, as_json, progress):
    """Solve LoRA-ML from many random starts and classify where each one lands
    (global / spurious minimum, saddle, degenerate, not stationary, failed).  Options, their
    values and defaults: the options schema (fastlora.options); the problem is smaller than
    make_problem's by default (d = 10, k = 1, T = 3) and the solver L-BFGS."""
    if old_starts is not None:
        click.echo("note: --starts is deprecated, write --n-starts (the old spelling goes in a future release)",
                   err=True)
        n_starts = old_starts
    names = {"d", "k", "T", "n", "noise", "peft", "rank", "n_starts", "init", "init_scale", "solver", "optimizer",
             "max_iter", "tol", "backend", "seed"}
    with speaking_flags(names):
        _landscape(d, k, T, n, noise, asymmetric, peft, rank, n_starts, census_init, init_scale, solver, optimizer,
                   max_iter, tol, backend, seed, show_records, as_json, progress)


def _landscape(d, k, T, n, noise, asymmetric, peft, rank, starts, init, init_scale, solver, optimizer, max_iter, tol,
               backend, seed, show_records, as_json, progress):
    import fastlora as fl

    from ..cli import parse_n
    from ..tables import render
    from .census import census

    prob = fl.make_problem(d=d, k=k, T=T, n=parse_n(n), noise=noise, seed=seed, symmetric=not asymmetric,
                           n_test_tasks=0)
    show = sys.stderr.isatty() if progress is None else progress
    bar, callback = None, None
    if show:
        from tqdm import tqdm
        bar = tqdm(total=starts, desc="census", unit="start", leave=False, file=sys.stderr)

        def callback(done, total):
            bar.update(done - bar.n)
    try:
        result = census(prob, peft=peft, rank=rank, n_starts=starts, init=init, init_scale=init_scale,
                        solver=solver, optimizer=optimizer, seed=seed, max_iter=max_iter, tol=tol, backend=backend,
                        callback=callback)
    finally:
        if bar is not None:
            bar.close()
    if as_json:
        click.echo(json.dumps({"problem": repr(prob), **result.to_dict()}, indent=2))
        return
    click.echo(repr(prob))
    click.echo(result.table())
    if show_records:
        click.echo("\n" + render(result.records, ["start", "kind", "objective", "excess", "grad_norm", "min_eig",
                                                   "n_iter", "converged", "error"]))
