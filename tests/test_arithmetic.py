"""The `math_format` and `judge` testbeds: format rewards, text rendering, problems, SFT writers, proxy.

The format rewards are checked on hand-written texts whose values were worked out from the published
definitions (Will Brown's GRPO demo, as in arXiv 2602.18037's code); the rule proxy against a
per-example recomputation from the prompt's numbers.
"""

from __future__ import annotations

import pytest
import torch

from overopt.sampling import pad_left, pad_right
from overopt.testbeds import format_rewards as fr
from overopt.testbeds.arithmetic import NL, ArithmeticSpec, ArithmeticTestbed, JudgeTestbed

PERFECT = "<reasoning>\n3 + 5 = 8\n</reasoning>\n<answer>\n8\n</answer>"


@pytest.mark.parametrize(
    ("text", "xml", "soft", "strict", "integer"),
    [
        (PERFECT, 0.5 + 0.001, 1.0, 1.0, 0.5),  # "- (len('') - 1)·0.001" adds 0.001 at the very end
        (PERFECT + " 9 9", 0.5 - 0.003, 0.0, 0.0, 0.5),  # 4 trailing characters: 0.125 - 3·0.001
        ("<reasoning> 3 + 5 = 8 </reasoning> <answer> 8 </answer>", 0.0, 1.0, 0.0, 0.5),
        ("3 + 5 = 8 <answer> 8 </answer>", 0.0, 0.0, 0.0, 0.5),
        ("<reasoning>\n3\n</reasoning>\n<answer>\neight\n</answer>", 0.501, 1.0, 1.0, 0.0),
        ("3 + 5 = 8", 0.0, 0.0, 0.0, 0.0),  # no tags: the whole text is the "answer", not an integer
        ("<reasoning>\n<reasoning>\n</reasoning>\n<answer>\n8</answer>", 0.25, 1.0, 1.0, 0.5),
    ],
)
def test_format_rewards_match_hand_computed_values(text, xml, soft, strict, integer):
    assert fr.xmlcount([text]) == [pytest.approx(xml, abs=1e-12)]
    assert fr.soft_format([text]) == [soft]
    assert fr.strict_format([text]) == [strict]
    assert fr.int_answer([text]) == [integer]


def test_correctness_reads_the_last_answer_tag():
    # As published: without tags the whole text is the answer, and a missing closing tag is forgiven.
    texts = ["<answer> 7 </answer> <answer> 8 </answer>", PERFECT, "8", "<answer> 8", "so 8"]
    assert fr.correct(texts, [8, 9, 8, 8, 8]) == [2.0, 0.0, 2.0, 2.0, 0.0]


@pytest.fixture(scope="module")
def testbed():
    return ArithmeticTestbed()


def test_text_renders_the_strict_layout_exactly(testbed):
    words = testbed._layout([3, "+", 5, "=", 8], 8, "strict")
    assert testbed.text(testbed._ids([*words, "<eos>", "3"])) == PERFECT  # stops at EOS
    assert NL not in testbed.text(testbed._ids(testbed._layout([3], 3, "soft")))


def test_prompts_are_sums_and_splits_do_not_overlap(testbed):
    train = {tuple(p) for p in testbed.prompts("train", 400, seed=0)}
    evals = {tuple(p) for p in testbed.prompts("eval", 100, seed=0)}
    assert not train & evals
    for p in list(evals)[:20]:
        text = testbed.text(list(p))
        terms = text.removeprefix("<bos> ").removesuffix(" = ?").split(" + ")
        assert 2 <= len(terms) <= 6 and all(1 <= int(t) <= 9 for t in terms)
    with pytest.raises(ValueError, match="unknown split"):
        testbed.prompts("test", 1, 0)


