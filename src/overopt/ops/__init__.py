"""Pure tensor maths for RLHF / RLVR: no state, config, logging, devices or RNG.

By file:

* ``masked``      - ``masked_sum``, ``masked_mean``, ``masked_var``, ``masked_whiten``:
  reductions over the valid (mask == 1) elements.
* ``logprobs``    - ``selective_log_softmax`` (token log-probs from logits),
  ``entropy_from_logits``, ``sequence_logprobs`` (masked sum over tokens).
* ``kl``          - Schulman's per-token KL estimators ``kl_k1``, ``kl_k2``,
  ``kl_k3``, the ``KL_ESTIMATORS`` registry and ``kl_estimate``; the adaptive
  KL-coefficient controller ``adaptive_kl_coef`` (Ziegler et al. 2019).
* ``advantages``  - ``rloo_advantages``, ``grpo_advantages`` (GRPO / Dr.GRPO),
  ``gae`` returning ``GAE(advantages, returns)``.
* ``aggregation`` - Recursive Reward Aggregation (arXiv 2507.08537): ``aggregate`` and
  ``returns_to_go`` of step rewards under ``REWARD_AGGREGATIONS`` "sum" / "max" / "min" / "mean" / "sharpe";
  ``token_returns`` (PPO's per-token λ-returns in aggregation-state space, ``STATE_SIZES``);
  ``softmin_weighted`` (PURE's min-form step rewards, arXiv 2504.15275).
* ``policy_loss`` - ``clipped_surrogate`` returning ``PolicyLoss(loss,
  clip_frac, approx_kl)`` with the ``AGGREGATIONS`` "seq_mean" / "token_mean" /
  "token_sum_norm"; ``clipped_value_loss``.
* ``sampler_is``  - ``sampler_importance_weights`` (``SamplerWeights``, ``SAMPLER_IS_MODES``): truncated or
  masked importance weights π_old/μ for rollouts drawn by another engine (vLLM), as TRL's GRPOTrainer.
* ``preference``  - ``bradley_terry_loss`` (optionally importance-weighted),
  ``pairwise_accuracy``.
* ``daa``         - direct-alignment losses on sequence log-probs, each returning
  ``DAALoss(losses, chosen_rewards, rejected_rewards)``: ``dpo_loss`` (arXiv
  2305.18290), ``ipo_loss`` (arXiv 2310.12036), ``simpo_loss`` (arXiv
  2405.14734), ``rpo_loss`` (arXiv 2405.16436), ``dpo_nll_loss`` (arXiv
  2404.19733), ``hinge_loss`` (RSO's hinge-norm, arXiv 2309.06657), and
  ``daa_loss`` dispatching by name over ``DAA_LOSSES``.
* ``ocrm``        - OCRM importance weights (arXiv 2507.15507):
  ``relative_log_density_ratio``, ``ocrm_log_weights``, ``normalize_weights``
  (``WEIGHT_NORMALIZATIONS`` "none" / "batch" / "dataset"),
  ``effective_sample_size``, ``ess_from_log_weights``.
* ``signcert``    - SignCert-PO (arXiv 2604.02986, partly reconstructed):
  ``group_centered_features``, ``sign_radii`` returning ``SignRadii(advantages,
  radii)``, ``certification_threshold`` (``THRESHOLD_SCOPES``),
  ``certified_weights`` (``CERTIFIED_WEIGHT_MODES``).
* ``ensemble``    - RM-ensemble aggregation (arXiv 2310.02743):
  ``aggregate_ensemble`` (``ENSEMBLE_MODES`` "mean" / "wco" / "uwo"),
  ``ensemble_std``.
* ``par``         - ``par_reward``, Preference As Reward shaping (arXiv 2502.18770).
* ``chi2``        - ``chi2_estimate`` returning ``Chi2(estimate, penalty)``, χ²
  occupancy regularisation (arXiv 2403.03185).
* ``gr``          - Gradient Regularization by finite differences (arXiv
  2602.18037): ``combine_gr_gradients``, ``clip_by_global_norm``,
  ``is_gr_excluded`` (``GR_EXCLUDE_PATTERNS``); its effective strength
  ``gr_correction`` (``GRCorrection(ratio, cos)``) and the controller
  ``adapt_gr_gamma``.
* ``strength``    - ``penalty_share``: the share of the update a KL or χ² term
  makes (each method's own strength lives in its module: ``gr_correction``,
  ``advantage_mass_removed``, ``ensemble_penalty_share``, ``par_saturation``,
  ``order_disagreement``, and OCRM's ``beta_for_target_ess``).
* ``mechanisms``  - the papers' claims against gold: ``sign_flips``
  (``SignFlips``), ``auroc``, ``order_accuracy``, ``pearson``.
* ``laws`` (``overopt.laws``, numpy only: the report uses it) - Gao et al.'s
  overoptimization laws (arXiv 2210.10760): the unbiased best-of-n estimator
  ``best_of_n`` (``bon_weights``, ``log_grid``), ``kl_bon_bound`` and
  ``kl_bon_plugin``, the functional-form fits ``fit_form`` (``Fit``, ``FORMS``),
  ``fit_curves`` (jackknife t intervals over seeds) and ``forecast``.
"""

