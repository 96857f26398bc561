"""Conservative aggregation of a reward-model ensemble.

Coste, Anwar, Kirk, Krueger, "Reward Model Ensembles Help Mitigate
Overoptimization", arXiv 2310.02743: k reward models that differ only in their
training seed score the same completions; the policy is optimised against

* ``"mean"``: ``(1/k) Σ_i r_i``;
* ``"wco"`` (worst-case optimisation): ``min_i r_i``;
* ``"uwo"`` (uncertainty-weighted optimisation): ``mean_i r_i - λ · Var_i r_i``
  (λ = 0.5 for best-of-n and 0.1 for PPO in their code).
"""

from __future__ import annotations

import math

import torch

from overopt.ops.masked import _check_ndim

__all__ = ["ENSEMBLE_MODES", "aggregate_ensemble", "ensemble_penalty_share", "ensemble_std"]

ENSEMBLE_MODES: tuple[str, ...] = ("mean", "wco", "uwo")


def _check_rewards(rewards: torch.Tensor) -> None:
    _check_ndim("rewards", rewards, 2, "(k, B) = (ensemble members, completions)")
    if rewards.shape[0] < 1:
        raise ValueError(f"need at least one ensemble member, got rewards of shape {tuple(rewards.shape)}")


def _ensemble_var(rewards: torch.Tensor, ddof: int) -> torch.Tensor:
    members = rewards.shape[0]
    if isinstance(ddof, bool) or not isinstance(ddof, int) or ddof < 0:
        raise ValueError(f"ddof must be a non-negative int, got {ddof!r}")
    if members - ddof <= 0:
        raise ValueError(f"the variance over k = {members} member(s) with ddof = {ddof} is undefined (need k > ddof)")
    return rewards.var(dim=0, correction=ddof)


def ensemble_std(rewards: torch.Tensor, ddof: int = 0) -> torch.Tensor:
    """Standard deviation of the members' rewards for each completion.

    Formula: ``std = sqrt(Σ_i (r_i - mean r)^2 / (k - ddof))``; ``ddof = 0``
    (default) is the population std over the k members, 0 for k = 1.

    Shapes: ``rewards`` (k, B). Returns (B,). Raises ValueError when
    ``k <= ddof`` (e.g. k = 1 with ddof = 1) or ``ddof`` is negative.
    """
    _check_rewards(rewards)
    return _ensemble_var(rewards, ddof).sqrt()


def aggregate_ensemble(
    rewards: torch.Tensor,
    mode: str,
    uwo_lambda: float = 0.1,
    ddof: int = 0,
) -> torch.Tensor:
    """Aggregate the ensemble's rewards into one reward per completion.

    Formula (Coste et al., arXiv 2310.02743), over the k members for each
    completion:

    * ``"mean"``: ``R = (1/k) Σ_i r_i``;
    * ``"wco"``:  ``R = min_i r_i`` (always ``<= mean``);
    * ``"uwo"``:  ``R = mean_i r_i - λ · Var_i r_i`` with λ = ``uwo_lambda``
      (0.1 as in their PPO runs; 0.5 for best-of-n) and
      ``Var = Σ_i (r_i - mean r)^2 / (k - ddof)``.

    ``ddof = 0`` (default) - the population variance: the k members are the
    whole ensemble being aggregated rather than a sample from a larger one, and
    it makes UWO well defined for k = 1 (Var = 0). ``ddof = 1`` gives the
    unbiased sample variance (``torch.var``'s default), larger by the factor
    ``k / (k - 1)``; it needs k >= 2. ``uwo_lambda`` and ``ddof`` only affect
    "uwo". With k = 1 every mode returns the single model's rewards.

    Shapes: ``rewards`` (k, B). Returns (B,). Raises ValueError for an unknown
    ``mode`` (naming the choices in ``ENSEMBLE_MODES``), a non-finite λ, or
    "uwo" with ``k <= ddof``.
    """
    if mode not in ENSEMBLE_MODES:
        raise ValueError(f"unknown ensemble aggregation {mode!r}; valid choices: {list(ENSEMBLE_MODES)}")
    _check_rewards(rewards)
    if mode == "mean":
        return rewards.mean(dim=0)
    if mode == "wco":
        return rewards.amin(dim=0)
    if not math.isfinite(uwo_lambda):
        raise ValueError(f"uwo_lambda must be finite, got {uwo_lambda}")
    return rewards.mean(dim=0) - uwo_lambda * _ensemble_var(rewards, ddof)


def ensemble_penalty_share(rewards: torch.Tensor, aggregated: torch.Tensor) -> torch.Tensor:
    """A conservative ensemble's effective strength: its penalty relative to the reward's spread.

    Formula: ``mean_B |R − mean_k r| / std_B(R)`` with R the aggregated reward
    (:func:`aggregate_ensemble`), ``mean_k r`` the members' mean, and std over the batch (ddof 1).
    The penalty is what WCO / UWO subtract from the mean; dividing by the batch spread of R says
    how much it weighs against the differences the policy gradient sees. 0 for ``"mean"``
    aggregation (no penalty) and for k = 1; 0 when there is no penalty, whatever the spread; +inf
    for a penalty over a batch with no spread.

    Shapes: ``rewards`` (k, B) with B >= 2, ``aggregated`` (B,). Returns a 0-d tensor, no gradient.
    """
    _check_rewards(rewards)
    if aggregated.shape != rewards.shape[1:] or rewards.shape[1] < 2:
        raise ValueError(f"aggregated must have shape (B,) = {tuple(rewards.shape[1:])} with B >= 2")
    with torch.no_grad():
        penalty = (aggregated - rewards.mean(dim=0)).abs().mean()
        spread = aggregated.std()
        if penalty == 0:
            return torch.zeros_like(penalty)
        return penalty / spread if spread > 0 else torch.full_like(penalty, math.inf)
