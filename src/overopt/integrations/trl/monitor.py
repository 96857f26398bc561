"""The gold monitor and the alarms as TRL callbacks: held-out evaluations of a TRL run on overopt's contract.

``GoldRewardCallback`` runs the lab's own evaluation (overopt.stages.evaluate.evaluate_policy) every
``every`` optimiser steps, at step 0 and at the end: one completion per held-out prompt, sampled by
overopt's sampler from the trainer's policy (pure ancestral sampling at T = 1, so that log-probs, and the
KL estimate, are exact), scored by the gold reward and by the trainer's own reward functions (their
weighted sum: what the trainer optimises), with kl_sft = Σ_t log π_θ − log π_ref on those samples, entropy
and length. It logs them through the trainer's logger (so wandb, tensorboard and trackio receive them) and
writes an overopt run directory, OUT/runs/<method>/seed<k>/{metrics,samples}.jsonl plus OUT/config.yaml,
that ``overopt report OUT`` turns into the usual report.

``AlarmCallback`` adds overopt.detectors' gold-free alarms to every evaluation (``alarm/<name>``,
``alarm/<name>/fired``) and stops training (``control.should_training_stop``) when one of its ``stop``
detectors fires, saving the policy of the last calm evaluation for the roll-back.

The evaluation runs on every process (the same prompts and seed, so the same figures) and only the main
process writes. Sampling gathers nothing: a policy sharded by FSDP or DeepSpeed ZeRO-3 is refused. The
trainer's vLLM engine is not used for these samples: overopt's sampler gives the exact log-probs the KL
estimate needs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import yaml
from accelerate.utils import DistributedType
from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer, TrainerCallback

from overopt import detectors
from overopt.config import AlarmConfig
from overopt.integrations.trl.rewards import pad_id, prompt_token_ids, trainer_proxy
from overopt.integrations.trl.trainers import unpatched_copy
from overopt.io import append_jsonl, save_tensors, trainable_tensors, write_json
from overopt.mitigations.protocols import Figures, RewardScores
from overopt.models.reward import score_texts
from overopt.sampling import Rollout, pad_left, rollout_from_tokens
from overopt.stages import alarms
from overopt.stages.evaluate import EvalSamples, evaluate_policy

Gold = Callable[..., Sequence[float]]
LOGGED = {  # metrics.jsonl key -> the key the trainer's logger receives
    "proxy_reward": "proxy/reward",
    "gold_reward": "gold/reward",
    "kl_sft": "kl_sft",
    "entropy": "overopt/entropy",
    "mean_length": "overopt/mean_length",
    "eos_rate": "overopt/eos_rate",
}


MITIGATION_FIGURES = ("gr/", "signcert/", "chi2/", "ensemble/", "par/")  # logged by the mixins / reward functions


def reward_model_gold(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, batch_size: int = 16) -> Gold:
    """A gold reward from a sequence-classification RM (e.g. Skywork-Reward): its score of the conversation
    [user: prompt, assistant: completion] rendered by its chat template (as the hf testbed scores)."""
    model.eval()

    def gold(prompts, completions, **kwargs) -> list[float]:
        return score_texts(model, tokenizer, list(prompts), list(completions), batch_size).tolist()

    return gold


def lab_gold(testbed) -> Gold:
    """An overopt testbed's gold reward on the generated ids (the lab's worlds: the example's --smoke and --lab)."""

    def gold(prompt_ids, completion_ids, **kwargs) -> list[float]:
        r = rollout_from_tokens(prompt_ids, completion_ids, testbed.tokenizer.pad_token_id)
        return testbed.gold_reward(r.prompt_ids, r.completion_ids, r.completion_mask).double().tolist()

    return gold


