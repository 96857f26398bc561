"""Overoptimization as a measured law (Gao, Schulman & Hilton, arXiv 2210.10760) in the lab: RESULTS.md sections.

    python experiments/overoptimization_laws.py                 # both parts (about an hour on 2 CPU cores)
    python experiments/overoptimization_laws.py --part fits     # `none` and `bon` on the default preset, 3 seeds
    python experiments/overoptimization_laws.py --part scaling  # `overopt scaling` on the default preset

Both parts run the CLI into runs/ (finished stages, runs and cells are reused when rerun) and read what it
wrote: the fits from OUT/summary.json, the grid from OUT/scaling.json. "KL to reach" compares best-of-n and
RL at equal gold: the d = √KL at which each fitted curve first reaches a share of best-of-n's fitted peak gain.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Literal

import numpy as np
import tyro

from overopt.laws import Fit
from overopt.report.scaling import mean_curve
from overopt.report.summary import load_runs
from overopt.report.table import format_value as _v
from overopt.report.table import format_with_ci as _ci
from overopt.results import section_head, write_section


@dataclasses.dataclass(frozen=True)
class Args:
    part: Literal["all", "fits", "scaling"] = "all"
    seeds: int = 3
    """Seeds per method (fits and every scaling cell)."""
    fits_out: Path = Path("runs/law-default")
    scaling_out: Path = Path("runs/scaling-summarize-default")


def d_to_reach(fit: dict, target: float, d_max: float = 20.0) -> float | None:
    """The smallest d at which the fitted curve reaches gold gain `target` (None if it never does up to d_max)."""
    d = np.linspace(0.0, d_max, 20001)
    hit = np.nonzero(Fit.from_dict(fit).predict(d) >= target)[0]
    return float(d[hit[0]]) if len(hit) else None


def observed_d_to_reach(curve: dict, target: float) -> float | None:
    """The d at which the mean curve (over seeds) first reaches `target`, linearly interpolated between evaluations."""
    d, gain = curve["d"], curve["gain"]
    for i in range(1, len(d)):
        if gain[i] >= target > gain[i - 1]:
            return d[i - 1] + (target - gain[i - 1]) * (d[i] - d[i - 1]) / (gain[i] - gain[i - 1])
    return None


def fits_section(args: Args) -> str:
    cmd = ["overopt", "run", "--preset", "default", "--methods", "none,bon", "--seeds", str(args.seeds),
           "--out", str(args.fits_out)]  # fmt: skip
    subprocess.run([sys.executable, "-m", *cmd], check=True)
    summary = json.loads((args.fits_out / "summary.json").read_text())
    rows = []
    for name, m in summary["methods"].items():
        f, fc = m["fit"], m["fit"]["forecast"]
        ci = f.get("ci") or {}
        rows.append(
            f"| `{name}` | {'d(α − β log d)' if f['form'] == 'rl' else 'd(α − β d)'} "
            f"| {_ci(f['alpha'], ci.get('alpha'))} "
            f"| {_ci(f['beta'], ci.get('beta'))} | {_v(f['r2'])} | {_ci(f['d_peak'], ci.get('d_peak'), 2)} "
            f"| {_ci(f['gold_peak'], ci.get('gold_peak'))} | {_v(fc.get('observed_d_peak'), 2)} "
            f"({_v(fc.get('observed_gold_peak'))}) | "
            + (f"{_v(fc['d_peak'], 2)} ({fc['d_peak_error']:+.2f}, {fc['d_peak_rel_error']:+.0%}) "
               f"from {fc['n_points']} points with d ≤ {_v(fc['d_cut'], 2)}"
               if not fc.get("error") else f"– ({fc['error']})") + " |"
        )  # fmt: skip
    bon, rl = summary["methods"]["bon"]["fit"], summary["methods"]["none"]["fit"]
    runs = load_runs(args.fits_out)
    curves = {m: mean_curve(runs[m]) for m in ("bon", "none")}
    reach = []
    if not bon.get("error") and not rl.get("error") and bon.get("gold_peak"):
        for share in (0.25, 0.5, 0.75, 0.9):
            target = share * bon["gold_peak"]
            reach.append(
                f"| {share:.0%} of best-of-n's fitted peak ({target:.3f}) | {_v(d_to_reach(bon, target), 2)} "
                f"| {_v(observed_d_to_reach(curves['bon'], target), 2)} | {_v(d_to_reach(rl, target), 2)} "
                f"| {_v(observed_d_to_reach(curves['none'], target), 2)} |"
            )
    sft = summary["sft"]["gold_reward"]
    stage = summary["stages"]["rm"]["metrics"]["heldout_accuracy"]
    return "\n".join([
        *section_head("Functional forms of overoptimization: `default` preset, testbed `summarize`",
                      "python experiments/overoptimization_laws.py --part fits", f" (runs `{' '.join(cmd)}`)"),
        f"SFT gold {sft:.3f}; proxy RM held-out accuracy {stage:.3f}; {args.seeds} seeds; best-of-n from N = "
        f"{summary['config']['bon']['n_samples']} samples per held-out prompt, d = √(log n − (n−1)/n) (an upper "
        "bound on its KL). Fits through the origin on (d, gold − gold at the first evaluation) of every seed; "
        "brackets: 95 % jackknife t intervals over seeds (leave one seed out, t on seeds − 1 df). "
        "Forecast: the fit on the evaluations with d ≤ half the observed peak's d, its predicted peak, and its "
        "error against the observed peak of the mean curve (difference, relative).",
        "",
        "| method | form | α | β | R² | d* predicted | gold gain at d* | observed peak d (gain) "
        "| forecast d* (error, relative) |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "d = √KL at which each fitted curve, and each mean curve over seeds (interpolated), first reaches a gold gain "
        "(in Gao et al., RL needs more KL than best-of-n for the same gold; – : never reached):",
        "",
        "| gold gain | best-of-n d, fit | best-of-n d, data | RL (`none`) d, fit | RL (`none`) d, data |",
        "|---|---|---|---|---|",
        *reach,
    ])  # fmt: skip


def scaling_section(args: Args) -> str:
    cmd = ["overopt", "scaling", "--preset", "default", "--seeds", str(args.seeds), "--out", str(args.scaling_out)]
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", *cmd], check=True)
    wall = time.perf_counter() - start
    result = json.loads((args.scaling_out / "scaling.json").read_text())
    rows = []
    for c in result["cells"]:
        if "error" in c:
            rows.append(f"| {c['cell']} | {c['axis']} | {c['error']} |" + " |" * 9)
            continue
        cells = [c["cell"], c["axis"], f"{c['rm_params']:,}", str(c["pairs"]), f"{c['policy_params']:,}",
                 _v(c["rm_accuracy"])]  # fmt: skip
        for m in ("bon", "none"):
            f = c["methods"][m]["fit"]
            ci = f.get("ci") or {}
            cells += ["–"] * 3 if f.get("error") else [
                _ci(f["alpha"], ci.get("alpha")), _ci(f["beta"], ci.get("beta")), _v(f["d_peak"], 2)]  # fmt: skip
        rows.append("| " + " | ".join(cells) + " |")
    trends = []
    labels = {"rm_size": "RM parameters", "pairs": "pairs", "policy_size": "policy parameters"}
    for axis, per_method in result["trends"].items():
        for m, per_coef in per_method.items():
            for coef, t in per_coef.items():
                if t:
                    trends.append(f"| {labels[axis]} | `{m}` | {coef} | {t['slope']:+.4f} | {t['intercept']:.4f} "
                                  f"| {_v(t['r2'])} | {t['n']} |")  # fmt: skip
    return "\n".join([
        *section_head("Overoptimization scaling: `default` preset, testbed `summarize`",
                      "python experiments/overoptimization_laws.py --part scaling", f" (runs `{' '.join(cmd)}`)"),
        "One axis at a time around the preset's cell (`base`: policy and RM 64×2×4, 12000 pairs). RM cells: the RM "
        "starts from an SFT model of its own size; policy cells keep the RM at 64×2×4, trained on pairs from that "
        f"policy. {args.seeds} seeds per method; brackets: 95 % jackknife t intervals over seeds. Parameters: every "
        f"tensor of the saved model (embeddings and head included). Wall time of `overopt scaling`: {wall / 60:.1f} "
        "min (finished cells and stages in OUT are reused: a rerun is faster).",
        "",
        "| cell | axis | RM params | pairs | policy params | RM accuracy | bon α | bon β | bon d* "
        "| RL α | RL β | RL d* |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "Log-linear trends, coefficient ≈ intercept + slope · log10(x), over each axis's cells:",
        "",
        "| axis | method | coefficient | slope per decade | intercept | R² | cells |",
        "|---|---|---|---|---|---|---|",
        *trends,
    ])  # fmt: skip


def main(args: Args) -> None:
    if args.part in ("all", "fits"):
        body = fits_section(args)
        print(body)
        write_section("laws-fits-summarize-default", body)
    if args.part in ("all", "scaling"):
        body = scaling_section(args)
        print(body)
        write_section("laws-scaling-summarize-default", body)


if __name__ == "__main__":
    main(tyro.cli(Args))
