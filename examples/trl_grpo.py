"""A TRL GRPO run with overopt's gold monitor, hacking alarms and one mitigation of the papers.

    pip install -e ".[trl]"
    python examples/trl_grpo.py --smoke --out runs/trl-smoke        # CPU, tiny local models, seconds
    overopt report runs/trl-smoke                                    # gold / proxy / KL curves, alarms

    # TRL on an overopt lab (its SFT policy, its proxy RM, its known gold reward), e.g. after `overopt run`:
    python examples/trl_grpo.py --lab runs/default --mitigation gr --out runs/trl-lab

    # A real model on a GPU: a policy, a proxy RM, a gold RM and a prompt dataset (README "Use with TRL").
    python examples/trl_grpo.py --policy Qwen/Qwen2.5-0.5B-Instruct --reward-model <proxy RM> \\
        --gold-model Skywork/Skywork-Reward-V2-Llama-3.1-8B --dataset trl-lib/tldr --mitigation gr \\
        --bf16 --use-vllm --out runs/qwen-gr

Everything the lab adds is a few lines around a plain TRL script: the trainer class gains the mitigation's
mixin (``with_mitigations``), the proxy RM becomes an overopt reward function (``proxy_reward``: the same
score, plus the head's input SignCert-PO reads), and two callbacks evaluate held-out prompts against the gold
reward (``GoldRewardCallback``) and watch the alarms (``AlarmCallback``). OUT is an overopt run directory.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Literal

import torch
import tyro
from datasets import Dataset, load_dataset
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
from trl import GRPOConfig, GRPOTrainer

from overopt.config import AlarmConfig, Chi2Config, GRConfig, RefResetConfig, SignCertConfig
from overopt.integrations.trl import (
    AlarmCallback,
    Chi2Mixin,
    GoldRewardCallback,
    GradientRegularizationMixin,
    SignCertMixin,
    lab_gold,
    proxy_reward,
    ref_reset_args,
    reward_model_gold,
    with_mitigations,
)

MIXINS = {"gr": GradientRegularizationMixin, "signcert": SignCertMixin, "chi2": Chi2Mixin}


@dataclasses.dataclass
class Args:
    out: Path
    """Output directory: an overopt run directory (OUT/runs/<mitigation>/seed<k>/metrics.jsonl)."""
    smoke: bool = False
    """Tiny local models (an untrained policy and RM on the lab's summarize world): runs on a CPU in seconds."""
    lab: Path | None = None
    """An `overopt run` output directory: its SFT policy, proxy RM, prompts and the testbed's gold reward."""
    mitigation: Literal["none", "kl", "gr", "signcert", "chi2", "ref_reset"] = "gr"
    """What the run adds to plain GRPO (kl and ref_reset use beta; signcert runs Dr.GRPO as in its paper)."""
    policy: str = ""
    """Real models: the policy (the SFT model), a Hub id or directory."""
    reward_model: str = ""
    """Real models: the proxy RM, a sequence-classification model with one label."""
    gold_model: str = ""
    """Real models: the gold RM the monitor scores with (its chat template renders the conversation)."""
    dataset: str = ""
    """Real models: a prompt dataset (Hub id or local file) with a `prompt` column."""
    dataset_split: str = "train"
    eval_prompts: int = 256
    """Held-out prompts the monitor evaluates (the dataset's last ones, never trained on)."""
    steps: int = 200
    every: int = 10
    """Evaluate every this many optimiser steps."""
    prompts_per_step: int = 16
    group_size: int = 8
    max_completion_length: int = 128
    learning_rate: float = 1e-6
    beta: float = 0.04
    """KL coefficient of kl and ref_reset."""
    seed: int = 0
    bf16: bool = False
    use_vllm: bool = False
    """Generate the training rollouts with vLLM (colocated); the monitor samples with overopt's sampler."""
    stop_on_alarm: tuple[str, ...] = ()
    """Stop when one of these detectors fires (e.g. kl); all are logged as alarm/*."""
    gr: GRConfig = GRConfig()
    signcert: SignCertConfig = SignCertConfig()
    chi2: Chi2Config = Chi2Config()
    ref_reset: RefResetConfig = RefResetConfig()
    alarm: AlarmConfig = AlarmConfig()


@dataclasses.dataclass
class Setup:
    policy: torch.nn.Module
    tokenizer: object
    reward_funcs: list
    train_prompts: list
    eval_prompts: list
    gold: object


def smoke_setup(args: Args) -> Setup:
    """A tiny summarize world saved and loaded through from_pretrained, as a GPU user's models are."""
    from overopt.models.policy import tiny_llama
    from overopt.models.reward import reward_model_from_backbone
    from overopt.testbeds.summarize import SummarizeSpec, SummarizeTestbed

    testbed = SummarizeTestbed(SummarizeSpec(n_fact_types=12, doc_facts=3, length_budget=4, max_completion_tokens=8))
    path = args.out / "smoke-models" / "policy"
    tiny_llama(testbed.tokenizer, hidden_size=32, num_layers=1, num_heads=2, max_positions=64, seed=0).save_pretrained(
        path
    )
    testbed.tokenizer.save_pretrained(path)
    reward_model_from_backbone(path, seed=0).save_pretrained(args.out / "smoke-models" / "rm")
    return _lab_models(args, testbed, path, args.out / "smoke-models" / "rm", n_train=64, n_eval=32)


def lab_setup(args: Args) -> Setup:
    import yaml

    from overopt.config import ExperimentConfig
    from overopt.testbeds import make_testbed

    cfg = ExperimentConfig.model_validate(yaml.safe_load((args.lab / "config.yaml").read_text()))
    testbed = make_testbed(cfg)
    n_train = max(4 * cfg.rl.prompts_per_step, cfg.pairs.n_prompts)
    return _lab_models(args, testbed, args.lab / "artifacts/sft", args.lab / "artifacts/rm", n_train, args.eval_prompts,
                       seed=cfg.seed)  # fmt: skip


def _lab_models(args: Args, testbed, sft: Path, rm: Path, n_train: int, n_eval: int, seed: int = 0) -> Setup:
    tok = AutoTokenizer.from_pretrained(sft)
    policy = AutoModelForCausalLM.from_pretrained(sft)
    reward_model = AutoModelForSequenceClassification.from_pretrained(rm, num_labels=1).eval()
    decode = testbed.tokenizer.decode  # the lab's prompts as text: TRL tokenises them back to the same ids
    return Setup(
        policy, tok, [proxy_reward(reward_model, tok)],
        [decode(p) for p in testbed.prompts("train", n_train, seed + 2)],
        [decode(p) for p in testbed.prompts("eval", n_eval, seed)], lab_gold(testbed),
    )  # fmt: skip


def real_setup(args: Args) -> Setup:
    missing = [f for f in ("policy", "reward_model", "gold_model", "dataset") if not getattr(args, f)]
    if missing:
        raise SystemExit(f"real models need --{missing[0].replace('_', '-')} (or use --smoke / --lab)")
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    tok = AutoTokenizer.from_pretrained(args.policy)
    policy = AutoModelForCausalLM.from_pretrained(args.policy, dtype=dtype)
    rm_tok = AutoTokenizer.from_pretrained(args.reward_model)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rm = AutoModelForSequenceClassification.from_pretrained(args.reward_model, num_labels=1, dtype=dtype).to(device)
    gold_tok = AutoTokenizer.from_pretrained(args.gold_model)
    gold = AutoModelForSequenceClassification.from_pretrained(args.gold_model, num_labels=1, dtype=dtype).to(device)
    data = load_dataset(args.dataset, split=args.dataset_split)
    prompts = list(data["prompt"])
    if len(prompts) <= args.eval_prompts:
        raise SystemExit(f"--dataset has {len(prompts)} prompts; it needs more than --eval-prompts {args.eval_prompts}")
    return Setup(policy, tok, [proxy_reward(rm, tok, rm_tokenizer=rm_tok)], prompts[: -args.eval_prompts],
                 prompts[-args.eval_prompts :], reward_model_gold(gold, gold_tok))  # fmt: skip


def main(args: Args) -> None:
    if args.smoke:
        args = dataclasses.replace(args, steps=6, every=2, prompts_per_step=4, group_size=4, max_completion_length=8,
                                   learning_rate=3e-3, eval_prompts=32)  # fmt: skip
    setup = smoke_setup(args) if args.smoke else lab_setup(args) if args.lab else real_setup(args)
    random.Random(args.seed).shuffle(setup.train_prompts)
    m = args.mitigation
    config = GRPOConfig(
        output_dir=str(args.out / "trl"), max_steps=args.steps, learning_rate=args.learning_rate,
        per_device_train_batch_size=args.prompts_per_step * args.group_size, num_generations=args.group_size,
        max_completion_length=args.max_completion_length, temperature=1.0, top_k=0, top_p=1.0,
        beta=args.beta if m in ("kl", "ref_reset") else 0.0, seed=args.seed, bf16=args.bf16,
        use_cpu=not torch.cuda.is_available(), use_vllm=args.use_vllm, vllm_mode="colocate",
        logging_steps=args.every, save_strategy="no", report_to=[], disable_tqdm=args.smoke,
        # SignCert-PO's paper runs Dr.GRPO: unnormalised advantages, the constant-length loss normaliser.
        **({"scale_rewards": "none", "loss_type": "dr_grpo"} if m == "signcert" else {}),
        **(ref_reset_args(args.ref_reset) if m == "ref_reset" else {}),
    )  # fmt: skip
    trainer_cls = with_mitigations(GRPOTrainer, MIXINS[m]) if m in MIXINS else GRPOTrainer
    knobs = {"gr": {"gr": args.gr}, "signcert": {"signcert": args.signcert}, "chi2": {"chi2": args.chi2}}.get(m, {})
    trainer = trainer_cls(
        model=setup.policy, reward_funcs=setup.reward_funcs, args=config, processing_class=setup.tokenizer,
        train_dataset=Dataset.from_dict({"prompt": setup.train_prompts}), **knobs,
    )  # fmt: skip
    monitor = GoldRewardCallback(trainer, setup.eval_prompts, gold=setup.gold, out_dir=args.out, every=args.every,
                                 method=m, seed=args.seed)  # fmt: skip
    alarms = AlarmCallback(monitor, stop=args.stop_on_alarm, cfg=args.alarm)
    trainer.add_callback(monitor)
    trainer.add_callback(alarms)
    trainer.train()
    last = monitor.rows[-1]
    print(f"{m}: step {last['step']}, gold {last.get('gold_reward', float('nan')):.3f}, proxy "
          f"{last['proxy_reward']:.3f}, KL {last['kl_sft']:.3f} -> {args.out} (overopt report {args.out})")  # fmt: skip
    if alarms.stop is not None:
        print(f"stopped by alarm {alarms.stop['alarm']} at step {alarms.stop['step']}")


if __name__ == "__main__":
    main(tyro.cli(Args))
