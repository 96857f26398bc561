"""Tests for overopt.models: policy token scoring and the reward-model forward pass.

The references run the model on each *unpadded* sequence alone (default positions 0..n-1, no
attention mask), so they check the position ids and attention masking of the batched, padded code.
"""

from __future__ import annotations

import math

import pytest
import torch

from overopt.models.policy import completion_logprobs, tiny_llama
from overopt.models.reward import last_token_index, reward_forward, reward_model_from_backbone, score_head
from overopt.sampling import pad_left, pad_right
from overopt.testbeds.summarize import SummarizeTestbed

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread

# completion_logprobs casts the logits to float32 (`.float()`), so even a float64 model only gives
# float32-accurate log-probs: |log p| <~ 10 here and float32 has ~6e-8 relative precision.
LOGPROB_ATOL = 1e-5
# reward_forward keeps the model's dtype: in float64 padded vs unpadded agree to rounding.
REWARD_ATOL = 1e-10
# The default init (std 0.02) gives nearly uniform next-token distributions and nearly
# context-free hidden states, which would hide a wrong prefix; scaling the embeddings up makes
# different contexts give clearly different outputs (checked by the non-vacuity asserts).
EMBED_SCALE = 10.0


@pytest.fixture(scope="module")
def tok():
    return SummarizeTestbed().tokenizer


@pytest.fixture(scope="module")
def policy(tok):
    model = tiny_llama(tok, hidden_size=32, num_layers=2, num_heads=4, max_positions=64, seed=0).double().eval()
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(EMBED_SCALE)
    return model


def _batch(gen, vocab, prompt_lens, completion_lens, pad_id, eos_id):
    """Prompts of different lengths (left-padded) + completions (right-padded, EOS-terminated)."""
    prompts = [torch.randint(3, vocab, (n,), generator=gen).tolist() for n in prompt_lens]
    completions = [torch.randint(3, vocab, (n - 1,), generator=gen).tolist() + [eos_id] for n in completion_lens]
    p_ids, p_mask = pad_left(prompts, pad_id)
    c_ids, c_mask = pad_right(completions, pad_id)
    return prompts, completions, torch.cat([p_ids, c_ids], 1), torch.cat([p_mask, c_mask], 1), p_ids.shape[1]


def ref_completion_logprobs(model, prompt, completion, temperature=1.0):
    """Per token: run the model on prompt + completion[:t] alone and read log_softmax at the next token."""
    logps, entropies = [], []
    for t, token in enumerate(completion):
        prefix = torch.tensor([prompt + completion[:t]])
        with torch.no_grad():
            logits = model(input_ids=prefix).logits[0, -1].tolist()
        z = [v / temperature for v in logits]
        top = max(z)
        lse = top + math.log(math.fsum(math.exp(v - top) for v in z))
        logps.append(z[token] - lse)
        entropies.append(-math.fsum(math.exp(v - lse) * (v - lse) for v in z))
    return logps, entropies


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_completion_logprobs_match_unpadded_per_prefix_reference(tok, policy, temperature):
    gen = torch.Generator().manual_seed(0)
    prompts, completions, ids, mask, prompt_len = _batch(
        gen,
        len(tok),
        prompt_lens=[5, 2, 8, 1],
        completion_lens=[4, 6, 1, 3],
        pad_id=tok.pad_token_id,
        eos_id=tok.eos_token_id,
    )
    with torch.no_grad():
        logps, entropy = completion_logprobs(policy, ids, mask, prompt_len, temperature=temperature, with_entropy=True)
    width = ids.shape[1] - prompt_len
    assert logps.shape == entropy.shape == (len(prompts), width)
    all_ref = []
    for row, (prompt, completion) in enumerate(zip(prompts, completions)):
        ref_lp, ref_ent = ref_completion_logprobs(policy, prompt, completion, temperature)
        n = len(completion)
        torch.testing.assert_close(
            logps[row, :n].double(), torch.tensor(ref_lp, dtype=torch.float64), rtol=0, atol=LOGPROB_ATOL
        )
        torch.testing.assert_close(
            entropy[row, :n].double(), torch.tensor(ref_ent, dtype=torch.float64), rtol=0, atol=LOGPROB_ATOL
        )
        # Padding positions are not meaningful but must not be nan/inf (they get masked downstream).
        assert torch.isfinite(logps[row]).all() and torch.isfinite(entropy[row]).all()
        all_ref += ref_lp
    # Non-vacuity: the log-probs vary far more than the tolerance, so a wrong prefix would show.
    assert max(all_ref) - min(all_ref) > 1.0


