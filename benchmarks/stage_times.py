"""Wall time of `overopt run` per stage, from nothing, under each condition side by side in one run: to RESULTS.md.

    python benchmarks/stage_times.py                      # summarize, default preset (the main job)
    python benchmarks/stage_times.py --testbed math_format --conditions default

Each condition is one fresh run of the preset into its own temporary OUT (nothing reused), one after the other:
`default` (the command as a user types it) and `unbatched` (`--batch_runs False --compute_once False`: runs
trained one after another with the sampling and evaluation passes of before issue 28, the way to reproduce
older results). Stage times come from each stage's stage.json, the RL runs' time from OUT/run_timing.json (runs
trained together overlap, so their own `wall_s` do not add up); "start-up and report" is the rest of the
process's wall time (imports, testbed, evaluation prompts, summary, plots, report.html).
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tyro

from overopt.io import read_json
from overopt.results import section_head, write_section

CONDITIONS = {"default": [], "unbatched": ["--batch_runs", "False", "--compute_once", "False"]}


@dataclasses.dataclass(frozen=True)
class Args:
    testbed: str = "summarize"
    """overopt testbed."""
    preset: str = "default"
    """overopt preset."""
    threads: int = 0
    """torch CPU threads (0 = all cores), as `overopt run --threads`."""
    conditions: tuple[str, ...] = ("unbatched", "default")
    """Which of `unbatched` and `default` to run, in this order."""


def timed_run(args: Args, flags: list[str]) -> dict[str, float]:
    """One fresh `overopt run` with `flags`: wall seconds per part, and the total."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        cmd = [sys.executable, "-m", "overopt", "run", "--testbed", args.testbed, "--preset", args.preset,
               "--out", str(out), "--threads", str(args.threads), *flags]  # fmt: skip
        start = time.perf_counter()
        subprocess.run(cmd, check=True)
        total = time.perf_counter() - start
        stages = sorted(out.glob("artifacts/*/stage.json"), key=lambda s: s.stat().st_mtime)  # pipeline order
        parts = {f"stage `{s.parent.name}`": read_json(s)["wall_s"] for s in stages}
        timing = read_json(out / "run_timing.json")["invocations"][-1]
        parts[f"RL runs ({timing['runs']}; groups {timing['groups']}, {timing['jobs']} at once)"] = timing["wall_s"]
    parts["start-up and report"] = total - sum(parts.values())
    parts["**total**"] = total
    return parts


def run(args: Args) -> None:
    unknown = set(args.conditions) - set(CONDITIONS)
    if unknown:
        raise SystemExit(f"stage_times: unknown conditions {sorted(unknown)}; known: {sorted(CONDITIONS)}")
    measured = {name: timed_run(args, CONDITIONS[name]) for name in args.conditions}
    rows = list(dict.fromkeys(part.split(" (")[0] for parts in measured.values() for part in parts))

    def cell(parts: dict[str, float], row: str) -> str:
        found = [(p, t) for p, t in parts.items() if p.split(" (")[0] == row]
        if not found:
            return "–"
        part, t = found[0]
        detail = f" ({part.split(' (', 1)[1]}" if " (" in part else ""
        return f"{t:.1f}{detail}"

    command = f"python benchmarks/stage_times.py --testbed {args.testbed} --preset {args.preset}"
    flags = "; ".join(f"`{n}`: {' '.join(CONDITIONS[n]) or 'no flags'}" for n in args.conditions)
    body = "\n".join([
        *section_head(f"Wall time per stage: `overopt run --testbed {args.testbed} --preset {args.preset}`", command),
        f"Each condition from nothing, one after the other in this run ({flags}). Wall seconds.",
        "",
        "| part | " + " | ".join(args.conditions) + " |",
        "|---|" + "---|" * len(args.conditions),
        *(f"| {row} | " + " | ".join(cell(measured[n], row) for n in args.conditions) + " |" for row in rows),
    ])  # fmt: skip
    if len(args.conditions) == 2:
        a, b = (measured[n]["**total**"] for n in args.conditions)
        body += f"\n\n`{args.conditions[1]}` takes {b / a:.2f}× the wall time of `{args.conditions[0]}`."
    print(body)
    write_section(f"stage-times-{args.testbed}-{args.preset}", body)


if __name__ == "__main__":
    run(tyro.cli(Args))
