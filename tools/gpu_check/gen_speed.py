"""GPU check: generation alone on the ~100M Llama — overopt's sampler against transformers' generate.

    python tools/gpu_check/gen_speed.py --out RESULT_JSON          # CUDA if present, bfloat16 autocast
    python tools/gpu_check/gen_speed.py --small --out /tmp/g.json  # tiny shapes, any device

Rows: 16 prompts × 8 copies (48–64 tokens, left-padded), exactly `--max-new` tokens each (no EOS can end a row:
the cost is that of the full budget), T = 1. Samplers: overopt's `sample_completions` (dynamic KV cache, one
prefill per distinct prompt, eager); its static-cache sampler (`overopt.static_sampling`), eager and with the
decode step compiled (CUDA only: captured graphs; the compilation is in the warm-up call); `generate` with the
dynamic cache; `generate` with the static cache (`cache_implementation="static"`, which transformers compiles on
CUDA); each timed `--reps` times after one warm-up call (the static cache's compilation happens there and is
reported apart).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--small", action="store_true")
    p.add_argument("--max-new", type=int, default=128)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument(
        "--samplers",
        default="overopt,overopt-static,overopt-static-compiled,generate-dynamic,generate-static",
        help="overopt-static-compiled runs on CUDA only (torch.compile of the decode step, CUDA graphs)",
    )
    args = p.parse_args()

    from overopt.models.attention import use_pad_safe_sdpa
    from overopt.models.policy import random_llama
    from overopt.sampling import sample_completions
    from overopt.static_sampling import sample_completions_static

    use_pad_safe_sdpa()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    hidden, layers, heads, vocab, prompts, group, p_min, p_max = (
        (64, 2, 4, 512, 2, 4, 8, 12) if args.small else (768, 10, 12, 8192, 16, 8, 48, 64)
    )
    t = 8 if args.small else args.max_new
    model = random_llama(vocab, hidden, layers, heads, max_positions=p_max + t + 8, seed=0).to(device).eval()
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(p_min, p_max + 1, (prompts,), generator=g).repeat_interleave(group)
    ids = torch.randint(3, vocab, (prompts, p_max), generator=g).repeat_interleave(group, 0)
    mask = (torch.arange(p_max)[None, :] >= (p_max - lengths)[:, None]).long()
    ids = torch.where(mask.bool(), ids, 0).to(device)
    mask = mask.to(device)
    rows = ids.shape[0]
    result = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__,
              "rows": rows, "max_new": t, "params_m": sum(q.numel() for q in model.parameters()) / 1e6,
              "samplers": {}}  # fmt: skip

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def draw(name):
        if name == "overopt":
            roll = sample_completions(model, ids, mask, t, 1.0, eos_id=-1, pad_id=0)
            return roll.completion_ids.shape[1]
        if name.startswith("overopt-static"):
            roll = sample_completions_static(model, ids, mask, t, 1.0, eos_id=-1, pad_id=0,
                                             compile_step=name.endswith("compiled"))  # fmt: skip
            return roll.completion_ids.shape[1]
        cache = {"generate-dynamic": {}, "generate-static": {"cache_implementation": "static"}}[name]
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                             max_new_tokens=t, min_new_tokens=t, pad_token_id=0, **cache)  # fmt: skip
        return out.shape[1] - p_max

    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False)
        if device.type == "cuda"
        else contextlib.nullcontext()
    )
    with autocast, torch.no_grad():
        names = [s.strip() for s in args.samplers.split(",") if s.strip()]
        for name in [n for n in names if device.type == "cuda" or not n.endswith("compiled")]:
            row: dict = {}
            try:
                torch.manual_seed(0)
                sync()
                start = time.perf_counter()
                draw(name)
                sync()
                row["first_call_s"] = round(time.perf_counter() - start, 2)
                times = []
                for _ in range(args.reps):
                    sync()
                    start = time.perf_counter()
                    new = draw(name)
                    sync()
                    times.append(time.perf_counter() - start)
                best = min(times)
                row.update(new_tokens=new, seconds=[round(x, 3) for x in times],
                           tokens_per_s=round(rows * new / best, 1))  # fmt: skip
            except Exception:  # noqa: BLE001 - record and go on
                row["error"] = traceback.format_exc()[-1500:]
            result["samplers"][name] = row
            print(name, json.dumps(row)[:600], flush=True)
            args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