def test_completion_logprobs_reference_detects_ignored_padding(tok, policy):
    """Mutation check: scoring the padded batch *without* the attention mask (pads attended to)
    moves the log-probs of a left-padded row far beyond the tolerance, so the reference above
    really checks the masking. (Shifted position ids are not detectable with Llama: RoPE only
    sees relative positions, so a constant offset from left padding leaves the logits unchanged.)"""
    gen = torch.Generator().manual_seed(1)
    prompts, completions, ids, mask, prompt_len = _batch(
        gen, len(tok), prompt_lens=[6, 2], completion_lens=[3, 3], pad_id=tok.pad_token_id, eos_id=tok.eos_token_id
    )
    with torch.no_grad():
        logits = policy(input_ids=ids, use_cache=False).logits.double()  # no mask: pads are attended to
    wrong = torch.log_softmax(logits[:, prompt_len - 1 : -1], -1).gather(-1, ids[:, prompt_len:, None])[..., 0]
    ref_lp, _ = ref_completion_logprobs(policy, prompts[1], completions[1])
    assert (wrong[1, :3] - torch.tensor(ref_lp, dtype=torch.float64)).abs().max() > 100 * LOGPROB_ATOL


def test_completion_logprobs_default_is_temperature_one_and_no_entropy(tok, policy):
    gen = torch.Generator().manual_seed(2)
    _, _, ids, mask, prompt_len = _batch(gen, len(tok), [3, 4], [2, 5], tok.pad_token_id, tok.eos_token_id)
    with torch.no_grad():
        a, ent = completion_logprobs(policy, ids, mask, prompt_len)
        b, _ = completion_logprobs(policy, ids, mask, prompt_len, temperature=1.0, with_entropy=True)
        c, _ = completion_logprobs(policy, ids, mask, prompt_len, temperature=0.5)
    assert ent is None
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (a - c).abs().max() > 1e-3


# -- reward model --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def backbone_path(tok, tmp_path_factory):
    path = tmp_path_factory.mktemp("backbone")
    model = tiny_llama(tok, hidden_size=32, num_layers=2, num_heads=4, max_positions=64, seed=1)
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(EMBED_SCALE)  # see EMBED_SCALE
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def reward_model(backbone_path):
    return reward_model_from_backbone(backbone_path, seed=0).double().eval()


def _ref_reward(model, seq):
    """Head applied to the backbone's last hidden state, running the sequence alone, unpadded."""
    with torch.no_grad():
        h = model.base_model(input_ids=torch.tensor([seq])).last_hidden_state[0, -1]
    w = model.score.weight.detach()[0]
    b = model.score.bias.detach()[0] if model.score.bias is not None else 0.0
    return math.fsum(float(wi) * float(hi) for wi, hi in zip(w, h)) + float(b), h


