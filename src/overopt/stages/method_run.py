"""One method × seed: policy optimisation with the method's plug-ins, in one phase or OCRM's rounds.

1. π_θ ← copy of π_SFT; π_ref ← π_SFT (a private copy when the method moves it);
2. reward source: the proxy RM, or the ensemble of k RMs;
3. for each phase (1, or OCRM's rounds + 1):
     a. (OCRM, phase k ≥ 1) importance weights of the stored pairs under π_k vs π_SFT (β_w fixed, or
        chosen for a target ESS), RM_k retrained from scratch on the SAME pairs, KL anchor reset to
        π_k, PPO value model from RM_k; the phase's learning rate decays linearly (ocrm.phase_lr_decay);
     b. train_policy for the phase's share of rl.steps, evaluated on held-out prompts, with the
        mechanism figures (overopt.mechanisms) when eval.mechanisms is on.
Checkpoints (overopt.checkpoint) carry the models, the loop's state and the phase, so that a run
killed at any moment resumes into the same metrics and weights.
"""

from __future__ import annotations

import copy
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from datasets import Dataset, DatasetDict
from transformers import AutoModelForTokenClassification, PreTrainedModel

from overopt import distributed, faults, mechanisms, trackers
from overopt.checkpoint import Checkpoint, Checkpointer, CheckpointError
from overopt.config import ExperimentConfig
from overopt.io import append_jsonl, fsync_size, save_tensors, save_weights, trainable_tensors, write_json
from overopt.methods import MethodContext, MethodPlan
from overopt.mitigations.ocrm import ocrm_pair_log_ratios, pair_logliks
from overopt.mitigations.protocols import Figures, RewardSource
from overopt.mitigations.rewards import EnsembleRewardModel, ProcessRewardModel, ProxyRewardModel, RuleReward
from overopt.models.policy import merged_copy
from overopt.models.reward import reward_model_from_backbone
from overopt.ops import STATE_SIZES, beta_for_target_ess, ess_from_log_weights, order_disagreement
from overopt.progress import StageProgress
from overopt.stages import alarms
from overopt.stages.evaluate import evaluate_policy
from overopt.stages.rl import train_policy
from overopt.stages.rm import pair_margins, train_reward_model
from overopt.testbeds.base import Testbed

SAMPLE_BATCH = 256
LOGS = ("metrics.jsonl", "samples.jsonl")  # a run's logs, cut back to a checkpoint's lengths on resume


@dataclass
class Lab:
    """The shared artifacts every run of an experiment starts from."""

    cfg: ExperimentConfig
    testbed: Testbed
    sft_dir: Path | str  # the hf testbed: the given policy's Hub id or directory
    rm_backbone: Path | str  # what proxy RMs start from: sft_dir, or an SFT model of the RM's own size (rm.*)
    sft_policy: PreTrainedModel
    pairs: DatasetDict | None  # the proxy's labelled data: preference pairs, judged answers, or None (rule)
    reward_models: Callable[[int], list[PreTrainedModel]]  # k -> the first k proxy RMs (trained on demand)
    train_prompts: list[list[int]]
    eval_ids: torch.Tensor
    eval_mask: torch.Tensor
    run_fingerprints: dict[Path, str] = field(default_factory=dict)  # run directory -> configuration it needs
    # (alarm.heads, alarm.head_pairs) -> the extra heads of head_std: fitted on RM_0 and its pairs, once per lab
    alarm_heads: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)
    heldout_rm: PreTrainedModel | None = None  # the validation RM of eval.heldout_rm_prompts (never optimised)
    # (n, ocrm.truncate_tokens) -> π_SFT's log-likelihoods of the first n training pairs (the alarms' pairs_ess
    # reads alarm.pairs of them, OCRM's refits all): π_SFT never changes, so once per lab and process
    sft_pair_logliks: dict[tuple[int, int | None], tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)


