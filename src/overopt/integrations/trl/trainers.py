"""The mitigations as mixins of TRL's GRPOTrainer and RLOOTrainer, each calling the lab's own object.

    from trl import GRPOConfig, GRPOTrainer
    from overopt.integrations.trl import GradientRegularizationMixin, SignCertMixin, with_mitigations

    Trainer = with_mitigations(GRPOTrainer, GradientRegularizationMixin, SignCertMixin)
    trainer = Trainer(model=..., reward_funcs=[proxy_reward(rm, tok)], args=GRPOConfig(scale_rewards="none"),
                      gr=GRConfig(gamma=1e-2), signcert=SignCertConfig(quantile=0.2))

Where each one enters TRL's step (TRL 1.16):
* GR (``GradientRegularizationMixin``): ``training_step`` keeps every micro-batch TRL prepared in the
  gradient-accumulation window; at the window's last one, where ``p.grad`` holds the window's gradient g1
  (all-reduced under DDP), ``GradientRegularization.regularize`` perturbs θ by ε·g1, replays the window's
  micro-batches (same completions, advantages and old log-probs; DDP all-reduces at the last), combines
  and leaves g in ``p.grad``; TRL then clips by ``max_grad_norm`` and steps. Refused under DeepSpeed (its
  engine steps inside ``backward`` and keeps gradients in its own partitions; the GR authors' code,
  JohannesAck/gradientregularization_trl, wraps the engine for that) and FSDP (sharded gradients: the
  global norms and the perturbation would need collectives the lab's object does not do).
* SignCert-PO (``SignCertMixin``): after TRL computed the advantages of a generation batch, the reward
  function's hidden states and head (``proxy_reward``) are gathered over processes and
  ``SignCertAdvantages`` replaces the advantages; the policy loss is linear in them, so this is the
  certified weighting inside the loss. Needs advantages in reward units: Dr.GRPO
  (``scale_rewards="none"``) or RLOO without normalisation.
* χ² (``Chi2Mixin``): ``Chi2Penalty`` on the policy's per-token log-probs (the ones TRL's loss computed, with
  their graph) and the reference's, added to TRL's loss with TRL's gradient-accumulation scaling.
* Reference resets: TRL's own ``sync_ref_model`` is the same update (π_ref ← α·π_θ + (1 − α)·π_ref every
  ``ref_model_sync_steps``); ``ref_reset_args`` maps ``RefResetConfig`` onto it.
"""

from __future__ import annotations

import contextlib

import torch
from accelerate.utils import DistributedType, gather
from trl import RLOOTrainer
from trl.trainer.utils import add_fused_lm_head

from overopt.config import Chi2Config, GRConfig, RefResetConfig, SignCertConfig
from overopt.integrations.trl.rewards import reward_source_funcs
from overopt.mitigations.gr import GradientRegularization
from overopt.mitigations.protocols import Figures, RewardScores
from overopt.mitigations.regularizers import Chi2Penalty
from overopt.mitigations.signcert import SignCertAdvantages
from overopt.models.policy import merged_copy


def unpatched_copy(model) -> torch.nn.Module:
    """A frozen copy of a policy as a plain transformers model (LoRA merged) without the forwards TRL patches
    onto module instances (its fused LM head, fp32 casts): a deepcopy keeps those closures, which call the
    ORIGINAL model's forward, so the copy would silently follow the policy's weights."""
    clone = merged_copy(model)
    for module in clone.modules():
        module.__dict__.pop("forward", None)
    return clone.eval().requires_grad_(False)


def with_mitigations(trainer_cls: type, *mixins: type) -> type:
    """``trainer_cls`` (GRPOTrainer, RLOOTrainer or a subclass) with the given mixins, first one outermost."""
    name = "".join(m.__name__.removesuffix("Mixin") for m in mixins) + trainer_cls.__name__
    return type(name, (*mixins, trainer_cls), {})


def ref_reset_args(cfg: RefResetConfig = RefResetConfig()) -> dict:
    """Reference resets as TRL config fields: ``GRPOConfig(beta=..., **ref_reset_args(cfg))``. TRL's
    ``SyncRefModelCallback`` moves π_ref ← α·π_θ + (1 − α)·π_ref every ``every`` steps, which is overopt's
    ``ReferenceReset`` (tested equal); TRL needs ``beta > 0`` for it (there is no reference otherwise)."""
    return {"sync_ref_model": True, "ref_model_sync_steps": cfg.every, "ref_model_mixup_alpha": cfg.alpha}


