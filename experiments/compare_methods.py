"""Mitigation comparison on one preset, tables to RESULTS.md.

Two modes:
  - published knobs: every method × seeds at its configured knob, in one `overopt run`;
  - `--frontier`: `overopt compare`, every method over a grid of its strength (presets/frontier.yaml)
    × seeds, with frontiers, gold at matched KL, leave-one-seed-out best points, the methods'
    effective strengths and the mechanism verdicts (overopt.report.frontier / .mechanisms).

    python experiments/compare_methods.py                       # summarize, default preset, 3 seeds
    python experiments/compare_methods.py --seeds 5 --methods none,kl,gr
    python experiments/compare_methods.py --testbed math_format --methods none,kl,ref_reset,gr,par,chi2
    python experiments/compare_methods.py --frontier --seeds 3 --jobs 2   # summarize frontier
    python experiments/compare_methods.py --frontier --testbed judge
    python experiments/compare_methods.py --methods gr --sweep gr.bf16_roundtrip=False,True \\
        --out benchmarks/out/bf16 --baseline benchmarks/out/frontier-summarize   # + lift over none's path

Runs go to benchmarks/out/<preset>/ (summarize) or benchmarks/out/<testbed>[-<preset>]/ (reused
when re-run), and the table replaces this benchmark's section of benchmarks/RESULTS.md, with the
command, date and machine.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import tyro
import yaml

from overopt.cli import main as overopt_main
from overopt.config import ExperimentConfig
from overopt.io import read_json
from overopt.results import section_head, write_section

OUT_ROOT = Path(__file__).resolve().parents[1] / "benchmarks" / "out"  # git-ignored; earlier runs are reused
METHODS = "none,kl,ref_reset,gr,signcert,ocrm,ensemble_uwo,par,chi2"


@dataclasses.dataclass(frozen=True)
class Args:
    testbed: str = "summarize"
    """overopt testbed to compare on."""
    preset: str = "default"
    """overopt preset to compare on."""
    methods: str = METHODS
    """Comma-separated methods."""
    seeds: int = 3
    """Seeds per method."""
    sweep: str = ""
    """Sweep one field for every method, e.g. gr.gamma=0.01,0.1 (see `overopt run --help`)."""
    extra: tuple[str, ...] = ()
    """Extra `overopt run` overrides as NAME=VALUE, e.g. ocrm.rounds=3."""
    tag: str = ""
    """Name of this table in RESULTS.md (several tables per preset, e.g. one per sweep)."""
    out: str = ""
    """Output directory (default: benchmarks/out/<preset> or <testbed>[-<preset>])."""
    frontier: bool = False
    """Run `overopt compare` (each method over its strength grid) and write the frontier tables."""
    jobs: int = 0
    """--frontier: runs at once (0: the usable cores / threads per run)."""
    grid: str = ""
    """--frontier: grid file (default: overopt/presets/frontier.yaml)."""
    grid_methods: str = ""
    """--frontier: subset of the grid's methods."""
    baseline: str = ""
    """An output directory whose runs/none/seed<k> used the same RM (e.g. a frontier run): adds each
    method's lift over none's own path at the same final KL (overopt.report.frontier)."""


def fmt(stat: dict, digits: int = 3) -> str:
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def lifts(out: Path, baseline: Path, names: list[str], seeds: int) -> dict[str, str]:
    """Per method: final gold minus none's path gold at the run's final KL, paired by seed, mean [95 % CI]."""
    from overopt.report.frontier import format_ci, lift_over_path, run_figures
    from overopt.report.summary import read_jsonl

    rm = [read_json(d / "artifacts" / "rm" / "stage.json")["fingerprint"] for d in (out, baseline)]
    if rm[0] != rm[1]:
        raise SystemExit(f"--baseline {baseline}: its proxy RM is not this run's (fingerprints {rm[1]} vs {rm[0]})")
    none_rows = {}
    for k in range(seeds):
        path = baseline / "runs" / "none" / f"seed{k}" / "metrics.jsonl"
        if not path.exists():
            raise SystemExit(f"--baseline {baseline}: no {path.relative_to(baseline)}")
        none_rows[k] = read_jsonl(path)
    result = {}
    for name in names:
        figs = {k: run_figures(read_jsonl(out / "runs" / name / f"seed{k}" / "metrics.jsonl")) for k in range(seeds)}
        ci = lift_over_path(figs, none_rows)
        result[name] = format_ci(ci, signed=True) + (f" (n={ci['n']})" if ci["n"] > 1 else "")
    return result


