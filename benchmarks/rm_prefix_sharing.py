"""Bradley-Terry training of the proxy RM with each pair's prompt computed once for both completions
(`compute_once`, models.reward.reward_forward) against every row in full: seconds per pass, side by side.

    python benchmarks/rm_prefix_sharing.py                     # default preset, 1 and 2 threads, to RESULTS.md
    python benchmarks/rm_prefix_sharing.py --pairs 640 --no-write

The preset's shared stages are trained once (or reused) in benchmarks/out/stages-<testbed>-<preset>. Each
condition trains a fresh RM (the SFT backbone, a fresh head, the stage's seed) for one pass over the first
`--pairs` training pairs with the preset's rm.batch_size and rm.lr (overopt.stages.rm.train_reward_model, as the
RM stage and OCRM's refits call it); conditions alternate `--reps` times per thread count, the table gives the
median. With 2-row groups (a pair) the prompt is a third of the rows' tokens.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from pathlib import Path

import torch
import tyro
from datasets import load_from_disk
from oversubscription import shared_stages
from transformers import AutoTokenizer

from overopt.config import load_config
from overopt.models.reward import reward_model_from_backbone
from overopt.progress import StageProgress
from overopt.results import markdown_table, section_head, write_section
from overopt.stages.rm import train_reward_model


@dataclasses.dataclass(frozen=True)
class Args:
    testbed: str = "summarize"
    preset: str = "default"
    pairs: int = 2560
    """Training pairs per timed pass (the stage's are about 10 600; 4 passes)."""
    reps: int = 3
    threads: tuple[int, ...] = (1, 2)
    """torch threads: 1 is an OCRM refit in a `--jobs 2` worker, 2 the RM stage in the launching process."""
    write: bool = True


def one_pass(backbone: Path, train, heldout, cfg, pad_id: int, share: bool) -> float:
    rm = reward_model_from_backbone(backbone, seed=cfg.seed)
    with StageProgress("rm") as progress:
        start = time.perf_counter()
        train_reward_model(rm, train, heldout, epochs=1, batch_size=cfg.rm.batch_size, lr=cfg.rm.lr, pad_id=pad_id,
                           seed=cfg.seed, progress=progress, share_prefix=share)  # fmt: skip
        return time.perf_counter() - start


def main(args: Args) -> None:
    stages = shared_stages(args.testbed, args.preset) / "artifacts"
    cfg = load_config(preset=args.preset, testbed=args.testbed)
    data = load_from_disk(str(stages / "pairs" / "data"))
    pad_id = AutoTokenizer.from_pretrained(stages / "sft").pad_token_id
    train, heldout = data["train"].select(range(args.pairs)), data["test"].select(range(64))
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        times = {False: [], True: []}
        for rep in range(args.reps):
            for share in (rep % 2 == 0, rep % 2 != 0):  # alternate which goes first
                times[share].append(one_pass(stages / "sft", train, heldout, cfg, pad_id, share))
        full, shared = statistics.median(times[False]), statistics.median(times[True])
        steps = -(-args.pairs // cfg.rm.batch_size)
        rows.append(f"| {threads} | {1000 * full / steps:.0f} | {1000 * shared / steps:.0f} | {full / shared:.2f}× |")
        print(rows[-1], flush=True)
    command = (f"python benchmarks/rm_prefix_sharing.py --testbed {args.testbed} --preset {args.preset} "
               f"--pairs {args.pairs}")  # fmt: skip
    title = f"RM training with shared prompts: testbed `{args.testbed}`, preset `{args.preset}`"
    body = [*section_head(title, command),
            f"One pass over {args.pairs} pairs ({cfg.rm.batch_size} per step), median of {args.reps} per condition, "
            "alternating. Milliseconds per optimiser step.", "",
            *markdown_table(["torch threads", "every row in full", "prompt once per pair", "speed-up of sharing"],
                            rows)]  # fmt: skip
    print("\n".join(body))
    if args.write:
        write_section(f"rm-prefix-sharing-{args.testbed}-{args.preset}", "\n".join(body))


if __name__ == "__main__":
    main(tyro.cli(Args))
