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
from overopt.models.reward import reward_forward
from overopt.ops import bradley_terry_loss, ensemble_std, ess_from_log_weights, sign_radii
from overopt.sampling import rollout_from_tokens
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
def pair_feature_differences(model: PreTrainedModel, pairs: Dataset, pad_id: int, batch_size: int) -> torch.Tensor:
    """(N, H) h(x, y_c) − h(x, y_r): the RM's head inputs of every pair's two completions, float64 on the CPU."""
    model.eval()
    diffs = []
    for start in range(0, len(pairs), batch_size):
        batch = pairs[start : start + batch_size]
        n = len(batch["prompt_ids"])
        r = rollout_from_tokens(batch["prompt_ids"] * 2, batch["chosen_ids"] + batch["rejected_ids"], pad_id)
        chosen, rejected = reward_forward(model, r.input_ids, r.attention_mask).hidden.double().cpu().split([n, n])
        diffs.append(chosen - rejected)
    return torch.cat(diffs)


def fit_heads(diffs: torch.Tensor, k: int, seed: int, steps: int = 300, lr: float = 0.05, l2: float = 1e-3):
    """(k, H) extra linear heads on the RM's frozen features, each a Bradley-Terry fit (overopt.ops) to a
    bootstrap resample of the same pairs (multinomial counts as weights): an ensemble at no extra data whose
    disagreement on the current samples (`head_std`) grows where the pairs leave the heads unconstrained.
    Full-batch Adam from 0 with an L2 penalty l2·‖w‖², the same for every head, float64."""
    g = torch.Generator().manual_seed(seed)
    n = len(diffs)
    heads = []
    for _ in range(k):
        counts = torch.bincount(torch.randint(n, (n,), generator=g), minlength=n).double()
        w = torch.zeros(diffs.shape[1], dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.Adam([w], lr=lr)
        for _ in range(steps):
            optimizer.zero_grad()
            margins = diffs @ w
            loss = bradley_terry_loss(margins, torch.zeros_like(margins), weights=counts) + l2 * w.square().sum()
            loss.backward()
            optimizer.step()
        heads.append(w.detach())
    return torch.stack(heads)


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
    rm0_features: bool = True,
    sft_logliks: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> Figures:
    """`alarm/<name>` of the measured signals (overopt.detectors.SIGNALS) that this run's reward source allows.
    `pairs`: the RM's training pairs whose ESS is measured (None: no pairs_ess), `sft_logliks` their SFT
    log-likelihoods when the caller keeps them (mitigations.ocrm.pair_logliks). `rm0_features`: the samples'
    hidden states are RM_0's (not an OCRM refit's), which the extra heads were fitted on."""
    reference = reference or {}
    figures: Figures = {}
    if "alarm_proxy_max" in reference:
        figures["alarm/proxy_tail"] = (samples.proxy > reference["alarm_proxy_max"]).double().mean().item()
    if samples.members is not None:
        figures["alarm/ensemble_std"] = ensemble_std(samples.members).mean().item()
    heads = reference.get("alarm_heads")
    if heads is not None and samples.hidden is not None and rm0_features and heads.shape[1] == samples.hidden.shape[1]:
        figures["alarm/head_std"] = (samples.hidden @ heads.T).std(1, correction=0).mean().item()
    radii = _pair_radii(samples)
    if radii is not None and "alarm_radius_q" in reference:
        figures["alarm/low_radius"] = (radii < reference["alarm_radius_q"]).double().mean().item()
    if pairs is not None and len(pairs):
        # log w = S = log π/π_SFT of both completions (OCRM's weights at β_w = 1, α = 0): its Kish ESS / N.
        ratios = ocrm_pair_log_ratios(policy, sft_policy, pairs, alpha=0.0, pad_id=pad_id,
                                      truncate_tokens=truncate_tokens, sft_logliks=sft_logliks)  # fmt: skip
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
