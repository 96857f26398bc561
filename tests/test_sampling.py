"""Tests for overopt.sampling: padding helpers, the post-EOS mask and batched sampling.

References are naive Python loops written here, never calls into the code under test.
"""

from __future__ import annotations

import pytest
import torch

from overopt.models.policy import tiny_llama
from overopt.sampling import mask_after_eos, pad_left, pad_right, sample_completions
from overopt.testbeds.summarize import SummarizeTestbed

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread

EOS = 2  # any id works for mask_after_eos; 2 is the summarize testbed's EOS


# -- mask_after_eos ----------------------------------------------------------------------------
def ref_mask_after_eos(ids: torch.Tensor, eos_id: int) -> list[list[int]]:
    out = []
    for row in ids.tolist():
        mask, seen = [], False
        for tok in row:
            mask.append(0 if seen else 1)
            if tok == eos_id:
                seen = True
        out.append(mask)
    return out


def test_mask_after_eos_hand_cases():
    ids = torch.tensor(
        [
            [5, 6, 7, 8, 9],  # no EOS: everything counts
            [EOS, 6, 7, 8, 9],  # EOS first: only the EOS
            [5, EOS, 7, EOS, 9],  # several EOS: up to and including the first
            [5, 6, 7, 8, EOS],  # EOS last
            [EOS, EOS, EOS, EOS, EOS],
        ]
    )
    expected = [
        [1, 1, 1, 1, 1],
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 1, 1],
        [1, 0, 0, 0, 0],
    ]
    assert mask_after_eos(ids, EOS).tolist() == expected
    assert mask_after_eos(ids, EOS).dtype == torch.long


@pytest.mark.parametrize("p_eos", [0.05, 0.3, 0.8])
def test_mask_after_eos_matches_loop_on_random_ids(p_eos):
    gen = torch.Generator().manual_seed(7)
    batch, length, vocab = 64, 12, 10
    ids = torch.randint(3, vocab, (batch, length), generator=gen)
    ids[torch.rand(batch, length, generator=gen) < p_eos] = EOS
    ids[0] = 5  # always one row without EOS
    ids[1, 0] = EOS  # and one with EOS at position 0
    ids[2, [3, 6, 9]] = EOS  # and one with several
    assert mask_after_eos(ids, EOS).tolist() == ref_mask_after_eos(ids, EOS)


# -- padding -----------------------------------------------------------------------------------
def test_pad_left_values_and_mask():
    seqs = [[4, 5, 6], [7], [], [8, 9]]
    ids, mask = pad_left(seqs, pad_id=0)
    assert ids.shape == mask.shape == (4, 3)
    assert ids.dtype == mask.dtype == torch.long
    assert ids.tolist() == [[4, 5, 6], [0, 0, 7], [0, 0, 0], [0, 8, 9]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 0, 0], [0, 1, 1]]


def test_pad_left_uses_pad_id_and_all_rows_end_at_last_column():
    gen = torch.Generator().manual_seed(3)
    seqs = [torch.randint(1, 50, (int(n),), generator=gen).tolist() for n in torch.randint(0, 9, (20,), generator=gen)]
    seqs[0] = list(range(1, 9))  # width 8
    ids, mask = pad_left(seqs, pad_id=99)
    assert ids.shape == (20, 8)
    for row, seq in enumerate(seqs):
        pad = 8 - len(seq)
        assert ids[row].tolist() == [99] * pad + seq
        assert mask[row].tolist() == [0] * pad + [1] * len(seq)


def test_pad_right_values_and_mask():
    seqs = [[4, 5, 6], [7], [], [8, 9]]
    ids, mask = pad_right(seqs, pad_id=0)
    assert ids.shape == mask.shape == (4, 3)
    assert ids.tolist() == [[4, 5, 6], [7, 0, 0], [0, 0, 0], [8, 9, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0], [0, 0, 0], [1, 1, 0]]


def test_pad_right_wider_width():
    ids, mask = pad_right([[4, 5], [6]], pad_id=1, width=5)
    assert ids.tolist() == [[4, 5, 1, 1, 1], [6, 1, 1, 1, 1]]
    assert mask.tolist() == [[1, 1, 0, 0, 0], [1, 0, 0, 0, 0]]


