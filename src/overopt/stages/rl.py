"""Stage 5: policy optimisation against the proxy RM — RLOO, GRPO / Dr.GRPO, PPO (docs/methods/none.md, kl.md).

One readable loop. Each update:
  1. draw prompts, repeat each K times, sample completions from π_θ (or from
     a vLLM engine holding θ: rl.generation);
  2. score them with the reward source (proxy RM or ensemble), the optional no-EOS penalty and the
     method's reward transforms;
  3. log-probs under π_θ (old) and π_ref; KL penalty in the reward if so configured; with another sampler,
     its importance weights π_old/μ (ops.sampler_is, rl.sampler_correction);
  4. advantages: RLOO / GRPO / Dr.GRPO per group of K, or GAE over tokens with a value model (PPO);
     then the method's advantage transform (SignCert-PO's worst-case advantages);
  5. `epochs` × `minibatches` clipped-surrogate steps (+ β·KL in the loss, + value loss for PPO, +
     the method's loss terms), each through the method's gradient step;
  6. adaptive KL coefficient; the method's reference schedule; the learning-rate schedule;
  7. every `eval_every` updates, the held-out evaluation is written through `on_eval`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from overopt import distributed
from overopt.checkpoint import load_optimizer_state, optimizer_state, rng_state, set_rng_state
from overopt.config import RLConfig
from overopt.errors import NumericalFault
from overopt.mitigations.protocols import Figures, Mitigations, RewardScores, RewardSource
from overopt.models.policy import completion_logits, completion_logprobs
from overopt.ops import (
    adaptive_kl_coef,
    clipped_surrogate,
    clipped_value_loss,
    gae,
    grpo_advantages,
    kl_estimate,
    masked_mean,
    masked_whiten,
    penalty_share,
    rloo_advantages,
    sampler_importance_weights,
    token_returns,
)
from overopt.progress import StageProgress
from overopt.sampling import Rollout, pad_left, sample_completions
from overopt.testbeds.base import Testbed


@dataclass
class Batch:
    """Everything the update needs about one rollout batch (B = prompts × K rows)."""

    rollout: Rollout
    old_logprobs: torch.Tensor  # (B, T)
    ref_logprobs: torch.Tensor | None  # (B, T); None when nothing reads the reference
    advantages: torch.Tensor  # (B,) sequence-level, or (B, T) for PPO
    old_values: torch.Tensor | None = None  # (B, T), PPO only; (B, T, k) aggregation states under a PRM
    returns: torch.Tensor | None = None  # the value targets, shaped as old_values
    value_mask: torch.Tensor | None = None  # (B, T) where the value loss is taken (None: the completion)
    sampler_weights: torch.Tensor | None = None  # (B, T) π_old/μ of another sampler's tokens (ops.sampler_is)


def _values(value_model: PreTrainedModel, rollout: Rollout) -> torch.Tensor:
    """V(x, y_<t) for every completion token: (B, T), or (B, T, k) for a k-dimensional aggregation state.
    The value of state t is read before token t."""
    values = completion_logits(value_model, rollout.input_ids, rollout.attention_mask, rollout.prompt_len)
    return values[..., 0] if values.shape[-1] == 1 else values


def _ppo_batch(
    cfg: RLConfig, value_model, rollout: Rollout, scored: RewardScores, token_kl, kl_coef: float, **logprobs
) -> Batch:
    """PPO's per-token advantages and value targets. A sequence reward sits on the last token (GAE); a process
    reward's steps sit on their end tokens and make per-token λ-returns in aggregation-state space
    (ops.token_returns: RRA's generalised Bellman target), with the per-token KL penalties, when in the
    reward, as further steps of the sum (RLConfig refuses them for a return that is no sum)."""
    cmask = rollout.completion_mask
    old_values = _values(value_model, rollout)
    kl_rewards = -kl_coef * token_kl if token_kl is not None else None
    steps = scored.steps
    if steps is None:
        old_values = old_values * cmask
        token_rewards = kl_rewards if kl_rewards is not None else torch.zeros_like(old_values)
        last = cmask.sum(1) - 1
        token_rewards[torch.arange(len(last)), last] += scored.rewards
        est = gae(token_rewards, old_values, cmask, cfg.gamma, cfg.lam)
        advantages = masked_whiten(est.advantages, cmask) * cmask
        return Batch(rollout, advantages=advantages, old_values=old_values, returns=est.returns, **logprobs)
    rewards, mask, tokens = steps.rewards, steps.mask, steps.tokens
    if kl_rewards is not None:
        positions = torch.arange(cmask.shape[1], device=cmask.device).expand_as(cmask)
        rewards, mask, tokens = torch.cat([rewards, kl_rewards], 1), torch.cat([mask, cmask], 1), torch.cat(
            [tokens, positions], 1)  # fmt: skip
    if old_values.dim() == 2:
        old_values = old_values.unsqueeze(-1)
    est = token_returns(rewards, mask, tokens, old_values, cmask, steps.aggregation, steps.gamma, cfg.lam)
    advantages = masked_whiten(est.advantages, est.mask) * est.mask
    return Batch(rollout, advantages=advantages, old_values=old_values, returns=est.targets, value_mask=est.mask,
                 **logprobs)  # fmt: skip


def _sequence_advantages(cfg: RLConfig, rewards: torch.Tensor) -> torch.Tensor:
    """(B,) rewards laid out as groups of K consecutive rows -> (B,) advantages."""
    grouped = rewards.view(-1, cfg.group_size)
    if cfg.algo == "rloo":
        return rloo_advantages(grouped).flatten()
    return grpo_advantages(grouped, scale_by_std=cfg.algo == "grpo").flatten()


def _group_centred(values: torch.Tensor, group_size: int) -> torch.Tensor:
    """(B,) -> (B,) minus each group's mean: what a per-sequence reward term adds to the advantages."""
    grouped = values.view(-1, group_size)
    return (grouped - grouped.mean(dim=1, keepdim=True)).flatten()


class PromptStream:
    """Endless shuffled passes over the training prompts (deterministic given the seed)."""

    def __init__(self, prompts: list[list[int]], seed: int):
        self.prompts, self._order, self._pos = prompts, [], 0
        self._generator = torch.Generator().manual_seed(seed)

    def take(self, n: int) -> list[list[int]]:
        out = []
        while len(out) < n:
            if self._pos >= len(self._order):
                self._order, self._pos = torch.randperm(len(self.prompts), generator=self._generator).tolist(), 0
            out.append(self.prompts[self._order[self._pos]])
            self._pos += 1
        return out

    def state_dict(self) -> dict:
        return {"order": torch.tensor(self._order, dtype=torch.long), "pos": self._pos,
                "generator": self._generator.get_state()}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        self._order, self._pos = state["order"].tolist(), state["pos"]
        self._generator.set_state(state["generator"])


class FigureLog:
    """Running means of training figures between two evaluations."""

    def __init__(self):
        self._values: dict[str, list[float]] = {}

    def add(self, figures: Figures) -> None:
        for k, v in figures.items():
            self._values.setdefault(k, []).append(float(v))

    def flush(self) -> Figures:
        """The means since the last flush; with several processes, also averaged over them (the figures
        of the whole batch are the same everywhere; those of each share, like the loss, are averaged)."""
        keys = sorted(self._values)
        means = torch.tensor([sum(self._values[k]) / len(self._values[k]) for k in keys], dtype=torch.float64)
        means = distributed.all_sum(means) / distributed.world()
        self._values.clear()
        return dict(zip(keys, means.tolist()))

    def state_dict(self) -> dict:
        return {k: list(v) for k, v in self._values.items()}

    def load_state_dict(self, state: dict) -> None:
        self._values = {k: list(v) for k, v in state.items()}


def train_policy(
    cfg: RLConfig,
    *,
    policy: PreTrainedModel,
    ref_policy: PreTrainedModel,
    reward_source: RewardSource,
    value_model: PreTrainedModel | None,
    testbed: Testbed,
    train_prompts: list[list[int]],
    seed: int,
    eval_every: int,
    on_eval: Callable[[int, Figures], bool | None],
    progress: StageProgress,
    mitigations: Mitigations | None = None,
    steps: int | None = None,
    step_offset: int = 0,
    evaluate_first: bool = True,
    resume: dict | None = None,
    on_step_end: Callable[[int, Callable[[], dict]], None] | None = None,
    lr_decay: bool = False,
    train_mechanisms: Callable[[Rollout, RewardScores], Figures] | None = None,
    share_prefix: bool = False,
    generator: Callable | None = None,
) -> None:
    """Optimise `policy` in place for `steps` (default cfg.steps) updates.

    `on_eval(step, train_figures)` is called at step_offset (before any update, if `evaluate_first`), every
    `eval_every` updates and after the last one; steps are numbered from `step_offset` so that
    consecutive calls (OCRM rounds) continue one curve. When it returns True (an alarm's stop) the loop ends
    there, without the step's checkpoint.
    `on_step_end(step, loop_state)` is called after every update; `loop_state()` is everything this loop
    needs, besides the models, to continue from that step when passed back as `resume`.
    `lr_decay`: the learning rate falls linearly from cfg.lr at the first update to cfg.lr/steps at the
    last (OCRM's published PPO phases). `train_mechanisms(rollout, scores)`: figures about the whole
    batch's rollouts and their reward-source scores (mech/*, against gold), averaged like train/*.
    `share_prefix`: the policy's and the reference's forward passes run each group's prompt once
    (models.policy.completion_logits); one process only (a wrapped model takes one forward per backward).
    `generator`: draws the rollouts in place of sampling.sample_completions (same arguments; rl.generation=vllm:
    overopt.vllm_sampling). With rl.sampler_correction in force, the sampler's own log-probs of its tokens give
    the importance weights π_old/μ that multiply the surrogate per token.
    """
    mitigations = mitigations or Mitigations()
    steps = cfg.steps if steps is None else steps
    tok = testbed.tokenizer
    _check_processes(cfg)
    trained = distributed.prepare(policy)  # the update's forward; sampling and scoring use `policy` itself
    share_prefix = share_prefix and distributed.world() == 1
    torch.manual_seed(seed + step_offset)
    prompts = PromptStream(train_prompts, seed + step_offset)
    models = [policy] if value_model is None else [policy, value_model]
    params = [p for model in models for p in model.parameters() if p.requires_grad]  # LoRA: the adapters only
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    # u-th update of the phase at lr·(1 − (u−1)/steps), as in OCRM's ppo.py; stepped once per update.
    schedule = None
    if lr_decay and steps > 1:
        schedule = torch.optim.lr_scheduler.LinearLR(optimizer, 1.0, 1.0 / steps, total_iters=steps - 1)
    kl_coef = cfg.kl.coef
    ref_policy.eval()
    log = FigureLog()
    start_time = time.perf_counter()
    progress.start(steps)
    done = step_offset
    if resume is not None:
        done, kl_coef = resume["step"], resume["kl_coef"]
        load_optimizer_state(optimizer, resume["optimizer"])
        if schedule is not None:
            schedule.load_state_dict(resume["schedule"])
        prompts.load_state_dict(resume["prompts"])
        log.load_state_dict(resume["log"])
        mitigations.load_state_dict(resume["mitigations"])
        set_rng_state(resume["rng"])
        start_time -= resume["elapsed_s"]
        progress.advance(done - step_offset)

    def maybe_evaluate(step: int) -> bool:
        if (step - step_offset) % eval_every == 0 or step == step_offset + steps:
            return bool(on_eval(step, {**log.flush(), "train/wall_s": time.perf_counter() - start_time}))
        return False

    def end_step(step: int, **figures: float) -> bool:
        progress.advance(**figures)
        if maybe_evaluate(step):
            return True
        if on_step_end is not None:
            on_step_end(step, loop_state)
        return False

    def loop_state() -> dict:
        return {
            "step": step, "kl_coef": kl_coef, "optimizer": optimizer_state(optimizer), "prompts": prompts.state_dict(),
            "log": log.state_dict(), "mitigations": mitigations.state_dict(), "rng": rng_state(),
            "elapsed_s": time.perf_counter() - start_time,
            **({"schedule": schedule.state_dict()} if schedule is not None else {}),
        }  # fmt: skip

    if evaluate_first and resume is None and on_eval(step_offset, {}):
        return
    for step in range(done + 1, step_offset + steps + 1):
        # 1. Rollouts: K completions for each of the step's prompts. Several processes draw the same
        # prompts and each samples its share, whole groups, with the noise of those rows (overopt.distributed).
        batch_prompts = [p for p in prompts.take(cfg.prompts_per_step) for _ in range(cfg.group_size)]
        mine = distributed.share(len(batch_prompts))
        prompt_ids, prompt_mask = pad_left(batch_prompts[mine], tok.pad_token_id)
        corrected = cfg.sampler_is_mode is not None  # the sampler's own log-probs are needed
        drawn = (generator or sample_completions)(
            policy, prompt_ids, prompt_mask, testbed.max_completion_tokens, cfg.temperature, tok.eos_token_id,
            tok.pad_token_id, row_offset=mine.start, total_rows=len(batch_prompts), with_logprobs=corrected,
        )  # fmt: skip
        rollout, sampled = drawn if corrected else (drawn, None)
        ids, mask, plen, cmask = rollout.input_ids, rollout.attention_mask, rollout.prompt_len, rollout.completion_mask
        grad_logprobs = None
        with torch.no_grad():
            # 2. Scores from the reward source, then the method's reward transforms. These, the completion
            # weights and the advantages see the whole batch: with several processes, everyone's rows.
            scored = _gather_scores(reward_source(rollout))
            everyone = _gather_rollout(rollout, tok.pad_token_id)
            scores = scored.rewards
            if cfg.no_eos_penalty is not None:
                has_eos = (everyone.completion_ids == tok.eos_token_id).any(1)
                scores = torch.where(has_eos, scores, torch.full_like(scores, cfg.no_eos_penalty))
            log.add({"train/proxy_reward": scores.mean()})
            if train_mechanisms is not None:
                log.add(train_mechanisms(everyone, scored))
            for transform in mitigations.reward_transforms:
                scores, figures = transform(scores, everyone, scored)
                log.add(figures)
            if not torch.isfinite(scores).all():
                _nonfinite(cfg, step, "rewards")
                log.add({"train/skipped_nonfinite": 1.0})
                if end_step(step):
                    return
                continue
            # 3. Old and reference log-probs; KL to the reference (the estimator that is optimised). With
            # one epoch of one minibatch, the update's own forward at θ gives the old log-probs: it runs
            # here, with grad, and step 5 reuses it. The reference pass runs only when something reads
            # it: a KL penalty or a loss term.
            if cfg.epochs == 1 and cfg.minibatches == 1:
                with torch.enable_grad():
                    grad_logprobs, _ = completion_logprobs(trained, ids, mask, plen, cfg.temperature,
                                                           share_prefix=share_prefix)  # fmt: skip
                old_logprobs = grad_logprobs.detach()
            else:
                old_logprobs, _ = completion_logprobs(policy, ids, mask, plen, cfg.temperature,
                                                      share_prefix=share_prefix)  # fmt: skip
            sampler_weights = None
            if sampled is not None:  # the sampler's mismatch with the trainer, per token (ops.sampler_is)
                corr = sampler_importance_weights(old_logprobs, sampled.logprobs, cmask, cfg.sampler_is_mode,
                                                  cfg.sampler_clip_min, cfg.sampler_clip_max)  # fmt: skip
                sampler_weights = corr.weights
                log.add({"sampler/logp_diff_mean": corr.logp_diff_mean, "sampler/logp_diff_max": corr.logp_diff_max,
                         "sampler/weight_mean": corr.weight_mean, "sampler/masked_frac": corr.masked_frac})  # fmt: skip
            ref_logprobs, seq_kl = None, None
            if kl_coef > 0 or mitigations.loss_terms:
                ref_logprobs, _ = completion_logprobs(ref_policy, ids, mask, plen, cfg.temperature,
                                                      share_prefix=share_prefix)  # fmt: skip
                token_kl = kl_estimate(old_logprobs, ref_logprobs, cfg.kl.estimator) * cmask
                seq_kl = distributed.gather_rows(token_kl.sum(1))
                log.add({"train/kl_ref": seq_kl.mean()})
            in_reward = cfg.kl.placement == "reward" and kl_coef > 0
            # 4. Advantages.
            if cfg.algo == "ppo":
                assert value_model is not None, "PPO needs a value model"
                # A reward transform (PAR, clipping, ...) acts on whole sequences: its reward sits on the last token.
                per_step = not mitigations.reward_transforms and cfg.no_eos_penalty is None
                ppo_scores = scored._replace(rewards=scores, steps=scored.steps if per_step else None)
                batch = _ppo_batch(
                    cfg, value_model, rollout, ppo_scores, token_kl if in_reward else None,
                    kl_coef, old_logprobs=old_logprobs, ref_logprobs=ref_logprobs, sampler_weights=sampler_weights,
                )  # fmt: skip
            else:
                rewards = scores - kl_coef * seq_kl if in_reward else scores
                if in_reward:  # the KL term's share of the advantages (a constant per group adds nothing)
                    penalty = _group_centred(kl_coef * seq_kl, cfg.group_size)
                    log.add({"kl/reward_share": penalty_share(penalty, _group_centred(scores, cfg.group_size))})
                advantages = _sequence_advantages(cfg, rewards)
                if mitigations.advantage_transform is not None:
                    advantages, figures = mitigations.advantage_transform(advantages, scored, cfg.group_size)
                    log.add(figures)
                batch = Batch(rollout, old_logprobs, ref_logprobs, advantages[mine], sampler_weights=sampler_weights)
        lengths = everyone.completion_mask.sum(1).double()
        log.add({"kl/coef": kl_coef, "train/mean_length": lengths.mean()})

        # 5. Clipped-surrogate updates over minibatches, each through the method's gradient step.
        n_rows = ids.shape[0]
        for _ in range(cfg.epochs):
            # One minibatch is the whole batch in order (step 3's log-probs are in rollout order).
            chunks = [slice(None)] if cfg.minibatches == 1 else torch.randperm(n_rows).chunk(cfg.minibatches)
            for rows in chunks:
                figures: Figures = {}
                share = _token_share(batch.rollout.completion_mask[rows])

                def loss_fn(rows=rows, figures=figures, batch=batch, kl_coef=kl_coef, share=share) -> torch.Tensor:
                    nonlocal grad_logprobs  # step 3's forward serves the first evaluation, at θ
                    logprobs, grad_logprobs = grad_logprobs, None
                    loss, first = _minibatch_loss(
                        cfg, trained, value_model, batch, rows, kl_coef, mitigations, testbed.max_completion_tokens,
                        logprobs, share, with_shares=not figures, share_prefix=share_prefix,
                    )  # fmt: skip
                    figures.update(first if not figures else {})  # figures of θ, not of a perturbed θ
                    return loss

                step_figures = mitigations.gradient_step(loss_fn, params, optimizer, step, cfg.max_grad_norm)
                if step_figures.get("train/skipped_nonfinite"):
                    _nonfinite(cfg, step, "gradients" if math.isfinite(figures.get("train/loss", 0.0)) else "loss")
                log.add(step_figures)
                log.add(figures)

        # 6. Adaptive KL coefficient (Ziegler et al., arXiv 1909.08593); reference schedule.
        if cfg.kl.adaptive and seq_kl is not None:
            kl_coef = adaptive_kl_coef(kl_coef, seq_kl.mean().item(), cfg.kl.target, cfg.kl.horizon, len(seq_kl))
        if mitigations.reference_schedule is not None:
            log.add(mitigations.reference_schedule(step, policy, ref_policy))
        if schedule is not None:
            log.add({"train/lr": optimizer.param_groups[0]["lr"]})
            schedule.step()

        # 7. Held-out evaluation (when due), then the checkpoint hook.
        kl_figure = {} if seq_kl is None else {"kl": seq_kl.mean().item()}
        if end_step(step, proxy=scored.rewards.mean().item(), **kl_figure):
            return


def _check_processes(cfg: RLConfig) -> None:
    """Several processes split each batch by whole prompts (groups stay on one process)."""
    world = distributed.world()
    if world > 1 and cfg.prompts_per_step % world:
        raise ValueError(
            f"rl.prompts_per_step={cfg.prompts_per_step} must be a multiple of the {world} processes, "
            "which each take an equal share of the prompts and their groups"
        )
    if world > 1 and cfg.algo == "ppo":
        raise ValueError("rl.algo=ppo runs in one process (its advantage whitening is per batch); launch 1 process")


def _token_share(completion_mask: torch.Tensor) -> float:
    """world × this process's completion tokens / all processes' (1 with one process). A token mean
    over this process's share times it, averaged over the processes (as their gradients are), is the
    token mean over the whole batch."""
    if distributed.world() == 1:
        return 1.0
    mine = completion_mask.sum().double()
    return float(distributed.world() * mine / distributed.all_sum(mine))


def _gather_scores(scores: RewardScores) -> RewardScores:
    """Every process's scores, in row order (one process: `scores` itself)."""
    if distributed.world() == 1:
        return scores
    members = None if scores.members is None else distributed.gather_rows(scores.members.T).T
    hidden = None if scores.hidden is None else distributed.gather_rows(scores.hidden)
    return RewardScores(distributed.gather_rows(scores.rewards), hidden, scores.head_weight, members)


def _gather_rollout(rollout: Rollout, pad_id: int) -> Rollout:
    """Every process's rollouts, in row order, padded to common widths (one process: `rollout`)."""
    if distributed.world() == 1:
        return rollout
    return Rollout(
        distributed.gather_rows(rollout.prompt_ids, pad_id, left=True),
        distributed.gather_rows(rollout.prompt_mask, 0, left=True),
        distributed.gather_rows(rollout.completion_ids, pad_id),
        distributed.gather_rows(rollout.completion_mask, 0),
    )


def _nonfinite(cfg: RLConfig, step: int, source: str) -> None:
    """NaN/Inf in `source` at `step`: the update was not applied; stop the run unless told to skip."""
    if cfg.on_nonfinite == "stop":
        raise NumericalFault(
            f"rl step {step}: non-finite {source}; the update was not applied "
            "(rl.on_nonfinite=skip skips such updates and counts them in train/skipped_nonfinite)"
        )


def _minibatch_loss(
    cfg: RLConfig,
    policy: PreTrainedModel,
    value_model: PreTrainedModel | None,
    batch: Batch,
    rows: torch.Tensor | slice,
    kl_coef: float,
    mitigations: Mitigations,
    max_completion_tokens: int,
    logprobs: torch.Tensor | None = None,
    token_share: float = 1.0,
    with_shares: bool = False,
    share_prefix: bool = False,
) -> tuple[torch.Tensor, Figures]:
    """The loss of the minibatch `rows` at the current parameters, and its figures. `logprobs`: the
    minibatch's log-probs at the current parameters with grad, if already computed. `token_share`
    rescales this process's token means into its part of the mean over every process's tokens.
    `with_shares`: also log each penalty's share of the update (`kl/loss_share`, `<term>/penalty_share`:
    its gradient against the policy loss's, both with respect to the token log-probs)."""
    rollout = batch.rollout.index(rows)
    ids, mask, plen, cmask = rollout.input_ids, rollout.attention_mask, rollout.prompt_len, rollout.completion_mask
    if logprobs is None:
        logprobs, _ = completion_logprobs(policy, ids, mask, plen, cfg.temperature, share_prefix=share_prefix)
    pg = clipped_surrogate(
        logprobs,
        batch.old_logprobs[rows],
        batch.advantages[rows],
        cmask,
        clip_eps=cfg.clip_eps,
        aggregation=cfg.token_aggregation,
        norm_const=float(max_completion_tokens),
        weights=None if batch.sampler_weights is None else batch.sampler_weights[rows],
    )
    loss = pg.loss * (token_share if cfg.token_aggregation == "token_mean" else 1.0)
    figures = {"train/pg_loss": pg.loss.item(), "train/clip_frac": pg.clip_frac.item()}
    penalties: dict[str, torch.Tensor] = {}
    if cfg.kl.placement == "loss" and kl_coef > 0:
        kl_term = masked_mean(kl_estimate(logprobs, batch.ref_logprobs[rows], cfg.kl.estimator), cmask)
        penalties["kl/loss_share"] = kl_coef * kl_term * token_share
        loss = loss + penalties["kl/loss_share"]
        figures["train/kl_loss"] = kl_term.item()
    for term in mitigations.loss_terms:
        extra, term_figures = term(logprobs, batch.ref_logprobs[rows], cmask)
        penalties[f"{term.name}/penalty_share"] = extra
        loss = loss + extra
        figures.update(term_figures)
    if with_shares and penalties:
        (pg_grad,) = torch.autograd.grad(pg.loss, logprobs, retain_graph=True)
        for name, penalty in penalties.items():
            (grad,) = torch.autograd.grad(penalty, logprobs, retain_graph=True, allow_unused=True)
            figures[name] = penalty_share(torch.zeros_like(pg_grad) if grad is None else grad, pg_grad).item()
    if value_model is not None and batch.returns is not None:
        values, old_values, returns = _values(value_model, rollout), batch.old_values[rows], batch.returns[rows]
        value_mask = cmask if batch.value_mask is None else batch.value_mask[rows]
        if returns.dim() == 3:  # aggregation states: each of the k entries is a target
            k = returns.shape[-1]
            values, old_values, returns = (x.reshape(len(x), -1, k).flatten(1) for x in (values, old_values, returns))
            value_mask = value_mask.repeat_interleave(k, dim=1)
        vf_loss = clipped_value_loss(values, old_values, returns, value_mask, cfg.vf_clip)
        loss = loss + cfg.vf_coef * vf_loss
        figures["train/vf_loss"] = vf_loss.item()
    figures["train/loss"] = loss.item()
    return loss, figures
