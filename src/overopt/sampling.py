"""Batched sampling of completions with a KV cache: a shared prefill per distinct prompt, rows leaving at EOS."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from transformers import PreTrainedModel

from overopt.models.policy import prefix_cache
from overopt.ops import entropy_from_logits, selective_log_softmax


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

    def token_lists(self) -> tuple[list[list[int]], list[list[int]]]:
        """Each row's prompt and completion as unpadded token lists (the completion up to and including EOS)."""

        def rows(ids: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
            return [row[m.bool()].tolist() for row, m in zip(ids.cpu(), mask.cpu())]

        return rows(self.prompt_ids, self.prompt_mask), rows(self.completion_ids, self.completion_mask)

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


class SampledLogprobs(NamedTuple):
    """What the sampler's own logits say about the tokens it drew (sample_completions with_logprobs): the
    log-probs and entropies that models.policy.completion_logprobs(with_entropy=True) computes in a second pass,
    to float rounding. (B, T), 0 after each row's EOS."""

    logprobs: torch.Tensor
    entropy: torch.Tensor


# While runs are trained together (overopt.batching), their sampling goes through the group's router, which
# returns the samples, or None for a call it leaves alone.
_router = None


# The `hf` testbed's choice of sampler (hf.sampler): None samples here; else the static-cache sampler
# (overopt.static_sampling.use_static_cache), called with sample_completions' arguments.
_sampler = None


def set_sampler(sampler) -> None:
    """Draw sample_completions with `sampler` (it takes sample_completions' arguments), or with None here."""
    global _sampler
    _sampler = sampler


def set_router(router):
    """Route sample_completions through `router` (None: sample here); returns the previous router."""
    global _router
    previous, _router = _router, router
    return previous


def draw_tokens(
    logits: torch.Tensor,
    temperature: float,
    noise: torch.Generator,
    total_rows: int,
    rows: torch.Tensor,
    with_logprobs: bool,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """One decode step's draw for the batch rows `rows` (their indices in the global batch of `total_rows`):
    argmax(logits/T + G) with Gumbel noise G drawn for every global row, or argmax(logits) at T = 0; and, with
    `with_logprobs`, the drawn tokens' log-probabilities at T and the entropies (else None, None)."""
    if not temperature > 0:
        return logits.argmax(-1), None, None
    # -log E with E ~ Exp(1) is Gumbel(0, 1) noise; drawn for all rows so that row r's stays r's.
    gumbel = -torch.empty((total_rows, logits.shape[-1]), device=logits.device).exponential_(generator=noise).log()
    scaled = logits.float() / temperature
    token = (scaled + gumbel[rows]).argmax(-1)
    if not with_logprobs:
        return token, None, None
    # As completion_logprobs computes them: ops.selective_log_softmax, entropy_from_logits.
    return (
        token,
        selective_log_softmax(scaled[:, None], token[:, None])[:, 0],
        entropy_from_logits(scaled[:, None])[:, 0],
    )


@torch.no_grad()
def sample_completions(
    model: PreTrainedModel,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    max_new_tokens: int,
    temperature: float,
    eos_id: int,
    pad_id: int,
    *,
    row_offset: int = 0,
    total_rows: int | None = None,
    with_logprobs: bool = False,
) -> Rollout | tuple[Rollout, SampledLogprobs]:
    """Sample one completion per prompt row at `temperature` (no top-k/top-p truncation; 0 = greedy).

    Pure ancestral sampling keeps log π(y|x) exact for KL and importance weights. Each token is drawn
    with the Gumbel-max trick, argmax(logits/T + G), from noise G drawn for every row of the global
    batch (`total_rows`, this batch being rows `row_offset`...) by a generator seeded from the global
    torch RNG: a row's completion depends on its prompt, the model and the seed only, not on which
    rows share its batch or its process, so N processes sample what one process samples.

    The KV cache is filled once per distinct prompt and shared by its copies (a group of K), and rows
    leave the batch at their EOS, so the cost follows the tokens generated rather than B × the longest
    completion. The rollout lives on the model's device.

    `with_logprobs` (temperature > 0) also returns each drawn token's log-probability at `temperature` and the
    entropy there (SampledLogprobs), read off the logits the draw used: no second pass over the completions.
    """
    if with_logprobs and not temperature > 0:
        raise ValueError("sample_completions: with_logprobs needs a temperature > 0 (greedy has no distribution)")
    if _router is not None:  # runs trained together: their policies' samples are drawn stacked (overopt.batching)
        routed = _router(model, prompt_ids, prompt_mask, max_new_tokens, temperature, eos_id, pad_id,
                         row_offset=row_offset, total_rows=total_rows, with_logprobs=with_logprobs)  # fmt: skip
        if routed is not None:
            return routed
    if _sampler is not None:
        return _sampler(model, prompt_ids, prompt_mask, max_new_tokens, temperature, eos_id, pad_id,
                        row_offset=row_offset, total_rows=total_rows, with_logprobs=with_logprobs)  # fmt: skip
    device = model.device
    prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)
    rows = prompt_ids.shape[0]
    total_rows = rows if total_rows is None else total_rows
    noise = torch.Generator(device=device).manual_seed(int(torch.randint(2**62, ()).item()))
    was_training = model.training
    model.eval()
    # Prefill each distinct (prompt, mask) once, then copy its cache and last logits to its rows.
    prefix = prefix_cache(model, prompt_ids, prompt_mask, logits_to_keep=1)
    cache_kw, cache, logits = prefix.cache_kw, prefix.cache, prefix.output.logits[prefix.copies, -1]
    completion = torch.full((rows, max_new_tokens), pad_id, dtype=torch.long, device=device)
    if with_logprobs:
        logprobs, entropy = (torch.zeros(rows, max_new_tokens, device=device) for _ in range(2))
    active = torch.arange(rows, device=device)  # rows still generating
    attention_mask, positions = prompt_mask, prompt_mask.sum(1, keepdim=True)
    steps = 0
    for t in range(max_new_tokens):
        token, token_logprob, token_entropy = draw_tokens(logits, temperature, noise, total_rows, row_offset + active,
                                                          with_logprobs)  # fmt: skip
        if with_logprobs:
            logprobs[active, t], entropy[active, t] = token_logprob, token_entropy
        completion[active, t] = token
        steps = t + 1
        going = token != eos_id
        if t + 1 == max_new_tokens or not going.any():
            break
        if not going.all():
            keep = going.nonzero().squeeze(1)
            active, token = active[keep], token[keep]
            cache.reorder_cache(keep)  # index_select of every layer's keys and values
            attention_mask, positions = attention_mask[keep], positions[keep]
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(active), 1)], 1)
        out = model(
            input_ids=token[:, None],
            attention_mask=attention_mask,
            position_ids=positions + t,
            use_cache=True,
            logits_to_keep=1,
            **{cache_kw: cache},
        )
        cache, logits = out[cache_kw], out.logits[:, -1]
    model.train(was_training)
    completion = completion[:, :steps]
    mask = mask_after_eos(completion, eos_id)
    rollout = Rollout(prompt_ids, prompt_mask, completion.masked_fill(mask == 0, pad_id), mask)
    if not with_logprobs:
        return rollout
    return rollout, SampledLogprobs(logprobs[:, :steps] * mask, entropy[:, :steps] * mask)
