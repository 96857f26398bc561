"""The analysis of `overopt scaling` (overopt.scaling): OUT/scaling.json, its plots and OUT/scaling.html.

Reads OUT/scaling_plan.json and each cell's summary.json (overopt.report.summary, with each method's fit of
Gao et al.'s functional form) and stage artifacts. Per cell: the axis and its value, the parameters of the
proxy RM and of the policy (every tensor in their safetensors files, embeddings and head included), the RM's
held-out pair accuracy, and per method the fit (α, β with jackknife t intervals over seeds, R², predicted peak) and
the mean curve (d, gold gain) it was fitted to. Per axis, method and coefficient: the log-linear trend
coef ≈ a + b·log10(x) by least squares over the axis's cells (Gao et al. find α and β of both forms move
smoothly, roughly log-linearly, with RM size). Never imports torch.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open

from overopt.laws import Fit

from .summary import _json_safe, _num, gain_curve, load_runs

PLAN_FILE = "scaling_plan.json"
RESULT_FILE = "scaling.json"
AXIS_X = {"rm_size": "rm_params", "pairs": "pairs", "policy_size": "policy_params"}
AXIS_LABEL = {"rm_size": "proxy RM parameters", "pairs": "gold-labelled pairs", "policy_size": "policy parameters"}
COEFFICIENTS = ("alpha", "beta")


def parameter_count(model_dir: Path) -> int | None:
    """Parameters stored in a model directory's model.safetensors (None when it has none)."""
    path = Path(model_dir) / "model.safetensors"
    if not path.is_file():
        return None
    with safe_open(str(path), framework="numpy") as f:
        return int(sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys()))


def mean_curve(seeds: dict[int, list[dict]]) -> dict[str, list[float]]:
    """Mean over seeds, per evaluation index, of the runs' gain curves (summary.gain_curve); a seed with an
    evaluation missing its KL or gold is left out, so that the indices of the others line up."""
    curves = [curve for rows in seeds.values() if len((curve := gain_curve(rows))[0]) == len(rows)]
    if not curves:
        return {"d": [], "gain": []}
    length = min(len(d) for d, _ in curves)
    points = np.array([[d[:length], gain[:length]] for d, gain in curves], dtype=float)  # (seeds, 2, evals)
    return {"d": points[:, 0].mean(0).tolist(), "gain": points[:, 1].mean(0).tolist()}


def _cell(out: Path, name: str, entry: dict) -> dict:
    cell_out = out / entry["out"]
    summary_path = cell_out / "summary.json"
    record: dict[str, Any] = {"cell": name, "axis": entry["axis"], "value": entry["value"], "out": entry["out"]}
    if not summary_path.is_file():
        return {**record, "error": "not finished"}
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    config = summary.get("config") or {}
    rm_metrics = ((summary.get("stages") or {}).get("rm") or {}).get("metrics") or {}
    runs = load_runs(cell_out)
    record.update(
        rm_params=parameter_count(cell_out / "artifacts" / "rm"),
        policy_params=parameter_count(cell_out / "artifacts" / "sft"),
        pairs=(config.get("pairs") or {}).get("n_prompts"),
        rm_accuracy=_num(rm_metrics.get("heldout_accuracy")),
        gold_sft=(summary.get("sft") or {}).get("gold_reward"),
        methods={
            m: {"fit": e.get("fit"), "curve": mean_curve(runs.get(m, {}))}
            for m, e in (summary.get("methods") or {}).items()
        },  # fmt: skip
    )
    return record


def log_linear_trend(xs: list[float], ys: list[float]) -> dict[str, Any] | None:
    """y ≈ a + b·log10(x) by least squares: {"slope": b, "intercept": a, "r2", "n"}; None with < 2 usable points
    or a single x. R² is None with 2 points (a line through two points fits them exactly: it says nothing)."""
    pts = [(math.log10(x), y) for x, y in zip(xs, ys) if _num(x) is not None and x > 0 and _num(y) is not None]
    if len(pts) < 2 or len({p[0] for p in pts}) < 2:
        return None
    lx, y = np.array(pts).T
    slope, intercept = np.polyfit(lx, y, 1)
    resid = y - (intercept + slope * lx)
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1 - float((resid**2).sum()) / ss_tot if len(pts) > 2 and ss_tot > 0 else None
    return {"slope": float(slope), "intercept": float(intercept), "r2": r2, "n": len(pts)}


def trends(cells: list[dict], methods: list[str], keys: tuple[str, ...] = COEFFICIENTS) -> dict:
    """{axis: {method: {key: log_linear_trend}}} over the cells of each axis (the shared "base" cell included);
    `keys` are the fit's entries to follow (α and β; the labs report adds the predicted peak)."""
    out: dict[str, Any] = {}
    for axis, x_key in AXIS_X.items():
        members = [c for c in cells if c["axis"] in (axis, "base") and "error" not in c]
        out[axis] = {}
        for m in methods:
            fits = [(c.get(x_key), (c["methods"].get(m) or {}).get("fit") or {}) for c in members]
            fits = [(x, f) for x, f in fits if not f.get("error")]
            out[axis][m] = {k: log_linear_trend([x for x, _ in fits], [f.get(k) for _, f in fits]) for k in keys}
    return out


