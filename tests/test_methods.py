"""Methods: parsing of '+' combinations, identities at loop level, and every method on the smoke preset."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from datasets import load_from_disk

from overopt.cli import main
from overopt.config import GRConfig, KLConfig, RLConfig
from overopt.methods import PARTS, resolve_method
from overopt.mitigations.gr import GradientRegularization
from overopt.mitigations.protocols import Mitigations
from overopt.mitigations.reference import ReferenceReset
from overopt.mitigations.regularizers import Chi2Penalty
from overopt.mitigations.rewards import (
    ConstrainedReward,
    EnsembleRewardModel,
    LengthPenalty,
    ProxyRewardModel,
    RewardClip,
)
from overopt.mitigations.signcert import SignCertAdvantages
from overopt.ops import DAA_LOSSES
from overopt.progress import StageProgress
from overopt.stages.rl import train_policy

BASE = RLConfig(steps=3, prompts_per_step=4, group_size=2, lr=1e-3, kl=KLConfig(coef=0.1))


# -- parsing -------------------------------------------------------------------------------------
def test_kl_is_on_exactly_when_a_part_asks_for_it():
    assert resolve_method("gr", BASE).rl.kl.coef == 0
    assert resolve_method("gr+kl", BASE).rl.kl.coef == 0.1
    assert resolve_method("ref_reset", BASE).rl.kl.coef == 0.1
    assert resolve_method("none", BASE).rl.kl.coef == 0
    assert resolve_method("signcert", BASE).rl.algo == "dr_grpo"
    plan = resolve_method("ocrm+kl", BASE)
    assert plan.ocrm and plan.moves_reference and plan.uses_kl
    assert resolve_method("ensemble_uwo", BASE).ensemble == "uwo"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("bogus", "unknown method 'bogus'"),
        ("kl+bogus", "unknown method 'bogus'"),
        ("none+kl", "'none' cannot be combined"),
        ("kl+kl", "repeats a part"),
        ("ocrm+ensemble_mean", "both set the reward model"),
        ("ensemble_mean+ensemble_wco", "both set the reward model"),
        ("bon+kl", "best-of-n trains no policy; it combines only with a reward-model ensemble"),
        ("bon+gr", "not with 'gr'"),
    ],
)
def test_impossible_combinations_are_refused(name, message):
    with pytest.raises(ValueError, match=message):
        resolve_method(name, BASE)


def test_kl_methods_need_a_positive_coefficient():
    with pytest.raises(ValueError, match="rl.kl.coef > 0"):
        resolve_method("ref_reset", BASE.model_copy(update={"kl": KLConfig(coef=0.0)}))


# -- identities at loop level ---------------------------------------------------------------------
def _train(world, cfg: RLConfig, mitigations: Mitigations | None = None, reward_source=None, ref_policy=None):
    testbed = world["testbed"]
    policy = copy.deepcopy(world["policy"]).train()
    with StageProgress("test") as progress:
        train_policy(
            cfg, policy=policy, ref_policy=ref_policy if ref_policy is not None else world["policy"],
            reward_source=reward_source or ProxyRewardModel(world["reward_model"]), value_model=None,
            testbed=testbed, train_prompts=testbed.prompts("train", 16, 0), seed=0, eval_every=100,
            on_eval=lambda step, figures: None, progress=progress, mitigations=mitigations,
        )  # fmt: skip
    return torch.cat([p.detach().flatten() for p in policy.parameters()])


def test_gr_with_gamma_zero_is_the_plain_step(tiny_world):
    policy = tiny_world["policy"]
    g = GRConfig(gamma=0.0)
    gr = GradientRegularization(list(policy.named_parameters()), eps=g.eps, gamma=0.0, grad_clip=g.grad_clip,
                                warmup_steps=0, exclude=g.exclude)  # fmt: skip
    assert torch.equal(_train(tiny_world, BASE, Mitigations(gradient_step=gr)), _train(tiny_world, BASE))


def test_gr_changes_the_update_and_warmup_delays_it(tiny_world):
    def with_gr(warmup):
        # GR perturbs the parameters of the policy being trained, so it is built inside the run.
        return lambda policy: GradientRegularization(
            list(policy.named_parameters()), eps=1e-3, gamma=1e-1, grad_clip=10.0, warmup_steps=warmup, exclude=()
        )

    plain = _train(tiny_world, BASE)
    assert not torch.equal(_train_with(tiny_world, with_gr(0)), plain)
    assert torch.equal(_train_with(tiny_world, with_gr(BASE.steps)), plain)


def _train_with(world, make_step):
    testbed = world["testbed"]
    policy = copy.deepcopy(world["policy"]).train()
    with StageProgress("test") as progress:
        train_policy(
            BASE, policy=policy, ref_policy=world["policy"], reward_source=ProxyRewardModel(world["reward_model"]),
            value_model=None, testbed=testbed, train_prompts=testbed.prompts("train", 16, 0), seed=0, eval_every=100,
            on_eval=lambda step, figures: None, progress=progress,
            mitigations=Mitigations(gradient_step=make_step(policy)),
        )  # fmt: skip
    return torch.cat([p.detach().flatten() for p in policy.parameters()])


def test_signcert_with_everything_certified_is_plain_dr_grpo(tiny_world):
    dr_grpo = BASE.model_copy(update={"algo": "dr_grpo"})

    def signcert(q, weighting):
        return Mitigations(advantage_transform=SignCertAdvantages(q, "batch", weighting))

    # q = 0: ε is the smallest radius, so every completion is certified and nothing is dropped.
    plain = _train(tiny_world, dr_grpo)
    assert torch.equal(_train(tiny_world, dr_grpo, signcert(0.0, "drop")), plain)
    assert not torch.equal(_train(tiny_world, dr_grpo, signcert(0.9, "drop")), plain)
    # The paper's worst-case advantages shift every advantage by ε‖d‖: a different update at any q,
    # and flooring them at 0 (no sign reversal) is a different update again.
    shrink = _train(tiny_world, dr_grpo, signcert(0.2, "shrink"))
    assert not torch.equal(shrink, plain)
    assert not torch.equal(_train(tiny_world, dr_grpo, signcert(0.2, "shrink_clip")), shrink)
    # At q = 0 no advantage crosses 0, so the floor changes nothing but the rounding of |A| − ε‖d‖ at the
    # completion whose radius is ε itself (one float32 rounding, up to 6e-8, instead of 0).
    assert torch.allclose(
        _train(tiny_world, dr_grpo, signcert(0.0, "shrink_clip")),
        _train(tiny_world, dr_grpo, signcert(0.0, "shrink")),
        rtol=0,
        atol=1e-6,
    )


def test_signcert_worst_case_advantages_in_the_loop(tiny_world):
    """The transform sees the loop's Dr.GRPO advantages and returns sign(A)(|A| − ε‖d‖) (ops checks the maths)."""
    seen = {}

    class Spy(SignCertAdvantages):
        def __call__(self, advantages, scores, group_size):
            new, figures = super().__call__(advantages, scores, group_size)
            seen.update(before=advantages, after=new, rewards=scores.rewards, figures=figures)
            return new, figures

    no_kl = BASE.model_copy(update={"algo": "dr_grpo", "kl": KLConfig(coef=0.0)})  # A = r − mean r exactly
    _train(tiny_world, no_kl, Mitigations(advantage_transform=Spy(0.2, "batch", "shrink")))
    grouped = seen["rewards"].view(-1, BASE.group_size)
    assert torch.allclose(seen["before"], (grouped - grouped.mean(1, keepdim=True)).flatten())
    assert (seen["after"].abs() <= seen["before"].abs() + 1e-6).logical_or(seen["after"] * seen["before"] <= 0).all()
    assert seen["figures"]["signcert/adv_mass_removed"] > 0


