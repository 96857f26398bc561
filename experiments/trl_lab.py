"""The lab through TRL: TRL's RLOOTrainer on an overopt lab (its SFT policy, proxy RM, prompts and known gold),
with overopt's monitor, alarms and mitigations plugged in (overopt.integrations.trl), next to the lab's own
runs of the same methods on the same lab.

    python experiments/trl_lab.py --lab runs/alarms-summarize      # default preset lab; ~20 min on 2 CPU cores
    python experiments/trl_lab.py --lab runs/alarms-summarize --score-only

Each (method, seed) is `python examples/trl_grpo.py --lab LAB --trainer rloo --mitigation M --seed S --out OUT`:
TRL's RLOO with the lab's rl.* (steps, prompts × group, lr constant, KL β in the reward with the k1 estimator
as the lab's `kl`), evaluated every eval.every steps on the lab's held-out prompts by GoldRewardCallback.
Finished runs are reused. The table gives TRL's runs and, for the methods the lab ran in LAB, the lab's own
(`overopt run`, RLOO from overopt's loop): mean ± std over seeds of gold final, gold peak (step), KL final,
and hacked seeds (gold falls ≥ 30 % of its gain from the peak: report.summary.hacking_check).
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import tyro

from overopt.report.plots import aggregate, new_figure, save_figure, style_axes
from overopt.report.summary import build_summary, load_runs
from overopt.results import section_head, write_section

ROOT = Path(__file__).resolve().parents[1]
# Arms beyond a mitigation at the lab's default knobs: name -> (mitigation, the example's extra flags). GR's γ
# and SignCert-PO's q are the papers' and leave the method nearly off in the lab; these set an effective
# strength instead (as the frontier comparison does: presets/frontier.yaml).
ARMS = {
    "gr@target1": ("gr", ["--gr.target-correction", "1.0"]),
    "signcert@q0.5": ("signcert", ["--signcert.quantile", "0.5"]),
}


@dataclasses.dataclass(frozen=True)
class Args:
    lab: Path = Path("runs/alarms-summarize")
    """An `overopt run` OUT: its artifacts are the lab TRL trains on, its runs the lab's own side."""
    out: Path = Path("runs/trl-lab")
    methods: str = "none,kl,chi2,ref_reset,gr,signcert,gr@target1,signcert@q0.5"
    seeds: int = 3
    score_only: bool = False
    """Tabulate the runs that exist without starting any."""
    write: bool = True


def finished(run: Path, steps: int) -> bool:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return False
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return bool(rows) and rows[-1]["step"] == steps


def _stat(entry: dict, key: str, digits: int = 3) -> str:
    s = entry.get(key) or {}
    if s.get("mean") is None:
        return "–"
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


STRENGTH = {"gr": "gr/correction_ratio", "signcert": "signcert/adv_mass_removed"}  # README glossary


def strength(seeds: dict[int, list[dict]], method: str) -> str:
    """The method's effective strength: its mean over every evaluation after step 0 and every seed."""
    key = STRENGTH.get(method.split("@")[0])
    values = [row[key] for rows in seeds.values() for row in rows[1:] if key and key in row]
    return f"{key} {np.mean(values):.2f}" if values else "–"


def rows(summary: dict, side: str, methods: list[str], runs: dict) -> list[str]:
    out = []
    for name in methods:
        entry = summary["methods"].get(name)
        if entry is None:
            continue
        peak = f"{_stat(entry, 'gold_peak')} (@{entry['gold_peak_step']['mean']:.0f})"
        cells = [side, name, _stat(entry, "gold_final"), peak, _stat(entry, "kl_final", 2),
                 f"{entry['hacked_seeds']}/{entry['n_seeds']}", strength(runs.get(name, {}), name),
                 _stat(entry, "wall_s", 0)]  # fmt: skip
        out.append("| " + " | ".join(cells) + " |")
    return out


