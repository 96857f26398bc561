"""GPU check, step 3: overopt's RL step against TRL's GRPOTrainer on a ~100M-parameter Llama, side by side.

    python tools/gpu_check/throughput.py --out RESULT_JSON            # CUDA if present, bfloat16 autocast
    python tools/gpu_check/throughput.py --small --device cpu --out /tmp/t.json   # seconds-scale CPU check

It reuses benchmarks/rl_throughput.py (its Setup, run_side, Meter, TokenReward, summarise, tables and the
same-prompts check) with three changes for a GPU:

  - the models: a from-scratch Llama (overopt.models.policy.tiny_llama; default hidden 768, 10 layers,
    12 heads, intermediate 4·hidden, tied embeddings, vocabulary 8192: ~101M parameters) with random
    weights as the policy, and a proxy RM built from its backbone (reward_model_from_backbone), both on
    the device; a word-level tokenizer over that vocabulary; random prompts of 48–64 tokens. Random
    weights: the cost of an update depends on the shapes, not the weights; with near-uniform sampling
    over 8192 tokens almost every completion runs to the budget (the tokens are counted, EOS included);
  - precision: overopt runs under bfloat16 autocast without the weight cache, exactly as the hf
    testbed's `precision()` (weights and AdamW stay float32); TRL gets `bf16=True` (accelerate's
    autocast around the model's forward; weights float32), and its reward function, our code, runs
    the RM under the same autocast as overopt's; `--dtype float32` turns both off;
  - timing on CUDA: the meter synchronises the device before every timestamp, and peak memory is
    torch.cuda.max_memory_allocated over each run (reset before it), next to what was allocated at its
    start (the shared SFT policy and RM).

Both sides: GRPO, group-normalised advantages, no KL (TRL's default beta 0), one optimiser step per batch of
prompts_per_step × group_size completions, T = 1, clip from the `default` preset, lr --lr, torch AdamW.
The output JSON holds every run and the medians; tables in the style of RESULTS.md are printed.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import random
import sys
import tempfile
import time
import types
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "benchmarks"))  # rl_throughput

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import rl_throughput as rt  # noqa: E402
import torch  # noqa: E402


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="result JSON (rewritten after every run)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cuda or cpu")
    p.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--layers", type=int, default=10)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--prompts-per-step", type=int, default=16)
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--prompt-min", type=int, default=48, help="prompt tokens, fewest (BOS included)")
    p.add_argument("--prompt-max", type=int, default=64, help="prompt tokens, most")
    p.add_argument("--max-new", type=int, default=128, help="completion budget (tokens)")
    p.add_argument("--steps", type=int, default=4, help="timed updates per run (after 1 warm-up update)")
    p.add_argument(
        "--lr", type=float, default=1e-6,
        help="both sides' learning rate: the default preset's 3e-4 drives the random-weight 100M model to NaN "
        "logits within 2 bf16 updates on both sides (H200, 2026-11-27); the timing does not depend on it",
    )  # fmt: skip
    p.add_argument("--reps", type=int, default=2, help="runs per side, sides alternating")
    p.add_argument("--threads", type=int, default=4, help="torch CPU threads")
    p.add_argument("--sides", default="overopt-grpo,trl-grpo")
    p.add_argument("--deadline-s", type=float, default=0, help="start no repetition after this many seconds (0: none)")
    p.add_argument(
        "--mask", choices=["transformers", "pad-safe"], default="pad-safe",
        help="sdpa masks for both sides: transformers' own (left padding's pad queries see no key), or "
        "overopt.models.attention's, where those rows attend to every key (the bfloat16 fix; TRL gets it too)",
    )  # fmt: skip
    p.add_argument("--no-cudnn-sdp", action="store_true", help="turn SDPA's cuDNN kernel off (torch.backends.cuda)")
    p.add_argument("--small", action="store_true", help="tiny shapes for a CPU check (overrides the sizes)")
    args = p.parse_args()
    if args.small:
        args.hidden, args.layers, args.heads, args.vocab = 64, 2, 4, 512
        args.prompts_per_step, args.group_size, args.prompt_min, args.prompt_max = 4, 4, 8, 12
        args.max_new, args.steps, args.reps = 16, 2, 1
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    return args


# -- CUDA-aware metering ---------------------------------------------------------------------------


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


class SyncMeter(rt.Meter):
    """rl_throughput's Meter with the device synchronised before every timestamp (exact phase times on CUDA),
    and a record of the dtype the policy's output head produced during generation (is autocast on there?)."""

    def __init__(self, eos_id: int, threads: int):
        super().__init__(eos_id, threads)
        self.head_dtypes: dict[str, set] = {"generate": set(), "other": set()}

    def generate(self, ids, mask, call):
        _sync()

        def synced():
            out = call()
            _sync()
            return out

        return super().generate(ids, mask, synced)

    def policy(self, model, hf_generate: bool = True) -> None:
        super().policy(model, hf_generate)
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        if head is not None:

            def record(module, inputs, output):
                self.head_dtypes["generate" if self._in_generate else "other"].add(str(output.dtype))

            self._handles.append(head.register_forward_hook(record))

    def _forward_hooks(self, model, name: str) -> None:
        def pre(module, inputs):
            if not self._in_generate:
                _sync()
                self._starts[id(module)] = time.perf_counter()

        def post(module, inputs, output):
            if self._in_generate:
                return
            _sync()
            now = time.perf_counter()
            key = name if name != "policy" else ("policy_grad" if torch.is_grad_enabled() else "policy_nograd")
            self.times[key] += now - self._starts.pop(id(module))
            self.counts[f"fwd_{key}"] += 1
            self._fwd_end = now

        self._handles += [model.register_forward_pre_hook(pre), model.register_forward_hook(post)]

    def _opt_pre(self, optimizer, args, kwargs) -> None:
        # The grad hooks fire as the CPU queues the backward; after this sync the device has finished it (and
        # the gradient clipping, which both sides run between backward and step): "loss + backward" includes it.
        _sync()
        if self._last_grad is not None:
            self._last_grad = time.perf_counter()
        super()._opt_pre(optimizer, args, kwargs)

    def _opt_post(self, optimizer, args, kwargs) -> None:
        _sync()
        super()._opt_post(optimizer, args, kwargs)

    def step_end(self) -> None:
        _sync()
        super().step_end()

    def timed(self) -> dict:
        return {**super().timed(), "head_dtypes": {k: sorted(v) for k, v in self.head_dtypes.items()}}


