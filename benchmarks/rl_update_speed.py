"""How overopt's RL update scales: step time, peak memory and MFU against model size, completion length and group size.

    python benchmarks/rl_update_speed.py                     # the sweep (minutes on 2 CPU cores): scaling.png
    python benchmarks/rl_update_speed.py --quick --no-write  # smoke check (~30 s)
    python benchmarks/rl_update_speed.py --device cuda --dtype bfloat16

One factor varies at a time around the `default` preset's sizes (hidden 64, 2 layers, 4 heads,
32 prompts × group 4, 12 completion tokens): model size, completion tokens per row, group size.
Each configuration runs the real update loop, `overopt.stages.rl.train_policy` (GRPO, no KL, one
epoch of one minibatch), for warm-up + timed updates in a fresh subprocess, with a freshly
initialised tiny Llama policy and a proxy RM of the same size built from its backbone (as the lab's
RM reuses the SFT backbone). No training is needed: the cost of an update does not depend on the
weights, only on the shapes, and the shapes are pinned: the testbed given to train_policy names an
EOS id the policy cannot sample, so every completion runs to exactly the budget (checked: the
completion tokens generated in every update are counted).

Measured per timed update (medians in the tables):
  step        wall time from the end of one update to the end of the next;
  generation  time inside `sample_completions`;
  update      the policy-update phase: from the start of the policy's forward with grad to the last
              parameter's gradient (forward, advantages, surrogate loss, backward), by hooks;
  other       the rest (RM scoring, gradient clipping, optimiser step, bookkeeping).
Peak memory: the peak during train_policy (warm-up and timed updates) minus the memory in use just
before it, with imports, models and prompts built: activations, gradients, optimiser state, rollouts,
and the first update's one-off costs (lazy initialisation, thread pools, allocator arenas). On the
CPU, resident set size: VmHWM in /proc/self/status, its peak reset first by writing 5 to
/proc/self/clear_refs (Linux; elsewhere ru_maxrss, which cannot be reset and so misses a peak below
the construction's); on CUDA, torch.cuda.max_memory_allocated after reset_peak_memory_stats. The
peak of the timed updates alone is not reported: the allocator keeps what the warm-up freed, so the
RSS barely moves afterwards.
MFU: analytic FLOPs of the update phase (see `update_flops`, cross-checked once against
torch.utils.flop_counter.FlopCounterMode) over its measured time, divided by the machine's matmul peak
(best of several large square matmuls, same threads and dtype).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Literal

import tyro

HERE = Path(__file__).parent
RESULT = "RESULT "  # prefix of the child's JSON line on stdout


@dataclasses.dataclass(frozen=True)
class Args:
    threads: int = 2
    """torch.set_num_threads of every configuration and of the matmul peak."""
    steps: int = 8
    """Timed updates per configuration."""
    warmup: int = 2
    """Untimed updates before them."""
    sizes: str = "32:2:2,64:2:4,128:3:4,256:4:8"
    """Model sizes of the model sweep, as hidden:layers:heads (the base size is added if missing)."""
    lengths: str = "6,12,24,48,96"
    """Completion tokens per row of the completion-length sweep (every completion runs to this budget)."""
    groups: str = "2,4,8,16"
    """Completions per prompt of the group-size sweep, at the base prompts per step."""
    quick: bool = False
    """Smoke check: two points per sweep (the base and one smaller), 1 warm-up and 2 timed updates; writes nothing."""
    write: bool = True
    """Replace this benchmark's section of benchmarks/RESULTS.md and write benchmarks/scaling.png
    (otherwise the plot goes to benchmarks/out/scaling.png)."""
    device: Literal["cpu", "cuda"] = "cpu"
    """Where the models run."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """float32, or bfloat16 autocast around the update loop (weights and optimiser stay float32)."""
    matmul_size: int = 0
    """Side of the square matrices of the matmul peak (0: best of 1024 and 2048 on the CPU, 8192 on CUDA)."""


# -- one configuration, in a fresh subprocess -----------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FixedLengthTestbed:
    """What train_policy reads of a testbed (`tokenizer.pad_token_id`, `tokenizer.eos_token_id`,
    `max_completion_tokens`), with an EOS id outside the vocabulary: sampled ids are argmax indices
    ≥ 0, never -1, so no row stops early and every completion has exactly `max_completion_tokens` tokens."""

    tokenizer: object  # a namespace with pad_token_id and eos_token_id
    max_completion_tokens: int


class Clock:
    """Timestamps that are exact on the CPU (perf_counter) and on CUDA (events on the current stream)."""

    def __init__(self, cuda: bool):
        import torch

        self.torch, self.cuda = torch, cuda

    def stamp(self):
        if not self.cuda:
            return time.perf_counter()
        event = self.torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def seconds(self, start, end) -> float:
        if not self.cuda:
            return end - start
        end.synchronize()
        return start.elapsed_time(end) / 1000

    def wall(self) -> float:
        """perf_counter after the device has finished its queued work."""
        if self.cuda:
            self.torch.cuda.synchronize()
        return time.perf_counter()


class UpdateMeter:
    """Per update: wall time, time inside sample_completions, the update phase (policy forward with grad to the
    last parameter gradient) and the shapes generated."""

    def __init__(self, clock: Clock):
        self.clock = clock
        self.marks: list[float] = []  # wall time at the start of the loop, then at the end of every update
        self.updates: list[dict] = []
        self._current: dict = {}
        self._fwd_start = self._last_grad = None
        self.last_rollout = None

    def attach(self, policy) -> list:
        import torch

        def pre(module, inputs):
            # Generation and no-grad passes are skipped; the first grad forward of an update opens the phase.
            if torch.is_grad_enabled() and self._fwd_start is None:
                self._fwd_start = self.clock.stamp()

        def grad_done(param):
            self._last_grad = self.clock.stamp()

        handles = [policy.register_forward_pre_hook(pre)]
        handles += [p.register_post_accumulate_grad_hook(grad_done) for p in policy.parameters() if p.requires_grad]
        return handles

    def sample(self, call):
        """Run `call()`, one sample_completions, timing it and recording the rollout's shapes."""
        start = self.clock.wall()
        rollout = call()
        self._current["generation_s"] = self._current.get("generation_s", 0.0) + self.clock.wall() - start
        cmask = rollout.completion_mask
        self._current.update(
            rows=cmask.shape[0],
            completion_width=cmask.shape[1],
            completion_tokens=int(cmask.sum()),
            update_tokens=rollout.input_ids.numel(),
            prompt_len=rollout.prompt_len,
        )
        self.last_rollout = rollout
        return rollout

    def step_end(self) -> None:
        self.marks.append(self.clock.wall())
        u = self._current
        u["step_s"] = self.marks[-1] - self.marks[-2]
        u["update_s"] = self.clock.seconds(self._fwd_start, self._last_grad) if self._last_grad is not None else None
        self.updates.append(u)
        self._current, self._fwd_start, self._last_grad = {}, None, None


