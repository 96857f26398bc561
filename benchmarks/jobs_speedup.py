"""`overopt run --jobs N` against `--jobs 1`: wall time of a preset's runs, its stages reused, to RESULTS.md.

    python benchmarks/jobs_speedup.py                                       # default preset: none, kl × 3 seeds
    python benchmarks/jobs_speedup.py --preset smoke --seeds 2 --reps 1 --no-write   # a quick check

The preset's shared stages are trained once (or reused) in benchmarks/out/stages-<testbed>-<preset>. Each
repetition then runs `overopt run --jobs N` for every N of `--jobs`, in a rotated order, each into a fresh
OUT whose artifacts/ links to those stages. It records the wall time of the runs from OUT/run_timing.json
(from the first run's start to the last one's end: not the start-up, the stage checks or the report) and
the whole command's. Every N must give the same metrics.jsonl rows (every key but the wall times) as the
first N: the table says so, and the script stops if one does not.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import tyro
from oversubscription import linked_out, overopt, shared_stages, usable_cores

from overopt.results import section_head, write_section


@dataclasses.dataclass(frozen=True)
class Args:
    testbed: str = "summarize"
    """overopt testbed."""
    preset: str = "default"
    """overopt preset (its methods, seeds and sweep are the runs)."""
    jobs: tuple[int, ...] = (1, 2)
    """Values of `overopt run --jobs` to time; the first is the reference for the rows and the speed-up."""
    threads: int = 0
    """`overopt run --threads` (0: usable cores ÷ jobs, overopt's default)."""
    seeds: int = 0
    """`--seeds` (0: the preset's)."""
    reps: int = 3
    """Repetitions of every N."""
    extra: tuple[str, ...] = ()
    """Extra `overopt run` overrides as NAME=VALUE (for the stages and the runs alike)."""
    write: bool = True
    """Write the table to RESULTS.md (--no-write: print it only)."""


def rows(out: Path) -> dict[str, list[dict]]:
    """Every run's metrics.jsonl rows without the wall-clock keys (`wall_s`, `train/wall_s`)."""
    return {
        str(path.parent.relative_to(out / "runs")): [
            {k: v for k, v in json.loads(line).items() if not k.endswith("wall_s")} for line in path.open()
        ]
        for path in sorted((out / "runs").glob("*/seed*/metrics.jsonl"))
    }


def run(args: Args) -> None:
    stages = shared_stages(args.testbed, args.preset, args.extra)
    seeds = ["--seeds", str(args.seeds)] if args.seeds else []
    runs_s: dict[int, list[float]] = {n: [] for n in args.jobs}
    command_s: dict[int, list[float]] = {n: [] for n in args.jobs}
    threads: dict[int, int] = {}
    reference: dict[str, list[dict]] | None = None
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):
            order = list(args.jobs[rep % len(args.jobs) :] + args.jobs[: rep % len(args.jobs)])
            for n in order:
                out = linked_out(stages, Path(tmp) / f"rep{rep}-jobs{n}")
                cmd = overopt("--out", str(out), "--jobs", str(n), "--threads", str(args.threads), *seeds,
                              testbed=args.testbed, preset=args.preset, extra=args.extra)  # fmt: skip
                start = time.perf_counter()
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
                command_s[n].append(time.perf_counter() - start)
                (timing,) = json.loads((out / "run_timing.json").read_text())["invocations"]
                runs_s[n].append(timing["wall_s"])
                threads[n] = timing["threads_per_run"]
                found = rows(out)
                if reference is None:
                    reference = found
                elif found != reference:
                    raise SystemExit(f"--jobs {n} (rep {rep}): metrics.jsonl rows differ from --jobs {args.jobs[0]}")
                print(f"rep {rep}: --jobs {n}: runs {runs_s[n][-1]:.1f} s, command {command_s[n][-1]:.1f} s")
    n_runs = len(reference or {})
    base = statistics.median(runs_s[args.jobs[0]])
    table = [
        f"| {n} | {threads[n]} | {statistics.median(runs_s[n]):.1f} ({min(runs_s[n]):.1f}–{max(runs_s[n]):.1f}) "
        f"| {statistics.median(command_s[n]):.1f} | {base / statistics.median(runs_s[n]):.2f}× | yes |"
        for n in args.jobs
    ]
    command = f"python benchmarks/jobs_speedup.py --testbed {args.testbed} --preset {args.preset} " + (
        "--jobs " + " ".join(map(str, args.jobs)) + f" --threads {args.threads} --reps {args.reps}"
        + (f" --seeds {args.seeds}" if args.seeds else "") + "".join(f" --extra {e}" for e in args.extra)
    )  # fmt: skip
    body = "\n".join([
        *section_head(f"Many runs at once: `overopt run --testbed {args.testbed} --preset {args.preset} --jobs N`",
                      command, machine_note=f"; {usable_cores()} usable cores"),
        f"The preset's {n_runs} runs with its shared stages reused (trained once, before). *Runs*: from the first "
        "run's start to the last one's end (OUT/run_timing.json); *command*: the whole `overopt run`, with "
        f"start-up, stage checks and report. Median (min–max) over {args.reps} repetitions, in a rotated order. "
        "*Same rows*: every metrics.jsonl row equal to those of the first N, every key but the wall times.",
        "",
        "| --jobs | torch threads per run | runs wall s | command wall s | speed-up of the runs | same rows |",
        "|---|---|---|---|---|---|",
        *table,
    ])  # fmt: skip
    print(body)
    if args.write:
        write_section(f"jobs-speedup-{args.testbed}-{args.preset}", body)


if __name__ == "__main__":
    run(tyro.cli(Args))
