"""Direct alignment overoptimizes too (Rafailov et al., arXiv 2406.02900): DPO over β, IPO, SimPO, RPO, DPO+NLL, hinge
on the `default` preset's pairs, side by side with RL (`kl`, `none`) at matched KL; a RESULTS.md section.

    python experiments/direct_alignment.py                  # about an hour on 2 CPU cores (a DAA run: 110 s)
    python experiments/direct_alignment.py --seeds 1 --betas 0.1   # a quick look
    python experiments/direct_alignment.py --rpo            # RPO over η against DPO at matched KL (25 min)
    python experiments/direct_alignment.py --labs 3 --seeds 2 --jobs 2   # DPO, RPO against RL over 3 labs

Two `overopt run` invocations into one OUT (the shared stages are trained once, or reused): DPO swept over
`dpo.beta`, then the other losses at their defaults with the RL baselines. Every run is evaluated every
`eval.every` = 10 optimiser steps over `daa.epochs` = 2 epochs (166 steps each), so each curve shows both.
Read from OUT: each run's gold final, gold peak and its step, KL final, hacked seeds, the RL form fitted to
gold against √KL (R²) and gold along each run's own path at matched KL budgets (report.frontier.path_gold_at_kl,
mean and 95 % Student t interval over seeds; "–" where a run never reaches the budget).

With `--labs N` (overopt.labs), the claims of the one-lab tables over N lab replicates, each its own world, SFT
policy, pairs and proxy RM: DPO at `labs_betas`, RPO at its defaults, `kl` and `none`, into OUT-labsN. Gold at
matched KL along each run's path, paired within lab and seed against `kl` (and RPO against DPO at RPO's β),
averaged within each lab, Student t interval over labs.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import tyro
from matplotlib import colormaps

from overopt.config import RPOConfig
from overopt.labs import lab_out
from overopt.report.frontier import format_ci, paired_diff_ci, path_gold_at_kl
from overopt.report.plots import aggregate, new_figure, save_figure, style_axes
from overopt.report.summary import load_runs
from overopt.report.table import format_mean_std as _ms
from overopt.report.table import format_value as _v
from overopt.results import markdown_table, section_head, write_section
from overopt.stats import interval, nested_interval


@dataclasses.dataclass(frozen=True)
class Args:
    seeds: int = 3
    betas: str = "0.01,0.03,0.1,0.3,1"
    """dpo.beta values of the sweep."""
    others: str = "ipo,simpo,rpo,dpo_nll,hinge,kl,none"
    """Methods run at their defaults beside the sweep."""
    epochs: str = "1,4"
    """daa.epochs values of a second sweep, DPO at the smallest β (into OUT-epochs); "" skips it."""
    budgets: str = "0.5,1,2,4"
    """KL budgets (nats) of the matched-KL table."""
    out: Path = Path("runs/daa-default")
    stages_from: Path | None = None
    """A finished `default` OUT whose shared stages (SFT, pairs, RM) to copy in first (same configuration)."""
    jobs: int = 1
    """Runs at once (overopt run --jobs; results do not depend on it)."""
    rpo: bool = False
    """Only the RPO study: rpo over `rpo_etas` (rpo.beta = dpo.beta = 0.1) beside DPO and DPO+NLL, into OUT-rpo."""
    rpo_etas: str = "0.005,0.05,0.5,5,50"
    """rpo.eta values: from the paper's recipe (0.005) to a chosen-response SFT term that dominates the DPO term."""
    labs: int = 1
    """Lab replicates (overopt run --labs): > 1 runs only the over-labs study (module docstring), into OUT-labsN."""
    labs_preset: str = "default"
    """Preset of the over-labs study (`smoke` checks the script in a minute)."""
    labs_betas: str = "0.1,0.3"
    """dpo.beta values of the over-labs study (0.1 is RPO's β, 0.3 the one-lab table's best at KL 1)."""


def table_rows(out: Path, budgets: list[float], suffix: str = "") -> list[str]:
    """One row per method of OUT's summary.json (its last invocation's report covers every run in OUT)."""
    summary = json.loads((out / "summary.json").read_text())
    runs = load_runs(out)
    rows = []
    for name, m in summary["methods"].items():
        fit = m.get("fit") or {}
        matched = [format_ci(interval([path_gold_at_kl(r, b) for r in runs[name].values()])) for b in budgets]
        rows.append(
            f"| `{name}`{suffix} | {_ms(m['gold_final'])} | {_ms(m['gold_peak'])} (@{_ms(m['gold_peak_step'], 0)}) "
            f"| {_ms(m['kl_final'], 2)} | {m['hacked_seeds']}/{m['n_seeds']} | "
            + ("–" if fit.get("error") else f"{_v(fit['alpha'])}, {_v(fit['beta'])}, {_v(fit['r2'], 2)}")
            + " | " + " | ".join(matched) + " |"
        )  # fmt: skip
    return rows


