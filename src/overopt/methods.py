"""Methods as users type them: `--methods none,kl,gr,ocrm+kl,...`.

A method is one part or several joined by `+` (e.g. `ocrm+kl`, `gr+kl`, `signcert+kl`). Each part
says what it changes; `MethodPlan.mitigations` turns the plan into the plug-ins of
`overopt.mitigations.protocols`. The KL penalty is on exactly when `kl` is one of the parts
(`ref_reset` includes it: resetting the KL anchor needs a KL penalty).

Parts come from one registry (`PARTS`, overopt.registry): the built-ins below, a user's `module:attr`
(a `Part`, or a function `build(ctx, mitigations)`), or an `overopt.methods` entry point. A plugin
part's knobs are its pydantic model `Part.args`, given as `method_args.<part name>` and handed to its
`build` as `ctx.args`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from datasets import Dataset
from pydantic import BaseModel, ValidationError
from transformers import PreTrainedModel

from overopt.errors import validation_line
from overopt.mitigations.gr import GradientRegularization
from overopt.mitigations.protocols import Mitigations, RewardSource
from overopt.mitigations.reference import ReferenceReset
from overopt.mitigations.regularizers import Chi2Penalty
from overopt.mitigations.rewards import (
    ConstrainedReward,
    EnsembleFigures,
    LengthPenalty,
    PreferenceAsReward,
    RewardClip,
)
from overopt.mitigations.signcert import SignCertAdvantages, fisher_metric
from overopt.ops import DAA_LOSSES
from overopt.registry import Registry, source_version
from overopt.testbeds.base import Testbed

if TYPE_CHECKING:  # annotations only: the configuration validates method knobs through this module
    from overopt.config import ExperimentConfig, RLConfig


@dataclass
class MethodContext:
    """What the plug-ins of one run are built from."""

    cfg: ExperimentConfig
    policy: PreTrainedModel
    value_model: PreTrainedModel | None
    sft_policy: PreTrainedModel
    reward_source: RewardSource
    testbed: Testbed
    seed: int
    labelled: Dataset | None = None  # the proxy's training data (pairs or judged answers), if it has any
    args: BaseModel | None = None  # a plugin part's own knobs (method_args.<part>), handed to its build


@dataclass(frozen=True)
class Part:
    """What one method part changes. Parts of a method may not both set the same slot."""

    kl: bool = False
    ensemble: str | None = None  # aggregation of k reward models
    ocrm: bool = False
    algo: str | None = None  # base algorithm the part is defined on
    slot: str | None = None  # the exclusive plug-in slot it fills
    build: Callable[[MethodContext, Mitigations], None] | None = None
    strength: str | None = None  # the metrics.jsonl key of its effective strength (0 = off; README glossary)
    needs: str | None = None  # "reward_model": refused when the testbed's proxy is a rule
    best_of_n: bool = False  # no policy training: best-of-n from π_SFT against the reward source (stages/bon.py)
    daa: str | None = None  # a direct-alignment loss (ops.daa): trained on the proxy's pairs, no RM (stages/daa.py)
    args: type[BaseModel] | None = None  # a plugin part's knobs (method_args.<name>)
    name: str = ""  # set by the registry: the key of method_args (module:attr -> attr)
    version: str = ""  # a plugin part's code version (enters its runs' fingerprints); "" for built-ins


def _ref_reset(ctx: MethodContext, m: Mitigations) -> None:
    m.reference_schedule = ReferenceReset(ctx.cfg.ref_reset.every, ctx.cfg.ref_reset.alpha)


def _gr(ctx: MethodContext, m: Mitigations) -> None:
    named = list(ctx.policy.named_parameters())
    if ctx.value_model is not None:
        named += [(f"value.{n}", p) for n, p in ctx.value_model.named_parameters()]
    g = ctx.cfg.gr
    m.gradient_step = GradientRegularization(
        named, eps=g.eps, gamma=g.gamma, grad_clip=g.grad_clip, warmup_steps=g.warmup_steps, exclude=g.exclude,
        target_correction=g.target_correction, controller_rate=g.controller_rate, bf16_roundtrip=g.bf16_roundtrip,
    )  # fmt: skip


def _signcert(ctx: MethodContext, m: Mitigations) -> None:
    s = ctx.cfg.signcert
    metric = None
    if s.metric == "fisher":  # the head's damped Fisher on the proxy's own training data (member 0 of an ensemble)
        if ctx.labelled is None:
            raise ValueError("signcert.metric=fisher needs the reward model's training data; this proxy has none")
        rm = ctx.reward_source.models()[0]
        metric = fisher_metric(rm, ctx.labelled, ctx.testbed.tokenizer.pad_token_id, s.fisher_damping)
    m.advantage_transform = SignCertAdvantages(s.quantile, s.scope, s.weighting, metric)


def _par(ctx: MethodContext, m: Mitigations) -> None:
    tok = ctx.testbed.tokenizer
    m.reward_transforms.append(
        PreferenceAsReward(
            ctx.sft_policy,
            ctx.reward_source,
            ctx.cfg.par.references,
            ctx.cfg.par.k,
            ctx.testbed.max_completion_tokens,
            tok.eos_token_id,
            tok.pad_token_id,
            seed=20_000 + ctx.seed,
        )
    )


def _chi2(ctx: MethodContext, m: Mitigations) -> None:
    m.loss_terms.append(Chi2Penalty(ctx.cfg.chi2.coef, ctx.cfg.chi2.clamp))


def _length_penalty(ctx: MethodContext, m: Mitigations) -> None:
    m.reward_transforms.append(LengthPenalty(ctx.cfg.length_penalty.coef))


def _reward_clip(ctx: MethodContext, m: Mitigations) -> None:
    c = ctx.cfg.reward_clip
    m.reward_transforms.append(RewardClip(c.low, c.high, c.whiten))


def _constrained(ctx: MethodContext, m: Mitigations) -> None:
    c = ctx.cfg.constrained
    m.reward_transforms.append(ConstrainedReward(c.threshold, c.multiplier_lr, c.initial_multiplier, c.max_multiplier))


def _ensemble_figures(ctx: MethodContext, m: Mitigations) -> None:
    m.reward_transforms.insert(0, EnsembleFigures(ctx.cfg.ensemble.ddof))


_BUILTIN_PARTS: dict[str, Part] = {
    # plain optimisation of the proxy reward, no regularisation
    "none": Part(),
    # best-of-n from the SFT policy, no training (bon.*); with an ensemble part, against the ensemble
    "bon": Part(best_of_n=True),
    # direct alignment on the proxy RM's gold-labelled pairs, no reward model (daa.* and the loss's section)
    **{loss: Part(daa=loss, needs="pairs") for loss in DAA_LOSSES},
    # KL penalty to the reference policy (rl.kl.*)
    "kl": Part(kl=True, strength="kl/reward_share"),
    # KL penalty whose reference is reset to the policy (ref_reset.*)
    "ref_reset": Part(kl=True, slot="reference", build=_ref_reset, strength="kl/reward_share"),
    # gradient regularization, finite differences (gr.*)
    "gr": Part(slot="gradient", build=_gr, strength="gr/correction_ratio"),
    # SignCert-PO on Dr.GRPO (signcert.*)
    "signcert": Part(
        algo="dr_grpo", slot="advantages", build=_signcert, strength="signcert/adv_mass_removed", needs="reward_model"
    ),
    # off-policy corrected reward modeling (ocrm.*)
    "ocrm": Part(ocrm=True, slot="reward_model", strength="ocrm/refit_disagreement"),
    # mean of k RMs (ensemble.*)
    "ensemble_mean": Part(ensemble="mean", slot="reward_model", build=_ensemble_figures),
    # worst case of k RMs (ensemble.*)
    "ensemble_wco": Part(
        ensemble="wco", slot="reward_model", build=_ensemble_figures, strength="ensemble/penalty_share"
    ),
    # uncertainty-weighted k RMs, mean − λ·Var (ensemble.*)
    "ensemble_uwo": Part(
        ensemble="uwo", slot="reward_model", build=_ensemble_figures, strength="ensemble/penalty_share"
    ),
    # preference-as-reward shaping against SFT references (par.*)
    "par": Part(build=_par, strength="par/saturation"),
    # χ² occupancy regularisation (chi2.*)
    "chi2": Part(build=_chi2, strength="chi2/penalty_share"),
    # reward minus a per-token length cost (length_penalty.*)
    "length_penalty": Part(build=_length_penalty),
    # clipped (optionally whitened) reward (reward_clip.*)
    "reward_clip": Part(build=_reward_clip),
    # min KL s.t. E[proxy] ≥ proxy point, Lagrange multiplier (constrained.*)
    "constrained": Part(kl=True, build=_constrained),
}


def part_name(spec: str) -> str:
    """A part's name as typed (`kl`, `my_method`) or the attribute of an import path (`mypkg.m:my_method`)."""
    return spec.rpartition(":")[2].rpartition(".")[2] if ":" in spec else spec


