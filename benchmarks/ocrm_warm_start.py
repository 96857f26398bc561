"""OCRM's refits warm-started from the previous RM (`ocrm.warm_start`) against the paper's refit from scratch,
side by side in one run over labs: run time and what the change does to the result (issue 28, item 4).

    python benchmarks/ocrm_warm_start.py                       # 3 labs x 3 seeds, default preset (~30 min)
    python benchmarks/ocrm_warm_start.py --labs 2 --seeds 1 --preset smoke --no-write

Runs `overopt compare --grid benchmarks/grids/ocrm-warm-start.yaml --labs L --seeds S --jobs 2 --batch-runs False`
(one process per run, so that each run's wall time is its own) into OUT, resumable like any compare. Both
conditions are `ocrm+kl` at ocrm.target_ess_frac 0.1 (the frontier's strongest OCRM point); the warm start trains
each refit for ocrm.warm_start_epochs (1) passes from RM_{k-1} instead of rm.epochs (4) passes from the SFT
backbone. Each figure is a lab's mean over its RL seeds, then the mean over labs with its 95 % Student t
interval (unit: the lab); differences are warm − scratch, paired within lab and seed.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import tyro

from overopt.report.table import format_ci
from overopt.results import markdown_table, section_head, write_section
from overopt.stats import nested_interval

ROOT = Path(__file__).resolve().parents[1]
GRID = "benchmarks/grids/ocrm-warm-start.yaml"
RUN = "ocrm+kl@ocrm.target_ess_frac=0.1@ocrm.warm_start={}"
CONDITIONS = (("refit from scratch (paper)", False), ("warm start, 1 pass", True))
# (label, metrics key, decimals): read from each run's last evaluation
FIGURES = (("run wall s", "wall_s", 1), ("final gold", "gold_reward", 3), ("final KL", "kl_sft", 2),
           ("RM_2 held-out accuracy", "ocrm/rm_heldout_accuracy", 3),
           ("RM_2 vs RM_0 disagreement", "ocrm/refit_disagreement", 3))  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Args:
    labs: int = 3
    seeds: int = 3
    preset: str = "default"
    jobs: int = 2
    out: str = "benchmarks/out/ocrm-warm-start"
    write: bool = True
    """Write the table into benchmarks/RESULTS.md (--no-write: print it only)."""


def last_rows(out: Path, labs: int, seeds: int) -> dict[tuple[bool, int, int], dict]:
    """(warm, lab, seed) -> the run's last metrics row."""
    found = {}
    for warm in (False, True):
        for lab in range(labs):
            for seed in range(seeds):
                path = out / "labs" / f"lab{lab}" / "runs" / RUN.format(warm) / f"seed{seed}" / "metrics.jsonl"
                found[warm, lab, seed] = json.loads(path.read_text().splitlines()[-1])
    return found


def main(args: Args) -> None:
    out = ROOT / args.out
    cmd = [sys.executable, "-m", "overopt", "compare", "--preset", args.preset, "--grid", str(ROOT / GRID),
           "--labs", str(args.labs), "--seeds", str(args.seeds), "--jobs", str(args.jobs), "--batch-runs", "False",
           "--out", str(out)]  # fmt: skip
    subprocess.run(cmd, check=True, cwd=ROOT)
    rows = last_rows(out, args.labs, args.seeds)
    units = [(lab, s) for lab in range(args.labs) for s in range(args.seeds)]
    labs = [lab for lab, _ in units]  # each lab's mean over its seeds, then the t interval over labs
    table = []
    for label, key, digits in FIGURES:
        per = {warm: [float(rows[(warm, *u)][key]) for u in units] for _, warm in CONDITIONS}
        cells = [format_ci(nested_interval(per[warm], labs), digits=digits) for _, warm in CONDITIONS]
        diff = nested_interval([w - s for w, s in zip(per[True], per[False], strict=True)], labs)
        table.append(f"| {label} | {cells[0]} | {cells[1]} | {format_ci(diff, signed=True, digits=digits)} |")
    scratch_s = sum(float(rows[(False, *u)]["wall_s"]) for u in units)
    warm_s = sum(float(rows[(True, *u)]["wall_s"]) for u in units)
    command = f"python benchmarks/ocrm_warm_start.py --labs {args.labs} --seeds {args.seeds} --preset {args.preset}"
    body = [*section_head("OCRM refits warm-started from the previous RM (`ocrm.warm_start`)", command),
            f"`ocrm+kl` at `ocrm.target_ess_frac` 0.1 (two refits per run), testbed `summarize`, preset "
            f"`{args.preset}`, {args.labs} labs × RL seeds 0–{args.seeds - 1}, each run in its own process "
            f"(`--batch-runs False --jobs {args.jobs}`). Refit from scratch: SFT backbone, fresh head, `rm.epochs` "
            "passes (the paper's); warm start: RM_{k−1}'s weights, `ocrm.warm_start_epochs` = 1 pass. Each figure "
            "a lab's mean over its seeds, then the mean over labs [95 % t interval, unit: the lab]; the difference "
            "is warm − scratch, paired within lab and seed.", "",
            *markdown_table(["figure", CONDITIONS[0][0], CONDITIONS[1][0], "warm − scratch"], table), "",
            f"Runs' wall time summed: {scratch_s:.0f} s from scratch, {warm_s:.0f} s warm-started "
            f"({scratch_s / warm_s:.2f}× faster per OCRM run)."]  # fmt: skip
    print("\n".join(body))
    if args.write:
        write_section("ocrm-warm-start", "\n".join(body))


if __name__ == "__main__":
    main(tyro.cli(Args))
