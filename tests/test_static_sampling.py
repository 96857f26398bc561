"""The static-cache sampler draws what sample_completions draws: same tokens, log-probs to float rounding."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from overopt.models.policy import completion_logprobs
from overopt.sampling import pad_left, sample_completions
from overopt.static_sampling import sample_completions_static


@pytest.fixture(scope="module")
def model():
    config = LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2)  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return LlamaForCausalLM(config).eval()


def _prompts():
    g = torch.Generator().manual_seed(3)
    return pad_left([torch.randint(3, 40, (n,), generator=g).tolist() for n in (3, 7, 5, 7, 2, 6)], 0)


@pytest.mark.parametrize("temperature", [1.0, 0.7, 0.0])
def test_same_draws_as_the_dynamic_sampler(model, temperature):
    ids, mask = _prompts()
    draws = {}
    for name, sampler in (("dynamic", sample_completions), ("static", sample_completions_static)):
        torch.manual_seed(11)
        draws[name] = sampler(model, ids, mask, 9, temperature, eos_id=2, pad_id=0, row_offset=2, total_rows=10,
                              with_logprobs=temperature > 0)  # fmt: skip
    if temperature > 0:
        (dyn, dyn_lp), (sta, sta_lp) = draws["dynamic"], draws["static"]
        torch.testing.assert_close(sta_lp.logprobs, dyn_lp.logprobs, rtol=0, atol=1e-5)
        torch.testing.assert_close(sta_lp.entropy, dyn_lp.entropy, rtol=0, atol=1e-5)
    else:
        dyn, sta = draws["dynamic"], draws["static"]
    assert torch.equal(sta.completion_ids, dyn.completion_ids)
    assert torch.equal(sta.completion_mask, dyn.completion_mask)
    if temperature == 1.0:  # some rows ended early, and the static batch kept them
        assert bool((dyn.completion_mask.sum(1) < 9).any())


def test_sampled_logprobs_are_the_trainers(model):
    """The log-probs read off the static sampler's logits equal a full forward over the completions."""
    ids, mask = _prompts()
    torch.manual_seed(5)
    rollout, sampled = sample_completions_static(model, ids, mask, 8, 1.0, eos_id=2, pad_id=0, with_logprobs=True)
    full, full_mask = rollout.input_ids, rollout.attention_mask
    trainer, _ = completion_logprobs(model, full, full_mask, rollout.prompt_len)
    m = rollout.completion_mask.bool()
    torch.testing.assert_close(sampled.logprobs[m], trainer[m], rtol=0, atol=1e-5)


def test_a_reused_cache_starts_empty(model):
    ids, mask = _prompts()
    runs = []
    for _ in range(2):
        torch.manual_seed(7)
        runs.append(sample_completions_static(model, ids, mask, 6, 1.0, eos_id=2, pad_id=0).completion_ids)
    assert torch.equal(runs[0], runs[1])
