"""Gradient regularization (Ackermann, Noukhovitch, Ishida et al., arXiv 2602.18037) as a gradient step.

L_GR(θ) = L(θ) + (γ/2)‖∇L(θ)‖², so ∇L_GR = g + γHg, estimated by forward finite differences
(Karakida et al., ICML 2023):
  1. g1 = ∇L(θ), clipped to ‖g1‖ ≤ c;
  2. θ' = θ + ε·g1 on the non-excluded parameters (in float32);
  3. g2 = ∇L(θ') on the SAME inputs (same completions, old log-probs, advantages), clipped to ≤ c;
  4. restore θ; g = (1 − γ/ε)·g1 + (γ/ε)·g2 (excluded parameters keep g1); ordinary optimiser step.
γ = ε is unnormalised SAM. Costs one extra forward + backward per step.

Effective strength (docs/methods/gr.md): `gr/correction_ratio` = ‖g − g1‖/‖g1‖ and `gr/cos_g_g1`, 0 and 1
when GR is off. γ alone is not a strength (it scales with the loss and the curvature), so
`target_correction` adapts γ online until the ratio tracks a target (`adapt_gr_gamma`).

`bf16_roundtrip` reproduces a detail of the published runs (bf16 weights under DeepSpeed ZeRO-2): on
every GR step the reference code writes the bf16 model weights back over the fp32 master copy
(`refresh_fp32_params`, all trainable parameters, before the optimiser step), so updates smaller
than half a bf16 step are lost — a dead zone that the KL baseline runs did not have.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from overopt.mitigations.protocols import Figures, apply_gradients, plain_step
from overopt.ops import adapt_gr_gamma, clip_by_global_norm, combine_gr_gradients, gr_correction, is_gr_excluded


class GradientRegularization:
    def __init__(
        self,
        named_parameters: list[tuple[str, torch.nn.Parameter]],
        *,
        eps: float,
        gamma: float,
        grad_clip: float,
        warmup_steps: int,
        exclude: tuple[str, ...],
        target_correction: float | None = None,
        controller_rate: float = 0.2,
        bf16_roundtrip: bool = False,
    ):
        if target_correction is not None and gamma <= 0:
            raise ValueError("gr.target_correction adapts γ multiplicatively: start from gr.gamma > 0")
        self.eps, self.gamma, self.grad_clip, self.warmup_steps = eps, gamma, grad_clip, warmup_steps
        self.target, self.rate, self.bf16_roundtrip = target_correction, controller_rate, bf16_roundtrip
        self.perturbed = {id(p) for name, p in named_parameters if not is_gr_excluded(name, exclude)}

    def active(self, step: int) -> bool:
        """Whether update `step` (1-based) is a GR step: past the warm-up, with γ > 0."""
        return step > self.warmup_steps and self.gamma != 0

    def off_figures(self) -> Figures:
        return {"gr/correction_ratio": 0.0, "gr/cos_g_g1": 1.0, "gr/gamma": self.gamma}

    def __call__(
        self,
        loss_fn: Callable[[], torch.Tensor],
        params: list[torch.nn.Parameter],
        optimizer: torch.optim.Optimizer,
        step: int,
        max_grad_norm: float,
    ) -> Figures:
        if not self.active(step):
            return {**plain_step(loss_fn, params, optimizer, step, max_grad_norm), **self.off_figures()}
        # 1. g1 at θ.
        optimizer.zero_grad(set_to_none=True)
        loss_fn().backward()
        figures = self.regularize(lambda: loss_fn().backward(), params)
        return {**apply_gradients(params, optimizer, max_grad_norm), **figures}

    def regularize(self, backward: Callable[[], None], params: list[torch.nn.Parameter]) -> Figures:
        """Steps 1-4 with g1 = ∇L(θ) already in `p.grad` (unclipped): leaves the GR gradient g in `p.grad`.

        `backward()` must accumulate ∇L into `p.grad` again on the same inputs (here at θ' = θ + ε·g1): one
        loss, or every micro-batch of a gradient-accumulation window (overopt.integrations.trl). The caller
        clips by its own max norm and steps, as after any backward pass."""
        g1, g1_norm = clip_by_global_norm([p.grad for p in params], self.grad_clip)
        # 2. Ascent step on the loss, in float32, on the perturbed parameters only.
        backup = {}
        with torch.no_grad():
            for p, g in zip(params, g1, strict=True):
                if id(p) in self.perturbed and g is not None:
                    backup[id(p)] = p.detach().clone()
                    p.copy_((p.float() + self.eps * g.float()).to(p.dtype))
        # 3. g2 at θ' on the same inputs.
        for p in params:
            p.grad = None
        backward()
        g2, g2_norm = clip_by_global_norm([p.grad for p in params], self.grad_clip)
        # 4. Restore θ and combine.
        with torch.no_grad():
            for p, a, b in zip(params, g1, g2, strict=True):
                if id(p) in backup:
                    p.copy_(backup[id(p)])
                    p.grad = combine_gr_gradients(a, b, self.gamma, self.eps)
                else:
                    p.grad = a
            if self.bf16_roundtrip:  # DeepSpeed's refresh_fp32_params: master ← bf16(master), every parameter
                for p in params:
                    p.copy_(p.to(torch.bfloat16).to(p.dtype))
        correction = gr_correction(g1, [p.grad for p in params])
        figures = {
            "gr/grad_norm": g1_norm,
            "gr/grad_norm_ratio": g2_norm / max(g1_norm, 1e-12),
            "gr/correction_ratio": correction.ratio,
            "gr/cos_g_g1": correction.cos,
            "gr/gamma": self.gamma,
        }
        if self.target is not None:
            self.gamma = adapt_gr_gamma(self.gamma, correction.ratio, self.target, self.rate)
        return figures

    def state_dict(self) -> dict:
        """γ, which the controller adapts (`target_correction`); constant otherwise."""
        return {"gamma": self.gamma}

    def load_state_dict(self, state: dict) -> None:
        self.gamma = state["gamma"]
