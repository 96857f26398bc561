"""Sign-certification radii and weights of SignCert-PO.

Ono, Ackermann, Nishimori et al., arXiv 2604.02986. Reward hacking is modelled
as flipped advantage signs: a completion whose advantage sign would flip under a
small perturbation of the reward model is not trusted, and its policy-gradient
terms are down-weighted. Confirmed by the paper's abstract: a certified
sign-preservation radius (the smallest RM-parameter perturbation that flips the
advantage sign) in closed form for a linear reward head, a tuned quantile
threshold, down-weighting of non-robust completions, Dr.GRPO as the base.

Read from the paper (arXiv 2604.02986v1, §3, Theorem 3.2, Algorithm 1):

* RM ``r(x, y) = wᵀ h(x, y) + b`` with ``h`` the final hidden state at the last
  token; only ``w`` is perturbed, inside the ℓ2 ball ``‖δ‖₂ <= ε``. Within a
  group of K completions of one prompt, ``d_i = h_i - mean_j h_j`` (the mean
  over all K) and the Dr.GRPO advantage is ``A_i(w) = wᵀ d_i`` (``b``
  cancels, ``Σ_i A_i = 0``; no std normalisation).
* Certified sign-preservation radius ``Δ_i = |A_i| / ‖d_i‖₂``
  (:func:`sign_radii`).
* ε is the q-quantile of the radii over the whole batch (§3.2; App. F.1.2,
  Fig. 1): exactly a share q of completions have ``Δ < ε``. (§3.2 and
  Algorithm 1 line 5 print the quantile of ``1/Δ``, which has the units of an
  inverse head-weight norm and cannot be the radius of a ball of head weights;
  this lab reads it as the quantile of Δ.)
* The worst-case advantage over the ball is ``Ã_i = ρ_i A_i`` with
  ``ρ_i = 1 - ε/Δ_i``, i.e. ``Ã_i = sign(A_i) (|A_i| - ε ‖d_i‖)``
  (:func:`worst_case_advantages`): every advantage shrinks, and those with
  ``Δ_i < ε`` flip sign. The paper's Algorithm 1 was read (v1, 2026-11-27) as
  using ``Ã`` with no clipping at 0 and no renormalisation; its abstract calls
  this "down-weighting non-robust completions". ``clip=True`` keeps the other
  reading, ``Ã_i = sign(A_i) max(0, |A_i| - ε ‖d_i‖)``: non-robust completions
  are zeroed instead of reversed. The policy-gradient update uses ``Ã``
  (Dr.GRPO clipped surrogate).

Not from the paper, kept as knobs: the ellipsoid radius (``metric=M``, with M
from :func:`head_fisher`), a per-group quantile, and the weights of
:func:`certified_weights` (``drop``: 0/1, ``linear``: Δ/τ), which an earlier
reconstruction used before the paper's text was read.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from overopt.ops.masked import _check_groups, _check_ndim, _check_same_shape

__all__ = [
    "THRESHOLD_SCOPES",
    "CERTIFIED_WEIGHT_MODES",
    "SignRadii",
    "advantage_mass_removed",
    "group_centered_features",
    "head_fisher",
    "sign_radii",
    "certification_threshold",
    "certified_weights",
    "worst_case_advantages",
]

THRESHOLD_SCOPES: tuple[str, ...] = ("batch", "group")
CERTIFIED_WEIGHT_MODES: tuple[str, ...] = ("drop", "linear")


def _check_hidden(hidden: torch.Tensor) -> None:
    _check_groups("hidden", hidden, 3, "(P, K, H) = (prompts, completions per prompt, hidden size)")


def group_centered_features(hidden: torch.Tensor) -> torch.Tensor:
    """Hidden states centred within each prompt's group of completions.

    Formula: ``d_i = h_i - (1/K) Σ_j h_j`` per group (SignCert-PO,
    arXiv 2604.02986; RECONSTRUCTED, see the module doc). The mean is taken of
    ``h_j - h_0`` and ``h_0`` added back - algebraically identical, but a group
    of identical completions then gives ``d_i == 0`` exactly (a plain mean of K
    equal floats need not round back to the same value), and the subtraction
    loses less precision when the hidden states share a large common offset.

    Shapes: ``hidden`` (P, K, H) with K >= 2. Returns (P, K, H).
    """
    _check_hidden(hidden)
    shifted = hidden - hidden[:, :1]
    return shifted - shifted.mean(dim=1, keepdim=True)


class SignRadii(NamedTuple):
    """Output of :func:`sign_radii`: all (P, K)."""

    advantages: torch.Tensor
    radii: torch.Tensor
    feature_norms: torch.Tensor  # ‖d_i‖₂, or sqrt(d_iᵀ M⁻¹ d_i) for an ellipsoid: |A_i| = Δ_i · this


def sign_radii(
    hidden: torch.Tensor,
    head_weight: torch.Tensor,
    metric: torch.Tensor | None = None,
    eps: float = 1e-12,
) -> SignRadii:
    """Linear-head advantages and their certified sign-preservation radii.

    Formula (SignCert-PO, arXiv 2604.02986; RECONSTRUCTED, see the module doc):
    ``d_i`` from :func:`group_centered_features`, ``A_i = wᵀ d_i`` and

    * ``metric=None`` (ℓ2 ball): ``r_i = |A_i| / ‖d_i‖₂``;
    * ``metric=M`` (ellipsoid ``δᵀ M δ <= ρ²``, M symmetric positive definite):
      ``r_i = |A_i| / sqrt(d_iᵀ M⁻¹ d_i)``, with ``d_iᵀ M⁻¹ d_i = ‖L⁻¹ d_i‖²``
      from the Cholesky factor ``M = L Lᵀ`` (a triangular solve, no inverse).
      ``M = I`` gives the ℓ2 radius.

    ``r_i`` is the smallest perturbation size (in that norm) of the head weights
    ``w`` that makes ``(w + δ)ᵀ d_i = 0``; any larger one can flip the sign.

    Convention for degenerate features: where the (metric) norm of ``d_i`` is
    ``<= eps`` (absolute), the radius is ``+inf``. When ``d_i = 0`` - e.g. a
    group whose K completions are identical, which gives exactly 0 - then also
    ``A_i = 0`` for every ``w``: no perturbation of the head can change that
    advantage, so it is maximally robust (and carries no policy gradient
    anyway). ``eps`` only guards such (near-)zero features; it is not relative
    to the scale of ``hidden``.

    Shapes: ``hidden`` (P, K, H) (K >= 2), ``head_weight`` (H,), ``metric``
    (H, H) or None. Returns ``SignRadii(advantages, radii, feature_norms)``,
    all (P, K), radii ``>= 0``. Not detached (wrap in ``torch.no_grad()`` as needed; the weights
    of :func:`certified_weights` are detached anyway). Raises ValueError on bad
    shapes or a metric that is not symmetric positive definite.
    """
    _check_hidden(hidden)
    size = hidden.shape[2]
    _check_ndim("head_weight", head_weight, 1, "(H,)")
    if head_weight.shape[0] != size:
        raise ValueError(f"head_weight must have shape ({size},) to match hidden, got {tuple(head_weight.shape)}")
    d = group_centered_features(hidden)
    advantages = d @ head_weight
    if metric is None:
        norms = torch.linalg.vector_norm(d, dim=-1)
    else:
        if metric.shape != (size, size):
            raise ValueError(f"metric must have shape ({size}, {size}) to match hidden, got {tuple(metric.shape)}")
        if not torch.allclose(metric, metric.mT):
            raise ValueError("metric must be symmetric positive definite; it is not symmetric")
        chol, info = torch.linalg.cholesky_ex(metric)
        if int(info) != 0:
            raise ValueError("metric must be symmetric positive definite; its Cholesky factorisation failed")
        # Solve L z = d for every d_i at once: columns are the P*K feature vectors.
        z = torch.linalg.solve_triangular(chol, d.reshape(-1, size).mT, upper=False)
        norms = torch.linalg.vector_norm(z, dim=0).reshape(advantages.shape)
    degenerate = norms <= eps
    inf = torch.full((), float("inf"), dtype=norms.dtype, device=norms.device)
    safe_norms = torch.where(degenerate, torch.ones_like(norms), norms)
    radii = torch.where(degenerate, inf, advantages.abs() / safe_norms)
    return SignRadii(advantages=advantages, radii=radii, feature_norms=norms)


def certification_threshold(radii: torch.Tensor, quantile: float, scope: str) -> torch.Tensor:
    """Threshold ``τ`` = the q-quantile of the certified radii.

    Formula (SignCert-PO, arXiv 2604.02986; RECONSTRUCTED: q and the scope are
    knobs): ``τ = Q_q({r_i})`` with ``torch.quantile``'s linear interpolation
    between order statistics, over

    * ``"batch"``: all P·K radii -> returns shape (1, 1);
    * ``"group"``: each prompt's K radii -> returns shape (P, 1).

    Both broadcast against ``radii`` (P, K).

    Convention for ``+inf`` radii (zero features, see :func:`sign_radii`):
    they are left out of the quantile, which is taken over the finite radii
    only - they carry no policy gradient and would otherwise drag τ to ``+inf``
    (or nan by interpolating with inf). A scope with no finite radius at all
    gets ``τ = +inf``; its radii are all ``+inf >= τ``, so they stay certified.
    ``quantile = 0`` gives the smallest finite radius, so every completion is
    certified (weight 1). nan radii are not expected (they would be treated as
    +inf).

    Shapes: ``radii`` (P, K). Raises ValueError for ``quantile`` outside
    [0, 1] or an unknown ``scope``. No gradient.
    """
    if scope not in THRESHOLD_SCOPES:
        raise ValueError(f"unknown threshold scope {scope!r}; valid choices: {list(THRESHOLD_SCOPES)}")
    if not 0.0 <= quantile <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {quantile}")
    _check_ndim("radii", radii, 2, "(P, K)")
    if radii.numel() == 0:
        raise ValueError(f"radii must be non-empty, got shape {tuple(radii.shape)}")
    with torch.no_grad():
        # nanquantile skips nan, so mark the infinite radii as nan.
        finite_only = torch.where(torch.isinf(radii), torch.full_like(radii, float("nan")), radii)
        if scope == "batch":
            tau = torch.nanquantile(finite_only.reshape(-1), quantile).reshape(1, 1)
        else:
            tau = torch.nanquantile(finite_only, quantile, dim=1, keepdim=True)
        return torch.nan_to_num(tau, nan=float("inf"))


def certified_weights(radii: torch.Tensor, threshold: torch.Tensor | float, mode: str) -> torch.Tensor:
    """Per-completion policy-gradient weights from the certified radii.

    Formula (SignCert-PO, arXiv 2604.02986; RECONSTRUCTED: the mode is a knob):
    ``ω_i = 1`` if ``r_i >= τ``, else ``0`` (``"drop"``) or ``r_i / τ``
    (``"linear"``, in [0, 1) since ``0 <= r_i < τ`` there). Detached: the
    weights are constants of the surrogate loss.

    Shapes: ``radii`` (P, K); ``threshold`` a float or a tensor broadcastable
    to (P, K) (e.g. the (1, 1) or (P, 1) output of
    :func:`certification_threshold`). Returns (P, K) in the radii's dtype.
    Raises ValueError for an unknown ``mode`` or a non-broadcastable threshold.
    """
    if mode not in CERTIFIED_WEIGHT_MODES:
        raise ValueError(f"unknown certified-weight mode {mode!r}; valid choices: {list(CERTIFIED_WEIGHT_MODES)}")
    _check_ndim("radii", radii, 2, "(P, K)")
    radii = radii.detach()
    tau = torch.as_tensor(threshold, dtype=radii.dtype, device=radii.device).detach()
    try:
        shape = torch.broadcast_shapes(radii.shape, tau.shape)
    except RuntimeError:
        shape = None
    if shape != radii.shape:
        raise ValueError(
            f"threshold of shape {tuple(tau.shape)} does not broadcast to radii of shape {tuple(radii.shape)}"
        )
    certified = radii >= tau
    one = torch.ones((), dtype=radii.dtype, device=radii.device)
    if mode == "drop":
        return torch.where(certified, one, torch.zeros_like(one))
    # r < τ implies τ > 0 where this branch is selected, so r / τ is finite there.
    return torch.where(certified, one, radii / tau)


def worst_case_advantages(
    advantages: torch.Tensor, feature_norms: torch.Tensor, epsilon: torch.Tensor | float, clip: bool = False
) -> torch.Tensor:
    """The worst-case advantage over head perturbations of size ε (SignCert-PO, Theorem 3.2).

    Formula (arXiv 2604.02986 §3.2): ``min over ‖δ‖ <= ε`` of the advantage in the direction of its
    sign is ``Ã_i = sign(A_i) (|A_i| - ε ‖d_i‖) = (1 - ε/Δ_i) A_i``: every advantage shrinks
    by ``ε‖d_i‖``, and a completion whose radius ``Δ_i`` is below ε gets the opposite sign.
    Written as a shift, not as ``ρ_i A_i``, so that it stays bounded when ``A_i → 0`` (ρ → -∞)
    and applies to an advantage that also holds terms the head does not move (a KL penalty in
    the reward): those shift nothing. ``ε = 0`` returns ``advantages`` unchanged; so does
    ``‖d_i‖ = 0`` (no head perturbation moves ``A_i``). Detached.

    ``clip=True``: ``Ã_i = sign(A_i) max(0, |A_i| - ε ‖d_i‖)`` - an advantage shrinks to 0 but never
    changes sign, so a non-robust completion is down-weighted to nothing rather than pushed the other way.

    Shapes: ``advantages``, ``feature_norms`` (P, K) or (B,); ``epsilon`` a float or a tensor
    broadcastable to them (e.g. the (1, 1) / (P, 1) output of :func:`certification_threshold`;
    an infinite ε is treated as "no finite radius in scope": no shift). Returns the same shape.
    """
    _check_same_shape("advantages", advantages, "feature_norms", feature_norms)
    a, n = advantages.detach(), feature_norms.detach()
    eps = torch.as_tensor(epsilon, dtype=a.dtype, device=a.device).detach()
    eps = torch.where(torch.isfinite(eps), eps, torch.zeros_like(eps))
    if (eps < 0).any():
        raise ValueError("epsilon must be >= 0")
    kept = a.abs() - eps * n
    return torch.sign(a) * (kept.clamp_min(0) if clip else kept)


def advantage_mass_removed(advantages: torch.Tensor, new_advantages: torch.Tensor) -> torch.Tensor:
    """SignCert-PO's effective strength: the share of the advantage mass the method changes.

    Formula: ``Σ_i |A_i − Ã_i| / Σ_i |A_i|``; for weights ``Ã = ω A`` with ``ω <= 1`` this is
    ``Σ (1 − ω_i)|A_i| / Σ |A_i|``. 0 when nothing changes (method off); 1 when every advantage
    is zeroed; above 1 when signs flip. A batch with ``Σ|A| = 0`` gives 0.

    Shapes: any two equal shapes. Returns a 0-d tensor (no gradient).
    """
    _check_same_shape("advantages", advantages, "new_advantages", new_advantages)
    with torch.no_grad():
        total = advantages.abs().sum()
        moved = (advantages - new_advantages).abs().sum()
        return torch.where(total > 0, moved / total.clamp_min(torch.finfo(total.dtype).tiny), torch.zeros_like(total))


def head_fisher(features: torch.Tensor, probs: torch.Tensor, damping: float) -> torch.Tensor:
    """An ellipsoid metric M for :func:`sign_radii`: the damped Fisher information of the linear head.

    Formula: for a head trained by logistic losses on features f_n (Bradley-Terry pairs:
    ``f = h_chosen − h_rejected``, ``p = σ(wᵀf)``; a judge's BCE: ``f = h``, ``p = σ(wᵀh + b)``),
    ``F = (1/N) Σ_n p_n (1 − p_n) f_n f_nᵀ`` and ``M = F + λ (tr F / H) I`` (λ = ``damping``,
    relative to F's mean eigenvalue, so it does not depend on the features' scale). The Laplace
    posterior of the head is N(ŵ, (N F)⁻¹), so ``{δ : δᵀ M δ <= ρ²}`` is a credible set of head
    weights: directions the RM's data pinned down are hard to move, thin ones easy. Radii then
    shrink for completions whose features point where the RM saw little data. overopt's choice,
    not the paper's (which uses the ℓ2 ball, i.e. M = I).

    Shapes: ``features`` (N, H), ``probs`` (N,) in [0, 1]. Returns (H, H), symmetric positive
    definite for ``damping > 0``. Float64 recommended.
    """
    _check_ndim("features", features, 2, "(N, H)")
    _check_ndim("probs", probs, 1, "(N,)")
    if probs.shape[0] != features.shape[0] or features.shape[0] == 0:
        raise ValueError(f"need N >= 1 features and N probs, got {tuple(features.shape)} and {tuple(probs.shape)}")
    if not damping > 0:
        raise ValueError(f"damping must be > 0, got {damping}")
    weighted = features * (probs * (1 - probs)).unsqueeze(1)
    fisher = weighted.mT @ features / features.shape[0]
    size = features.shape[1]
    scale = torch.diagonal(fisher).sum() / size
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # all-zero F: M = λI
    return fisher + damping * scale * torch.eye(size, dtype=fisher.dtype, device=fisher.device)