def plot_curves(outs: list[Path], path: Path) -> Path:
    """Gold against √KL, mean over seeds at each evaluation: (a) DPO over β and epochs, (b) the other losses at
    their defaults beside DPO β 0.1; RL `kl` and `none` in both."""
    runs = {}
    for out in outs:
        suffix = "" if out == outs[0] else " (β 0.01)"
        runs.update({name + suffix: seeds for name, seeds in load_runs(out).items()})
    dpo = sorted((n for n in runs if n.startswith("dpo@dpo.beta=")), key=lambda n: float(n.split("=")[1]))
    panels = [
        ("DPO over β (and epochs at β 0.01)", dpo + [n for n in runs if n.startswith("dpo@daa.epochs")]),
        ("The other losses at their defaults", ["ipo", "simpo", "rpo", "dpo_nll", "hinge", "dpo@dpo.beta=0.1"]),
    ]
    fig = new_figure(12, 4.8)
    cmap = colormaps["viridis"]
    for ax, (title, names) in zip(fig.subplots(1, 2), panels):
        for i, name in enumerate([n for n in names if n in runs] + ["kl", "none"]):
            kl, gold = aggregate(runs[name], "kl_sft"), aggregate(runs[name], "gold_reward")
            style = (
                {"color": "0.2" if name == "none" else "0.55", "linestyle": "--"}
                if name in ("kl", "none")
                else ({"color": cmap(i / max(1, len(names) - 1))} if names is panels[0][1] else {})
            )
            ax.plot(np.sqrt(np.maximum(kl["mean"], 0)), gold["mean"], marker=".", label=name, **style)
        style_axes(ax, title, "√KL(π ‖ π_SFT)", "gold reward")
        ax.set_xlim(0, 2.5)
        ax.set_ylim(0.25, None)  # none falls far below: the DAAs are what this figure is about
        ax.legend(fontsize=8, frameon=False)
    fig.suptitle("Direct alignment on the lab's pairs (default preset, mean of 3 seeds; RL kl and none in grey)")
    return save_figure(fig, path)


def _last(seeds: dict[int, list[dict]], key: str) -> dict:
    """Interval over seeds of `key` at each run's last evaluation."""
    return interval(rows[-1].get(key) for rows in seeds.values())


def rpo_study(args: Args, budgets: list[float]) -> None:
    """RPO (Liu et al., arXiv 2405.16436) over η against DPO at the same β, at matched KL along each run's path."""
    out = args.out.with_name(args.out.name + "-rpo")
    if args.stages_from is not None and not (out / "artifacts").exists():
        shutil.copytree(args.stages_from / "artifacts", out / "artifacts")
    base = [
        sys.executable,
        "-m",
        "overopt",
        "run",
        "--preset",
        "default",
        "--seeds",
        str(args.seeds),
        "--jobs",
        str(args.jobs),
        "--out",
        str(out),
    ]
    commands = [[*base, "--methods", "dpo,dpo_nll"], [*base, "--methods", "rpo", "--sweep", f"rpo.eta={args.rpo_etas}"]]
    for cmd in commands:
        subprocess.run(cmd, check=True)
    runs = load_runs(out)
    summary = json.loads((out / "summary.json").read_text())
    dpo = runs["dpo"]
    names = ["dpo", *(f"rpo@rpo.eta={eta}" for eta in args.rpo_etas.split(",")), "dpo_nll"]
    rows = []
    for name in names:
        m, seeds = summary["methods"][name], runs[name]
        cells = []
        for b in budgets:
            own = {s: path_gold_at_kl(r, b) for s, r in seeds.items()}
            ref = {s: path_gold_at_kl(r, b) for s, r in dpo.items()}
            diff = paired_diff_ci({s: v for s, v in own.items() if v is not None},
                                  {s: v for s, v in ref.items() if v is not None})  # fmt: skip
            cells.append(format_ci(interval(own.values())) + ("" if name == "dpo" else
                                                              f" ({format_ci(diff, signed=True)})"))  # fmt: skip
        rows.append(f"| `{name}` | {_ms(m['gold_final'])} | {_ms(m['gold_peak'])} | {_ms(m['kl_final'], 2)} | "
                    f"{format_ci(_last(seeds, 'daa/chosen_logratio'), 2)} | "
                    f"{format_ci(_last(seeds, 'daa/implicit_accuracy'))} | "
                    f"{m['hacked_seeds']}/{m['n_seeds']} | " + " | ".join(cells) + " |")  # fmt: skip
    cmds = "; ".join(f"`{' '.join(c[2:])}`" for c in commands)
    head = section_head(
        "RPO over η against DPO at matched KL: `default` preset, testbed `summarize`",
        f"python experiments/direct_alignment.py --rpo --budgets {args.budgets}",
        f" (runs {cmds})",
    )
    note = (
        "RPO as its authors' code computes it: DPO − β·η·log π(y_c), the chosen response's summed log-likelihood, "
        "β = 0.1 (= DPO's here), η from the paper's recipe (0.005) up; DPO+NLL (Pang et al.) at α = 1 for "
        f"comparison. SFT gold {summary['sft']['gold_reward']:.3f}. Mean ± std over {args.seeds} seeds (gold final, "
        "gold peak, KL final); the chosen log-ratio log π(y_c) − log π_ref(y_c) and the implicit reward's accuracy "
        "on held-out pairs at the end, mean [95 % Student t interval over seeds]. Gold @ KL b: gold along each run's "
        "own path where its KL first reaches b (interpolated), mean [95 % t interval]; in brackets the paired "
        "difference to DPO at the same budget and seed."
    )
    header = ["run", "gold final", "gold peak", "KL final", "chosen log-ratio", "implicit accuracy", "hacked",
              *(f"gold @ KL {b:g} (− DPO)" for b in budgets)]  # fmt: skip
    body = "\n".join([*head, note, "", *markdown_table(header, rows)])
    print(body)
    write_section("daa-rpo-eta", body)


