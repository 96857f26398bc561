"""Early warning of reward hacking, scored against gold (issue 16; overopt.detectors): every detector over
many runs of three testbeds, its firing rule tuned on two testbeds and scored on the third.

    python experiments/early_warning.py                         # default presets; about an hour on 2 CPU cores
    python experiments/early_warning.py --seeds 2 --testbeds summarize,math_format --heldout math_format
    python experiments/early_warning.py --labs 3 --seeds 2 --out-prefix runs/alarms-labs3   # over lab replicates

For each testbed one `overopt run --preset default --testbed T --methods none,kl,chi2,ref_reset --seeds N`
into runs/alarms-T (finished runs are reused; `--stages-from` copies summarize's shared stages). Runs that
hack and runs that do not come from the same command: `none` hacks, KL and χ² mostly do not. Then, from the
runs' metrics.jsonl (the detectors are causal functions of what a run logged, so scoring them offline gives
what the run computed online):
  1. every detector at the config's default rule (CUSUM, h = 5, warm-up 3, k = 0.5), per testbed;
  2. each detector's rule tuned (min. gold regret over overopt.detectors.RULE_GRID) on the tuning testbeds
     and scored on the held-out testbed, which the tuning never saw;
  3. every detector as a stopping rule against the gold-free baselines (overopt.detectors.BASELINES: stop at a
     fixed share of the updates, stop at a fixed KL, keep the checkpoint a validation RM scores best), each
     testbed in turn held out: rules and knobs tuned on the other two, regrets on its runs, paired per run
     against the baseline that was best on the tuning testbeds.
Scores (overopt.detectors.score_detector): detected (share of hacked runs it fires on), early (share where it
fires at or before the onset), lead (median evaluations from alarm to onset, > 0 early), false alarms (share
of never-hacking runs it fires on), AUROC (of its warm-up z-score for "the onset has passed", every evaluation
after warm-up), gold regret of stopping at its first alarm against the regret of running to the end.

With `--labs N` every testbed's command runs N lab replicates (`overopt run --labs N`, overopt.labs): each lab
its own SFT policy, proxy and validation RM. Scores 1–2 pool the runs of all labs; the regrets of 3 are
averaged within each lab and their intervals are over labs (the unit: a lab), paired differences paired per run
first. Rules are still tuned on the other testbeds' runs, pooled over their labs.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import tyro

from overopt.detectors import (
    BASELINES,
    Rule,
    baseline_regrets,
    detector_stop,
    hacking_onset,
    regret,
    score_detector,
    tune_baseline,
    tune_rule,
)
from overopt.labs import lab_out
from overopt.report.early_warning import SCORE_HEADER, present_detectors, score_cells
from overopt.report.frontier import format_ci
from overopt.report.summary import load_runs
from overopt.results import section_head, write_section
from overopt.stats import nested_interval


@dataclasses.dataclass(frozen=True)
class Args:
    seeds: int = 5
    preset: str = "default"
    """`smoke` checks the script in minutes (its runs are too short to hack)."""
    methods: str = "none,kl,chi2,ref_reset"
    testbeds: str = "summarize,math_format,judge"
    heldout: str = "judge"
    """The testbed whose runs the tuned rules are scored on (never tuned on)."""
    out_prefix: str = "runs/alarms"
    stages_from: Path | None = None
    """A finished summarize `default` OUT whose shared stages to copy into runs/alarms-summarize first."""
    score_only: bool = False
    """Score the runs that exist (e.g. of an unfinished invocation) without starting any."""
    jobs: int = 1
    """Runs at once (overopt run --jobs; results do not depend on it)."""
    heldout_rm_prompts: int = 4000
    """eval.heldout_rm_prompts of every run: the validation RM of the no-peek selection baseline (0: none)."""
    labs: int = 1
    """Lab replicates per testbed (overopt run --labs); 1: one lab, intervals over runs."""


def _row(label: str, score) -> str:
    return f"| {label} | " + " | ".join(score_cells(score)) + " |"


COLUMNS = " | ".join(SCORE_HEADER) + " |"


def finished_runs(out: Path) -> list[list[dict]]:
    """The metrics rows of every finished run in OUT (its policy saved), unfinished ones left out."""
    return [rows for method, seeds in load_runs(out).items() for seed, rows in seeds.items()
            if (out / "runs" / method / f"seed{seed}" / "policy.safetensors").is_file()]  # fmt: skip


def lab_runs(out: Path, labs: int) -> tuple[list[list[dict]], list[int]]:
    """Finished runs of OUT (one lab) or of its `labs` replicates, with the unit of each run (its lab, or itself)."""
    if labs == 1:  # the unit is the run
        runs = finished_runs(out)
        return runs, list(range(len(runs)))
    per_lab = [finished_runs(lab_out(out, i)) for i in range(labs)]
    return [rows for runs in per_lab for rows in runs], [i for i, runs in enumerate(per_lab) for _ in runs]


def main(args: Args) -> None:
    testbeds = args.testbeds.split(",")
    if args.heldout not in testbeds:
        raise SystemExit(f"--heldout {args.heldout} is not one of --testbeds {args.testbeds}")
    commands = []
    for testbed in testbeds:
        out = Path(f"{args.out_prefix}-{testbed}")
        if testbed == "summarize" and args.stages_from is not None and not (out / "artifacts").exists():
            shutil.copytree(args.stages_from / "artifacts", out / "artifacts")  # refused at once if stale
        cmd = [sys.executable, "-m", "overopt", "run", "--preset", args.preset, "--testbed", testbed,
               "--methods", args.methods, "--seeds", str(args.seeds), "--out", str(out),
               "--eval.heldout_rm_prompts", str(args.heldout_rm_prompts), "--jobs", str(args.jobs)]  # fmt: skip
        if args.labs > 1:
            cmd += ["--labs", str(args.labs)]
        if not args.score_only:
            subprocess.run(cmd, check=True)
        commands.append(" ".join(cmd[2:]))
    found = {t: lab_runs(Path(f"{args.out_prefix}-{t}"), args.labs) for t in testbeds}
    runs = {t: r for t, (r, _) in found.items()}
    labs_of = {t: units for t, (_, units) in found.items()}
    counts = {t: (len(r), sum(hacking_onset([row.get("gold_reward") for row in rows]) is not None for rows in r))
              for t, r in runs.items()}  # fmt: skip
    default = Rule()
    labs_args = f" --labs {args.labs} --seeds {args.seeds} --out-prefix {args.out_prefix}" if args.labs > 1 else ""
    lines = [
        *section_head(
            f"Early warning of hacking, scored against gold: `{args.preset}` presets"
            + (f", {args.labs} labs per testbed" if args.labs > 1 else ""),
            f"python experiments/early_warning.py{labs_args}",
            f" (runs {'; '.join(f'`{c}`' for c in commands)})",
        ),
        "Runs (hacked by the onset rule: gold loses ≥ 30 % of its gain): "
        + ", ".join(f"{t} {n} ({h} hacked)" for t, (n, h) in counts.items())
        + f"; methods {args.methods}, seeds 0–{args.seeds - 1}"
        + (f", {args.labs} labs per testbed (scores pooled; regret intervals over labs)" if args.labs > 1 else "")
        + ". Onset: the last evaluation within 10 % of the gain "
        "of the running gold peak before that loss. Columns as in experiments/early_warning.py's docstring; "
        "lead in evaluations (10 updates each), – where undefined (no hacked run fired, or no never-hacking run).",
        "",
    ]
    for testbed in testbeds:
        lines += [f"### {testbed}: default rule (CUSUM, h = 5, k = 0.5, warm-up 3)", "",
                  f"| detector | {COLUMNS}", "|---|---|---|---|---|---|---|"]  # fmt: skip
        for name in present_detectors(runs[testbed]):
            lines.append(_row(f"`{name}`", score_detector(runs[testbed], name, default)))
        lines.append("")
    tuning = [rows for t in testbeds if t != args.heldout for rows in runs[t]]
    tuned_on = ", ".join(t for t in testbeds if t != args.heldout)
    lines += [f"### Tuned on {tuned_on}, scored on {args.heldout} (held out)", "",
              f"| detector (rule tuned on {tuned_on}) | {COLUMNS}", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for name in present_detectors(runs[args.heldout]):
        rule = tune_rule(tuning, name)
        label = f"`{name}` ({rule.rule}, h = {rule.threshold:g}, warm-up {rule.warmup})"
        lines.append(_row(label, score_detector(runs[args.heldout], name, rule)))
    lines += baseline_tables(runs, testbeds, labs_of)
    body = "\n".join(lines)
    print(body)
    write_section(f"early-warning-{args.preset}" + (f"-labs{args.labs}" if args.labs > 1 else ""), body)


BASELINE_LABELS = {
    "fixed_step": "stop at a fixed share f of the updates",
    "fixed_kl": "stop at a fixed KL κ to the SFT policy",
    "heldout_rm": "keep the validation RM's best checkpoint",
}


def _knob(name: str, knob) -> str:
    return {"fixed_step": f"f = {knob}", "fixed_kl": f"κ = {knob}"}.get(name, "no knob")


def baseline_tables(
    runs: dict[str, list[list[dict]]], testbeds: list[str], labs_of: dict[str, list[int]] | None = None
) -> list[str]:
    """Section 3 of the module docstring: regret of every stopping rule, each testbed held out in turn."""
    labs_of = labs_of or {t: list(range(len(r))) for t, r in runs.items()}
    by_lab = any(len(set(units)) < len(units) for units in labs_of.values())
    unit = (
        "the unit: a lab, its runs averaged first; paired differences paired per run"
        if by_lab
        else "the unit: a run; its methods and RL seeds share one lab"
    )
    lines = ["### Stopping rules against gold-free baselines (each testbed held out in turn)", "",
             "Gold regret (gold peak − gold of the kept policy), mean [95 % Student t interval] over the held-out "
             f"testbed's runs ({unit}). Rules and knobs tuned "
             "(least mean regret) on the other two testbeds; \"− best baseline\": the paired per-run difference to "
             "the baseline with the least regret on those tuning testbeds (below 0: the detector keeps more gold).",
             ""]  # fmt: skip
    beats = {}
    for held in testbeds:
        tuning = [rows for t in testbeds if t != held for rows in runs[t]]
        scored, units = runs[held], labs_of[held]
        has_rm = any("heldout_rm_reward" in row for rows in scored for row in rows)
        names = [b for b in BASELINES if b != "heldout_rm" or has_rm]
        knobs = {b: tune_baseline(tuning, b) for b in names}
        best = min(names, key=lambda b: float(np.nanmean(baseline_regrets(tuning, b, knobs[b]))))
        best_regrets = baseline_regrets(scored, best, knobs[best])
        to_end = format_ci(nested_interval((regret(rows, None) for rows in scored), units))
        tuned_on = ", ".join(t for t in testbeds if t != held)
        labs_note = f", {len(set(units))} labs" if by_lab else ""
        lines += [f"#### Held out: {held} ({len(scored)} runs{labs_note}; tuned on {tuned_on})",
                  "", "| stopping rule | tuned knob | gold regret | − best baseline |", "|---|---|---|---|",
                  f"| run to the end | – | {to_end} | – |"]  # fmt: skip
        for b in names:
            star = " ★ (best on tuning)" if b == best else ""
            cell = format_ci(nested_interval(baseline_regrets(scored, b, knobs[b]), units))
            lines.append(f"| {BASELINE_LABELS[b]}{star} | {_knob(b, knobs[b])} | {cell} | – |")
        for name in present_detectors(scored):
            rule = tune_rule(tuning, name)
            own = np.array([regret(rows, detector_stop(rows, name, rule)) for rows in scored])
            diff = nested_interval(own - best_regrets, units)
            if diff["hi"] is not None and diff["hi"] < 0:
                beats.setdefault(held, []).append(name)
            lines.append(f"| detector `{name}` | {rule.rule}, h = {rule.threshold:g}, warm-up {rule.warmup} | "
                         f"{format_ci(nested_interval(own, units))} | {format_ci(diff, signed=True)} |")  # fmt: skip
        lines.append("")
    verdict = "; ".join(f"{t}: {', '.join(f'`{n}`' for n in names)}" for t, names in beats.items()) or "none"
    lines += [f"Detectors whose regret is below the best baseline's with the whole interval: {verdict}.", ""]
    return lines


if __name__ == "__main__":
    main(tyro.cli(Args))