def _log(trainer, figures: Figures) -> None:
    """Figures into TRL's own metric buffers (averaged and logged at its logging steps)."""
    mode = "train" if trainer.model.training else "eval"
    for key, value in figures.items():
        trainer._metrics[mode][key].append(value)


class GradientRegularizationMixin:
    """Gradient regularization (arXiv 2602.18037) around TRL's optimiser step; knobs ``gr=GRConfig(...)``.
    Logs ``gr/correction_ratio``, ``gr/cos_g_g1`` (its effective strength), ``gr/gamma``, ``gr/grad_norm``."""

    def __init__(self, *args, gr: GRConfig = GRConfig(), **kwargs):
        super().__init__(*args, **kwargs)
        if self.accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP):
            raise ValueError(
                f"GradientRegularizationMixin runs on one device or DDP, not {self.accelerator.distributed_type.value}:"
                " DeepSpeed steps inside backward and FSDP shards the gradients (see overopt.integrations.trl.trainers)"
            )
        named = list(self.accelerator.unwrap_model(self.model).named_parameters())
        self.gr = GradientRegularization(
            named, eps=gr.eps, gamma=gr.gamma, grad_clip=gr.grad_clip, warmup_steps=gr.warmup_steps,
            exclude=gr.exclude, target_correction=gr.target_correction, controller_rate=gr.controller_rate,
            bf16_roundtrip=gr.bf16_roundtrip,
        )  # fmt: skip
        self._gr_window: list[tuple[dict, object]] = []
        self._gr_capture, self._gr_prepared = False, None

    def _prepare_inputs(self, generation_batch):
        prepared = super()._prepare_inputs(generation_batch)
        if self._gr_capture:  # the micro-batch training_step is about to use
            self._gr_prepared = prepared
        return prepared

    def training_step(self, model, inputs, num_items_in_batch=None):
        self._gr_capture = True
        try:
            loss = super().training_step(model, inputs, num_items_in_batch)
        finally:
            self._gr_capture = False
        self._gr_window.append((self._gr_prepared, num_items_in_batch))
        if not self.accelerator.sync_gradients:
            return loss
        window, self._gr_window = self._gr_window, []
        if self.gr.active(self.state.global_step + 1):
            params = [p for p in model.parameters() if p.requires_grad]
            figures = self.gr.regularize(lambda: self._gr_replay(model, window), params)
        else:
            figures = self.gr.off_figures()
        _log(self, figures)
        return loss

    def _loss_scaled_for_ga(self, num_items_in_batch) -> bool:
        """Whether compute_loss already divides by the accumulation steps (transformers' Trainer rule)."""
        if self.loss_is_scaled_for_ga is not None:
            return self.loss_is_scaled_for_ga
        return (self.model_accepts_loss_kwargs and num_items_in_batch is not None) or self.compute_loss_func is not None

    def _gr_replay(self, model, window: list[tuple[dict, object]]) -> None:
        """∇L at the perturbed θ on the window's micro-batches, accumulated as TRL's first pass was; the
        replay's own metrics (entropy, clip ratios at θ') are dropped from TRL's buffers."""
        metrics = self._metrics["train"]
        lengths = {key: len(values) for key, values in metrics.items()}
        for i, (prepared, num_items) in enumerate(window):
            last = i == len(window) - 1
            with contextlib.nullcontext() if last else self.accelerator.no_sync(model):
                with self.compute_loss_context_manager():
                    loss = self.compute_loss(model, prepared, num_items_in_batch=num_items)
                if not self._loss_scaled_for_ga(num_items):
                    loss = loss / self.current_gradient_accumulation_steps
                self.accelerator.backward(loss)
        for key in list(metrics):
            if key not in lengths:
                del metrics[key]
            else:
                del metrics[key][lengths[key] :]


