"""Where a run's time goes (issue 28): one `overopt run` of a preset, its time split by part, to RESULTS.md.

    python benchmarks/run_profile.py --lab runs/default            # the default preset's stages reused
    python benchmarks/run_profile.py --lab runs/default --methods kl --threads 1

The runs go into a fresh temporary OUT whose stages are copied from `--lab` (an OUT of the same preset and
seed). Every part below is timed by wrapping the function that does it (exclusive time: a part's own time,
without the parts it calls), inside the training loop ("train") or an evaluation ("eval"):

  sampling          sampling.sample_completions (rollouts; eval: the held-out samples and the mechanisms' second)
  proxy scoring     the reward source (proxy RM or ensemble) on the rollouts
  gold              the testbed's gold reward and its components
  log-probs         models.policy.completion_logprobs (train: the update's forward with grad, π_ref; eval: π, π_SFT)
  loss              stages.rl._minibatch_loss (surrogate, KL / loss terms, their gradient shares)
  backward          torch.Tensor.backward
  clip + AdamW      the gradient step's clipping and optimiser step (mitigations.protocols.apply_gradients)
  mechanisms        overopt.mechanisms (train: sign flips on the rollouts; eval: accuracy on pairs)
  alarm figures     stages.alarms.measured_figures (pairs ESS, extra heads, radii)
  checkpoints       checkpoint.Checkpointer.save
  logging           metrics.jsonl, samples.jsonl and trackers
  loop (rest)       everything else inside train_policy: prompts, advantages, transforms, bookkeeping
and "run set-up" is the rest of a run (copying the SFT policy, building its method, saving the policy). A timed
part called outside any run (a stage built before the runs, the report) counts in none of the runs' parts.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import torch
import tyro

from overopt.cli import main as overopt_main
from overopt.results import section_head, write_section


@dataclasses.dataclass(frozen=True)
class Args:
    lab: Path
    """A finished OUT of the same preset whose stages (artifacts/) are copied into the profiled OUT."""
    preset: str = "default"
    testbed: str = "summarize"
    methods: str = "none"
    seeds: int = 1
    threads: int = 1
    """torch threads of the run (1: as each of `--jobs 2` on 2 cores)."""
    tag: str = ""
    """Name of this table in RESULTS.md (several profiles side by side, e.g. before/after)."""
    extra: tuple[str, ...] = ()
    """Extra `overopt run` overrides as NAME=VALUE, e.g. compute_once=False."""
    stages: tuple[str, ...] = ()
    """The stages to copy from --lab (default: all); others are built first (not timed): e.g. sft pairs when
    an override changes how the RM is trained."""


OUTSIDE = "outside a run"


class Timer:
    """Exclusive time per (phase, part): entering a timed part pauses the part that called it."""

    def __init__(self):
        self.total: dict[str, float] = defaultdict(float)
        self.stack: list[list] = []  # [name, started at]
        self.phase = "run set-up"

    @contextmanager
    def part(self, name: str, phase: str | None = None):
        now = time.perf_counter()
        if self.stack:
            caller = self.stack[-1]
            self.total[caller[0]] += now - caller[1]
        previous = self.phase
        if phase is not None:
            self.phase = phase
        if phase is not None:
            label = name
        elif not self.stack:  # a timed part called outside any run (a stage built first, the report)
            label = f"{OUTSIDE}: {name}"
        else:
            label = f"{self.phase}: {name}"
        self.stack.append([label, now])
        try:
            yield
        finally:
            end = time.perf_counter()
            own = self.stack.pop()
            self.total[own[0]] += end - own[1]
            self.phase = previous
            if self.stack:
                self.stack[-1][1] = end


def _wrap(timer: Timer, owner, attribute: str, name: str, phase: str | None = None) -> None:
    original = getattr(owner, attribute)

    def timed(*args, **kwargs):
        with timer.part(name, phase):
            return original(*args, **kwargs)

    setattr(owner, attribute, timed)


def instrument(timer: Timer) -> None:
    import overopt.pipeline

    rl, evaluate, run = overopt.stages.rl, overopt.stages.evaluate, overopt.stages.method_run
    _wrap(timer, overopt.pipeline, "run_method", "run set-up", "run set-up")
    _wrap(timer, run, "train_policy", "train: loop (rest)", "train")
    _wrap(timer, run, "evaluation", "eval: loop (rest)", "eval")
    for module in (rl, evaluate):
        _wrap(timer, module, "sample_completions", "sampling")
        _wrap(timer, module, "completion_logprobs", "log-probs")
    _wrap(timer, rl, "_minibatch_loss", "loss")
    _wrap(timer, overopt.mitigations.protocols, "apply_gradients", "clip + AdamW")
    _wrap(timer, torch.Tensor, "backward", "backward")
    for cls in (overopt.mitigations.rewards.ProxyRewardModel, overopt.mitigations.rewards.EnsembleRewardModel):
        _wrap(timer, cls, "__call__", "proxy scoring")
    _wrap(timer, overopt.mechanisms, "training_figures", "mechanisms")
    _wrap(timer, overopt.mechanisms, "evaluation_figures", "mechanisms")
    _wrap(timer, overopt.stages.alarms, "measured_figures", "alarm figures")
    _wrap(timer, overopt.checkpoint.Checkpointer, "save", "checkpoints")
    _wrap(timer, run, "log_evaluation", "logging")


def _gold(timer: Timer) -> None:
    """The testbed's gold is a method of the testbed object: wrap the class the run builds."""
    from overopt.testbeds import base

    for cls in {c for c in _subclasses(base.Testbed)}:
        for attribute in ("gold_components", "gold_reward"):
            if attribute in cls.__dict__:
                _wrap(timer, cls, attribute, "gold")


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def main(args: Args) -> None:
    import overopt.testbeds  # noqa: F401  (registers the built-in testbeds, so their classes exist to wrap)

    timer = Timer()
    instrument(timer)
    _gold(timer)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        for stage in sorted((args.lab / "artifacts").iterdir()):
            if not args.stages or stage.name in args.stages:
                shutil.copytree(stage, out / "artifacts" / stage.name)
        overrides = [part for item in args.extra for part in (f"--{item.split('=', 1)[0]}", item.split("=", 1)[1])]
        argv = ["run", "--preset", args.preset, "--testbed", args.testbed, "--methods", args.methods,
                "--seeds", str(args.seeds), "--threads", str(args.threads), "--out", str(out), *overrides]  # fmt: skip
        start = time.perf_counter()
        overopt_main(argv)
        total = time.perf_counter() - start
    runs = {k: v for k, v in timer.total.items() if not k.startswith(OUTSIDE)}
    run_total = sum(runs.values())
    rows = sorted(runs.items(), key=lambda kv: -kv[1])
    command = (f"python benchmarks/run_profile.py --lab {args.lab} --preset {args.preset} --testbed {args.testbed} "
               f"--methods {args.methods} --seeds {args.seeds} --threads {args.threads}"
               + "".join(f" --extra {item}" for item in args.extra))  # fmt: skip
    body = "\n".join([
        *section_head(f"Where a run's time goes: `{args.preset}` preset, testbed `{args.testbed}`, methods "
                      f"`{args.methods}`" + (f" ({args.tag})" if args.tag else ""), command),
        f"{args.seeds} run(s) per method, {args.threads} torch thread(s); {run_total:.1f} s in the runs, "
        f"{total - run_total:.1f} s of start-up, stages reused and report. Exclusive time per part (the parts are "
        "listed in benchmarks/run_profile.py).",
        "",
        "| part | s | share of the runs |",
        "|---|---|---|",
        *(f"| {name} | {t:.1f} | {100 * t / run_total:.1f} % |" for name, t in rows),
    ])  # fmt: skip
    print(body)
    write_section("run-profile" + (f"-{args.tag}" if args.tag else ""), body)


if __name__ == "__main__":
    main(tyro.cli(Args))
