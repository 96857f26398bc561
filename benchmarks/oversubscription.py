"""Threads of overopt processes that share the cores: RL seconds per update, alone and several at once.

    python benchmarks/oversubscription.py                                   # default preset, to RESULTS.md
    python benchmarks/oversubscription.py --preset smoke --steps 6 --reps 1 --no-write   # a quick check

Two `overopt run` on one 2-core machine, each with as many torch threads as there are cores, once slowed
each other's RL updates by up to about 28×. torch's CPU threads are OpenMP threads (GNU libgomp): after
each parallel operation a thread with nothing to do spins on its core for a while (about 3 ms by
default) before it sleeps, so with more threads than cores the spinning threads take turns on the
cores with the threads that have work, and a model of small operations waits at every one of them.
`OMP_WAIT_POLICY=PASSIVE` makes waiting threads sleep at once (overopt's command line sets it unless
the variable is already set; it must be set before torch is loaded); `GOMP_SPINCOUNT=10000` is a middle
way (spin about 0.1 ms). Waking a sleeping thread costs time at every operation, so passive waiting
can be slower for a process that has the cores to itself: the table shows both sides.

The preset's shared stages are trained once (or reused) in benchmarks/out/stages-<testbed>-<preset>.
Then, for each condition, P copies of `overopt run --methods none --seeds 1 --rl.steps N --eval.every N
--eval.n_prompts 32` start at once, each in its own OUT whose artifacts/ links to those stages, and each
run's seconds per update are read from its metrics.jsonl (`train/wall_s` of the last row: one small
evaluation and N updates, ÷ N). Conditions repeat `--reps` times, in a rotated order; the table gives
medians over processes and repetitions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tyro

from overopt.results import section_head, write_section


@dataclasses.dataclass(frozen=True)
class Args:
    testbed: str = "summarize"
    """overopt testbed."""
    preset: str = "default"
    """overopt preset."""
    steps: int = 20
    """RL updates per run."""
    processes: int = 2
    """overopt processes at once in the shared conditions."""
    reps: int = 3
    """Repetitions of every condition."""
    extra: tuple[str, ...] = ()
    """Extra `overopt run` overrides as NAME=VALUE (for the stages and the runs alike)."""
    write: bool = True
    """Write the table to RESULTS.md (--no-write: print it only)."""


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def overopt(*argv: str, testbed: str, preset: str, extra: tuple[str, ...] = ()) -> list[str]:
    """The command line of `overopt run` on a testbed and preset, with overrides NAME=VALUE."""
    overrides = [part for item in extra for part in (f"--{item.partition('=')[0]}", item.partition("=")[2])]
    return [sys.executable, "-m", "overopt", "run", "--testbed", testbed, "--preset", preset, *overrides, *argv]


def shared_stages(testbed: str, preset: str, extra: tuple[str, ...] = ()) -> Path:
    """An OUT holding the preset's finished shared stages (trained by a one-update run the first time)."""
    key = f"{testbed}-{preset}" + (f"-{hashlib.sha256(' '.join(extra).encode()).hexdigest()[:8]}" if extra else "")
    out = Path(__file__).parent / "out" / f"stages-{key}"
    cmd = overopt("--out", str(out), "--methods", "none", "--seeds", "1", "--rl.steps", "1", "--eval.n_prompts", "8",
                  testbed=testbed, preset=preset, extra=extra)  # fmt: skip
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return out


def linked_out(stages: Path, out: Path) -> Path:
    """A fresh OUT whose artifacts/ is the stages' (so only the runs are computed)."""
    out.mkdir(parents=True)
    (out / "artifacts").symlink_to((stages / "artifacts").resolve())
    return out