@pytest.mark.parametrize("mode", ["mean", "wco", "uwo"])
def test_ensemble_of_one_is_the_single_rm(tiny_world, mode):
    single = EnsembleRewardModel([tiny_world["reward_model"]], mode, uwo_lambda=0.5, ddof=0)
    assert torch.equal(_train(tiny_world, BASE, reward_source=single), _train(tiny_world, BASE))


def test_reference_reset_that_never_fires_is_plain_kl(tiny_world):
    ref = copy.deepcopy(tiny_world["policy"])
    never = Mitigations(reference_schedule=ReferenceReset(every=BASE.steps + 1, alpha=1.0))
    assert torch.equal(_train(tiny_world, BASE, never, ref_policy=ref), _train(tiny_world, BASE))
    assert all(torch.equal(a, b) for a, b in zip(ref.parameters(), tiny_world["policy"].parameters()))


def test_hard_reference_reset_copies_the_policy(tiny_world):
    ref = copy.deepcopy(tiny_world["policy"])
    policy = copy.deepcopy(tiny_world["policy"])
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(1.0)
    reset = ReferenceReset(every=2, alpha=1.0)
    assert reset(1, policy, ref)["ref_reset/count"] == 0
    assert all(torch.equal(a, b) for a, b in zip(ref.parameters(), tiny_world["policy"].parameters()))
    assert reset(2, policy, ref)["ref_reset/count"] == 1
    assert all(torch.equal(a, b) for a, b in zip(ref.parameters(), policy.parameters()))
    half = copy.deepcopy(tiny_world["policy"])
    ReferenceReset(every=1, alpha=0.5)(1, policy, half)
    expected = [0.5 * a + 0.5 * b for a, b in zip(policy.parameters(), tiny_world["policy"].parameters())]
    assert all(torch.allclose(a, b) for a, b in zip(half.parameters(), expected))