def test_pad_right_truncates_to_a_shorter_width():
    ids, mask = pad_right([[4, 5, 6, 7], [8], [9, 10]], pad_id=0, width=2)
    assert ids.tolist() == [[4, 5], [8, 0], [9, 10]]
    assert mask.tolist() == [[1, 1], [1, 0], [1, 1]]


# -- sample_completions on a tiny random policy --------------------------------------------------


@pytest.fixture(scope="module")
def testbed():
    return SummarizeTestbed()


@pytest.fixture(scope="module")
def policy(testbed):
    model = tiny_llama(testbed.tokenizer, hidden_size=16, num_layers=1, num_heads=2, max_positions=64, seed=0)
    return model


def _prompts(testbed, n, seed):
    """Prompts of different lengths: the doc truncated to 0..doc_facts facts, kept as <bos> ... <tldr>."""
    full = testbed.prompts("train", n, seed)
    return [p[: 1 + (i % (len(p) - 1))] + [p[-1]] for i, p in enumerate(full)]


def _rollout(testbed, policy, prompts, seed, temperature=1.0, max_new_tokens=12):
    tok = testbed.tokenizer
    prompt_ids, prompt_mask = pad_left(prompts, tok.pad_token_id)
    torch.manual_seed(seed)
    return sample_completions(
        policy, prompt_ids, prompt_mask, max_new_tokens, temperature, tok.eos_token_id, tok.pad_token_id
    )


def test_sample_completions_mask_covers_up_to_first_eos(testbed, policy):
    tok = testbed.tokenizer
    prompts = _prompts(testbed, 48, seed=0)
    assert len({len(p) for p in prompts}) > 1  # really left-padded
    roll = _rollout(testbed, policy, prompts, seed=0, max_new_tokens=12)
    ids, mask = roll.completion_ids, roll.completion_mask
    assert ids.shape == mask.shape and ids.shape[0] == len(prompts) and ids.shape[1] <= 12
    has_eos = mask.bool() & (ids == tok.eos_token_id)
    # The test is only meaningful if some rows stop early and some run to the limit.
    assert has_eos.any(1).any() and not has_eos.any(1).all()
    for row_ids, row_mask in zip(ids.tolist(), mask.tolist()):
        if tok.eos_token_id in row_ids:
            first = row_ids.index(tok.eos_token_id)
            assert row_mask == [1] * (first + 1) + [0] * (len(row_ids) - first - 1)
        else:
            assert row_mask == [1] * len(row_ids)
        # Every masked-out position holds the pad id. (A random policy may also *sample* <pad>
        # inside a completion; that token is real and stays masked in, so it is not checked here.)
        assert all(t == tok.pad_token_id for t, m in zip(row_ids, row_mask) if m == 0)
    # The prompt is returned untouched.
    ref_ids, ref_mask = pad_left(prompts, tok.pad_token_id)
    assert torch.equal(roll.prompt_ids, ref_ids) and torch.equal(roll.prompt_mask, ref_mask)
    assert torch.equal(roll.input_ids, torch.cat([ref_ids, ids], 1))
    assert torch.equal(roll.attention_mask, torch.cat([ref_mask, mask], 1))


def test_sample_completions_same_seed_same_completions(testbed, policy):
    prompts = _prompts(testbed, 16, seed=1)
    a = _rollout(testbed, policy, prompts, seed=123)
    b = _rollout(testbed, policy, prompts, seed=123)
    c = _rollout(testbed, policy, prompts, seed=124)
    assert torch.equal(a.completion_ids, b.completion_ids)
    assert torch.equal(a.completion_mask, b.completion_mask)
    # A different seed gives different samples (so the equality above is not vacuous).
    assert a.completion_ids.shape != c.completion_ids.shape or not torch.equal(a.completion_ids, c.completion_ids)


def test_sample_completions_restores_training_mode(testbed, policy):
    policy.train()
    _rollout(testbed, policy, _prompts(testbed, 2, seed=2), seed=0, max_new_tokens=2)
    assert policy.training
    policy.eval()
    _rollout(testbed, policy, _prompts(testbed, 2, seed=2), seed=0, max_new_tokens=2)
    assert not policy.training