def phase_steps(total: int, phases: int) -> list[int]:
    """Split `total` updates into `phases` near-equal consecutive shares."""
    return [total // phases + (1 if i < total % phases else 0) for i in range(phases)]


def run_method(
    lab: Lab, plan: MethodPlan, cfg: ExperimentConfig, seed: int, run_dir: Path, name: str, checkpoints: Checkpointer
) -> None:
    """Train and evaluate `plan` (configured by `cfg`, which may be a sweep variant of lab.cfg) as run `name`.

    Resumes from the newest checkpoint in `checkpoints` (metrics written after it are dropped, so the
    resumed run writes exactly the lines the uninterrupted run would) and writes one whenever it is due.
    """
    rl = plan.rl
    writes = distributed.is_main()  # several processes: the main one writes the run's files
    resume = checkpoints.load()
    run_state = resume.state["run"] if resume is not None else {"phase": 0, "extra": {}, "elapsed_s": 0.0}
    mech_on = cfg.eval.mechanisms
    tracking = trackers.RunTrackers()  # --report_to: tracker runs that mirror metrics.jsonl (main process)
    if writes:
        if resume is not None:
            _truncate_logs(run_dir, run_state["logs"], resume.directory)
        else:  # nothing to resume: whatever an earlier attempt left is dropped
            shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True, exist_ok=True)
        tracking = trackers.open_run(cfg, name, seed, run_dir / "metrics.jsonl", run_state.get("trackers"))
    # 1. Policy and reference.
    # What RL trains (hf: the policy with LoRA adapters); the reference stays the SFT model.
    policy = lab.testbed.trainable_policy(copy.deepcopy(lab.sft_policy), seed).train()
    ref_policy = copy.deepcopy(lab.sft_policy) if plan.moves_reference else lab.sft_policy
    # 2. Reward source (a resumed OCRM round: its refitted RM).
    if run_state["phase"] > 0:
        source: RewardSource = ProxyRewardModel(_restored_ocrm_rm(lab, resume), cfg.compute_once)
    else:
        source = reward_source(lab, plan, cfg)
    value_model = None
    if rl.algo == "ppo":  # the value model starts from the RM, or from the SFT backbone under a rule reward
        # Under a PRM it predicts the aggregation state of the future steps (ops.token_returns): k outputs.
        states = STATE_SIZES[rl.step_return[0]]
        outputs = states if lab.testbed.proxy == "process" and plan.ensemble is None else 1
        value_model = _value_model_from(source.models()[0] if source.models() else lab.sft_policy, outputs)
    if resume is not None:
        resume.load_model("policy", policy)
        if plan.moves_reference:
            resume.load_model("ref_policy", ref_policy)
        if value_model is not None:
            resume.load_model("value", value_model)
    start = time.perf_counter() - run_state["elapsed_s"]
    extra: Figures = run_state["extra"]
    phase = run_state["phase"]
    mech_reference: dict | None = run_state.get("mech_reference")  # proxy and gold on SFT samples (step 0)
    rm0 = ProxyRewardModel(lab.reward_models(1)[0], cfg.compute_once) if plan.ocrm and mech_on else None
    # Alarms (overopt.detectors): every evaluation logs alarm/*; with rl.stop_on_alarm the run stops when
    # one fires, keeping the policy of the last calm evaluation (trainable tensors) for the roll-back.
    monitor = alarms.AlarmMonitor(cfg.alarm, rl.stop_alarms, run_state.get("alarms"))
    last_good: dict[str, torch.Tensor] | None = run_state.get("last_good")
    stop: dict | None = None

    def on_eval(step: int, train_figures: Figures) -> bool:
        nonlocal mech_reference, last_good, stop
        metrics, samples, mech_reference = evaluation(
            lab, cfg, seed, policy, source, step, mech_reference, rm0 if phase > 0 else None
        )
        row = {"step": step, **metrics, "wall_s": time.perf_counter() - start, **train_figures, **extra}
        row.update(monitor.update(row))
        if writes:
            log_evaluation(run_dir, tracking, row, samples)
        if not rl.stop_alarms:
            return False
        if monitor.calm():
            last_good = trainable_tensors(policy)
        stop = monitor.stopped()
        if stop is not None:
            stop["gold_reward"] = row.get("gold_reward")
        return stop is not None

    def on_step_end(step: int, loop_state: Callable[[], dict]) -> None:
        if not (writes and checkpoints.due()):
            return
        models = {"policy": policy}
        if plan.moves_reference:
            models["ref_policy"] = ref_policy
        if value_model is not None:
            models["value"] = value_model
        if phase > 0:
            models["ocrm_rm"] = source.models()[0]
        logs = {log: fsync_size(run_dir / log) for log in LOGS}
        run = {"phase": phase, "extra": extra, "elapsed_s": time.perf_counter() - start, "logs": logs,
               "mech_reference": mech_reference, "trackers": tracking.state(), "alarms": monitor.state_dict(),
               **({"last_good": last_good} if last_good is not None else {})}  # fmt: skip
        checkpoints.save(step, {"run": run, "loop": loop_state()}, models)

    # Rollouts from a colocated vLLM engine (rl.generation=vllm), started from the policy; it gets the trained
    # weights whenever they change. The evaluation keeps the lab's own sampler, whose log-probs are exact.
    generator = None
    if rl.generation == "vllm":
        from overopt.vllm_sampling import VLLMSampler

        longest = max(map(len, lab.train_prompts)) + lab.testbed.max_completion_tokens  # what a rollout can reach
        generator = VLLMSampler(policy, run_dir / "vllm_model", rl.vllm_gpu_memory_utilization, seed, longest)

    # 3. Phases (OCRM: rounds + 1 of them).
    shares = phase_steps(rl.steps, cfg.ocrm.rounds + 1 if plan.ocrm else 1)
    loop = resume.state["loop"] if resume is not None else None
    for phase_k, steps in enumerate(shares):
        offset = sum(shares[:phase_k])
        if phase_k < phase:
            continue  # finished before the checkpoint
        if loop is not None and loop["step"] == offset + steps:
            loop = None  # the checkpoint is this phase's last step
            continue
        if phase_k > phase:
            phase = phase_k
            # 3a. OCRM: re-weight the same pairs under π_k, refit the RM (from scratch, or from RM_{k-1} with
            # ocrm.warm_start), move the anchor.
            refit = checkpoints.child(f"ocrm_round{phase}")
            with StageProgress(f"ocrm round {phase} rm") as progress:
                rm, figures = _ocrm_refit(lab, cfg, policy, source.models()[0], progress, refit)
            refit.clear()
            source = ProxyRewardModel(rm, cfg.compute_once)
            extra = {**figures, "ocrm/round": phase}
            if plan.uses_kl:
                ref_policy = merged_copy(policy).eval()  # LoRA: a plain model, like the SFT anchor
            if value_model is not None:
                value_model = _value_model_from(rm)
        labelled = lab.pairs["train"] if lab.pairs is not None else None
        ctx = MethodContext(cfg, policy, value_model, lab.sft_policy, source, lab.testbed, seed, labelled)
        train_mechanisms = partial(mechanisms.training_figures, lab.testbed, rl.group_size) if mech_on else None
        with StageProgress(f"rl {name} seed{seed}" + (f" phase {phase}" if len(shares) > 1 else "")) as progress:
            train_policy(
                rl, policy=policy, ref_policy=ref_policy, reward_source=source, value_model=value_model,
                testbed=lab.testbed, train_prompts=lab.train_prompts, seed=seed, eval_every=cfg.eval.every,
                on_eval=on_eval, progress=progress, mitigations=plan.mitigations(ctx), steps=steps,
                step_offset=offset, evaluate_first=phase == 0, resume=loop, on_step_end=on_step_end,
                lr_decay=plan.ocrm and cfg.ocrm.phase_lr_decay, train_mechanisms=train_mechanisms,
                share_prefix=cfg.compute_once, generator=generator,
            )  # fmt: skip
        loop = None
        if stop is not None:
            break
    if writes:
        save_weights(policy, run_dir / "policy.safetensors")  # at a stop: the policy where the alarm fired
        if stop is not None:
            save_tensors(last_good, run_dir / "policy_last_good.safetensors")
            write_json(run_dir / "alarm_stop.json", stop)
    tracking.finish()