def test_zero_strength_reward_and_loss_terms_are_off(tiny_world):
    plain = _train(tiny_world, BASE)
    assert torch.equal(_train(tiny_world, BASE, Mitigations(reward_transforms=[LengthPenalty(0.0)])), plain)
    assert torch.equal(_train(tiny_world, BASE, Mitigations(reward_transforms=[RewardClip(-1e9, 1e9, False)])), plain)
    assert torch.equal(_train(tiny_world, BASE, Mitigations(loss_terms=[ZeroChi2()])), plain)
    assert not torch.equal(_train(tiny_world, BASE, Mitigations(loss_terms=[Chi2Penalty(10.0, 10.0)])), plain)


def test_constrained_with_a_frozen_unit_multiplier_and_zero_threshold_is_plain_kl(tiny_world):
    frozen = Mitigations(
        reward_transforms=[ConstrainedReward(threshold=0.0, multiplier_lr=0.0, initial=1.0, maximum=1.0)]
    )
    assert torch.equal(_train(tiny_world, BASE, frozen), _train(tiny_world, BASE))


def test_constrained_multiplier_follows_dual_ascent():
    """λ ← clip(λ + η(θ − mean r), 0, λ_max); the reward is λ·(r − θ) with the λ before the update."""
    c = ConstrainedReward(threshold=1.0, multiplier_lr=0.5, initial=2.0, maximum=3.0)
    r = torch.tensor([0.0, 1.0, 2.0, 5.0], dtype=torch.float64)  # mean 2: constraint met by 1
    shaped, figures = c(r, None, None)
    assert torch.equal(shaped, 2.0 * (r - 1.0)) and figures["constrained/violation"] == -1.0
    assert c.multiplier == 1.5
    c(torch.full((4,), -9.0, dtype=torch.float64), None, None)  # violated by 10: λ would be 6.5, clipped to 3
    assert c.multiplier == 3.0
    c(torch.full((4,), 100.0, dtype=torch.float64), None, None)
    assert c.multiplier == 0.0


class ZeroChi2(Chi2Penalty):
    def __init__(self):
        super().__init__(coef=0.0, clamp=10.0)


