"""RL step throughput: overopt's train_policy against TRL's GRPOTrainer and RLOOTrainer, side by side.

    pip install -e ".[bench]"                              # trl==1.16.0
    python benchmarks/rl_throughput.py                     # default preset: 32 prompts × 4, 10 runs of 20 updates
    python benchmarks/rl_throughput.py --prompts-per-step 16 --group-size 8 --tag "16 prompts × group 8"
    python benchmarks/rl_throughput.py --profile           # then cProfile one overopt-grpo and one trl-grpo run

Every side trains the SAME policy (the lab's SFT model) against the SAME proxy RM (a transformers
sequence classifier), on the same prompts in the same order, with the same group size, completion
budget, sampling (T = 1, no top-k/top-p), learning rate, optimiser (torch AdamW, no weight decay,
clip 1.0), float32 on the CPU, and one optimiser step per batch of prompts_per_step × group_size
completions (TRL: per_device_train_batch_size = that batch, gradient_accumulation_steps =
steps_per_generation = num_iterations = 1).

  grpo sides: group-normalised advantages, seq-mean clipped surrogate (TRL loss_type="grpo"), no KL
              (TRL's default beta = 0; overopt: rl.kl.coef = 0).
  rloo sides: leave-one-out advantages, k1 KL in the reward with TRL's default beta = 0.05 (overopt:
              rl.kl.coef = 0.05, placement reward, estimator k1), so both run the reference model.

TRL's reward (`--trl-reward`): `ids` (default) is a TRL reward function that runs the RM on the
generated token ids, EOS included, exactly as overopt scores; `text` gives TRL the RM model itself as
`reward_funcs`, and TRL scores prompt + completion text decoded without special tokens and
re-tokenised: its RM never sees the EOS that overopt's RM is read at, the two sides optimise
different rewards, and TRL's completions grow ~10 % longer within 20 updates (more tokens per step).

Each run takes steps + 1 updates; the first is a warm-up and the clock runs from its end to the end
of the last update (generation, scoring, log-prob passes, backward and optimiser step of `steps`
updates; model loading, trainer construction and evaluation are outside). Hooks on the models and
the optimiser count the work each side did in the timed updates (completions and generated tokens,
up to and including the first EOS; optimiser steps; backward passes; forward passes of the policy
outside generation, of the reference and of the RM) and time the phases. Repetitions alternate the
sides; the table gives medians. The lab (SFT policy and proxy RM) is built once into
benchmarks/out/rl_throughput/<preset>/ by `overopt run` and reused.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter, defaultdict
from pathlib import Path
from typing import Literal

import torch
import tyro

HERE = Path(__file__).parent
FORWARDS = ("policy_nograd", "policy_grad", "ref", "rm")  # forward passes outside generation, counted
SIDES = ("overopt-grpo", "trl-grpo", "overopt-rloo", "trl-rloo")
PHASES = {  # key: column heading
    "generate": "generation",
    "rm": "RM scoring",
    "policy_nograd": "policy log-probs, no grad",
    "ref": "ref log-probs",
    "policy_grad": "policy forward, grad",
    "backward": "loss + backward",
    "optimizer": "optimiser step",
    "other": "other",
}


@dataclasses.dataclass(frozen=True)
class Args:
    preset: str = "default"
    """overopt preset (testbed summarize) whose SFT policy, proxy RM and completion budget are used."""
    threads: int = 2
    """torch.set_num_threads for every side."""
    prompts_per_step: int = 0
    """Prompts per update (0: the preset's rl.prompts_per_step)."""
    group_size: int = 0
    """Completions per prompt, TRL's num_generations (0: the preset's rl.group_size)."""
    steps: int = 20
    """Timed updates per run (each run takes one more, untimed, as warm-up)."""
    reps: int = 10
    """Runs of each side; the table gives medians."""
    sides: str = ",".join(SIDES)
    """Comma-separated sides to run."""
    rloo_beta: float = 0.05
    """KL coefficient of the rloo sides (TRL RLOOConfig's default)."""
    trl_reward: Literal["ids", "text"] = "ids"
    """TRL's reward: the RM on the generated ids with EOS, as overopt scores (ids), or the RM model as TRL's
    reward_funcs, scoring re-tokenised prompt + completion text without EOS (text: a different reward)."""
    lab: Path | None = None
    """Lab directory with artifacts/sft and artifacts/rm (default benchmarks/out/rl_throughput/<preset>)."""
    profile: bool = False
    """Also run one overopt-grpo and one trl-grpo run under cProfile and print the top functions."""
    write: bool = True
    """Replace this benchmark's section of benchmarks/RESULTS.md."""
    tag: str = ""
    """Suffix of the section's name in RESULTS.md (several configurations side by side)."""


# -- the lab -------------------------------------------------------------------------------------


def ensure_lab(args: Args) -> Path:
    """The lab directory, built by `overopt run` (SFT, pairs, RM and a 1-update RL run) if missing."""
    lab = args.lab or HERE / "out" / "rl_throughput" / args.preset
    if not all((lab / "artifacts" / a / "model.safetensors").exists() for a in ("sft", "rm")):
        cmd = [sys.executable, "-m", "overopt", "run", "--preset", args.preset, "--out", str(lab),
               "--methods", "none", "--seeds", "1", "--rl.steps", "1", "--threads", str(args.threads)]  # fmt: skip
        print("building the lab:", " ".join(cmd[1:]), flush=True)
        subprocess.run(cmd, check=True)
    return lab


# -- counting and timing the work of a run -------------------------------------------------------


class Meter:
    """Counts and times one run's work through hooks on its models and the optimiser (both sides alike)."""

    def __init__(self, eos_id: int, threads: int):
        self.eos_id, self.threads = eos_id, threads
        self.counts: Counter = Counter()
        self.times: defaultdict[str, float] = defaultdict(float)
        self.prompts: list[tuple] = []  # (ids, mask) of the prompts of every generate call
        self.marks: list[tuple[float, Counter, dict]] = []  # (time, counts, times) at the end of every update
        self._handles: list = []
        self._patched: list[torch.nn.Module] = []
        self._in_generate = False
        self._starts: dict[int, float] = {}
        self._fwd_end = self._last_grad = self._opt_start = None

    def generate(self, ids: torch.Tensor, mask: torch.Tensor | None, call):
        """Run `call()`, a generation for the prompts (ids, mask) that returns the (B, P + T) sequences
        (transformers) or a Rollout (overopt); time it and count its completions and tokens."""
        t0 = time.perf_counter()
        self._in_generate = True
        try:
            out = call()
        finally:
            self._in_generate = False
        self.times["generate"] += time.perf_counter() - t0
        completion = out.completion_ids if hasattr(out, "completion_ids") else out[:, ids.shape[1] :]
        is_eos = completion == self.eos_id
        kept = ~((is_eos.long().cumsum(1) - is_eos.long()) > 0)  # up to and including the first EOS
        self.counts["completions"] += completion.shape[0]
        self.counts["tokens"] += int(kept.sum())
        self.counts["eos"] += int(is_eos.any(1).sum())
        self.counts["generate_calls"] += 1
        self.prompts.append((ids.cpu().clone(), None if mask is None else mask.cpu().clone()))
        return out

    def policy(self, model: torch.nn.Module, hf_generate: bool = True) -> None:
        """Meter the policy's forwards and gradients, and its `generate` (TRL) unless `hf_generate` is off."""
        if hf_generate:
            original = model.generate
            model.generate = lambda *a, **kw: self.generate(
                kw.get("input_ids", a[0] if a else None), kw.get("attention_mask"), lambda: original(*a, **kw)
            )
            self._patched.append(model)
        self._forward_hooks(model, "policy")
        for p in model.parameters():
            if p.requires_grad:
                self._handles.append(p.register_post_accumulate_grad_hook(self._grad_done))

    def model(self, model: torch.nn.Module, name: str) -> None:
        self._forward_hooks(model, name)

    def _forward_hooks(self, model: torch.nn.Module, name: str) -> None:
        def pre(module, inputs):
            if not self._in_generate:
                self._starts[id(module)] = time.perf_counter()

        def post(module, inputs, output):
            if self._in_generate:
                return
            now = time.perf_counter()
            key = name if name != "policy" else ("policy_grad" if torch.is_grad_enabled() else "policy_nograd")
            self.times[key] += now - self._starts.pop(id(module))
            self.counts[f"fwd_{key}"] += 1
            self._fwd_end = now  # "loss + backward" runs from the last forward to the last gradient

        self._handles += [model.register_forward_pre_hook(pre), model.register_forward_hook(post)]

    def _grad_done(self, param) -> None:
        self._last_grad = time.perf_counter()

    def _opt_pre(self, optimizer, args, kwargs) -> None:
        self._opt_start = time.perf_counter()
        if self._fwd_end is not None and self._last_grad is not None and self._last_grad > self._fwd_end:
            self.times["backward"] += self._last_grad - self._fwd_end  # loss + backward
            self.counts["backward"] += 1
        self._fwd_end = self._last_grad = None

    def _opt_post(self, optimizer, args, kwargs) -> None:
        self.times["optimizer"] += time.perf_counter() - self._opt_start
        self.counts["optimizer_steps"] += 1

    def __enter__(self) -> Meter:
        from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

        self._handles += [
            register_optimizer_step_pre_hook(self._opt_pre),
            register_optimizer_step_post_hook(self._opt_post),
        ]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        for model in self._patched:
            del model.generate  # the instance attribute: the class's generate again

    def step_end(self) -> None:
        self.marks.append((time.perf_counter(), Counter(self.counts), dict(self.times)))

    def timed(self) -> dict:
        """Work and phase times from the end of the warm-up update to the end of the last one."""
        (t0, c0, p0), (t1, c1, p1) = self.marks[0], self.marks[-1]
        wall = t1 - t0
        phases = {k: p1.get(k, 0.0) - p0.get(k, 0.0) for k in PHASES if k != "other"}
        phases["other"] = wall - sum(phases.values())
        updates = len(self.marks) - 1
        prompts = [_rows(*p) for p in self.prompts[len(self.prompts) - updates :]]
        return {"wall_s": wall, "updates": updates, "counts": c1 - c0, "phases": phases, "prompts": prompts}


def _rows(ids: torch.Tensor, mask: torch.Tensor | None) -> list[tuple[int, ...]]:
    """The unpadded token rows of a padded prompt batch."""
    mask = torch.ones_like(ids) if mask is None else mask
    return [tuple(r[m.bool()].tolist()) for r, m in zip(ids, mask)]


class NullProgress:
    """train_policy's progress interface, silent."""

    def start(self, total: int) -> None:
        pass

    def advance(self, n: int = 1, **figures: float) -> None:
        pass


# -- the sides -----------------------------------------------------------------------------------


@dataclasses.dataclass
class Setup:
    cfg: object  # ExperimentConfig
    testbed: object
    sft_dir: Path
    sft: torch.nn.Module
    rm: torch.nn.Module
    tokenizer: object
    train_prompts: list[list[int]]
    prompts_per_step: int
    group_size: int
    steps: int
    rloo_beta: float
    trl_reward: str

    @property
    def updates(self) -> int:
        return self.steps + 1  # + the warm-up

    def prompt_order(self, seed: int) -> list[list[int]]:
        """The prompts overopt's loop draws in `updates` updates with `seed` (TRL gets them in this order)."""
        from overopt.stages.rl import PromptStream

        return PromptStream(self.train_prompts, seed).take(self.prompts_per_step * self.updates)


def run_overopt(s: Setup, algo: str, seed: int, meter: Meter) -> float:
    from overopt.mitigations.rewards import ProxyRewardModel
    from overopt.stages.rl import train_policy

    beta = s.rloo_beta if algo == "rloo" else 0.0
    kl = s.cfg.rl.kl.model_copy(update={"coef": beta, "estimator": "k1", "placement": "reward", "adaptive": False})
    rl = s.cfg.rl.model_copy(
        update={"algo": algo, "steps": s.updates, "prompts_per_step": s.prompts_per_step, "group_size": s.group_size,
                "epochs": 1, "minibatches": 1, "temperature": 1.0, "loss_aggregation": "auto", "kl": kl}
    )  # fmt: skip
    import overopt.stages.rl as rl_stage

    policy = copy.deepcopy(s.sft).train()
    meter.policy(policy, hf_generate=False)  # overopt samples with its own loop: meter that instead
    sample = rl_stage.sample_completions
    rl_stage.sample_completions = lambda model, ids, mask, *a, **kw: meter.generate(
        ids, mask, lambda: sample(model, ids, mask, *a, **kw)
    )
    meter.model(s.sft, "ref")  # as in method_run: the SFT model is the reference
    meter.model(s.rm.base_model, "rm")  # reward_forward runs the backbone, then the head
    start = time.perf_counter()
    train_policy(
        rl, policy=policy, ref_policy=s.sft, reward_source=ProxyRewardModel(s.rm), value_model=None,
        testbed=s.testbed, train_prompts=s.train_prompts, seed=seed, eval_every=s.updates + 1,
        on_eval=lambda step, figures: None, progress=NullProgress(), steps=s.updates, evaluate_first=False,
        on_step_end=lambda step, loop_state: meter.step_end(),
    )  # fmt: skip
    rl_stage.sample_completions = sample
    return time.perf_counter() - start


class TokenReward:
    """TRL reward function: the proxy RM on the generated token ids, EOS included, through overopt's scorer.

    TRL's own RM path scores `prompt + completion` re-tokenised from text decoded without special
    tokens, so its RM never sees the EOS that overopt's RM reads its score at: the two sides then
    optimise different rewards and their completion lengths drift apart within a few updates.
    """

    def __init__(self, rm: torch.nn.Module, pad_id: int):
        from overopt.mitigations.rewards import ProxyRewardModel

        self.source, self.pad_id, self.__name__ = ProxyRewardModel(rm), pad_id, "proxy_rm"

    def __call__(self, prompts, completions, completion_ids, prompt_token_ids, **kwargs) -> list[float]:
        from overopt.sampling import rollout_from_tokens

        rollout = rollout_from_tokens(prompt_token_ids, completion_ids, self.pad_id)
        return self.source(rollout).rewards.tolist()


TRL_REWARD = {
    "ids": "TRL's reward function: the proxy RM on the generated token ids with EOS, scored as overopt scores "
    "(`--trl-reward ids`).",
    "text": "TRL's reward: the proxy RM model as `reward_funcs`, on prompt + completion text re-tokenised by TRL, "
    "without EOS (`--trl-reward text`: a different reward from overopt's, so lengths drift apart).",
}


def run_trl(s: Setup, algo: str, seed: int, meter: Meter) -> float:
    from datasets import Dataset
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    class StepEnd(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            meter.step_end()

    tok = s.tokenizer
    # The lab's word-level tokenizer joins tokens with spaces; the trailing space keeps the prompt's last
    # token apart from the completion's first when TRL scores prompt + completion as text.
    texts = [tok.decode(p) + " " for p in s.prompt_order(seed)]
    out = tempfile.TemporaryDirectory(prefix="trl-bench-")  # TRL writes nothing there (save_strategy no)
    common = dict(
        output_dir=out.name, use_cpu=True, bf16=False, fp16=False,
        gradient_checkpointing=False, report_to=[], logging_strategy="no", save_strategy="no", eval_strategy="no",
        disable_tqdm=True, seed=seed, per_device_train_batch_size=s.prompts_per_step * s.group_size,
        gradient_accumulation_steps=1, steps_per_generation=1, num_iterations=1, num_generations=s.group_size,
        max_completion_length=s.testbed.max_completion_tokens, temperature=1.0, top_k=0, top_p=1.0,
        max_steps=s.updates, learning_rate=s.cfg.rl.lr, lr_scheduler_type="constant", optim="adamw_torch",
        weight_decay=0.0, max_grad_norm=s.cfg.rl.max_grad_norm, epsilon=s.cfg.rl.clip_eps, shuffle_dataset=False,
        dataloader_num_workers=0, log_completions=False,
    )  # fmt: skip
    if algo == "grpo":
        config = GRPOConfig(**common, beta=0.0, loss_type="grpo", scale_rewards="group")
        trainer_cls = GRPOTrainer
    else:
        config = RLOOConfig(**common, beta=s.rloo_beta, normalize_advantages=False)
        trainer_cls = RLOOTrainer
    policy = copy.deepcopy(s.sft).train()
    rm = copy.deepcopy(s.rm).eval()
    dataset = {"prompt": texts}
    if s.trl_reward == "ids":
        dataset["prompt_token_ids"] = s.prompt_order(seed)
        reward_funcs = TokenReward(rm, tok.pad_token_id)
    else:
        reward_funcs = rm
    trainer = trainer_cls(
        model=policy, reward_funcs=reward_funcs, args=config, train_dataset=Dataset.from_dict(dataset),
        processing_class=tok, reward_processing_classes=tok if s.trl_reward == "text" else None, callbacks=[StepEnd()],
    )  # fmt: skip
    trainer.remove_callback(PrinterCallback)  # the end-of-training metrics line
    meter.policy(trainer.model)
    if trainer.ref_model is not None:
        meter.model(trainer.ref_model, "ref")
    meter.model(rm.base_model, "rm")
    torch.set_num_threads(meter.threads)  # after the trainer's construction, in case it changed them
    start = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - start
    out.cleanup()
    return wall


def run_side(s: Setup, side: str, seed: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    framework, algo = side.split("-")
    with Meter(s.tokenizer.eos_token_id, threads) as meter:
        call_s = (run_overopt if framework == "overopt" else run_trl)(s, algo, seed, meter)
    if torch.get_num_threads() != threads:
        raise RuntimeError(f"{side}: torch threads changed to {torch.get_num_threads()}")
    out = meter.timed()
    if out["updates"] != s.steps:
        raise RuntimeError(f"{side}: {out['updates']} timed updates, expected {s.steps}")
    return {**out, "call_s": call_s}


# -- the report ----------------------------------------------------------------------------------


def machine() -> str:
    import transformers
    import trl

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, {platform.system()}, Python {platform.python_version()}, "
        f"torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}"
    )


def median(values) -> float:
    return statistics.median(list(values))


def summarise(runs: list[dict], s: Setup) -> dict:
    walls = [r["wall_s"] for r in runs]
    per_update = s.steps
    counts = [r["counts"] for r in runs]
    return {
        "wall_s": median(walls),
        "wall_range": (min(walls), max(walls)),
        "completions_per_s": median(c["completions"] / r["wall_s"] for c, r in zip(counts, runs)),
        "tokens_per_s": median(c["tokens"] / r["wall_s"] for c, r in zip(counts, runs)),
        "tokens": median(c["tokens"] for c in counts),
        "completions": sorted({c["completions"] for c in counts}),
        "mean_len": median(c["tokens"] / c["completions"] for c in counts),
        "eos_frac": median(c["eos"] / c["completions"] for c in counts),
        "optimizer_steps": sorted({c["optimizer_steps"] for c in counts}),
        "backward": sorted({c["backward"] for c in counts}),
        "generate_calls": sorted({c["generate_calls"] for c in counts}),
        "fwd": {k: sorted({c[f"fwd_{k}"] / per_update for c in counts}) for k in FORWARDS},
        "phases_ms": {k: median(r["phases"][k] / per_update * 1000 for r in runs) for k in PHASES},
        "call_s": median(r["call_s"] for r in runs),
    }  # fmt: skip


def _set(values: list) -> str:
    return "/".join(f"{v:g}" for v in values)


def tables(results: dict[str, dict]) -> str:
    rows = [
        "| side | wall s (min–max) | completions/s | gen tokens/s | gen tokens | mean len | EOS | opt steps | backward "
        "| policy fwd / update (no grad + grad) | ref fwd / update | RM fwd / update |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for side, r in results.items():
        lo, hi = r["wall_range"]
        f = r["fwd"]
        cells = [
            side, f"{r['wall_s']:.2f} ({lo:.2f}–{hi:.2f})", f"{r['completions_per_s']:.0f}", f"{r['tokens_per_s']:.0f}",
            f"{r['tokens']:.0f}", f"{r['mean_len']:.2f}", f"{r['eos_frac']:.0%}", _set(r["optimizer_steps"]),
            _set(r["backward"]), f"{_set(f['policy_nograd'])} + {_set(f['policy_grad'])}", _set(f["ref"]),
            _set(f["rm"]),
        ]  # fmt: skip
        rows.append("| " + " | ".join(cells) + " |")
    phase_rows = [
        "| side | " + " | ".join(PHASES.values()) + " | total |",
        "|---|" + "---|" * (len(PHASES) + 1),
    ]
    for side, r in results.items():
        ph = r["phases_ms"]
        phase_rows.append(f"| {side} | " + " | ".join(f"{ph[k]:.1f}" for k in PHASES) + f" | {sum(ph.values()):.1f} |")
    return "\n".join(rows) + "\n\nTime per update by phase (ms, median over repetitions):\n\n" + "\n".join(phase_rows)


def ratios(results: dict[str, dict], runs: dict[str, list[dict]]) -> list[str]:
    """overopt / TRL throughput: ratio of the medians, and the median (range) of the ratios of the runs
    of one repetition, which ran back to back."""
    lines = []
    for algo in ("grpo", "rloo"):
        ours, theirs = f"overopt-{algo}", f"trl-{algo}"
        if ours in results and theirs in results:
            c = results[ours]["completions_per_s"] / results[theirs]["completions_per_s"]
            t = results[ours]["tokens_per_s"] / results[theirs]["tokens_per_s"]
            paired = [b["wall_s"] / a["wall_s"] for a, b in zip(runs[ours], runs[theirs])]
            lines.append(
                f"overopt / TRL-{algo.upper()}: **{c:.2f}×** completions/s, {t:.2f}× generated tokens/s "
                f"(per repetition: {median(paired):.2f}×, {min(paired):.2f}–{max(paired):.2f}× completions/s)"
            )
    if "overopt-grpo" in results and "trl-grpo" in results:
        ours, theirs = results["overopt-grpo"]["phases_ms"], results["trl-grpo"]["phases_ms"]
        saved = sorted(PHASES, key=lambda k: ours[k] - theirs[k])[:3]
        lines.append(
            "overopt-grpo vs trl-grpo, where the time per update differs most: "
            + "; ".join(f"{PHASES[k]} {ours[k]:.1f} vs {theirs[k]:.1f} ms" for k in saved)
            + ". overopt samples with its own decode loop (one prefill per distinct prompt shared by its group, "
            "finished rows leave the batch) and, with one epoch of one minibatch, takes the old log-probs from "
            "the update's own forward."
        )
    return lines


def profile(s: Setup, threads: int) -> None:
    import cProfile
    import pstats

    for side in ("overopt-grpo", "trl-grpo"):
        prof = cProfile.Profile()
        prof.enable()
        run_side(s, side, seed=0, threads=threads)
        prof.disable()
        print(f"\n== cProfile, {side} ({s.updates} updates incl. warm-up), top 25 by cumulative time ==")
        pstats.Stats(prof).sort_stats("cumulative").print_stats(25)
        print(f"== {side}: top 20 by own time ==")
        pstats.Stats(prof).sort_stats("tottime").print_stats(20)


def load(args: Args) -> Setup:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from overopt.config import load_config
    from overopt.models.policy import SAFE_LOADING
    from overopt.testbeds import make_testbed

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers 5: gradient_checkpointing renamed
    cfg = load_config(args.preset)
    if cfg.testbed != "summarize":
        raise SystemExit(f"preset {args.preset!r}: this benchmark runs the summarize testbed")
    lab = ensure_lab(args)
    testbed = make_testbed(cfg)
    sft_dir, rm_dir = lab / "artifacts" / "sft", lab / "artifacts" / "rm"
    tok = AutoTokenizer.from_pretrained(sft_dir)
    if tok.get_vocab() != testbed.tokenizer.get_vocab():
        raise SystemExit(f"{sft_dir}: tokenizer differs from the testbed's")
    sft = AutoModelForCausalLM.from_pretrained(sft_dir, **SAFE_LOADING).eval()
    rm = AutoModelForSequenceClassification.from_pretrained(rm_dir, **SAFE_LOADING).eval()
    train_prompts = testbed.prompts("train", max(4 * cfg.rl.prompts_per_step, cfg.pairs.n_prompts), cfg.seed + 2)
    # TRL tokenises the prompt texts itself: they must give back overopt's token ids.
    bad = [p for p in train_prompts if tok(text=tok.decode(p) + " ")["input_ids"] != p]
    if bad:
        raise SystemExit(f"prompt text does not re-encode to its ids: {bad[0]}")
    return Setup(
        cfg=cfg, testbed=testbed, sft_dir=sft_dir, sft=sft, rm=rm, tokenizer=tok, train_prompts=train_prompts,
        prompts_per_step=args.prompts_per_step or cfg.rl.prompts_per_step,
        group_size=args.group_size or cfg.rl.group_size, steps=args.steps, rloo_beta=args.rloo_beta,
        trl_reward=args.trl_reward,
    )  # fmt: skip


def main(args: Args) -> None:
    from overopt.results import write_section

    torch.set_num_threads(args.threads)
    s = load(args)
    sides = [side.strip() for side in args.sides.split(",") if side.strip()]
    unknown = set(sides) - set(SIDES)
    if unknown:
        raise SystemExit(f"unknown sides {sorted(unknown)}; choose from {', '.join(SIDES)}")
    m = s.sft.config
    n_params = sum(p.numel() for p in s.sft.parameters())
    batch = s.prompts_per_step * s.group_size
    layers = f"{m.num_hidden_layers} layer" + "s" * (m.num_hidden_layers != 1)
    config_line = (
        f"Policy: the lab's `{args.preset}` SFT Llama (hidden {m.hidden_size}, {layers}, "
        f"{m.num_attention_heads} heads, vocab {m.vocab_size}, {n_params / 1e3:.0f} k parameters); proxy RM: its "
        f"sequence classifier. {s.prompts_per_step} prompts × group {s.group_size} = {batch} completions per update, "
        f"≤ {s.testbed.max_completion_tokens} completion tokens, T = 1, {args.steps} timed updates per run after 1 "
        f"warm-up, {args.reps} runs per side, float32, {args.threads} torch threads, lr {s.cfg.rl.lr:g}, torch AdamW. "
        f"grpo: no KL (TRL default beta 0); rloo: k1 KL in the reward, beta {s.rloo_beta:g} (TRL default). "
        + TRL_REWARD[s.trl_reward]
    )
    print(config_line, flush=True)
    runs: dict[str, list[dict]] = {side: [] for side in sides}
    for rep in range(args.reps):
        for side in sides:
            r = run_side(s, side, seed=rep, threads=args.threads)
            runs[side].append(r)
            c = r["counts"]
            print(
                f"rep {rep} {side:13s} {r['wall_s']:6.2f} s  {c['completions'] / r['wall_s']:7.0f} completions/s  "
                f"{c['tokens']} tokens  {c['optimizer_steps']} opt steps  (train call {r['call_s']:.2f} s)",
                flush=True,
            )
    # Same prompts, in the same order, on every side of one repetition.
    for rep in range(args.reps):
        seen = {side: runs[side][rep]["prompts"] for side in sides}
        if len({repr(p) for p in seen.values()}) != 1:
            raise SystemExit(f"rep {rep}: the sides generated for different prompts")
    for side in sides:
        for r in runs[side]:
            c = r["counts"]
            if (c["completions"], c["optimizer_steps"], c["backward"]) != (s.steps * batch, s.steps, s.steps):
                raise SystemExit(f"{side}: {dict(c)} in {s.steps} timed updates of {batch} completions")
    results = {side: summarise(runs[side], s) for side in sides}
    body_table = tables(results)
    ratio_lines = ratios(results, runs)
    command = shlex.join(["python", "benchmarks/rl_throughput.py", *sys.argv[1:]])
    heading = "## RL step throughput: overopt vs TRL"
    heading += f" — `{args.preset}` preset" if args.preset != "default" else ""
    heading += f" — {args.tag}" if args.tag else ""
    body = "\n".join([
        heading,
        "",
        f"Command: `{command}`  ",
        f"Date: {datetime.date.today().isoformat()}  ",
        f"Machine: {machine()}",
        "",
        config_line,
        "",
        "Wall time of the timed updates (generation, RM scoring, log-prob passes, backward, optimiser step), median "
        "over runs; completions/s and tokens/s per run, median. Counted by hooks in the timed updates of every run: "
        "generated tokens up to and including the first EOS, optimiser steps, backward passes, forward passes "
        "outside generation. Every side generated for the same prompts in the same order (checked).",
        "",
        body_table,
        "",
        *(f"- {line}" for line in ratio_lines),
    ])  # fmt: skip
    print()
    print(body)
    if args.write:
        write_section(f"rl_throughput:{args.preset}" + (f":{args.tag}" if args.tag else ""), body)
    if args.profile:
        profile(s, args.threads)


if __name__ == "__main__":
    main(tyro.cli(Args, args=sys.argv[1:]))
