"""Runs per hour on a `summarize` frontier grid, this code against an earlier revision, side by side in one run.

    python benchmarks/frontier_speed_vs_filing.py                  # against 9f29858 (issue 28's filing)
    python benchmarks/frontier_speed_vs_filing.py --seeds 1 --no-write

Issue 28 asks for 2.5× the runs per hour of `--jobs 2` as it was when the issue was filed. The earlier revision
is checked out with `git worktree` (a temporary folder) and run from its own src/ through PYTHONPATH, in this
environment; this revision runs as installed. Each runs `overopt compare --grid GRID --seeds N --jobs J` into
its own OUT (its stages built first: their time is not counted), then the runs' wall time is read from
OUT/compare_timing.json (the first run's start to the last one's end). The two versions run one after the
other on an otherwise idle machine; the earlier one first.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import tyro

from overopt.results import markdown_table, section_head, write_section

ROOT = Path(__file__).resolve().parents[1]
FILING = "9f29858"  # the last commit before the work of issue 28 (088e60d: runs trained together)


@dataclasses.dataclass
class Args:
    rev: str = FILING
    """The earlier revision to compare against."""
    grid: str = "benchmarks/grids/frontier-labs-small.yaml"
    """The frontier grid both versions run (none, kl and chi2 at three strengths each)."""
    seeds: int = 2
    jobs: int = 2
    out: str = "benchmarks/out/speed-vs-filing"
    write: bool = True
    """Write the table into benchmarks/RESULTS.md."""
    repeat: int = 1
    """Which repetition of this comparison this is: 2 and up get sections of their own beside the first's."""
    extra: str = ""
    """overopt arguments for this revision's command only (a knob the filing lacks), in a section of its own:
    --extra='--ocrm.warm-start True'."""


def compare(out: Path, args: Args, pythonpath: str | None, extra: tuple[str, ...] = ()) -> dict:
    env = dict(os.environ, PYTHONPATH=pythonpath) if pythonpath else dict(os.environ)
    cmd = [sys.executable, "-m", "overopt", "compare", "--grid", str(ROOT / args.grid), "--seeds", str(args.seeds),
           "--jobs", str(args.jobs), "--out", str(out), *extra]  # fmt: skip
    # The runs are what is timed: a version whose report fails after them (9f29858's frontier plot, on an
    # interval with one seed) still counts, with its exit status in the table.
    rc = subprocess.run(cmd, env=env, cwd=ROOT).returncode
    runs = [i for i in json.loads((out / "compare_timing.json").read_text())["invocations"] if i.get("ran")]
    return {"ran": sum(i["ran"] for i in runs), "wall_s": sum(i["wall_s"] for i in runs), "rc": rc}


def main(args: Args) -> None:
    out = ROOT / args.out
    shutil.rmtree(out, ignore_errors=True)
    rows, per_hour = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "rev"
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), args.rev], check=True, cwd=ROOT)
        try:
            now = "this revision" + (f", `{args.extra}`" if args.extra else "")
            for name, path in ((f"{args.rev} (filing)", str(tree / "src")), (now, None)):
                extra = () if path else tuple(shlex.split(args.extra))
                t = compare(out / ("rev" if path else "now"), args, path, extra)
                per_hour[name] = t["ran"] / t["wall_s"] * 3600
                rows.append((name, t))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], check=False, cwd=ROOT)
    base = next(iter(per_hour.values()))
    table = [f"| {name} | {t['ran']} | {t['wall_s']:.1f} | {per_hour[name]:.0f} | {per_hour[name] / base:.2f}× "
             f"| {t['rc']} |" for name, t in rows]  # fmt: skip
    default_grid = args.grid == Args.grid
    command = (f"python benchmarks/frontier_speed_vs_filing.py --rev {args.rev} --seeds {args.seeds} --jobs {args.jobs}"
               + ("" if default_grid else f" --grid {args.grid}"))  # fmt: skip
    if args.repeat > 1:
        command += f" --repeat {args.repeat}"
    if args.extra:
        command += f" --extra='{args.extra}'"
    title = "Runs per hour on a frontier grid: this revision against issue 28's filing"
    body = [*section_head(title + (f" (repeat {args.repeat})" if args.repeat > 1 else ""), command),
            f"`overopt compare --grid {args.grid} --seeds {args.seeds} --jobs {args.jobs}` (testbed `summarize`, "
            "default preset) by each version into its own OUT, one after the other; runs wall time from "
            "OUT/compare_timing.json (stages not counted).", "",
            *markdown_table(["version", "runs", "runs wall s", "runs per hour", "speed-up", "rc"], table)]  # fmt: skip
    print("\n".join(body))
    if args.write:
        # one section per grid: the small grid's and the full frontier's stand side by side
        section = "frontier-speed-vs-filing" + ("" if default_grid else f"-{Path(args.grid).stem}")
        section += f"-repeat{args.repeat}" if args.repeat > 1 else ""
        slug = "-".join(a.strip("-").replace(".", "-").replace("_", "-") for a in shlex.split(args.extra))
        section += f"-{slug}" if slug else ""  # e.g. -ocrm-warm-start-True
        write_section(section, "\n".join(body))


if __name__ == "__main__":
    main(tyro.cli(Args))