def test_uniform_ocrm_weights_are_plain_bradley_terry(tiny_world, tmp_path):
    """β_w = 0 gives weight 1 for every pair: the refit RM equals the plain BT refit in every mode."""
    from datasets import Dataset

    from overopt.models.reward import reward_model_from_backbone
    from overopt.stages.rm import train_reward_model

    testbed = tiny_world["testbed"]
    prompts = testbed.prompts("train", 24, 0)
    gen = torch.Generator().manual_seed(0)
    rows = {"prompt_ids": prompts, "gold_chosen": [1.0] * 24, "gold_rejected": [0.0] * 24,
            "chosen_ids": [torch.randint(5, 20, (3,), generator=gen).tolist() + [2] for _ in prompts],
            "rejected_ids": [torch.randint(5, 20, (4,), generator=gen).tolist() + [2] for _ in prompts]}  # fmt: skip
    pairs = Dataset.from_dict(rows)

    def fit(**weighting):
        rm = reward_model_from_backbone(tiny_world["path"], seed=3)
        with StageProgress("rm") as progress:
            train_reward_model(rm, pairs, pairs, epochs=2, batch_size=8, lr=1e-2, pad_id=0, seed=1, progress=progress,
                               **weighting)  # fmt: skip
        return torch.cat([p.detach().flatten() for p in rm.parameters()])

    plain = fit()
    for mode in ("none", "batch", "dataset"):
        assert torch.allclose(fit(log_weights=torch.zeros(24, dtype=torch.float64), normalization=mode), plain,
                              atol=1e-6, rtol=0), mode  # fmt: skip
    skewed = torch.linspace(-3, 3, 24, dtype=torch.float64)
    assert not torch.allclose(fit(log_weights=skewed, normalization="none"), plain, atol=1e-4)


# -- every method on the smoke preset -----------------------------------------------------------
METHOD_FIGURES = {
    "ref_reset": "ref_reset/count",
    "gr": "gr/correction_ratio",
    "signcert": "signcert/adv_mass_removed",
    "ocrm+kl": "ocrm/refit_disagreement",
    "ensemble_uwo": "ensemble/penalty_share",
    "par": "par/saturation",
    "chi2": "chi2/penalty_share",
    "length_penalty": "length_penalty/mean",
    "reward_clip": "reward_clip/frac",
    "gr+kl": "gr/grad_norm_ratio",
    "constrained": "constrained/multiplier",
}


@pytest.mark.slow
def test_every_method_runs_on_the_smoke_preset(tmp_path):
    names = [
        "none",
        "kl",
        *METHOD_FIGURES,
        "ensemble_mean",
        "ensemble_wco",
        "ocrm",
        "signcert+kl",
        "bon",
        "bon+ensemble_wco",
    ]
    daa = set(DAA_LOSSES)  # direct alignment trains no RL: tests/test_daa.py runs every loss on the smoke preset
    assert {p for n in names for p in n.split("+")} == set(PARTS.builtin()) - daa, "a method part is not exercised"
    out = tmp_path / "all"
    main(["run", "--preset", "smoke", "--out", str(out), "--methods", ",".join(names),
          "--ensemble.k", "2", "--ocrm.rounds", "1"])  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["methods"]) == names
    for name in names[:-2]:
        rows = [json.loads(line) for line in (out / "runs" / name / "seed0" / "metrics.jsonl").open()]
        assert [r["step"] for r in rows] == [0, 3, 6], name
        assert all(torch.isfinite(torch.tensor(r["gold_reward"])) for r in rows)
        if name in METHOD_FIGURES:
            assert METHOD_FIGURES[name] in rows[-1], (name, sorted(rows[-1]))
        # Every run measures the mechanisms against gold; the radius needs a linear RM head (all do here).
        assert {"mech/proxy_accuracy"} <= set(rows[0]), name
        assert {"mech/proxy_accuracy", "mech/sign_flip_rate", "mech/sign_flip_mass"} <= set(rows[-1]), name
        if name == "kl":
            assert rows[-1]["kl/reward_share"] > 0
        if name == "none":
            assert "kl/reward_share" not in rows[-1]
    ocrm_rows = [json.loads(line) for line in (out / "runs" / "ocrm" / "seed0" / "metrics.jsonl").open()]
    assert ocrm_rows[-1]["ocrm/round"] == 1 and 0 < ocrm_rows[-1]["ocrm/ess_frac"] <= 1
    assert "mech/rm0_accuracy" in ocrm_rows[-1] and "mech/rm0_accuracy" not in ocrm_rows[0]
    ensemble_rows = [json.loads(line) for line in (out / "runs" / "ensemble_uwo" / "seed0" / "metrics.jsonl").open()]
    assert "mech/disagreement_error_corr" in ensemble_rows[-1]
    assert (out / "artifacts" / "rm_1" / "stage.json").exists()  # the second ensemble member
    # Best-of-n draws the same samples whatever scores them: against the ensemble's worst case (the min over
    # members, RM_0 among them) every sample scores at most what RM_0 alone gives it, and gold is unchanged.
    plain, wco = (np.load(out / "runs" / name / "seed0" / "bon_scores.npz") for name in ("bon", "bon+ensemble_wco"))
    assert plain["proxy_reward"].shape == (32, 16)
    np.testing.assert_array_equal(plain["gold_reward"], wco["gold_reward"])
    assert (wco["proxy_reward"] <= plain["proxy_reward"] + 1e-6).all()
    assert (wco["proxy_reward"] < plain["proxy_reward"] - 1e-6).any()
    for name in ("bon", "bon+ensemble_wco"):
        assert [json.loads(line)["n"] for line in (out / "runs" / name / "seed0" / "metrics.jsonl").open()] == [
            1, 2, 3, 4, 6, 8, 11, 16]  # fmt: skip
        assert summary["methods"][name]["fit"]["form"] == "bon"


