"""Would compiling the policy pay on the CPU? One RL update's forward and backward at the default preset's shapes,
eager against `torch.compile` (inductor), side by side (issue 28: the update is ~4× off the arithmetic floor).

    python benchmarks/compile_probe.py            # 1 torch thread, as each run of --jobs 2 on 2 cores

The policy (Llama, the default preset's width and depth), 32 prompts × K 4 rows and one sampled rollout
(benchmarks/arithmetic_floor.default_update); the timed part is models.policy.completion_logprobs and its
backward. Compiled:
`torch.compile(policy)` (fixed shapes: a real run's completion lengths vary, each new length compiles again;
with prompts once the KV cache object breaks the graph), the first call's time given apart (inductor's on-disk
cache makes it short on a second run). Median of `--reps` after a warm-up. A probe, not a feature: nothing in
overopt compiles the lab's models.
"""

from __future__ import annotations

import dataclasses
import statistics
import time

import torch
import tyro
from arithmetic_floor import default_update

from overopt.models.policy import completion_logprobs
from overopt.results import markdown_table, section_head, write_section


@dataclasses.dataclass(frozen=True)
class Args:
    threads: int = 1
    reps: int = 20
    write: bool = True


def main(args: Args) -> None:
    torch.set_num_threads(args.threads)
    cfg, _, policy, sample = default_update()
    m, rollout = cfg.model, sample()
    ids, mask, plen = rollout.input_ids, rollout.attention_mask, rollout.prompt_len
    compiled = torch.compile(policy)

    def update(model, share: bool):
        def step():
            logprobs, _ = completion_logprobs(model, ids, mask, plen, share_prefix=share)
            (logprobs * rollout.completion_mask).sum().backward()

        return step

    conditions = {"eager, every row in full": update(policy, False),
                  "eager, prompts once (compute_once, the default)": update(policy, True),
                  "torch.compile, every row in full": update(compiled, False),
                  "torch.compile, prompts once": update(compiled, True)}  # fmt: skip
    first, times = {}, {name: [] for name in conditions}
    for name, step in conditions.items():
        start = time.perf_counter()
        step()
        first[name] = time.perf_counter() - start
    for _ in range(args.reps):  # interleaved, so that drifts of the machine fall on every condition alike
        for name, step in conditions.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["eager, prompts once (compute_once, the default)"])
    rows = [f"| {name} | {first[name]:.2f} | {1e3 * statistics.median(t):.1f} | {base / statistics.median(t):.2f}× |"
            for name, t in times.items()]  # fmt: skip
    body = [*section_head("Compiling the policy on the CPU: one update's forward and backward, `default` shapes",
                          f"python benchmarks/compile_probe.py --threads {args.threads}",
                          machine_note=f"; {args.threads} torch thread(s)"),
            f"{ids.shape[0]} rows of {ids.shape[1]} columns (prompts {plen}), width {m.hidden_size}, {m.num_layers} "
            f"blocks; median of {args.reps}, conditions interleaved; speed-up against the default.", "",
            *markdown_table(["condition", "first call s", "ms per update", "speed-up"], rows)]  # fmt: skip
    print("\n".join(body))
    if args.write:
        write_section("compile-probe", "\n".join(body))


if __name__ == "__main__":
    main(tyro.cli(Args))
