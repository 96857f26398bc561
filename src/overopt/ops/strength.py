"""Effective strength of a regulariser: how much of the update it makes, comparable across models.

A coefficient copied from a paper is not a strength: β, c or γ mean different things under another
reward scale, completion length or model (docs/methods/index.md; each strength's formula: the metric
glossary, docs/reference/outputs.md). What a regulariser does to the update is:
the share of the signal that comes from it. Method-specific strengths live with their maths
(``gr_correction``, ``advantage_mass_removed``, ``ensemble_penalty_share``, ``par_saturation``,
``order_disagreement``); this module holds the one that KL and χ² terms share.
"""

from __future__ import annotations

import torch

__all__ = ["penalty_share"]


def penalty_share(term: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """Share of a signal that a penalty contributes: ``‖term‖₂ / (‖term‖₂ + ‖base‖₂)``.

    Two uses in the RL loop, both in the currency the update is made of:

    * a KL penalty in the reward: ``term`` = the group-centred ``−β·KL`` per completion, ``base`` =
      the group-centred reward (the advantages each part contributes; a constant added to every
      reward of a group changes nothing, so it does not count);
    * a loss term (KL in the loss, χ²): ``term`` = its gradient with respect to the per-token
      log-probabilities, ``base`` = the policy loss's (both reach the parameters through the same
      backward pass, so their sizes there compare directly).

    In [0, 1]: 0 when the penalty is off or contributes nothing, 1/2 when both parts are equally
    large, → 1 when the penalty dominates; 0 when both are zero. Norms in float64.

    Shapes: ``term`` and ``base`` of the same shape. Returns a 0-d float64 tensor, no gradient.
    """
    if term.shape != base.shape:
        raise ValueError(f"term and base must have the same shape, got {tuple(term.shape)} and {tuple(base.shape)}")
    with torch.no_grad():
        t = torch.linalg.vector_norm(term.detach().double())
        b = torch.linalg.vector_norm(base.detach().double())
        total = t + b
        return torch.where(total > 0, t / torch.where(total > 0, total, torch.ones_like(total)), torch.zeros_like(t))
