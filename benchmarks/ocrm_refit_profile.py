"""Where an OCRM refit's time goes, and what the lab no longer computes (issue 28, item 4).

    python benchmarks/ocrm_refit_profile.py          # default preset, 1 thread (a refit in a --jobs 2 worker)

One refit as overopt.stages.method_run._ocrm_refit makes it (the paper's: SFT backbone, fresh head, rm.epochs
passes), on the `default` preset's shared stages (trained once, or reused, in benchmarks/out/stages-...), with
π_SFT moved by Gaussian noise (σ 0.05 on every weight) standing in for π_k (the same shapes and work as any
π_k): each part timed on its own, in the refit's order. Two parts are no longer computed per refit since this
stop (both tested to leave every number of a run unchanged): π_SFT's log-likelihoods of the pairs (now once per
lab and process: an OCRM run's second refit, and every refit of a process after its first, skips it) and the
new RM's accuracy on all training pairs (which no refit read).
"""

from __future__ import annotations

import copy
import dataclasses
import time

import torch
import tyro
from datasets import load_from_disk
from oversubscription import shared_stages
from transformers import AutoModelForCausalLM, AutoTokenizer

from overopt.config import load_config
from overopt.mitigations.ocrm import ocrm_pair_log_ratios, pair_logliks
from overopt.models.reward import reward_model_from_backbone
from overopt.ops import beta_for_target_ess, order_disagreement
from overopt.progress import StageProgress
from overopt.results import markdown_table, section_head, write_section
from overopt.stages.rm import gold_order_accuracy, pair_margins, train_reward_model

SFT_PART = "π_SFT's log-likelihoods of the pairs"
TRAIN_ACCURACY = "RM accuracy on every training pair"


@dataclasses.dataclass(frozen=True)
class Args:
    testbed: str = "summarize"
    preset: str = "default"
    threads: int = 1
    target_ess_frac: float = 0.1
    """The weights' strength (ocrm.target_ess_frac), so the refit trains on non-uniform weights."""
    write: bool = True


def main(args: Args) -> None:
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # as the lab sets it
    stages = shared_stages(args.testbed, args.preset) / "artifacts"
    cfg = load_config(preset=args.preset, testbed=args.testbed)
    data = load_from_disk(str(stages / "pairs" / "data"))
    train, heldout = data["train"], data["test"]
    pad = AutoTokenizer.from_pretrained(stages / "sft").pad_token_id
    sft = AutoModelForCausalLM.from_pretrained(stages / "sft").eval()
    rm0 = reward_model_from_backbone(stages / "sft", seed=cfg.seed).eval()
    o, r, share = cfg.ocrm, cfg.rm, cfg.compute_once
    times: dict[str, float] = {}

    def timed(part: str, fn):
        start = time.perf_counter()
        out = fn()
        times[part] = time.perf_counter() - start
        return out

    policy = copy.deepcopy(sft)  # π_k: π_SFT moved a little, so that the weights are not uniform
    torch.manual_seed(cfg.seed)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    trunc = o.truncate_tokens
    sft_logliks = timed(SFT_PART, lambda: pair_logliks(sft, train, pad, trunc))
    ratios = timed("π_k's log-likelihoods of the pairs, weights", lambda: ocrm_pair_log_ratios(
        policy, sft, train, alpha=o.alpha, pad_id=pad, truncate_tokens=trunc, sft_logliks=sft_logliks))  # fmt: skip
    log_w = beta_for_target_ess(ratios, args.target_ess_frac) * ratios
    ess_frac = (log_w.logsumexp(0) * 2 - (2 * log_w).logsumexp(0)).exp().item() / len(log_w)
    rm = reward_model_from_backbone(stages / "sft", seed=cfg.seed)
    with StageProgress("ocrm refit") as progress:
        timed(f"RM training, {r.epochs} passes over {len(train)} pairs", lambda: train_reward_model(
            rm, train, heldout, epochs=r.epochs, batch_size=r.batch_size, lr=r.lr, pad_id=pad, seed=cfg.seed,
            progress=progress, log_weights=log_w, normalization=o.normalization, share_prefix=share,
            train_accuracy=False))  # fmt: skip
    timed(TRAIN_ACCURACY, lambda: gold_order_accuracy(rm, train, pad, 4 * r.batch_size, share))
    timed("disagreement with RM_0 (held-out margins)", lambda: order_disagreement(
        pair_margins(rm, heldout, pad, 256, share), pair_margins(rm0, heldout, pad, 256, share)))  # fmt: skip
    total = sum(times.values())
    dropped = {SFT_PART: "once per lab and process",
               TRAIN_ACCURACY: "not computed"}  # fmt: skip
    rows = [f"| {part} | {s:.1f} | {100 * s / total:.0f} % | {dropped.get(part, 'every refit')} |"
            for part, s in times.items()]  # fmt: skip
    after = total - times[TRAIN_ACCURACY]
    two_before, two_after = 2 * total, 2 * after - times[SFT_PART]
    command = (
        f"python benchmarks/ocrm_refit_profile.py --testbed {args.testbed} --preset {args.preset} "
        f"--threads {args.threads}"
    )
    body = [*section_head(f"Where an OCRM refit's time goes: testbed `{args.testbed}`, preset `{args.preset}`",
                          command),
            f"One refit (the paper's: SFT backbone, fresh head, rm.epochs passes; weights at ocrm.target_ess_frac "
            f"{args.target_ess_frac}, π_SFT plus noise standing in for π_k) on {args.threads} torch thread(s), each "
            f"part timed once in the refit's order; the weights' ESS/N {ess_frac:.3f}.", "",
            *markdown_table(["part", "s", "share", "now"], rows), "",
            f"A refit as before this change {total:.1f} s, now {after:.1f} s (the first of a process) or "
            f"{after - times[SFT_PART]:.1f} s (later ones); an OCRM run's two refits {two_before:.1f} s before, "
            f"{two_after:.1f} s now ({two_before / two_after:.2f}×)."]  # fmt: skip
    print("\n".join(body))
    if args.write:
        write_section(f"ocrm-refit-profile-{args.testbed}-{args.preset}", "\n".join(body))


if __name__ == "__main__":
    main(tyro.cli(Args))
