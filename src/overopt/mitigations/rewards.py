"""Reward sources (one proxy RM, an ensemble of them) and per-sequence reward transforms."""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from overopt.mitigations.protocols import RewardScores, RewardSource, StepRewards
from overopt.models.reward import conversation_batch, reward_forward, score_head
from overopt.ops import (
    aggregate,
    aggregate_ensemble,
    ensemble_penalty_share,
    ensemble_std,
    par_reward,
    par_saturation,
    softmin_weighted,
)
from overopt.sampling import Rollout, pad_left, sample_completions
from overopt.testbeds.base import RuleRewardTestbed


class ProxyRewardModel:
    """r_φ(x, y) of one learned reward model (the lab's proxy)."""

    def __init__(self, model: PreTrainedModel, share_prefix: bool = False):
        self.model, self.share_prefix = model.eval(), share_prefix  # share_prefix: see models.reward.reward_forward

    @torch.no_grad()
    def __call__(self, rollout: Rollout) -> RewardScores:
        prompt_len = rollout.prompt_len if self.share_prefix else None
        out = reward_forward(self.model, rollout.input_ids, rollout.attention_mask, prompt_len)
        return RewardScores(out.rewards.float(), out.hidden.float(), score_head(self.model).weight[0].float())

    def models(self) -> list[PreTrainedModel]:
        return [self.model]


