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
* ``policy_loss`` - ``clipped_surrogate`` returning ``PolicyLoss(loss,
  clip_frac, approx_kl)`` with the ``AGGREGATIONS`` "seq_mean" / "token_mean" /
  "token_sum_norm"; ``clipped_value_loss``.
* ``preference``  - ``bradley_terry_loss`` (optionally importance-weighted),
  ``pairwise_accuracy``.
"""

from overopt.ops.advantages import GAE, gae, grpo_advantages, rloo_advantages
from overopt.ops.kl import KL_ESTIMATORS, adaptive_kl_coef, kl_estimate, kl_k1, kl_k2, kl_k3
from overopt.ops.logprobs import entropy_from_logits, selective_log_softmax, sequence_logprobs
from overopt.ops.masked import masked_mean, masked_sum, masked_var, masked_whiten
from overopt.ops.policy_loss import AGGREGATIONS, PolicyLoss, clipped_surrogate, clipped_value_loss
from overopt.ops.preference import bradley_terry_loss, pairwise_accuracy

__all__ = [
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
    # policy_loss
    "AGGREGATIONS",
    "PolicyLoss",
    "clipped_surrogate",
    "clipped_value_loss",
    # preference
    "bradley_terry_loss",
    "pairwise_accuracy",
]
