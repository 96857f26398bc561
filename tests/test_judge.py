"""The `judge` testbed's proxy: labelled SFT answers and a BCE-trained judge."""

from __future__ import annotations

import torch
from datasets import Dataset

from overopt.models.reward import reward_model_from_backbone
from overopt.progress import StageProgress
from overopt.stages.judge import judge_accuracy, judge_logits, sample_and_label_answers, train_judge


def test_judge_learns_a_token_rule_with_bce(tiny_world):
    """Labels = 'the answer contains token 5': a judge trained with BCE must learn it (and its logit sign)."""
    g = torch.Generator().manual_seed(0)
    rows = {"prompt_ids": [], "completion_ids": [], "label": []}
    for _ in range(256):
        completion = torch.randint(6, 20, (4,), generator=g).tolist()
        label = float(torch.rand((), generator=g) < 0.5)
        if label:
            completion[int(torch.randint(0, 4, (), generator=g))] = 5
        rows["prompt_ids"].append([1, 7, 8])
        rows["completion_ids"].append([*completion, 2])
        rows["label"].append(label)
    data = Dataset.from_dict(rows).train_test_split(test_size=0.25, seed=0)
    judge = reward_model_from_backbone(tiny_world["path"], seed=0)
    before = judge_accuracy(judge, data["test"], pad_id=0, batch_size=64)
    with StageProgress("judge") as progress:
        metrics = train_judge(
            judge, data["train"], data["test"], epochs=30, batch_size=32, lr=3e-3, pad_id=0, seed=0, progress=progress
        )
    assert metrics["heldout_accuracy"] > 0.9 > before + 0.2
    # judge_accuracy agrees with the logits read by hand.
    logits = judge_logits(judge, data["test"][:], pad_id=0)
    by_hand = ((logits > 0) == torch.tensor(data["test"]["label"]).bool()).double().mean().item()
    assert abs(by_hand - metrics["heldout_accuracy"]) < 1e-12


def test_answers_are_labelled_by_the_gold_reward():
    from overopt.models.policy import tiny_llama
    from overopt.testbeds.arithmetic import JudgeTestbed

    testbed = JudgeTestbed()
    policy = tiny_llama(testbed.tokenizer, 16, 1, 2, max_positions=64, seed=0).eval()
    prompts = testbed.prompts("train", 12, seed=0)
    # An untrained policy is (almost) never right: label through a stub gold that alternates.
    calls = []

    class Stub:
        def __getattr__(self, name):
            return getattr(testbed, name)

        def gold_reward(self, prompt_ids, completion_ids, completion_mask):
            calls.append(len(prompt_ids))
            return torch.arange(len(prompt_ids), dtype=torch.float64) % 2

    with StageProgress("answers") as progress:
        data, stats = sample_and_label_answers(policy, Stub(), prompts, batch_size=5, progress=progress)
    assert calls == [5, 5, 2] and len(data) == 12
    assert data["label"] == [float(i % 2) for i in (0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1)]
    assert stats["right_fraction"] == 5 / 12
    assert all(ids[-1] == testbed.tokenizer.eos_token_id or len(ids) == testbed.max_completion_tokens
               for ids in data["completion_ids"])  # fmt: skip