def _plugin(spec: str, obj: object) -> Part:
    """A plugin's Part (or bare build function) under its name, with the version of its code."""
    if callable(obj) and not isinstance(obj, Part):
        obj = Part(build=obj)
    if not isinstance(obj, Part):
        raise ValueError(f"method {spec!r}: expected an overopt.methods.Part or a build(ctx, mitigations) function")
    if obj.args is not None and not (isinstance(obj.args, type) and issubclass(obj.args, BaseModel)):
        raise ValueError(f"method {spec!r}: its args must be a pydantic BaseModel class")
    return dataclasses.replace(obj, name=part_name(spec), version=source_version(obj.build) if obj.build else "")


PARTS: Registry[Part] = Registry("method", "overopt.methods", _plugin)
for _name, _part in _BUILTIN_PARTS.items():
    PARTS.register(_name, dataclasses.replace(_part, name=_name))


def validate_method_args(methods: list[str], given: Mapping[str, Mapping[str, Any]]) -> dict[str, dict]:
    """`method_args` checked against the models of the plugin parts in `methods` (defaults filled in);
    a key that names no plugin part of these methods is refused, so a typo cannot go unnoticed."""
    parts = {}
    for spec in (p.strip() for m in methods for p in m.split("+")):
        if spec and not PARTS.is_builtin(spec):
            part = PARTS.resolve(spec)
            if part.args is not None:
                parts[part.name] = part
    unknown = sorted(set(given) - set(parts))
    if unknown:
        takers = f"parts with knobs: {', '.join(parts)}" if parts else "no method part in --methods takes knobs"
        raise ValueError(f"method_args.{unknown[0]}: not a plugin part of --methods ({takers})")
    out = {}
    for name, part in parts.items():
        try:
            out[name] = part.args.model_validate(dict(given.get(name) or {})).model_dump(mode="json")
        except ValidationError as err:
            raise ValueError(validation_line(err, f"method_args.{name}")) from None
    return out


