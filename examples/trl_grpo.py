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
from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

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
from overopt.models.attention import use_pad_safe_sdpa

MIXINS = {"gr": GradientRegularizationMixin, "signcert": SignCertMixin, "chi2": Chi2Mixin}
SIZES = {  # mode -> eval_prompts, steps, every, prompts_per_step, group_size, max_completion_length, lr, beta
    "smoke": (32, 6, 2, 4, 4, 8, 3e-3, 0.04),
    "real": (256, 200, 10, 16, 8, 128, 1e-6, 0.04),
}
SIZE_FIELDS = ("eval_prompts", "steps", "every", "prompts_per_step", "group_size", "max_completion_length",
               "learning_rate", "beta")  # fmt: skip


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
    name: str = ""
    """The run's name in OUT/runs/ (default: the mitigation), e.g. to keep two strengths of one method apart."""
    policy: str = ""
    """Real models: the policy (the SFT model), a Hub id or directory."""
    reward_model: str = ""
    """Real models: the proxy RM, a sequence-classification model with one label."""
    gold_model: str = ""
    """Real models: the gold RM the monitor scores with (its chat template renders the conversation)."""
    dataset: str = ""
    """Real models: a prompt dataset (Hub id or local file) with a `prompt` column."""
    dataset_split: str = "train"
    trainer: Literal["grpo", "rloo"] = "grpo"
    """TRL's GRPOTrainer or RLOOTrainer (KL in the reward, k1, as the lab's default RL)."""
    # Sizes: None takes the mode's value (SIZES; --lab: the lab's own rl.* and eval.*).
    eval_prompts: int | None = None
    """Held-out prompts the monitor evaluates (real models: the dataset's last ones, never trained on)."""
    steps: int | None = None
    every: int | None = None
    """Evaluate every this many optimiser steps."""
    prompts_per_step: int | None = None
    group_size: int | None = None
    max_completion_length: int | None = None
    learning_rate: float | None = None
    beta: float | None = None
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
    sizes: dict  # the mode's defaults of SIZE_FIELDS


def sized(args: Args, defaults: tuple | dict) -> Args:
    """Fill the size fields the user left at None from the mode's defaults."""
    defaults = dict(zip(SIZE_FIELDS, defaults)) if isinstance(defaults, tuple) else defaults
    return dataclasses.replace(args, **{f: defaults[f] for f in SIZE_FIELDS if getattr(args, f) is None})


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
    return _lab_models(testbed, path, args.out / "smoke-models" / "rm", n_train=64, args=sized(args, SIZES["smoke"]))


def lab_setup(args: Args) -> Setup:
    import yaml

    from overopt.config import ExperimentConfig
    from overopt.testbeds import make_testbed

    cfg = ExperimentConfig.model_validate(yaml.safe_load((args.lab / "config.yaml").read_text()))
    testbed = make_testbed(cfg)
    rl = cfg.rl
    lab = (cfg.eval.n_prompts, rl.steps, cfg.eval.every, rl.prompts_per_step, rl.group_size,
           testbed.max_completion_tokens, rl.lr, rl.kl.coef)  # fmt: skip
    n_train = max(4 * rl.prompts_per_step, cfg.pairs.n_prompts)  # the lab's RL prompts (pipeline._rl_prompts)
    return _lab_models(testbed, args.lab / "artifacts/sft", args.lab / "artifacts/rm", n_train, sized(args, lab),
                       seed=cfg.seed)  # fmt: skip


