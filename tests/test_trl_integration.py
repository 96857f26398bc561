"""overopt.integrations.trl through TRL's own trainers, on tiny local models: each adapter against the lab's
own computation on the same batch (GR, χ², SignCert-PO, the reward functions, the monitor), the identities
(γ = 0 is TRL's own step; uniform OCRM weights are TRL's RewardTrainer), and the example end to end."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from transformers import TrainerCallback

pytest.importorskip("trl")

from trl import GRPOConfig, GRPOTrainer, RewardConfig, RewardTrainer, RLOOConfig, RLOOTrainer  # noqa: E402
from trl.trainer.callbacks import SyncRefModelCallback  # noqa: E402

from overopt.config import AlarmConfig, Chi2Config, GRConfig, OCRMConfig, PARConfig, RefResetConfig, SignCertConfig  # noqa: E402
from overopt.integrations.trl import (  # noqa: E402
    AlarmCallback,
    Chi2Mixin,
    GoldRewardCallback,
    GradientRegularizationMixin,
    SignCertMixin,
    WeightedRewardTrainer,
    ensemble_reward,
    ocrm_loop,
    par_reward,
    proxy_reward,
    ref_reset_args,
    with_mitigations,
)
from overopt.integrations.trl.monitor import lab_gold  # noqa: E402
from overopt.integrations.trl.ocrm import reward_dataset  # noqa: E402
from overopt.mitigations.gr import GradientRegularization  # noqa: E402
from overopt.mitigations.reference import ReferenceReset  # noqa: E402
from overopt.mitigations.rewards import (  # noqa: E402
    EnsembleRewardModel,
    PreferenceAsReward,
    ProxyRewardModel,
    TextRewardModel,
)
from overopt.mitigations.signcert import SignCertAdvantages  # noqa: E402
from overopt.models.policy import completion_logprobs  # noqa: E402
from overopt.models.reward import reward_forward, reward_model_from_backbone  # noqa: E402
from overopt.ops import bradley_terry_loss, chi2_estimate, clipped_surrogate, gr_correction, grpo_advantages  # noqa: E402
from overopt.sampling import rollout_from_tokens  # noqa: E402
from overopt.stages.evaluate import evaluate_policy  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
K, LENGTH = 4, 6  # completions per prompt, completion budget


@pytest.fixture(scope="module", autouse=True)
def _threads(one_thread):
    yield


@pytest.fixture(scope="module")
def world(tiny_world):
    """The tiny summarize world, and train prompts of one length (TRL passes no position ids, the lab does:
    with equal lengths there is no left padding and the two forwards agree)."""
    testbed = tiny_world["testbed"]
    prompts = testbed.prompts("train", 64, 0)
    length = max({len(p) for p in prompts}, key=lambda n: sum(len(p) == n for p in prompts))
    same = [p for p in prompts if len(p) == length]
    assert len(same) >= 4
    return {**tiny_world, "prompts": same[:4], "texts": [testbed.tokenizer.decode(p) for p in same[:4]]}


def _grpo_args(tmp_path, **overrides) -> GRPOConfig:
    fields = dict(
        output_dir=str(tmp_path / "trl"), use_cpu=True, bf16=False, report_to=[], logging_steps=1, save_strategy="no",
        disable_tqdm=True, per_device_train_batch_size=8, num_generations=K, max_completion_length=LENGTH,
        max_steps=1, learning_rate=1e-3, temperature=1.0, top_k=0, top_p=1.0, seed=0, beta=0.0,
        scale_rewards="none", loss_type="dr_grpo", max_grad_norm=0.0, shuffle_dataset=False,
    )  # fmt: skip
    fields.update(overrides)
    return GRPOConfig(**fields)


def _rloo_args(tmp_path, **overrides) -> RLOOConfig:
    fields = dict(
        output_dir=str(tmp_path / "trl"), use_cpu=True, bf16=False, report_to=[], logging_steps=1, save_strategy="no",
        disable_tqdm=True, per_device_train_batch_size=8, num_generations=K, max_completion_length=LENGTH,
        max_steps=1, learning_rate=1e-3, temperature=1.0, top_k=0, top_p=1.0, seed=0, beta=0.0,
        normalize_advantages=False, max_grad_norm=0.0, shuffle_dataset=False,
    )  # fmt: skip
    fields.update(overrides)
    return RLOOConfig(**fields)


class _Record:
    """Keeps what the trainer trained on: each micro-batch's prepared inputs, and the gradient TRL steps with."""

    def _prepare_inputs(self, generation_batch):
        prepared = super()._prepare_inputs(generation_batch)
        if self.model.training:
            self.batches.append(prepared)
        return prepared

    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        self.generated.append(out)
        return out


