"""GPU check, step 2: wall time per stage of `overopt run --preset default --methods kl --seeds 1`, capped.

    python tools/gpu_check/stages.py RUN_DIR RESULT_JSON --timeout 200 [--threads 0] [overopt args...]

As benchmarks/stage_times.py measures (each stage's stage.json `wall_s`; an RL run's last `wall_s` in its
metrics.jsonl; "start-up and report" is the rest of the process's wall time), but with a time limit: on
timeout the run is stopped and the stages finished so far (and the RL run's progress) are recorded. The
CPU figures of RESULTS.md's section `stage-times-summarize-default` are put beside them.

With config `device` auto (the default) the built-in testbeds' stages and runs go to the GPU when torch sees
one (issue 28); the probe log (GPU_CHECK_CUDA_LOG) shows whether CUDA was touched and how much memory it took.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def results_section(name: str) -> str | None:
    """The text of benchmarks/RESULTS.md's section `name` (between its start and end markers), None if missing."""
    text = (ROOT / "benchmarks" / "RESULTS.md").read_text()
    m = re.search(rf"<!-- {re.escape(name)}:start -->(.*?)<!-- {re.escape(name)}:end -->", text, re.S)
    return m.group(1) if m else None


def provenance(section: str) -> dict:
    """The machine and date a RESULTS.md section was measured on."""
    machine, date = re.search(r"Machine: (.*)", section), re.search(r"Date: (\S+)", section)
    return {"machine": machine.group(1).strip() if machine else None, "date": date.group(1) if date else None}


def cpu_reference() -> dict:
    """The rows of RESULTS.md's per-stage section (the 2-core CPU figures), by part name."""
    section = results_section("stage-times-summarize-default")
    if section is None:
        return {}
    rows = dict(re.findall(r"^\| \*{0,2}([^|*]+?)\*{0,2} \| \*{0,2}([\d.]+)\*{0,2} \|", section, re.M))
    return {**provenance(section), "rows": {k.strip(): float(v) for k, v in rows.items()}}


def run_with_timeout(cmd: list[str], timeout: float, grace: float = 15, cwd: Path | None = None):
    """Run `cmd`; at `timeout` send SIGTERM (overopt checkpoints and stops), kill it `grace` s later.
    Returns (exit status, timed out, wall seconds)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd)
    timed_out = False
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
    return code, timed_out, time.perf_counter() - start


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("result")
    p.add_argument("--timeout", type=float, default=200)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--preset", default="default")
    p.add_argument("--methods", default="kl")
    args, extra = p.parse_known_args()
    out = Path(args.out)
    cmd = [sys.executable, "-m", "overopt", "run", "--preset", args.preset, "--methods", args.methods, "--seeds", "1",
           "--out", str(out), "--threads", str(args.threads), *extra]  # fmt: skip
    print(" ".join(cmd[1:]), flush=True)
    code, timed_out, total = run_with_timeout(cmd, args.timeout)
    rows = []
    stages = sorted(out.glob("artifacts/*/stage.json"), key=lambda s: s.stat().st_mtime)  # pipeline order
    for s in stages:
        rows.append({"part": f"stage `{s.parent.name}`", "wall_s": json.loads(s.read_text())["wall_s"]})
    for metrics in sorted(out.glob("runs/*/seed*/metrics.jsonl")):
        lines = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        if lines:
            last = lines[-1]
            rows.append({"part": f"RL run `{metrics.parent.parent.name}` {metrics.parent.name}",
                         "wall_s": last.get("wall_s"), "last_step": last.get("step")})  # fmt: skip
    finished = code == 0 and not timed_out
    if finished:
        rows.append({"part": "start-up and report", "wall_s": total - sum(r["wall_s"] or 0 for r in rows)})
    in_progress = [d.name for d in (out / "artifacts").glob(".*.tmp")] if (out / "artifacts").exists() else []
    # A stage stopped by the timeout leaves its last checkpoint (overopt checkpoints on SIGTERM): its step.
    checkpoints = {}
    for state in sorted(out.glob("checkpoints/**/step-*/state.json")):
        name = str(state.parent.parent.relative_to(out / "checkpoints"))
        try:
            checkpoints[name] = max(checkpoints.get(name, 0), json.loads(state.read_text())["step"])
        except (OSError, ValueError, KeyError):
            pass
    try:
        import torch

        cuda_note = {"cuda_available_in_parent": torch.cuda.is_available()}
    except Exception as err:  # noqa: BLE001
        cuda_note = {"torch_error": repr(err)}
    result = {
        "command": "overopt " + " ".join(cmd[3:]),
        "exit": code,
        "timed_out": timed_out,
        "timeout_s": args.timeout,
        "finished": finished,
        "total_s": round(total, 2),
        "rows": rows,
        "unfinished_stage_dirs": in_progress,
        "checkpointed_steps": checkpoints,
        "cpu_count": os.cpu_count(),
        "threads": args.threads,
        "cpu_reference": cpu_reference(),
        **cuda_note,
    }
    Path(args.result).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0 if finished else 1


if __name__ == "__main__":
    sys.exit(main())
