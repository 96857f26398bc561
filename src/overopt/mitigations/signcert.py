"""SignCert-PO (Ono, Ackermann, Nishimori et al., arXiv 2604.02986): down-weight completions whose
advantage sign a small perturbation of the reward head could flip.

RECONSTRUCTED (METHODS.md §3): linear head r = wᵀh + b; within a group, A_i = wᵀ(h_i − mean_j h_j);
certified radius r_i = |A_i| / ‖h_i − mean_j h_j‖₂; threshold τ = q-quantile of the radii (batch or
group scope); weight 1 if r_i ≥ τ, else 0 (drop) or r_i/τ (linear). The maths is in
`overopt.ops.signcert`; the base algorithm is Dr.GRPO.
"""

from __future__ import annotations

import torch

from overopt.mitigations.protocols import Figures, RewardScores
from overopt.ops import certification_threshold, certified_weights, sign_radii


class SignCertWeights:
    def __init__(self, quantile: float, scope: str, weighting: str):
        self.quantile, self.scope, self.weighting = quantile, scope, weighting

    def __call__(self, scores: RewardScores, group_size: int) -> tuple[torch.Tensor, Figures]:
        if scores.hidden is None or scores.head_weight is None:
            raise ValueError("signcert needs a reward model with a linear head (hidden state and head weight)")
        hidden = scores.hidden.double().view(-1, group_size, scores.hidden.shape[-1])  # (P, K, H)
        radii = sign_radii(hidden, scores.head_weight.double()).radii  # (P, K)
        tau = certification_threshold(radii, self.quantile, self.scope)
        weights = certified_weights(radii, tau, self.weighting).flatten()
        finite = radii[torch.isfinite(radii)]
        return weights.float(), {
            # With an ensemble, the radii use member 0's hidden state and head (METHODS.md §3 fallback).
            "signcert/head_from_member0": float(scores.members is not None),
            "signcert/frac_downweighted": (weights < 1).double().mean().item(),
            "signcert/mean_weight": weights.mean().item(),
            "signcert/radius_median": finite.median().item() if finite.numel() else float("nan"),
        }
