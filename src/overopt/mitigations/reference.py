"""Reference resets (Ackermann, Noukhovitch, Ishida et al., arXiv 2602.18037 §4).

Every `every` updates the KL anchor moves to the current policy: a hard reset π_ref ← π_θ, or
TRL's mixup π_ref ← α·π_θ + (1 − α)·π_ref in parameter space. The paper argues that resets act as an
implicit gradient regularizer. KL to the *SFT* policy is still what evaluation reports.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from overopt.mitigations.protocols import Figures
from overopt.models.policy import merged_copy


class ReferenceReset:
    def __init__(self, every: int, alpha: float):
        if every <= 0 or not 0 < alpha <= 1:
            raise ValueError("ref_reset needs every > 0 and 0 < alpha <= 1")
        self.every, self.alpha = every, alpha
        self.resets = 0

    @torch.no_grad()
    def __call__(self, step: int, policy: PreTrainedModel, ref_policy: PreTrainedModel) -> Figures:
        if step % self.every == 0:
            # A LoRA policy (peft) moves the anchor to its merged weights, base + adapters.
            full = merged_copy(policy) if hasattr(policy, "merge_and_unload") else policy
            for ref_param, param in zip(ref_policy.parameters(), full.parameters(), strict=True):
                ref_param.lerp_(param, self.alpha)  # ref + α(θ − ref) = αθ + (1 − α)ref
            self.resets += 1
        return {"ref_reset/count": self.resets}

    def state_dict(self) -> dict:
        return {"resets": self.resets}

    def load_state_dict(self, state: dict) -> None:
        self.resets = state["resets"]