def test_reward_forward_matches_unpadded_reference_left_and_right_padding(tok, reward_model):
    gen = torch.Generator().manual_seed(3)
    seqs = [torch.randint(3, len(tok), (n,), generator=gen).tolist() for n in (7, 2, 5, 1, 7)]
    refs = [_ref_reward(reward_model, s) for s in seqs]
    ref_r = torch.tensor([r for r, _ in refs], dtype=torch.float64)
    ref_h = torch.stack([h for _, h in refs])
    assert ref_r.max() - ref_r.min() > 1e-3  # rewards differ across sequences: the check can fail
    for pad in (pad_left, pad_right):
        ids, mask = pad(seqs, tok.pad_token_id)
        with torch.no_grad():
            out = reward_forward(reward_model, ids, mask)
        assert out.rewards.shape == (len(seqs),)
        assert out.hidden.shape == (len(seqs), reward_model.config.hidden_size)
        torch.testing.assert_close(out.rewards, ref_r, rtol=0, atol=REWARD_ATOL)
        torch.testing.assert_close(out.hidden, ref_h, rtol=0, atol=REWARD_ATOL)
        # r = wᵀh (+ b): the head reproduces the rewards from `hidden`.
        head = score_head(reward_model)
        again = out.hidden @ head.weight[0].detach() + (head.bias.detach()[0] if head.bias is not None else 0.0)
        torch.testing.assert_close(again, out.rewards, rtol=0, atol=REWARD_ATOL)


def test_reward_model_keeps_backbone_and_head_depends_on_seed_only(tok, backbone_path):
    a = reward_model_from_backbone(backbone_path, seed=0)
    b = reward_model_from_backbone(backbone_path, seed=0)
    c = reward_model_from_backbone(backbone_path, seed=1)
    wa, wb, wc = (score_head(m).weight.detach() for m in (a, b, c))
    assert wa.shape == (1, a.config.hidden_size)
    assert torch.equal(wa, wb)
    assert not torch.allclose(wa, wc)
    assert wa.abs().max() > 0  # a real random init, not zeros
    # The backbone is the saved one, whatever the seed.
    policy = tiny_llama(tok, hidden_size=32, num_layers=2, num_heads=4, max_positions=64, seed=1)
    with torch.no_grad():
        policy.model.embed_tokens.weight.mul_(EMBED_SCALE)
    for m in (a, c):
        assert torch.equal(m.base_model.embed_tokens.weight, policy.model.embed_tokens.weight)
        assert torch.equal(m.base_model.layers[0].mlp.up_proj.weight, policy.model.layers[0].mlp.up_proj.weight)
    # And the global RNG is left alone (the head init runs in a forked RNG).
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    reward_model_from_backbone(backbone_path, seed=0)
    assert torch.equal(torch.rand(3), expected)


def test_score_head_rejects_models_without_a_scalar_linear_score(tok, backbone_path):
    causal_lm = tiny_llama(tok, hidden_size=16, num_layers=1, num_heads=2, max_positions=16, seed=0)
    with pytest.raises(ValueError, match=r"LlamaForCausalLM has no linear `score` head with one output"):
        score_head(causal_lm)
    from transformers import AutoModelForSequenceClassification

    two_labels = AutoModelForSequenceClassification.from_pretrained(backbone_path, num_labels=2)
    with pytest.raises(ValueError, match="num_labels=1"):
        score_head(two_labels)


# -- last_token_index ------------------------------------------------------------------------------
def ref_last_token_index(mask: torch.Tensor) -> list[int]:
    out = []
    for row in mask.tolist():
        last = None
        for j, m in enumerate(row):
            if m:
                last = j
        out.append(last)
    return out


def test_last_token_index_matches_loop():
    gen = torch.Generator().manual_seed(4)
    lengths = torch.randint(1, 10, (30,), generator=gen).tolist()
    seqs = [[1] * n for n in lengths]
    for pad in (pad_left, pad_right):
        _, mask = pad(seqs, 0)
        assert last_token_index(mask).tolist() == ref_last_token_index(mask)
    # Arbitrary (non-contiguous) masks, bool or float, too.
    mask = (torch.rand(30, 9, generator=gen) < 0.5).long()
    mask[:, 0] = 1  # at least one real token per row
    assert last_token_index(mask).tolist() == ref_last_token_index(mask)
    assert last_token_index(mask.bool()).tolist() == ref_last_token_index(mask)
    assert last_token_index(mask.double()).tolist() == ref_last_token_index(mask)
    # A single real token at column 0 (positions * mask is all zero): index 0, not a pad column.
    assert last_token_index(torch.tensor([[1, 0, 0], [0, 0, 1]])).tolist() == [0, 2]