WAITING = {  # label -> environment; OMP_WAIT_POLICY "" is the OpenMP library's own default
    "library default (spin ≈3 ms, then sleep)": {"OMP_WAIT_POLICY": ""},
    "`GOMP_SPINCOUNT=10000` (spin ≈0.1 ms)": {"OMP_WAIT_POLICY": "", "GOMP_SPINCOUNT": "10000"},
    "`OMP_WAIT_POLICY=PASSIVE` (overopt's default)": {"OMP_WAIT_POLICY": "PASSIVE"},
}
PASSIVE_WAIT = list(WAITING)[-1]


def run_condition(args: Args, stages: Path, tmp: Path, processes: int, threads: int, wait: str) -> list[float]:
    """Start `processes` RL runs at once; each one's seconds per update."""
    outs, procs = [], []
    env = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"} | WAITING[wait]
    for i in range(processes):
        out = linked_out(stages, tmp / f"{time.monotonic_ns()}-{i}")
        cmd = overopt("--out", str(out), "--methods", "none", "--seeds", "1", "--rl.steps", str(args.steps),
                      "--eval.every", str(args.steps), "--eval.n_prompts", "32", "--threads", str(threads),
                      testbed=args.testbed, preset=args.preset, extra=args.extra)  # fmt: skip
        outs.append(out)
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode:
            raise SystemExit(f"overopt run failed ({proc.returncode}):\n{err[-2000:]}")
    per_update = []
    for out in outs:
        last = json.loads((out / "runs" / "none" / "seed0" / "metrics.jsonl").read_text().splitlines()[-1])
        per_update.append(last["train/wall_s"] / args.steps)
    return per_update


def run(args: Args) -> None:
    cores, p = usable_cores(), args.processes
    conditions = [  # (label, processes, threads each, waiting)
        *(("alone", 1, cores, wait) for wait in WAITING),
        ("alone", 1, 1, PASSIVE_WAIT),
        *((f"{p} at once", p, cores, wait) for wait in WAITING),
        (f"{p} at once", p, max(1, cores // p), PASSIVE_WAIT),  # overopt run --jobs 2
    ]
    stages = shared_stages(args.testbed, args.preset, args.extra)
    times: dict[int, list[float]] = {i: [] for i in range(len(conditions))}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):
            order = list(range(len(conditions)))
            order = order[rep % len(order) :] + order[: rep % len(order)]
            for i in order:
                label, processes, threads, wait = conditions[i]
                times[i] += run_condition(args, stages, Path(tmp), processes, threads, wait)
                print(f"rep {rep}: {label}, {threads} threads, {wait}: {times[i][-processes:]}")
    base = statistics.median(times[0])
    rows = []
    for i, (label, processes, threads, wait) in enumerate(conditions):
        s = statistics.median(times[i])
        rows.append(
            f"| {label} | {threads} | {wait if threads > 1 else '(no waiting threads)'} | {1000 * s:.0f} "
            f"| {s / base:.2f}× | {processes / s:.1f} |"
        )
    command = f"python benchmarks/oversubscription.py --testbed {args.testbed} --preset {args.preset} " + (
        f"--steps {args.steps} --processes {p} --reps {args.reps}" + "".join(f" --extra {e}" for e in args.extra)
    )
    body = "\n".join([
        *section_head(f"Thread oversubscription: RL updates of overopt processes sharing {cores} cores", command),
        f"`overopt run --testbed {args.testbed} --preset {args.preset} --methods none --seeds 1 "
        f"--rl.steps {args.steps}` (stages reused), one process alone or {p} started at once, each with the "
        f"given torch threads and OpenMP waiting. Seconds per RL update: median over "
        f"processes and {args.reps} repetitions; × alone: against one process alone with all {cores} cores "
        "and the library's default waiting.",
        "",
        "| processes | torch threads each | OpenMP waiting | ms / update | × alone | updates / s, all processes |",
        "|---|---|---|---|---|---|",
        *rows,
    ])  # fmt: skip
    print(body)
    if args.write:
        write_section(f"oversubscription-{args.testbed}-{args.preset}", body)


if __name__ == "__main__":
    run(tyro.cli(Args))
