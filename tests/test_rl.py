"""Loop-level tests of policy optimisation: finite, learning, deterministic, identities."""

from __future__ import annotations

import copy

import pytest
import torch

from overopt.config import KLConfig, RLConfig
from overopt.methods import resolve_method
from overopt.mitigations.rewards import ProxyRewardModel
from overopt.progress import StageProgress
from overopt.stages.rl import train_policy


def _train(world, cfg: RLConfig, seed: int = 0, eval_every: int = 2, generator=None):
    """Run `cfg` from the tiny world's policy; returns (trained policy, logged train figures per eval)."""
    testbed = world["testbed"]
    policy = copy.deepcopy(world["policy"]).train()
    value_model = None
    if cfg.algo == "ppo":
        from transformers import AutoModelForTokenClassification

        value_model = AutoModelForTokenClassification.from_pretrained(world["path"], num_labels=1)
    logged: list[tuple[int, dict]] = []
    with StageProgress("test") as progress:
        train_policy(
            cfg,
            policy=policy,
            ref_policy=world["policy"],
            reward_source=ProxyRewardModel(world["reward_model"]),
            value_model=value_model,
            testbed=testbed,
            train_prompts=testbed.prompts("train", 16, 0),
            seed=seed,
            eval_every=eval_every,
            on_eval=lambda step, figures: logged.append((step, figures)),
            progress=progress,
            generator=generator,
        )
    return policy, logged


def _params(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


BASE = RLConfig(steps=4, prompts_per_step=4, group_size=2, lr=1e-3)


@pytest.mark.parametrize("algo", ["rloo", "grpo", "dr_grpo", "ppo"])
@pytest.mark.parametrize("placement", ["reward", "loss"])
def test_every_algorithm_learns_with_finite_figures(tiny_world, algo, placement):
    cfg = BASE.model_copy(update={"algo": algo, "kl": KLConfig(coef=0.05, placement=placement, estimator="k3")})
    policy, logged = _train(tiny_world, cfg)
    assert [step for step, _ in logged] == [0, 2, 4]
    for _, figures in logged[1:]:
        assert figures and all(torch.isfinite(torch.tensor(v)) for v in figures.values()), figures
        assert figures["train/grad_norm"] > 0
        if placement == "loss":
            assert "train/kl_loss" in figures
        if algo == "ppo":
            assert "train/vf_loss" in figures
    assert not torch.equal(_params(policy), _params(tiny_world["policy"])), "the policy did not change"


def test_one_update_equals_the_step_written_out(tiny_world):
    """One GRPO update with the KL in the loss, rebuilt from the ops: sample with the loop's seed, score,
    group advantages, old log-probs = the detached grad pass, reference pass, clipped surrogate + β·k3,
    clip, AdamW. Checks the loop's wiring, including the reuse of its one forward at θ as old log-probs."""
    from overopt.models.policy import completion_logprobs
    from overopt.ops import clipped_surrogate, grpo_advantages, kl_estimate, masked_mean
    from overopt.sampling import pad_left, sample_completions
    from overopt.stages.rl import PromptStream

    kl = KLConfig(coef=0.1, placement="loss", estimator="k3")
    cfg = BASE.model_copy(update={"algo": "grpo", "steps": 1, "kl": kl})
    trained, _ = _train(tiny_world, cfg, seed=5)

    testbed, tok = tiny_world["testbed"], tiny_world["testbed"].tokenizer
    policy = copy.deepcopy(tiny_world["policy"]).train()
    torch.manual_seed(5)
    prompts = PromptStream(testbed.prompts("train", 16, 0), 5).take(cfg.prompts_per_step)
    ids, mask = pad_left([p for p in prompts for _ in range(cfg.group_size)], tok.pad_token_id)
    roll = sample_completions(policy, ids, mask, testbed.max_completion_tokens, 1.0, tok.eos_token_id, tok.pad_token_id)
    with torch.no_grad():
        rewards = ProxyRewardModel(tiny_world["reward_model"])(roll).rewards
        ref, _ = completion_logprobs(tiny_world["policy"], roll.input_ids, roll.attention_mask, roll.prompt_len)
    advantages = grpo_advantages(rewards.view(-1, cfg.group_size)).flatten()
    logprobs, _ = completion_logprobs(policy, roll.input_ids, roll.attention_mask, roll.prompt_len)
    cmask = roll.completion_mask
    pg = clipped_surrogate(logprobs, logprobs.detach(), advantages, cmask, clip_eps=cfg.clip_eps,
                           aggregation=cfg.token_aggregation,
                           norm_const=float(testbed.max_completion_tokens))  # fmt: skip
    loss = pg.loss + 0.1 * masked_mean(kl_estimate(logprobs, ref, "k3"), cmask)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=0.0)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(list(policy.parameters()), cfg.max_grad_norm)
    optimizer.step()
    assert not torch.equal(_params(policy), _params(tiny_world["policy"]))
    torch.testing.assert_close(_params(trained), _params(policy), rtol=0, atol=1e-7)


