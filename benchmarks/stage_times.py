"""Wall time of `overopt run` per stage: one fresh run of a preset, its stages' times to RESULTS.md.

    python benchmarks/stage_times.py                      # summarize, default preset (the main job)
    python benchmarks/stage_times.py --testbed math_format

The run goes to a fresh temporary OUT (nothing reused). Stage times come from each stage's
stage.json, RL run times from the runs' last `wall_s`; "start-up and report" is the rest of the
process's wall time (imports, testbed, evaluation prompts, summary, plots, report.html).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tyro

from overopt.io import read_json
from overopt.results import machine, write_section


@dataclasses.dataclass(frozen=True)
class Args:
    testbed: str = "summarize"
    """overopt testbed."""
    preset: str = "default"
    """overopt preset."""
    threads: int = 0
    """torch CPU threads (0 = all cores), as `overopt run --threads`."""


def run(args: Args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        cmd = [sys.executable, "-m", "overopt", "run", "--testbed", args.testbed, "--preset", args.preset,
               "--out", str(out), "--threads", str(args.threads)]  # fmt: skip
        start = time.perf_counter()
        subprocess.run(cmd, check=True)
        total = time.perf_counter() - start
        stages = sorted(out.glob("artifacts/*/stage.json"), key=lambda s: s.stat().st_mtime)  # pipeline order
        rows = [(f"stage `{s.parent.name}`", read_json(s)["wall_s"]) for s in stages]
        for metrics in sorted(out.glob("runs/*/seed*/metrics.jsonl")):
            last = json.loads(metrics.read_text().splitlines()[-1])
            rows.append((f"RL run `{metrics.parent.parent.name}` {metrics.parent.name}", last["wall_s"]))
    rows.append(("start-up and report", total - sum(t for _, t in rows)))
    command = f"python benchmarks/stage_times.py --testbed {args.testbed} --preset {args.preset}"
    body = "\n".join([
        f"## Wall time per stage: `overopt run --testbed {args.testbed} --preset {args.preset}`",
        "",
        f"Command: `{command}`  ",
        f"Date: {datetime.date.today().isoformat()}  ",
        f"Machine: {machine()}",
        "",
        "| part | wall s | share |",
        "|---|---|---|",
        *(f"| {name} | {t:.1f} | {t / total:.0%} |" for name, t in rows),
        f"| **total** | **{total:.1f}** | |",
    ])  # fmt: skip
    print(body)
    write_section(f"stage-times-{args.testbed}-{args.preset}", body)


if __name__ == "__main__":
    run(tyro.cli(Args))