def test_left_padded_batch_matches_each_prompt_alone_greedy(testbed, policy):
    """Greedy decoding of a left-padded batch must equal decoding each prompt with no padding."""
    tok = testbed.tokenizer
    prompts = _prompts(testbed, 7, seed=3)
    assert len({len(p) for p in prompts}) > 1
    batch = _rollout(testbed, policy, prompts, seed=0, temperature=0.0, max_new_tokens=10)
    for row, prompt in enumerate(prompts):
        alone = _rollout(testbed, policy, [prompt], seed=0, temperature=0.0, max_new_tokens=10)
        n_alone = int(alone.completion_mask.sum())
        got = batch.completion_ids[row][batch.completion_mask[row].bool()].tolist()
        assert got == alone.completion_ids[0, :n_alone].tolist(), (row, prompt)
        assert got[-1] == tok.eos_token_id or len(got) == 10


def test_greedy_equals_transformers_generate(testbed, policy):
    """The decode loop (shared prefill, rows leaving at EOS) against transformers' generate, greedy."""
    from transformers import GenerationConfig

    tok = testbed.tokenizer
    prompts = [p for p in _prompts(testbed, 9, seed=4) for _ in range(3)]  # groups of 3 copies
    ids, mask = pad_left(prompts, tok.pad_token_id)
    ours = _rollout(testbed, policy, prompts, seed=0, temperature=0.0, max_new_tokens=10)
    config = GenerationConfig(do_sample=False, max_new_tokens=10, eos_token_id=tok.eos_token_id,
                              pad_token_id=tok.pad_token_id)  # fmt: skip
    theirs = policy.generate(input_ids=ids, attention_mask=mask, generation_config=config)[:, ids.shape[1] :]
    theirs_mask = mask_after_eos(theirs, tok.eos_token_id)
    assert torch.equal(ours.completion_mask, theirs_mask)
    assert torch.equal(ours.completion_ids, theirs.masked_fill(theirs_mask == 0, tok.pad_token_id))


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_first_token_frequencies_follow_the_softmax(testbed, policy, temperature):
    """Gumbel-max sampling draws from softmax(logits / T): frequencies of 8000 first tokens of one
    prompt against the model's probabilities, each within 5 binomial standard deviations."""
    import copy

    tok = testbed.tokenizer
    policy = copy.deepcopy(policy)
    with torch.no_grad():
        policy.model.norm.weight.mul_(12.0)  # the untrained policy is near uniform: sharpen its logits
    prompt = _prompts(testbed, 1, seed=5)[0]
    n = 8000
    roll = _rollout(testbed, policy, [prompt] * n, seed=1, temperature=temperature, max_new_tokens=1)
    counts = torch.bincount(roll.completion_ids[:, 0], minlength=len(tok)).double()
    with torch.no_grad():
        logits = policy(input_ids=torch.tensor([prompt])).logits[0, -1].double()
    probs = torch.softmax(logits / temperature, -1)[: len(tok)]
    sd = (n * probs * (1 - probs)).sqrt()
    assert ((counts - n * probs).abs() <= 5 * sd + 1e-9).all()
    assert (probs > 0.02).sum() >= 3 and probs.max() > 0.2  # peaked, not one token: the check has teeth


def test_a_rows_sample_does_not_depend_on_its_batch(testbed, policy):
    """Rows [a, b) sampled alone (row_offset=a of total_rows) equal those rows of the whole batch: the
    property that lets N processes sample what one process samples."""
    tok = testbed.tokenizer
    prompts = [p for p in _prompts(testbed, 12, seed=6) for _ in range(2)]
    whole = _rollout(testbed, policy, prompts, seed=7)
    for a, b in [(0, 8), (8, 24), (5, 6)]:
        ids, mask = pad_left(prompts, tok.pad_token_id)
        torch.manual_seed(7)
        part = sample_completions(policy, ids[a:b], mask[a:b], 12, 1.0, tok.eos_token_id, tok.pad_token_id,
                                  row_offset=a, total_rows=len(prompts))  # fmt: skip
        width = part.completion_ids.shape[1]
        assert torch.equal(part.completion_ids, whole.completion_ids[a:b, :width])
        assert not whole.completion_mask[a:b, width:].any()
    assert len({tuple(r) for r in whole.completion_ids.tolist()}) > len(prompts) // 2  # really sampled