class SignCertMixin:
    """SignCert-PO (arXiv 2604.02986) on TRL's advantages; knobs ``signcert=SignCertConfig(...)`` (the ℓ2
    ball). Needs one ``proxy_reward`` / ``ensemble_reward`` among ``reward_funcs`` (a linear head), and
    advantages in reward units. Logs ``signcert/adv_mass_removed`` (its effective strength) and the rest of
    the lab's ``signcert/*``."""

    def __init__(self, *args, signcert: SignCertConfig = SignCertConfig(), **kwargs):
        super().__init__(*args, **kwargs)
        if signcert.metric != "l2":
            raise ValueError("signcert.metric=fisher needs the reward model's training data: in TRL use metric=l2")
        sources = reward_source_funcs(self)
        if len(sources) != 1:
            raise ValueError(
                "SignCertMixin needs exactly one overopt reward function with a linear head among reward_funcs "
                f"(overopt.integrations.trl.proxy_reward); found {len(sources)}"
            )
        self._signcert_index, self._signcert_func = sources[0]
        if isinstance(self, RLOOTrainer):
            normalised = self.normalize_advantages
            hint = "RLOOConfig(normalize_advantages=False)"
        else:
            normalised = self.scale_rewards != "none" or self.multi_objective_aggregation != "sum_then_normalize"
            hint = "GRPOConfig(scale_rewards='none', loss_type='dr_grpo'), Dr.GRPO as in the paper"
        if normalised:
            raise ValueError(f"SignCert-PO shifts advantages in reward units; use {hint}")
        s = signcert
        self.signcert = SignCertAdvantages(s.quantile, s.scope, s.weighting)

    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        if not self.model.training:
            return out
        scores = self._signcert_func.last
        k = self.num_generations
        # The head's share of the advantage: the function's reward weight (× K/(K−1) for RLOO's baseline).
        scale = self.reward_weights[self._signcert_index].item() * (k / (k - 1) if isinstance(self, RLOOTrainer) else 1)
        device = out["advantages"].device
        local = out["advantages"]
        advantages = gather(local)  # every process's rows, in TRL's order: groups of K consecutive rows
        hidden = gather(scores.hidden.to(device))
        head = scores.head_weight.to(device) * scale
        new, figures = self.signcert(advantages, RewardScores(advantages, hidden, head, scores.members), k)
        start = self.accelerator.process_index * len(local)
        out["advantages"] = new[start : start + len(local)].to(local.dtype)
        _log(self, figures)
        return out


class Chi2Mixin:
    """χ² occupancy regularisation (arXiv 2403.03185, LLM form) added to TRL's policy loss; knobs
    ``chi2=Chi2Config(...)``. The reference is the trainer's ``ref_model`` (β > 0), a LoRA policy's base
    (adapters off), else a frozen copy of the policy taken at construction. Logs ``chi2/estimate``,
    ``chi2/penalty``."""

    def __init__(self, *args, chi2: Chi2Config = Chi2Config(), **kwargs):
        super().__init__(*args, **kwargs)
        self.chi2 = Chi2Penalty(chi2.coef, chi2.clamp)
        policy = self.accelerator.unwrap_model(self.model)
        self._chi2_reference = None
        if self.ref_model is None and not hasattr(policy, "disable_adapter"):
            # TRL reads per-token log-probs through its fused LM head; the copy gets one as TRL's ref_model does.
            self._chi2_reference = unpatched_copy(policy)
            cast = getattr(self.args, "cast_lm_head_to_fp32", False)
            add_fused_lm_head(self._chi2_reference, temperature=self.temperature, cast_lm_head_to_fp32=cast)

    @torch.no_grad()
    def _chi2_reference_logps(self, inputs: dict) -> torch.Tensor:
        if "ref_per_token_logps" in inputs:
            return inputs["ref_per_token_logps"]
        ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        keep = inputs["completion_ids"].size(1)
        reference = self.ref_model or self._chi2_reference
        if reference is None:  # LoRA: the base model is the policy with its adapters off
            with self.accelerator.unwrap_model(self.model).disable_adapter():
                return self._get_per_token_logps_and_entropies(self.model, ids, mask, keep)[0]
        return self._get_per_token_logps_and_entropies(reference, ids, mask, keep)[0]

    def _compute_loss(self, model, inputs):
        captured: list[torch.Tensor] = []
        compute = self._get_per_token_logps_and_entropies

        def capture(*args, **kwargs):  # the first call of TRL's loss: the policy's log-probs, with their graph
            result = compute(*args, **kwargs)
            captured.append(result[0])
            return result

        self._get_per_token_logps_and_entropies = capture
        try:
            loss = super()._compute_loss(model, inputs)
        finally:
            del self._get_per_token_logps_and_entropies
        term, figures = self.chi2(captured[0], self._chi2_reference_logps(inputs), inputs["completion_mask"])
        if self.loss_is_scaled_for_ga and self.model.training:  # GRPO divides its loss itself; RLOO's Trainer does
            term = term / self.current_gradient_accumulation_steps
        _log(self, figures)
        return loss + term
