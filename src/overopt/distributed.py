"""Several processes under `accelerate launch`: who is who, and the few collectives overopt needs.

The engine is accelerate (DDP, FSDP, DeepSpeed ZeRO, chosen by `accelerate launch` and its config
file); this module only says how overopt uses it:

  - every process runs the whole pipeline, on the same seed, so each draws the same prompts, the
    same minibatch orders and the same sampling noise; the training stages split each (global)
    batch into one contiguous share per process and accelerate averages the gradients;
  - stages that only sample or score (preference pairs, evaluation) run in full on every process,
    which keeps them free of collectives and bit-identical everywhere;
  - only the main process writes (artifacts, logs, checkpoints); the others build into private
    scratch directories and read what the main process published, after a barrier.

With one process (a plain `overopt run`) every function here is the identity and nothing starts.
"""

from __future__ import annotations

import os
from functools import cache

import torch


def _launched() -> bool:
    """True under a multi-process launcher (accelerate launch, torchrun): it sets WORLD_SIZE."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@cache
def _state():
    """accelerate's process state; it initialises torch.distributed (NCCL on GPUs, gloo on CPUs)."""
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    if state.device.type == "cuda":
        torch.cuda.set_device(state.device)  # "cuda" means this process's GPU from here on
    return state


@cache
def accelerator():
    """The Accelerator that wraps models for training: DDP, FSDP or DeepSpeed as `accelerate launch` says."""
    from accelerate import Accelerator

    _state()
    return Accelerator(cpu=not torch.cuda.is_available())


def lab_device(choice: str = "auto") -> torch.device:
    """The device of the lab's models (config `device`): "auto" is the GPU when torch sees one, else the CPU;
    "cuda" refuses to start without one. Under `accelerate launch` "cuda" is this process's GPU (_state)."""
    if choice not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {choice!r}")
    gpu = torch.cuda.is_available()
    if choice == "cuda" and not gpu:
        raise ValueError("device cuda: torch sees no GPU here (torch.cuda.is_available() is False); "
                         "use --device auto or cpu")  # fmt: skip
    if choice == "cpu" and gpu and _launched():
        raise ValueError(
            "device cpu under a multi-process launch on a GPU machine: its processes share gradients over the GPUs "
            "(NCCL); hide them (CUDA_VISIBLE_DEVICES='') or keep --device auto"
        )
    return torch.device("cuda" if gpu and choice != "cpu" else "cpu")


def world() -> int:
    return _state().num_processes if _launched() else 1


def rank() -> int:
    return _state().process_index if _launched() else 0


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if world() > 1:
        _state().wait_for_everyone()


def share(n: int) -> slice:
    """This process's contiguous share of n items: the first n % world processes get one more."""
    base, extra = divmod(n, world())
    start = rank() * base + min(rank(), extra)
    return slice(start, start + base + (1 if rank() < extra else 0))


def all_sum(value: torch.Tensor) -> torch.Tensor:
    """Σ over processes (a new tensor; the input is left as it is)."""
    if world() == 1:
        return value
    out = value.detach().clone()
    torch.distributed.all_reduce(out)
    return out


def gather_rows(value: torch.Tensor, pad_value: float = 0, left: bool = False) -> torch.Tensor:
    """Every process's rows, in process order: (b_r, ...) -> (Σ b_r, ...). Dim 1 (if any) is padded to
    the widest process's, on the right (or on the left, for left-padded prompts), with `pad_value`."""
    if world() == 1:
        return value
    sizes = torch.tensor(value.shape[:2] if value.dim() > 1 else (value.shape[0], 0), device=value.device)
    all_sizes = [torch.zeros_like(sizes) for _ in range(world())]
    torch.distributed.all_gather(all_sizes, sizes)
    rows, width = max(int(s[0]) for s in all_sizes), max(int(s[1]) for s in all_sizes)
    if value.dim() > 1 and value.shape[1] < width:
        pad = value.new_full((value.shape[0], width - value.shape[1], *value.shape[2:]), pad_value)
        value = torch.cat([pad, value] if left else [value, pad], 1)
    padded = torch.cat([value, value.new_zeros((rows - value.shape[0], *value.shape[1:]))])
    parts = [torch.empty_like(padded) for _ in range(world())]
    torch.distributed.all_gather(parts, padded.contiguous())
    return torch.cat([part[: int(s[0])] for part, s in zip(parts, all_sizes)])


def prepare(model: torch.nn.Module) -> torch.nn.Module:
    """`model` wrapped for multi-process training (its forward and backward synchronise gradients)."""
    return accelerator().prepare_model(model) if world() > 1 else model