def table(summary: dict, names: list[str], lift: dict[str, str] | None = None) -> str:
    extra = (" lift over none's path |", "---|", " |") if lift else ("", "", "")
    rows = [
        "| method | gold final | gold peak (step) | proxy final | KL final | hacked seeds | wall s / run |" + extra[0],
        "|---|---|---|---|---|---|---|" + extra[1],
        f"| SFT policy | {summary['sft']['gold_reward']:.3f} | | {summary['sft']['proxy_reward']:.3f} | 0 | | |"
        + extra[2],
    ]
    ours = {name: m for name, m in summary["methods"].items() if name in names}
    ranked = sorted(ours.items(), key=lambda kv: -kv[1]["gold_final"]["mean"])
    for name, m in ranked:
        n = m["gold_final"]["n"]
        rows.append(
            f"| `{name}` | {fmt(m['gold_final'])} | {fmt(m['gold_peak'])} (@{m['gold_peak_step']['mean']:.0f}) "
            f"| {fmt(m['proxy_final'])} | {fmt(m['kl_final'], 2)} | {m['hacked_seeds']}/{n} "
            f"| {m['wall_s']['mean']:.0f} |" + (f" {lift[name]} |" if lift else "")
        )
    return "\n".join(rows)


def run_frontier(args: Args) -> None:
    """`overopt compare` into benchmarks/out/frontier-<testbed>[-<preset>], then its tables to RESULTS.md."""
    from overopt.report.frontier import frontier_markdown
    from overopt.report.mechanisms import mechanism_verdicts

    key = args.testbed + ("" if args.preset == "default" else f"-{args.preset}") + (f"-{args.tag}" if args.tag else "")
    out = OUT_ROOT / f"frontier-{key}"
    argv = ["compare", "--testbed", args.testbed, "--preset", args.preset, "--out", str(out),
            "--seeds", str(args.seeds), *(f"--{item}" for item in args.extra)]  # fmt: skip
    for flag, value in (("--jobs", args.jobs), ("--grid", args.grid), ("--grid-methods", args.grid_methods)):
        if value:
            argv += [flag, str(value)]
    overopt_main(argv)
    frontier = read_json(out / "frontier.json")
    invocations = [i for i in read_json(out / "compare_timing.json")["invocations"] if i["ran"]]
    for i in invocations:  # logs written before `--workers` became `--jobs`
        i.setdefault("jobs", i.get("workers"))
    summary = read_json(out / "summary.json")
    command = f"python experiments/compare_methods.py --frontier --testbed {args.testbed} --preset {args.preset} " + (
        f"--seeds {args.seeds}" + "".join(f" --{k.replace('_', '-')} {v}" for k, v in
        (("jobs", args.jobs), ("grid", args.grid), ("grid_methods", args.grid_methods), ("tag", args.tag)) if v)
    )  # fmt: skip
    strengths = [
        f"| `{name}` | `{m['strength_key'] or '—'}` | "
        + ", ".join(f"{p['knob']}: {_fmt_ci(p['strength'])}" for p in m["points"] if p["strength"]["n"])
        + " |"
        for name, m in frontier["methods"].items()
        if m["strength_key"]
    ]
    verdicts = [f"- {item['verdict']}" for item in mechanism_verdicts(summary)]
    body = "\n".join([
        # the head without its closing blank line: the wall time continues its block
        *section_head(f"Frontier at matched KL: `{args.preset}` preset, testbed `{frontier['testbed']}`", command,
                      machine_note="  ")[:-1],
        "Wall time of the runs (the shared stages come before; reused runs are not counted): "
        + "; ".join(f"{i['wall_s']:.0f} s for {i['ran']} runs ({i['jobs']} processes × "
                    f"{i['threads_per_run']} torch thread, {i['date'][:10]})" for i in invocations) + ".",
        "",
        f"SFT gold {frontier['sft_gold']:.3f}. Seeds {frontier['seeds']}; each method's grid is in "
        "`src/overopt/presets/frontier.yaml`; 95 % Student t intervals over seeds.",
        "",
        frontier_markdown(frontier),
        "**Effective strength per grid point** (run mean of the method's strength figure, [95 % CI]):",
        "",
        "| method | figure | strength per point |",
        "|---|---|---|",
        *strengths,
        "",
        "**Mechanisms against gold** (all runs of this comparison):",
        "",
        *verdicts,
    ])  # fmt: skip
    write_section(f"compare_methods:frontier:{key}", body)
    print(body)