class _Testbed:
    """What evaluate_policy reads of a testbed, for a TRL run: the tokenizer, the budget and the gold."""

    name = "trl"

    def __init__(self, tokenizer, max_completion_tokens: int, gold: Gold | None, prompt_of: dict):
        self.tokenizer, self.max_completion_tokens, self.gold, self.prompt_of = (
            tokenizer, max_completion_tokens, gold, prompt_of,
        )  # fmt: skip

    def gold_components(self, prompt_ids, completion_ids, completion_mask) -> dict[str, torch.Tensor]:
        """{"reward": gold}; NaN without a gold (the monitor drops it from the row). Prompts come left-padded
        without their mask: the pads before the first other token are the padding (a chat prompt may hold
        the pad token itself, e.g. EOS standing in for it)."""
        if self.gold is None:
            return {"reward": torch.full((completion_ids.shape[0],), float("nan"), dtype=torch.float64)}
        prompt_mask = (prompt_ids != pad_id(self.tokenizer)).long().cummax(1).values
        prompt_rows, completions = Rollout(prompt_ids, prompt_mask, completion_ids, completion_mask).token_lists()
        values = self.gold(
            prompts=[self.prompt_of[tuple(p)] for p in prompt_rows],
            completions=self.tokenizer.batch_decode(completions, skip_special_tokens=True),
            completion_ids=completions, prompt_ids=prompt_rows,
        )  # fmt: skip
        return {"reward": torch.as_tensor(list(values), dtype=torch.float64)}

    def gold_from_components(self, components: dict[str, torch.Tensor]) -> torch.Tensor:
        return components["reward"]


class _TrainerProxy:
    """The trainer's reward functions as an overopt RewardSource (their weighted sum)."""

    def __init__(self, trainer, tokenizer, prompt_of: dict):
        self.trainer, self.tokenizer, self.prompt_of = trainer, tokenizer, prompt_of

    def __call__(self, rollout: Rollout) -> RewardScores:
        prompt_rows, completions = rollout.token_lists()
        texts = self.tokenizer.batch_decode(completions, skip_special_tokens=True)
        return trainer_proxy(self.trainer, rollout, [self.prompt_of[tuple(p)] for p in prompt_rows], texts)

    def models(self) -> list[PreTrainedModel]:
        return []


def _refuse_sharded(trainer) -> None:
    accelerator = trainer.accelerator
    if accelerator.distributed_type == DistributedType.FSDP:
        raise ValueError("GoldRewardCallback samples from the full policy: FSDP shards it (use DDP or ZeRO-1/2)")
    if accelerator.distributed_type == DistributedType.DEEPSPEED and accelerator.state.deepspeed_plugin.zero_stage == 3:
        raise ValueError("GoldRewardCallback samples from the full policy: DeepSpeed ZeRO-3 shards it (use ZeRO-1/2)")


