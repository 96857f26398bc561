"""GPU check, step 2b: runs per hour of the `summarize` frontier grid on this machine, the stages reused.

    python tools/gpu_check/frontier.py RUN_DIR RESULT_JSON --timeout 180 [--jobs 4] [--threads 2] [overopt args...]

RUN_DIR is step 2's OUT (stages.py: the default preset's stages, on the GPU when there is one): `overopt compare
--grid src/overopt/presets/frontier.yaml --seeds 1 --jobs J` runs into it and is stopped at --timeout (SIGTERM: the
runs write their checkpoints). Runs of one process train together (overopt.batching), so few finish inside a
short window; the figure is their progress instead: each run's last logged step over rl.steps, summed
("run equivalents"), per hour of the command's wall time (start-up included). The CPU figure beside it is
RESULTS.md's section `frontier-speed-vs-filing-frontier` (the same grid, `--jobs 2` on the 2-core machine).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import yaml
from stages import provenance, results_section, run_with_timeout  # this folder is the script's: on sys.path

ROOT = Path(__file__).resolve().parents[2]
GRID = "src/overopt/presets/frontier.yaml"


def cpu_reference() -> dict:
    """Runs per hour of this revision's row in RESULTS.md's full-grid section, with its machine and date."""
    section = results_section("frontier-speed-vs-filing-frontier")
    if section is None:
        return {}
    row = re.search(r"^\| this revision \| (\d+) \| ([\d.]+) \| (\d+) \|", section, re.M)
    return {**provenance(section), "runs": int(row.group(1)) if row else None,
            "runs_wall_s": float(row.group(2)) if row else None,
            "runs_per_hour": float(row.group(3)) if row else None}  # fmt: skip


def progress(out: Path, since: float, steps: int) -> dict:
    """Each run's last logged step (runs whose metrics changed after `since`), finished runs, run equivalents."""
    runs = {}
    for metrics in sorted(out.glob("runs/*/seed*/metrics.jsonl")):
        if metrics.stat().st_mtime < since:
            continue  # step 2's own run, or one from before
        lines = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        if lines:
            runs[f"{metrics.parent.parent.name}/{metrics.parent.name}"] = lines[-1].get("step", 0)
    finished = [name for name in runs if (out / "runs" / name / "stage.json").exists()]
    equivalents = sum(min(step, steps) for step in runs.values()) / steps
    return {"runs": runs, "finished": len(finished), "run_equivalents": equivalents}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("result")
    p.add_argument("--timeout", type=float, default=180)
    p.add_argument("--jobs", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--preset", default="default")
    args, extra = p.parse_known_args()
    out = Path(args.out)
    cmd = [sys.executable, "-m", "overopt", "compare", "--preset", args.preset, "--grid", GRID, "--seeds", "1",
           "--jobs", str(args.jobs), "--threads", str(args.threads), "--out", str(out), *extra]  # fmt: skip
    print(" ".join(cmd[1:]), flush=True)
    since = time.time()
    code, timed_out, wall = run_with_timeout(cmd, args.timeout, grace=20, cwd=ROOT)
    steps = yaml.safe_load((out / "config.yaml").read_text())["rl"]["steps"]  # the preset's, as the runs read it
    done = progress(out, since, steps)
    try:
        import torch

        device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    except Exception as err:  # noqa: BLE001
        device = repr(err)
    result = {
        "command": "overopt " + " ".join(cmd[3:]),
        "exit": code,
        "timed_out": timed_out,
        "timeout_s": args.timeout,
        "wall_s": round(wall, 2),
        "device": device,
        **done,
        "runs_per_hour": round(3600 * done["run_equivalents"] / wall, 1) if wall > 0 else None,
        "cpu_reference": cpu_reference(),
    }
    Path(args.result).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1))
    return 0 if done["run_equivalents"] > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