def update_flops(n_block: int, layers: int, hidden: int, vocab: int, rows: int, seq: int, completion: int) -> dict:
    """FLOPs of one forward + backward of the policy over `rows` sequences of `seq` tokens, as in the update.

    - blocks: 6·N·tokens, N the weights of the transformer blocks' matmuls (non-embedding parameters):
      2 FLOPs per weight and token forward, 4 backward (input and weight gradients); Kaplan et al. 2020,
      arXiv 2001.08361, §2.1.
    - attention: 12·L·d·seq·tokens, the scores Q·Kᵀ and their product with V over the full seq × seq
      window, forward + backward; Chowdhery et al. 2022 (PaLM), arXiv 2204.02311, appendix B. A kernel
      that skips the causally masked half does half of this.
    - head: 6·d·V per position through the (tied) output head, which runs only on the completion + 1
      positions of each row (completion_logits' `logits_to_keep`); the embedding lookup is free.
    Norms, RoPE, softmax, activations and the optimiser are not counted.
    """
    tokens = rows * seq
    return {
        "blocks": 6 * n_block * tokens,
        "attention": 12 * layers * hidden * seq * tokens,
        "head": 6 * hidden * vocab * rows * (completion + 1),
    }


def block_weights(policy) -> int:
    """Weights of the policy's matmuls other than the output head (every Linear but get_output_embeddings)."""
    import torch

    head = policy.get_output_embeddings()
    return sum(m.weight.numel() for m in policy.modules() if isinstance(m, torch.nn.Linear) and m is not head)


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


