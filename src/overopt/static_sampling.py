"""Sampling with a static KV cache: fixed shapes at every decode step, so that on CUDA the step can be compiled
into captured graphs (`torch.compile(mode="reduce-overhead")`).

The same draws as `sampling.sample_completions` — ancestral sampling at temperature T with the Gumbel-max
trick, noise drawn for every row of the global batch from a generator seeded by the global torch RNG — so a
row's completion is the same function of its prompt, the model and the seed (equal up to float rounding of
the logits: tests/test_static_sampling.py). What differs is the bookkeeping: every prompt row is prefilled
(no sharing of a group's prompt), the cache is allocated once for prompt + budget, and rows that reached EOS
stay in the batch until every row has (their later tokens are masked), so the decode step never changes shape.
That costs tokens when completions end early and saves the per-step overhead (allocation, a growing cache,
re-launching kernels) that dominates decoding a small model on a GPU.
"""

from __future__ import annotations

import inspect
import weakref
from functools import partial

import torch
from transformers import PreTrainedModel, StaticCache

from overopt.models.policy import position_ids_from_mask
from overopt.sampling import Rollout, SampledLogprobs, draw_tokens, mask_after_eos, set_sampler

# Per model: its compiled decode step, and its caches by (rows, length): a captured graph reads the cache's
# tensors at fixed addresses, so a cache is reset and reused rather than allocated again.
_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_CACHES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _cache_kw(model) -> str:
    """transformers 5.24+ take the KV cache as `cache`; earlier releases only as `past_key_values`."""
    forward = inspect.signature(type(model).forward).parameters
    return "cache" if "cache" in forward else "past_key_values"


def _decode_step(model, compile_step: bool):
    if not compile_step:
        return model
    if model not in _COMPILED:
        _COMPILED[model] = torch.compile(model, mode="reduce-overhead", fullgraph=True)
    return _COMPILED[model]


def _static_cache(model, rows: int, length: int) -> StaticCache:
    caches = _CACHES.setdefault(model, {})
    cache = caches.get((rows, length))
    if cache is None:
        cache = caches[(rows, length)] = StaticCache(config=model.config, max_cache_len=length)
    else:
        cache.reset()
    return cache


@torch.no_grad()
def sample_completions_static(
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
    compile_step: bool = False,
) -> Rollout | tuple[Rollout, SampledLogprobs]:
    """`sampling.sample_completions` with a static KV cache (see the module docstring); `compile_step` compiles
    the one-token decode step (for CUDA, where it captures graphs)."""
    if with_logprobs and not temperature > 0:
        raise ValueError("sample_completions_static: with_logprobs needs a temperature > 0")
    device = model.device
    prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)
    rows, width = prompt_ids.shape
    total_rows = rows if total_rows is None else total_rows
    noise = torch.Generator(device=device).manual_seed(int(torch.randint(2**62, ()).item()))
    was_training = model.training
    model.eval()
    kw = _cache_kw(model)
    cache = _static_cache(model, rows, width + max_new_tokens)
    # The 2-D mask covers the whole cache from the start (the budget's columns 0 until their token is drawn):
    # one shape for every step, written in place.
    mask = torch.zeros(rows, width + max_new_tokens, dtype=prompt_mask.dtype, device=device)
    mask[:, :width] = prompt_mask
    out = model(input_ids=prompt_ids, attention_mask=mask, position_ids=position_ids_from_mask(prompt_mask),
                cache_position=torch.arange(width, device=device), logits_to_keep=1, use_cache=True,
                **{kw: cache})  # fmt: skip
    logits = out.logits[:, -1]
    step = _decode_step(model, compile_step)
    positions = prompt_mask.sum(1, keepdim=True)
    completion = torch.full((rows, max_new_tokens), pad_id, dtype=torch.long, device=device)
    if with_logprobs:
        logprobs, entropy = (torch.zeros(rows, max_new_tokens, device=device) for _ in range(2))
    ended = torch.zeros(rows, dtype=torch.bool, device=device)
    mine = row_offset + torch.arange(rows, device=device)
    steps = 0
    for t in range(max_new_tokens):
        token, token_logprob, token_entropy = draw_tokens(logits, temperature, noise, total_rows, mine, with_logprobs)
        if with_logprobs:
            logprobs[:, t], entropy[:, t] = token_logprob, token_entropy
        completion[:, t] = token
        steps = t + 1
        ended |= token == eos_id
        if t + 1 == max_new_tokens or bool(ended.all()):
            break
        mask[:, width + t] = 1
        out = step(input_ids=token[:, None], attention_mask=mask, position_ids=positions + t,
                   cache_position=torch.tensor([width + t], device=device), logits_to_keep=1, use_cache=True,
                   **{kw: cache})  # fmt: skip
        logits = out.logits[:, -1]
    model.train(was_training)
    completion = completion[:, :steps]
    done = mask_after_eos(completion, eos_id)
    rollout = Rollout(prompt_ids, prompt_mask, completion.masked_fill(done == 0, pad_id), done)
    if not with_logprobs:
        return rollout
    return rollout, SampledLogprobs(logprobs[:, :steps] * done, entropy[:, :steps] * done)


def use_static_cache(compile_step: bool | None) -> None:
    """Route overopt.sampling.sample_completions here (compile_step: compile the decode step), or with None back
    to its own sampler (the `hf` testbed's hf.sampler)."""
    set_sampler(None if compile_step is None else partial(sample_completions_static, compile_step=compile_step))