def build_scaling(out_dir: str | Path, console=None) -> dict:
    """Write OUT/scaling.json, OUT/plots/scaling_*.png and OUT/scaling.html from the finished cells; print the table."""
    from rich.console import Console

    out = Path(out_dir)
    plan_path = out / PLAN_FILE
    if not plan_path.is_file():
        raise FileNotFoundError(f"{out}: no {PLAN_FILE} (is it the output of `overopt scaling`?)")
    plan = json.loads(plan_path.read_text(encoding="utf-8"))
    cells = [_cell(out, name, entry) for name, entry in plan["cells"].items()]
    methods = list(plan.get("methods") or [])
    result = {
        "preset": plan.get("preset"), "testbed": plan.get("testbed"), "seeds": plan.get("seeds"),
        "quick": plan.get("quick"), "methods": methods, "cells": cells, "trends": trends(cells, methods),
    }  # fmt: skip
    (out / RESULT_FILE).write_text(json.dumps(_json_safe(result), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    plots = plot_scaling(out, result)
    write_scaling_page(out, result, plots)
    print_scaling_table(result, console or Console())
    return result


def _ci(fit: dict, key: str) -> tuple[float, float] | None:
    ci = (fit.get("ci") or {}).get(key)
    return tuple(ci) if isinstance(ci, list) and len(ci) == 2 and None not in ci else None


def plot_scaling(out: Path, result: dict) -> list[Path]:
    """scaling_coefficients.png (α, β and RM accuracy per axis, CIs and trend lines) and scaling_curves.png
    (gold gain vs d per cell of each axis, with the fitted forms dashed)."""
    from .plots import method_colors, new_figure, save_figure, style_axes

    plot_dir = out / "plots"
    plot_dir.mkdir(parents=True, exist_ok=True)
    cells = [c for c in result["cells"] if "error" not in c]
    methods, colors = result["methods"], method_colors(result["methods"])
    panels = [(m, coef) for m in methods for coef in COEFFICIENTS]  # one row each: the forms' scales differ
    fig = new_figure(5.0 * len(AXIS_X), 2.9 * (len(panels) + 1))
    axes = fig.subplots(len(panels) + 1, len(AXIS_X), squeeze=False)
    for col, (axis, x_key) in enumerate(AXIS_X.items()):
        members = sorted((c for c in cells if c["axis"] in (axis, "base") and c.get(x_key)), key=lambda c: c[x_key])
        for row, (m, coef) in enumerate(panels):
            ax = axes[row, col]
            pts = [(c[x_key], (c["methods"].get(m) or {}).get("fit") or {}) for c in members]
            pts = [(x, f) for x, f in pts if not f.get("error") and f.get(coef) is not None]
            if pts:
                xs, ys = [x for x, _ in pts], [f[coef] for _, f in pts]
                lo = [f[coef] - (_ci(f, coef) or (f[coef], f[coef]))[0] for _, f in pts]
                hi = [(_ci(f, coef) or (f[coef], f[coef]))[1] - f[coef] for _, f in pts]
                ax.errorbar(xs, ys, yerr=[lo, hi], color=colors[m], marker="o", capsize=2, linestyle="none")
                trend = result["trends"][axis][m][coef]
                if trend is not None:
                    grid = np.logspace(np.log10(min(xs)), np.log10(max(xs)), 50)
                    ax.plot(grid, trend["intercept"] + trend["slope"] * np.log10(grid), color=colors[m],
                            linestyle="--", linewidth=1)  # fmt: skip
            ax.set_xscale("log")
            style_axes(ax, f"{m}: {'α' if coef == 'alpha' else 'β'} vs {AXIS_LABEL[axis]}", "", coef)
        ax = axes[len(panels), col]
        acc = [(c[x_key], c.get("rm_accuracy")) for c in members if c.get("rm_accuracy") is not None]
        if acc:
            ax.plot(*zip(*acc), color="0.2", marker="o")
        ax.set_xscale("log")
        style_axes(ax, f"RM held-out accuracy vs {AXIS_LABEL[axis]}", AXIS_LABEL[axis], "pair accuracy")
    fig.suptitle(
        "Overoptimization coefficients (95 % jackknife t intervals over seeds; dashed: log-linear trend)", fontsize=12
    )
    fig.tight_layout()
    paths = [save_figure(fig, plot_dir / "scaling_coefficients.png")]

    fig = new_figure(5.0 * len(methods), 3.6 * len(AXIS_X))
    axes = fig.subplots(len(AXIS_X), len(methods), squeeze=False)
    for row, (axis, x_key) in enumerate(AXIS_X.items()):
        members = sorted((c for c in cells if c["axis"] in (axis, "base") and c.get(x_key)), key=lambda c: c[x_key])
        shades = method_colors([c["cell"] for c in members])
        for col, m in enumerate(methods):
            ax = axes[row, col]
            for c in members:
                entry = c["methods"].get(m) or {}
                curve, fit = entry.get("curve") or {}, entry.get("fit") or {}
                if not curve.get("d"):
                    continue
                label = f"{c[x_key]:,} {'pairs' if axis == 'pairs' else 'params'}"
                ax.plot(curve["d"], curve["gain"], color=shades[c["cell"]], marker="o", markersize=3, label=label)
                if not fit.get("error") and fit.get("alpha") is not None:
                    d = np.linspace(0, max(curve["d"]), 100)
                    ax.plot(d, Fit.from_dict(fit).predict(d), color=shades[c["cell"]], linestyle="--", linewidth=1)
            ax.axhline(0, color="0.5", linewidth=0.8)
            style_axes(ax, f"{m}: gold gain vs d, by {AXIS_LABEL[axis]}", "d = √KL to SFT", "gold − gold(SFT)")
            ax.legend(fontsize=7, frameon=False)
    fig.suptitle("Gold gain against d per cell (points: mean over seeds; dashed: fitted form)", fontsize=12)
    fig.tight_layout()
    paths.append(save_figure(fig, plot_dir / "scaling_curves.png"))
    return paths


def _fit_cells(fit: dict | None) -> list[str]:
    from .table import format_value, format_with_ci

    if not fit or fit.get("error"):
        return ["–", "–", "–"]
    ci = fit.get("ci") or {}
    peak = "no peak" if fit.get("d_peak") is None else format_value(fit["d_peak"], 2)
    return [format_with_ci(fit["alpha"], ci.get("alpha")), format_with_ci(fit["beta"], ci.get("beta")), peak]


def scaling_rows(result: dict) -> tuple[list[str], list[list[str]]]:
    """The cells table (header, rows): axis value, parameters, RM accuracy and each method's α, β, d*."""
    from .table import format_value

    header = ["cell", "axis", "RM params", "pairs", "policy params", "RM accuracy"]
    for m in result["methods"]:
        header += [f"{m} α", f"{m} β", f"{m} d*"]
    rows = []
    for c in result["cells"]:
        if "error" in c:
            rows.append([c["cell"], c["axis"], c["error"], *[""] * (len(header) - 3)])
            continue
        rm, policy = c.get("rm_params"), c.get("policy_params")
        row = [c["cell"], c["axis"], f"{rm:,}" if rm else "–", str(c.get("pairs")), f"{policy:,}" if policy else "–",
               format_value(c.get("rm_accuracy"))]  # fmt: skip
        for m in result["methods"]:
            row += _fit_cells((c["methods"].get(m) or {}).get("fit"))
        rows.append(row)
    return header, rows


def trend_rows(result: dict) -> tuple[list[str], list[list[str]]]:
    from .table import format_value

    header = ["axis", "method", "coefficient", "slope per decade", "intercept", "R²", "cells"]
    rows = []
    for axis, per_method in result["trends"].items():
        for m, per_coef in per_method.items():
            for coef, t in per_coef.items():
                if t is not None:
                    rows.append([AXIS_LABEL[axis], m, coef, format_value(t["slope"], 4), format_value(t["intercept"]),
                                 format_value(t["r2"]), str(t["n"])])  # fmt: skip
    return header, rows


def write_scaling_page(out: Path, result: dict, plots: list[Path]) -> Path:
    from .html import figures, page, table

    header, rows = scaling_rows(result)
    t_header, t_rows = trend_rows(result)
    body = (
        f"<h1>Overoptimization scaling: {result.get('testbed')} · {result.get('preset')}</h1>"
        "<p class='lead'>Gao et al.'s functional forms fitted per cell (best-of-n: d(α − β d); RL: d(α − β log d); "
        "d = √KL to the SFT policy, R = gold gain over SFT), one axis varied at a time around the preset's cell "
        f"(<em>base</em>), {result.get('seeds')} seeds per method. Brackets: 95 % jackknife t intervals over seeds.</p>"
        "<h2>Cells</h2>" + table(header, rows)
        + "<h2>Log-linear trends</h2><p class='sub'>coefficient ≈ intercept + slope · log10(x) over the cells of "
        "each axis.</p>" + table(t_header, t_rows) + "<h2>Plots</h2>" + "".join(figures(plots))
    )  # fmt: skip
    path = out / "scaling.html"
    path.write_text(page(f"overopt scaling · {result.get('testbed')}", body), encoding="utf-8")
    return path


def print_scaling_table(result: dict, console) -> None:
    from rich.table import Table

    header, rows = scaling_rows(result)
    tab = Table(title=f"overopt scaling · {result.get('testbed')} · {result.get('preset')}", title_style="bold")
    for head in header:
        tab.add_column(head, justify="left" if head in ("cell", "axis") else "right")
    for row in rows:
        tab.add_row(*row)
    console.print(tab)
