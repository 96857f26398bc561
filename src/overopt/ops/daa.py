"""Direct-alignment (DAA) losses on per-pair sequence log-probabilities.

DPO, IPO, SimPO, RPO, DPO+NLL and the hinge train the policy on preference pairs
without a reward model or sampling. Every function here takes, per pair i,
SEQUENCE log-probabilities ``log π(y)`` (the sum over the completion's tokens,
see ``sequence_logprobs``) of the chosen (c) and rejected (r) completion under
the policy ``π_θ`` and, where the loss has one, the frozen reference ``π_ref``,
plus completion lengths ``|y|`` in tokens where the loss normalises by length.
Write ``Δ = (log π_θ(y_c) - log π_ref(y_c)) - (log π_θ(y_r) - log π_ref(y_r))``
and ``h = β · Δ``.

Each returns ``DAALoss(losses, chosen_rewards, rejected_rewards)`` with per-pair
``losses`` (B,) (the caller reduces, usually by the mean) and the loss's
implicit rewards (B,), detached: ``β · (log π_θ - log π_ref)(y)`` for dpo, ipo,
rpo, dpo_nll and hinge, ``β · log π_θ(y) / |y|`` for simpo. Reference log-probs are
detached too (the reference is frozen). Everything is computed in the
log-probs' dtype (integer lengths are cast to it).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from overopt.ops.masked import _check_ndim, _check_same_shape

__all__ = [
    "DAA_LOSSES",
    "DAALoss",
    "daa_loss",
    "dpo_loss",
    "dpo_nll_loss",
    "hinge_loss",
    "ipo_loss",
    "rpo_loss",
    "simpo_loss",
]

DAA_LOSSES: tuple[str, ...] = ("dpo", "ipo", "simpo", "rpo", "dpo_nll", "hinge")

# The losses whose formula contains π_ref (SimPO is reference-free).
_NEEDS_REFERENCE = frozenset({"dpo", "ipo", "rpo", "dpo_nll", "hinge"})


class DAALoss(NamedTuple):
    """Output of the DAA losses; all (B,) tensors.

    ``losses`` carries the gradient (per pair; the caller reduces it).
    ``chosen_rewards`` / ``rejected_rewards`` are the loss's implicit rewards,
    detached (diagnostics: margins, reward accuracy).
    """

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor


def _check_pairs(*named: tuple[str, torch.Tensor]) -> None:
    """Raise ValueError unless every tensor is (B,), all of the same shape, with B >= 1."""
    first_name, first = named[0]
    _check_ndim(first_name, first, 1, "(B,)")
    for name, x in named[1:]:
        _check_same_shape(first_name, first, name, x)
    if first.numel() == 0:
        raise ValueError("need at least one preference pair, got B = 0")


def _check_lengths(*named: tuple[str, torch.Tensor]) -> None:
    for name, lengths in named:
        # A length below 1 would divide by zero (or flip a sign) in the length normalisation.
        if bool((lengths < 1).any()):
            raise ValueError(f"{name} must be >= 1 token, got min {lengths.min().item()}")


def _check_lengths_of(chosen_logps, rejected_logps, chosen_lengths, rejected_lengths) -> None:
    """Both completions' log-probs and lengths: (B,) alike, lengths >= 1."""
    _check_pairs(
        ("chosen_logps", chosen_logps),
        ("rejected_logps", rejected_logps),
        ("chosen_lengths", chosen_lengths),
        ("rejected_lengths", rejected_lengths),
    )
    _check_lengths(("chosen_lengths", chosen_lengths), ("rejected_lengths", rejected_lengths))


def _check_beta(beta: float) -> None:
    if not (beta > 0 and math.isfinite(beta)):
        raise ValueError(f"beta must be > 0 and finite, got {beta}")


def _check_weight(name: str, value: float) -> None:
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be >= 0 and finite, got {value}")


