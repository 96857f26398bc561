"""Tests for overopt.stages.pairs.label_pairs: gold preference labels (argmax / Bradley-Terry, noise)."""

from __future__ import annotations

import math

import pytest
import torch

from overopt.stages import pairs as pairs_module
from overopt.stages.pairs import label_pairs

# Statistical checks accept |empirical - expected| <= Z_TOL standard errors: for a correct
# implementation a 4-sigma miss has probability ~6e-5 per check (and the seeds are fixed anyway).
Z_TOL = 4.0


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _label(gold_a, gold_b, labeling="argmax", bt_temperature=1.0, label_noise=0.0, seed=0):
    return label_pairs(
        torch.as_tensor(gold_a, dtype=torch.float64),
        torch.as_tensor(gold_b, dtype=torch.float64),
        labeling=labeling,
        bt_temperature=bt_temperature,
        label_noise=label_noise,
        generator=_gen(seed),
    )


def test_argmax_is_exact_and_ties_go_to_b():
    gen = _gen(1)
    gold_a = torch.randn(500, generator=gen, dtype=torch.float64)
    gold_b = torch.randn(500, generator=gen, dtype=torch.float64)
    gold_b[:50] = gold_a[:50]  # exact ties
    gold_b[50:60] = gold_a[50:60] + 1e-12  # tiny gaps still decide
    gold_b[60:70] = gold_a[60:70] - 1e-12
    got = _label(gold_a, gold_b).tolist()
    expected = [a > b for a, b in zip(gold_a.tolist(), gold_b.tolist())]
    assert got == expected
    # Ties: `a` is *not* chosen (a_wins False: b becomes chosen, a rejected), ...
    assert got[:50] == [False] * 50
    assert got[50:60] == [False] * 10 and got[60:70] == [True] * 10
    # ... which is what the docstring promises ("a wins iff r*(a) > r*(b)").
    assert "a wins iff r*(a) > r*(b)" in label_pairs.__doc__


def test_argmax_without_noise_is_deterministic_and_ignores_the_generator():
    gen = _gen(2)
    gold_a = torch.randn(200, generator=gen, dtype=torch.float64)
    gold_b = torch.randn(200, generator=gen, dtype=torch.float64)
    results = [_label(gold_a, gold_b, seed=s) for s in range(5)]
    assert all(torch.equal(r, results[0]) for r in results)
    assert results[0].dtype == torch.bool and results[0].shape == (200,)


def _win_rate_check(wins: torch.Tensor, p: float) -> None:
    n = wins.numel()
    se = math.sqrt(p * (1 - p) / n)
    rate = wins.double().mean().item()
    assert abs(rate - p) <= Z_TOL * se, f"win rate {rate:.4f} vs expected {p:.4f} (±{Z_TOL}·{se:.4f})"


@pytest.mark.parametrize("temperature", [1.0, 0.25])
def test_bradley_terry_win_rate_matches_sigmoid(temperature):
    n = 20_000
    for gap in (-1.5, -0.2, 0.0, 0.3, 1.0):
        gold_b = torch.linspace(-1, 1, n, dtype=torch.float64)  # varying levels, fixed gap
        wins = _label(gold_b + gap, gold_b, labeling="bradley_terry", bt_temperature=temperature, seed=10)
        expected = 1.0 / (1.0 + math.exp(-gap / temperature))
        _win_rate_check(wins, expected)


def test_bradley_terry_is_reproducible_from_the_generator_and_random_across_seeds():
    gold_a = torch.zeros(1000, dtype=torch.float64)
    gold_b = torch.zeros(1000, dtype=torch.float64)
    a = _label(gold_a, gold_b, labeling="bradley_terry", seed=3)
    b = _label(gold_a, gold_b, labeling="bradley_terry", seed=3)
    c = _label(gold_a, gold_b, labeling="bradley_terry", seed=4)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_bradley_terry_large_gaps_are_near_certain():
    # σ(±40) is 1 - 4e-18 / 4e-18: no draw out of 1000 may disagree with the sign of the gap.
    gold_a = torch.tensor([40.0, -40.0] * 500, dtype=torch.float64)
    wins = _label(gold_a, torch.zeros_like(gold_a), labeling="bradley_terry", seed=5)
    assert wins.tolist() == [True, False] * 500