def evaluation(
    lab: Lab,
    cfg: ExperimentConfig,
    seed: int,
    policy: PreTrainedModel,
    source: RewardSource,
    step: int,
    mech_reference: dict | None,
    rm0: RewardSource | None = None,
) -> tuple[Figures, list[dict], dict | None]:
    """One held-out evaluation on the lab's contract, with the mechanism figures when eval.mechanisms is on
    and the measured alarm signals: its metrics, its logged samples, and the reference of both (the SFT
    policy's samples, set at step 0)."""
    metrics, samples, scored = evaluate_policy(
        policy, lab.sft_policy, source, lab.testbed, lab.eval_ids, lab.eval_mask,
        temperature=cfg.eval.temperature, seed=10_000 + seed, batch_size=SAMPLE_BATCH,
        n_logged_samples=cfg.eval.n_logged_samples, pairs=cfg.eval.mechanisms,
        heldout=ProxyRewardModel(lab.heldout_rm, cfg.compute_once) if lab.heldout_rm is not None else None,
        compute_once=cfg.compute_once,
    )  # fmt: skip
    pad = lab.testbed.tokenizer.pad_token_id
    labelled = lab.pairs["train"] if lab.pairs is not None and "chosen_ids" in lab.pairs["train"].column_names else None
    if step == 0:
        mech_reference = alarms.sft_reference(scored, cfg.alarm)
        if cfg.eval.mechanisms:
            mech_reference.update(mechanisms.sft_reference(scored))
        key = (cfg.alarm.heads, cfg.alarm.head_pairs)
        if key[0] and labelled is not None and scored.hidden is not None:
            if key not in lab.alarm_heads:
                subset = labelled.select(range(min(key[1], len(labelled))))
                diffs = alarms.pair_feature_differences(lab.reward_models(1)[0], subset, pad, SAMPLE_BATCH)
                lab.alarm_heads[key] = alarms.fit_heads(diffs, key[0], seed=lab.cfg.seed)
            mech_reference["alarm_heads"] = lab.alarm_heads[key]
    if cfg.eval.mechanisms:
        metrics.update(mechanisms.evaluation_figures(scored, mech_reference, rm0))
    alarm_pairs = labelled.select(range(min(cfg.alarm.pairs, len(labelled)))) if labelled is not None else None
    sft_logliks = None
    if alarm_pairs is not None and len(alarm_pairs):
        sft_logliks = sft_pair_logliks(lab, alarm_pairs, cfg.ocrm.truncate_tokens)
    metrics.update(alarms.measured_figures(
        scored, mech_reference, policy=policy, sft_policy=lab.sft_policy, pad_id=pad, pairs=alarm_pairs,
        truncate_tokens=cfg.ocrm.truncate_tokens, rm0_features=rm0 is None, sft_logliks=sft_logliks,
    ))  # fmt: skip
    return metrics, samples, mech_reference


