"""SignCert-PO (Ono, Ackermann, Nishimori et al., arXiv 2604.02986): optimise the worst-case advantage
over a ball of reward-head weights, so that completions whose advantage sign a small change of the head
could flip stop driving the update.

From the paper (§3, Theorem 3.2, Algorithm 1; the maths is in `overopt.ops.signcert`): linear head
r = wᵀh + b; within a group, d_i = h_i − mean_j h_j and A_i = wᵀd_i (Dr.GRPO); certified radius
Δ_i = |A_i| / ‖d_i‖; ε = the q-quantile of the radii over the batch; the update uses
Ã_i = sign(A_i)(|A_i| − ε‖d_i‖) = (1 − ε/Δ_i)·A_i. The base algorithm is Dr.GRPO.
Knobs beyond the paper: the worst case floored at 0 (`shrink_clip`: no sign reversal), a per-group
quantile, the 0/1 and linear weights of an earlier reconstruction, and the Fisher ellipsoid instead of
the ℓ2 ball.
"""

from __future__ import annotations

import torch
from datasets import Dataset
from transformers import PreTrainedModel

from overopt.mitigations.protocols import Figures, RewardScores
from overopt.models.reward import reward_forward
from overopt.ops import (
    advantage_mass_removed,
    certification_threshold,
    certified_weights,
    head_fisher,
    sign_radii,
    worst_case_advantages,
)
from overopt.sampling import rollout_from_tokens


class SignCertAdvantages:
    def __init__(self, quantile: float, scope: str, weighting: str, metric: torch.Tensor | None = None):
        self.quantile, self.scope, self.weighting = quantile, scope, weighting
        self.metric = metric

    def __call__(self, advantages: torch.Tensor, scores: RewardScores, group_size: int) -> tuple[torch.Tensor, Figures]:
        if scores.hidden is None or scores.head_weight is None:
            raise ValueError("signcert needs a reward model with a linear head (hidden state and head weight)")
        hidden = scores.hidden.double().view(-1, group_size, scores.hidden.shape[-1])  # (P, K, H)
        metric = None if self.metric is None else self.metric.to(hidden)
        out = sign_radii(hidden, scores.head_weight.double(), metric)  # each (P, K)
        radii = out.radii
        epsilon = certification_threshold(radii, self.quantile, self.scope)
        a = advantages.double().view(-1, group_size)
        if self.weighting in ("shrink", "shrink_clip"):
            new = worst_case_advantages(a, out.feature_norms, epsilon, clip=self.weighting == "shrink_clip")
        else:
            new = certified_weights(radii, epsilon, self.weighting) * a
        finite = radii[torch.isfinite(radii)]
        finite_eps = epsilon[torch.isfinite(epsilon)]
        changed = new != a
        return new.flatten().to(advantages.dtype), {
            # With an ensemble, the radii use member 0's hidden state and head (docs/methods/signcert.md).
            "signcert/head_from_member0": float(scores.members is not None),
            "signcert/adv_mass_removed": advantage_mass_removed(a, new).item(),
            "signcert/frac_downweighted": changed.double().mean().item(),
            "signcert/frac_flipped": (torch.sign(new) * torch.sign(a) < 0).double().mean().item(),
            "signcert/epsilon": finite_eps.mean().item() if finite_eps.numel() else 0.0,
            "signcert/radius_median": finite.median().item() if finite.numel() else float("nan"),
        }


@torch.no_grad()
def fisher_metric(
    reward_model: PreTrainedModel, data: Dataset, pad_id: int, damping: float, batch_size: int = 256
) -> torch.Tensor:
    """M = F + λ·(tr F/H)·I for the head of `reward_model`, F the Fisher of its training loss on `data`.

    Preference pairs (columns chosen_ids, rejected_ids): features h_c − h_r, p = σ(r_c − r_r) (the
    Bradley-Terry loss); judged answers (column completion_ids): features h, p = σ(r) (binary
    cross-entropy). See `overopt.ops.head_fisher`. Float64, on the CPU.
    """
    features, probs = [], []
    pairs = "chosen_ids" in data.column_names
    for start in range(0, len(data), batch_size):
        rows = data[start : start + batch_size]
        if pairs:
            n = len(rows["prompt_ids"])
            r = rollout_from_tokens(rows["prompt_ids"] * 2, rows["chosen_ids"] + rows["rejected_ids"], pad_id)
            out = reward_forward(reward_model, r.input_ids, r.attention_mask)
            (hc, hr), (rc, rr) = out.hidden.double().split([n, n]), out.rewards.double().split([n, n])
            features.append((hc - hr).cpu())
            probs.append(torch.sigmoid(rc - rr).cpu())
        else:
            r = rollout_from_tokens(rows["prompt_ids"], rows["completion_ids"], pad_id)
            out = reward_forward(reward_model, r.input_ids, r.attention_mask)
            features.append(out.hidden.double().cpu())
            probs.append(torch.sigmoid(out.rewards.double()).cpu())
    return head_fisher(torch.cat(features), torch.cat(probs), damping)
