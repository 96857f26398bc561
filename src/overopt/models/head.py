"""The LM head in float32 under bfloat16 autocast: logits, log-probs and ratios without 16-bit rounding.

Under autocast a Linear runs in bfloat16, so the logits carry bfloat16's 8-bit mantissa: a logit of 10 is
rounded by up to 0.03 nats, the same order as the per-token log-ratios that KL penalties, importance ratios
and the proxy's implicit rewards are made of. Computing only the head in float32 (the trained weights are
float32 already; only its matmul is cast) removes that rounding at the cost of one float32 matmul per token.
This is what TRL's `cast_lm_head_to_fp32` does for its trainers, and what MiniMax-M1 (arXiv 2506.13585)
found necessary for training and inference probabilities to agree in RL. `hf.lm_head_fp32` turns it off.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel


def _fp32_forward(head: torch.nn.Linear, hidden: torch.Tensor) -> torch.Tensor:
    with torch.autocast(device_type=hidden.device.type, enabled=False):
        bias = None if head.bias is None else head.bias.float()
        return F.linear(hidden.float(), head.weight.float(), bias)


def fp32_lm_head(model: PreTrainedModel) -> PreTrainedModel:
    """Make `model`'s output embedding compute in float32 whatever autocast is active (in place; returns it).

    The head's forward is rebound as a method of the head, so `copy.deepcopy(model)` (a run's trainable copy of
    the SFT policy) gets a head that computes with its own weights; state_dict and save_pretrained are unchanged.
    """
    head = model.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear):
        raise ValueError(f"fp32_lm_head: the output embedding of {type(model).__name__} is not a Linear layer")
    head.forward = types.MethodType(_fp32_forward, head)
    return model
