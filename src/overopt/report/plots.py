"""Matplotlib figures for a run output directory.

Figures are drawn on explicit ``Figure`` objects with the Agg canvas, so this
module never touches pyplot's global state or the user's backend choice.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from overopt.laws import Fit
from overopt.stats import finite_float as _num

from .common import is_best_of_n, load_config, order_methods

__all__ = ["aggregate", "grid_keys", "method_colors", "plot_all"]

DPI = 120
# Keys plotted in rewards_vs_step / gold_vs_kl, or the x axis: not repeated in the grid.
_GRID_EXCLUDE = {"step", "gold_reward", "proxy_reward"}
_GRID_FIRST = ("kl_sft", "entropy", "mean_length")
_GRID_LAST = ("wall_s",)
_GRID_MAX = 9


def method_colors(methods: list[str]) -> dict[str, Any]:
    """One tab10 colour per method, in the given order, leaving out tab10's grey (the reference curves and
    points are grey); cycles after 9."""
    cmap = colormaps["tab10"]
    palette = [cmap(i) for i in range(10) if i != 7]
    return {m: palette[i % len(palette)] for i, m in enumerate(methods)}


def aggregate(seeds: dict[int, list[dict]], key: str) -> dict[str, np.ndarray]:
    """Mean and sample std (ddof=1) of ``key`` over seeds at each eval step.

    Seeds are aligned by their ``step`` value (so runs with different lengths
    still combine).  Returns arrays ``step``, ``mean``, ``std`` (0 where only
    one seed has a value) and ``n``; steps where no seed has a finite value are
    dropped.
    """
    by_step: dict[float, list[float]] = {}
    for rows in seeds.values():
        for r in rows:
            step, v = _num(r.get("step")), _num(r.get(key))
            if step is None or v is None:
                continue
            by_step.setdefault(step, []).append(v)
    steps = sorted(by_step)
    mean = np.array([np.mean(by_step[s]) for s in steps], dtype=float)
    std = np.array([np.std(by_step[s], ddof=1) if len(by_step[s]) > 1 else 0.0 for s in steps], dtype=float)
    n = np.array([len(by_step[s]) for s in steps], dtype=int)
    return {"step": np.array(steps, dtype=float), "mean": mean, "std": std, "n": n}


def _sft_level(runs: dict[str, dict[int, list[dict]]], key: str) -> float | None:
    vals = [_num(rows[0].get(key)) for seeds in runs.values() for rows in seeds.values() if rows]
    vals = [v for v in vals if v is not None]
    return float(np.mean(vals)) if vals else None


def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI, format="png", facecolor="white")
    return path


def style_axes(ax, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title, fontsize=11)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3, linewidth=0.6)


def _plot_mean_band(ax, agg: dict[str, np.ndarray], color, label: str) -> None:
    if len(agg["step"]) == 0:
        return
    x, m, s = agg["step"], agg["mean"], agg["std"]
    single = len(x) == 1
    ax.plot(x, m, color=color, label=label, linewidth=1.8, marker="o" if single else None, markersize=4)
    if np.any(agg["n"] > 1):
        band = np.where(agg["n"] > 1, s, np.nan)
        ax.fill_between(x, m - band, m + band, color=color, alpha=0.18, linewidth=0)


def _rewards_vs_step(runs, methods, colors, path: Path) -> Path:
    fig = new_figure(12, 4.6)
    axes = fig.subplots(1, 2)
    for ax, key, title in (
        (axes[0], "gold_reward", "Gold reward (true objective)"),
        (axes[1], "proxy_reward", "Proxy reward (what is optimised)"),
    ):
        for m in methods:
            agg = aggregate(runs[m], key)
            n_seeds = len(runs[m])
            _plot_mean_band(ax, agg, colors[m], f"{m} (n={n_seeds})")
        level = _sft_level(runs, key)
        if level is not None:
            ax.axhline(level, color="0.35", linestyle="--", linewidth=1.1, label="SFT policy")
        style_axes(ax, title, "optimisation step", key.replace("_", " "))
        ax.legend(fontsize=8, frameon=False)
    fig.suptitle("Rewards during optimisation (mean ± std over seeds)", fontsize=12)
    return save_figure(fig, path)


def _fitted_curve(ax, fit: dict | None, d_max: float, color) -> None:
    """The method's fitted functional form (summary `fit`), dashed, from d = 0 to the last evaluation's d."""
    if not fit or fit.get("error") or fit.get("gold_sft") is None or d_max <= 0:
        return
    d = np.linspace(0.0, d_max, 100)
    ax.plot(d, fit["gold_sft"] + Fit.from_dict(fit).predict(d), color=color, linestyle="--", linewidth=1.1)


def _gold_vs_kl(runs, methods, colors, path: Path, fits: dict | None = None) -> Path:
    fig = new_figure(12, 4.6)
    axes = fig.subplots(1, 2)
    for ax, key, title in (
        (axes[0], "gold_reward", "Gold reward vs distance from SFT"),
        (axes[1], "proxy_reward", "Proxy reward vs distance from SFT"),
    ):
        for m in methods:
            kl = aggregate(runs[m], "kl_sft")
            y = aggregate(runs[m], key)
            common, ik, iy = np.intersect1d(kl["step"], y["step"], return_indices=True)
            if len(common) == 0:
                continue
            x = np.sqrt(np.clip(kl["mean"][ik], 0.0, None))
            ym, ys, yn = y["mean"][iy], y["std"][iy], y["n"][iy]
            ax.plot(x, ym, color=colors[m], marker="o", markersize=3.5, linewidth=1.6, label=m)
            if key == "gold_reward":
                _fitted_curve(ax, (fits or {}).get(m), float(x.max()), colors[m])
            if np.any(yn > 1):
                ax.errorbar(
                    x, ym, yerr=np.where(yn > 1, ys, 0.0), fmt="none", ecolor=colors[m], alpha=0.35, linewidth=1
                )
        level = _sft_level(runs, key)
        if level is not None:
            ax.axhline(level, color="0.35", linestyle="--", linewidth=1.1, label="SFT policy")
        ax.set_xlim(left=0)
        style_axes(
            ax, title, r"$\sqrt{\mathrm{KL}(\pi \,\|\, \pi_{\mathrm{SFT}})}$  (nats$^{1/2}$)", key.replace("_", " ")
        )
        ax.legend(fontsize=8, frameon=False)
    fig.suptitle("Overoptimization: reward vs √KL to the SFT policy (cf. Gao et al. 2022); dashed: fitted "
                 "d(α − β log d) for RL, d(α − β d) for best-of-n", fontsize=11)  # fmt: skip
    return save_figure(fig, path)


def _method_numeric_keys(seeds: dict[int, list[dict]]) -> set[str]:
    keys: set[str] = set()
    for rows in seeds.values():
        for r in rows:
            keys.update(k for k, v in r.items() if _num(v) is not None)
    return keys


def grid_keys(runs: dict[str, dict[int, list[dict]]]) -> list[str]:
    """Metric keys for metrics_grid.png: numeric keys present in every method
    (minus step/gold/proxy), kl_sft/entropy/mean_length first, wall_s last, at
    most 9."""
    key_sets = [_method_numeric_keys(seeds) for seeds in runs.values()]
    common = set.intersection(*key_sets) - _GRID_EXCLUDE if key_sets else set()
    first = [k for k in _GRID_FIRST if k in common]
    last = [k for k in _GRID_LAST if k in common and k not in first]
    rest = sorted(common - set(first) - set(last))
    return (first + rest + last)[:_GRID_MAX]


def _metrics_grid(runs, methods, colors, path: Path) -> Path | None:
    keys = grid_keys(runs)
    if not keys:
        return None
    ncols = min(3, len(keys))
    nrows = math.ceil(len(keys) / ncols)
    fig = new_figure(4.2 * ncols, 3.1 * nrows + 0.6)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for i, key in enumerate(keys):
        ax = axes[i]
        for m in methods:
            agg = aggregate(runs[m], key)
            if len(agg["step"]):
                ax.plot(
                    agg["step"],
                    agg["mean"],
                    color=colors[m],
                    linewidth=1.6,
                    label=m,
                    marker="o" if len(agg["step"]) == 1 else None,
                    markersize=4,
                )
        style_axes(ax, key, "step" if i >= len(keys) - ncols else "", "")
        ax.tick_params(labelsize=8)
    for ax in axes[len(keys) :]:
        ax.set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.suptitle("Policy metrics vs step (mean over seeds)", fontsize=12)
    fig.tight_layout(rect=(0, 0.07 if nrows == 1 else 0.04, 1, 1))
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), fontsize=9, frameon=False)
    fig.savefig(path, dpi=DPI, format="png", facecolor="white")
    return path


def _final(seeds: dict[int, list[dict]], key: str) -> tuple[float, float]:
    values = [rows[-1][key] for rows in seeds.values() if rows and key in rows[-1]]
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def _frontier(runs, methods, path: Path) -> Path | None:
    """Final gold reward vs final KL to SFT, one point per method; a sweep's variants
    (`method@field=value`) are joined into that method's frontier and labelled with their value."""
    if len(methods) < 2:
        return None
    families: dict[str, list[tuple[str, str]]] = {}
    for m in methods:
        base, _, value = m.partition("@")
        families.setdefault(base, []).append((m, value.partition("=")[2]))
    colors = method_colors(list(families))
    fig = new_figure(7.5, 5.0)
    ax = fig.add_subplot(1, 1, 1)
    for base, members in families.items():
        points = sorted((_final(runs[m], "kl_sft") + _final(runs[m], "gold_reward") + (label,))
                        for m, label in members)  # fmt: skip
        kl, kl_sd, gold, gold_sd, labels = (list(col) for col in zip(*points, strict=True))
        ax.errorbar(kl, gold, xerr=kl_sd, yerr=gold_sd, color=colors[base], marker="o", capsize=2,
                    linestyle="-" if len(points) > 1 else "none", label=base)  # fmt: skip
        for x, y, label in zip(kl, gold, labels, strict=True):
            if label:
                ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7, color=colors[base])
    sft = _sft_level(runs, "gold_reward")
    if sft is not None:
        ax.axhline(sft, color="0.3", linestyle="--", linewidth=1, label="SFT policy")
    style_axes(ax, "Final gold reward vs final KL (mean ± std over seeds)", "KL(π ‖ π_SFT) at the end (nats)",
           "gold reward at the end")  # fmt: skip
    ax.legend(fontsize=8, frameon=False, loc="best")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_all(out_dir: str | Path, runs: dict[str, dict[int, list[dict]]], fits: dict | None = None) -> list[Path]:
    """Write ``OUT/plots/{rewards_vs_step,gold_vs_kl,metrics_grid,frontier}.png``.

    ``fits`` ({method: summary "fit"}) adds each method's fitted curve to gold_vs_kl. Best-of-n runs,
    indexed by n rather than by an optimisation step, appear in gold_vs_kl and frontier only.

    ``runs`` is the output of :func:`overopt.report.summary.load_runs`.  Methods
    get a fixed tab10 colour in config order (then alphabetical).  Returns the
    paths written (metrics_grid is skipped when no metric is shared by all
    methods); returns [] when ``runs`` is empty.
    """
    out_dir = Path(out_dir)
    runs = {m: s for m, s in runs.items() if s}
    if not runs:
        return []
    methods = order_methods(runs, load_config(out_dir))
    colors = method_colors(methods)
    plot_dir = out_dir / "plots"
    plot_dir.mkdir(parents=True, exist_ok=True)
    stepped = [m for m in methods if not is_best_of_n(runs[m])]
    paths = [
        _rewards_vs_step(runs, stepped, colors, plot_dir / "rewards_vs_step.png") if stepped else None,
        _gold_vs_kl(runs, methods, colors, plot_dir / "gold_vs_kl.png", fits),
        _metrics_grid({m: runs[m] for m in stepped}, stepped, colors, plot_dir / "metrics_grid.png")
        if stepped
        else None,
        _frontier(runs, methods, plot_dir / "frontier.png"),
    ]
    return [p for p in paths if p is not None]