def _trainer(world, tmp_path, base, mixins=(), *, policy=None, args=None, reward=None, **kwargs):
    cls = with_mitigations(base, _Record, *mixins)
    tok = world["testbed"].tokenizer
    policy = policy if policy is not None else copy.deepcopy(world["policy"]).train()
    args = args or (_grpo_args(tmp_path) if base is GRPOTrainer else _rloo_args(tmp_path))
    trainer = cls(
        model=policy, reward_funcs=[reward or proxy_reward(world["reward_model"], tok)], args=args,
        train_dataset=Dataset.from_dict({"prompt": world["texts"] * 8}), processing_class=tok, **kwargs,
    )  # fmt: skip
    trainer.batches, trainer.generated, trainer.grads = [], [], []

    class BeforeStep(TrainerCallback):  # reads p.grad just before TRL's optimiser step
        def on_pre_optimizer_step(self, a, state, control, **kw):
            trainer.grads.append([p.grad.detach().clone() for p in trainer.model.parameters() if p.requires_grad])

    trainer.add_callback(BeforeStep())
    return trainer


def _lab_loss(policy, batches, chi2: Chi2Config | None = None, reference=None):
    """The lab's Dr.GRPO loss (overopt.ops) on TRL's micro-batches: their mean, as TRL accumulates them, plus
    the lab's χ² term against `reference`."""

    def loss_fn() -> torch.Tensor:
        total = 0.0
        for b in batches:
            ids = torch.cat([b["prompt_ids"], b["completion_ids"]], 1)
            mask = torch.cat([b["prompt_mask"], b["completion_mask"]], 1)
            plen = b["prompt_ids"].shape[1]
            logprobs, _ = completion_logprobs(policy, ids, mask, plen)
            cmask = b["completion_mask"].to(logprobs.dtype)
            loss = clipped_surrogate(logprobs, logprobs.detach(), b["advantages"], cmask, 0.2, "token_sum_norm",
                                     norm_const=LENGTH).loss  # fmt: skip
            if chi2 is not None:
                with torch.no_grad():
                    ref, _ = completion_logprobs(reference, ids, mask, plen)
                loss = loss + chi2.coef * chi2_estimate(logprobs, ref, cmask, clamp=chi2.clamp).penalty
            total = total + loss / len(batches)
        return total

    return loss_fn


def _lab_gr_gradient(policy, loss_fn, gr: GRConfig) -> list[torch.Tensor]:
    """overopt's own GR step (the lab's RL loop calls it) on the same loss; returns the gradient it steps with."""
    params = [p for p in policy.parameters() if p.requires_grad]
    step = GradientRegularization(list(policy.named_parameters()), eps=gr.eps, gamma=gr.gamma, grad_clip=gr.grad_clip,
                                  warmup_steps=0, exclude=gr.exclude)  # fmt: skip
    step(loss_fn, params, torch.optim.SGD(params, lr=0.0), step=1, max_grad_norm=1e12)
    return [p.grad.detach().clone() for p in params]


# TRL computes rewards, advantages and its fused LM head's log-probs in float32 even for a float64 policy: its
# plain Dr.GRPO gradient agrees with the lab's float64 one to 2.4e-7 of each tensor's largest entry. GR's
# finite difference multiplies that by γ/ε, so the GR comparisons allow 1e-5 of each tensor's largest entry.
TOLERANCE = 1e-5


def _assert_grads_close(a: list[torch.Tensor], b: list[torch.Tensor], tol: float = TOLERANCE) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.shape == y.shape
        assert (x - y).abs().max().item() <= tol * y.abs().max().item(), (x - y).abs().max().item()


