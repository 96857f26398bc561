"""Small file helpers: atomic writes, JSON lines, config fingerprints."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file


def atomic_write_text(path: Path, text: str) -> None:
    """Write then rename, so a reader never sees a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def fsync(path: Path) -> None:
    """Flush a file, or a directory's entries (after a rename into it), to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_size(path: Path) -> int:
    """Flush `path` to disk and return its size in bytes (0 if it does not exist yet)."""
    if not path.exists():
        return 0
    fsync(path)
    return path.stat().st_size


def trainable_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the trained parameters of `model` (under LoRA: the adapters), by name."""
    return {name: p.detach().clone().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Named tensors as safetensors, written atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, tmp)
    fsync(tmp)
    os.replace(tmp, path)


def save_weights(model: torch.nn.Module, path: Path) -> None:
    """The trained parameters of `model` (under LoRA: the adapters) as safetensors, written atomically."""
    save_tensors(trainable_tensors(model), path)


def write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def append_jsonl(path: Path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-serialisable config sections (decides whether a stage is stale)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def replace_dir(tmp: Path, final: Path) -> None:
    """Move a fully written directory into place (the old one, if any, is removed first)."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