class TextRewardModel:
    """r_φ(x, y) of a reward model with its own tokenizer (a Skywork RM on a Qwen policy): the rollout's
    completion decoded without special tokens and scored as the conversation [user: x, assistant: y] the RM's
    chat template renders (models.reward.conversation_text). x is the raw prompt `prompt_of` holds for the
    rollout's prompt ids (text, or a list of messages), else the prompt ids decoded. Like ProxyRewardModel it
    reads the head's input, so SignCert-PO and the radius alarms work on it."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        policy_tokenizer: PreTrainedTokenizerBase,
        prompt_of: dict[tuple[int, ...], object] | None = None,
        batch_size: int = 16,
    ):
        self.model, self.tokenizer, self.policy_tokenizer = model.eval(), tokenizer, policy_tokenizer
        self.prompt_of = {} if prompt_of is None else prompt_of
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, rollout: Rollout) -> RewardScores:
        decode = self.policy_tokenizer.decode
        prompts, completions = [], []
        for ids, mask, cids, cmask in zip(
            rollout.prompt_ids.tolist(), rollout.prompt_mask.tolist(),
            rollout.completion_ids.tolist(), rollout.completion_mask.tolist(),
        ):  # fmt: skip
            key = tuple(t for t, m in zip(ids, mask) if m)
            prompts.append(self.prompt_of.get(key) or decode(list(key), skip_special_tokens=True))
            completions.append(decode([t for t, m in zip(cids, cmask) if m], skip_special_tokens=True))
        rewards, hidden = [], []
        for start in range(0, len(prompts), self.batch_size):
            end = start + self.batch_size
            batch = conversation_batch(self.tokenizer, prompts[start:end], completions[start:end])
            out = reward_forward(self.model, batch["input_ids"], batch["attention_mask"])
            rewards.append(out.rewards.float())
            hidden.append(out.hidden.float())
        return RewardScores(torch.cat(rewards), torch.cat(hidden), score_head(self.model).weight[0].float())

    def models(self) -> list[PreTrainedModel]:
        return [self.model]


class ProcessRewardModel:
    """A PRM's step rewards at each step end of the `process` testbed, aggregated into one return
    (ops.aggregate; Tang, Zhang, Ackermann et al., arXiv 2507.08537). `form` is (ops aggregation, step discount,
    PURE's softmin temperature or 0): `rl.step_return`, overopt.config.return_form.

    A step's reward is the PRM's signed confidence that it is right, 2σ(wᵀh_t + b) − 1 ∈ (−1, 1): a step it
    believes wrong costs reward instead of adding a little. A completion without its final step (no EOS: out
    of budget) gets a final step reward of −1, "certainly not a solution", at its last token. The scores carry
    the (transformed) step rewards and the tokens they end at, for PPO's per-token returns (ops.token_returns).
    The return is no linear function of one head input, so SignCert-PO has no radius to read here."""

    def __init__(self, model: PreTrainedModel, testbed, form: tuple[str, float, float]):
        self.model, self.testbed = model.eval(), testbed
        self.name, self.gamma, self.temperature = form

    def step_rewards(self, rollout: Rollout) -> StepRewards:
        """(B, S) step rewards, mask and end tokens (completion positions), the unfinished rows' final −1
        included (PURE's softmin weights applied when the form is its min)."""
        from overopt.stages.prm import prm_step_logits  # stages import the mitigations, not the other way

        prompts, completions = rollout.token_lists()
        steps = [self.testbed.steps(p, c) for p, c in zip(prompts, completions)]
        out = prm_step_logits(self.model, prompts, completions, [s.positions for s in steps],
                              self.testbed.tokenizer.pad_token_id)  # fmt: skip
        width = out.mask.shape[1] + 1  # room for the unfinished rows' final step
        rewards = torch.zeros(len(steps), width, device=out.logits.device)
        mask, tokens = torch.zeros_like(rewards), torch.zeros(len(steps), width, dtype=torch.long)
        rewards[:, :-1] = (2 * torch.sigmoid(out.logits.float()) - 1) * out.mask
        mask[:, :-1] = out.mask
        for b, (s, completion) in enumerate(zip(steps, completions)):
            tokens[b, : len(s.positions)] = torch.tensor(s.positions, dtype=torch.long)
            if not s.final:  # after its steps: the final step it never wrote, reward −1, at its last token
                n = len(s.positions)
                rewards[b, n], mask[b, n], tokens[b, n] = -1.0, 1.0, len(completion) - 1
        name = self.name
        if self.temperature > 0:  # PURE: softmin-weighted step rewards, summed
            rewards, name = softmin_weighted(rewards, mask, self.temperature), "sum"
        return StepRewards(rewards, mask, tokens.to(rewards.device), name, self.gamma)

    @torch.no_grad()
    def __call__(self, rollout: Rollout) -> RewardScores:
        steps = self.step_rewards(rollout)
        return RewardScores(aggregate(steps.rewards, steps.mask, steps.aggregation, steps.gamma), steps=steps)

    def models(self) -> list[PreTrainedModel]:
        return [self.model]


class RuleReward:
    """The testbed's rule reward (RLVR: format and correctness checks); no model behind it."""

    def __init__(self, testbed: RuleRewardTestbed):
        self.testbed = testbed

    @torch.no_grad()
    def __call__(self, rollout: Rollout) -> RewardScores:
        return RewardScores(
            self.testbed.rule_reward(rollout.prompt_ids, rollout.completion_ids, rollout.completion_mask)
        )

    def models(self) -> list[PreTrainedModel]:
        return []


class LengthPenalty:
    """r ← r − coef·|y| with |y| the completion's token count (EOS included)."""

    def __init__(self, coef: float):
        self.coef = coef

    def __call__(self, rewards: torch.Tensor, rollout: Rollout, scores: RewardScores):
        length = rollout.completion_mask.sum(1).to(rewards.dtype)
        return rewards - self.coef * length, {"length_penalty/mean": (self.coef * length).mean().item()}


class RewardClip:
    """r ← clip(r, low, high), after optional whitening over the batch (a common practitioner guard)."""

    def __init__(self, low: float, high: float, whiten: bool):
        if low >= high:
            raise ValueError(f"reward_clip.low ({low}) must be below reward_clip.high ({high})")
        self.low, self.high, self.whiten = low, high, whiten

    def __call__(self, rewards: torch.Tensor, rollout: Rollout, scores: RewardScores):
        if self.whiten:
            rewards = (rewards - rewards.mean()) / (rewards.std() + 1e-8)
        clipped = rewards.clamp(self.low, self.high)
        return clipped, {"reward_clip/frac": (clipped != rewards).double().mean().item()}


class EnsembleRewardModel:
    """k proxy RMs that differ in seed, aggregated by mean, worst case (WCO) or UWO (Coste et al., arXiv 2310.02743).

    SignCert-PO needs one linear head: it falls back to member 0's hidden state and head.
    """

    def __init__(
        self,
        models: list[PreTrainedModel],
        mode: str,
        uwo_lambda: float,
        ddof: int,
        member: Callable[[PreTrainedModel], RewardSource] = ProxyRewardModel,
    ):
        if not models:
            raise ValueError("an ensemble needs at least one reward model")
        self.members = [member(m) for m in models]  # ProxyRewardModel, or a TextRewardModel per RM
        self.mode, self.uwo_lambda, self.ddof = mode, uwo_lambda, ddof

    @torch.no_grad()
    def __call__(self, rollout: Rollout) -> RewardScores:
        scored = [member(rollout) for member in self.members]
        members = torch.stack([s.rewards for s in scored])  # (k, B)
        rewards = aggregate_ensemble(members, self.mode, uwo_lambda=self.uwo_lambda, ddof=self.ddof)
        return RewardScores(rewards, scored[0].hidden, scored[0].head_weight, members)

    def models(self) -> list[PreTrainedModel]:
        return [m.model for m in self.members]


class EnsembleFigures:
    """Logs the members' disagreement and the aggregate's penalty share (reward unchanged)."""

    def __init__(self, ddof: int = 0):
        self.ddof = ddof

    def __call__(self, rewards: torch.Tensor, rollout: Rollout, scores: RewardScores):
        if scores.members is None:
            return rewards, {}
        return rewards, {
            "ensemble/std": ensemble_std(scores.members, ddof=self.ddof).mean().item(),
            "ensemble/penalty_share": ensemble_penalty_share(scores.members, scores.rewards).item(),
        }


class PreferenceAsReward:
    """PAR (arXiv 2502.18770): r_RL = (1/M) Σ_m σ(k·(r(x, y) − r(x, y_ref,m))), y_ref,m ~ π_SFT(·|x).

    The M reference completions of each prompt are sampled once from the SFT policy and cached.
    """

    def __init__(
        self,
        sft_policy: PreTrainedModel,
        reward_source,
        references: int,
        k: float,
        max_new_tokens: int,
        eos_id: int,
        pad_id: int,
        seed: int,
    ):
        self.sft_policy, self.reward_source, self.references, self.k = sft_policy, reward_source, references, k
        self.max_new_tokens, self.eos_id, self.pad_id, self.seed = max_new_tokens, eos_id, pad_id, seed
        self._cache: dict[tuple[int, ...], torch.Tensor] = {}

    def _reference_rewards(self, prompts: list[tuple[int, ...]]) -> None:
        """Sample and score M SFT completions for every prompt not cached yet (own RNG stream)."""
        todo = [p for p in dict.fromkeys(prompts) if p not in self._cache]
        if not todo:
            return
        prompt_ids, prompt_mask = pad_left([list(p) for p in todo for _ in range(self.references)], self.pad_id)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed + len(self._cache))
            refs = sample_completions(
                self.sft_policy, prompt_ids, prompt_mask, self.max_new_tokens, 1.0, self.eos_id, self.pad_id
            )
        rewards = self.reward_source(refs).rewards.view(len(todo), self.references)
        self._cache.update(zip(todo, rewards, strict=True))

    def __call__(self, rewards: torch.Tensor, rollout: Rollout, scores: RewardScores):
        prompts = [tuple(row[mask.bool()].tolist()) for row, mask in zip(rollout.prompt_ids, rollout.prompt_mask)]
        self._reference_rewards(prompts)
        reference = torch.stack([self._cache[p] for p in prompts]).to(rewards)  # (B, M)
        shaped = par_reward(rewards, reference, self.k)
        return shaped, {
            "par/reward": shaped.mean().item(),
            "par/reference_reward": reference.mean().item(),
            "par/saturation": par_saturation(shaped).item(),
        }

    def state_dict(self) -> dict:
        """The cached reference rewards, in insertion order (the next prompts' sampling seed counts them)."""
        if not self._cache:
            return {"prompts": [], "rewards": torch.zeros(0, self.references)}
        return {"prompts": [list(p) for p in self._cache], "rewards": torch.stack(list(self._cache.values()))}

    def load_state_dict(self, state: dict) -> None:
        self._cache = {tuple(p): r for p, r in zip(state["prompts"], state["rewards"], strict=True)}


class ConstrainedReward:
    """Constrained RLHF at a proxy point (after Moskovitz et al., arXiv 2310.04373), one component.

    Instead of maximising the proxy r, stay close to the reference (the KL penalty of the objective)
    subject to E[r] ≥ θ, where θ is the proxy point: the proxy value beyond which the proxy stops
    tracking the gold reward. Lagrangian reward λ·(r − θ), with dual ascent on the multiplier
    λ ← clip(λ + η·(θ − mean r), 0, λ_max) after every batch: once the constraint holds, λ shrinks and
    the KL term stops the policy from pushing the proxy further.
    """

    def __init__(self, threshold: float, multiplier_lr: float, initial: float, maximum: float):
        if not 0 <= initial <= maximum:
            raise ValueError("constrained: need 0 <= initial_multiplier <= max_multiplier")
        self.threshold, self.lr, self.maximum = threshold, multiplier_lr, maximum
        self.multiplier = initial

    def __call__(self, rewards: torch.Tensor, rollout: Rollout, scores: RewardScores):
        shaped = self.multiplier * (rewards - self.threshold)
        violation = self.threshold - rewards.mean().item()
        figures = {"constrained/multiplier": self.multiplier, "constrained/violation": violation}
        self.multiplier = min(max(self.multiplier + self.lr * violation, 0.0), self.maximum)
        return shaped, figures

    def state_dict(self) -> dict:
        return {"multiplier": self.multiplier}

    def load_state_dict(self, state: dict) -> None:
        self.multiplier = state["multiplier"]