class PeakMemory:
    """Peak memory since the last `reset`, in bytes: on CUDA what torch allocated, on the CPU the resident set
    size (VmHWM, reset by writing 5 to /proc/self/clear_refs; where that is missing, ru_maxrss, which cannot be
    reset: the peak is then the process's, construction included)."""

    def __init__(self, cuda: bool):
        import torch

        self.torch, self.cuda = torch, cuda
        self.resettable = True
        if cuda:
            self.method = "torch.cuda.max_memory_allocated"
        else:
            try:
                Path("/proc/self/clear_refs").write_text("5")
                self.method = "VmHWM, reset through /proc/self/clear_refs"
            except OSError:
                self.method, self.resettable = "ru_maxrss", False

    def reset(self) -> int:
        """Restart the peak; the memory in use now."""
        if self.cuda:
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()
            return self.torch.cuda.memory_allocated()
        if self.resettable:
            Path("/proc/self/clear_refs").write_text("5")
            return _rss_kib("VmRSS") * 1024
        return self.peak()

    def peak(self) -> int:
        if self.cuda:
            self.torch.cuda.synchronize()
            return self.torch.cuda.max_memory_allocated()
        if self.resettable:
            return _rss_kib("VmHWM") * 1024
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def op_recorder():
    """A TorchDispatchMode that records the names of the aten ops that run under it (FlopCounterMode counts only
    the ops it has formulas for: this tells which attention kernel it saw)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class OpNames(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names: set[str] = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.add(str(func.overloadpacket))
            return func(*args, **(kwargs or {}))

    return OpNames()


def measure(c: dict) -> dict:
    """Build one configuration and run warm-up + timed updates of train_policy; the figures as a dict."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import contextlib
    import copy
    import tempfile
    import types
    import warnings

    import torch
    from rl_throughput import NullProgress  # train_policy's progress interface, silent
    from transformers.utils import logging as hf_logging

    import overopt.stages.rl as rl_stage
    from overopt.config import load_config
    from overopt.mitigations.rewards import ProxyRewardModel
    from overopt.models.policy import completion_logprobs, tiny_llama
    from overopt.models.reward import reward_model_from_backbone
    from overopt.testbeds.summarize import SummarizeSpec, SummarizeTestbed

    hf_logging.set_verbosity_error()  # the RM's fresh score head is "newly initialised": expected
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    torch.set_num_threads(c["threads"])
    torch.set_flush_denormal(True)  # as `overopt run` does (subnormal Adam moments are ~100× slower on x86)
    cuda = c["device"] == "cuda"
    device = torch.device(c["device"])
    exp = load_config("default")
    real = SummarizeTestbed(SummarizeSpec(**exp.summarize.model_dump()))
    tok = real.tokenizer
    testbed = FixedLengthTestbed(types.SimpleNamespace(pad_token_id=tok.pad_token_id, eos_token_id=-1), c["length"])
    prompts = real.prompts("train", 4 * c["prompts"], exp.seed + 2)
    max_positions = max(len(p) for p in prompts) + c["length"] + 8
    policy = tiny_llama(tok, c["hidden"], c["layers"], c["heads"], max_positions=max_positions, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        policy.save_pretrained(tmp)
        rm = reward_model_from_backbone(tmp, seed=1)
    ref = copy.deepcopy(policy).to(device).eval()  # with kl.coef = 0 train_policy never runs it
    policy.to(device).train()
    rm.to(device).eval()
    updates = c["warmup"] + c["steps"]
    kl = exp.rl.kl.model_copy(update={"coef": 0.0, "adaptive": False})
    rl = exp.rl.model_copy(
        update={"algo": "grpo", "steps": updates, "prompts_per_step": c["prompts"], "group_size": c["group"],
                "epochs": 1, "minibatches": 1, "temperature": 1.0, "loss_aggregation": "auto", "kl": kl}
    )  # fmt: skip

    meter = UpdateMeter(Clock(cuda))
    memory = PeakMemory(cuda)
    handles = meter.attach(policy)
    sample = rl_stage.sample_completions
    rl_stage.sample_completions = lambda *a, **kw: meter.sample(lambda: sample(*a, **kw))
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16) if c["dtype"] == "bfloat16" else contextlib.nullcontext()
    )
    try:
        with autocast:
            memory_base = memory.reset()
            meter.marks.append(meter.clock.wall())
            rl_stage.train_policy(
                rl, policy=policy, ref_policy=ref, reward_source=ProxyRewardModel(rm), value_model=None,
                testbed=testbed, train_prompts=prompts, seed=0, eval_every=updates + 1,
                on_eval=lambda step, figures: None, progress=NullProgress(), steps=updates, evaluate_first=False,
                on_step_end=lambda step, loop_state: meter.step_end(),
            )  # fmt: skip
        memory_peak = memory.peak()
    finally:
        rl_stage.sample_completions = sample
        for handle in handles:
            handle.remove()
    if len(meter.updates) != updates:
        raise RuntimeError(f"{len(meter.updates)} updates recorded, expected {updates}")
    timed = meter.updates[c["warmup"] :]

    m = policy.config
    n_block = block_weights(policy)
    u = timed[-1]
    flops = update_flops(
        n_block, m.num_hidden_layers, m.hidden_size, m.vocab_size, u["rows"], u["update_tokens"] // u["rows"],
        u["completion_width"],
    )  # fmt: skip
    out = {
        **c,
        "params": sum(p.numel() for p in policy.parameters()),  # the tied embedding counted once
        "block_params": n_block,
        "vocab": m.vocab_size,
        "updates": timed,
        "flops": flops,
        "memory_bytes": memory_peak - memory_base,
        "memory_method": memory.method,
        "device_name": torch.cuda.get_device_name() if cuda else "cpu",
        "lr": rl.lr,
    }
    if c.get("flop_check"):
        # Count the update phase's work on the last rollout with torch's FLOP counter (forward with grad + backward
        # of a surrogate-like loss on completion_logprobs, as the update does).
        from torch.utils.flop_counter import FlopCounterMode

        r = meter.last_rollout
        policy.zero_grad(set_to_none=True)
        with FlopCounterMode(display=False) as counter, op_recorder() as ops:
            logprobs, _ = completion_logprobs(policy, r.input_ids, r.attention_mask, r.prompt_len, 1.0)
            (logprobs * r.completion_mask).sum().backward()
        out["flop_counter"] = {
            "total": counter.get_total_flops(),
            "ops": {str(op): n for op, n in counter.get_flop_counts().get("Global", {}).items()},
        }
        out["attention_ops"] = sorted(op for op in ops.names if "attention" in op)
    return out