def test_sampler_correction_with_the_policys_own_sampler_changes_nothing_but_rounding(tiny_world):
    """The policy's own sampler reads its log-probs off the logits it drew with: π_old/μ is 1 to float rounding,
    so every mode's weights are 1 and the update is the uncorrected one."""
    plain, _ = _train(tiny_world, BASE)
    for mode in ("token_truncate", "sequence_mask"):
        corrected, logged = _train(tiny_world, BASE.model_copy(update={"sampler_correction": mode}))
        torch.testing.assert_close(_params(corrected), _params(plain), rtol=0, atol=1e-6)
        figures = logged[-1][1]
        assert figures["sampler/logp_diff_max"] < 1e-5 and figures["sampler/masked_frac"] == 0
        assert figures["sampler/weight_mean"] == pytest.approx(1.0, abs=1e-5)


def test_another_samplers_tokens_are_reweighted_by_its_mismatch(tiny_world):
    """A sampler whose reported log-probs are off by δ_b = 0.3·b on row b (token_truncate, C_max 3): one
    update equals the GRPO step written out with the per-token weights min(exp(δ_b), 3), and not the unweighted
    one. Checks the wiring: the generator's log-probs, the op, the surrogate's weights."""
    from overopt.models.policy import completion_logprobs
    from overopt.ops import clipped_surrogate, grpo_advantages, sampler_importance_weights
    from overopt.sampling import SampledLogprobs, pad_left, sample_completions
    from overopt.stages.rl import PromptStream

    calls = []

    def off_by_delta(*args, with_logprobs=False, **kwargs):
        calls.append(with_logprobs)
        rollout, sampled = sample_completions(*args, with_logprobs=True, **kwargs)
        delta = 0.3 * torch.arange(len(sampled.logprobs)).unsqueeze(1) * rollout.completion_mask
        return rollout, SampledLogprobs(sampled.logprobs - delta, sampled.entropy)

    cfg = BASE.model_copy(update={"algo": "grpo", "steps": 1, "sampler_correction": "token_truncate"})
    trained, logged = _train(tiny_world, cfg, seed=5, generator=off_by_delta)
    assert calls == [True] and logged[-1][1]["sampler/logp_diff_max"] == pytest.approx(0.3 * 7, abs=1e-5)

    testbed, tok = tiny_world["testbed"], tiny_world["testbed"].tokenizer
    steps = {}
    for weighted in (True, False):
        policy = copy.deepcopy(tiny_world["policy"]).train()
        torch.manual_seed(5)
        prompts = PromptStream(testbed.prompts("train", 16, 0), 5).take(cfg.prompts_per_step)
        ids, mask = pad_left([p for p in prompts for _ in range(cfg.group_size)], tok.pad_token_id)
        roll, sampled = off_by_delta(policy, ids, mask, testbed.max_completion_tokens, 1.0, tok.eos_token_id,
                                     tok.pad_token_id, with_logprobs=True)  # fmt: skip
        with torch.no_grad():
            rewards = ProxyRewardModel(tiny_world["reward_model"])(roll).rewards
        advantages = grpo_advantages(rewards.view(-1, cfg.group_size)).flatten()
        logprobs, _ = completion_logprobs(policy, roll.input_ids, roll.attention_mask, roll.prompt_len)
        cmask = roll.completion_mask
        weights = sampler_importance_weights(logprobs.detach(), sampled.logprobs, cmask, "token_truncate").weights
        expected = torch.exp(0.3 * torch.arange(len(cmask))).clamp(max=3.0).unsqueeze(1) * cmask
        torch.testing.assert_close(weights, expected, rtol=0, atol=1e-5)
        pg = clipped_surrogate(logprobs, logprobs.detach(), advantages, cmask, clip_eps=cfg.clip_eps,
                               aggregation=cfg.token_aggregation, norm_const=float(testbed.max_completion_tokens),
                               weights=weights if weighted else None)  # fmt: skip
        optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=0.0)
        pg.loss.backward()
        torch.nn.utils.clip_grad_norm_(list(policy.parameters()), cfg.max_grad_norm)
        optimizer.step()
        steps[weighted] = _params(policy)
    torch.testing.assert_close(_params(trained), steps[True], rtol=0, atol=1e-7)
    assert (_params(trained) - steps[False]).abs().max() > 1e-5