class GoldRewardCallback(TrainerCallback):
    """Held-out gold / proxy / KL evaluations of a TRL GRPO or RLOO run, written as an overopt run directory.

    ``trainer``: the GRPOTrainer / RLOOTrainer (its policy, tokenizer, reward functions and weights).
    ``prompts``: held-out prompts as the dataset holds them (text, or lists of messages).
    ``gold``: called as ``gold(prompts=, completions=, completion_ids=, prompt_ids=)`` (completions decoded
    without special tokens; a TRL reward function works) returning one float per completion, e.g.
    ``reward_model_gold(model, tokenizer)``; None logs no gold (proxy, KL and alarms only).
    ``reference``: the KL anchor reported as kl_sft; None takes a frozen copy of the policy at the start of
    training (a LoRA policy: its merged weights), which stays the SFT policy when the trainer's own reference
    moves (``sync_ref_model``).
    """

    def __init__(
        self,
        trainer,
        prompts: Sequence,
        *,
        gold: Gold | None = None,
        out_dir: str | Path,
        every: int = 10,
        method: str = "trl",
        seed: int = 0,
        max_new_tokens: int | None = None,
        temperature: float = 1.0,
        batch_size: int = 64,
        n_logged_samples: int = 6,
        reference: PreTrainedModel | None = None,
    ):
        if every <= 0:
            raise ValueError(f"every must be > 0, got {every}")
        if not prompts:
            raise ValueError("GoldRewardCallback needs held-out prompts")
        self.trainer, self.gold, self.every, self.seed = trainer, gold, every, seed
        self.out_dir, self.method = Path(out_dir), method
        self.run_dir = self.out_dir / "runs" / method / f"seed{seed}"
        self.tokenizer = trainer.processing_class
        ids = prompt_token_ids(self.tokenizer, prompts)
        self.prompt_of = {tuple(i): p for i, p in zip(ids, prompts)}
        self.eval_ids, self.eval_mask = pad_left(ids, pad_id(self.tokenizer))
        budget = max_new_tokens or trainer.args.max_completion_length
        self.testbed = _Testbed(self.tokenizer, budget, gold, self.prompt_of)
        self.temperature, self.batch_size, self.n_logged_samples = temperature, batch_size, n_logged_samples
        self.reference = reference
        self.listeners: list = []  # AlarmCallback: figures of each evaluation, and a stop
        self.rows: list[dict] = []
        self.start = time.perf_counter()

    @property
    def writes(self) -> bool:
        return self.trainer.accelerator.is_main_process

    def policy(self) -> PreTrainedModel:
        return self.trainer.accelerator.unwrap_model(self.trainer.model)

    # -- the evaluation ------------------------------------------------------------------------------
    def evaluate(self, step: int) -> tuple[dict, EvalSamples]:
        policy = self.policy()
        metrics, samples, scored = evaluate_policy(
            policy, self.reference, _TrainerProxy(self.trainer, self.tokenizer, self.prompt_of), self.testbed,
            self.eval_ids, self.eval_mask, temperature=self.temperature, seed=10_000 + self.seed,
            batch_size=self.batch_size, n_logged_samples=self.n_logged_samples, pairs=bool(self.listeners),
        )  # fmt: skip
        metrics.pop("gold/reward", None)  # the one gold component is gold_reward itself
        if self.gold is None:
            metrics.pop("gold_reward", None)
            for sample in samples:
                sample.pop("gold_reward", None)
        row = {"step": step, **metrics, "wall_s": time.perf_counter() - self.start}
        # What TRL last logged (every logging_steps, after this step's callbacks): the gradient norm the
        # grad_norm alarm reads, and the mitigations' own figures (their effective strengths among them).
        logged = [log for log in self.trainer.state.log_history if "grad_norm" in log]
        if logged:
            row["train/grad_norm"] = logged[-1]["grad_norm"]
            row.update({k: v for k, v in logged[-1].items() if k.startswith(MITIGATION_FIGURES)})
        for listener in self.listeners:
            row.update(listener.observe(row, scored, policy))
        self.rows.append(row)
        if self.writes:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            append_jsonl(self.run_dir / "metrics.jsonl", row)
            append_jsonl(self.run_dir / "samples.jsonl", {"step": step, "samples": samples})
        logs = {LOGGED.get(k, k): v for k, v in row.items()
                if k not in ("step", "wall_s", "train/grad_norm") and not k.startswith(MITIGATION_FIGURES)}  # fmt: skip
        # The base log (TRL's own pending metrics stay for its logging step); it clears should_log, which
        # TRL's logging of this step still needs.
        control = self.trainer.control
        should_log = control.should_log
        Trainer.log(self.trainer, logs)
        control.should_log = should_log
        return row, scored

    def _write_config(self) -> None:
        config = {"testbed": "trl", "preset": "trl", "methods": [self.method], "seeds": 1, "trainer":
                  type(self.trainer).__name__, "trl": self.trainer.args.to_dict()}  # fmt: skip
        for listener in self.listeners:
            config.update(listener.config())
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False, default_flow_style=None))
        write_json(self.out_dir / "testbed.json", {"name": "trl", "spec": type(self.trainer).__name__,
                                                   "proxy": "reward functions"})  # fmt: skip

    # -- the callback --------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, **kwargs):
        _refuse_sharded(self.trainer)
        if self.reference is None:
            self.reference = unpatched_copy(self.policy())
        if self.writes:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._write_config()
            for log in ("metrics.jsonl", "samples.jsonl"):  # a run from step 0 starts its logs afresh
                if state.global_step == 0:
                    (self.run_dir / log).unlink(missing_ok=True)
        self.start = time.perf_counter()
        if state.global_step == 0:
            self._evaluate(0, control)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every == 0:
            self._evaluate(state.global_step, control)

    def on_train_end(self, args, state, control, **kwargs):
        if not self.rows or self.rows[-1]["step"] != state.global_step:
            self._evaluate(state.global_step, control)
        for listener in self.listeners:
            listener.finish(self)

    def _evaluate(self, step: int, control) -> None:
        self.evaluate(step)
        if any(listener.stop is not None for listener in self.listeners):
            control.should_training_stop = True


