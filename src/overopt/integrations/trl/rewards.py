"""TRL reward functions (``reward_funcs=[...]``) backed by the lab's reward sources and reward transforms.

TRL calls a reward function with the prompts as the dataset holds them (text or a list of messages), the
decoded completions and the generated ``completion_ids`` (up to and including EOS). A ``RewardSourceFunc``
rebuilds the token rollout the policy generated (the prompt tokenised as TRL tokenises it for generation,
``prompt_token_ids``), scores it with an overopt ``RewardSource`` — the same object the lab's RL loop
calls — applies the method's ``RewardTransform``s (PAR, ...), and keeps the scores it read (the head's input
``hidden`` and weights for SignCert-PO, ensemble members) for the trainer mixins and the monitor.

Two ways to score, as the reward model's vocabulary allows:
* the RM shares the policy's tokenizer (the lab, an RM trained on the policy's backbone): it reads the
  generated ids, EOS included (``ProxyRewardModel``);
* the RM has its own tokenizer (a Skywork RM on a Qwen policy): the completion is decoded and scored as the
  conversation the RM's chat template renders, like TRL's own RM path (``TextRewardModel``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from trl.data_utils import is_conversational

from overopt.config import EnsembleConfig, PARConfig
from overopt.mitigations.protocols import RewardScores, RewardSource, RewardTransform
from overopt.mitigations.rewards import (
    EnsembleFigures,
    EnsembleRewardModel,
    PreferenceAsReward,
    ProxyRewardModel,
    TextRewardModel,
)
from overopt.sampling import Rollout, rollout_from_tokens


def pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def prompt_token_ids(tokenizer: PreTrainedTokenizerBase, prompts: Sequence) -> list[list[int]]:
    """The ids TRL generates from (GRPOTrainer._tokenize_prompts, text-only): a conversational prompt through
    the chat template with the generation prompt, a text prompt through the tokenizer as it is called."""
    prompts = list(prompts)
    if not prompts:
        return []
    if is_conversational({"prompt": prompts[0]}):
        out = tokenizer.apply_chat_template(prompts, add_generation_prompt=True, tokenize=True, return_dict=True)
        return [list(ids) for ids in out["input_ids"]]
    return [list(ids) for ids in tokenizer(text=prompts)["input_ids"]]


class RewardSourceFunc:
    """A TRL reward function: ``source`` (an overopt RewardSource) on the rollout TRL generated, then
    ``transforms`` in order. Figures of the transforms go to TRL's logs through ``log_metric``.

    ``last`` holds the scores of the latest call (rewards after the transforms; the head's input and
    weights; ensemble members), which ``SignCertMixin`` and the monitor read.
    """

    def __init__(
        self,
        source: RewardSource,
        tokenizer: PreTrainedTokenizerBase,
        transforms: Sequence[RewardTransform] = (),
        name: str = "proxy_rm",
    ):
        self.source, self.tokenizer, self.transforms = source, tokenizer, list(transforms)
        self.__name__ = name  # TRL names the function's metrics `rewards/<__name__>/mean`
        self.last: RewardScores | None = None

    def remember(self, prompt_ids: Sequence[Sequence[int]], prompts: Sequence) -> None:
        """Tell a TextRewardModel source the raw prompt of each prompt's ids (it scores the raw text)."""
        prompt_of = getattr(self.source, "prompt_of", None)
        if prompt_of is not None:
            prompt_of.update((tuple(i), p) for i, p in zip(prompt_ids, prompts))

    def rollout(self, prompts: Sequence, completion_ids: Sequence[Sequence[int]]) -> Rollout:
        ids = prompt_token_ids(self.tokenizer, prompts)
        self.remember(ids, prompts)
        return rollout_from_tokens(ids, [list(c) for c in completion_ids], pad_id(self.tokenizer))

    def score(self, rollout: Rollout, log_metric: Callable[[str, float], None] | None = None) -> RewardScores:
        scores = self.source(rollout)
        rewards = scores.rewards
        for transform in self.transforms:
            rewards, figures = transform(rewards, rollout, scores)
            for key, value in figures.items():
                if log_metric is not None:
                    log_metric(key, value)
        self.last = scores._replace(rewards=rewards)
        return self.last

    def __call__(self, prompts, completions, completion_ids, log_metric=None, **kwargs) -> list[float]:
        return self.score(self.rollout(prompts, completion_ids), log_metric).rewards.double().cpu().tolist()