def one(config_json: str) -> None:
    print(RESULT + json.dumps(measure(json.loads(config_json))), flush=True)


# -- the sweep ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, order=True)
class Config:
    hidden: int
    layers: int
    heads: int
    length: int
    group: int
    prompts: int

    @property
    def model(self) -> str:
        return f"{self.hidden}/{self.layers}/{self.heads}"


def plan(args: Args) -> tuple[Config, dict[str, list[Config]]]:
    """The base point (the default preset's sizes) and the configurations of each sweep."""
    from overopt.config import load_config

    exp = load_config("default")
    base = Config(exp.model.hidden_size, exp.model.num_layers, exp.model.num_heads,
                  exp.summarize.max_completion_tokens, exp.rl.group_size, exp.rl.prompts_per_step)  # fmt: skip
    sizes = [tuple(int(v) for v in s.split(":")) for s in args.sizes.split(",") if s.strip()]
    lengths = [int(v) for v in args.lengths.split(",") if v.strip()]
    groups = [int(v) for v in args.groups.split(",") if v.strip()]
    if args.quick:  # the base and the smallest value of each sweep
        sizes, lengths, groups = [min(sizes)], [min(lengths)], [min(groups)]
    for hidden, _, heads in sizes:
        if hidden % heads:
            raise SystemExit(f"--sizes: {heads} heads do not divide hidden size {hidden}")
    if min(groups) < 2:
        raise SystemExit("--groups: GRPO needs at least 2 completions per prompt")
    sweeps = {
        "model size": [dataclasses.replace(base, hidden=h, layers=n, heads=k) for h, n, k in sizes],
        "completion length": [dataclasses.replace(base, length=n) for n in lengths],
        "group size": [dataclasses.replace(base, group=k) for k in groups],
    }
    return base, {name: sorted(set(cs) | {base}) for name, cs in sweeps.items()}