def test_ppo_value_model_is_rebuilt_from_each_ocrm_reward_model(tmp_path):
    out = tmp_path / "ppo"
    main(["run", "--preset", "smoke", "--out", str(out), "--methods", "ocrm+kl", "--rl.algo", "ppo",
          "--ocrm.rounds", "1", "--ocrm.beta-w", "0"])  # fmt: skip
    rows = [json.loads(line) for line in (out / "runs" / "ocrm+kl" / "seed0" / "metrics.jsonl").open()]
    assert [r["step"] for r in rows] == [0, 3, 6]
    assert rows[-1]["ocrm/round"] == 1 and "train/vf_loss" in rows[-1] and "train/vf_loss" in rows[1]
    # β_w = 0: uniform weights, and the refit is trained as RM_0 was, so it is RM_0 again: strength 0.
    assert rows[-1]["ocrm/ess_frac"] == 1.0 and rows[-1]["ocrm/refit_disagreement"] == 0.0
    assert rows[-1]["mech/proxy_accuracy"] == rows[-1]["mech/rm0_accuracy"]


def test_ocrm_warm_start_refits_from_the_previous_rm_for_its_own_passes(tmp_path, monkeypatch):
    """ocrm.warm_start: RM_1 starts from RM_0's weights and RM_2 from RM_1's (copies: the lab's RM_0 is shared),
    each trained for ocrm.warm_start_epochs passes; without it every refit starts from the SFT backbone."""
    from safetensors.torch import load_file

    from overopt.models.reward import score_head
    from overopt.stages import method_run

    starts = []

    def fake_training(model, *args, epochs, **kwargs):  # records where a refit starts, then moves its head
        starts.append(({k: v.clone() for k, v in model.state_dict().items()}, epochs))
        with torch.no_grad():
            score_head(model).weight.add_(1.0)
        return {"heldout_accuracy": 0.5}

    monkeypatch.setattr(method_run, "train_reward_model", fake_training)
    refit, refits = method_run._ocrm_refit, []

    def spy(lab, cfg, policy, previous, *args):  # each refit's RM_{k-1} and the RM_k it returned
        rm, figures = refit(lab, cfg, policy, previous, *args)
        refits.append((previous, rm))
        return rm, figures

    monkeypatch.setattr(method_run, "_ocrm_refit", spy)
    out = tmp_path / "warm"
    common = ["run", "--preset", "smoke", "--methods", "ocrm+kl", "--jobs", "1"]
    main([*common, "--out", str(out), "--ocrm.warm-start", "True", "--ocrm.warm-start-epochs", "2"])
    rm0 = load_file(out / "artifacts" / "rm" / "model.safetensors")
    (first, epochs1), (second, epochs2) = starts
    assert epochs1 == epochs2 == 2
    head = next(k for k in first if k.endswith("score.weight"))
    for key, value in rm0.items():
        torch.testing.assert_close(first[key], value, rtol=0, atol=0)
        torch.testing.assert_close(second[key], value + (1.0 if key == head else 0.0), rtol=0, atol=0)
    (rm0_model, rm1), (previous, rm2) = refits
    assert previous is rm1 and len({id(rm0_model), id(rm1), id(rm2)}) == 3  # copies: the lab's RM_0 is unchanged
    for key, value in rm0.items():
        torch.testing.assert_close(rm0_model.state_dict()[key], value, rtol=0, atol=0)
    rows = [json.loads(line) for line in (out / "runs" / "ocrm+kl" / "seed0" / "metrics.jsonl").open()]
    assert rows[-1]["ocrm/round"] == 2 and rows[-1]["ocrm/refit_disagreement"] >= 0

    # The paper's refit (the default): both rounds start from the SFT backbone with a fresh head, for rm.epochs.
    starts.clear()
    refits.clear()
    main([*common, "--out", str(tmp_path / "scratch")])
    assert [epochs for _, epochs in starts] == [1, 1]  # the smoke preset's rm.epochs
    for state, _ in starts:
        assert not torch.equal(state[head], rm0[head])
        torch.testing.assert_close(state[head], starts[0][0][head], rtol=0, atol=0)


