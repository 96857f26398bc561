"""Extra policy-loss terms."""

from __future__ import annotations

import torch

from overopt.mitigations.protocols import Figures
from overopt.ops import chi2_estimate


class Chi2Penalty:
    """χ² occupancy regularisation, LLM form (Laidlaw et al., arXiv 2403.03185): loss += c·sqrt(max(χ̂², 1e-4))."""

    name = "chi2"

    def __init__(self, coef: float, clamp: float):
        self.coef, self.clamp = coef, clamp

    def __call__(
        self, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, Figures]:
        chi2 = chi2_estimate(logprobs, ref_logprobs, mask, clamp=self.clamp)
        return self.coef * chi2.penalty, {"chi2/estimate": chi2.estimate.item(), "chi2/penalty": chi2.penalty.item()}
