"""Reward models: a transformers backbone + linear scalar head read at the last non-pad token.

We use the stock `AutoModelForSequenceClassification` (num_labels=1) so RMs save and load with
save_pretrained / from_pretrained like any Hugging Face RM, but we run the backbone and the head
ourselves: SignCert-PO (arXiv 2604.02986) needs the final hidden state h and the head w of
r(x, y) = wᵀh(x, y) + b, not only the score.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
from transformers import AutoModelForSequenceClassification, BatchEncoding, PreTrainedModel, PreTrainedTokenizerBase

from overopt.models.policy import SAFE_LOADING, continue_from_prefix, position_ids_from_mask, prefix_cache


class RewardOutput(NamedTuple):
    rewards: torch.Tensor  # (B,) scalar reward per sequence
    hidden: torch.Tensor  # (B, H) final hidden state at the last non-pad token


def reward_model_from_backbone(path: str | Path, seed: int, **load_kwargs) -> PreTrainedModel:
    """An RM whose backbone is loaded from `path` (e.g. the SFT policy) and whose head is fresh.

    The head init depends on `seed` only, so RM ensembles differ exactly where intended.
    `load_kwargs` go to from_pretrained on top of SAFE_LOADING (the hf testbed: dtype, trust_remote_code).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=1, **{**SAFE_LOADING, **load_kwargs}
        )
    return model


def score_head(model: PreTrainedModel) -> torch.nn.Linear:
    """The linear scalar head (`score` in Llama / Qwen2 / GPT-2 / GPT-NeoX classifiers)."""
    head = getattr(model, "score", None)
    if not isinstance(head, torch.nn.Linear) or head.out_features != 1:
        raise ValueError(
            f"{type(model).__name__} has no linear `score` head with one output; "
            "a reward model must be a sequence-classification model with num_labels=1"
        )
    return head


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last non-pad token per row: (B, L) -> (B,). Works for left and right padding."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (positions * attention_mask.long()).argmax(dim=1)


def reward_forward(
    model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_len: int | None = None
) -> RewardOutput:
    """r(x, y) = wᵀh + b for a batch of full sequences (B, L) -> RewardOutput((B,), (B, H)) on the model's device.

    With `prompt_len` (left-padded prompts, right-padded completions after them), each distinct prompt runs once
    and the rows that continue it share its keys and values (models.policy.prefix_cache): equal to the full
    pass to float rounding, the prompt's work done once per distinct prompt."""
    input_ids, attention_mask = input_ids.to(model.device), attention_mask.to(model.device)
    rows = torch.arange(input_ids.shape[0], device=input_ids.device)
    if prompt_len is None:
        hidden_states = model.base_model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids_from_mask(attention_mask),
            use_cache=False,
        ).last_hidden_state  # (B, L, H)
        h = hidden_states[rows, last_token_index(attention_mask)]  # (B, H)
    else:
        prompt_mask, completion_mask = attention_mask[:, :prompt_len], attention_mask[:, prompt_len:]
        prefix = prefix_cache(model.base_model, input_ids[:, :prompt_len], prompt_mask)
        h = prefix.output.last_hidden_state[prefix.copies, -1]  # the prompt's last token: rows without completion
        length = completion_mask.sum(1)
        if completion_mask.shape[1] and bool((length > 0).any()):
            rest = continue_from_prefix(
                model.base_model, prefix, prompt_mask, input_ids[:, prompt_len:], completion_mask
            ).last_hidden_state  # (B, T, H)
            h = torch.where((length > 0)[:, None], rest[rows, (length - 1).clamp(min=0)], h)
    return RewardOutput(score_head(model)(h).squeeze(-1), h)


def conversation_text(tokenizer: PreTrainedTokenizerBase, prompt: str | list[dict], completion: str) -> str:
    """The text an RM scores for (x, y): the conversation [user: x, assistant: y] through the RM tokenizer's
    chat template when it has one (a conversational prompt, a list of messages, keeps its own turns), else x + y."""
    if tokenizer.chat_template:
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        return tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": completion}], tokenize=False)
    if not isinstance(prompt, str):
        raise ValueError("a conversational prompt (a list of messages) needs a reward tokenizer with a chat template")
    return prompt + completion


def conversation_batch(tokenizer: PreTrainedTokenizerBase, prompts: list, completions: list[str]) -> BatchEncoding:
    """Padded ids and mask of `conversation_text` for each (prompt, completion); a chat template writes its own
    special tokens, plain text gets the tokenizer's."""
    texts = [conversation_text(tokenizer, p, c) for p, c in zip(prompts, completions, strict=True)]
    return tokenizer(texts, padding=True, add_special_tokens=not tokenizer.chat_template, return_tensors="pt")


@torch.no_grad()
def score_texts(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list, completions: list[str], batch_size: int
) -> torch.Tensor:
    """A sequence-classification RM's scores (its own forward, logits[:, 0]) of (prompt, completion) texts:
    (B,) float64 on the CPU."""
    scores = []
    for start in range(0, len(prompts), batch_size):
        end = start + batch_size
        batch = conversation_batch(tokenizer, prompts[start:end], completions[start:end]).to(model.device)
        scores.append(model(**batch).logits[:, 0].double().cpu())
    return torch.cat(scores) if scores else torch.zeros(0, dtype=torch.float64)


class RewardHead(torch.nn.Module):
    """`reward_forward` as a module's forward: (B, L) ids and mask -> (B,) rewards. Training wraps this
    (overopt.distributed.prepare) so that the processes' gradients are averaged through its forward."""

    def __init__(self, model: PreTrainedModel):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_len: int | None = None):
        return reward_forward(self.model, input_ids, attention_mask, prompt_len).rewards
