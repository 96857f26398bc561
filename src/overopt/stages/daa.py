"""Direct alignment in the lab: DPO, IPO, SimPO, RPO, DPO+NLL and the hinge on the proxy RM's own gold-labelled pairs.

The policy starts from π_SFT and is trained on the `pairs` artifact's train split (the pairs the proxy RM
learned from) with π_ref = π_SFT and no reward model (overopt.ops.daa for the losses). Every `eval.every`
optimiser steps, and at 0 and the end, it is evaluated on the lab's contract like an RL run (samples on the
held-out prompts: proxy reward from the lab's proxy RM for comparison, gold and its components, KL to SFT,
entropy, length, mechanism figures) plus the DAA's own figures on the held-out pairs:
  daa/implicit_accuracy   share of held-out pairs whose implicit rewards order them as gold does (ties 1/2)
  daa/chosen_logratio     mean log π_θ(y_c) − log π_ref(y_c) over held-out pairs (rejected: daa/rejected_logratio)
  daa/margin              mean implicit-reward margin r(y_c) − r(y_r) (= β·Δ for DPO)
  daa/heldout_loss        mean loss on the held-out pairs; train/loss: the mean training loss since the last one
Rafailov et al. (arXiv 2406.02900) find that DAAs overoptimize as RL does: gold against √KL follows the RL
form, peaking early in the first epoch at small β. The loop is overopt.stages.supervised.fit_minibatches
(AdamW, cosine decay, checkpoints that resume bit for bit).
"""

from __future__ import annotations

import copy
import shutil
import time
from pathlib import Path

import torch
from datasets import Dataset
from transformers import PreTrainedModel

from overopt import distributed, trackers
from overopt.checkpoint import Checkpointer
from overopt.config import ExperimentConfig
from overopt.io import fsync_size, save_weights
from overopt.methods import MethodPlan
from overopt.mitigations.ocrm import completion_loglik
from overopt.models.policy import completion_logprobs
from overopt.ops import DAALoss, daa_loss, sequence_logprobs
from overopt.progress import StageProgress
from overopt.sampling import rollout_from_tokens
from overopt.stages.method_run import LOGS, SAMPLE_BATCH, Lab, _truncate_logs, evaluation, log_evaluation, reward_source
from overopt.stages.rm import margin_gold_accuracy
from overopt.stages.supervised import fit_minibatches


def _knobs(cfg: ExperimentConfig, loss: str) -> dict:
    """The loss's knobs from its config section: β, and SimPO's γ, RPO's η, DPO+NLL's α, IPO's length_normalized."""
    return getattr(cfg, loss).model_dump()


def _pair_logps(
    model: torch.nn.Module, prompts: list[list[int]], completions: list[list[int]], pad_id: int, device
) -> tuple[torch.Tensor, torch.Tensor]:
    """log π(y|x) summed over each completion's tokens (with gradients, float64) and the completions' lengths."""
    rollout = rollout_from_tokens(prompts, completions, pad_id)
    logprobs, _ = completion_logprobs(
        model, rollout.input_ids.to(device), rollout.attention_mask.to(device), rollout.prompt_len
    )
    mask = rollout.completion_mask.to(device)
    return sequence_logprobs(logprobs.double(), mask), mask.sum(1).double()


def _loss(loss: str, knobs: dict, logps_c, logps_r, len_c, len_r, ref_c, ref_r) -> DAALoss:
    return daa_loss(
        loss, chosen_logps=logps_c, rejected_logps=logps_r, chosen_lengths=len_c, rejected_lengths=len_r,
        ref_chosen_logps=ref_c, ref_rejected_logps=ref_r, **knobs,
    )  # fmt: skip


def _lengths(completions: list[list[int]]) -> torch.Tensor:
    return torch.tensor([len(c) for c in completions], dtype=torch.float64)


@torch.no_grad()
def heldout_figures(
    policy: PreTrainedModel, pairs: Dataset, ref: tuple[torch.Tensor, torch.Tensor], loss: str, knobs: dict, pad_id
) -> dict[str, float]:
    """The DAA's figures on held-out pairs (see the module docstring)."""
    logp_c = completion_loglik(policy, pairs["prompt_ids"], pairs["chosen_ids"], pad_id, SAMPLE_BATCH)
    logp_r = completion_loglik(policy, pairs["prompt_ids"], pairs["rejected_ids"], pad_id, SAMPLE_BATCH)
    out = _loss(loss, knobs, logp_c, logp_r, _lengths(pairs["chosen_ids"]), _lengths(pairs["rejected_ids"]), *ref)
    margin = out.chosen_rewards - out.rejected_rewards
    return {
        "daa/implicit_accuracy": margin_gold_accuracy(margin, pairs),
        "daa/chosen_logratio": (logp_c - ref[0]).mean().item(),
        "daa/rejected_logratio": (logp_r - ref[1]).mean().item(),
        "daa/margin": margin.mean().item(),
        "daa/heldout_loss": out.losses.mean().item(),
    }


