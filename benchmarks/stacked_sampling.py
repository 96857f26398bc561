"""Stacked sampling against K: what one decode loop over K runs' stacked policies costs per run (issue 28).

    python benchmarks/stacked_sampling.py                       # 1 thread, the CPU, to RESULTS.md
    python benchmarks/stacked_sampling.py --device cuda --no-write

The default preset's shapes (overopt.batching's path: 32 prompts × K 4 = 128 rows per run, the testbed's
12-token budget, T = 1, log-probs kept), K copies of one policy stacked (models.stack.PolicyStack) and sampled by
a run group (overopt.batching.RunGroup: K runs each call sample_completions, and the group draws their samples in
one stacked call), against K = 1. Per run: a call's median time ÷ K. The op shares come from
torch.profiler over 3 calls (self CPU time, or self device time on a GPU): the stacked matrix products (bmm),
the attention kernel (scaled_dot_product_attention), the sampling noise (exponential_) and the rest. If
the per-op fixed cost dominated, the time per run would fall like 1/K; where it stays flat, the work grows with
the rows, and stacking runs cannot buy much.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from functools import partial

import torch
import tyro
from arithmetic_floor import default_update
from torch.profiler import ProfilerActivity, profile

from overopt.batching import RunGroup
from overopt.results import markdown_table, section_head, write_section


@dataclasses.dataclass(frozen=True)
class Args:
    ks: tuple[int, ...] = (1, 2, 4, 8, 16)
    threads: int = 1
    device: str = "cpu"
    reps: int = 10
    write: bool = True
    """Write the table to benchmarks/RESULTS.md (section stacked-sampling-<device>)."""


GROUPS = {"bmm": ("aten::bmm",), "attention": ("scaled_dot_product",), "noise": ("aten::exponential_",)}


def _shares(fn, device: torch.device) -> dict[str, float]:
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(3):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    times = {e.key: getattr(e, attr) for e in prof.key_averages()}
    total = sum(times.values()) or 1.0
    shares = {g: sum(t for k, t in times.items() if any(n in k for n in names)) / total for g, names in GROUPS.items()}
    shares["rest"] = 1.0 - sum(shares.values())
    return shares


def main(args: Args) -> None:
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg, testbed, policy, sample = default_update()
    policy.to(device)  # in place: `sample` draws from it
    rows_per_run = cfg.rl.prompts_per_step * cfg.rl.group_size
    group = RunGroup()

    def run(seed: int) -> None:  # one run's sampling call, as run_job makes it
        torch.manual_seed(seed)
        sample(with_logprobs=True)

    rows, base = [], None
    for k in args.ks:

        def call(k=k):
            group.run([partial(run, seed) for seed in range(k)])  # K runs waiting at once: one stacked call
            if device.type == "cuda":
                torch.cuda.synchronize()

        call()  # warm-up (and the stack's allocation)
        times = []
        for _ in range(args.reps):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
        per_call = 1000 * statistics.median(times)
        per_run = per_call / k
        base = base or per_run
        s = _shares(call, device)
        rows.append(f"| {k} | {k * rows_per_run} | {per_call:.1f} | {per_run:.1f} | {base / per_run:.2f}× | "
                    f"{100 * s['bmm']:.0f} % | {100 * s['attention']:.0f} % | {100 * s['noise']:.0f} % | "
                    f"{100 * s['rest']:.0f} % |")  # fmt: skip
        print(rows[-1], flush=True)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"the CPU, {args.threads} thread(s)"
    command = f"python benchmarks/stacked_sampling.py --device {args.device} --threads {args.threads}"
    body = [*section_head(f"Stacked sampling against the number of runs K: {where}", command),
            f"One sampling call of the `default` preset's shapes per run ({rows_per_run} rows, ≤ "
            f"{testbed.max_completion_tokens} tokens, T = 1, log-probs kept), K copies of one policy stacked "
            f"(overopt.batching.RunGroup, K runs each calling sample_completions); median of {args.reps} calls. "
            "Op shares: torch.profiler's self time over 3 calls.", "",
            *markdown_table(["K", "rows", "ms per call", "ms per run", "speed-up per run", "bmm", "attention",
                             "noise", "rest"], rows)]  # fmt: skip
    print("\n".join(body))
    if args.write:
        write_section(f"stacked-sampling-{device.type}", "\n".join(body))


if __name__ == "__main__":
    main(tyro.cli(Args))
