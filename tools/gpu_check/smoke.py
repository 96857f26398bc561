"""GPU check, step 1: `overopt run --testbed hf --preset smoke` on the tiny local models, in this process.

    python tools/gpu_check/smoke.py WORLD_JSON RUN_DIR RESULT_JSON [extra overopt args...]

WORLD_JSON is what make_tiny_hf.py wrote. The run uses `--hf.dtype auto` (bfloat16 autocast on CUDA,
float32 on the CPU). Running in-process lets us read torch.cuda.max_memory_allocated afterwards: a
peak above zero shows that the hf testbed really placed its models on the GPU. Writes RESULT_JSON with
the wall time, whether every logged figure is finite, the last row of each run and the CUDA figures.
"""

from __future__ import annotations

import json
import math
import sys
import time
import traceback
from pathlib import Path


def _numbers(row: dict):
    for k, v in row.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            yield k, v


def main() -> int:
    world = json.loads(Path(sys.argv[1]).read_text())
    out, result_path, extra = Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4:]
    import torch

    cuda = torch.cuda.is_available()
    result: dict = {
        "cuda_available": cuda,
        "device_name": torch.cuda.get_device_name(0) if cuda else None,
        "torch": torch.__version__,
    }
    argv = [
        "run", "--testbed", "hf", "--preset", "smoke", "--out", str(out), "--hf.policy", world["policy"],
        "--hf.dataset", world["jsonl"], "--hf.gold-rm", world["gold"], "--hf.dtype", "auto", *extra,
    ]  # fmt: skip
    result["command"] = "overopt " + " ".join(argv)
    from overopt.cli import main as overopt_main

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    try:
        overopt_main(argv)
        result["exit"] = 0
    except SystemExit as exit_:
        result["exit"] = exit_.code
    except Exception:  # noqa: BLE001 - record and go on
        result["exit"] = "exception"
        result["traceback"] = traceback.format_exc()[-4000:]
    result["wall_s"] = round(time.perf_counter() - start, 2)
    if cuda:
        result["cuda_peak_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 2)
        result["ran_on_cuda"] = torch.cuda.max_memory_allocated() > 0
    # Figures: every numeric value of every metrics row must be finite.
    runs, bad = {}, []
    for metrics in sorted(out.glob("runs/*/seed*/metrics.jsonl")):
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        name = f"{metrics.parent.parent.name}/{metrics.parent.name}"
        for row in rows:
            bad += [f"{name} step {row.get('step')}: {k}={v}" for k, v in _numbers(row) if not math.isfinite(v)]
        last = rows[-1] if rows else {}
        runs[name] = {
            "steps": [r.get("step") for r in rows],
            "last": {k: v for k, v in last.items() if k in ("step", "proxy_reward", "gold_reward", "kl_sft",
                                                             "train/wall_s", "wall_s", "entropy", "length")},
        }  # fmt: skip
    result["runs"] = runs
    result["nonfinite"] = bad[:50]
    result["figures_finite"] = bool(runs) and not bad
    summary = out / "summary.json"
    result["summary_json"] = summary.exists()
    stages = {}
    for stage in sorted(out.glob("artifacts/*/stage.json")):
        data = json.loads(stage.read_text())
        stages[stage.parent.name] = data.get("wall_s")
    result["stage_wall_s"] = stages
    result["ok"] = result["exit"] == 0 and result["figures_finite"]
    result_path.write_text(json.dumps(result, indent=1, default=str))
    print(json.dumps(result, indent=1, default=str))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
