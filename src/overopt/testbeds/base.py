"""What every testbed provides to the lab pipeline.

A testbed is a task with a known gold reward r*: it supplies the tokenizer, the SFT corpus, the
train/eval prompts and a vectorised gold reward. The pipeline (SFT -> pairs -> proxy RM -> RL ->
evaluation) is the same for every testbed (Gao et al., arXiv 2210.10760, §2).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager as ContextManager
from typing import Any, NamedTuple, Protocol

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

    # Optional members: a testbed that lacks one gets the default of TestbedDefaults (check_testbed).
    policy_path: str | None
    """A model (Hub id or directory) that already is the SFT policy: the lab then trains no SFT model."""
    device: torch.device | str
    """Where the policy and the proxy models run. A testbed that sets none runs where config `device` says
    (check_testbed, from make_testbed): the GPU when torch sees one."""
    load_kwargs: dict[str, Any]
    """Extra `from_pretrained` arguments for the SFT policy and the models built on it."""

    def precision(self) -> ContextManager:
        """The numeric context every stage runs in (e.g. bfloat16 autocast)."""
        ...

    def preference_pairs(self) -> list[tuple[list[int], list[int], list[int]]] | None:
        """(prompt, chosen, rejected) token ids the proxy RM trains on in place of the lab's gold-labelled samples
        of the SFT policy (e.g. a user's preference dataset); None: the lab samples and labels its own."""
        ...

    def stepwise_examples(self) -> list[tuple[list[int], list[int], list[int], list[float]]] | None:
        """(prompt, completion, step-end positions, step labels) the PRM trains on in place of the lab's
        gold-labelled samples (proxy 'process'; e.g. a user's stepwise dataset); None: the lab samples its own."""
        ...

    def loaded_policy(self, policy: torch.nn.Module) -> torch.nn.Module:
        """The SFT policy as loaded, before any stage uses it (e.g. its LM head in float32 under autocast)."""
        ...

    def trainable_policy(self, policy: torch.nn.Module, seed: int) -> torch.nn.Module:
        """The copy of the SFT policy that RL trains (e.g. with LoRA adapters); the reference stays the SFT model."""
        ...


class TestbedDefaults:
    """The optional members of Testbed, as a base class a testbed may inherit (check_testbed fills them
    in on one that does not)."""

    policy_path: str | None = None
    load_kwargs: dict[str, Any] = {}  # noqa: RUF012 (read only)

    def precision(self) -> ContextManager:
        return contextlib.nullcontext()

    def preference_pairs(self) -> list[tuple[list[int], list[int], list[int]]] | None:
        return None

    def stepwise_examples(self) -> list[tuple[list[int], list[int], list[int], list[float]]] | None:
        return None

    def loaded_policy(self, policy: torch.nn.Module) -> torch.nn.Module:
        return policy

    def trainable_policy(self, policy: torch.nn.Module, seed: int) -> torch.nn.Module:
        return policy


PROXIES = ("preference", "judge", "process", "rule")
_REQUIRED = ("name", "proxy", "tokenizer", "max_completion_tokens", "sft_corpus", "prompts", "gold_reward",
             "gold_components", "gold_from_components")  # fmt: skip


def check_testbed(testbed: Any, spec: str, device: torch.device | str = "cpu") -> Testbed:
    """What the lab checks of a testbed before any stage runs (one-line ValueError naming the member);
    optional members it lacks get TestbedDefaults' (a plugin need not inherit from it), and `device` (the lab's
    config `device`, from make_testbed) when it sets none of its own."""
    where = f"testbed {spec!r}"
    missing = [m for m in _REQUIRED if not hasattr(testbed, m)]
    if getattr(testbed, "proxy", None) == "rule" and not hasattr(testbed, "rule_reward"):
        missing.append("rule_reward (its proxy is 'rule')")
    if missing:
        raise ValueError(f"{where} lacks {', '.join(missing)} (see overopt.testbeds.base.Testbed)")
    if testbed.proxy not in PROXIES:
        raise ValueError(f"{where}: proxy must be one of {', '.join(PROXIES)}, got {testbed.proxy!r}")
    for member in ("sft_corpus", "prompts", "gold_reward", "gold_components", "gold_from_components"):
        if not callable(getattr(testbed, member)):
            raise ValueError(f"{where}: {member} must be a method")
    tok = testbed.tokenizer
    for token in ("pad", "eos"):
        if getattr(tok, f"{token}_token_id", None) is None:
            raise ValueError(f"{where}: its tokenizer has no {token} token (generation pads and stops with them)")
    if not isinstance(testbed.max_completion_tokens, int) or testbed.max_completion_tokens < 1:
        got = testbed.max_completion_tokens
        raise ValueError(f"{where}: max_completion_tokens must be a positive int, got {got!r}")
    for member, default in vars(TestbedDefaults).items():
        if not member.startswith("_") and not hasattr(testbed, member):
            value = default.__get__(testbed) if isinstance(default, Callable) else default
            setattr(testbed, member, value)
    if not hasattr(testbed, "device"):
        testbed.device = device
    return testbed


class RuleRewardTestbed(Testbed, Protocol):
    """A testbed whose proxy is a rule (RLVR): nothing is learned, the policy sees `rule_reward`."""

    def rule_reward(
        self, prompt_ids: torch.Tensor, completion_ids: torch.Tensor, completion_mask: torch.Tensor
    ) -> torch.Tensor:
        """The proxy reward of a batch, (B,) float32 on the completions' device."""
        ...