def log_evaluation(run_dir: Path, tracking: trackers.RunTrackers, row: dict, samples: list[dict]) -> None:
    """Append an evaluation's row to metrics.jsonl (and the trackers) and its samples to samples.jsonl."""
    append_jsonl(run_dir / "metrics.jsonl", row)
    tracking.log(row)
    faults.point("eval.logged")
    append_jsonl(run_dir / "samples.jsonl", {"step": row["step"], "samples": samples})


def reward_source(lab: Lab, plan: MethodPlan, cfg: ExperimentConfig) -> RewardSource:
    """What the method optimises: the testbed's rule, an ensemble of the first k proxy RMs, or the proxy RM."""
    if lab.testbed.proxy == "rule":
        return RuleReward(lab.testbed)
    member = partial(ProxyRewardModel, share_prefix=cfg.compute_once)
    if lab.testbed.proxy == "process":  # a PRM: its step rewards aggregated into the return (rl.aggregation)
        member = partial(ProcessRewardModel, testbed=lab.testbed, form=cfg.rl.step_return)
    if plan.ensemble is not None:
        e = cfg.ensemble
        return EnsembleRewardModel(lab.reward_models(e.k), plan.ensemble, e.uwo_lambda, e.ddof, member=member)
    return member(lab.reward_models(1)[0])


def _truncate_logs(run_dir: Path, sizes: dict[str, int], checkpoint: Path) -> None:
    """Drop what the run logged after its checkpoint (it is logged again, identically, on the way)."""
    for log, size in sizes.items():
        path = run_dir / log
        if not path.exists() or path.stat().st_size < size:
            raise CheckpointError(
                f"{path}: shorter than checkpoint {checkpoint} recorded; "
                f"delete {checkpoint.parent} to rerun from scratch"
            )
        os.truncate(path, size)


def _restored_ocrm_rm(lab: Lab, resume: Checkpoint) -> PreTrainedModel:
    """The RM refitted in the OCRM round being resumed: the SFT backbone with the checkpoint's weights."""
    rm = reward_model_from_backbone(lab.rm_backbone, seed=0, **lab.testbed.load_kwargs)
    resume.load_model("ocrm_rm", rm)
    return rm.to(lab.sft_policy.device).eval()


