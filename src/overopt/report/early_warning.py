"""The report's "Early warning" section: each detector's firing-rule statistic over training under the gold
curve, and the detectors scored against gold on this output directory's own runs (overopt.detectors).
Numpy, matplotlib and the standard library; never torch."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from overopt.detectors import SIGNALS, DetectorScore, Rule, hacking_onset, score_detector, statistic

from .common import is_best_of_n
from .table import format_value

SCORE_HEADER = ["detected", "early", "lead (evals)", "false alarms", "AUROC", "gold regret (run to end)"]


def score_cells(score: DetectorScore) -> list[str]:
    """A detector's scores as the cells under SCORE_HEADER ("–" where undefined)."""

    def pct(x: float) -> str:
        return "–" if x != x else f"{100 * x:.0f} %"

    regret = f"{format_value(score.regret)} (end: {format_value(score.regret_none)})"
    return [pct(score.detected), pct(score.early), format_value(score.lead, 1), pct(score.false_alarm),
            format_value(score.auroc, 2), regret]  # fmt: skip


def configured_rule(config: Mapping) -> Rule:
    """The firing rule of the run's resolved config (`alarm` section; the defaults where it has none)."""
    alarm = dict(config.get("alarm") or {})
    return Rule(**{k: alarm[k] for k in ("rule", "warmup", "threshold", "drift", "min_std") if k in alarm})


def _stepped(runs: Mapping[str, Mapping[int, list[dict]]]) -> dict[str, Mapping[int, list[dict]]]:
    return {m: seeds for m, seeds in runs.items() if seeds and not is_best_of_n(seeds)}


def present_detectors(runs: Sequence[Sequence[Mapping]]) -> list[str]:
    """Detectors with a value in at least one of `runs` (each a list of metrics rows)."""
    return [n for n, s in SIGNALS.items() if any(np.isfinite(s.series(rows)).any() for rows in runs)]


def detector_scores(runs: Mapping[str, Mapping[int, list[dict]]], rule: Rule) -> list[tuple[str, DetectorScore]]:
    """Every present detector scored over all of OUT's optimisation runs (best-of-n has no trajectory)."""
    stepped = _stepped(runs)
    all_runs = [rows for seeds in stepped.values() for rows in seeds.values()]
    return [(name, score_detector(all_runs, name, rule)) for name in present_detectors(all_runs)]


def plot_early_warning(
    out_dir: str | Path, runs: Mapping[str, Mapping[int, list[dict]]], rule: Rule, summary: Mapping
) -> Path | None:
    """``OUT/plots/early_warning.png``: gold against step per method (× at each seed's onset of hacking, ▼ where
    an alarm stopped a run: summary.json's `alarm_stop`), then one panel per detector with its rule's statistic
    (mean over seeds) and the threshold. None when no optimisation run exists."""
    from .plots import _plot_mean_band, aggregate, method_colors, new_figure, save_figure, style_axes

    stepped = _stepped(runs)
    names = present_detectors([rows for seeds in stepped.values() for rows in seeds.values()])
    if not stepped:
        return None
    colors = method_colors(list(stepped))
    stopped = {(m, s["seed"]) for m, entry in summary["methods"].items() for s in entry["seeds"] if "alarm_stop" in s}
    cols = 2
    panels = 1 + math.ceil(len(names) / cols)
    fig = new_figure(12, 2.7 * panels)
    grid = fig.add_gridspec(panels, cols)
    top = fig.add_subplot(grid[0, :])
    for m, seeds in stepped.items():
        _plot_mean_band(top, aggregate(seeds, "gold_reward"), colors[m], f"{m} (n={len(seeds)})")
        for seed, rows in seeds.items():
            gold = [r.get("gold_reward") for r in rows]
            onset = hacking_onset(gold)
            if onset is not None:
                top.plot(rows[onset]["step"], gold[onset], "x", color=colors[m], markersize=7)
            if (m, seed) in stopped:
                top.plot(rows[-1]["step"], gold[-1], "v", color=colors[m], markersize=8)
    style_axes(top, "Gold reward (× onset of hacking per seed, ▼ stopped by an alarm)", "step", "gold reward")
    top.legend(fontsize=8, frameon=False, ncol=3)
    label = "CUSUM S" if rule.rule == "cusum" else "z"
    for i, name in enumerate(names):
        ax = fig.add_subplot(grid[1 + i // cols, i % cols])
        signal = SIGNALS[name]
        for m, seeds in stepped.items():
            series = {}  # the statistic as rows, so that aggregate() aligns the seeds by step
            for seed, rows in seeds.items():
                stat = statistic(signal.series(rows), signal.direction, rule)
                series[seed] = [{"step": r["step"], "stat": v} for r, v in zip(rows, stat)]
            _plot_mean_band(ax, aggregate(series, "stat"), colors[m], m)
        ax.axhline(rule.threshold, color="0.3", linestyle=":", linewidth=1.1)
        ax.set_yscale("symlog", linthresh=rule.threshold)  # a statistic runs from 0 to hundreds
        style_axes(ax, f"{name}: {label} (threshold dotted)", "step", label)
    fig.suptitle(f"Early warning ({rule.rule}, h = {rule.threshold:g}, warm-up {rule.warmup})", fontsize=12)
    plot_dir = Path(out_dir) / "plots"
    plot_dir.mkdir(parents=True, exist_ok=True)
    return save_figure(fig, plot_dir / "early_warning.png")