# -- GR --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("accumulation", [1, 2])
def test_gr_step_through_trl_equals_the_labs_gr_step(world, tmp_path, accumulation):
    """One GRPO update with GR through TRL (float64 policy, with and without gradient accumulation) has the
    gradient overopt's GR step computes on the same batch with the lab's own Dr.GRPO loss."""
    gr = GRConfig(gamma=1.0, eps=0.1)
    initial = copy.deepcopy(world["policy"]).double().train()
    args = _grpo_args(tmp_path, per_device_train_batch_size=8 // accumulation, gradient_accumulation_steps=accumulation)
    trainer = _trainer(world, tmp_path, GRPOTrainer, [GradientRegularizationMixin], policy=copy.deepcopy(initial),
                       args=args, gr=gr)  # fmt: skip
    trainer.train()
    assert len(trainer.batches) == accumulation and len(trainer.grads) == 1
    lab = _lab_gr_gradient(initial, _lab_loss(initial, trainer.batches), gr)
    _assert_grads_close(trainer.grads[0], lab)
    # GR did something: the plain gradient of the same loss differs from it by a few per cent.
    initial.zero_grad()
    _lab_loss(initial, trainer.batches)().backward()
    assert gr_correction([p.grad for p in initial.parameters()], lab).ratio > 0.01
    logged = trainer.state.log_history[0]
    assert logged["gr/correction_ratio"] > 0 and logged["gr/gamma"] == gr.gamma


def test_gr_gamma_zero_is_trls_own_step(world, tmp_path):
    """γ = 0 (and the warm-up) leave TRL's update untouched: the same gradient as the plain trainer."""
    plain = _trainer(world, tmp_path, GRPOTrainer)
    plain.train()
    off = _trainer(world, tmp_path, GRPOTrainer, [GradientRegularizationMixin], gr=GRConfig(gamma=0.0))
    off.train()
    _assert_grads_close(off.grads[0], plain.grads[0], tol=0.0)
    assert off.state.log_history[0]["gr/correction_ratio"] == 0.0


def test_gr_on_rloo_replays_the_accumulation_window(world, tmp_path):
    """RLOO's loss is scaled for accumulation by transformers' Trainer, not by TRL: GR's replay scales it the
    same way, so the window's GR gradient is overopt's GR step on the mean of TRL's own micro-batch losses."""
    gr = GRConfig(gamma=0.05, eps=0.01)
    initial = copy.deepcopy(world["policy"]).double().train()
    args = _rloo_args(tmp_path, per_device_train_batch_size=4, gradient_accumulation_steps=2)
    trainer = _trainer(world, tmp_path, RLOOTrainer, [GradientRegularizationMixin], policy=copy.deepcopy(initial),
                       args=args, gr=gr)  # fmt: skip
    trainer.train()
    # TRL's own loss on the initial weights, through a second trainer holding them (same inputs, same code).
    probe = _trainer(world, tmp_path, RLOOTrainer, policy=copy.deepcopy(initial), args=args)
    probe.model.train()

    def loss_fn():
        return sum(RLOOTrainer._compute_loss(probe, probe.model, b) for b in trainer.batches) / len(trainer.batches)

    lab = _lab_gr_gradient(probe.model, loss_fn, gr)
    _assert_grads_close(trainer.grads[0], lab)


# -- χ² and reference resets -----------------------------------------------------------------------


def test_chi2_through_trl_equals_the_labs_chi2_term(world, tmp_path):
    """TRL's Dr.GRPO loss + Chi2Mixin has the gradient of the lab's loss + the lab's χ² term (ops.chi2_estimate)
    against the initial policy, on the same batch."""
    chi2 = Chi2Config(coef=0.5, clamp=10.0)
    initial = copy.deepcopy(world["policy"]).double().train()
    trainer = _trainer(world, tmp_path, GRPOTrainer, [Chi2Mixin], policy=copy.deepcopy(initial),
                       args=_grpo_args(tmp_path, max_steps=2, learning_rate=0.05), chi2=chi2)  # fmt: skip
    trainer.train()
    # Step 2 trains a moved policy against the initial one: χ² is not at its floor there.
    assert trainer.state.log_history[1]["chi2/estimate"] > 0
    # Rebuild the step-2 gradient: TRL stepped with it from the step-1 weights.
    step1 = copy.deepcopy(initial)
    args = _grpo_args(tmp_path, learning_rate=0.05)
    first = _trainer(world, tmp_path, GRPOTrainer, [Chi2Mixin], policy=step1, args=args, chi2=chi2)
    first.train()
    step1.zero_grad()
    _lab_loss(step1, [trainer.batches[1]], chi2, reference=initial)().backward()
    lab = [p.grad.detach().clone() for p in step1.parameters()]
    _assert_grads_close(trainer.grads[1], lab)


def test_reference_resets_are_trls_sync_ref_model(world):
    """TRL's SyncRefModelCallback update is overopt's ReferenceReset, hard and mixup."""
    for alpha in (1.0, 0.3):
        policy = copy.deepcopy(world["policy"])
        with torch.no_grad():
            for p in policy.parameters():
                p.add_(torch.randn_like(p))
        ref_trl, ref_lab = copy.deepcopy(world["policy"]), copy.deepcopy(world["policy"])
        SyncRefModelCallback._sync_target_model(policy, ref_trl, alpha)
        ReferenceReset(every=1, alpha=alpha)(1, policy, ref_lab)
        for a, b in zip(ref_trl.parameters(), ref_lab.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    args = ref_reset_args(RefResetConfig(every=7, alpha=0.5))
    config = GRPOConfig(output_dir="unused", use_cpu=True, beta=0.04, **args)
    assert (config.sync_ref_model, config.ref_model_sync_steps, config.ref_model_mixup_alpha) == (True, 7, 0.5)


# -- SignCert-PO -----------------------------------------------------------------------------------


@pytest.mark.parametrize("base", [GRPOTrainer, RLOOTrainer])
def test_signcert_advantages_are_the_labs_on_the_same_completions(world, tmp_path, base):
    """The advantages TRL trains on with SignCertMixin are SignCertAdvantages of the lab's Dr.GRPO advantages
    of the same completions, scored by the same RM (RLOO's are K/(K-1) of them)."""
    cfg = SignCertConfig(quantile=0.3)
    trainer = _trainer(world, tmp_path, base, [SignCertMixin], signcert=cfg)
    trainer.train()
    out = trainer.generated[0]
    prompt_ids = [r[m.bool()].tolist() for r, m in zip(out["prompt_ids"], out["prompt_mask"])]
    completion_ids = [r[m.bool()].tolist() for r, m in zip(out["completion_ids"], out["completion_mask"])]
    rollout = rollout_from_tokens(prompt_ids, completion_ids, world["testbed"].tokenizer.pad_token_id)
    scores = ProxyRewardModel(world["reward_model"])(rollout)
    advantages = grpo_advantages(scores.rewards.view(-1, K), scale_by_std=False).flatten()
    expected, _ = SignCertAdvantages(cfg.quantile, cfg.scope, cfg.weighting)(advantages, scores, K)
    if base is RLOOTrainer:
        expected = expected * K / (K - 1)
    torch.testing.assert_close(out["advantages"], expected.to(out["advantages"].dtype), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(out["advantages"], advantages * (K / (K - 1) if base is RLOOTrainer else 1))
    assert trainer.state.log_history[0]["signcert/adv_mass_removed"] > 0


def test_signcert_refuses_normalised_advantages(world, tmp_path):
    with pytest.raises(ValueError, match="scale_rewards='none'"):
        _trainer(world, tmp_path, GRPOTrainer, [SignCertMixin], args=_grpo_args(tmp_path, scale_rewards="group"))


# -- reward functions ------------------------------------------------------------------------------


def _call_as_trl(func, world, completions: list[list[int]]):
    texts = world["texts"][:2]
    prompts = [t for t in texts for _ in range(K)]
    out = func(prompts=prompts, completions=["x"] * len(prompts), completion_ids=completions, log_metric=None)
    return torch.tensor(out, dtype=torch.float64)


def _completions(world, n: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(0)
    vocab, eos = len(world["testbed"].tokenizer), world["testbed"].tokenizer.eos_token_id
    return [torch.randint(4, vocab, (int(torch.randint(1, LENGTH, (1,), generator=g)),), generator=g).tolist() + [eos]
            for _ in range(n)]  # fmt: skip


def test_reward_functions_score_what_the_lab_scores(world):
    """Called as TRL calls them (prompt text, generated ids), the reward functions return the lab's source on
    the lab's token rollout: one RM, an ensemble (each mode), PAR, and an RM with its own tokenizer."""
    tok, rm = world["testbed"].tokenizer, world["reward_model"]
    completions = _completions(world, 2 * K)
    prompts = [p for p in world["prompts"][:2] for _ in range(K)]
    rollout = rollout_from_tokens(prompts, completions, tok.pad_token_id)
    got = _call_as_trl(proxy_reward(rm, tok), world, completions)
    torch.testing.assert_close(got, ProxyRewardModel(rm)(rollout).rewards.double(), rtol=0, atol=1e-7)
    members = [rm, reward_model_from_backbone(world["path"], seed=1).eval()]
    for mode in ("mean", "wco", "uwo"):
        got = _call_as_trl(ensemble_reward(members, tok, mode=mode), world, completions)
        want = EnsembleRewardModel(members, mode, 0.1, 0)(rollout).rewards.double()
        torch.testing.assert_close(got, want, rtol=0, atol=1e-7)
    par = par_reward(proxy_reward(rm, tok), world["policy"], max_new_tokens=LENGTH, cfg=PARConfig(references=3), seed=5)
    got = _call_as_trl(par, world, completions)
    lab = PreferenceAsReward(world["policy"], ProxyRewardModel(rm), 3, 1.0, LENGTH, tok.eos_token_id,
                             tok.pad_token_id, seed=5)  # fmt: skip
    scores = ProxyRewardModel(rm)(rollout)
    torch.testing.assert_close(got, lab(scores.rewards, rollout, scores)[0].double(), rtol=0, atol=1e-7)
    # Its own tokenizer: the RM reads the decoded conversation, re-tokenised (here: the same vocabulary, no EOS).
    text = proxy_reward(rm, tok, rm_tokenizer=tok)
    got = _call_as_trl(text, world, completions)
    texts = [world["texts"][i // K] + tok.decode(c, skip_special_tokens=True) for i, c in enumerate(completions)]
    batch = tok(texts, padding=True, return_tensors="pt")
    torch.testing.assert_close(got, reward_forward(rm, batch["input_ids"], batch["attention_mask"]).rewards.double(),
                               rtol=0, atol=1e-6)  # fmt: skip
    assert isinstance(text.source, TextRewardModel) and text.last.hidden is not None


# -- the monitor and the alarms --------------------------------------------------------------------


def test_monitor_figures_are_the_labs_evaluation(world, tmp_path):
    """The callback's row is overopt's evaluate_policy on the same held-out prompts (same seed: same samples),
    with the trainer's reward function as the proxy and the testbed's gold."""
    testbed, tok = world["testbed"], world["testbed"].tokenizer
    eval_ids = testbed.prompts("eval", 12, 0)
    trainer = _trainer(world, tmp_path, GRPOTrainer)
    monitor = GoldRewardCallback(trainer, [tok.decode(p) for p in eval_ids], gold=lab_gold(testbed),
                                 out_dir=tmp_path / "out", seed=3, batch_size=5)  # fmt: skip
    reference = copy.deepcopy(world["policy"]).eval()
    monitor.reference = reference
    row, _ = monitor.evaluate(0)
    lab, _, _ = evaluate_policy(trainer.model, reference, ProxyRewardModel(world["reward_model"]), testbed,
                                monitor.eval_ids, monitor.eval_mask, temperature=1.0, seed=10_003, batch_size=5,
                                n_logged_samples=6)  # fmt: skip
    from overopt.sampling import pad_left

    ids, mask = pad_left(eval_ids, tok.pad_token_id)
    assert torch.equal(ids, monitor.eval_ids) and torch.equal(mask, monitor.eval_mask)  # the lab's prompt ids
    for key in ("proxy_reward", "gold_reward", "kl_sft", "entropy", "mean_length", "eos_rate"):
        assert row[key] == pytest.approx(lab[key], rel=1e-12, abs=1e-12), key
    assert json.loads((tmp_path / "out/runs/trl/seed3/metrics.jsonl").read_text().splitlines()[0])["step"] == 0


def test_alarm_callback_stops_training_and_keeps_the_last_good_policy(world, tmp_path):
    """A hair-trigger kl alarm stops TRL's run before max_steps; alarm_stop.json and the last-good policy are
    written, and every evaluation row carries alarm/* figures."""
    testbed, tok = world["testbed"], world["testbed"].tokenizer
    trainer = _trainer(world, tmp_path, GRPOTrainer, args=_grpo_args(tmp_path, max_steps=12, learning_rate=0.05))
    monitor = GoldRewardCallback(trainer, [tok.decode(p) for p in testbed.prompts("eval", 8, 0)],
                                 gold=lab_gold(testbed), out_dir=tmp_path / "out", every=1)  # fmt: skip
    alarms = AlarmCallback(monitor, stop=["kl"], cfg=AlarmConfig(rule="zscore", warmup=2, threshold=1e-3))
    trainer.add_callback(monitor)
    trainer.add_callback(alarms)
    trainer.train()
    assert alarms.stop is not None and trainer.state.global_step < 12
    run = tmp_path / "out/runs/trl/seed0"
    stop = json.loads((run / "alarm_stop.json").read_text())
    assert stop["alarm"] == "kl" and stop["last_good_step"] < stop["step"] <= trainer.state.global_step
    assert (run / "policy_last_good.safetensors").is_file()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all("alarm/kl" in r for r in rows) and "alarm/low_radius" in rows[-1]
    with pytest.raises(ValueError, match="unknown alarm 'nope'"):
        AlarmCallback(monitor, stop=["nope"])


# -- OCRM ------------------------------------------------------------------------------------------


def _pairs(world, n: int = 16) -> Dataset:
    completions = _completions(world, 2 * n)
    prompts = [world["prompts"][i % 4] for i in range(n)]
    return Dataset.from_dict({"prompt_ids": prompts, "chosen_ids": completions[:n], "rejected_ids": completions[n:]})


def _reward_args(tmp_path, **kw) -> RewardConfig:
    return RewardConfig(output_dir=str(tmp_path / "rm"), use_cpu=True, bf16=False, report_to=[], save_strategy="no",
                        disable_tqdm=True, per_device_train_batch_size=8, max_steps=2, learning_rate=1e-3, seed=0,
                        logging_steps=1, center_rewards_coefficient=None, **kw)  # fmt: skip


def test_weighted_reward_trainer_is_the_labs_weighted_bt_and_uniform_weights_are_trl(world, tmp_path):
    tok = world["testbed"].tokenizer
    pairs = _pairs(world)
    log_w = torch.linspace(-1.0, 1.0, len(pairs), dtype=torch.float64)
    model = reward_model_from_backbone(world["path"], seed=0)
    trainer = WeightedRewardTrainer(model=model, args=_reward_args(tmp_path), processing_class=tok,
                                    train_dataset=reward_dataset(pairs, log_w))  # fmt: skip
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(8)])
    loss = trainer.compute_loss(model, dict(batch))
    rows = rollout_from_tokens(pairs["prompt_ids"][:8] * 2, pairs["chosen_ids"][:8] + pairs["rejected_ids"][:8],
                               tok.pad_token_id)  # fmt: skip
    rewards = reward_forward(model, rows.input_ids, rows.attention_mask).rewards
    want = bradley_terry_loss(rewards[:8], rewards[8:], log_w[:8].exp().float())
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-6)
    # log w = 0 everywhere (β_w = 0): TRL's own RewardTrainer, the same trained weights.
    trained = []
    for cls, data in ((WeightedRewardTrainer, reward_dataset(pairs, torch.zeros(len(pairs)))),
                      (RewardTrainer, reward_dataset(pairs))):  # fmt: skip
        m = reward_model_from_backbone(world["path"], seed=0)
        cls(model=m, args=_reward_args(tmp_path), processing_class=tok, train_dataset=data).train()
        trained.append(m.score.weight.detach().clone())
    torch.testing.assert_close(trained[0], trained[1], rtol=1e-5, atol=1e-7)


def test_ocrm_loop_alternates_refits_and_rl_phases(world, tmp_path):
    tok = world["testbed"].tokenizer
    policy = copy.deepcopy(world["policy"]).train()
    phases = []

    def rl_phase(k, reward_model):
        trainer = _trainer(world, tmp_path, GRPOTrainer, policy=policy, reward=proxy_reward(reward_model, tok))
        trainer.train()
        phases.append(reward_model)
        return trainer

    def reward_trainer(model, data):
        return WeightedRewardTrainer(model=model, args=_reward_args(tmp_path), processing_class=tok,
                                     train_dataset=data)  # fmt: skip

    rounds = ocrm_loop(rl_phase, lambda: reward_model_from_backbone(world["path"], seed=0), reward_trainer,
                       initial_reward_model=world["reward_model"], sft_policy=world["policy"], pairs=_pairs(world),
                       pad_id=tok.pad_token_id, cfg=OCRMConfig(rounds=2, beta_w=1.0))  # fmt: skip
    assert len(phases) == 3 and phases[0] is world["reward_model"] and phases[1] is not phases[2]
    assert [r["ocrm/round"] for r in rounds] == [1, 2] and all(0 < r["ocrm/ess_frac"] <= 1 for r in rounds)


# -- the example, end to end -----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("mitigation", ["gr", "signcert"])
def test_example_smoke_runs_and_overopt_report_reads_it(tmp_path, mitigation):
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "examples/trl_grpo.py"), "--smoke", "--mitigation", mitigation, "--out", str(out)]
    subprocess.run(cmd, check=True, cwd=tmp_path, timeout=600)
    rows = [json.loads(line) for line in (out / f"runs/{mitigation}/seed0/metrics.jsonl").read_text().splitlines()]
    assert rows[0]["step"] == 0 and rows[-1]["step"] > 0
    assert all(k in rows[-1] for k in ("gold_reward", "proxy_reward", "kl_sft", "alarm/kl"))
    subprocess.run([sys.executable, "-m", "overopt", "report", str(out)], check=True, cwd=tmp_path, timeout=300)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["testbed"] == "trl" and mitigation in summary["methods"]
    assert (out / "report.html").is_file()


# -- DDP -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_gr_under_ddp_is_the_labs_gr_step_on_both_processes_batches(world, tmp_path):
    """Two processes (accelerate, gloo): the GR gradient after DDP's all-reduce of g1 and of the replayed g2 is
    overopt's GR step on the mean of the two processes' losses (what DDP averages)."""
    from safetensors.torch import load_file

    tok = world["testbed"].tokenizer
    policy_dir, rm_dir = tmp_path / "policy", tmp_path / "rm"
    world["policy"].save_pretrained(policy_dir)
    tok.save_pretrained(policy_dir)
    world["reward_model"].save_pretrained(rm_dir)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "accelerate/ddp.yaml"),
              "--num_processes", "2", str(ROOT / "tests/scripts/trl_gr_ddp.py"), str(policy_dir), str(rm_dir),
              str(tmp_path), *world["texts"][:2]]  # fmt: skip
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(launch, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    batches = [load_file(tmp_path / f"batch{rank}.safetensors") for rank in (0, 1)]
    assert not torch.equal(batches[0]["completion_ids"], batches[1]["completion_ids"])  # each its own rows
    initial = copy.deepcopy(world["policy"]).double().train()
    lab = _lab_gr_gradient(initial, _lab_loss(initial, batches), GRConfig(gamma=1.0, eps=0.1))
    grads = load_file(tmp_path / "grads.safetensors")
    _assert_grads_close([grads[n] for n, _ in initial.named_parameters()], lab)
