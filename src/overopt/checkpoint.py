"""Periodic, atomic checkpoints of a stage, so that a killed run resumes bit for bit.

Layout: ROOT/step-00000042/{state.json, state.safetensors, <model>.safetensors}. A checkpoint is
written into ROOT/.partial (every file fsynced), renamed to its step directory in one atomic rename,
and the parent directory is fsynced; only then are older checkpoints deleted. A reader takes the
newest step directory, so a checkpoint cut short by a crash is never read.

Every tensor (weights, optimizer moments, RNG states) is stored with safetensors and everything else
as JSON: resuming never unpickles anything. (accelerate's save_state writes optimizer, scheduler and
RNG states as torch.save pickles, which is why it is not used here.)

Preemption (overopt.preempt): once SIGTERM or SIGUSR1 has arrived, every checkpoint is due, and the
main process raises Preempted right after writing one, so the loop stops at the step it has saved.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model

from overopt import distributed, faults, preempt
from overopt.errors import disk_full
from overopt.io import fsync

STATE_JSON, STATE_TENSORS = "state.json", "state.safetensors"
_TENSOR = "__tensor__"  # JSON placeholder {"__tensor__": key} for a tensor kept in state.safetensors


class CheckpointError(ValueError):
    """A checkpoint exists but cannot be read (bad input: the CLI reports it in one line)."""


def _split(tree: Any, tensors: dict[str, torch.Tensor], path: str = "") -> Any:
    """Replace every tensor of a nested dict/list by a placeholder; collect the tensors by path."""
    if isinstance(tree, torch.Tensor):
        tensors[path] = tree.detach().cpu().contiguous().clone()  # clone: no shared storage for safetensors
        return {_TENSOR: path}
    if isinstance(tree, dict):
        if not all(isinstance(k, str) for k in tree):
            raise TypeError(f"checkpoint state at {path or '/'}: keys must be strings")
        return {k: _split(v, tensors, f"{path}/{k}") for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return [_split(v, tensors, f"{path}/{i}") for i, v in enumerate(tree)]
    return tree


def _join(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(tree, dict):
        if set(tree) == {_TENSOR}:
            return tensors[tree[_TENSOR]]
        return {k: _join(v, tensors) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_join(v, tensors) for v in tree]
    return tree


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint read back: its step, its state tree (tensors in place) and where its models are."""

    step: int
    state: dict
    directory: Path

    def load_model(self, name: str, model: torch.nn.Module) -> None:
        """Load the weights saved as `name` into `model` (strict: every key must match)."""
        path = self.directory / f"{name}.safetensors"
        try:
            missing, unexpected = load_model(model, path, strict=False)
        except (OSError, SafetensorError, RuntimeError) as err:
            raise _unreadable(self.directory, err) from None
        if missing or unexpected:
            raise _unreadable(self.directory, f"{path.name} does not fit the model ({[*missing, *unexpected][0]})")


def _unreadable(directory: Path, err: object) -> CheckpointError:
    detail = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
    return CheckpointError(
        f"{directory}: cannot read the checkpoint ({detail}); delete {directory.parent} to restart that stage"
    )


