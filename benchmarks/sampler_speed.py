"""The static-cache sampler (plain and with its decode step compiled) against the dynamic one on the CPU: generated
tokens/s, side by side in one run.

    python benchmarks/sampler_speed.py            # table to RESULTS.md (--no-write: print only)

Models: from-scratch Llamas with random weights (overopt.models.policy.random_llama) at three sizes; rows: 8 prompts
× 4 copies, 8–16 prompt tokens, left-padded; a budget of --max-new tokens at T = 1, so rows end at EOS at random
(with random weights EOS is rare: nearly every row runs the whole budget). Each sampler is timed --reps times
after a warm-up (for the compiled sampler its compilation: the table gives that first call's time), in alternating
order; the table gives the median. Same draws: the share of rows whose tokens are identical to the dynamic
sampler's under the same seed. The compiled decode step is `torch.compile(mode="reduce-overhead")` (hf.sampler
static_compiled): on the CPU inductor's generated code, no graph capture.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from functools import partial

import torch
import tyro

from overopt.models.policy import random_llama
from overopt.results import section_head, write_section
from overopt.sampling import pad_left, sample_completions
from overopt.static_sampling import sample_completions_static


@dataclasses.dataclass
class Args:
    max_new: int = 64
    """Completion budget (tokens)."""
    reps: int = 5
    """Timed calls per sampler and size."""
    threads: int = 2
    """torch CPU threads."""
    write: bool = True
    """Write the table to RESULTS.md (--no-write: print it only)."""


SIZES = {"hf smoke size (hidden 32, 1 layer, vocab 512)": (32, 1, 2, 512),
         "lab default size (hidden 64, 2 layers, vocab 512)": (64, 2, 4, 512),
         "small (hidden 256, 4 layers, vocab 8192)": (256, 4, 4, 8192)}  # fmt: skip


def main(args: Args) -> None:
    torch.set_num_threads(args.threads)
    lines = []
    for label, (hidden, layers, heads, vocab) in SIZES.items():
        model = random_llama(vocab, hidden, layers, heads, max_positions=16 + args.max_new + 8, seed=0).eval()
        g = torch.Generator().manual_seed(0)
        prompts = [torch.randint(3, vocab, (int(n),), generator=g).tolist() for n in torch.randint(8, 17, (8,))]
        ids, mask = pad_left([p for p in prompts for _ in range(4)], 0)
        samplers = {"dynamic (sample_completions)": sample_completions, "static (sample_completions_static)":
                    sample_completions_static, "static, decode step compiled":
                    partial(sample_completions_static, compile_step=True)}  # fmt: skip
        times: dict[str, list[float]] = {k: [] for k in samplers}
        tokens: dict[str, int] = {}
        draws, first = {}, {}
        for name, sampler in samplers.items():  # warm-up (the compiled step's compilation), and the draws compared
            torch.manual_seed(1)
            start = time.perf_counter()
            draws[name] = sampler(model, ids, mask, args.max_new, 1.0, eos_id=2, pad_id=0).completion_ids
            first[name] = time.perf_counter() - start
        for rep in range(args.reps):
            for name in list(samplers)[:: 1 if rep % 2 == 0 else -1]:
                torch.manual_seed(100 + rep)
                start = time.perf_counter()
                out = samplers[name](model, ids, mask, args.max_new, 1.0, eos_id=2, pad_id=0)
                times[name].append(time.perf_counter() - start)
                tokens[name] = int(out.completion_mask.sum())
        a = draws["dynamic (sample_completions)"]
        base = statistics.median(times[next(iter(samplers))])
        for name in samplers:
            b = draws[name]
            same = (a == b).all(1).double().mean().item() if a.shape == b.shape else 0.0
            median = statistics.median(times[name])
            cells = [
                label,
                name,
                f"{ids.shape[0]} × {args.max_new}",
                f"{first[name] * 1000:.0f}",
                f"{median * 1000:.0f}",
                f"{tokens[name] / median:,.0f}",
                f"{base / median:.2f}×",
                f"{same:.0%}",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(
        [
            "| model | sampler | rows × budget | first call ms | ms per call (median) | generated tokens/s | speed-up "
            "| same draws |",
            "|---|---|---|---|---|---|---|---|",
            *lines,
        ]
    )
    body = "\n".join(
        [
            *section_head(
                "Static-cache sampler on the CPU: `python benchmarks/sampler_speed.py`",
                f"python benchmarks/sampler_speed.py --max-new {args.max_new} --reps {args.reps} "
                f"--threads {args.threads}",
            ),
            __doc__.split("\n\n")[2].replace("\n", " "),
            "",
            table,
        ]
    )
    print(body)
    if args.write:
        write_section("sampler-speed", body)


if __name__ == "__main__":
    main(tyro.cli(Args))