@pytest.mark.parametrize("labeling", ["argmax", "bradley_terry"])
def test_label_noise_flips_about_that_fraction(labeling):
    n, noise = 40_000, 0.25
    gen = _gen(6)
    # Large gaps make the clean labels certain under both schemes, so flips are all that varies.
    gold_a = 50.0 * torch.sign(torch.randn(n, generator=gen, dtype=torch.float64))
    gold_b = torch.zeros(n, dtype=torch.float64)
    clean = gold_a > gold_b
    noisy = _label(gold_a, gold_b, labeling=labeling, label_noise=noise, seed=7)
    _win_rate_check(noisy != clean, noise)


def test_bradley_terry_with_noise_mixes_the_probabilities():
    # P(a chosen) = p(1 - ε) + (1 - p)ε with p = σ(gap / T).
    n, noise, gap = 40_000, 0.1, 0.8
    gold_b = torch.zeros(n, dtype=torch.float64)
    wins = _label(gold_b + gap, gold_b, labeling="bradley_terry", label_noise=noise, seed=8)
    p = 1.0 / (1.0 + math.exp(-gap))
    _win_rate_check(wins, p * (1 - noise) + (1 - p) * noise)


def test_no_noise_means_no_flips_and_full_noise_flips_all():
    gen = _gen(9)
    gold_a = torch.randn(300, generator=gen, dtype=torch.float64)
    gold_b = torch.randn(300, generator=gen, dtype=torch.float64)
    clean = gold_a > gold_b
    assert torch.equal(_label(gold_a, gold_b, label_noise=0.0), clean)
    assert torch.equal(_label(gold_a, gold_b, label_noise=1.0), ~clean)


def test_unknown_labeling_raises_naming_the_field():
    with pytest.raises(ValueError, match=r"pairs\.labeling.*'argmax' or 'bradley_terry'.*'plackett'"):
        _label([1.0], [0.0], labeling="plackett")


# -- sample_and_label_pairs: the plumbing around label_pairs ------------------------------------
class _NoProgress:
    def start(self, total):
        self.total, self.done = total, 0

    def advance(self, n=1, **figures):
        self.done += n


@pytest.mark.parametrize("drop_ties", [True, False])
def test_sample_and_label_pairs_argmax_keeps_gold_order(one_thread, drop_ties):
    from overopt.models.policy import tiny_llama
    from overopt.sampling import pad_left, pad_right
    from overopt.testbeds.summarize import SummarizeTestbed

    testbed = SummarizeTestbed()
    tok = testbed.tokenizer
    policy = tiny_llama(tok, hidden_size=16, num_layers=1, num_heads=2, max_positions=64, seed=0)
    prompts = testbed.prompts("train", 24, seed=0)
    progress = _NoProgress()
    torch.manual_seed(0)
    data, stats = pairs_module.sample_and_label_pairs(
        policy,
        testbed,
        prompts,
        labeling="argmax",
        bt_temperature=1.0,
        label_noise=0.0,
        drop_ties=drop_ties,
        seed=0,
        batch_size=10,
        progress=progress,
    )
    assert progress.done == progress.total == len(prompts)
    assert stats["n_pairs"] == len(data)
    assert len(data) == (len(prompts) - stats["n_ties"] if drop_ties else len(prompts))
    # The stored gold values are those of the stored completions (recomputed here in one batch).
    p_ids, _ = pad_left(data["prompt_ids"], tok.pad_token_id)
    for side in ("chosen", "rejected"):
        ids, mask = pad_right(data[f"{side}_ids"], tok.pad_token_id)
        recomputed = testbed.gold_reward(p_ids, ids, mask)
        torch.testing.assert_close(
            recomputed, torch.tensor(data[f"gold_{side}"], dtype=torch.float64), rtol=0, atol=1e-12
        )
        # Each stored completion is a real one: it ends at its first EOS, or runs to the budget.
        for c in data[f"{side}_ids"]:
            assert tok.eos_token_id not in c[:-1]
            assert c[-1] == tok.eos_token_id or len(c) == testbed.max_completion_tokens
    margin = torch.tensor(data["gold_chosen"]) - torch.tensor(data["gold_rejected"])
    assert (margin > 0).all() if drop_ties else (margin >= 0).all()
    assert stats["label_agrees_with_gold"] == pytest.approx((margin > 0).double().mean().item(), abs=1e-12)
    assert stats["gold_margin_mean"] == pytest.approx(margin.mean().item(), abs=1e-12)
