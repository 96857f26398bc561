"""overopt.models.attention: masks whose pad queries attend to every key change no real position's output."""

from __future__ import annotations

import itertools

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from overopt.models.attention import pad_safe_sdpa, unmask_unattended
from overopt.models.policy import completion_logprobs


def test_unmask_unattended_against_a_loop():
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(3, 2, 5, 7, generator=g) < 0.3
    mask[0, 0, 1] = False  # a row that sees nothing, surely
    out = unmask_unattended(mask)
    for b, h, q in itertools.product(range(3), range(2), range(5)):
        expected = torch.ones(7, dtype=torch.bool) if not mask[b, h, q].any() else mask[b, h, q]
        assert torch.equal(out[b, h, q], expected)


def _left_padded_batch(vocab: int):
    g = torch.Generator().manual_seed(1)
    lengths, width, completion = [3, 7, 5, 7], 7, 4
    ids = torch.randint(3, vocab, (len(lengths), width + completion), generator=g)
    mask = torch.ones_like(ids)
    for row, n in enumerate(lengths):
        mask[row, : width - n] = 0
        ids[row, : width - n] = 0
    mask[0, -1] = 0  # a completion that ended early: right padding too
    return ids, mask, width


def test_pad_safe_masks_leave_every_real_position_unchanged():
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config).double()
    ids, mask, width = _left_padded_batch(64)
    for share_prefix in (False, True):
        with pad_safe_sdpa(False):
            theirs, _ = completion_logprobs(model, ids, mask, width, share_prefix=share_prefix)
        with pad_safe_sdpa(True):
            ours, _ = completion_logprobs(model, ids, mask, width, share_prefix=share_prefix)
        real = mask[:, width:].bool()
        torch.testing.assert_close(ours[real], theirs[real], rtol=0, atol=1e-12)