@dataclass(frozen=True)
class MethodPlan:
    """A resolved method: its RL settings and what it plugs in."""

    name: str
    parts: tuple[str, ...]
    rl: RLConfig
    ensemble: str | None = None
    ocrm: bool = False
    resolved: tuple[Part, ...] = field(default=())  # the parts, in order

    @property
    def best_of_n(self) -> bool:
        return any(part.best_of_n for part in self.resolved)

    @property
    def daa(self) -> str | None:
        """The direct-alignment loss of a DAA method (dpo, ipo, simpo, rpo, hinge), else None."""
        return next((part.daa for part in self.resolved if part.daa), None)

    @property
    def uses_kl(self) -> bool:
        return self.rl.kl.coef > 0

    @property
    def strength_key(self) -> str | None:
        """The effective-strength figure of the first part that has one (`ocrm+kl`: OCRM's)."""
        return next((part.strength for part in self.resolved if part.strength), None)

    @property
    def moves_reference(self) -> bool:
        """True when π_ref must be a copy of π_SFT that the method may change (resets, OCRM anchors)."""
        return "ref_reset" in self.parts or (self.ocrm and self.uses_kl)

    def check_proxy(self, proxy: str, testbed: str) -> None:
        """Refuse parts that need what the testbed's proxy lacks (see Testbed.proxy)."""
        if proxy != "preference":
            needs_pairs = [s for s, p in zip(self.parts, self.resolved) if p.needs == "pairs"]
            if needs_pairs:
                raise ValueError(
                    f"method {self.name!r}: {needs_pairs[0]!r} trains on gold-labelled preference pairs, and "
                    f"testbed {testbed!r} has none (its proxy: {proxy}; try summarize or hf)"
                )
        if proxy == "rule":
            needs_rm = [
                s for s, p in zip(self.parts, self.resolved) if p.ensemble or p.ocrm or p.needs == "reward_model"
            ]
            if needs_rm:
                raise ValueError(
                    f"method {self.name!r}: {needs_rm[0]!r} needs a learned reward model, and testbed "
                    f"{testbed!r} rewards by rule (try the judge or summarize testbeds)"
                )
        if proxy == "process" and "signcert" in self.parts:
            raise ValueError(
                f"method {self.name!r}: signcert reads one linear head on the whole completion, and testbed "
                f"{testbed!r} aggregates a PRM's step rewards (its return is no linear function of one head input)"
            )
        if proxy == "judge" and self.ocrm:
            raise ValueError(
                f"method {self.name!r}: ocrm re-fits a Bradley-Terry RM on preference pairs; testbed {testbed!r} "
                "learns a judge of single answers"
            )

    def part_sections(self, cfg: ExperimentConfig) -> dict:
        """The configuration each part reads (its built-in section, or a plugin's knobs and code version),
        as recorded in the run's fingerprint."""
        sections = {}
        for spec, part in zip(self.parts, self.resolved):
            if PARTS.is_builtin(spec):
                if hasattr(cfg, spec):
                    sections[spec] = getattr(cfg, spec).model_dump()
            else:
                sections[spec] = {"args": cfg.method_args.get(part.name, {}), "version": part.version}
        return sections

    def mitigations(self, ctx: MethodContext) -> Mitigations:
        m = Mitigations()
        for part in self.resolved:
            if part.build is not None:
                args = part.args.model_validate(ctx.cfg.method_args.get(part.name, {})) if part.args else None
                part.build(dataclasses.replace(ctx, args=args), m)
        return m