class Checkpointer:
    """The checkpoints of one stage (or one method × seed run) in `root`, written every `every_s` seconds.

    `fingerprint` ties them to the configuration: a checkpoint of another configuration is ignored.
    """

    def __init__(self, root: Path, fingerprint: str, every_s: float):
        self.root, self.fingerprint, self.every_s = Path(root), fingerprint, every_s
        self._last_save = time.monotonic()

    def child(self, name: str) -> Checkpointer:
        """Checkpoints of a sub-stage (an OCRM round's RM refit), removed with this stage's."""
        return Checkpointer(self.root / name, f"{self.fingerprint}/{name}", self.every_s)

    def _complete(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir() if p.is_dir() and p.name.startswith("step-"))

    def load(self) -> Checkpoint | None:
        """The newest complete checkpoint of this configuration, or None (then start from scratch)."""
        found = self._complete()
        if not found:
            return None
        directory = found[-1]
        try:
            meta = json.loads((directory / STATE_JSON).read_text())
            if meta.get("fingerprint") != self.fingerprint:
                return None
            tensors = load_file(directory / STATE_TENSORS) if (directory / STATE_TENSORS).exists() else {}
            for name, size in meta["files"].items():
                if (directory / name).stat().st_size != size:
                    raise CheckpointError(f"{name} has {(directory / name).stat().st_size} bytes, not {size}")
            return Checkpoint(meta["step"], _join(meta["state"], tensors), directory)
        except (OSError, ValueError, KeyError, SafetensorError) as err:
            raise _unreadable(directory, err) from None

    def due(self) -> bool:
        """A checkpoint is due every `every_s` seconds, and at once when the command is asked to stop."""
        return preempt.requested() is not None or time.monotonic() - self._last_save >= self.every_s

    def save(self, step: int, state: dict, models: dict[str, torch.nn.Module]) -> None:
        """Write the checkpoint of `step` atomically, then delete the older ones. If writing fails (a
        full disk), the partial files are removed and the previous checkpoint stays the newest. With
        several processes, the main one writes (their models and states are the same).

        Raises Preempted once it is written if SIGTERM or SIGUSR1 has arrived (overopt.preempt); under
        `accelerate launch` the main process stops, and the launcher stops the others."""
        if not distributed.is_main():
            return
        partial = self.root / ".partial"
        try:
            self._write(partial, step, state, models)
        except BaseException as err:
            shutil.rmtree(partial, ignore_errors=True)
            if disk_full(err):  # name the checkpoint (safetensors' error names no file)
                raise OSError(errno.ENOSPC, "No space left on device", str(self.root)) from None
            raise
        final = self.root / f"step-{step:09d}"
        shutil.rmtree(final, ignore_errors=True)  # the same step again (after a resume): replace it
        os.rename(partial, final)
        fsync(self.root)
        for older in self._complete():
            if older != final:
                shutil.rmtree(older)
        self._last_save = time.monotonic()
        if preempt.requested() is not None:
            preempt.stop(f"checkpoint {final} written")

    def _write(self, partial: Path, step: int, state: dict, models: dict[str, torch.nn.Module]) -> None:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        tensors: dict[str, torch.Tensor] = {}
        tree = _split(state, tensors)
        if tensors:
            save_file(tensors, partial / STATE_TENSORS)
        for name, model in models.items():
            save_model(model, str(partial / f"{name}.safetensors"))
        faults.point("checkpoint.write")
        files = {p.name: p.stat().st_size for p in partial.iterdir()}
        meta = {"fingerprint": self.fingerprint, "step": step, "files": files, "state": tree}
        (partial / STATE_JSON).write_text(json.dumps(meta))
        for name in [*files, STATE_JSON]:
            fsync(partial / name)
        fsync(partial)

    def clear(self) -> None:
        """The stage is finished: its checkpoints are no longer needed."""
        if distributed.is_main():
            shutil.rmtree(self.root, ignore_errors=True)


def rng_state() -> dict:
    """The global RNG states a run draws from: torch (CPU and every CUDA device), numpy, python."""
    version, internal, gauss = random.getstate()
    bit_generator, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"bit_generator": bit_generator, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
                  "has_gauss": has_gauss, "cached_gaussian": cached},
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss},
    }  # fmt: skip


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(
        (n["bit_generator"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))


def optimizer_state(optimizer: torch.optim.Optimizer) -> dict:
    """optimizer.state_dict() with string keys (the per-parameter state is keyed by parameter index)."""
    saved = optimizer.state_dict()
    return {"state": {str(k): v for k, v in saved["state"].items()}, "param_groups": saved["param_groups"]}


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    groups = [{k: tuple(v) if k == "betas" else v for k, v in group.items()} for group in state["param_groups"]]
    optimizer.load_state_dict({"state": {int(k): v for k, v in state["state"].items()}, "param_groups": groups})