def plot(trl: Path, lab: Path, methods: list[str], path: Path) -> Path:
    """Gold against √KL, mean over seeds at each evaluation: one panel per method, TRL beside the lab."""
    runs = {"TRL": load_runs(trl), "overopt": load_runs(lab)}
    shown = [m for m in methods if m in runs["TRL"]]
    fig = new_figure(3.2 * len(shown), 3.4)
    for ax, method in zip(np.atleast_1d(fig.subplots(1, len(shown), sharey=True)), shown):
        for side, style in (("overopt", {"color": "0.55", "linestyle": "--"}), ("TRL", {"color": "C0"})):
            if method in runs[side]:
                kl, gold = aggregate(runs[side][method], "kl_sft"), aggregate(runs[side][method], "gold_reward")
                ax.plot(np.sqrt(np.maximum(kl["mean"], 0)), gold["mean"], marker=".", label=side, **style)
        style_axes(ax, method, "√KL(π ‖ π_SFT)", "gold reward")
        ax.legend(fontsize=8, frameon=False)
    fig.suptitle("The lab through TRL's RLOOTrainer (blue) and overopt's own loop (grey), mean over seeds")
    return save_figure(fig, path)


def main(args: Args) -> None:
    methods = [m for m in args.methods.split(",") if m]
    lab_cfg = json.loads((ROOT / args.lab / "summary.json").read_text())["config"]
    steps = lab_cfg["rl"]["steps"]
    commands = []
    for method in methods:
        for seed in range(args.seeds):
            mitigation, flags = ARMS.get(method, (method, []))
            cmd = [sys.executable, "examples/trl_grpo.py", "--lab", str(args.lab), "--trainer", "rloo",
                   "--mitigation", mitigation, "--name", method, *flags, "--seed", str(seed),
                   "--out", str(args.out)]  # fmt: skip
            commands.append(cmd)
            if args.score_only or finished(ROOT / args.out / "runs" / method / f"seed{seed}", steps):
                continue
            print(" ".join(cmd[1:]), flush=True)
            subprocess.run(cmd, check=True, cwd=ROOT)
    subprocess.run([sys.executable, "-m", "overopt", "report", str(args.out)], check=True, cwd=ROOT)
    figure = plot(ROOT / args.out, ROOT / args.lab, methods, ROOT / "docs/img/trl_lab_gold_vs_kl.png")
    trl, lab = build_summary(ROOT / args.out), build_summary(ROOT / args.lab)
    header = ("| side | method | gold final | gold peak (step) | KL final | hacked | effective strength | wall s |\n"
              "|---|---|---|---|---|---|---|---|")  # fmt: skip
    body = "\n".join([
        *section_head("The lab through TRL: RLOOTrainer with overopt's monitor and mitigations, `default` summarize "
                      "lab",
                      f"python experiments/trl_lab.py --lab {args.lab} --out {args.out}",
                      f" (each run: `python {' '.join(commands[0][1:])}` with its method and seed)"),
        f"SFT gold {lab['sft']['gold_reward']:.3f} (lab), {trl['sft']['gold_reward']:.3f} (TRL's step-0 "
        f"evaluation). TRL: RLOOTrainer, {steps} updates of {lab_cfg['rl']['prompts_per_step']} prompts × "
        f"{lab_cfg['rl']['group_size']}, lr {lab_cfg['rl']['lr']} constant, `kl`/`ref_reset` β = "
        f"{lab_cfg['rl']['kl']['coef']} (k1, in the reward), mitigations at the lab's default knobs; lab: `overopt "
        "run` RLOO on the same artifacts. Mean ± std over seeds; hacked = gold falls ≥ 30 % of its gain.",
        "",
        header,
        *rows(trl, "TRL", methods, load_runs(ROOT / args.out)),
        *rows(lab, "overopt", methods, load_runs(ROOT / args.lab)),
        "",
        f"![gold against KL, TRL beside the lab](../{figure.relative_to(ROOT)})",
    ])  # fmt: skip
    print(body)
    if args.write:
        write_section("trl-lab", body)


if __name__ == "__main__":
    main(tyro.cli(Args))
