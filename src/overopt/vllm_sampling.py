"""rl.generation=vllm: the RL rollouts drawn by a vLLM engine on the trainer's GPU (pip install vllm).

The engine is colocated as in TRL's GRPOTrainer (`vllm_mode="colocate"`, trl/generation/vllm_generation.py):
one `vllm.LLM` in the training process (`distributed_executor_backend="external_launcher"`), started from the
policy saved to the run's directory, fed token ids (`skip_tokenizer_init`: any testbed's tokenizer works), and
given the trained weights before a call whenever they changed since the last one, through the model runner's
`load_weights` and a reset of its prefix cache. Its log-probs are those of the distribution it sampled from
(`logprobs_mode="processed_logprobs"`: after the temperature), so the trainer can correct for the mismatch
between the two engines (rl.sampler_correction, overopt.ops.sampler_is; TRL's default: sequence_mask, C_max 3).

What differs from the lab's own sampler (overopt.sampling.sample_completions): vLLM's kernels, batching and
numerics (16-bit by default on a GPU) instead of the trainer's, so the samples come from μ ≈ π_θ rather than
π_θ; each row draws from its own seed (the run's seed stream + its global row index), so a row's sample does
not depend on the other rows of its batch, but vLLM's draws are not bit-for-bit repeatable across machines or
versions, and a resumed run is not bit-exact. vLLM reports no entropy (NaN here). Only the RL rollouts go
through vLLM: the evaluation, whose KL must be exact, samples with the lab's own sampler.

Tested on the CPU against a stand-in `vllm` module that implements the calls made here
(tests/test_vllm_sampling.py): the requests, the per-row seeds, the EOS and padding, the weight pushes and the
run end to end. Not tested against vLLM itself (its wheels need CUDA, which the test machine lacks): the GPU
check runs it where a GPU is lent.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from transformers import PreTrainedModel

from overopt import distributed
from overopt.sampling import Rollout, SampledLogprobs, mask_after_eos, pad_right


def _colocated_env() -> None:
    """The single-process distributed environment vLLM's external launcher reads (TRL sets the same)."""
    for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1")):
        os.environ.setdefault(key, value)
    if "MASTER_PORT" not in os.environ:
        import socket

        with socket.socket() as s:  # a free port, so that two runs on one machine do not collide
            s.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])


class VLLMSampler:
    """A colocated vLLM engine with sampling.sample_completions' signature (module docstring)."""

    def __init__(
        self,
        policy: PreTrainedModel,
        workdir: Path,
        gpu_memory_utilization: float,
        seed: int,
        max_model_len: int | None = None,
    ):
        """`max_model_len`: the longest prompt + completion the engine holds a KV cache for (None: the policy's
        max_position_embeddings, which for a real model reserves far more than RL needs)."""
        try:
            from vllm import LLM
        except ImportError as err:
            raise ImportError(
                "rl.generation=vllm needs vLLM and a CUDA GPU: pip install vllm (or rl.generation=policy)"
            ) from err
        if distributed.world() > 1:
            raise ValueError("rl.generation=vllm runs in one process: launch 1 process or use rl.generation=policy")
        if hasattr(policy, "peft_config"):
            raise ValueError(
                "rl.generation=vllm does not push LoRA adapters yet: use hf.lora_r=0 or rl.generation=policy"
            )
        _colocated_env()
        self.llm = LLM(
            model=_engine_source(policy, Path(workdir)),
            skip_tokenizer_init=True,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len or policy.config.max_position_embeddings,
            distributed_executor_backend="external_launcher",
            seed=seed,
            logprobs_mode="processed_logprobs",  # log-probs after the temperature: those of the draw
        )
        self._pushed: tuple | None = None
        self.pushes = 0

    def _weights_key(self, model: torch.nn.Module) -> tuple:
        """Changes when `model` is another module or any of its parameters was written in place (the optimiser
        step bumps each tensor's version counter)."""
        return (id(model), *(p._version for p in model.parameters()))

    def sync(self, model: PreTrainedModel) -> None:
        """Give the engine `model`'s weights if they changed since the last push (TRL's colocate sync)."""
        key = self._weights_key(model)
        if key == self._pushed:
            return
        runner = self.llm.llm_engine.model_executor.driver_worker.model_runner
        runner.model.load_weights((name, tensor.detach()) for name, tensor in model.state_dict().items())
        self.llm.reset_prefix_cache()  # cached prompt keys and values were computed with the old weights
        self._pushed, self.pushes = key, self.pushes + 1

    @torch.no_grad()
    def __call__(
        self,
        model: PreTrainedModel,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        max_new_tokens: int,
        temperature: float,
        eos_id: int,
        pad_id: int,
        *,
        row_offset: int = 0,
        total_rows: int | None = None,
        with_logprobs: bool = False,
    ) -> Rollout | tuple[Rollout, SampledLogprobs]:
        from vllm import SamplingParams

        self.sync(model)
        prompts = [row[m.bool()].tolist() for row, m in zip(prompt_ids.cpu(), prompt_mask.cpu(), strict=True)]
        base = int(torch.randint(2**62, ()).item())  # from the run's torch stream, as the lab's sampler seeds
        params = [
            SamplingParams(
                n=1,
                temperature=temperature,
                max_tokens=max_new_tokens,
                stop_token_ids=[eos_id],
                logprobs=0 if with_logprobs else None,
                seed=(base + row_offset + i) % 2**63,
                detokenize=False,
            )  # fmt: skip
            for i in range(len(prompts))
        ]
        outputs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], sampling_params=params, use_tqdm=False)
        completions, logprobs = [], []
        for out in outputs:
            sample = out.outputs[0]
            tokens = list(sample.token_ids)
            scores = [_sampled_logprob(step, token) for step, token in zip(sample.logprobs or [], tokens)]
            if sample.finish_reason == "stop" and (not tokens or tokens[-1] != eos_id):
                tokens.append(eos_id)  # a stop token left out of the output: the lab's completions end with EOS
                scores.append(math.nan)  # not scored: the correction counts it as no mismatch
            completions.append(tokens)
            logprobs.append(scores)
        device = model.device
        width = max(1, max(len(c) for c in completions))
        ids, _ = pad_right(completions, pad_id, width)
        mask = mask_after_eos(ids, eos_id)
        rollout = Rollout(prompt_ids.to(device), prompt_mask.to(device),
                          ids.masked_fill(mask == 0, pad_id).to(device), mask.to(device))  # fmt: skip
        if not with_logprobs:
            return rollout
        table = torch.zeros(len(completions), width, dtype=torch.float32)
        for row, scores in enumerate(logprobs):
            table[row, : len(scores)] = torch.tensor(scores, dtype=torch.float32)
        table = (table * mask).to(device)
        return rollout, SampledLogprobs(table, torch.full_like(table, math.nan))


def _engine_source(policy: PreTrainedModel, workdir: Path) -> str:
    """Where vLLM reads the architecture from: the policy's own directory or Hub id when it has one (its weights
    are pushed before the first draw anyway), else the policy saved to `workdir`."""
    source = getattr(policy, "name_or_path", "") or ""
    if source and (not Path(source).exists() or (Path(source) / "config.json").is_file()):
        return source
    workdir.mkdir(parents=True, exist_ok=True)
    policy.save_pretrained(workdir)
    return str(workdir)


def _sampled_logprob(step: dict, token: int) -> float:
    """The log-prob vLLM reports for the token it drew (its Logprob entries are keyed by token id)."""
    entry = step.get(token)
    value = getattr(entry, "logprob", math.nan) if entry is not None else math.nan
    return math.nan if value is None else float(value)
