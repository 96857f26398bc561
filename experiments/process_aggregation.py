"""How a PRM's step rewards are aggregated into the return decides whether RL hacks it: every aggregation of
Recursive Reward Aggregation (Tang, Zhang, Ackermann et al., arXiv 2507.08537) and PURE's min-form (Cheng et al.,
arXiv 2504.15275) on the `process` testbed's default preset, plus `kl` with the sum return.

    python experiments/process_aggregation.py                 # ~35 min on 2 CPU cores
    python experiments/process_aggregation.py --score-only    # tabulate what exists

Arms (each `overopt run --testbed process --seeds 3`, RLOO; one SFT policy and PRM shared by all, built once):
sum, discounted_sum (γ = rl.gamma below), min (PURE's code: softmin-weighted step rewards at T = 0.1, summed),
min@T0 (RRA's exact minimum), max, mean, sharpe, kl (β = rl.kl.coef) with the sum, and PPO (per-token λ-returns
in aggregation-state space, ops.token_returns) with the sum and the exact min. The table: mean ± std
over seeds of gold at SFT, peak (step) and final, hacked seeds (gold falls ≥ 30 % of its gain from the peak:
report.summary.hacking_check), and at the end: proxy (the aggregated return), KL to SFT, partial-sum steps per
answer and the share of answers that reach an answer at all.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import tyro

from overopt.report.plots import aggregate, new_figure, save_figure, style_axes
from overopt.report.summary import build_summary, load_runs
from overopt.results import section_head, write_section

ROOT = Path(__file__).resolve().parents[1]
SWEPT = ("sum", "discounted_sum", "min", "max", "mean", "sharpe")  # one `overopt run --sweep`
# Arms that need their own flags: name -> (out suffix, flags); they reuse the sweep's artifacts.
EXTRA = {
    "min@T0": ("min-exact", ["--methods", "none", "--rl.aggregation", "min", "--rl.min_temperature", "0"]),
    "kl (sum)": ("kl", ["--methods", "kl"]),
    # PPO with per-token returns through RRA's generalised Bellman target (ops.token_returns).
    "ppo sum": ("ppo-sum", ["--methods", "none", "--rl.algo", "ppo"]),
    "ppo min@T0": (
        "ppo-min",
        ["--methods", "none", "--rl.algo", "ppo", "--rl.aggregation", "min", "--rl.min_temperature", "0"],
    ),
}


@dataclasses.dataclass(frozen=True)
class Args:
    out: Path = Path("runs/process-aggregation")
    seeds: int = 3
    gamma: float = 0.9
    """rl.gamma of the sweep: discounted_sum's step discount (no other swept return takes one)."""
    score_only: bool = False
    """Tabulate the runs that exist without starting any."""
    write: bool = True


def _run(args: Args, out: Path, flags: list[str]) -> str:
    shown = out.relative_to(ROOT) if out.is_relative_to(ROOT) else out
    cmd = ["overopt", "run", "--testbed", "process", "--seeds", str(args.seeds), "--threads", "2", "--out", str(shown),
           *flags]  # fmt: skip
    if not args.score_only:
        print(" ".join(cmd), flush=True)
        subprocess.run([sys.executable, "-m", "overopt", *cmd[1:]], check=True, cwd=ROOT)
    return " ".join(cmd)


def _read(out: Path) -> tuple[dict, dict]:
    """An OUT's runs ({method: {seed: rows}}) and its summary, each read once."""
    runs = load_runs(out)
    return runs, build_summary(out, runs)


def arms(args: Args) -> tuple[dict[str, dict], dict[str, dict], list[str], dict]:
    """Run (unless --score-only) and read every arm: {arm: {seed: rows}}, {arm: summary entry}, the commands,
    and the sweep's summary (its stages and configuration)."""
    sweep = ROOT / args.out
    sweep_flags = ["--methods", "none", "--rl.gamma", str(args.gamma), "--sweep", "rl.aggregation=" + ",".join(SWEPT)]
    commands = [_run(args, sweep, sweep_flags)]
    sweep_runs, summary = _read(sweep)
    runs, entries = {}, {}
    for name in SWEPT:
        key = f"none@rl.aggregation={name}"
        runs[name], entries[name] = sweep_runs.get(key, {}), summary["methods"].get(key)
    for name, (suffix, flags) in EXTRA.items():
        out = sweep.with_name(f"{sweep.name}-{suffix}")
        if not (out / "artifacts").exists() and (sweep / "artifacts").exists():
            shutil.copytree(sweep / "artifacts", out / "artifacts")  # the same SFT policy and PRM
        commands.append(_run(args, out, flags))
        method = flags[1]
        arm_runs, arm_summary = _read(out)
        runs[name], entries[name] = arm_runs.get(method, {}), arm_summary["methods"].get(method)
    return runs, entries, commands, summary