# -- the world: tokenizer, models, prompts -----------------------------------------------------------


def word_tokenizer(vocab: int):
    """A whitespace word-level tokenizer: <pad> <bos> <eos> <unk> w0 … w{vocab-5}; prompts decode to text and
    re-encode to the same ids (TRL tokenises the prompt texts itself)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<bos>", "<eos>", "<unk>", *(f"w{i}" for i in range(vocab - 4))]
    core = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token="<unk>",
        padding_side="left",
    )  # fmt: skip


def build(args, device: torch.device):
    from transformers.utils import logging as hf_logging

    from overopt.config import load_config
    from overopt.models.policy import tiny_llama
    from overopt.models.reward import reward_model_from_backbone

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    cfg = load_config("default")
    cfg = cfg.model_copy(update={"rl": cfg.rl.model_copy(update={"lr": args.lr})})
    tok = word_tokenizer(args.vocab)
    max_positions = args.prompt_max + args.max_new + 8
    sft = tiny_llama(tok, args.hidden, args.layers, args.heads, max_positions=max_positions, seed=0)
    tmp = tempfile.TemporaryDirectory(prefix="gpucheck-policy-")
    sft.save_pretrained(tmp.name)
    tok.save_pretrained(tmp.name)
    rm = reward_model_from_backbone(tmp.name, seed=1)
    sft = sft.to(device).eval()
    rm = rm.to(device).eval()
    rng = random.Random(0)
    n_prompts = max(4 * args.prompts_per_step, 64)
    first_word = tok.convert_tokens_to_ids("w0")
    prompts, seen = [], set()
    while len(prompts) < n_prompts:
        length = rng.randint(args.prompt_min, args.prompt_max) - 1
        p = [tok.bos_token_id] + [first_word + rng.randrange(args.vocab - 4) for _ in range(length)]
        if tuple(p) not in seen:
            seen.add(tuple(p))
            prompts.append(p)
    bad = [p for p in prompts if tok(text=tok.decode(p) + " ")["input_ids"] != p]
    if bad:
        raise SystemExit(f"prompt text does not re-encode to its ids: {bad[0][:10]}…")
    testbed = types.SimpleNamespace(tokenizer=tok, max_completion_tokens=args.max_new)
    setup = rt.Setup(
        cfg=cfg, testbed=testbed, sft_dir=Path(tmp.name), sft=sft, rm=rm, tokenizer=tok, train_prompts=prompts,
        prompts_per_step=args.prompts_per_step, group_size=args.group_size, steps=args.steps, rloo_beta=0.05,
        trl_reward="ids",
    )  # fmt: skip
    return setup, tmp


def patch_trl(device: torch.device, bf16: bool, autocast) -> None:
    """rl_throughput.run_trl is written for the CPU (use_cpu=True, bf16=False): give TRL's config the device and
    precision here, and run the RM reward function under the same autocast as overopt's side."""
    import trl

    original = trl.GRPOConfig

    def config(**kw):
        kw.update(use_cpu=device.type == "cpu", bf16=bf16)
        return original(**kw)

    trl.GRPOConfig = config

    class AutocastTokenReward(rt.TokenReward):
        def __call__(self, *a, **kw):
            with autocast():
                return super().__call__(*a, **kw)

    rt.TokenReward = AutocastTokenReward
    rt.Meter = SyncMeter