def resolve_method(name: str, rl: RLConfig) -> MethodPlan:
    """Parse `name` (parts joined by '+') into a plan; impossible combinations raise ValueError."""
    parts = tuple(p.strip() for p in name.split("+"))
    if any(not p for p in parts):
        raise ValueError(f"method {name!r} has an empty part")
    try:
        chosen = [PARTS.resolve(p) for p in parts]
    except ValueError as err:
        raise ValueError(f"{err} (in {name!r})") from None
    if len(set(parts)) != len(parts):
        raise ValueError(f"method {name!r} repeats a part")
    if "none" in parts and len(parts) > 1:
        raise ValueError(f"method {name!r}: 'none' cannot be combined with other parts")
    slots: dict[str, str] = {}
    for p, part in zip(parts, chosen):
        if part.slot is not None and part.slot in slots:
            raise ValueError(
                f"method {name!r}: {slots[part.slot]!r} and {p!r} both set the {part.slot.replace('_', ' ')}"
            )
        if part.slot is not None:
            slots[part.slot] = p
    if any(part.best_of_n for part in chosen):
        others = [p for p, part in zip(parts, chosen) if not (part.best_of_n or part.ensemble)]
        if others:
            raise ValueError(
                f"method {name!r}: best-of-n trains no policy; it combines only with a reward-model ensemble "
                f"(ensemble_mean, ensemble_wco, ensemble_uwo), not with {others[0]!r}"
            )
    if any(part.daa for part in chosen) and len(parts) > 1:
        daa = next(p for p, part in zip(parts, chosen) if part.daa)
        raise ValueError(f"method {name!r}: {daa!r} is a direct-alignment loss with its own training; it takes no "
                         "other part (its knobs: daa.* and its own section)")  # fmt: skip
    kl_on = any(part.kl for part in chosen)
    if kl_on and rl.kl.coef <= 0:
        raise ValueError(f"method {name!r} uses a KL penalty: set rl.kl.coef > 0")
    update: dict = {} if kl_on else {"kl": rl.kl.model_copy(update={"coef": 0.0})}
    algos = {part.algo for part in chosen if part.algo}
    if len(algos) > 1:
        raise ValueError(f"method {name!r}: its parts need different base algorithms ({', '.join(sorted(algos))})")
    if algos:
        update["algo"] = algos.pop()
    return MethodPlan(
        name=name,
        parts=parts,
        rl=rl.model_copy(update=update),
        ensemble=next((part.ensemble for part in chosen if part.ensemble), None),
        ocrm=any(part.ocrm for part in chosen),
        resolved=tuple(chosen),
    )
