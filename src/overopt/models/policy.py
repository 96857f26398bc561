"""Policies are plain transformers causal LMs; this module builds the lab's tiny ones and scores tokens."""

from __future__ import annotations

import copy
from typing import NamedTuple

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from overopt.ops import entropy_from_logits, selective_log_softmax

# Weights load only from safetensors (never a pickle), and no code from a model repository runs.
SAFE_LOADING = {"use_safetensors": True, "trust_remote_code": False}


def tiny_llama(
    tokenizer: PreTrainedTokenizerBase,
    hidden_size: int,
    num_layers: int,
    num_heads: int,
    max_positions: int,
    seed: int,
) -> LlamaForCausalLM:
    """A from-scratch Llama-architecture LM sized for CPU experiments (weights drawn from `seed`)."""
    return random_llama(len(tokenizer), hidden_size, num_layers, num_heads, max_positions, seed,
                        pad_id=tokenizer.pad_token_id, bos_id=tokenizer.bos_token_id,
                        eos_id=tokenizer.eos_token_id)  # fmt: skip


def random_llama(
    vocab_size: int,
    hidden_size: int,
    num_layers: int,
    num_heads: int,
    max_positions: int,
    seed: int,
    *,
    pad_id: int | None = 0,
    bos_id: int | None = 1,
    eos_id: int | None = 2,
) -> LlamaForCausalLM:
    """`tiny_llama` without a tokenizer: a vocabulary size and its special ids (speed and GPU checks)."""
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_positions,
        pad_token_id=pad_id,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding: (B, L) mask -> (B, L) ids, 0 at the first real token."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def completion_logits(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_len: int,
    share_prefix: bool = False,
) -> torch.Tensor:
    """Logits that predict each completion token: (B, P + T) sequence -> (B, T, V).

    The token at position P + t is predicted by the logits at position P + t - 1. Only those T + 1
    positions go through the output head (`logits_to_keep`): the prompt's logits are never computed,
    which matters with large vocabularies. Inputs move to the model's device.

    `share_prefix`: each distinct prompt (its ids and mask) runs once and its keys and values serve every row
    that continues it (a group of K completions of one prompt; a preference pair), as in `prefix_cache`. The
    same function of the weights, equal to the full pass to float rounding, with the prompt's work done once
    per distinct prompt instead of once per row. (A causal LM only: a value model's head reads every position.)
    """
    device = next(model.parameters()).device  # also for a DDP-wrapped model, which has no .device
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    keep = input_ids.shape[1] - prompt_len + 1
    if share_prefix and keep > 1:
        return _shared_prefix_logits(model, input_ids, attention_mask, prompt_len)
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
        logits_to_keep=keep,
    )
    return out.logits[:, -keep:-1]  # heads without `logits_to_keep` (a value model's) return every position


class PrefixCache(NamedTuple):
    """The forward pass of each distinct prompt of a batch, laid out for the batch's rows."""

    output: object  # the model's output on the distinct prompts (its last position's logits or hidden state)
    cache: object  # their keys and values, reordered to the batch's rows (gradients flow back through them)
    cache_kw: str  # the keyword the model takes the cache by ("cache"; "past_key_values" before transformers 5.24)
    copies: torch.Tensor  # (B,) row -> its distinct prompt


def prefix_cache(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, **kwargs) -> PrefixCache:
    """Run each distinct (prompt ids, mask) row once with a KV cache and copy the cache to its rows: the rows
    that share a prompt (a group of K; a pair's chosen and rejected) then continue from it. `model` is a
    transformers model or its backbone (`kwargs` go to its call, e.g. logits_to_keep)."""
    distinct, copies = torch.unique(torch.cat([prompt_ids, prompt_mask], 1), dim=0, return_inverse=True)
    width = prompt_ids.shape[1]
    mask = distinct[:, width:]
    out = model(input_ids=distinct[:, :width], attention_mask=mask, position_ids=position_ids_from_mask(mask),
                use_cache=True, **kwargs)  # fmt: skip
    # Recent transformers (5.24) name the KV cache `cache` and warn on `past_key_values`; older releases only
    # know `past_key_values`. The output says which (wrappers such as peft hide the signature).
    cache_kw = "cache" if "cache" in out else "past_key_values"
    cache = out[cache_kw]
    cache.reorder_cache(copies)  # index_select of every layer's keys and values: differentiable
    return PrefixCache(out, cache, cache_kw, copies)


def continue_from_prefix(model, prefix: PrefixCache, prompt_mask, tokens, token_mask, **kwargs):
    """The model on `tokens` (B, T) that follow each row's prompt in `prefix` (positions go on from the prompt's
    real tokens; `token_mask` marks the real ones)."""
    positions = prompt_mask.sum(1, keepdim=True) + torch.arange(tokens.shape[1], device=tokens.device)
    return model(input_ids=tokens, attention_mask=torch.cat([prompt_mask, token_mask], 1), position_ids=positions,
                 use_cache=True, **{prefix.cache_kw: prefix.cache}, **kwargs)  # fmt: skip


def _shared_prefix_logits(model, input_ids, attention_mask, prompt_len: int) -> torch.Tensor:
    """completion_logits with `share_prefix`: the prompt's last position predicts completion token 0, the
    completion's first T − 1 tokens the rest."""
    prompt_mask = attention_mask[:, :prompt_len]
    prefix = prefix_cache(model, input_ids[:, :prompt_len], prompt_mask, logits_to_keep=1)
    first = prefix.output.logits[prefix.copies, -1:]
    tokens = input_ids[:, prompt_len:-1]
    rest = continue_from_prefix(model, prefix, prompt_mask, tokens, attention_mask[:, prompt_len:-1],
                                logits_to_keep=tokens.shape[1])  # fmt: skip
    return torch.cat([first, rest.logits[:, -tokens.shape[1] :]], 1)


def completion_logprobs(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_len: int,
    temperature: float = 1.0,
    with_entropy: bool = False,
    share_prefix: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log π(y_t | x, y_<t) for every completion token (B, T), and optionally the entropy (B, T).

    Logits are divided by the sampling temperature so the log-probs are those of the distribution
    the completions were actually drawn from. `share_prefix`: see `completion_logits`.
    """
    # selective_log_softmax upcasts 16-bit logits itself; float32/float64 keep their precision.
    logits = completion_logits(model, input_ids, attention_mask, prompt_len, share_prefix) / temperature
    logprobs = selective_log_softmax(logits, input_ids[:, prompt_len:].to(logits.device))
    entropy = entropy_from_logits(logits) if with_entropy else None
    return logprobs, entropy


def with_lora(
    model: PreTrainedModel, r: int, alpha: int, dropout: float, target_modules: str, seed: int
) -> PreTrainedModel:
    """`model` with LoRA adapters (Hu et al., arXiv 2106.09685) through peft: only the adapters train.

    target_modules: "all-linear" (every linear layer but the output head) or comma-separated module
    names. The adapters' init depends on `seed` only; B starts at zero, so the model is unchanged.
    """
    from peft import LoraConfig, get_peft_model  # optional dependency: pip install 'overopt[lora]'

    names = [m.strip() for m in target_modules.split(",") if m.strip()]
    targets = "all-linear" if names == ["all-linear"] else names
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, task_type="CAUSAL_LM")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_peft_model(model, config)


def merged_copy(model: PreTrainedModel) -> PreTrainedModel:
    """A copy of `model` as a plain transformers model: a LoRA policy's adapters merged into its base."""
    clone = copy.deepcopy(model)
    return clone.merge_and_unload() if hasattr(clone, "merge_and_unload") else clone