def run_daa(
    lab: Lab, plan: MethodPlan, cfg: ExperimentConfig, seed: int, run_dir: Path, name: str, checkpoints: Checkpointer
) -> None:
    """Train and evaluate the direct-alignment method `plan` (configured by `cfg`) as run `name` for `seed`,
    resuming from the newest checkpoint in `checkpoints` (what was logged after it is dropped, as in RL runs)."""
    loss, knobs, d = plan.daa, _knobs(cfg, plan.daa), cfg.daa
    pad = lab.testbed.tokenizer.pad_token_id
    writes = distributed.is_main()
    train, heldout = lab.pairs["train"], lab.pairs["test"]
    resume = checkpoints.load()
    state = resume.state["caller"] if resume is not None else {"elapsed_s": 0.0, "loss_sum": 0.0, "loss_n": 0}
    tracking = trackers.RunTrackers()
    if writes:
        if resume is not None:
            _truncate_logs(run_dir, state["logs"], resume.directory)
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True, exist_ok=True)
        tracking = trackers.open_run(cfg, name, seed, run_dir / "metrics.jsonl", state.get("trackers"))
    policy = lab.testbed.trainable_policy(copy.deepcopy(lab.sft_policy), seed).train()  # hf: LoRA adapters
    device = lab.sft_policy.device
    # π_ref = π_SFT is fixed: its log-likelihoods of every stored completion are computed once.
    ref = {
        (split, side): completion_loglik(lab.sft_policy, pairs["prompt_ids"], pairs[f"{side}_ids"], pad, SAMPLE_BATCH)
        for split, pairs in (("train", train), ("test", heldout))
        for side in ("chosen", "rejected")
    }
    ref_heldout = (ref["test", "chosen"], ref["test", "rejected"])
    source = reward_source(lab, plan, cfg)  # the lab's proxy RM: proxy_reward, for comparison with RL
    start = time.perf_counter() - state["elapsed_s"]
    total = d.epochs * -(-len(train) // d.batch_size)

    def evaluate(step: int) -> None:
        metrics, samples, state["mech_reference"] = evaluation(
            lab, cfg, seed, policy, source, step, state.get("mech_reference")
        )
        train_figures = {"train/loss": state["loss_sum"] / state["loss_n"]} if state["loss_n"] else {}
        row = {"step": step, **metrics, **heldout_figures(policy, heldout, ref_heldout, loss, knobs, pad),
               "wall_s": time.perf_counter() - start, **train_figures}  # fmt: skip
        state["loss_sum"], state["loss_n"] = 0.0, 0
        if writes:
            log_evaluation(run_dir, tracking, row, samples)

    def batch_loss(module: torch.nn.Module, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        batch = train[rows]
        logps, lengths = _pair_logps(
            module, batch["prompt_ids"] * 2, batch["chosen_ids"] + batch["rejected_ids"], pad, device
        )
        n = len(rows)
        idx = torch.tensor(rows)
        out = _loss(loss, knobs, logps[:n], logps[n:], lengths[:n], lengths[n:],
                    ref["train", "chosen"][idx].to(device), ref["train", "rejected"][idx].to(device))  # fmt: skip
        state["loss_sum"] += out.losses.sum().item()
        state["loss_n"] += n
        return out.losses.sum(), torch.tensor(float(n), device=device)

    def on_step(done: int) -> None:
        if done % cfg.eval.every == 0 or done == total:
            evaluate(done)

    def caller_state() -> dict:
        logs = {log: fsync_size(run_dir / log) for log in LOGS} if writes else {}
        return {**state, "elapsed_s": time.perf_counter() - start, "logs": logs,
                "trackers": tracking.state() if writes else {}}  # fmt: skip

    if resume is None:
        evaluate(0)  # the SFT policy
    with StageProgress(f"{loss} {name} seed{seed}") as progress:
        fit_minibatches(
            policy, len(train), batch_loss, epochs=d.epochs, batch_size=d.batch_size, lr=d.lr, seed=seed,
            progress=progress, checkpoints=checkpoints, on_step=on_step, caller_state=caller_state,
        )  # fmt: skip
    if writes:
        save_weights(policy, run_dir / "policy.safetensors")
    tracking.finish()