def versions() -> dict:
    out = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda}
    for name in ("transformers", "trl", "accelerate", "tokenizers", "datasets"):
        try:
            out[name] = __import__(name).__version__
        except Exception as err:  # noqa: BLE001
            out[name] = f"unavailable: {err!r}"[:200]
    return out


def main() -> int:
    args = parse()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    bf16 = args.dtype == "bfloat16"
    torch.set_num_threads(args.threads)

    def autocast():
        if not bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16, cache_enabled=False)

    result: dict = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "device": torch.cuda.get_device_name(device) if cuda else (platform.processor() or platform.machine()),
        "versions": versions(),
        "runs": [],
    }

    def save() -> None:
        args.out.write_text(json.dumps(result, indent=1, default=str))

    from overopt.models.attention import use_pad_safe_sdpa

    use_pad_safe_sdpa(args.mask == "pad-safe")
    if args.no_cudnn_sdp:
        torch.backends.cuda.enable_cudnn_sdp(False)
    t0 = time.perf_counter()
    s, tmp = build(args, device)
    m = s.sft.config
    result["model"] = {
        "params": sum(p.numel() for p in s.sft.parameters()), "rm_params": sum(p.numel() for p in s.rm.parameters()),
        "hidden": m.hidden_size, "layers": m.num_hidden_layers, "heads": m.num_attention_heads,
        "intermediate": m.intermediate_size, "vocab": m.vocab_size,
        "attn_implementation": getattr(m, "_attn_implementation", None),
    }  # fmt: skip
    result["batch"] = {"rows": s.prompts_per_step * s.group_size, "prompts_per_step": s.prompts_per_step,
                       "group_size": s.group_size, "max_new": args.max_new,
                       "prompt_tokens": [args.prompt_min, args.prompt_max]}  # fmt: skip
    result["build_s"] = round(time.perf_counter() - t0, 2)
    print(f"model: {result['model']['params'] / 1e6:.1f} M parameters on {device} ({args.dtype}); built in "
          f"{result['build_s']} s", flush=True)  # fmt: skip
    save()
    sides = [x.strip() for x in args.sides.split(",") if x.strip()]
    if any(x.startswith("trl") for x in sides):
        try:
            patch_trl(device, bf16, autocast)
        except Exception as err:  # noqa: BLE001 - no TRL: overopt alone
            result["trl_error"] = repr(err)[:2000]
            print(f"TRL unavailable, overopt alone: {err!r}", flush=True)
            sides = [x for x in sides if not x.startswith("trl")]
    rt.Meter = SyncMeter
    runs: dict[str, list[dict]] = {side: [] for side in sides}
    for rep in range(args.reps):
        if rep and args.deadline_s and time.perf_counter() - t0 > args.deadline_s:
            result["stopped_early"] = f"deadline {args.deadline_s} s reached after {rep} repetitions"
            print(result["stopped_early"], flush=True)
            break
        for side in sides:
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated() if cuda else 0
            start = time.perf_counter()
            row: dict = {"side": side, "rep": rep}
            try:
                context = autocast() if side.startswith("overopt") else contextlib.nullcontext()
                with context:
                    r = rt.run_side(s, side, seed=rep, threads=args.threads)
                runs[side].append(r)
                c = r["counts"]
                row.update(
                    wall_s=r["wall_s"], updates=r["updates"], call_s=r["call_s"], counts=dict(c),
                    phases_ms={k: v / r["updates"] * 1000 for k, v in r["phases"].items()},
                    completions_per_s=c["completions"] / r["wall_s"], gen_tokens_per_s=c["tokens"] / r["wall_s"],
                    head_dtypes=r.get("head_dtypes"),
                )  # fmt: skip
            except Exception as err:  # noqa: BLE001 - record and go on with the other side
                import traceback

                row["error"] = traceback.format_exc()[-3000:]
                print(f"rep {rep} {side}: FAILED {err!r}", flush=True)
            row["total_s"] = time.perf_counter() - start
            if cuda:
                torch.cuda.synchronize()
                row["cuda_in_use_at_start_mib"] = round(base / 2**20, 1)
                row["cuda_peak_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
                row["cuda_peak_reserved_mib"] = round(torch.cuda.max_memory_reserved() / 2**20, 1)
            result["runs"].append(row)
            save()
            if "error" not in row:
                print(f"rep {rep} {side:13s} {row['wall_s']:7.2f} s for {row['updates']} updates  "
                      f"{row['completions_per_s']:7.1f} completions/s  {row['gen_tokens_per_s']:8.0f} gen tokens/s  "
                      f"peak {row.get('cuda_peak_allocated_mib', 0):.0f} MiB", flush=True)  # fmt: skip
    # Same prompts in the same order on every side of one repetition (as rl_throughput checks).
    done = [side for side in sides if runs[side]]
    same = True
    for rep in range(min((len(runs[side]) for side in done), default=0)):
        seen = {repr(runs[side][rep]["prompts"]) for side in done}
        same &= len(seen) <= 1
    result["same_prompts_checked"] = same if len(done) > 1 else None
    if done:
        results = {side: rt.summarise(runs[side], s) for side in done}
        for side in done:
            rows = [r for r in result["runs"] if r["side"] == side and "error" not in r]
            results[side]["cuda_peak_allocated_mib"] = max((r.get("cuda_peak_allocated_mib", 0) for r in rows),
                                                           default=None)  # fmt: skip
        result["medians"] = results
        table = rt.tables(results)
        result["table_md"] = table
        ratio_lines = rt.ratios(results, runs)
        result["ratios"] = ratio_lines
        print()
        print(table)
        for line in ratio_lines:
            print("-", line)
    result["total_s"] = round(time.perf_counter() - t0, 2)
    save()
    tmp.cleanup()
    complete = done == sides and all(len(runs[side]) == args.reps for side in sides)
    return 0 if complete and same else 1


if __name__ == "__main__":
    sys.exit(main())