def _lab_models(testbed, sft: Path, rm: Path, n_train: int, args: Args, seed: int = 0) -> Setup:
    tok = AutoTokenizer.from_pretrained(sft)
    policy = AutoModelForCausalLM.from_pretrained(sft)
    reward_model = AutoModelForSequenceClassification.from_pretrained(rm, num_labels=1).eval()
    decode = testbed.tokenizer.decode  # the lab's prompts as text: TRL tokenises them back to the same ids
    return Setup(
        policy, tok, [proxy_reward(reward_model, tok)],
        [decode(p) for p in testbed.prompts("train", n_train, seed + 2)],
        [decode(p) for p in testbed.prompts("eval", args.eval_prompts, seed)], lab_gold(testbed),
        {f: getattr(args, f) for f in SIZE_FIELDS},
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
    args = sized(args, SIZES["real"])
    data = load_dataset(args.dataset, split=args.dataset_split)
    prompts = list(data["prompt"])
    if len(prompts) <= args.eval_prompts:
        raise SystemExit(f"--dataset has {len(prompts)} prompts; it needs more than --eval-prompts {args.eval_prompts}")
    return Setup(policy, tok, [proxy_reward(rm, tok, rm_tokenizer=rm_tok)], prompts[: -args.eval_prompts],
                 prompts[-args.eval_prompts :], reward_model_gold(gold, gold_tok),
                 {f: getattr(args, f) for f in SIZE_FIELDS})  # fmt: skip


def main(args: Args) -> None:
    # bfloat16 on CUDA: left padding's pad queries must attend to some key, else GRPO's first update gives NaN
    # gradients (benchmarks/RESULTS.md, "GPU check"); pad positions' outputs change, no real position's does.
    use_pad_safe_sdpa()
    setup = smoke_setup(args) if args.smoke else lab_setup(args) if args.lab else real_setup(args)
    args = sized(args, setup.sizes)
    random.Random(args.seed).shuffle(setup.train_prompts)
    m = args.mitigation
    common = dict(
        output_dir=str(args.out / "trl"), max_steps=args.steps, learning_rate=args.learning_rate,
        lr_scheduler_type="constant", per_device_train_batch_size=args.prompts_per_step * args.group_size,
        num_generations=args.group_size, max_completion_length=args.max_completion_length, temperature=1.0, top_k=0,
        top_p=1.0, beta=args.beta if m in ("kl", "ref_reset") else 0.0, seed=args.seed, bf16=args.bf16,
        use_cpu=not torch.cuda.is_available(), use_vllm=args.use_vllm, vllm_mode="colocate",
        logging_steps=args.every, save_strategy="no", report_to=[], disable_tqdm=args.smoke,
        **(ref_reset_args(args.ref_reset) if m == "ref_reset" else {}),
    )  # fmt: skip
    if args.trainer == "rloo":
        base, config = RLOOTrainer, RLOOConfig(**common, normalize_advantages=False)
    else:  # SignCert-PO's paper runs Dr.GRPO: unnormalised advantages, the constant-length loss normaliser
        dr_grpo = {"scale_rewards": "none", "loss_type": "dr_grpo"} if m == "signcert" else {}
        base, config = GRPOTrainer, GRPOConfig(**common, **dr_grpo)
    trainer_cls = with_mitigations(base, MIXINS[m]) if m in MIXINS else base
    knobs = {"gr": {"gr": args.gr}, "signcert": {"signcert": args.signcert}, "chi2": {"chi2": args.chi2}}.get(m, {})
    trainer = trainer_cls(
        model=setup.policy, reward_funcs=setup.reward_funcs, args=config, processing_class=setup.tokenizer,
        train_dataset=Dataset.from_dict({"prompt": setup.train_prompts}), **knobs,
    )  # fmt: skip
    monitor = GoldRewardCallback(trainer, setup.eval_prompts, gold=setup.gold, out_dir=args.out, every=args.every,
                                 method=args.name or m, seed=args.seed)  # fmt: skip
    alarms = AlarmCallback(monitor, stop=args.stop_on_alarm, cfg=args.alarm)
    trainer.add_callback(monitor)
    trainer.add_callback(alarms)
    trainer.train()
    last = monitor.rows[-1]
    print(f"{args.name or m}: step {last['step']}, gold {last.get('gold_reward', float('nan')):.3f}, proxy "
          f"{last['proxy_reward']:.3f}, KL {last['kl_sft']:.3f} -> {args.out} (overopt report {args.out})")  # fmt: skip
    if alarms.stop is not None:
        print(f"stopped by alarm {alarms.stop['alarm']} at step {alarms.stop['step']}")


if __name__ == "__main__":
    main(tyro.cli(Args))
