"""Batched sampling of completions with the KV cache (transformers `generate`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import GenerationConfig, PreTrainedModel


@dataclass(frozen=True)
class Rollout:
    """A batch of prompts and sampled completions.

    prompt_ids (B, P) are left-padded; completion_ids (B, T) are right-padded after the first EOS,
    which is part of the completion (completion_mask covers tokens up to and including it).
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor

    @property
    def input_ids(self) -> torch.Tensor:
        return torch.cat([self.prompt_ids, self.completion_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.prompt_mask, self.completion_mask], dim=1)

    @property
    def prompt_len(self) -> int:
        return self.prompt_ids.shape[1]

    def index(self, rows: torch.Tensor | slice) -> Rollout:
        return Rollout(
            self.prompt_ids[rows], self.prompt_mask[rows], self.completion_ids[rows], self.completion_mask[rows]
        )


def pad_left(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists into (ids (B, P), mask (B, P)) so every prompt ends at column P - 1."""
    if not sequences:
        raise ValueError("pad_left: no sequences to pad")
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            ids[row, width - len(seq) :] = torch.tensor(seq)
            mask[row, width - len(seq) :] = 1
    return ids, mask


def pad_right(sequences: list[list[int]], pad_id: int, width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token lists into (ids (B, T), mask (B, T))."""
    if not sequences:
        raise ValueError("pad_right: no sequences to pad")
    width = max(len(s) for s in sequences) if width is None else width
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(seq[:width])
        mask[row, : len(seq)] = 1
    return ids, mask


def rollout_from_tokens(prompts: list[list[int]], completions: list[list[int]], pad_id: int) -> Rollout:
    """Stored token lists as a Rollout: prompts left-padded, completions right-padded."""
    return Rollout(*pad_left(prompts, pad_id), *pad_right(completions, pad_id))


def mask_after_eos(completion_ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """(B, T) -> (B, T) mask of tokens up to and including the first EOS (all tokens if none)."""
    is_eos = completion_ids == eos_id
    eos_seen_before = (is_eos.long().cumsum(dim=1) - is_eos.long()) > 0
    return (~eos_seen_before).long()


@torch.no_grad()
def sample_completions(
    model: PreTrainedModel,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    max_new_tokens: int,
    temperature: float,
    eos_id: int,
    pad_id: int,
) -> Rollout:
    """Sample one completion per prompt row at `temperature` (no top-k/top-p truncation).

    Pure ancestral sampling keeps log π(y|x) exact for KL and importance weights. The rollout lives
    on the model's device.
    """
    prompt_ids, prompt_mask = prompt_ids.to(model.device), prompt_mask.to(model.device)
    was_training = model.training
    model.eval()
    config = GenerationConfig(
        do_sample=temperature > 0,
        temperature=temperature if temperature > 0 else None,
        top_k=0,
        top_p=1.0,
        max_new_tokens=max_new_tokens,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )
    out = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=config)
    model.train(was_training)
    completion = out[:, prompt_ids.shape[1] :]
    mask = mask_after_eos(completion, eos_id)
    completion = completion.masked_fill(mask == 0, pad_id)
    return Rollout(prompt_ids, prompt_mask, completion, mask)
