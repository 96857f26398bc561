"""What every testbed provides to the lab pipeline.

A testbed is a task with a known gold reward r*: it supplies the tokenizer, the SFT corpus, the
train/eval prompts and a vectorised gold reward. The pipeline (SFT -> pairs -> proxy RM -> RL ->
evaluation) is the same for every testbed (Gao et al., arXiv 2210.10760, §2).
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast


def word_level_tokenizer(words: list[str], pad: str, bos: str, eos: str, unk: str) -> PreTrainedTokenizerFast:
    """A whitespace word-level tokenizer over `words` (ids in order), as a transformers tokenizer that
    pads on the left (prompts are left-padded for generation)."""
    core = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token=unk))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token=pad, bos_token=bos, eos_token=eos, unk_token=unk, padding_side="left"
    )


class SFTExample(NamedTuple):
    """One supervised example: prompt tokens and the target completion tokens (ending in EOS)."""

    prompt_ids: list[int]
    completion_ids: list[int]


class Testbed(Protocol):
    """The interface the lab pipeline needs from a task with a known gold reward."""

    name: str
    proxy: str
    """What the policy is optimised against: "preference" (a Bradley-Terry RM learned from gold-labelled
    pairs), "judge" (a classifier learned from gold-labelled answers) or "rule" (`rule_reward`)."""
    tokenizer: PreTrainedTokenizerFast
    max_completion_tokens: int
    """Generation budget for completions: also the Dr.GRPO length normaliser."""

    def sft_corpus(self, n: int, seed: int) -> list[SFTExample]:
        """`n` demonstrations of varied quality for supervised fine-tuning."""
        ...

    def prompts(self, split: str, n: int, seed: int) -> list[list[int]]:
        """`n` prompts (token ids) from `split` in {"train", "eval"}; splits never overlap."""
        ...

    def gold_reward(
        self, prompt_ids: torch.Tensor, completion_ids: torch.Tensor, completion_mask: torch.Tensor
    ) -> torch.Tensor:
        """r*(x, y) for a batch: prompt (B, P), completion (B, T) with mask (B, T) -> (B,)."""
        ...

    def gold_components(
        self, prompt_ids: torch.Tensor, completion_ids: torch.Tensor, completion_mask: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The named terms of r* (each (B,)), logged so a person can see *how* a policy hacks."""
        ...

    def gold_from_components(self, components: dict[str, torch.Tensor]) -> torch.Tensor:
        """r* from its terms, so an evaluation that logs both computes them once (gold_reward = this ∘ terms)."""
        ...


class RuleRewardTestbed(Testbed, Protocol):
    """A testbed whose proxy is a rule (RLVR): nothing is learned, the policy sees `rule_reward`."""

    def rule_reward(
        self, prompt_ids: torch.Tensor, completion_ids: torch.Tensor, completion_mask: torch.Tensor
    ) -> torch.Tensor:
        """The proxy reward of a batch, (B,) float32 on the completions' device."""
        ...
