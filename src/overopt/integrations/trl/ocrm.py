"""OCRM (Ackermann, Ishida, Sugiyama, arXiv 2507.15507) with TRL: an importance-weighted ``RewardTrainer``
and a driver that alternates RL phases and reward-model refits on the same labelled pairs.

Before each RL phase k ≥ 1 the pairs (sampled from π_SFT and labelled once) are re-weighted by how likely the
current policy makes them, log w = β_w·[log ρ_α(y_c|x) + log ρ_α(y_r|x)] with ρ_α the relative density
ratio of π_k to π_SFT (overopt.mitigations.ocrm, the lab's own code), and a fresh RM is trained with the
weighted Bradley-Terry loss (overopt.ops.bradley_terry_loss). β_w is fixed (``OCRMConfig.beta_w``) or chosen
per round for a target ESS/N (``target_ess_frac``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from datasets import Dataset
from transformers import PreTrainedModel
from trl import RewardTrainer
from trl.trainer.reward_trainer import DataCollatorForPreference

from overopt.config import OCRMConfig
from overopt.mitigations.ocrm import ocrm_pair_log_ratios
from overopt.mitigations.protocols import Figures
from overopt.ops import beta_for_target_ess, bradley_terry_loss, ess_from_log_weights, normalize_weights


def ocrm_log_weights(
    policy: PreTrainedModel, sft_policy: PreTrainedModel, pairs: Dataset, pad_id: int, cfg: OCRMConfig = OCRMConfig()
) -> tuple[torch.Tensor, Figures]:
    """(N,) log w of the stored pairs (columns prompt_ids, chosen_ids, rejected_ids: the policy's tokens,
    completions up to and including EOS) under ``policy`` vs ``sft_policy``, and the round's figures."""
    ratios = ocrm_pair_log_ratios(policy, sft_policy, pairs, alpha=cfg.alpha, pad_id=pad_id,
                                  truncate_tokens=cfg.truncate_tokens)  # fmt: skip
    beta_w = cfg.beta_w if cfg.target_ess_frac is None else beta_for_target_ess(ratios, cfg.target_ess_frac)
    log_w = beta_w * ratios
    ess = ess_from_log_weights(log_w).item()
    return log_w, {"ocrm/beta_w": beta_w, "ocrm/ess": ess, "ocrm/ess_frac": ess / len(log_w)}


def reward_dataset(pairs: Dataset, log_weights: torch.Tensor | None = None) -> Dataset:
    """The pairs in TRL's tokenised preference format (chosen_ids / rejected_ids = prompt + completion), with
    a ``log_weight`` column when weights are given."""
    data = {
        "chosen_ids": [p + c for p, c in zip(pairs["prompt_ids"], pairs["chosen_ids"], strict=True)],
        "rejected_ids": [p + r for p, r in zip(pairs["prompt_ids"], pairs["rejected_ids"], strict=True)],
    }
    if log_weights is not None:
        data["log_weight"] = log_weights.double().tolist()
    return Dataset.from_dict(data)


@dataclass
class WeightedPreferenceCollator(DataCollatorForPreference):
    """TRL's preference collator, carrying each pair's ``log_weight``."""

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        out = super().torch_call(examples)
        if "log_weight" in examples[0]:
            out["log_weight"] = torch.tensor([e["log_weight"] for e in examples], dtype=torch.float64)
        return out


class WeightedRewardTrainer(RewardTrainer):
    """TRL's RewardTrainer with OCRM's importance-weighted Bradley-Terry loss, (1/B) Σ_i w_i·(−log σ(Δ_i)),
    on a dataset with a ``log_weight`` column (``reward_dataset``); ``weight_normalization`` as
    ``OCRMConfig.normalization``: "none" (w = exp l), "dataset" (mean 1 over the dataset, applied when the
    trainer is built) or "batch" (each batch's weights sum to B). Without the column it is RewardTrainer."""

    def __init__(self, *args, weight_normalization: str = "none", **kwargs):
        if weight_normalization not in ("none", "batch", "dataset"):
            raise ValueError(f"unknown weight normalisation {weight_normalization!r}; valid: none, batch, dataset")
        data = kwargs.get("train_dataset")
        if weight_normalization == "dataset" and data is not None and "log_weight" in data.column_names:
            log_w = normalize_weights(torch.tensor(data["log_weight"], dtype=torch.float64), "dataset").log()
            kwargs["train_dataset"] = data.remove_columns("log_weight").add_column("log_weight", log_w.tolist())
            weight_normalization = "none"
        self.weight_normalization = weight_normalization
        super().__init__(*args, **kwargs)
        self.data_collator = WeightedPreferenceCollator(self.data_collator.pad_token_id,
                                                        self.data_collator.pad_to_multiple_of)  # fmt: skip

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if "log_weight" not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, "log_weight"]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        log_w = inputs.pop("log_weight", None)
        if log_w is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        outputs = model(**inputs, use_cache=False)
        chosen, rejected = torch.chunk(outputs.logits.squeeze(-1), chunks=2)
        if self.weight_normalization == "batch":
            weights = normalize_weights(log_w, "batch") * len(log_w)
        else:
            weights = normalize_weights(log_w, "none")
        loss = bradley_terry_loss(chosen, rejected, weights.to(chosen))
        mode = "train" if self.model.training else "eval"
        with torch.no_grad():
            self._metrics[mode]["accuracy"].append((chosen > rejected).float().mean().item())
            self._metrics[mode]["mean_weight"].append(weights.mean().item())
        return (loss, outputs) if return_outputs else loss


def ocrm_loop(
    rl_phase: Callable[[int, PreTrainedModel], Any],
    new_reward_model: Callable[[], PreTrainedModel],
    reward_trainer: Callable[[PreTrainedModel, Dataset], WeightedRewardTrainer],
    *,
    initial_reward_model: PreTrainedModel,
    sft_policy: PreTrainedModel,
    pairs: Dataset,
    pad_id: int,
    cfg: OCRMConfig = OCRMConfig(),
) -> list[Figures]:
    """OCRM's rounds: RL phase 0 against ``initial_reward_model``, then for k = 1 … ``cfg.rounds``: weights of
    ``pairs`` under the policy RL left, a fresh RM (``new_reward_model()``) trained by
    ``reward_trainer(rm, reward_dataset(pairs, log_w))``, and RL phase k against it.

    ``rl_phase(k, reward_model)`` builds and trains the phase's TRL trainer on the same policy object (give the
    trainer ``proxy_reward(reward_model, ...)``; the paper also moves the KL anchor to π_k) and returns it.
    Returns each refit's figures (ocrm/beta_w, ocrm/ess, ocrm/ess_frac)."""
    trainer = rl_phase(0, initial_reward_model)
    rounds: list[Figures] = []
    for k in range(1, cfg.rounds + 1):
        policy = trainer.accelerator.unwrap_model(trainer.model)
        log_w, figures = ocrm_log_weights(policy, sft_policy, pairs, pad_id, cfg)
        reward_model = new_reward_model()
        reward_trainer(reward_model, reward_dataset(pairs, log_w)).train()
        rounds.append({**figures, "ocrm/round": k})
        trainer = rl_phase(k, reward_model.eval())
    return rounds