def _fmt_ci(ci: dict) -> str:
    return f"{ci['mean']:.3g} [{ci['lo']:.3g}, {ci['hi']:.3g}]"


def run(args: Args) -> None:
    if args.frontier:
        return run_frontier(args)
    if args.testbed == "summarize":
        out, key = OUT_ROOT / args.preset, args.preset
    else:
        key = args.testbed + ("" if args.preset == "default" else f"-{args.preset}")
        out = OUT_ROOT / key
    out = Path(args.out) if args.out else out
    argv = ["run", "--testbed", args.testbed, "--preset", args.preset, "--out", str(out),
            "--methods", args.methods, "--seeds", str(args.seeds),
            "--sweep", args.sweep, *(f"--{item}" for item in args.extra)]  # fmt: skip
    overopt_main(argv)
    summary = read_json(out / "summary.json")
    # OUT may hold earlier runs too: tabulate the runs of this invocation only.
    cfg = ExperimentConfig.model_validate(yaml.safe_load((out / "config.yaml").read_text()))
    names = [name for name, _, _ in cfg.method_variants()]
    rm = (summary["stages"].get("rm") or {}).get("metrics")
    command = (
        f"python experiments/compare_methods.py --preset {args.preset} --seeds {args.seeds} --methods {args.methods}"
    )
    if args.testbed != "summarize":
        command = command.replace("--preset", f"--testbed {args.testbed} --preset")
    proxy = (
        f"Proxy RM held-out accuracy against gold: {rm['heldout_accuracy']:.3f}."
        if rm
        else "The proxy is the rule reward (format rewards + correctness): nothing learned."
    )
    if summary["testbed"] == "judge":
        proxy = proxy.replace("Proxy RM held-out accuracy against gold", "Judge held-out accuracy (right/wrong)")
    if args.sweep:
        command += f" --sweep {args.sweep}"
    if args.extra:
        command += " --extra " + " ".join(args.extra)
    if args.out:
        command += f" --out {args.out}"
    lift, lift_note = None, ""
    if args.baseline:
        command += f" --baseline {args.baseline}"
        lift = lifts(out, Path(args.baseline), names, args.seeds)
        lift_note = (
            f" *Lift*: final gold minus the gold of `none`'s own trajectory (from `{args.baseline}`, same RM and"
            " seeds) at the run's final KL, mean [95 % Student t interval] over the seeds where none got that far."
        )
    body = "\n".join([
        *section_head(f"Mitigation comparison: `{args.preset}` preset, testbed `{summary['testbed']}`"
                      + (f" — {args.tag}" if args.tag else ""), command),
        f"{proxy} Mean ± sample std (ddof = 1) over "
        f"{args.seeds} seeds, sorted by final gold reward. *Hacked*: gold rose above SFT, then lost ≥ 30 % of the gain "
        "while the proxy kept rising." + lift_note,
        "",
        table(summary, names, lift),
    ])  # fmt: skip
    write_section(f"compare_methods:{key}" + (f":{args.tag}" if args.tag else ""), body)
    print(body)


if __name__ == "__main__":
    run(tyro.cli(Args, args=sys.argv[1:]))
