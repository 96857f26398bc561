"""Policies are plain transformers causal LMs; this module builds the lab's tiny ones and scores tokens."""

from __future__ import annotations

import copy

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
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_positions,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding: (B, L) mask -> (B, L) ids, 0 at the first real token."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def completion_logits(
    model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_len: int
) -> torch.Tensor:
    """Logits that predict each completion token: (B, P + T) sequence -> (B, T, V).

    The token at position P + t is predicted by the logits at position P + t - 1. Only those T + 1
    positions go through the output head (`logits_to_keep`): the prompt's logits are never computed,
    which matters with large vocabularies. Inputs move to the model's device.
    """
    device = next(model.parameters()).device  # also for a DDP-wrapped model, which has no .device
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    keep = input_ids.shape[1] - prompt_len + 1
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
        logits_to_keep=keep,
    )
    return out.logits[:, -keep:-1]  # heads without `logits_to_keep` (a value model's) return every position


def completion_logprobs(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_len: int,
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log π(y_t | x, y_<t) for every completion token (B, T), and optionally the entropy (B, T).

    Logits are divided by the sampling temperature so the log-probs are those of the distribution
    the completions were actually drawn from.
    """
    # selective_log_softmax upcasts 16-bit logits itself; float32/float64 keep their precision.
    logits = completion_logits(model, input_ids, attention_mask, prompt_len) / temperature
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
