"""Rich console table of a summary (see :mod:`overopt.report.summary`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

__all__ = [
    "FIT_HEADER", "fit_row", "format_mean_std", "format_value", "format_with_ci", "print_summary_table",
    "rm_heldout_accuracy",
]  # fmt: skip


def format_value(x: Any, digits: int = 3) -> str:
    """A number with ``digits`` decimals, "–" for None/non-numeric."""
    if isinstance(x, bool) or not isinstance(x, (int, float)) or x != x:
        return "–"
    return f"{x:.{digits}f}"


def format_mean_std(d: dict | None, digits: int = 3) -> str:
    """``"mean ± std"`` for a ``{"mean", "std", "n"}`` dict.

    A single seed (``n == 1``) is shown as the mean alone, since its std of 0.0
    says nothing about spread; a missing value (None dict or ``mean``) is "–".
    """
    if not d or d.get("mean") is None:
        return "–"
    mean = format_value(d["mean"], digits)
    if d.get("n", 0) <= 1 or d.get("std") is None:
        return mean
    return f"{mean} ± {format_value(d['std'], digits)}"


def format_with_ci(value: Any, ci: Any, digits: int = 3) -> str:
    """``"v [lo, hi]"``, or the value alone without an interval."""
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(format_value(c) != "–" for c in ci):
        return f"{format_value(value, digits)} [{format_value(ci[0], digits)}, {format_value(ci[1], digits)}]"
    return format_value(value, digits)


FIT_HEADER = ["method", "form", "α", "β", "R²", "d* (gold gain)", "forecast d* error (gold)"]


def fit_row(name: str, fit: dict | None) -> list[str]:
    """One method's fitted functional form (summary "fit") as the cells of FIT_HEADER."""
    if not fit:
        return [name, "–", "–", "–", "–", "–", "–"]
    if fit.get("error"):
        return [name, str(fit.get("form", "–")), f"no fit: {fit['error']}", "", "", "", ""]
    ci = fit.get("ci") or {}
    d_peak, d_max = fit.get("d_peak"), fit.get("d_max")
    if d_peak is None:
        peak = "no peak (β ≤ 0)"
    elif isinstance(d_max, (int, float)) and d_peak > 2 * d_max:  # an extrapolation, not a prediction
        peak = f"beyond the data (d* {d_peak:.3g} > 2 × d_max {d_max:.2f})"
    else:
        peak = f"{format_with_ci(d_peak, ci.get('d_peak'), 2)} ({format_value(fit.get('gold_peak'))})"
    fc = fit.get("forecast") or {}
    if fc.get("error"):
        forecast = f"– ({fc['error']})"
    elif isinstance(d_max, (int, float)) and (fc.get("d_peak") or 0) > 2 * d_max:
        forecast = f"beyond the data (d* {fc['d_peak']:.3g})"
    else:
        forecast = f"{format_value(fc.get('d_peak_error'), 2)} ({format_value(fc.get('gold_peak_error'))})"
    return [name, "d(α − β log d)" if fit["form"] == "rl" else "d(α − β d)",
            format_with_ci(fit.get("alpha"), ci.get("alpha")), format_with_ci(fit.get("beta"), ci.get("beta")),
            format_value(fit.get("r2")), peak, forecast]  # fmt: skip


def rm_heldout_accuracy(summary: dict) -> float | None:
    """The proxy model's held-out accuracy from ``stages["rm"]`` (pair order, or right/wrong for a judge), if any."""
    metrics = (summary.get("stages") or {}).get("rm", {}).get("metrics") or {}
    acc = metrics.get("heldout_accuracy")
    return acc if isinstance(acc, (int, float)) and not isinstance(acc, bool) else None


def print_summary_table(summary: dict, console: Console | None = None) -> None:
    """Print one row per method (gold final, gold peak @ step, proxy final, KL
    final, wall time, hacked seeds ``k/n``) plus a line with the SFT gold/proxy
    reward and the RM held-out accuracy when known."""
    console = console or Console()
    title = escape(f"overopt · testbed {summary.get('testbed', '?')} · preset {summary.get('preset', '?')}")
    table = Table(title=title, title_style="bold", header_style="bold")
    table.add_column("method", style="cyan", no_wrap=True)
    table.add_column("gold final", justify="right")
    table.add_column("gold peak (step)", justify="right")
    table.add_column("proxy final", justify="right")
    table.add_column("KL final", justify="right")
    table.add_column("wall s", justify="right")
    table.add_column("hacked", justify="right")
    for name, m in (summary.get("methods") or {}).items():
        n = m.get("n_seeds", len(m.get("seeds", [])))
        k = m.get("hacked_seeds", 0)
        hacked = f"{k}/{n}"
        table.add_row(
            escape(name),
            format_mean_std(m.get("gold_final")),
            f"{format_mean_std(m.get('gold_peak'))} (@{format_mean_std(m.get('gold_peak_step'), 0)})",
            format_mean_std(m.get("proxy_final")),
            format_mean_std(m.get("kl_final")),
            format_mean_std(m.get("wall_s"), 1),
            f"[red]{hacked}[/red]" if k else f"[green]{hacked}[/green]",
        )
    console.print(table)
    sft = summary.get("sft") or {}
    line = f"SFT policy: gold {format_value(sft.get('gold_reward'))} · proxy {format_value(sft.get('proxy_reward'))}"
    acc = rm_heldout_accuracy(summary)
    if acc is not None:
        line += f" · RM held-out accuracy {format_value(acc)}"
    console.print(line, highlight=False)
    fits = Table(title="functional forms (Gao et al.): gold gain vs d = √KL", title_style="bold", header_style="bold")
    for i, head in enumerate(FIT_HEADER):
        fits.add_column(head, style="cyan" if i == 0 else None, justify="left" if i < 2 else "right")
    for name, m in (summary.get("methods") or {}).items():
        fits.add_row(*(escape(cell) for cell in fit_row(name, m.get("fit"))))
    console.print(fits)


def format_ci(ci: Mapping[str, Any] | None, digits: int = 3, signed: bool = False) -> str:
    """``"mean [lo, hi]"``; a single value (n == 1) as ``"mean (n=1)"``; "–" when missing."""
    if not ci or ci.get("mean") is None:
        return "–"
    f = f"{{:{'+' if signed else ''}.{digits}f}}".format
    if ci.get("n", 0) <= 1 or ci.get("lo") is None:
        return f"{f(ci['mean'])} (n=1)"
    return f"{f(ci['mean'])} [{f(ci['lo'])}, {f(ci['hi'])}]"