def labs_study(args: Args, budgets: list[float]) -> None:
    """DPO, RPO and RL at matched KL over lab replicates (module docstring)."""
    out = args.out.with_name(f"{args.out.name}-labs{args.labs}")
    base = [sys.executable, "-m", "overopt", "run", "--preset", args.labs_preset, "--labs", str(args.labs),
            "--seeds", str(args.seeds), "--jobs", str(args.jobs), "--out", str(out)]  # fmt: skip
    commands = [[*base, "--methods", "dpo", "--sweep", f"dpo.beta={args.labs_betas}"],
                [*base, "--methods", "rpo,kl,none"]]  # fmt: skip
    for cmd in commands:
        subprocess.run(cmd, check=True)
    labs = [load_runs(lab_out(out, i)) for i in range(args.labs)]
    rpo_beta = RPOConfig().beta  # RPO is paired with DPO at the same β
    dpo_names = [f"dpo@dpo.beta={b}" for b in args.labs_betas.split(",")]
    names = [*dpo_names, "rpo", "kl", "none"]
    reference = {n: "kl" for n in names if n != "kl"}
    if f"dpo@dpo.beta={rpo_beta:g}" in dpo_names:
        reference["rpo"] = f"dpo@dpo.beta={rpo_beta:g}"

    def per_run(name: str, value) -> tuple[list[float | None], list[int]]:
        """value(rows) of every (lab, seed) run of `name`, with the lab of each."""
        pairs = [(value(rows), i) for i, runs in enumerate(labs) for rows in runs.get(name, {}).values()]
        return [v for v, _ in pairs], [i for _, i in pairs]

    def paired(name: str, ref: str, value) -> dict:
        diffs, groups = [], []
        for i, runs in enumerate(labs):
            for seed, rows in runs.get(name, {}).items():
                other = runs.get(ref, {}).get(seed)
                a, b = value(rows), (value(other) if other is not None else None)
                if a is not None and b is not None:
                    diffs.append(a - b)
                    groups.append(i)
        return nested_interval(diffs, groups)

    rows = []
    for name in names:
        final = nested_interval(*per_run(name, lambda r: r[-1].get("gold_reward")))
        kl_final = nested_interval(*per_run(name, lambda r: r[-1].get("kl_sft")))
        cells = []
        for b in budgets:
            at = lambda r, b=b: path_gold_at_kl(r, b)  # noqa: E731
            cell = format_ci(nested_interval(*per_run(name, at)))
            if name in reference:
                cell += f" ({format_ci(paired(name, reference[name], at), signed=True)})"
            cells.append(cell)
        rows.append(f"| `{name}` | {reference.get(name, '–')} | {format_ci(final)} | {format_ci(kl_final, 2)} | "
                    + " | ".join(cells) + " |")  # fmt: skip
    sft = [json.loads((lab_out(out, i) / "summary.json").read_text())["sft"]["gold_reward"] for i in range(args.labs)]
    cmds = "; ".join(f"`{' '.join(c[2:])}`" for c in commands)
    head = section_head(
        f"Direct alignment over {args.labs} labs: DPO, RPO and RL at matched KL (`summarize`, `{args.labs_preset}`)",
        f"python experiments/direct_alignment.py --labs {args.labs} --seeds {args.seeds} --budgets {args.budgets}",
        f" (runs {cmds})",
    )
    note = (
        f"{args.labs} labs (each its own world, SFT policy, pairs and proxy RM; SFT gold "
        + ", ".join(f"{g:.3f}" for g in sft) + f"), {args.seeds} RL/DAA seeds per lab. Every figure: mean over labs "
        "[95 % Student t interval, unit: the lab], each lab's seeds averaged first. Gold @ KL b: gold along each "
        "run's own path where its KL first reaches b (interpolated; runs that never reach b left out); in brackets "
        "the difference to the reference run at the same budget, paired within lab and seed."
    )  # fmt: skip
    header = ["run", "reference", "gold final", "KL final", *(f"gold @ KL {b:g} (− ref.)" for b in budgets)]
    body = "\n".join([*head, note, "", *markdown_table(header, rows)])
    print(body)
    write_section(f"daa-labs{args.labs}", body)


