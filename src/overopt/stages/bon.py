"""Best-of-n from the SFT policy (Gao et al., arXiv 2210.10760 §0): the lab's non-RL way to optimise the proxy.

For every held-out prompt, N completions are sampled from π_SFT at T = 1 and scored by the run's reward
source (the proxy RM, an ensemble's mean / WCO / UWO, or a testbed's rule) and by the gold reward. The
unbiased estimator (overopt.laws.best_of_n) then gives, for every n of the half-octave grid 1, 2, 3, 4, 6, ..., N, the
expected proxy reward, gold reward (and its components) and length of the best of n, averaged over the
prompts: one metrics.jsonl row per n, with `step` = n so that the report's step-indexed code reads it.
Every sample's scores are kept in bon_scores.npz (prompts × N arrays) for other estimates offline.

KL: `kl_sft` is log n − (n−1)/n, the usual closed form, which is an upper bound on KL(π_bon ‖ π_SFT)
(Beirami et al., arXiv 2401.01879); `kl_sft_plugin` is the exact KL of best-of-n on each prompt's
empirical distribution of its N samples (identical completions merged), a plug-in estimate that
accounts for completions with large mass and is biased low as n approaches N.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import torch

from overopt import distributed, trackers
from overopt.config import ExperimentConfig
from overopt.io import append_jsonl
from overopt.laws import best_of_n, kl_bon_bound, kl_bon_plugin, log_grid
from overopt.methods import MethodPlan
from overopt.progress import StageProgress
from overopt.sampling import sample_completions
from overopt.stages.method_run import SAMPLE_BATCH, Lab, reward_source

SCORES_FILE = "bon_scores.npz"  # sample_ids, proxy_reward, gold_reward, ... of every sample: (prompts, N)


@torch.no_grad()
def run_best_of_n(lab: Lab, plan: MethodPlan, cfg: ExperimentConfig, seed: int, run_dir: Path, name: str) -> None:
    """Write run `name`'s best-of-n rows for `seed` (its samples: seed 30_000 + seed) into run_dir. Nothing to
    checkpoint: a stopped run samples again (a minute at most on the default preset)."""
    source = reward_source(lab, plan, cfg)
    testbed, tok, n_samples = lab.testbed, lab.testbed.tokenizer, cfg.bon.n_samples
    budget = testbed.max_completion_tokens
    start = time.perf_counter()
    prompts = lab.eval_ids.shape[0]
    scores, ids, columns = [], [], {}  # per prompt: (N,) proxy, (N,) completion ids, {statistic: (N,)}
    logged = []  # the proxy's favourite of the N, for the first prompts: what hacking looks like
    with torch.random.fork_rng(devices=[]), StageProgress(f"bon {name} seed{seed}") as progress:
        torch.manual_seed(30_000 + seed)
        progress.start(prompts)
        for p in range(prompts):
            proxy, completions, masks, stats = [], [], [], {}
            for first in range(0, n_samples, SAMPLE_BATCH):
                rows = min(SAMPLE_BATCH, n_samples - first)
                rollout = sample_completions(
                    lab.sft_policy, lab.eval_ids[p : p + 1].expand(rows, -1), lab.eval_mask[p : p + 1].expand(rows, -1),
                    budget, 1.0, tok.eos_token_id, tok.pad_token_id,
                )  # fmt: skip
                cmask = rollout.completion_mask
                gold_terms = testbed.gold_components(rollout.prompt_ids, rollout.completion_ids, cmask)
                per_sample = {
                    "gold_reward": testbed.gold_from_components(gold_terms),
                    "mean_length": cmask.sum(1),
                    "eos_rate": (rollout.completion_ids == tok.eos_token_id).any(1),
                    **{f"gold/{k}": v for k, v in gold_terms.items()},
                }
                for key, value in per_sample.items():
                    stats.setdefault(key, []).append(value.double().cpu())
                proxy.append(source(rollout).rewards.double().cpu())
                # Every position after the completion set to -1, up to the budget: equal completions compare equal
                # whatever the width of the batch they were sampled in.
                width = rollout.completion_ids.shape[1]
                tokens = rollout.completion_ids.masked_fill(cmask == 0, -1)
                completions.append(torch.nn.functional.pad(tokens, (0, budget - width), value=-1).cpu())
                masks.append(torch.nn.functional.pad(cmask, (0, budget - width)).cpu())
            prompt_scores, tokens, mask = torch.cat(proxy), torch.cat(completions), torch.cat(masks)
            prompt_stats = {key: torch.cat(chunks) for key, chunks in stats.items()}
            if p < cfg.eval.n_logged_samples:
                best = int(prompt_scores.argmax())
                logged.append({
                    "prompt": tok.decode(lab.eval_ids[p][lab.eval_mask[p].bool()]),
                    "completion": tok.decode(tokens[best][mask[best].bool()]),
                    "gold_reward": prompt_stats["gold_reward"][best].item(),
                    "proxy_reward": prompt_scores[best].item(),
                })  # fmt: skip
            scores.append(prompt_scores)
            ids.append(torch.unique(tokens, dim=0, return_inverse=True)[1])
            for key, value in prompt_stats.items():
                columns.setdefault(key, []).append(value)
            progress.advance(proxy=prompt_scores.mean().item())
    proxy_scores = torch.stack(scores).numpy()
    sample_ids = torch.stack(ids).numpy()
    keys = ["proxy_reward", *columns]
    values = np.stack([proxy_scores, *(torch.stack(columns[k]).numpy() for k in columns)], axis=-1)
    grid = log_grid(n_samples)
    estimates = best_of_n(proxy_scores, values, grid)
    wall = time.perf_counter() - start
    if not distributed.is_main():
        return
    shutil.rmtree(run_dir, ignore_errors=True)  # what a stopped attempt left
    run_dir.mkdir(parents=True)
    tracking = trackers.open_run(cfg, name, seed, run_dir / "metrics.jsonl", None)
    for n, estimate in zip(grid, estimates):
        row = {"step": n, "n": n, **dict(zip(keys, estimate.tolist())), "kl_sft": float(kl_bon_bound(n)),
               "kl_sft_plugin": kl_bon_plugin(proxy_scores, sample_ids, n), "wall_s": wall}  # fmt: skip
        append_jsonl(run_dir / "metrics.jsonl", row)
        tracking.log(row)
    tracking.finish()
    append_jsonl(run_dir / "samples.jsonl", {"step": n_samples, "samples": logged})
    # Every sample's scores, to re-estimate offline (other n, other estimators): prompts × N arrays.
    np.savez_compressed(run_dir / SCORES_FILE, sample_ids=sample_ids, **{k: values[..., i] for i, k in enumerate(keys)})