class AlarmCallback(TrainerCallback):
    """overopt.detectors on a GoldRewardCallback's evaluations: logs every detector the run allows
    (``alarm/<name>`` and ``alarm/<name>/fired``) and stops training when one of ``stop`` fires.

    The signals are the lab's: the trajectory ones (kl, kl_accel, entropy, entropy_drop, length_drift,
    proxy_accel, grad_norm) from the evaluation rows, and the reward-model ones the trainer's reward allows —
    ``ensemble_std`` with an ensemble_reward, ``low_radius`` with a linear head (proxy_reward), ``proxy_tail``
    always. ``pairs_ess`` and ``head_std`` need the RM's training pairs in the policy's tokens and are not
    measured here. At a stop, OUT/runs/<method>/seed<k>/alarm_stop.json records the alarm, the step, the gold
    there and the last calm step, and policy_last_good.safetensors holds the policy's trainable tensors of
    that last calm evaluation (kept on the CPU between evaluations)."""

    def __init__(self, monitor: GoldRewardCallback, stop: Sequence[str] = (), cfg: AlarmConfig = AlarmConfig()):
        unknown = [name for name in stop if name not in detectors.SIGNALS]
        if unknown:
            raise ValueError(f"unknown alarm {unknown[0]!r}; valid choices: {sorted(detectors.SIGNALS)}")
        self.cfg, self.monitor = cfg, alarms.AlarmMonitor(cfg, list(stop))
        self.reference: dict | None = None
        self.last_good: dict[str, torch.Tensor] | None = None
        self.stop: dict | None = None
        monitor.listeners.append(self)

    def observe(self, row: dict, scored: EvalSamples, policy: PreTrainedModel) -> Figures:
        if self.reference is None:  # the first evaluation: the SFT policy's samples
            self.reference = alarms.sft_reference(scored, self.cfg)
        figures = alarms.measured_figures(
            scored, self.reference, policy=policy, sft_policy=None, pairs=None, pad_id=0, truncate_tokens=None
        )
        figures.update(self.monitor.update({**row, **figures}))
        if self.monitor.stop_names and self.stop is None:
            if self.monitor.calm():
                self.last_good = {k: v.detach().cpu().clone() for k, v in trainable_tensors(policy).items()}
            self.stop = self.monitor.stopped()
            if self.stop is not None:
                self.stop["gold_reward"] = row.get("gold_reward")
        return figures

    def config(self) -> dict:
        return {"alarm": self.cfg.model_dump(), "rl": {"stop_on_alarm": list(self.monitor.stop_names)}}

    def finish(self, monitor: GoldRewardCallback) -> None:
        if self.stop is None or not monitor.writes:
            return
        write_json(monitor.run_dir / "alarm_stop.json", self.stop)
        if self.last_good is not None:
            save_tensors(self.last_good, monitor.run_dir / "policy_last_good.safetensors")

    def on_step_end(self, args, state, control, **kwargs):
        if self.stop is not None:
            control.should_training_stop = True
