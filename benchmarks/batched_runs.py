"""Runs trained together (`batch_runs`, overopt.batching) against runs trained apart, side by side in one run:
runs per hour, and final gold over many seeds each way, to RESULTS.md (issue 28).

    python benchmarks/batched_runs.py                             # default preset, `none`, 10 seeds (~40 min)
    python benchmarks/batched_runs.py --preset smoke --seeds 2 --no-write   # a quick check

The preset's shared stages are trained once (or reused) in benchmarks/out/stages-<testbed>-<preset>. Then the
same runs (`--methods` × `--seeds`) go through three conditions, each into a fresh OUT whose artifacts/ link to
those stages: runs apart with `--jobs 2` (the way before batching: one process per core), runs together with
`--jobs 1` (one group, both cores), and runs together with `--jobs 2` (two groups, one core each). Batched runs
give the same metrics.jsonl rows whatever the grouping at the same torch threads (tests/test_batching.py; here
the threads differ between conditions, so the rows do too), and differ from unbatched ones by float rounding
(the stacked sampler's logits differ by ~1e-7), which the chaotic dynamics of RL then amplify: equal *in
distribution* is what is claimed, and measured here as the paired per-seed difference of final gold, batched −
apart, with its 95 % Student t interval over seeds.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import tempfile
import time
from pathlib import Path

import tyro
from jobs_speedup import rows
from oversubscription import linked_out, overopt, shared_stages, usable_cores

from overopt.report.table import format_ci
from overopt.results import section_head, write_section
from overopt.stats import interval

CONDITIONS = (("apart, --jobs 2", False, 2), ("together, --jobs 1", True, 1), ("together, --jobs 2", True, 2))


@dataclasses.dataclass(frozen=True)
class Args:
    testbed: str = "summarize"
    """overopt testbed."""
    preset: str = "default"
    """overopt preset (its stages are reused; its methods and seeds are replaced by the two below)."""
    methods: str = "none"
    """`--methods` of every condition."""
    seeds: int = 10
    """`--seeds` of every condition (the sample of the distribution comparison)."""
    extra: tuple[str, ...] = ()
    """Extra `overopt run` overrides as NAME=VALUE (for the stages and the runs alike)."""
    write: bool = True
    """Write the table to RESULTS.md (--no-write: print it only)."""


def final_gold(found: dict[str, list[dict]]) -> dict[str, float]:
    """Each run's (method/seed) gold at its last evaluation."""
    return {run: rows_[-1]["gold_reward"] for run, rows_ in found.items()}


def run(args: Args) -> None:
    stages = shared_stages(args.testbed, args.preset, args.extra)
    timings, golds = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, batched, jobs in CONDITIONS:
            out = linked_out(stages, Path(tmp) / label.replace(" ", "").replace(",", "-"))
            cmd = overopt("--out", str(out), "--jobs", str(jobs), "--methods", args.methods, "--seeds",
                          str(args.seeds), "--batch-runs", str(batched), testbed=args.testbed, preset=args.preset,
                          extra=args.extra)  # fmt: skip
            start = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            command_s = time.perf_counter() - start
            (timing,) = json.loads((out / "run_timing.json").read_text())["invocations"]
            found = rows(out)
            timings[label] = (timing["wall_s"], command_s, timing["threads_per_run"], len(found))
            golds[label] = final_gold(found)
            print(f"{label}: runs {timing['wall_s']:.1f} s, command {command_s:.1f} s", flush=True)
    base_s = timings[CONDITIONS[0][0]][0]
    table = [
        f"| {label} | {threads} | {runs_s:.1f} | {command_s:.1f} | {3600 * n / runs_s:.0f} | {base_s / runs_s:.2f}× |"
        for label, (runs_s, command_s, threads, n) in timings.items()
    ]
    apart, together = golds[CONDITIONS[0][0]], golds[CONDITIONS[1][0]]
    diff = interval(together[run] - apart[run] for run in sorted(apart))
    command = (f"python benchmarks/batched_runs.py --testbed {args.testbed} --preset {args.preset} --methods "
               f"{args.methods} --seeds {args.seeds}" + "".join(f" --extra {e}" for e in args.extra))  # fmt: skip
    body = "\n".join([
        *section_head(f"Runs trained together: `overopt run --testbed {args.testbed} --preset {args.preset} "
                      "--batch-runs`", command, machine_note=f"; {usable_cores()} usable cores"),
        f"The same {len(apart)} runs (`--methods {args.methods}`, seeds 0–{args.seeds - 1}), the preset's shared "
        "stages reused, in three conditions one after another. *Runs*: from the first run's start to the last "
        "one's end (OUT/run_timing.json); *command*: the whole `overopt run`.",
        "",
        "| condition | torch threads per process | runs wall s | command wall s | runs per hour | speed-up |",
        "|---|---|---|---|---|---|",
        *table,
        "",
        f"Final gold, mean [95 % t interval over seeds]: apart {format_ci(interval(apart.values()))}, together "
        f"{format_ci(interval(together.values()))}; paired per seed, together − apart: "
        f"{format_ci(diff, signed=True)} (n = {diff['n']}).",
    ])  # fmt: skip
    print(body)
    if args.write:
        write_section(f"batched-runs-{args.testbed}-{args.preset}", body)


if __name__ == "__main__":
    run(tyro.cli(Args))