def test_ocrm_refits_reuse_the_sft_log_likelihoods_and_skip_the_unread_train_accuracy(tmp_path, monkeypatch):
    """π_SFT's log-likelihoods of the pairs are computed once per lab (both refits and the alarms' pairs_ess read
    them), and a refit's RM is not scored on all its training pairs (nothing reads it): the run is bit for bit the
    one that computes both every time."""
    from overopt.stages import method_run

    computed = []
    real_logliks, real_train = method_run.pair_logliks, method_run.train_reward_model

    def counted(model, pairs, *args):
        computed.append(len(pairs))
        return real_logliks(model, pairs, *args)

    monkeypatch.setattr(method_run, "pair_logliks", counted)
    common = ["run", "--preset", "smoke", "--methods", "ocrm+kl", "--jobs", "1", "--ocrm.target-ess-frac", "0.5"]
    main([*common, "--out", str(tmp_path / "once")])
    n_train = len(load_from_disk(str(tmp_path / "once" / "artifacts" / "pairs" / "data"))["train"])
    assert sorted(computed) == sorted({min(128, n_train), n_train})  # alarm.pairs and all training pairs, once each

    # Every time, as before: a fresh computation at each call, and the refit's train accuracy.
    def every_time(lab, pairs, truncate_tokens):
        return counted(lab.sft_policy, pairs, lab.testbed.tokenizer.pad_token_id, truncate_tokens)

    monkeypatch.setattr(method_run, "sft_pair_logliks", every_time)
    monkeypatch.setattr(
        method_run, "train_reward_model", lambda *a, **k: real_train(*a, **{**k, "train_accuracy": True})
    )
    computed.clear()
    main([*common, "--out", str(tmp_path / "every")])
    assert len(computed) > 2

    def rows(out):
        lines = (out / "runs" / "ocrm+kl" / "seed0" / "metrics.jsonl").open()
        return [{k: v for k, v in json.loads(line).items() if "wall" not in k} for line in lines]

    assert rows(tmp_path / "once") == rows(tmp_path / "every")
    assert rows(tmp_path / "once")[-1]["ocrm/round"] == 2


def test_ocrm_runs_without_warm_start_keep_their_fingerprints(monkeypatch):
    """Off (the default), the warm-start knobs are not in an OCRM run's fingerprint, so runs finished before they
    existed stay valid; on, they are."""
    from overopt import pipeline
    from overopt.config import load_config

    def fingerprint(**ocrm) -> tuple[str, dict]:
        cfg = load_config("smoke")
        cfg = cfg.model_validate({**cfg.model_dump(), "methods": "ocrm+kl", "ocrm": {**cfg.ocrm.model_dump(), **ocrm}})
        plan, variant = pipeline.resolve_plans(cfg)["ocrm+kl"]
        recorded = []
        monkeypatch.setattr(pipeline, "fingerprint", lambda *parts: recorded.append(parts) or real(*parts))
        fp = pipeline._run_fingerprint("rm", plan, variant, 0)
        monkeypatch.setattr(pipeline, "fingerprint", real)
        return fp, recorded[0][4]["ocrm"]  # (rm, name, rl, eval, sections, ...)

    real = pipeline.fingerprint
    base, section = fingerprint()
    assert "warm_start" not in section and "warm_start_epochs" not in section and "phase_lr_decay" in section
    assert fingerprint(warm_start_epochs=3)[0] == base
    warm, section = fingerprint(warm_start=True)
    assert warm != base and section["warm_start"] is True and section["warm_start_epochs"] == 1
    assert fingerprint(warm_start=True, warm_start_epochs=2)[0] != warm