def _member(tokenizer: PreTrainedTokenizerBase, rm_tokenizer: PreTrainedTokenizerBase | None, prompt_of: dict):
    if rm_tokenizer is None:
        return ProxyRewardModel
    return partial(TextRewardModel, tokenizer=rm_tokenizer, policy_tokenizer=tokenizer, prompt_of=prompt_of)


def proxy_reward(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    *,
    rm_tokenizer: PreTrainedTokenizerBase | None = None,
    name: str = "proxy_rm",
) -> RewardSourceFunc:
    """One reward model (a sequence-classification model with a linear ``score`` head, num_labels=1).

    ``tokenizer`` is the policy's; ``rm_tokenizer`` the RM's when it differs (then the RM scores the decoded
    conversation through its chat template), None when the RM reads the policy's ids."""
    source = _member(tokenizer, rm_tokenizer, {})(model)
    return RewardSourceFunc(source, tokenizer, name=name)


def ensemble_reward(
    models: Sequence[PreTrainedModel],
    tokenizer: PreTrainedTokenizerBase,
    *,
    mode: str = "mean",
    cfg: EnsembleConfig = EnsembleConfig(),
    rm_tokenizer: PreTrainedTokenizerBase | None = None,
    name: str | None = None,
) -> RewardSourceFunc:
    """k reward models aggregated by ``mode`` (mean / wco / uwo, Coste et al., arXiv 2310.02743), with
    ``cfg.uwo_lambda`` and ``cfg.ddof``; logs ``ensemble/std`` and ``ensemble/penalty_share``. SignCert-PO
    reads member 0's hidden state and head."""
    member = _member(tokenizer, rm_tokenizer, {})
    source = EnsembleRewardModel(list(models), mode, cfg.uwo_lambda, cfg.ddof, member=member)
    if rm_tokenizer is not None:  # one prompt map for every member
        source.prompt_of = source.members[0].prompt_of
    return RewardSourceFunc(source, tokenizer, [EnsembleFigures(cfg.ddof)], name=name or f"ensemble_{mode}")


def par_reward(
    inner: RewardSourceFunc,
    sft_policy: PreTrainedModel,
    *,
    max_new_tokens: int,
    cfg: PARConfig = PARConfig(),
    seed: int = 0,
    name: str = "par",
) -> RewardSourceFunc:
    """PAR (arXiv 2502.18770) over ``inner``'s reward: r = mean_m σ(k·(r(x, y) − r(x, y_ref,m))) with M =
    ``cfg.references`` reference completions per prompt sampled once from ``sft_policy`` (T = 1, at most
    ``max_new_tokens``) and cached; logs ``par/*``."""
    tok = inner.tokenizer
    par = PreferenceAsReward(
        sft_policy, inner.source, cfg.references, cfg.k, max_new_tokens, tok.eos_token_id, pad_id(tok), seed
    )
    return RewardSourceFunc(inner.source, tok, [*inner.transforms, par], name=name)


def reward_source_funcs(trainer) -> list[tuple[int, RewardSourceFunc]]:
    """(index, function) of the trainer's reward functions that are overopt reward sources."""
    return [(i, f) for i, f in enumerate(trainer.reward_funcs) if isinstance(f, RewardSourceFunc)]


def trainer_proxy(trainer, rollout: Rollout, prompts: Sequence, completions: Sequence[str]) -> RewardScores:
    """What the trainer's reward functions say of a rollout, as the lab's evaluation reads a reward source: the
    weighted sum of the functions, an overopt reward source's score before its transforms (PAR, ...) as the
    lab logs proxy_reward; with a single overopt reward source, also its hidden state, head and members."""
    prompt_ids, completion_ids = rollout.token_lists()
    total = torch.zeros(len(completions), dtype=torch.float64)
    scores = None
    for weight, func in zip(trainer.reward_weights.tolist(), trainer.reward_funcs, strict=True):
        if isinstance(func, RewardSourceFunc):
            func.remember(prompt_ids, prompts)
            scores = func.source(rollout)
            values = scores.rewards.double().cpu()
        elif isinstance(func, torch.nn.Module):
            raise ValueError(
                "the monitor scores the proxy with the trainer's reward functions: wrap a reward model in "
                "overopt.integrations.trl.proxy_reward (it reads the same head, with its chat template)"
            )
        else:
            out = func(prompts=list(prompts), completions=list(completions), completion_ids=completion_ids)
            values = torch.tensor([float("nan") if v is None else v for v in out], dtype=torch.float64)
        total += weight * values
    if len(trainer.reward_funcs) == 1 and scores is not None:
        return scores._replace(rewards=total)
    return RewardScores(total)
