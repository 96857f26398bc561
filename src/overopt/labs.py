"""Independent lab replicates (`--labs N`): the unit of evidence of a conclusion about a method (issue 29).

One lab is one world, one SFT policy, one preference set and one proxy RM; the RL seeds of `--seeds` vary only
the RL run. The proxy RM is what the lab studies, and a method's result moves with the RM it was trained
against more than with its RL seed, so a conclusion is a conclusion over draws of the lab. Replicate i of a
configuration is the same command with:

- `seed + i` for every shared stage: the testbed's prompts and SFT corpus, the SFT policy's init and data
  order, the preference pairs (and the judge's or PRM's labelled data), the proxy RM's init and data order
  (ensemble members within a replicate as in one lab), the validation RM;
- the testbed's world shifted by i where it has one: `summarize.world_seed + i` (the hidden fact saliences),
  `testbed_args.world_seed + i` for a plugin that declares a `world_seed` knob; `math_format`, `judge` and
  `process` have fixed rules (sums), so their world is the same in every lab. `lab_hold: world` keeps it;
- its own OUT, `OUT/labs/lab<i>`, an ordinary lab directory (its stages, runs, summary.json; resumable
  like any OUT, and `overopt report OUT/labs/lab<i>` shows it alone).

Replicate 0 is the plain one-lab command (same seed, same world), so a single lab that exists extends to a
replicated study by copying it to `OUT/labs/lab0`. The RL seeds are 0..seeds-1 in every lab: run k of lab i
draws its sampling noise from the same stream as run k of lab j, while its policy and proxy differ.

`OUT/labs.json` lists the replicates (index, seed, world seed, OUT); `OUT/summary.json` holds the statistics
over labs (overopt.report.labs) and `OUT/config.yaml` the command's configuration.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from overopt.config import ExperimentConfig, to_yaml
from overopt.progress import console

LABS_DIR = "labs"
LABS_FILE = "labs.json"


def lab_out(out: Path | str, i: int) -> Path:
    return Path(out) / LABS_DIR / f"lab{i}"


def replicate(cfg: ExperimentConfig, i: int) -> ExperimentConfig:
    """Lab replicate `i` of `cfg` (module docstring): its seed, its world, its OUT; a one-lab configuration."""
    update: dict[str, Any] = {"labs": 1, "seed": cfg.seed + i, "out": lab_out(cfg.out, i)}
    if cfg.lab_hold != "world":
        if cfg.testbed == "summarize":
            update["summarize"] = cfg.summarize.model_copy(update={"world_seed": cfg.summarize.world_seed + i})
        elif "world_seed" in cfg.testbed_args:
            update["testbed_args"] = {**cfg.testbed_args, "world_seed": int(cfg.testbed_args["world_seed"]) + i}
    return cfg.model_copy(update=update)


def world_seed(cfg: ExperimentConfig) -> int | None:
    """The replicate's world seed, or None where the testbed has no world of its own."""
    if cfg.testbed == "summarize":
        return cfg.summarize.world_seed
    return cfg.testbed_args.get("world_seed")


def run_labs(cfg: ExperimentConfig, one: Callable[[ExperimentConfig], Any], kind: str) -> None:
    """Run (or resume) `one(replicate)` for every lab of `cfg` (`kind`: 'run', 'compare' or 'scaling'), one lab
    after another, with OUT/labs.json saying which; overopt.report.labs.build_labs_report then reads them (the
    report imports this module, not the other way)."""
    from overopt.io import atomic_write_text
    from overopt.lock import out_lock

    out = Path(cfg.out)
    labs = [replicate(cfg, i) for i in range(cfg.labs)]
    record = {
        "kind": kind,
        "hold": cfg.lab_hold or None,
        "labs": [
            {"lab": i, "seed": lab.seed, "world_seed": world_seed(lab), "out": str(lab.out.relative_to(out))}
            for i, lab in enumerate(labs)
        ],  # fmt: skip
    }
    with out_lock(out):  # the parent OUT is this command's; each lab's own OUT is locked by its command
        atomic_write_text(out / "config.yaml", to_yaml(cfg))
        atomic_write_text(out / LABS_FILE, json.dumps(record, indent=2) + "\n")
    for i, lab in enumerate(labs):
        console.rule(f"lab{i} ({i + 1} of {len(labs)}): seed {lab.seed}" + _world_note(lab, cfg))
        one(lab)


def _world_note(lab: ExperimentConfig, cfg: ExperimentConfig) -> str:
    seed = world_seed(lab)
    if seed is None:
        return f", the {cfg.testbed} testbed's fixed world"
    return f", world seed {seed}" + (" (held)" if cfg.lab_hold == "world" else "")


def read_labs(out: Path | str) -> dict | None:
    """OUT/labs.json, or None when OUT is a single lab."""
    path = Path(out) / LABS_FILE
    return json.loads(path.read_text()) if path.is_file() else None
