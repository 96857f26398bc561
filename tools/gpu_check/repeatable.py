"""GPU check, step 2c: is the same command bit-for-bit repeatable on this device?

    python tools/gpu_check/repeatable.py WORK RESULT_JSON [--preset smoke] [overopt args...]

`overopt run --preset PRESET --methods none,kl --seeds 1` twice from nothing, into WORK/a and WORK/b, then the
comparison tests/test_resume.py makes of a resumed run: every metrics.jsonl row (all keys but the wall-clock
times), every samples.jsonl line and every tensor of every safetensors file under artifacts/ and runs/. On the
CPU this holds (the resume tests); on CUDA atomic adds (the embedding's backward, scatter_add) may reorder
float sums, and overopt does not turn on torch.use_deterministic_algorithms: this step says whether it matters.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from safetensors.torch import load_file
from stages import run_with_timeout  # this folder is the script's: on sys.path


def rows(path: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if "wall" not in k} for line in path.open() if line.strip()]


def differences(a: Path, b: Path) -> list[str]:
    """What differs between two OUTs of the same command (empty: bit-for-bit the same)."""
    out = []
    for name in ("metrics.jsonl", "samples.jsonl"):
        files = sorted(p.relative_to(a) for p in a.glob(f"runs/**/{name}"))
        if not files:
            out.append(f"no {name} in {a}")
        for rel in files:
            if not (b / rel).exists():
                out.append(f"{rel}: missing in the second OUT")
            elif (rows(a / rel) if name == "metrics.jsonl" else (a / rel).read_text()) != (
                rows(b / rel) if name == "metrics.jsonl" else (b / rel).read_text()
            ):
                out.append(f"{rel}: differs")
    for rel in sorted(p.relative_to(a) for p in a.glob("**/*.safetensors") if "checkpoints" not in p.parts):
        if not (b / rel).exists():
            out.append(f"{rel}: missing in the second OUT")
            continue
        x, y = load_file(a / rel), load_file(b / rel)
        changed = [k for k in x if k not in y or not bool((x[k] == y[k]).all())]
        if changed:
            out.append(f"{rel}: {len(changed)} of {len(x)} tensors differ (first: {changed[0]})")
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("work")
    p.add_argument("result")
    p.add_argument("--preset", default="smoke")
    p.add_argument("--timeout", type=float, default=60, help="seconds for each of the two commands")
    args, extra = p.parse_known_args()
    work = Path(args.work)
    result: dict = {"preset": args.preset}
    for side in ("a", "b"):
        cmd = [sys.executable, "-m", "overopt", "run", "--preset", args.preset, "--methods", "none,kl", "--seeds", "1",
               "--out", str(work / side), *extra]  # fmt: skip
        code, timed_out, wall = run_with_timeout(cmd, args.timeout)
        result[side] = {"command": "overopt " + " ".join(cmd[3:]), "exit": code, "timed_out": timed_out,
                        "wall_s": round(wall, 2)}  # fmt: skip
    finished = all(result[side]["exit"] == 0 for side in ("a", "b"))
    result["differences"] = differences(work / "a", work / "b") if finished else None
    result["repeatable"] = finished and not result["differences"]
    Path(args.result).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0 if result["repeatable"] else 1


if __name__ == "__main__":
    sys.exit(main())