# -- numerical faults ----------------------------------------------------------------------------
class NaNLoss:
    name = "nan"

    def __call__(self, logprobs, ref_logprobs, mask):
        return logprobs.sum() * float("nan"), {}


class NaNRewards:
    def __init__(self, source):
        self.source = source

    def __call__(self, rollout):
        scored = self.source(rollout)
        return scored._replace(rewards=torch.full_like(scored.rewards, float("nan")))

    def models(self):
        return self.source.models()


def test_a_nan_loss_stops_before_the_optimiser_applies_it(tiny_world):
    from overopt.errors import NumericalFault

    before = torch.cat([p.detach().flatten() for p in tiny_world["policy"].parameters()])
    with pytest.raises(NumericalFault, match="rl step 1: non-finite loss"):
        _train(tiny_world, BASE, Mitigations(loss_terms=[NaNLoss()]))
    with pytest.raises(NumericalFault, match="rl step 1: non-finite rewards"):
        _train(tiny_world, BASE, reward_source=NaNRewards(ProxyRewardModel(tiny_world["reward_model"])))
    # Skipping: every update has a NaN loss, so none is applied and the policy is unchanged.
    skip = BASE.model_copy(update={"on_nonfinite": "skip"})
    assert torch.equal(_train(tiny_world, skip, Mitigations(loss_terms=[NaNLoss()])), before)
    assert torch.equal(
        _train(tiny_world, skip, reward_source=NaNRewards(ProxyRewardModel(tiny_world["reward_model"]))), before
    )


# -- effective strength, calibrated knobs and published-code details at loop level --------------
def _train_figures(world, cfg: RLConfig, mitigations: Mitigations | None = None, **kwargs):
    """Train like `_train`, evaluating after every update; returns (parameters, figures per update)."""
    testbed, figures = world["testbed"], []
    policy = copy.deepcopy(world["policy"]).train()
    if callable(mitigations):
        mitigations = mitigations(policy)
    with StageProgress("test") as progress:
        train_policy(
            cfg, policy=policy, ref_policy=world["policy"], reward_source=ProxyRewardModel(world["reward_model"]),
            value_model=None, testbed=testbed, train_prompts=testbed.prompts("train", 16, 0), seed=0, eval_every=1,
            on_eval=lambda step, f: figures.append(f) if step else None, progress=progress, mitigations=mitigations,
            **kwargs,
        )  # fmt: skip
    return [p.detach().clone() for p in policy.parameters()], figures


def _gr(**kwargs):
    return lambda policy: Mitigations(
        gradient_step=GradientRegularization(
            list(policy.named_parameters()), eps=1e-3, grad_clip=10.0, warmup_steps=0, exclude=(), **kwargs
        )
    )


def test_gr_logs_its_correction_and_the_controller_tracks_a_target(tiny_world):
    _, off = _train_figures(tiny_world, BASE, _gr(gamma=0.0))
    assert all(f["gr/correction_ratio"] == 0.0 and f["gr/cos_g_g1"] == 1.0 for f in off)  # off: strength 0
    _, fixed = _train_figures(tiny_world, BASE, _gr(gamma=0.1))
    assert all(f["gr/correction_ratio"] > 0 and f["gr/gamma"] == 0.1 for f in fixed)
    cfg = BASE.model_copy(update={"steps": 20})
    _, adapted = _train_figures(tiny_world, cfg, _gr(gamma=0.1, target_correction=0.5, controller_rate=0.5))
    gammas, ratios = [f["gr/gamma"] for f in adapted], [f["gr/correction_ratio"] for f in adapted]
    assert gammas[0] == 0.1 and gammas[-1] > 0.5
    # The ratio is noisy from step to step (×5 at a fixed γ); in log terms the last steps sit near the target,
    # the first one (0.02 at γ = 0.1) far below it.
    late = sorted(ratios[-8:])[4]
    assert abs(math.log(late / 0.5)) < abs(math.log(ratios[0] / 0.5)) / 3


