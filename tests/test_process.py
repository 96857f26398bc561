"""The `process` testbed (a PRM on the arithmetic world) and the aggregation of its step rewards."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from overopt.cli import main
from overopt.config import return_form
from overopt.mitigations.rewards import ProcessRewardModel
from overopt.models.policy import tiny_llama
from overopt.models.reward import reward_forward, reward_model_from_backbone
from overopt.ops import aggregate, softmin_weighted
from overopt.sampling import rollout_from_tokens
from overopt.stages.prm import prm_step_logits
from overopt.testbeds.process import ProcessSpec, ProcessTestbed


@pytest.fixture(scope="module")
def testbed():
    return ProcessTestbed(ProcessSpec(min_terms=3, max_terms=3, max_completion_tokens=16))


def _completion(testbed, words):
    return testbed._ids(words)


@pytest.mark.parametrize(
    ("words", "positions", "labels", "final"),
    [
        # right chain, right answer: two steps and the final one
        ([3, "+", 5, "=", 8, "+", 7, "=", 15, "<answer>", 15, "<eos>"], [4, 8, 11], [1, 1, 1], True),
        # a re-check of a right sum is a right step
        ([3, "+", 5, "=", 8, "=", 8, "+", 7, "=", 15, "<answer>", 15, "<eos>"], [4, 6, 10, 13], [1, 1, 1, 1], True),
        # a slip: that step is wrong, the next one adds right to it, the answer is wrong
        ([3, "+", 5, "=", 9, "+", 7, "=", 16, "<answer>", 16, "<eos>"], [4, 8, 11], [0, 1, 0], True),
        # a miscopied term: that step is wrong, the next adds the right term to it, the answer is wrong
        ([3, "+", 6, "=", 9, "+", 7, "=", 16, "<answer>", 16, "<eos>"], [4, 8, 11], [0, 1, 0], True),
        # a wrong first number, and a term too many
        (
            [4, "+", 5, "=", 9, "+", 7, "=", 16, "+", 1, "=", 17, "<answer>", 17, "<eos>"],
            [4, 8, 12, 15],
            [0, 1, 0, 0],
            True,
        ),
        # a wrong re-check, and a right answer that is not the last sum
        ([3, "+", 5, "=", 8, "=", 9, "+", 7, "=", 16, "<answer>", 15, "<eos>"], [4, 6, 10, 13], [1, 0, 1, 1], True),
        # out of budget before answering: no final step
        ([3, "+", 5, "=", 8, "=", 8, "=", 8, "=", 8], [4, 6, 8, 10], [1, 1, 1, 1], False),
        # an answer without a chain: only the final step, with no sum to be
        (["<answer>", 15, "<eos>"], [2], [1], True),
    ],
)
def test_steps_and_their_gold_labels(testbed, words, positions, labels, final):
    prompt = testbed._prompt_ids((3, 5, 7))
    steps = testbed.steps(prompt, _completion(testbed, words))
    assert steps.positions == positions and steps.labels == [float(x) for x in labels] and steps.final is final


def test_gold_is_the_answer_and_components_count_steps(testbed):
    prompt = testbed._prompt_ids((3, 5, 7))
    rows = [
        [3, "+", 5, "=", 8, "+", 7, "=", 15, "<answer>", 15, "<eos>"],
        [3, "+", 5, "=", 8, "=", 8, "=", 8, "=", 8],
        [3, "+", 5, "=", 9, "+", 7, "=", 16, "<answer>", 16, "<eos>"],
    ]
    r = rollout_from_tokens([prompt] * 3, [_completion(testbed, w) for w in rows], testbed.tokenizer.pad_token_id)
    c = testbed.gold_components(r.prompt_ids, r.completion_ids, r.completion_mask)
    assert c["correct"].tolist() == [1.0, 0.0, 0.0] and c["answered"].tolist() == [1.0, 0.0, 1.0]
    assert c["steps"].tolist() == [2.0, 4.0, 2.0] and c["right_steps"].tolist() == [1.0, 1.0, 0.5]
    assert torch.equal(testbed.gold_reward(r.prompt_ids, r.completion_ids, r.completion_mask), c["correct"])


def test_sft_writers_recheck_and_some_never_answer():
    testbed = ProcessTestbed(ProcessSpec(min_terms=3, max_terms=3, max_completion_tokens=16, p_recheck=0.15,
                                         p_overcheck=0.05))  # fmt: skip
    corpus = testbed.sft_corpus(400, 0)
    recheck = sum(any(a == b == testbed._ids(["="])[0] for a, b in zip(e.completion_ids, e.completion_ids[2:]))
                  for e in corpus)  # fmt: skip
    unfinished = sum(testbed.tokenizer.eos_token_id not in e.completion_ids for e in corpus)
    assert recheck > 20 and 0 < unfinished < 60
    assert all(len(e.completion_ids) <= testbed.max_completion_tokens for e in corpus)


@pytest.mark.parametrize("name", ["sum", "discounted_sum", "min", "max", "mean", "sharpe", "pure_min"])
def test_prm_reward_is_the_aggregate_of_each_steps_prefix_score(testbed, tmp_path, name):
    """The reward source's return is ops.aggregate of 2σ(head) − 1 read at each step end, each step scored here
    independently by running the RM on that step's prefix alone (causal: the same hidden state), plus a −1
    final step for the unfinished completion at its last token; PURE's min is the sum of the softmin-weighted
    step rewards."""
    policy = tiny_llama(testbed.tokenizer, hidden_size=16, num_layers=1, num_heads=2, max_positions=40, seed=0)
    policy.save_pretrained(tmp_path)
    prm = reward_model_from_backbone(tmp_path, seed=0).eval()
    prompt = testbed._prompt_ids((3, 5, 7))
    rows = [
        [3, "+", 5, "=", 8, "+", 7, "=", 15, "<answer>", 15, "<eos>"],
        [3, "+", 5, "=", 8, "=", 8, "=", 8, "=", 8],
        ["<answer>", 15, "<eos>"],
    ]
    completions = [_completion(testbed, w) for w in rows]
    rollout = rollout_from_tokens([prompt] * 3, completions, testbed.tokenizer.pad_token_id)
    gamma = 0.8 if name == "discounted_sum" else 1.0
    temperature = 0.1 if name == "pure_min" else 0.0
    scored = ProcessRewardModel(prm, testbed, return_form(name.replace("pure_", ""), gamma, temperature))(rollout)
    got = scored.rewards
    assert scored.steps.tokens[1, : int(scored.steps.mask[1].sum())].tolist() == [4, 6, 8, 10, 10]
    for b, completion in enumerate(completions):
        steps = testbed.steps(prompt, completion)
        with torch.no_grad():
            scores = [2 * torch.sigmoid(reward_forward(prm, torch.tensor([prompt + completion[: p + 1]]),
                                                       torch.ones(1, len(prompt) + p + 1, dtype=torch.long)).rewards)[0]
                      - 1 for p in steps.positions]  # fmt: skip
        if not steps.final:
            scores.append(torch.tensor(-1.0))
        values = torch.stack(scores).double().unsqueeze(0)
        if name == "pure_min":
            values = softmin_weighted(values, torch.ones_like(values), 0.1)
        form = {"discounted_sum": "sum", "pure_min": "sum"}.get(name, name)
        want = aggregate(values, torch.ones_like(values), form, gamma)
        assert got[b].item() == pytest.approx(want.item(), rel=1e-5, abs=1e-6)
    out = prm_step_logits(prm, [prompt] * 3, completions, [testbed.steps(prompt, c).positions for c in completions], 0)
    assert out.mask.sum(1).tolist() == [3, 4, 1] and out.hidden.shape[:2] == out.logits.shape


@pytest.mark.slow
def test_smoke_runs_with_min_aggregation_and_aggregation_needs_a_prm(tmp_path, capsys):
    """The acceptance command: the process pipeline end to end with the min-form return."""
    out = tmp_path / "out"
    main(["run", "--testbed", "process", "--preset", "smoke", "--methods", "none", "--rl.aggregation", "min",
          "--seeds", "1", "--threads", "1", "--out", str(out)])  # fmt: skip
    rows = [json.loads(line) for line in (out / "runs/none/seed0/metrics.jsonl").read_text().splitlines()]
    assert rows[0]["step"] == 0 and rows[-1]["step"] == 6
    assert all(k in rows[-1] for k in ("gold_reward", "proxy_reward", "gold/steps", "gold/answered"))
    stage = json.loads((out / "artifacts/rm/stage.json").read_text())
    assert 0.5 < stage["metrics"]["heldout_step_accuracy"] <= 1.0
    with pytest.raises(SystemExit):
        main(["run", "--preset", "smoke", "--methods", "none", "--rl.aggregation", "min", "--out", str(tmp_path / "x")])
    assert "rl.aggregation: testbed 'summarize' scores whole completions" in capsys.readouterr().err
    # PPO: per-token λ-returns of the mean's (s, n) state; a per-token KL in a return that is no sum is refused.
    ppo = tmp_path / "ppo"
    shutil.copytree(out / "artifacts", ppo / "artifacts")  # the same SFT policy and PRM
    main(["run", "--testbed", "process", "--preset", "smoke", "--methods", "none", "--rl.aggregation", "mean",
          "--rl.algo", "ppo", "--rl.kl.placement", "loss", "--rl.steps", "3", "--seeds", "1", "--threads", "1",
          "--out", str(ppo)])  # fmt: skip
    rows = [json.loads(line) for line in (ppo / "runs/none/seed0/metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 3 and all(map(math.isfinite, (rows[-1]["gold_reward"], rows[-1]["proxy_reward"])))
    with pytest.raises(SystemExit):
        main(["run", "--testbed", "process", "--preset", "smoke", "--methods", "kl", "--rl.aggregation", "max",
              "--rl.algo", "ppo", "--out", str(tmp_path / "y")])  # fmt: skip
    assert "a max return of step rewards cannot take them (only a sum can)" in capsys.readouterr().err
    # The mitigations on a PRM: an ensemble of PRMs (each member aggregated), PAR on the return, χ², GR, KL.
    mixed = tmp_path / "mixed"
    shutil.copytree(out / "artifacts", mixed / "artifacts")
    main(["run", "--testbed", "process", "--preset", "smoke", "--methods", "ensemble_mean,par,chi2,gr+kl",
          "--rl.aggregation", "mean", "--ensemble.k", "2", "--rl.steps", "2", "--seeds", "1", "--threads", "1",
          "--out", str(mixed)])  # fmt: skip
    for method in ("ensemble_mean", "par", "chi2", "gr+kl"):
        last = json.loads((mixed / f"runs/{method}/seed0/metrics.jsonl").read_text().splitlines()[-1])
        assert last["step"] == 2 and math.isfinite(last["gold_reward"]) and math.isfinite(last["proxy_reward"])
    with pytest.raises(SystemExit):
        main(["run", "--testbed", "process", "--preset", "smoke", "--methods", "signcert", "--out",
              str(tmp_path / "z")])  # fmt: skip
    assert "signcert reads one linear head on the whole completion" in capsys.readouterr().err
