"""How far the default preset's RL step is from this CPU's arithmetic peak (issue 28): the ceiling on what removing
per-operation overhead (batching runs, fusing, compiling) can buy.

    python benchmarks/arithmetic_floor.py            # 1 torch thread, as each run of --jobs 2 on 2 cores

Each part of one RL update at the default preset's shapes (32 prompts × K 4 = 128 rows, completions of the
testbed's 12-token budget; the policy and RM of the preset: Llama, width 64, 2 blocks) is counted in FLOPs by
torch.utils.flop_counter (matmuls and attention; elementwise work is not counted) and timed (median of
`--reps`). The peak is a large float32 matmul (1024³) on the same thread, and the policy's own largest matmul
shape (its MLP on every token of the update) is timed too. "At peak" is the time the part's FLOPs would take
at the large matmul's rate; measured ÷ at peak is the most that any removal of overhead could speed the part up.
"""

from __future__ import annotations

import dataclasses
import statistics
import tempfile
import time

import torch
import tyro
from torch.utils.flop_counter import FlopCounterMode

from overopt.config import ExperimentConfig
from overopt.models.policy import completion_logprobs, tiny_llama
from overopt.models.reward import RewardHead, reward_model_from_backbone
from overopt.results import markdown_table, section_head, write_section
from overopt.sampling import pad_left, sample_completions
from overopt.testbeds.summarize import SummarizeSpec, SummarizeTestbed


@dataclasses.dataclass(frozen=True)
class Args:
    threads: int = 1
    reps: int = 20
    write: bool = True
    """Write the table to benchmarks/RESULTS.md (section arithmetic-floor)."""


def _timed(fn, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def default_update(seed: int = 0):
    """The default preset's testbed and policy (weights from `seed`), and a sampler of one RL update's completions
    (32 prompts × K 4 rows, the testbed's token budget, T = 1): the shapes this probe and compile_probe.py time.
    Returns (cfg, testbed, policy, sample); sample(**kwargs) passes them on to sample_completions."""
    torch.manual_seed(seed)
    cfg = ExperimentConfig()
    testbed = SummarizeTestbed(SummarizeSpec(**cfg.summarize.model_dump()))
    tok, m = testbed.tokenizer, cfg.model
    policy = tiny_llama(tok, m.hidden_size, m.num_layers, m.num_heads, max_positions=128, seed=seed)
    prompts = [p for p in testbed.prompts("train", cfg.rl.prompts_per_step, 0) for _ in range(cfg.rl.group_size)]
    prompt_ids, prompt_mask = pad_left(prompts, tok.pad_token_id)

    def sample(**kwargs):
        return sample_completions(policy, prompt_ids, prompt_mask, testbed.max_completion_tokens, 1.0,
                                  tok.eos_token_id, tok.pad_token_id, **kwargs)  # fmt: skip

    return cfg, testbed, policy, sample


def main(args: Args) -> None:
    torch.set_num_threads(args.threads)
    cfg, testbed, policy, sample = default_update()
    tok, m = testbed.tokenizer, cfg.model
    with tempfile.TemporaryDirectory() as tmp:
        policy.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        rm = RewardHead(reward_model_from_backbone(tmp, seed=0).eval())
    rows = cfg.rl.prompts_per_step * cfg.rl.group_size
    budget = testbed.max_completion_tokens
    rollout = sample()
    ids, mask, plen = rollout.input_ids, rollout.attention_mask, rollout.prompt_len

    def update():
        logprobs, _ = completion_logprobs(policy, ids, mask, plen, share_prefix=True)
        (logprobs * rollout.completion_mask).sum().backward()

    def reference():
        with torch.no_grad():
            completion_logprobs(policy, ids, mask, plen, share_prefix=True)

    def score():
        with torch.no_grad():
            rm(ids, mask, plen)

    parts = {"sampling (128 rows)": sample, "update: forward + backward": update, "reference log-probs": reference,
             "proxy scoring": score}  # fmt: skip
    size = 1024
    a, b = torch.randn(size, size), torch.randn(size, size)
    peak_s = _timed(lambda: a @ b, args.reps)
    peak = 2 * size**3 / peak_s
    tokens = int(mask.sum())
    x, w = torch.randn(tokens, m.hidden_size), torch.randn(m.hidden_size, 4 * m.hidden_size)
    mlp_s = _timed(lambda: x @ w, args.reps)
    mlp_rate = 2 * tokens * m.hidden_size * 4 * m.hidden_size / mlp_s

    lines = []
    total_measured = total_floor = 0.0
    for name, fn in parts.items():
        flops = _flops(fn)
        seconds = _timed(fn, args.reps)
        floor = flops / peak
        total_measured, total_floor = total_measured + seconds, total_floor + floor
        lines.append(f"| {name} | {flops / 1e6:.1f} | {seconds * 1e3:.2f} | {flops / seconds / 1e9:.1f} | "
                     f"{floor * 1e3:.2f} | {seconds / floor:.1f}× |")  # fmt: skip
    lines.append(f"| **sum** | | {total_measured * 1e3:.2f} | | {total_floor * 1e3:.2f} | "
                 f"{total_measured / total_floor:.1f}× |")  # fmt: skip
    head = section_head(
        "How far an RL step is from the CPU's arithmetic peak: `default` preset shapes",
        f"python benchmarks/arithmetic_floor.py --threads {args.threads}",
        machine_note=f"; {args.threads} torch thread(s)",
    )
    body = head + [
        f"One RL update's parts at the default preset's shapes ({rows} rows, prompts of {plen} columns, "
        f"completions of ≤ {budget} tokens; {tokens} real tokens), policy and RM of width {m.hidden_size}, "
        f"{m.num_layers} blocks. FLOPs from torch.utils.flop_counter (matmuls and attention only); time the "
        f"median of {args.reps}. Peak: a {size}³ float32 matmul, {peak / 1e9:.1f} GFLOP/s; the policy's MLP "
        f"matmul on all {tokens} tokens ({tokens}×{m.hidden_size} @ {m.hidden_size}×{4 * m.hidden_size}) runs at "
        f"{mlp_rate / 1e9:.1f} GFLOP/s. *At peak*: the part's FLOPs at the peak rate; measured ÷ at peak is the "
        "most that removing per-operation overhead could speed it up.",
        "",
        *markdown_table(["part", "MFLOP", "measured ms", "GFLOP/s", "at peak ms", "measured ÷ at peak"], lines),
    ]
    text = "\n".join(body)
    print(text)
    if args.write:
        write_section("arithmetic-floor", text)


if __name__ == "__main__":
    main(tyro.cli(Args))
