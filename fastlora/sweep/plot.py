"""Figures of a results store: mean over seeds with a min–max band, as in the paper."""
from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from ..errors import FastLoRAError
from .store import METRICS, ResultsStore, key_columns

LABELS = {
    "excess_risk": "excess risk after fine-tuning  ½‖A + Δ̂ − W*‖²",
    "rel_err_A": "relative error of A  ‖A − A*‖ / ‖A*‖",
    "adapt_rank": "adaptation rank of W*_new − A",
    "objective": "retraining objective  Σ_t L_t",
    "n_iter": "solver iterations",
    "seconds": "solve time [s]",
    "T": "retraining tasks T",
    "n_ft": "fine-tuning samples n_ft",
    "n": "samples per retraining task n",
    "d": "dimension d",
    "k": "rank of task perturbations k",
    "rank": "adapter rank r",
    "ft_rank": "fine-tuning rank",
    "noise": "noise std σ",
    "method": "method",
    "peft": "parameterization",
}


def label(name: str) -> str:
    return LABELS.get(name, name)


def _parse_where(where) -> dict:
    out = {}
    for item in where or ():
        if "=" not in item:
            raise FastLoRAError(f"--where {item!r} must look like key=value")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def _matches(value, wanted: str) -> bool:
    return str(value) == wanted or (isinstance(value, (int, float)) and _num(wanted) == value)


def _num(text):
    try:
        return float(text)
    except ValueError:
        return None


def plot_results(path, x: str, y: str, hue: str | None = None, facet: str | None = None, *, logy: bool = False,
                 logx: bool = False, where=None, out="fig.png") -> str:
    """Plot ``y`` against ``x`` (one line per ``hue``, one panel per ``facet``) and save to ``out``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with ResultsStore(path) as store:
        columns, rows = store.rows()
    index = {c: i for i, c in enumerate(columns)}
    for role, name in (("--x", x), ("--y", y), ("--hue", hue), ("--facet", facet)):
        if name is not None and name not in index:
            raise FastLoRAError(f"{role} {name!r} is not a column of {path}; columns: {', '.join(key_columns(columns) + list(METRICS))}")
    if y not in METRICS:
        raise FastLoRAError(f"--y {y!r} must be a metric: {', '.join(METRICS)}")
    filters = _parse_where(where)
    for key in filters:
        if key not in index:
            raise FastLoRAError(f"--where key {key!r} is not a column of {path}")
    rows = [r for r in rows if r[index["status"]] == "ok" and all(_matches(r[index[k]], v) for k, v in filters.items())]
    if not rows:
        raise FastLoRAError(f"no finished rows in {path} match the selection")
    used = {x, hue, facet, *filters}
    for key in key_columns(columns):
        if key in used:
            continue
        values = {r[index[key]] for r in rows}
        if len(values) > 1:
            shown = ", ".join(sorted(map(str, values)))
            raise FastLoRAError(f"key {key!r} varies in the selected rows ({shown}); fix it with --where {key}=VALUE "
                                f"or show it with --hue/--facet")
    groups = defaultdict(lambda: defaultdict(list))
    for r in rows:
        value = r[index[y]]
        if value is None:
            continue
        panel = r[index[facet]] if facet else None
        line = r[index[hue]] if hue else y
        groups[(panel, line)][r[index[x]]].append(float(value))
    panels = sorted({p for p, _ in groups}, key=_order)
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.0), squeeze=False, sharey=True)
    styles = [("o", "-"), ("s", "--"), ("^", ":"), ("D", "-."), ("v", "-"), ("P", "--")]
    lines = sorted({line for _, line in groups}, key=_order)
    for ax, panel in zip(axes[0], panels):
        for (p, line), series in sorted(groups.items(), key=lambda kv: _order(kv[0][1])):
            if p != panel:
                continue
            marker, linestyle = styles[lines.index(line) % len(styles)]
            xs = sorted(series, key=_order)
            positions = [_position(v, xs) for v in xs]
            mean = np.array([np.mean(series[v]) for v in xs])
            lo = np.array([np.min(series[v]) for v in xs])
            hi = np.array([np.max(series[v]) for v in xs])
            ax.plot(positions, mean, marker=marker, linestyle=linestyle, label=str(line), alpha=0.9)
            ax.fill_between(positions, lo, hi, alpha=0.2)
            if not all(isinstance(v, (int, float)) for v in xs):
                ax.set_xticks(positions, [str(v) for v in xs])
        ax.set_xlabel(label(x))
        if facet:
            ax.set_title(f"{facet} = {panel}")
        if logy:
            ax.set_yscale("log")
        if logx:
            from matplotlib.ticker import NullFormatter
            ax.set_xscale("log")
            ticks = sorted({v for (p, _), series in groups.items() if p == panel for v in series
                            if isinstance(v, (int, float)) and v > 0})
            ax.set_xticks(ticks, [f"{v:g}" for v in ticks])
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel(label(y))
    if hue:
        axes[0][-1].legend(title=label(hue))
    fig.suptitle("mean over seeds; band: min–max", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return str(out)


def _order(value):
    if isinstance(value, (int, float)):
        return (0, float(value), "")
    return (1, math.inf, str(value))


def _position(value, xs):
    return float(value) if all(isinstance(v, (int, float)) for v in xs) else xs.index(value)
