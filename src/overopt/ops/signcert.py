"""Sign-certification radii and weights of SignCert-PO.

Ono, Ackermann, Nishimori et al., arXiv 2604.02986. Reward hacking is modelled
as flipped advantage signs: a completion whose advantage sign would flip under a
small perturbation of the reward model is not trusted, and its policy-gradient
terms are down-weighted. Confirmed by the paper's abstract: a certified
sign-preservation radius (the smallest RM-parameter perturbation that flips the
advantage sign) in closed form for a linear reward head, a tuned quantile
threshold, down-weighting of non-robust completions, Dr.GRPO as the base.

RECONSTRUCTED (the paper text was not available; every choice is a knob), per
overopt's METHODS.md §3:

* RM ``r(x, y) = wᵀ h(x, y) + b`` with ``h`` the final hidden state at the last
  token. Within a group of K completions of one prompt,
  ``d_i = h_i - mean_j h_j`` and the (Dr.GRPO) advantage is ``A_i(w) = wᵀ d_i``
  (``b`` cancels, ``Σ_i A_i = 0``).
* Radius over the ℓ2 ball of head perturbations δ: ``r_i = |A_i| / ‖d_i‖₂``;
  over the ellipsoid ``{δ : δᵀ M δ <= ρ²}``: ``r_i = |A_i| / sqrt(d_iᵀ M⁻¹ d_i)``.
  (Minimise ``‖δ‖`` subject to ``(w + δ)ᵀ d_i = 0``; by Cauchy-Schwarz the
  minimiser is ``δ* = -A_i M⁻¹ d_i / (d_iᵀ M⁻¹ d_i)``.)
* Threshold ``τ`` = q-quantile of the radii over the batch or per group.
* Weight ``ω_i = 1`` if ``r_i >= τ`` else ``0`` ("drop") or ``r_i / τ``
  ("linear"), detached; the loss multiplies each completion's clipped-surrogate
  terms by ``ω_i`` (``overopt.ops.clipped_surrogate(..., weights=ω)``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from overopt.ops.masked import _check_groups, _check_ndim

__all__ = [
    "THRESHOLD_SCOPES",
    "CERTIFIED_WEIGHT_MODES",
    "SignRadii",
    "group_centered_features",
    "sign_radii",
    "certification_threshold",
    "certified_weights",
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
    """Output of :func:`sign_radii`: both (P, K)."""

    advantages: torch.Tensor
    radii: torch.Tensor


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
    (H, H) or None. Returns ``SignRadii(advantages, radii)``, both (P, K), radii
    ``>= 0``. Not detached (wrap in ``torch.no_grad()`` as needed; the weights
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
    return SignRadii(advantages=advantages, radii=radii)


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