def _stat(entry: dict | None, key: str, digits: int = 3) -> str:
    s = (entry or {}).get(key) or {}
    return "–" if s.get("mean") is None else f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


def _final(seeds: dict[int, list[dict]], key: str, digits: int) -> str:
    values = [rows[-1][key] for rows in seeds.values() if rows and key in rows[-1]]
    if not values:
        return "–"
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1) if len(values) > 1 else 0.0:.{digits}f}"


def table(runs: dict, entries: dict) -> list[str]:
    lines = ["| return | gold SFT | gold peak (step) | gold final | hacked | proxy final | KL final | steps final | "
             "answered final |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, entry in entries.items():
        if entry is None:
            continue
        seeds = runs[name]
        sft = np.mean([rows[0]["gold_reward"] for rows in seeds.values()])
        peak = f"{_stat(entry, 'gold_peak')} (@{entry['gold_peak_step']['mean']:.0f})"
        cells = [name, f"{sft:.3f}", peak, _stat(entry, "gold_final"), f"{entry['hacked_seeds']}/{entry['n_seeds']}",
                 _final(seeds, "proxy_reward", 2), _stat(entry, "kl_final", 2), _final(seeds, "gold/steps", 1),
                 _final(seeds, "gold/answered", 2)]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def plot(runs: dict, path: Path) -> Path:
    """Gold, proxy and steps per answer against the RL step, mean over seeds, one line per return."""
    fig = new_figure(14, 3.6)
    panels = (("gold_reward", "gold (answer correct)"), ("proxy_reward", "proxy (aggregated PRM return)"),
              ("gold/steps", "partial-sum steps per answer"))  # fmt: skip
    *axes, key_ax = fig.subplots(1, 4, gridspec_kw={"width_ratios": [1, 1, 1, 0.3]})
    for ax, (key, label) in zip(axes, panels):
        for i, (name, seeds) in enumerate(runs.items()):
            if seeds:
                a = aggregate(seeds, key)
                ax.plot(a["step"], a["mean"], label=name, color=f"C{i}", marker="." if name == "sum" else None)
        style_axes(ax, label, "RL step", label)
    key_ax.axis("off")
    key_ax.legend(*axes[0].get_legend_handles_labels(), loc="center left", fontsize=8, frameon=False)
    fig.suptitle("process testbed: the PRM's return under each aggregation (mean over seeds)")
    return save_figure(fig, path)


def main(args: Args) -> None:
    runs, entries, commands, summary = arms(args)
    prm = summary["stages"]["rm"]["metrics"]
    cfg = summary["config"]
    figure = plot(runs, ROOT / "docs/img/process_aggregation.png")
    body = "\n".join([
        # the commands it runs, one a line, follow the Command line
        *section_head("Process rewards: how the PRM's step rewards are aggregated (`process` testbed, default preset)",
                      f"python experiments/process_aggregation.py --out {args.out}",
                      ", which runs" + "".join(f"  \n`{c}`" for c in commands)),
        f"PRM held-out step accuracy {prm['heldout_step_accuracy']:.3f} (train {prm['train_step_accuracy']:.3f}; "
        f"{prm['n_train_answers']} SFT answers, steps right: "
        f"{summary['stages']['prm_data']['metrics']['right_fraction']:.2f}). RLOO, {cfg['rl']['steps']} updates of "
        f"{cfg['rl']['prompts_per_step']} prompts × {cfg['rl']['group_size']}, lr {cfg['rl']['lr']}; "
        f"discounted_sum γ = {args.gamma}; min = PURE's softmin at T = 0.1, min@T0 = exact; kl β = "
        f"{cfg['rl']['kl']['coef']}; PPO: λ = {cfg['rl']['lam']}, the value model from the PRM. Mean ± std over "
        f"{args.seeds} seeds; hacked = gold falls ≥ 30 % of its gain from the peak.",
        "",
        *table(runs, entries),
        "",
        f"![gold, proxy and steps per answer under each return](../{figure.relative_to(ROOT)})",
    ])  # fmt: skip
    print(body)
    if args.write:
        write_section("process-aggregation", body)


if __name__ == "__main__":
    main(tyro.cli(Args))