def main(args: Args) -> None:
    if args.labs > 1:
        labs_study(args, [float(b) for b in args.budgets.split(",")])
        return
    if args.rpo:
        rpo_study(args, [float(b) for b in args.budgets.split(",")])
        return
    base = [sys.executable, "-m", "overopt", "run", "--preset", "default", "--seeds", str(args.seeds),
            "--jobs", str(args.jobs), "--out", str(args.out)]  # fmt: skip
    commands = [[*base, "--methods", "dpo", "--sweep", f"dpo.beta={args.betas}"], [*base, "--methods", args.others]]
    outs = [args.out]
    if args.epochs:
        # Epochs are a sweep of their own: the cosine schedule makes epoch 1 of a 2-epoch run a different run
        # from a 1-epoch run. Another OUT, since a run's name carries only the field it sweeps.
        smallest = min(args.betas.split(","), key=float)
        outs.append(args.out.with_name(args.out.name + "-epochs"))
        commands.append([*base[:-1], str(outs[-1]), "--methods", "dpo", "--dpo.beta", smallest,
                         "--sweep", f"daa.epochs={args.epochs}"])  # fmt: skip
    for out in outs:
        source = args.stages_from if out == args.out else args.out
        if source is not None and not (out / "artifacts").exists():
            shutil.copytree(source / "artifacts", out / "artifacts")  # refused at once if stale
    for cmd in commands:
        subprocess.run(cmd, check=True)
    budgets = [float(b) for b in args.budgets.split(",")]
    rows = []
    for out in outs:
        rows += table_rows(out, budgets, suffix="" if out == args.out else f" (β {smallest})")
    sft = json.loads((args.out / "summary.json").read_text())["sft"]["gold_reward"]
    cmds = "; ".join(f"`{' '.join(c[2:])}`" for c in commands)
    head = section_head("Direct alignment on the lab's pairs: `default` preset, testbed `summarize`",
                        "python experiments/direct_alignment.py", f" (runs {cmds})")  # fmt: skip
    note = (
        f"SFT gold {sft:.3f}. DAAs: 2 epochs of the training pairs (166 steps each, batch 64, lr 3e-4), "
        f"evaluated every 10 steps; RL: 200 updates. Mean ± std over {args.seeds} seeds; gold peak (step) and "
        "hacked seeds as in every table here. Fit: the RL form d(α − β log d) to gold gain against √KL (α, β, R²). "
        "Matched KL: gold along each run's own path where its KL first reaches the budget (linear interpolation "
        "between evaluations), mean [95 % Student t interval] over the seeds that reach it (n=1: one seed did)."
    )
    header = ["run", "gold final", "gold peak (step)", "KL final", "hacked", "fit α, β, R²",
              *(f"gold @ KL {b:g}" for b in budgets)]  # fmt: skip
    body = "\n".join([*head, note, "", *markdown_table(header, rows)])
    print(body)
    write_section("daa-summarize-default", body)
    print(plot_curves(outs, Path(__file__).parent.parent / "docs" / "img" / "daa_gold_vs_kl.png"))


if __name__ == "__main__":
    main(tyro.cli(Args))