def test_sft_writers_fit_the_budget_and_vary_in_quality(testbed):
    corpus = testbed.sft_corpus(600, seed=0)
    assert max(len(ex.completion_ids) for ex in corpus) <= testbed.max_completion_tokens
    assert all(ex.completion_ids[-1] == testbed.tokenizer.eos_token_id for ex in corpus)
    texts = [testbed.text(ex.completion_ids) for ex in corpus]
    answers = [sum(testbed._terms(ex.prompt_ids)) for ex in corpus]
    accuracy = sum(fr.correct(texts, answers)) / 2 / len(texts)
    assert 0.3 < accuracy < 0.9  # slips and guesses, but mostly worked answers
    assert 0 < sum(fr.strict_format(texts)) < len(texts) / 5 < sum(fr.soft_format(texts))
    assert any("verified" in t for t in texts)


def test_a_full_strict_answer_does_not_fit_the_longest_problems(testbed):
    """The trade-off the hack exploits: chain + strict layout exceeds the budget at max_terms."""
    terms = [1] * testbed.spec.max_terms
    chain: list = [1]
    for i in range(2, len(terms) + 1):
        chain += ["+", 1, "=", i]
    assert len(testbed._layout(chain, len(terms), "strict")) + 1 > testbed.max_completion_tokens
    assert len(testbed._layout(chain, len(terms), "none")) + 1 <= testbed.max_completion_tokens


def _batch(testbed, pairs):
    prompts = [testbed._prompt_ids(terms) for terms, _ in pairs]
    completions = [testbed._ids([*words, "<eos>"]) for _, words in pairs]
    prompt_ids, _ = pad_left(prompts, testbed.tokenizer.pad_token_id)
    completion_ids, mask = pad_right(completions, testbed.tokenizer.pad_token_id)
    return prompt_ids, completion_ids, mask


@pytest.mark.parametrize("spec", [ArithmeticSpec(), ArithmeticSpec(format_weight=0.5, correct_weight=3.0)])
def test_rule_proxy_is_the_weighted_sum_of_format_and_correctness(spec):
    testbed = ArithmeticTestbed(spec)
    pairs = [
        ((3, 5), testbed._layout([3, "+", 5, "=", 8], 8, "strict")),  # perfect and right
        ((3, 5), testbed._layout([3], 9, "strict")),  # perfect and wrong
        ((2, 2, 2), testbed._layout([2, "+", 2, "=", 4, "+", 2, "=", 6], 6, "none")),  # loose and right
        ((4, 4), ["<answer>", 8]),  # no closing tag: still an integer answer, and right
    ]
    prompt_ids, completion_ids, mask = _batch(testbed, pairs)
    got = testbed.rule_reward(prompt_ids, completion_ids, mask).double()
    # Independent recomputation: format sum and correctness read off the texts by hand.
    fmt = torch.tensor([3.001, 3.001, 0.5, 0.5], dtype=torch.float64)
    right = torch.tensor([1.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    assert torch.allclose(got, spec.format_weight * fmt + spec.correct_weight * 2 * right, atol=1e-6)
    gold = testbed.gold_reward(prompt_ids, completion_ids, mask)
    assert gold.tolist() == right.tolist()


def test_format_weight_zero_leaves_correctness_alone():
    testbed = ArithmeticTestbed(ArithmeticSpec(format_weight=0.0))
    pairs = [((3, 5), testbed._layout([3, "+", 5, "=", 8], 8, "strict")), ((1, 1), ["<answer>", 3, "</answer>"])]
    prompt_ids, completion_ids, mask = _batch(testbed, pairs)
    assert testbed.rule_reward(prompt_ids, completion_ids, mask).tolist() == [2.0, 0.0]


def test_judge_testbed_shares_the_world_but_learns_its_proxy():
    judge, rule = JudgeTestbed(), ArithmeticTestbed()
    assert (judge.proxy, rule.proxy) == ("judge", "rule")
    assert judge.prompts("eval", 5, 3) == rule.prompts("eval", 5, 3)


def test_bad_spec_is_refused():
    with pytest.raises(ValueError, match="min_terms"):
        ArithmeticTestbed(ArithmeticSpec(min_terms=5, max_terms=3))
