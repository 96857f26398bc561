"""What the report modules share about a run directory: its config.yaml, its methods in order, its kind of run.
Reads outputs only (no torch); the report modules import it, it imports none of them."""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from pathlib import Path

import yaml


def load_config(out_dir: str | Path) -> dict:
    """``OUT/config.yaml`` as a dict ({} when missing or not a mapping)."""
    path = Path(out_dir) / "config.yaml"
    if not path.is_file():
        return {}
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        warnings.warn(f"{path}: could not parse YAML ({exc}); ignoring config", stacklevel=2)
        return {}
    return cfg if isinstance(cfg, dict) else {}


def _config_methods(config: dict) -> list[str]:
    methods = config.get("methods")
    if isinstance(methods, str):
        return [m.strip() for m in methods.split(",") if m.strip()]
    if isinstance(methods, (list, tuple)):
        return [str(m).strip() for m in methods if str(m).strip()]
    return []


def order_methods(names: Iterable[str], config: dict | None = None) -> list[str]:
    """Order method names as listed in ``config["methods"]`` (comma-separated
    string or list), then any remaining names alphabetically.  Sweep variants
    (``method@field=value``) follow their method's place, in sweep order.
    Only names in ``names`` are returned."""
    names = list(dict.fromkeys(names))
    rank = {m: i for i, m in enumerate(dict.fromkeys(_config_methods(config or {})))}
    sweep = (config or {}).get("sweep") or ""
    values = [v.strip() for v in sweep.partition("=")[2].split(",")]

    def key(name: str) -> tuple:
        base, _, variant = name.partition("@")
        value = variant.partition("=")[2]
        return (rank.get(base, len(rank)), base if base not in rank else "",
                values.index(value) if value in values else len(values), name)  # fmt: skip

    return sorted(names, key=key)


def is_best_of_n(seeds: dict[int, list[dict]]) -> bool:
    """True for a best-of-n run (its rows are indexed by `n`; `step` repeats n)."""
    return any("n" in rows[0] for rows in seeds.values() if rows)