def _value_model_from(reward_model: PreTrainedModel, outputs: int = 1) -> PreTrainedModel:
    """A per-token value model whose backbone and head start from the RM (as in TRL's PPO and OCRM); with
    several outputs (an aggregation state) the head starts fresh."""
    config = copy.deepcopy(reward_model.config)
    config.num_labels = outputs
    value = AutoModelForTokenClassification.from_config(config)
    state = reward_model.state_dict()
    if outputs > 1:
        head = {k for k, v in value.state_dict().items() if k in state and v.shape != state[k].shape}
        state = {k: v for k, v in state.items() if k not in head}
    value.load_state_dict(state, strict=False)  # the token head adds a bias
    value = value.to(device=reward_model.device, dtype=reward_model.dtype)
    return value


def sft_pair_logliks(lab: Lab, pairs: Dataset, truncate_tokens: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """π_SFT's `pair_logliks` of `pairs`, the first len(pairs) of the lab's training pairs: computed once per lab
    and process, in the same batches as every time, so every caller gets the numbers it would compute itself."""
    key = (len(pairs), truncate_tokens)
    if key not in lab.sft_pair_logliks:
        lab.sft_pair_logliks[key] = pair_logliks(lab.sft_policy, pairs, lab.testbed.tokenizer.pad_token_id,
                                                 truncate_tokens)  # fmt: skip
    return lab.sft_pair_logliks[key]


def _ocrm_refit(
    lab: Lab,
    cfg: ExperimentConfig,
    policy: PreTrainedModel,
    previous: PreTrainedModel,
    progress: StageProgress,
    checkpoints: Checkpointer,
) -> tuple[PreTrainedModel, Figures]:
    """RM_k on the pairs re-weighted towards π_k (`previous` is RM_{k-1}, which ocrm.warm_start starts from)."""
    o, r = cfg.ocrm, cfg.rm
    pad = lab.testbed.tokenizer.pad_token_id
    train, heldout = lab.pairs["train"], lab.pairs["test"]
    # log w = β_w·S with S = log ρ_α(y_c) + log ρ_α(y_r): β_w as given, or the one whose ESS/N hits the target.
    ratios = ocrm_pair_log_ratios(policy, lab.sft_policy, train, alpha=o.alpha, pad_id=pad,
                                  truncate_tokens=o.truncate_tokens,
                                  sft_logliks=sft_pair_logliks(lab, train, o.truncate_tokens))  # fmt: skip
    beta_w = o.beta_w if o.target_ess_frac is None else beta_for_target_ess(ratios, o.target_ess_frac)
    log_w = beta_w * ratios
    ess = ess_from_log_weights(log_w).item()
    if o.warm_start:
        # The lab's speed lever: RM_{k-1} trained on for a few passes (a copy: RM_0 is the lab's, shared by runs).
        rm, epochs = copy.deepcopy(previous).train(), o.warm_start_epochs
    else:
        # RM_k is trained exactly as RM_0 was (its seed: head init and data order), so that with uniform
        # weights (β_w = 0) the refit is RM_0 again and any change is the re-weighting's.
        load = lab.testbed.load_kwargs  # hf: float32 weights, hf.trust_remote_code
        rm = reward_model_from_backbone(lab.rm_backbone, seed=lab.cfg.seed, **load).to(lab.sft_policy.device)
        epochs = r.epochs
    metrics = train_reward_model(
        rm, train, heldout, epochs=epochs, batch_size=r.batch_size, lr=r.lr, pad_id=pad, seed=lab.cfg.seed,
        progress=progress, log_weights=log_w, normalization=o.normalization, checkpoints=checkpoints,
        share_prefix=cfg.compute_once, train_accuracy=False,
    )  # fmt: skip
    # The refit's effective strength: held-out pairs that RM_k orders unlike RM_0 (0 = the same RM again).
    share = cfg.compute_once
    disagreement = order_disagreement(
        pair_margins(rm, heldout, pad, SAMPLE_BATCH, share),
        pair_margins(lab.reward_models(1)[0], heldout, pad, SAMPLE_BATCH, share),
    ).item()
    return rm.eval(), {
        "ocrm/beta_w": beta_w,
        "ocrm/ess": ess,
        "ocrm/ess_frac": ess / len(log_w),
        "ocrm/log_weight_std": log_w.std().item(),
        "ocrm/rm_heldout_accuracy": metrics["heldout_accuracy"],
        "ocrm/refit_disagreement": disagreement,
    }