def run_config(cfg: Config, args: Args, warmup: int, steps: int, flop_check: bool) -> dict:
    payload = {**dataclasses.asdict(cfg), "threads": args.threads, "warmup": warmup, "steps": steps,
               "device": args.device, "dtype": args.dtype, "flop_check": flop_check}  # fmt: skip
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--one", json.dumps(payload)],
        stdout=subprocess.PIPE, text=True, check=True,
    )  # fmt: skip
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT)]
    if not lines:
        raise RuntimeError(f"{cfg}: no result from the subprocess:\n{proc.stdout}")
    return json.loads(lines[-1][len(RESULT) :])


def matmul_peak(args: Args) -> tuple[float, str]:
    """Best FLOP/s of large square matmuls (2·n³ FLOPs each) with the benchmark's threads, device and dtype."""
    import torch

    torch.set_num_threads(args.threads)
    cuda = args.device == "cuda"
    dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    sizes = [args.matmul_size] if args.matmul_size else ([8192] if cuda else [1024, 2048])
    best, best_n = 0.0, 0
    for n in sizes:
        a = torch.randn(n, n, device=args.device, dtype=dtype)
        b = torch.randn(n, n, device=args.device, dtype=dtype)
        torch.matmul(a, b)  # warm-up
        for _ in range(5):
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            torch.matmul(a, b)
            if cuda:
                torch.cuda.synchronize()
            rate = 2 * n**3 / (time.perf_counter() - start)
            if rate > best:
                best, best_n = rate, n
    return best, f"{args.dtype} matmul {best_n}×{best_n}, best of 5, {args.threads} threads"


