"""``fastlora landscape``: a census of LoRA-ML endpoints on one problem, printed as a table.

The lead wires it into the ``fastlora`` group with ``main.add_command(landscape_command)``;
library errors (FastLoRAError) then print one ``Error: ...`` line and exit non-zero.
"""
from __future__ import annotations

import json
import sys

import click


@click.command("landscape")
@click.option("--d", "d", type=int, default=10, show_default=True, help="input dimension d (= d_in)")
@click.option("--k", "k", type=int, default=1, show_default=True, help="rank of each task's perturbation")
@click.option("--T", "T", type=int, default=3, show_default=True, help="number of retraining tasks")
@click.option("--n", "n", default="population", show_default=True, help="samples per task, or 'population'")
@click.option("--noise", type=float, default=0.0, show_default=True, help="noise std of the samples")
@click.option("--asymmetric", is_flag=True, help="general ground truth B*C*ᵀ instead of U*U*ᵀ (use --peft lora)")
@click.option("--peft", default="lora_sym", show_default=True, help="lora_sym | lora")
@click.option("--rank", type=int, default=None, help="adapter rank (default k)")
@click.option("--n-starts", "n_starts", type=int, default=100, show_default=True, help="number of random starts")
@click.option("--starts", "old_starts", type=int, default=None, hidden=True, help="deprecated: --n-starts")
@click.option("--init", "init", default="normal", show_default=True, help="normal | uniform | standard")
@click.option("--init-scale", type=float, default=0.1, show_default=True,
              help="std (normal) or half-width (uniform) of the starts' entries")
@click.option("--solver", default="gd", show_default=True, help="gd | als")
@click.option("--optimizer", default=None, help="gd solver: lbfgs (default) | gd | adam")
@click.option("--max-iter", type=int, default=None, help="most solver iterations per start [default: 1000, as "
              "fastlora solve]")
@click.option("--tol", type=float, default=None, help="relative tolerance of each solve [default: 1e-10]")
@click.option("--backend", default="auto", show_default=True, help="array/kernel backend, as fastlora solve")
@click.option("--seed", type=int, default=0, show_default=True, help="seed of the problem and of the starts")
@click.option("--records", "show_records", is_flag=True, help="also print one row per start")
@click.option("--json", "as_json", is_flag=True, help="print the census (counts, summary, records) as JSON")
@click.option("--progress/--no-progress", default=None, help="progress bar (default: when stderr is a terminal)")
def landscape_command(d, k, T, n, noise, asymmetric, peft, rank, n_starts, old_starts, init, init_scale, solver,
                      optimizer, max_iter, tol, backend, seed, show_records, as_json, progress):
    """Solve LoRA-ML from many random starts and classify where each one lands
    (global / spurious minimum, saddle, degenerate, not stationary, failed)."""
    from ..cli import speaking_flags
    if old_starts is not None:
        click.echo("note: --starts is deprecated, write --n-starts (the old spelling goes in a future release)",
                   err=True)
        n_starts = old_starts
    names = {"d", "k", "T", "n", "noise", "peft", "rank", "n_starts", "init", "init_scale", "solver", "optimizer",
             "max_iter", "tol", "backend", "seed"}
    with speaking_flags(names):
        _landscape(d, k, T, n, noise, asymmetric, peft, rank, n_starts, init, init_scale, solver, optimizer, max_iter,
                   tol, backend, seed, show_records, as_json, progress)


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
