"""overopt inside TRL (``pip install "overopt[trl]"``): a user's GRPO / RLOO script gains the gold-reward
monitor, the early-warning alarms and the mitigations of the papers with a few lines.

* ``rewards``  - TRL reward functions backed by the lab's reward sources: ``proxy_reward`` (one RM, on the
  policy's token ids or through its own tokenizer and chat template), ``ensemble_reward`` (mean / WCO / UWO,
  arXiv 2310.02743), ``par_reward`` (PAR, arXiv 2502.18770).
* ``trainers`` - mixins for ``GRPOTrainer`` / ``RLOOTrainer``: ``GradientRegularizationMixin`` (GR, arXiv
  2602.18037), ``SignCertMixin`` (SignCert-PO, arXiv 2604.02986), ``Chi2Mixin`` (χ², arXiv 2403.03185),
  ``with_mitigations`` to compose them, and ``ref_reset_args`` (reference resets through TRL's own
  ``sync_ref_model``).
* ``monitor``  - ``GoldRewardCallback`` (held-out gold / proxy / KL, written as an overopt run directory that
  ``overopt report`` reads) and ``AlarmCallback`` (overopt.detectors, with a stop).
* ``ocrm``     - ``WeightedRewardTrainer`` (OCRM's importance-weighted Bradley-Terry loss, arXiv 2507.15507)
  and ``ocrm_loop``, which alternates reward-model refits and RL phases.

The mixins override TRL internals (``_generate_and_score_completions``, ``_compute_loss``,
``training_step``), so the extra pins the TRL versions they were tested with.
"""

from __future__ import annotations

import importlib.metadata

from packaging.version import Version

TESTED_TRL = (Version("1.16.0"), Version("1.17.0"))  # [low, high)

try:
    _trl = Version(importlib.metadata.version("trl"))
except importlib.metadata.PackageNotFoundError:
    raise ImportError('overopt.integrations.trl needs TRL: pip install "overopt[trl]"') from None
if not TESTED_TRL[0] <= _trl < TESTED_TRL[1]:
    raise ImportError(
        f"overopt.integrations.trl is tested with trl>={TESTED_TRL[0]},<{TESTED_TRL[1]}; trl {_trl} is installed "
        '(pip install "overopt[trl]")'
    )

from overopt.integrations.trl.monitor import AlarmCallback, GoldRewardCallback, lab_gold, reward_model_gold  # noqa: E402
from overopt.integrations.trl.ocrm import WeightedRewardTrainer, ocrm_loop  # noqa: E402
from overopt.integrations.trl.rewards import (  # noqa: E402
    RewardSourceFunc,
    ensemble_reward,
    par_reward,
    prompt_token_ids,
    proxy_reward,
)
from overopt.integrations.trl.trainers import (  # noqa: E402
    Chi2Mixin,
    GradientRegularizationMixin,
    SignCertMixin,
    ref_reset_args,
    with_mitigations,
)

__all__ = [
    "AlarmCallback",
    "Chi2Mixin",
    "GoldRewardCallback",
    "GradientRegularizationMixin",
    "RewardSourceFunc",
    "SignCertMixin",
    "WeightedRewardTrainer",
    "ensemble_reward",
    "ocrm_loop",
    "par_reward",
    "prompt_token_ids",
    "proxy_reward",
    "ref_reset_args",
    "reward_model_gold",
    "lab_gold",
    "with_mitigations",
]
