"""GPU check: why a bfloat16-autocast RL step of a random-weight ~100M Llama gives non-finite gradients.

    python tools/gpu_check/bf16_diagnosis.py --out RESULT_JSON           # CUDA if present
    python tools/gpu_check/bf16_diagnosis.py --small --out /tmp/d.json   # tiny shapes, any device

Two parts, each a table of finite / not finite:

1. scaled_dot_product_attention alone, (dtype) × (backend: math, memory-efficient, cuDNN, flash, the default
   choice) on a left-padded causal batch whose pad queries see no key (fully masked rows, as every left-padded
   prompt has), forward and backward; and the same with those rows unmasked (`unmask_unattended`).
2. The model: one forward and backward of the completion log-likelihood on left-padded rows (prompts of
   48–64 tokens, 32 completion tokens), float32 and bfloat16 autocast, attention sdpa / eager / sdpa restricted
   to the math kernel / sdpa with overopt's pad-safe mask; with hooks that name the first module whose
   output (forward) or gradient (backward) is not finite.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--device", default="auto")
    p.add_argument("--small", action="store_true")
    args = p.parse_args()
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    return args


def backends():
    from torch.nn.attention import SDPBackend

    names = {"math": "MATH", "efficient": "EFFICIENT_ATTENTION", "cudnn": "CUDNN_ATTENTION", "flash": "FLASH_ATTENTION"}
    return {k: getattr(SDPBackend, v) for k, v in names.items() if hasattr(SDPBackend, v)}


def sdpa_table(device: torch.device) -> list[dict]:
    from torch.nn.attention import sdpa_kernel

    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        for name, backend in [("default", None), *backends().items()]:
            for unmask in (False, True):
                torch.manual_seed(0)
                q, k, v = (torch.randn(4, 12, 80, 64, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
                mask = torch.ones(80, 80, dtype=torch.bool, device=device).tril()[None, None].repeat(4, 1, 1, 1)
                mask[0, :, :, :17] = False  # row 0 is left-padded by 17: its first 17 queries see no key
                mask[2, :, :, :5] = False
                if unmask:
                    mask = mask | ~mask.any(-1, keepdim=True)
                row = {"dtype": str(dtype).split(".")[1], "backend": name, "unmask_unattended": unmask}
                try:
                    ctx = sdpa_kernel(backend) if backend is not None else contextlib.nullcontext()
                    with ctx:
                        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
                        real = o[0, :, 17:].float().sum() + o[1].float().sum() + o[2, :, 5:].float().sum()
                        real.backward()
                    row.update(
                        out_real_finite=bool(torch.isfinite(o[0, :, 17:]).all() and torch.isfinite(o[1]).all()),
                        out_pad_finite=bool(torch.isfinite(o[0, :, :17]).all()),
                        grad_finite={n: bool(torch.isfinite(t.grad).all()) for n, t in zip("qkv", (q, k, v))},
                    )
                except Exception as err:  # noqa: BLE001 - a backend that does not take this input
                    row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


class FirstNonFinite:
    """Forward and backward hooks on every module: the first (in execution order) whose output is not finite."""

    def __init__(self, model: torch.nn.Module):
        self.forward: str | None = None
        self.backward: str | None = None
        self.handles = []
        for name, module in model.named_modules():
            if not name:
                continue
            self.handles.append(module.register_forward_hook(self._fwd(name)))
            self.handles.append(module.register_full_backward_hook(self._bwd(name)))

    @staticmethod
    def _bad(x) -> bool:
        if isinstance(x, torch.Tensor):
            return x.is_floating_point() and not bool(torch.isfinite(x).all())
        if isinstance(x, (tuple, list)):
            return any(FirstNonFinite._bad(t) for t in x)
        return False

    def _fwd(self, name):
        def hook(module, inputs, output):
            if self.forward is None and self._bad(output if isinstance(output, (torch.Tensor, tuple)) else ()):
                self.forward = f"{name} ({type(module).__name__})"

        return hook

    def _bwd(self, name):
        def hook(module, grad_input, grad_output):
            if self.backward is None and (self._bad(grad_input) or self._bad(grad_output)):
                which = "not finite" if self._bad(grad_output) else "finite"
                self.backward = f"{name} ({type(module).__name__}): grad_output {which}"

        return hook

    def remove(self):
        for h in self.handles:
            h.remove()


def _set_attention(model, name: str) -> None:
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(name)
    else:
        model.config._attn_implementation = name


def model_table(device: torch.device, small: bool) -> list[dict]:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from overopt.models.attention import pad_safe_sdpa
    from overopt.models.policy import completion_logprobs, random_llama
    from overopt.sampling import sample_completions

    hidden, layers, heads, vocab, rows, p_min, p_max, t = (
        (64, 2, 4, 512, 4, 8, 12, 8) if small else (768, 10, 12, 8192, 16, 48, 64, 32)
    )
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(p_min, p_max + 1, (rows,), generator=g)
    prompt = torch.randint(3, vocab, (rows, p_max), generator=g)
    prompt_mask = torch.arange(p_max)[None, :] >= (p_max - lengths)[:, None]
    prompt = torch.where(prompt_mask, prompt, 0)
    prompt[torch.arange(rows), p_max - lengths] = 1  # BOS
    completion = torch.randint(3, vocab, (rows, t), generator=g)
    completion_mask = torch.ones(rows, t, dtype=torch.bool)
    completion_mask[0, t // 2 :] = False  # one completion ended early: right padding too
    ids = torch.cat([prompt, torch.where(completion_mask, completion, 0)], 1).to(device)
    mask = torch.cat([prompt_mask, completion_mask], 1).long().to(device)
    cmask = completion_mask.to(device).float()
    out = []
    for dtype in ("float32", "bfloat16"):
        for attention in ("sdpa", "eager", "sdpa-math", "sdpa-padsafe"):
            for share_prefix in (False, True):
                model = random_llama(vocab, hidden, layers, heads, max_positions=p_max + t + 8, seed=0).to(device)
                _set_attention(model, "eager" if attention == "eager" else "sdpa")
                opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
                row = {"dtype": dtype, "attention": attention, "share_prefix": share_prefix, "steps": []}
                hooks = FirstNonFinite(model)
                contexts = contextlib.ExitStack()
                if dtype == "bfloat16":
                    contexts.enter_context(torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False))
                if attention == "sdpa-math":
                    contexts.enter_context(sdpa_kernel(SDPBackend.MATH))
                if attention == "sdpa-padsafe":
                    contexts.enter_context(pad_safe_sdpa())
                try:
                    with contexts:
                        if not share_prefix:  # overopt's sampler, and its log-probs against the trainer's
                            torch.manual_seed(0)
                            roll, sampled = sample_completions(model, ids[:, :p_max], mask[:, :p_max], t, 1.0, 2, 0,
                                                               with_logprobs=True)  # fmt: skip
                            full = torch.cat([roll.prompt_ids, roll.completion_ids], 1)
                            full_mask = torch.cat([roll.prompt_mask, roll.completion_mask], 1)
                            with torch.no_grad():
                                trainer, _ = completion_logprobs(model, full, full_mask, p_max)
                            m = roll.completion_mask.bool()
                            gap = (trainer - sampled.logprobs)[m].abs()
                            row["sampler"] = {"logprobs_finite": bool(torch.isfinite(sampled.logprobs).all()),
                                              "trainer_minus_sampler_abs_max": float(gap.max()),
                                              "trainer_minus_sampler_abs_mean": float(gap.mean())}  # fmt: skip
                        for _ in range(3):
                            opt.zero_grad()
                            logp, _ = completion_logprobs(model, ids, mask, p_max, share_prefix=share_prefix)
                            loss = -(logp * cmask).sum() / cmask.sum()
                            loss.backward()
                            grads = [p.grad for p in model.parameters() if p.grad is not None]
                            finite = all(bool(torch.isfinite(gr).all()) for gr in grads)
                            row["steps"].append({"loss": float(loss), "logp_finite": bool(torch.isfinite(logp).all()),
                                                 "grads_finite": finite, "logits_dtype": str(logp.dtype)})  # fmt: skip
                            if not finite:
                                break
                            opt.step()
                        if attention != "sdpa-math" or device.type == "cuda":  # generation as TRL samples
                            try:
                                torch.manual_seed(0)
                                gen = model.generate(input_ids=ids[:, :p_max], attention_mask=mask[:, :p_max],
                                                     do_sample=True, max_new_tokens=t, pad_token_id=0)  # fmt: skip
                                row["generate"] = f"ok ({gen.shape[1] - p_max} new tokens)"
                            except Exception as err:  # noqa: BLE001
                                row["generate"] = f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"
                            if device.type == "cuda":
                                torch.cuda.synchronize()
                except Exception as err:  # noqa: BLE001
                    row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
                row["first_nonfinite_forward"] = hooks.forward
                row["first_nonfinite_backward"] = hooks.backward
                hooks.remove()
                out.append(row)
                print(json.dumps(row), flush=True)
                del model, opt
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    return out


def main() -> int:
    args = parse()
    device = torch.device(args.device)
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "cuda": torch.version.cuda}  # fmt: skip
    import transformers

    result["transformers"] = transformers.__version__
    t0 = time.perf_counter()
    try:
        result["sdpa"] = sdpa_table(device)
    except Exception:  # noqa: BLE001
        result["sdpa_error"] = traceback.format_exc()[-2000:]
    args.out.write_text(json.dumps(result, indent=1))
    try:
        result["model"] = model_table(device, args.small)
    except Exception:  # noqa: BLE001
        result["model_error"] = traceback.format_exc()[-2000:]
        print(result["model_error"], flush=True)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