def test_same_seed_same_run_and_other_seed_differs(tiny_world):
    a, logged_a = _train(tiny_world, BASE, seed=3)
    b, logged_b = _train(tiny_world, BASE, seed=3)
    c, _ = _train(tiny_world, BASE, seed=4)
    assert torch.equal(_params(a), _params(b))
    drop_timing = lambda logged: [(step, {k: v for k, v in f.items() if "wall" not in k}) for step, f in logged]  # noqa: E731
    assert drop_timing(logged_a) == drop_timing(logged_b)
    assert not torch.equal(_params(a), _params(c))


def test_evaluation_schedule_does_not_change_training(tiny_world):
    """Evaluation draws from its own RNG stream, so how often we evaluate cannot change the policy."""
    a, _ = _train(tiny_world, BASE, eval_every=1)
    b, _ = _train(tiny_world, BASE, eval_every=100)
    assert torch.equal(_params(a), _params(b))


def test_method_none_equals_kl_with_zero_coefficient(tiny_world):
    with_kl = BASE.model_copy(update={"kl": KLConfig(coef=0.3)})
    none = resolve_method("none", with_kl).rl
    zero = with_kl.model_copy(update={"kl": KLConfig(coef=0.0)})
    assert none.kl.coef == 0
    a, _ = _train(tiny_world, none)
    b, _ = _train(tiny_world, zero)
    assert torch.equal(_params(a), _params(b))


def test_kl_coefficient_changes_the_update(tiny_world):
    a, _ = _train(tiny_world, BASE.model_copy(update={"kl": KLConfig(coef=0.0)}))
    b, _ = _train(tiny_world, BASE.model_copy(update={"kl": KLConfig(coef=1.0)}))
    assert not torch.equal(_params(a), _params(b))


def test_adaptive_kl_follows_the_controller(tiny_world):
    """KL far below target: every update scales β by (1 − 0.2 · n / horizon) (Ziegler et al.)."""
    cfg = BASE.model_copy(update={"kl": KLConfig(coef=0.1, adaptive=True, target=1e6, horizon=10.0)})
    _, logged = _train(tiny_world, cfg, eval_every=1)
    n_rows = BASE.prompts_per_step * BASE.group_size
    coefs = [figures["kl/coef"] for _, figures in logged[1:]]
    expected = [0.1 * (1 - 0.2 * n_rows / 10.0) ** k for k in range(len(coefs))]
    assert coefs == pytest.approx(expected, rel=1e-12)


def test_unknown_method_and_kl_without_coefficient_are_refused():
    with pytest.raises(ValueError, match="unknown method 'bogus'"):
        resolve_method("bogus", BASE)
    with pytest.raises(ValueError, match="rl.kl.coef > 0"):
        resolve_method("kl", BASE.model_copy(update={"kl": KLConfig(coef=0.0)}))
