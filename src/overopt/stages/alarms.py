"""The detectors' online side (overopt.detectors holds the formulas): the reward-model signals measured on
each evaluation's samples, and a run's alarm monitor (its history, its alarm figures, the stop and the
last-good evaluation a roll-back returns to)."""

from __future__ import annotations

import torch
from datasets import Dataset
from transformers import PreTrainedModel

from overopt import detectors
from overopt.config import AlarmConfig
from overopt.mitigations.ocrm import ocrm_pair_log_ratios
from overopt.mitigations.protocols import Figures
from overopt.ops import ensemble_std, ess_from_log_weights, sign_radii
from overopt.stages.evaluate import EvalSamples

# The row fields the trajectory signals read (never gold: a practitioner has none).
_TRAJECTORY = ("step", "kl_sft", "entropy", "mean_length", "proxy_reward", "train/grad_norm")


def _pair_radii(samples: EvalSamples) -> torch.Tensor | None:
    """(2N,) certified sign radii of the held-out samples, each prompt's two samples as a group of 2."""
    if samples.hidden is None or samples.head_weight is None or len(samples.hidden) % 2:
        return None
    n = len(samples.hidden) // 2
    grouped = torch.stack([samples.hidden[:n], samples.hidden[n:]], 1)  # (N, 2, H)
    return sign_radii(grouped, samples.head_weight).radii.flatten()


def sft_reference(samples: EvalSamples, cfg: AlarmConfig) -> dict[str, float]:
    """From the SFT policy's samples (step 0): the best proxy score, and the radius quantile of low_radius."""
    reference = {"alarm_proxy_max": samples.proxy.max().item()}
    radii = _pair_radii(samples)
    if radii is not None and torch.isfinite(radii).any():
        reference["alarm_radius_q"] = torch.quantile(radii[torch.isfinite(radii)], cfg.radius_quantile).item()
    return reference


@torch.no_grad()
def measured_figures(
    samples: EvalSamples,
    reference: dict | None,
    *,
    policy: PreTrainedModel,
    sft_policy: PreTrainedModel,
    pairs: Dataset | None,
    pad_id: int,
    truncate_tokens: int | None,
) -> Figures:
    """`alarm/<name>` of the measured signals (overopt.detectors.SIGNALS) that this run's reward source allows.
    `pairs`: the RM's training pairs whose ESS is measured (None: no pairs_ess)."""
    reference = reference or {}
    figures: Figures = {}
    if "alarm_proxy_max" in reference:
        figures["alarm/proxy_tail"] = (samples.proxy > reference["alarm_proxy_max"]).double().mean().item()
    if samples.members is not None:
        figures["alarm/ensemble_std"] = ensemble_std(samples.members).mean().item()
    radii = _pair_radii(samples)
    if radii is not None and "alarm_radius_q" in reference:
        figures["alarm/low_radius"] = (radii < reference["alarm_radius_q"]).double().mean().item()
    if pairs is not None and len(pairs):
        # log w = S = log π/π_SFT of both completions (OCRM's weights at β_w = 1, α = 0): its Kish ESS / N.
        ratios = ocrm_pair_log_ratios(policy, sft_policy, pairs, alpha=0.0, pad_id=pad_id,
                                      truncate_tokens=truncate_tokens)  # fmt: skip
        figures["alarm/pairs_ess"] = ess_from_log_weights(ratios).item() / len(pairs)
    return figures


class AlarmMonitor:
    """A run's detectors: the history of its evaluations (the fields the signals read), the `alarm/*` figures
    of each new evaluation, and the stop when one of `stop` fires."""

    def __init__(self, cfg: AlarmConfig, stop: list[str], state: dict | None = None) -> None:
        self.rule = detectors.Rule(cfg.rule, cfg.warmup, cfg.threshold, cfg.drift, cfg.min_std)
        self.stop_names = stop
        self.rows: list[dict] = list(state["rows"]) if state else []

    def update(self, row: dict) -> Figures:
        """Record an evaluation row; its alarm figures."""
        self.rows.append({k: v for k, v in row.items() if k in _TRAJECTORY or k.startswith("alarm/")})
        return detectors.alarm_figures(self.rows, self.rule)

    def _statistic(self, name: str):
        signal = detectors.SIGNALS[name]
        return detectors.statistic(signal.series(self.rows), signal.direction, self.rule)

    def calm(self) -> bool:
        """No stop alarm's statistic is above 0 at the latest evaluation (a roll-back may return here)."""
        return all(not (self._statistic(name)[-1] > 0) for name in self.stop_names)

    def stopped(self) -> dict | None:
        """{alarm, step, last_good_step} of the first stop alarm that has fired, or None."""
        for name in self.stop_names:
            stat = self._statistic(name)
            fired = detectors.first_alarm(stat, self.rule.threshold)
            if fired is not None:
                good = detectors.last_good(stat, fired)
                return {"alarm": name, "step": self.rows[fired]["step"], "last_good_step": self.rows[good]["step"]}
        return None

    def state_dict(self) -> dict:
        return {"rows": self.rows}