def _log_ratios(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validated ``log π_θ(y) - log π_ref(y)`` for the chosen and the rejected completions."""
    _check_pairs(
        ("chosen_logps", chosen_logps),
        ("rejected_logps", rejected_logps),
        ("ref_chosen_logps", ref_chosen_logps),
        ("ref_rejected_logps", ref_rejected_logps),
    )
    return chosen_logps - ref_chosen_logps.detach(), rejected_logps - ref_rejected_logps.detach()


def _rewards(beta: float, chosen: torch.Tensor, rejected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return (beta * chosen).detach(), (beta * rejected).detach()


def dpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
) -> DAALoss:
    """DPO loss (Rafailov et al., arXiv 2305.18290, Eq. 7).

    Formula: ``ℓ_i = -log σ(h_i)``, ``h = β · Δ`` (module docstring), computed
    as ``-logsigmoid(h)``: finite and accurate for any margin. Implicit rewards
    ``β · (log π_θ - log π_ref)(y)``, so their difference is ``h``.

    Shapes: all inputs (B,) sequence log-probs, B >= 1; ``beta`` > 0.
    Returns ``DAALoss`` of (B,) tensors.
    """
    _check_beta(beta)
    chosen, rejected = _log_ratios(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
    losses = -F.logsigmoid(beta * (chosen - rejected))
    return DAALoss(losses, *_rewards(beta, chosen, rejected))


def ipo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
    length_normalized: bool = False,
) -> DAALoss:
    """IPO loss (Azar et al., arXiv 2310.12036, Eq. 17, with β the paper's τ).

    Formula: ``ℓ_i = (Δ_i - 1/(2β))²`` = ``(h_i/β - 1/(2β))²``: a squared
    regression of the log-ratio margin onto the fixed target ``1/(2β)``
    (minimised at ``h = 1/2``), which does not push Δ to infinity on
    deterministic preferences as DPO does.

    ``length_normalized=False`` (default) is the paper's formula on the summed
    sequence log-probs. ``length_normalized=True`` is TRL's IPO (DPOTrainer
    ``loss_type="ipo"``): each log-ratio is divided by its completion length
    first, ``Δ = (log π_θ - log π_ref)(y_c)/|y_c| - (log π_θ - log π_ref)(y_r)/|y_r|``,
    which keeps the target 1/(2β) comparable across lengths; it needs
    ``chosen_lengths`` and ``rejected_lengths``, which are ignored otherwise.
    Either way the implicit rewards are the unnormalised
    ``β · (log π_θ - log π_ref)(y)`` (as TRL logs them).

    Shapes: log-probs (B,), B >= 1; lengths (B,) >= 1 (int or float);
    ``beta`` > 0. Returns ``DAALoss`` of (B,) tensors.
    """
    _check_beta(beta)
    chosen, rejected = _log_ratios(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
    if length_normalized:
        if chosen_lengths is None or rejected_lengths is None:
            raise ValueError("ipo_loss with length_normalized=True needs chosen_lengths and rejected_lengths")
        _check_pairs(
            ("chosen_logps", chosen_logps), ("chosen_lengths", chosen_lengths), ("rejected_lengths", rejected_lengths)
        )
        _check_lengths(("chosen_lengths", chosen_lengths), ("rejected_lengths", rejected_lengths))
        delta = chosen / chosen_lengths.to(chosen.dtype) - rejected / rejected_lengths.to(rejected.dtype)
    else:
        delta = chosen - rejected
    losses = (delta - 1.0 / (2.0 * beta)) ** 2
    return DAALoss(losses, *_rewards(beta, chosen, rejected))


def simpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    chosen_lengths: torch.Tensor,
    rejected_lengths: torch.Tensor,
    beta: float,
    gamma: float,
) -> DAALoss:
    """SimPO loss (Meng et al., arXiv 2405.14734, Eq. 6): reference-free.

    Formula: with the length-normalised rewards ``r(y) = β · log π_θ(y) / |y|``,
    ``ℓ_i = -log σ(r(y_c) - r(y_r) - γ)``, a Bradley-Terry loss with target
    margin γ (computed with ``logsigmoid``). The average log-prob replaces
    DPO's log-ratio so that the reward is the quantity generation ranks by
    and longer responses get no free reward. TRL implements it as CPOTrainer
    ``loss_type="simpo"`` with ``cpo_alpha=0``.

    Shapes: all inputs (B,), B >= 1; lengths >= 1 (int or float); ``beta`` > 0;
    ``gamma`` finite. Returns ``DAALoss`` of (B,)
    tensors; the rewards are ``r(y)`` above.
    """
    _check_beta(beta)
    if not math.isfinite(gamma):
        raise ValueError(f"gamma must be finite, got {gamma}")
    _check_lengths_of(chosen_logps, rejected_logps, chosen_lengths, rejected_lengths)
    chosen = beta * chosen_logps / chosen_lengths.to(chosen_logps.dtype)
    rejected = beta * rejected_logps / rejected_lengths.to(rejected_logps.dtype)
    losses = -F.logsigmoid(chosen - rejected - gamma)
    return DAALoss(losses, chosen.detach(), rejected.detach())


def rpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
    eta: float,
) -> DAALoss:
    """RPO loss: DPO plus β·η times the SFT loss of the chosen response (Liu et al., arXiv 2405.16436).

    Formula: ``ℓ_i = -log σ(h_i) - β · η · log π_θ(y_c,i)``, with ``log π_θ(y_c)`` the SUMMED
    log-likelihood of the chosen completion (no length normalisation). This is the loss of the
    paper's public code (``YSLIU627/Regularized-Preference-Optimization``,
    ``alignment-handbook/scripts/rpo_trainer.py``: ``losses -= policy_chosen_logps * self.beta *
    self.eta`` after the DPO sigmoid loss); its recipes set η = 0.005 with β = 0.01 (Zephyr-7B-β and
    Gemma, ``recipes/*/rpo/config_full.yaml``), the setting TRL's paper index reproduces. The paper
    derives the SFT term as the adversarial regulariser that keeps the policy on the preferred data
    against reward overoptimization. η = 0 gives :func:`dpo_loss` exactly (for finite log-probs).
    Implicit rewards as for DPO.

    Not to be confused with :func:`dpo_nll_loss` (Pang et al.'s per-token NLL, TRL's "sft" loss type).

    Shapes: log-probs (B,), B >= 1; ``beta`` > 0; ``eta`` >= 0. Returns ``DAALoss`` of (B,) tensors.
    """
    _check_weight("eta", eta)
    dpo = dpo_loss(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)
    return DAALoss(dpo.losses - beta * eta * chosen_logps, dpo.chosen_rewards, dpo.rejected_rewards)


def dpo_nll_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    chosen_lengths: torch.Tensor,
    beta: float,
    alpha: float,
) -> DAALoss:
    """DPO plus a length-normalised NLL of the chosen response (Pang et al., arXiv 2404.19733, "DPO+NLL").

    Formula: ``ℓ_i = -log σ(h_i) + α · (-log π_θ(y_c,i) / |y_c,i|)``: the loss of Iterative Reasoning
    Preference Optimization, whose NLL term is a per-token mean (Pang et al. normalise by the
    sequence length; α = 1 there). TRL names this weight ``rpo_alpha`` (older releases) or the
    ``"sft"`` loss type with ``loss_weights=[1, α]`` (DPOTrainer, 1.x), which averages the NLL over
    all chosen tokens of the batch: equal to the mean of these losses when the chosen lengths are
    equal. Liu et al.'s RPO (:func:`rpo_loss`) is a different loss: a summed log-likelihood scaled
    by β·η. α = 0 gives :func:`dpo_loss` exactly. Implicit rewards as for DPO.

    Shapes: log-probs and ``chosen_lengths`` (B,), B >= 1; lengths >= 1; ``beta`` > 0; ``alpha`` >= 0.
    Returns ``DAALoss`` of (B,) tensors.
    """
    _check_weight("alpha", alpha)
    dpo = dpo_loss(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)
    _check_pairs(("chosen_logps", chosen_logps), ("chosen_lengths", chosen_lengths))
    _check_lengths(("chosen_lengths", chosen_lengths))
    nll = -chosen_logps / chosen_lengths.to(chosen_logps.dtype)
    return DAALoss(dpo.losses + alpha * nll, dpo.chosen_rewards, dpo.rejected_rewards)


def hinge_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
) -> DAALoss:
    """Reference-normalised hinge loss: RSO's "hinge-norm" (Liu et al., arXiv 2309.06657).

    Formula: ``ℓ_i = max(0, 1 - h_i)``, ``h = β · Δ``: a hinge on the log-ratios to π_ref with margin
    ``1/β``. RSO introduced this normalised form; SLiC's calibration hinge (Zhao et al., arXiv
    2305.10425), ``max(0, δ - log π_θ(y_c) + log π_θ(y_r))``, has no reference policy. TRL's
    DPOTrainer ``loss_type="hinge"`` is this loss. Exactly 0 (and no gradient) once ``h >= 1``.
    Implicit rewards as for DPO.

    Shapes: all inputs (B,), B >= 1; ``beta`` > 0. Returns ``DAALoss`` of (B,)
    tensors.
    """
    _check_beta(beta)
    chosen, rejected = _log_ratios(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
    losses = torch.relu(1.0 - beta * (chosen - rejected))
    return DAALoss(losses, *_rewards(beta, chosen, rejected))


def daa_loss(
    loss: str,
    *,
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    chosen_lengths: torch.Tensor,
    rejected_lengths: torch.Tensor,
    ref_chosen_logps: torch.Tensor | None = None,
    ref_rejected_logps: torch.Tensor | None = None,
    beta: float,
    gamma: float = 0.0,
    eta: float = 0.0,
    alpha: float = 0.0,
    length_normalized: bool = False,
) -> DAALoss:
    """Dispatch to the DAA loss named ``loss`` (one of ``DAA_LOSSES``).

    ``"dpo"`` -> :func:`dpo_loss`, ``"ipo"`` -> :func:`ipo_loss` (the paper's
    form on summed log-probs unless ``length_normalized``, TRL's), ``"simpo"`` ->
    :func:`simpo_loss` (uses ``gamma``; the reference is ignored), ``"rpo"`` ->
    :func:`rpo_loss` (uses ``eta``), ``"dpo_nll"`` -> :func:`dpo_nll_loss` (uses ``alpha``),
    ``"hinge"`` -> :func:`hinge_loss`.
    Arguments a loss does not use are ignored, but the lengths are always
    validated so one config can switch losses without changing its inputs.

    Shapes: all tensors (B,), B >= 1. Raises ValueError for an unknown name,
    ``beta`` <= 0, a missing reference for a loss that needs one, lengths < 1
    and mismatched shapes. Returns ``DAALoss`` of (B,) tensors.
    """
    if loss not in DAA_LOSSES:
        raise ValueError(f"unknown DAA loss {loss!r}; valid choices: {list(DAA_LOSSES)}")
    _check_beta(beta)
    _check_lengths_of(chosen_logps, rejected_logps, chosen_lengths, rejected_lengths)
    if loss in _NEEDS_REFERENCE and (ref_chosen_logps is None or ref_rejected_logps is None):
        raise ValueError(f"DAA loss {loss!r} needs ref_chosen_logps and ref_rejected_logps (got None)")
    if loss == "simpo":
        return simpo_loss(chosen_logps, rejected_logps, chosen_lengths, rejected_lengths, beta, gamma)
    ref = (ref_chosen_logps, ref_rejected_logps)
    if loss == "dpo":
        return dpo_loss(chosen_logps, rejected_logps, *ref, beta)
    if loss == "ipo":
        return ipo_loss(chosen_logps, rejected_logps, *ref, beta, chosen_lengths, rejected_lengths, length_normalized)
    if loss == "rpo":
        return rpo_loss(chosen_logps, rejected_logps, *ref, beta, eta)
    if loss == "dpo_nll":
        return dpo_nll_loss(chosen_logps, rejected_logps, *ref, chosen_lengths, beta, alpha)
    return hinge_loss(chosen_logps, rejected_logps, *ref, beta)