def test_gr_bf16_roundtrip_rounds_the_weights_before_each_gr_update(tiny_world):
    """DeepSpeed's refresh_fp32_params in the published GR runs: master ← bf16(master) before each GR step,
    so with updates far below a bf16 step the weights end at bf16(initial) + the last update only."""
    tiny = BASE.model_copy(update={"lr": 1e-9, "kl": KLConfig(coef=0.0)})
    initial = [p.detach().clone() for p in tiny_world["policy"].parameters()]
    rounded = [p.to(torch.bfloat16).float() for p in initial]
    assert max((a - b).abs().max().item() for a, b in zip(initial, rounded)) > 1e-4
    plain, _ = _train_figures(tiny_world, tiny, _gr(gamma=0.1))
    dead_zone, _ = _train_figures(tiny_world, tiny, _gr(gamma=0.1, bf16_roundtrip=True))
    assert max((a - b).abs().max().item() for a, b in zip(plain, initial)) < 1e-7
    assert max((a - b).abs().max().item() for a, b in zip(dead_zone, rounded)) < 1e-7


def test_ocrm_phase_schedule_decays_the_learning_rate_linearly(tiny_world):
    cfg = BASE.model_copy(update={"steps": 4})
    _, figures = _train_figures(tiny_world, cfg, lr_decay=True)
    assert [f["train/lr"] for f in figures] == pytest.approx([cfg.lr * (1 - u / 4) for u in range(4)])
    _, constant = _train_figures(tiny_world, cfg)
    assert all("train/lr" not in f for f in constant)


def test_kl_and_loss_terms_log_their_share_of_the_update(tiny_world):
    # At the first update π_θ = π_ref: no KL, no penalty gradient, share 0; then the penalties pull.
    _, in_reward = _train_figures(tiny_world, BASE)
    assert in_reward[0]["kl/reward_share"] == 0 and 0 < in_reward[-1]["kl/reward_share"] < 1
    in_loss = BASE.model_copy(update={"kl": KLConfig(coef=0.1, placement="loss", estimator="k3")})
    _, figures = _train_figures(tiny_world, in_loss, Mitigations(loss_terms=[Chi2Penalty(1.0, 10.0)]))
    assert figures[0]["kl/loss_share"] == 0 and 0 < figures[-1]["kl/loss_share"] < 1
    assert 0 < figures[-1]["chi2/penalty_share"] < 1
    _, none = _train_figures(tiny_world, BASE.model_copy(update={"kl": KLConfig(coef=0.0)}))
    assert all("kl/reward_share" not in f and "kl/loss_share" not in f for f in none)


def test_signcert_fisher_ellipsoid_from_the_rm_training_pairs(tiny_world):
    from datasets import Dataset

    from overopt.mitigations.signcert import fisher_metric

    testbed = tiny_world["testbed"]
    prompts = testbed.prompts("train", 8, 0)
    tok = testbed.tokenizer
    pairs = Dataset.from_dict({
        "prompt_ids": prompts,
        "chosen_ids": [[p[1], tok.eos_token_id] for p in prompts],
        "rejected_ids": [[tok.eos_token_id] for _ in prompts],
    })  # fmt: skip
    metric = fisher_metric(tiny_world["reward_model"], pairs, tok.pad_token_id, damping=0.1)
    hidden = tiny_world["reward_model"].config.hidden_size
    assert metric.shape == (hidden, hidden) and torch.linalg.eigvalsh(metric).min() > 0
    dr_grpo = BASE.model_copy(update={"algo": "dr_grpo"})
    ellipsoid = Mitigations(advantage_transform=SignCertAdvantages(0.2, "batch", "shrink", metric))
    ball = Mitigations(advantage_transform=SignCertAdvantages(0.2, "batch", "shrink"))
    assert not torch.equal(_train(tiny_world, dr_grpo, ellipsoid), _train(tiny_world, dr_grpo, ball))