def summarise(r: dict, peak: float) -> dict:
    """Medians over the timed updates of one configuration."""
    ups = r["updates"]
    step = [u["step_s"] for u in ups]
    update = [u["update_s"] for u in ups]
    flops = sum(r["flops"].values())
    rows = ups[0]["rows"]
    expected = rows * r["length"]
    return {
        "step_ms": statistics.median(step) * 1e3,
        "step_range_ms": (min(step) * 1e3, max(step) * 1e3),
        "generation_ms": statistics.median(u["generation_s"] for u in ups) * 1e3,
        "update_ms": statistics.median(update) * 1e3,
        "other_ms": statistics.median(u["step_s"] - u["generation_s"] - u["update_s"] for u in ups) * 1e3,
        "rows": rows,
        "completion_tokens": statistics.median(u["completion_tokens"] for u in ups),
        # every completion ran to the budget in every timed update
        "at_budget": all(u["completion_tokens"] == expected and u["completion_width"] == r["length"] for u in ups),
        "update_tokens": statistics.median(u["update_tokens"] for u in ups),
        "gflop": flops / 1e9,
        "gflops": flops / statistics.median(update) / 1e9,
        "mfu": flops / statistics.median(update) / peak,
        "memory_mb": r["memory_bytes"] / 2**20,
    }


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log y against log x."""
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def slopes(sweeps: dict[str, list[Config]], raw: dict[Config, dict], s: dict[Config, dict]) -> tuple[list[str], str]:
    """Log-log slopes of step time (and memory) against completion tokens per batch over the two sweeps that scale
    them, and against parameters over the model sweep; the verdict on linear growth."""
    lines, worst = [], None
    for name in ("completion length", "group size"):
        configs = sweeps[name]
        if len(configs) < 2:
            continue
        xs = [s[c]["completion_tokens"] for c in configs]
        b = slope(xs, [s[c]["step_ms"] for c in configs])
        memory = [s[c]["memory_mb"] for c in configs]
        m = f"{slope(xs, memory):.2f}" if min(memory) > 0 else "n/a"
        lines.append(
            f"{name} sweep ({min(xs):.0f}–{max(xs):.0f} completion tokens per batch): log-log slope of step time "
            f"**{b:.2f}**, of peak memory {m}"
        )
        worst = b if worst is None else max(worst, b)
    models = sweeps["model size"]
    if len(models) > 1:
        b = slope([raw[c]["block_params"] for c in models], [s[c]["step_ms"] for c in models])
        lines.append(f"model-size sweep: log-log slope of step time against non-embedding parameters {b:.2f}")
    if worst is None:
        verdict = "No token sweep has two points: no slope."
    elif worst <= 1:
        verdict = (
            "Step time grows no worse than linearly in completion tokens per batch across the measured range "
            f"(largest slope {worst:.2f} ≤ 1)."
        )
    else:
        verdict = (
            "Step time grows FASTER than linearly in completion tokens per batch across the measured range "
            f"(largest slope {worst:.2f} > 1)."
        )
    return lines, verdict


def results_table(sweeps: dict[str, list[Config]], raw: dict[Config, dict], s: dict[Config, dict]) -> str:
    rows = [
        "| sweep | model (hidden/layers/heads) | parameters (non-embedding) | prompts × group "
        "| completion tokens / row | completion tokens / batch (measured) | step ms (min–max) | generation ms "
        "| update phase ms | other ms | peak memory MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, configs in sweeps.items():
        for cfg in configs:
            r, x = raw[cfg], s[cfg]
            lo, hi = x["step_range_ms"]
            budget = "" if x["at_budget"] else " (**not all at budget**)"
            cells = [
                name, cfg.model, f"{r['params'] / 1e3:.0f} k ({r['block_params'] / 1e3:.0f} k)",
                f"{cfg.prompts} × {cfg.group}", str(cfg.length), f"{x['completion_tokens']:.0f}{budget}",
                f"{x['step_ms']:.0f} ({lo:.0f}–{hi:.0f})", f"{x['generation_ms']:.0f}", f"{x['update_ms']:.0f}",
                f"{x['other_ms']:.0f}", f"{x['memory_mb']:.1f}",
            ]  # fmt: skip
            rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def mfu_table(sweeps: dict[str, list[Config]], raw: dict[Config, dict], s: dict[Config, dict]) -> str:
    rows = [
        "| sweep | model (hidden/layers/heads) | rows × (prompt + completion) tokens | non-embedding parameters "
        "| GFLOP per update phase (blocks + attention + head) | update phase ms | achieved GFLOP/s | MFU |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, configs in sweeps.items():
        for cfg in configs:
            r, x = raw[cfg], s[cfg]
            f = r["flops"]
            seq = int(x["update_tokens"] // x["rows"])
            parts = " + ".join(f"{f[k] / 1e9:.2f}" for k in ("blocks", "attention", "head"))
            rows.append(
                f"| {name} | {cfg.model} | {x['rows']} × {seq} | {r['block_params'] / 1e3:.0f} k "
                f"| {x['gflop']:.2f} ({parts}) | {x['update_ms']:.1f} | {x['gflops']:.1f} | {x['mfu']:.1%} |"
            )
    return "\n".join(rows)


def flop_check_lines(r: dict) -> list[str]:
    fc = r["flop_counter"]
    f = r["flops"]
    analytic = sum(f.values())
    ops = ", ".join(f"{op} {n / 1e9:.3f}" for op, n in sorted(fc["ops"].items(), key=lambda kv: -kv[1]))
    attention = ", ".join(r["attention_ops"]) or "none seen"
    return [
        f"FLOP count cross-check ({r['hidden']}/{r['layers']}/{r['heads']}, {r['prompts']} × {r['group']} rows, "
        f"{r['length']} completion tokens; forward with grad + backward of completion_logprobs on the last rollout): "
        f"analytic {analytic / 1e9:.3f} GFLOP (blocks {f['blocks'] / 1e9:.3f} + attention {f['attention'] / 1e9:.3f} "
        f"+ head {f['head'] / 1e9:.3f}); torch FlopCounterMode {fc['total'] / 1e9:.3f} GFLOP ({ops}); "
        f"analytic / counted = {analytic / fc['total']:.3f}, analytic without attention / counted = "
        f"{(analytic - f['attention']) / fc['total']:.3f}. Attention kernels that ran: {attention}.",
    ]


def plot(path: Path, sweeps: dict[str, list[Config]], raw: dict[Config, dict], s: dict[Config, dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def reference(ax, xs, ys):
        x0, y0 = xs[0], ys[0]
        ax.plot([x0, xs[-1]], [y0, y0 * xs[-1] / x0], ":", color="grey", label="slope 1")

    fig, axes = plt.subplots(2, 2, figsize=(11, 8.5))
    models = sweeps["model size"]
    px = [raw[c]["block_params"] for c in models]
    ax = axes[0, 0]
    for key, style, label in (("step_ms", "o-", "step"), ("generation_ms", "s--", "generation"),
                              ("update_ms", "^--", "update phase")):  # fmt: skip
        ax.plot(px, [s[c][key] for c in models], style, label=label)
    reference(ax, px, [s[c]["step_ms"] for c in models])
    for c, x in zip(models, px):
        ax.annotate(c.model, (x, s[c]["step_ms"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set(xlabel="non-embedding parameters", ylabel="ms per update", title="step time vs model size")
    ax = axes[1, 0]
    ax.plot(px, [s[c]["memory_mb"] for c in models], "o-", label="peak memory increase")
    reference(ax, px, [s[c]["memory_mb"] for c in models])
    ax.set(xlabel="non-embedding parameters", ylabel="MiB", title="peak memory vs model size")
    for name, marker, colour in (("completion length", "o", "C0"), ("group size", "s", "C1")):
        configs = sweeps[name]
        tx = [s[c]["completion_tokens"] for c in configs]
        for ax, key, style, label in (
            (axes[0, 1], "step_ms", "-", "step"),
            (axes[0, 1], "generation_ms", ":", "generation"),
            (axes[1, 1], "memory_mb", "-", "peak memory increase"),
        ):
            alpha = 1.0 if style == "-" else 0.5
            ax.plot(tx, [s[c][key] for c in configs], marker + style, color=colour, alpha=alpha,
                    label=f"{label}, {name} sweep")  # fmt: skip
    for ax, key in ((axes[0, 1], "step_ms"), (axes[1, 1], "memory_mb")):
        configs = sweeps["completion length"]
        reference(ax, [s[c]["completion_tokens"] for c in configs], [s[c][key] for c in configs])
    axes[0, 1].set(xlabel="completion tokens per batch", ylabel="ms per update", title="step time vs tokens")
    axes[1, 1].set(xlabel="completion tokens per batch", ylabel="MiB", title="peak memory vs tokens")
    for ax in axes.flat:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("overopt RL update (GRPO), one factor at a time around the default preset")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(args: Args, base: Config, sweeps: dict[str, list[Config]], raw: dict[Config, dict],
           peak: tuple[float, str], warmup: int, steps: int, png: Path, load: float) -> str:  # fmt: skip
    """The RESULTS.md section: command, date, machine, setup, tables, slopes, plot link, MFU and the FLOP check."""
    from overopt.results import section_head

    s = {cfg: summarise(r, peak[0]) for cfg, r in raw.items()}
    slope_lines, verdict = slopes(sweeps, raw, s)
    b = raw[base]
    default = (args.device, args.dtype) == ("cpu", "float32")
    what = "memory allocated by torch" if args.device == "cuda" else "resident set size"
    config_line = (
        f"GRPO (no KL, 1 epoch × 1 minibatch, T = 1, lr {b['lr']:g}) through `overopt.stages.rl.train_policy`; "
        f"fresh tiny Llama policies and a same-size proxy RM from the policy's backbone; summarize train prompts "
        f"({b['updates'][0]['prompt_len']} tokens); EOS unreachable, so every completion runs to the budget. "
        f"Base point: the `default` preset's {base.model} (hidden/layers/heads), {base.prompts} prompts × group "
        f"{base.group}, {base.length} completion tokens. Each configuration in a fresh subprocess: {warmup} warm-up + "
        f"{steps} timed updates, medians; {args.device} {args.dtype}, torch threads: {args.threads}."
    )
    return "\n".join([
        *section_head(
            "Scaling of the RL update: model size, completion length, group size"
            + ("" if default else f" — {args.device}, {args.dtype}"),
            shlex.join(["python", "benchmarks/rl_update_speed.py", *sys.argv[1:]]),
            machine_note=("" if args.device == "cpu" else f", {b['device_name']}")
            + f"; load average before the run {load:.2f}",
        ),
        config_line,
        "",
        "Step: wall time per update. Generation: inside `sample_completions`. Update phase: from the start of the "
        "policy's forward with grad to its last parameter gradient (forward, advantages, surrogate loss, backward). "
        "Other: RM scoring, clipping, optimiser step, bookkeeping. Completion tokens per batch are counted in every "
        f"timed update (completion_mask sums). Peak memory: {what} ({b['memory_method']}), the peak during "
        "train_policy minus the memory in use just before it, with imports, models and prompts built (so: "
        "activations, gradients, optimiser state, rollouts, and the first update's one-off costs).",
        "",
        results_table(sweeps, raw, s),
        "",
        *(f"- {line}" for line in slope_lines),
        f"- **{verdict}**",
        "",
        f"![step time and memory against model size and completion tokens]({png.name})",
        "",
        f"### Model FLOPs utilisation of the policy update (peak: {peak[0] / 1e9:.1f} GFLOP/s, {peak[1]})",
        "",
        "FLOPs per update phase, analytic: 6·N·tokens (N: the blocks' matmul weights; Kaplan et al. 2020) + "
        "12·L·d·seq·tokens (attention, full seq × seq; PaLM appendix B) + 6·d·V·rows·(completion + 1) (the tied "
        "output head, run only on the completion positions). MFU = FLOPs / update-phase time / matmul peak.",
        "",
        mfu_table(sweeps, raw, s),
        "",
        *(f"- {line}" for line in flop_check_lines(b)),
    ])  # fmt: skip


def main(args: Args) -> None:
    from overopt.results import write_section

    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: torch sees no CUDA device")
    warmup, steps = (1, 2) if args.quick else (args.warmup, args.steps)
    if steps < 1 or warmup < 1:
        raise SystemExit("--steps and --warmup must be at least 1 (the first update pays one-off costs)")
    write = args.write and not args.quick
    base, sweeps = plan(args)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    if load > 0.5 * (os.cpu_count() or 1):
        print(f"WARNING: load average {load:.2f} on {os.cpu_count()} cores: other work will inflate the timings")
    peak = matmul_peak(args)
    print(f"matmul peak: {peak[0] / 1e9:.1f} GFLOP/s ({peak[1]})", flush=True)
    raw: dict[Config, dict] = {}
    start = time.perf_counter()
    for cfg in sorted({c for configs in sweeps.values() for c in configs}):
        raw[cfg] = run_config(cfg, args, warmup, steps, flop_check=cfg == base)
        x = summarise(raw[cfg], peak[0])
        print(
            f"{cfg.model:>9s} {cfg.prompts}×{cfg.group:<3d} len {cfg.length:<3d} step {x['step_ms']:7.1f} ms "
            f"(generation {x['generation_ms']:6.1f}, update {x['update_ms']:6.1f})  "
            f"{x['completion_tokens']:.0f} completion tokens{'' if x['at_budget'] else ' NOT AT BUDGET'}  "
            f"peak +{x['memory_mb']:.1f} MiB  MFU {x['mfu']:.2%}",
            flush=True,
        )
    elapsed = time.perf_counter() - start
    peak = max(peak, matmul_peak(args))  # the machine may be busier or quieter by now: keep the best
    if not all(summarise(r, peak[0])["at_budget"] for r in raw.values()):
        print("WARNING: some completions stopped before the budget; the token axis is the measured count")
    default = (args.device, args.dtype) == ("cpu", "float32")
    png = (HERE if write else HERE / "out") / ("scaling.png" if default else f"scaling-{args.device}-{args.dtype}.png")
    plot(png, sweeps, raw, {cfg: summarise(r, peak[0]) for cfg, r in raw.items()})
    body = report(args, base, sweeps, raw, peak, warmup, steps, png, load)
    print()
    print(body)
    print(f"\nplot: {png}; {elapsed:.0f} s for the configurations")
    if write:
        write_section("scaling" + ("" if default else f":{args.device}:{args.dtype}"), body)
    else:
        print("RESULTS.md not written" + (" (--quick)" if args.quick and args.write else ""))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--one"]:  # a configuration, run by main() in a fresh subprocess
        one(sys.argv[2])
    else:
        main(tyro.cli(Args, args=sys.argv[1:]))