from overopt.laws import (
    FORMS,
    Fit,
    best_of_n,
    bon_weights,
    fit_curves,
    fit_form,
    forecast,
    kl_bon_bound,
    kl_bon_plugin,
    log_grid,
)
from overopt.ops.advantages import GAE, gae, grpo_advantages, rloo_advantages
from overopt.ops.aggregation import (
    REWARD_AGGREGATIONS,
    STATE_SIZES,
    TokenReturns,
    aggregate,
    returns_to_go,
    softmin_weighted,
    token_returns,
)
from overopt.ops.chi2 import Chi2, chi2_estimate
from overopt.ops.daa import (
    DAA_LOSSES,
    DAALoss,
    daa_loss,
    dpo_loss,
    dpo_nll_loss,
    hinge_loss,
    ipo_loss,
    rpo_loss,
    simpo_loss,
)
from overopt.ops.ensemble import ENSEMBLE_MODES, aggregate_ensemble, ensemble_penalty_share, ensemble_std
from overopt.ops.gr import (
    GR_EXCLUDE_PATTERNS,
    GRCorrection,
    adapt_gr_gamma,
    clip_by_global_norm,
    combine_gr_gradients,
    gr_correction,
    is_gr_excluded,
)
from overopt.ops.kl import KL_ESTIMATORS, adaptive_kl_coef, kl_estimate, kl_k1, kl_k2, kl_k3
from overopt.ops.logprobs import entropy_from_logits, selective_log_softmax, sequence_logprobs
from overopt.ops.masked import masked_mean, masked_sum, masked_var, masked_whiten
from overopt.ops.mechanisms import SignFlips, auroc, order_accuracy, pearson, sign_flips
from overopt.ops.ocrm import (
    WEIGHT_NORMALIZATIONS,
    beta_for_target_ess,
    effective_sample_size,
    ess_from_log_weights,
    normalize_weights,
    ocrm_log_weights,
    relative_log_density_ratio,
)
from overopt.ops.par import par_reward, par_saturation
from overopt.ops.policy_loss import AGGREGATIONS, PolicyLoss, clipped_surrogate, clipped_value_loss
from overopt.ops.preference import bradley_terry_loss, order_disagreement, pairwise_accuracy
from overopt.ops.sampler_is import SAMPLER_IS_MODES, SamplerWeights, sampler_importance_weights
from overopt.ops.signcert import (
    CERTIFIED_WEIGHT_MODES,
    THRESHOLD_SCOPES,
    SignRadii,
    advantage_mass_removed,
    certification_threshold,
    certified_weights,
    group_centered_features,
    head_fisher,
    sign_radii,
    worst_case_advantages,
)
from overopt.ops.strength import penalty_share

__all__ = [
    # laws (overopt.laws)
    "FORMS",
    "Fit",
    "best_of_n",
    "bon_weights",
    "fit_curves",
    "fit_form",
    "forecast",
    "kl_bon_bound",
    "kl_bon_plugin",
    "log_grid",
    # masked
    "masked_sum",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    # logprobs
    "selective_log_softmax",
    "entropy_from_logits",
    "sequence_logprobs",
    # kl
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "KL_ESTIMATORS",
    "kl_estimate",
    "adaptive_kl_coef",
    # advantages
    "rloo_advantages",
    "grpo_advantages",
    "GAE",
    "gae",
    # aggregation
    "REWARD_AGGREGATIONS",
    "STATE_SIZES",
    "TokenReturns",
    "aggregate",
    "returns_to_go",
    "softmin_weighted",
    "token_returns",
    # policy_loss
    "AGGREGATIONS",
    "PolicyLoss",
    "clipped_surrogate",
    "clipped_value_loss",
    # preference
    "bradley_terry_loss",
    "order_disagreement",
    "pairwise_accuracy",
    # daa
    "DAA_LOSSES",
    "DAALoss",
    "dpo_loss",
    "dpo_nll_loss",
    "ipo_loss",
    "simpo_loss",
    "rpo_loss",
    "hinge_loss",
    "daa_loss",
    # ocrm
    "WEIGHT_NORMALIZATIONS",
    "relative_log_density_ratio",
    "ocrm_log_weights",
    "normalize_weights",
    "effective_sample_size",
    "ess_from_log_weights",
    "beta_for_target_ess",
    # signcert
    "THRESHOLD_SCOPES",
    "CERTIFIED_WEIGHT_MODES",
    "SignRadii",
    "group_centered_features",
    "sign_radii",
    "certification_threshold",
    "certified_weights",
    "worst_case_advantages",
    "advantage_mass_removed",
    "head_fisher",
    # ensemble
    "ENSEMBLE_MODES",
    "aggregate_ensemble",
    "ensemble_std",
    "ensemble_penalty_share",
    # par
    "par_reward",
    "par_saturation",
    # chi2
    "Chi2",
    "chi2_estimate",
    # gr
    "GR_EXCLUDE_PATTERNS",
    "combine_gr_gradients",
    "clip_by_global_norm",
    "is_gr_excluded",
    "GRCorrection",
    "gr_correction",
    "adapt_gr_gamma",
    # strength
    "penalty_share",
    # mechanisms
    "SignFlips",
    "sign_flips",
    "auroc",
    "order_accuracy",
    "pearson",
    # sampler_is
    "SAMPLER_IS_MODES",
    "SamplerWeights",
    "sampler_importance_weights",
]
