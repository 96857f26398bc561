"""The papers' claimed mechanisms, measured against gold on a run's own samples (docs/results/mitigations.md).

Figures (the metric glossary, docs/reference/outputs.md):
  at every evaluation, from two held-out samples per prompt (overopt.stages.evaluate, `pairs`):
    mech/proxy_accuracy            share of the pairs the run's reward source orders as gold does (OCRM)
    mech/rm0_accuracy              the same for the original proxy RM_0 (OCRM runs, beside RM_k's)
    mech/disagreement_error_corr   corr(member std, |z(proxy) − z(gold)|) per completion (ensembles),
                                   z standardised with the SFT policy's samples (step 0)
  on every training batch, averaged since the last evaluation like train/*:
    mech/sign_flip_rate, mech/sign_flip_mass   proxy vs gold advantage signs per group (SignCert-PO)
    mech/radius_auroc              AUROC of −(certified sign radius) for "flipped" (needs a linear head)
The GR claim (gradient norm tracks reward accuracy) is a correlation over evaluations, computed by the
report (summary.json) from `mech/proxy_accuracy` and the gradient norm.
"""

from __future__ import annotations

import math

import torch

from overopt.mitigations.protocols import Figures, RewardScores, RewardSource
from overopt.ops import auroc, ensemble_std, order_accuracy, pearson, sign_flips, sign_radii
from overopt.sampling import Rollout
from overopt.stages.evaluate import EvalSamples
from overopt.testbeds.base import Testbed


def gold_rewards(testbed: Testbed, rollout: Rollout) -> torch.Tensor:
    """(B,) gold reward of a batch of rollouts."""
    terms = testbed.gold_components(rollout.prompt_ids, rollout.completion_ids, rollout.completion_mask)
    return testbed.gold_from_components(terms)


def training_figures(testbed: Testbed, group_size: int, rollout: Rollout, scores: RewardScores) -> Figures:
    """Sign flips of the reward source's advantages against gold in each group, and how well the
    certified radius of the linear head predicts them (SignCert-PO's claim)."""
    gold = gold_rewards(testbed, rollout).double().cpu().view(-1, group_size)
    proxy = scores.rewards.double().cpu().view(-1, group_size)
    flips = sign_flips(proxy, gold)
    figures = {"mech/sign_flip_rate": flips.rate.item(), "mech/sign_flip_mass": flips.mass.item()}
    if scores.hidden is not None and scores.head_weight is not None:
        hidden = scores.hidden.double().cpu().view(-1, group_size, scores.hidden.shape[-1])
        radii = sign_radii(hidden, scores.head_weight.double().cpu()).radii
        keep = flips.valid & torch.isfinite(radii)
        score = auroc(-radii[keep], flips.flipped[keep])
        if math.isfinite(score):  # undefined on a batch without flips (or without unflipped completions)
            figures["mech/radius_auroc"] = score
    return figures


def sft_reference(samples: EvalSamples) -> dict[str, float]:
    """Mean and std of proxy and gold on the SFT policy's samples (the step-0 evaluation)."""
    return {
        "proxy_mean": samples.proxy.mean().item(), "proxy_std": samples.proxy.std().item(),
        "gold_mean": samples.gold.mean().item(), "gold_std": samples.gold.std().item(),
    }  # fmt: skip


def evaluation_figures(
    samples: EvalSamples, reference: dict[str, float] | None, rm0: RewardSource | None = None
) -> Figures:
    """Proxy accuracy on pairs of current-policy samples (OCRM's claim), RM_0's on the same pairs, and
    the ensemble's disagreement-error correlation (Coste et al.'s claim). `samples` must hold pairs."""
    n = samples.proxy.numel() // 2
    first, second = slice(0, n), slice(n, 2 * n)
    figures: Figures = {}
    accuracy = order_accuracy(samples.proxy[first], samples.proxy[second], samples.gold[first], samples.gold[second])
    if math.isfinite(accuracy):
        figures["mech/proxy_accuracy"] = accuracy
    if rm0 is not None:
        r0 = torch.cat([rm0(r).rewards.double().cpu() for r in samples.rollouts])
        accuracy = order_accuracy(r0[first], r0[second], samples.gold[first], samples.gold[second])
        if math.isfinite(accuracy):
            figures["mech/rm0_accuracy"] = accuracy
    if samples.members is not None and reference is not None and reference["proxy_std"] > 0 < reference["gold_std"]:
        z_proxy = (samples.proxy - reference["proxy_mean"]) / reference["proxy_std"]
        z_gold = (samples.gold - reference["gold_mean"]) / reference["gold_std"]
        corr = pearson(ensemble_std(samples.members), (z_proxy - z_gold).abs())
        if math.isfinite(corr):
            figures["mech/disagreement_error_corr"] = corr
    return figures
