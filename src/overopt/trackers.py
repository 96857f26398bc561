"""Experiment trackers: every row of a run's metrics.jsonl, with the run's configuration, in TensorBoard or W&B.

`--report_to tensorboard,wandb` opens one tracker run per method × seed through accelerate's tracking
API (`accelerate.tracking`), named `<method>/seed<k>` and grouped by OUT:

  - tensorboard: event files in OUT/tracking/tensorboard/<method>/seed<k>/, the configuration as
    hparams (`tensorboard --logdir OUT/tracking/tensorboard`);
  - wandb: project $WANDB_PROJECT (default `overopt`), group = OUT's name, the configuration as the
    run's config; local files under OUT/tracking/wandb/ unless WANDB_DIR is set (WANDB_MODE=offline:
    upload them later with `wandb sync`).

Each row is logged at its `step` with every key but `step`. Trackers only read what the run has
already written: they draw no random numbers and are in no fingerprint, so the results are the same
with or without them. Only the main process reports (`accelerate launch`).

Resume. A tracker run mirrors metrics.jsonl: when a run resumes from a checkpoint, the rows it kept
are logged again first, then the new ones. TensorBoard's directory for the run is emptied first, so
it holds exactly what an uninterrupted run writes. W&B continues the same run (its id is kept in the
checkpoint): online, the rows W&B already has are skipped; offline, every attempt is a new directory
of that run id, the newest one complete.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

WIRED = ("tensorboard", "wandb")  # accelerate trackers overopt opens (its others need their own naming)


def tracker_names(report_to: str) -> list[str]:
    """The trackers named in `report_to` (comma-separated); unknown names and missing packages raise ValueError."""
    names = list(dict.fromkeys(n.strip() for n in report_to.split(",") if n.strip()))
    if not names:
        return []
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS
    from accelerate.utils import is_tensorboard_available, is_wandb_available

    available = {"tensorboard": is_tensorboard_available, "wandb": is_wandb_available}
    for name in names:
        if name not in LOGGER_TYPE_TO_CLASS:
            raise ValueError(f"unknown tracker {name!r}; overopt reports to {', '.join(WIRED)}")
        if name not in WIRED:
            raise ValueError(f"{name!r} is an accelerate tracker that overopt does not open; use {', '.join(WIRED)}")
        if not available[name]():
            raise ValueError(f"{name} is not installed: pip install 'overopt[trackers]' (or pip install {name})")
    return names


def flat_config(data: dict, prefix: str = "") -> dict[str, Any]:
    """A nested config dump as {"rl.lr": 0.001, ...}: scalars (and None) as they are, anything else as text."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(flat_config(value, f"{prefix}{key}."))
        else:
            ok = value is None or isinstance(value, bool | int | float | str)
            flat[f"{prefix}{key}"] = value if ok else str(value)
    return flat


class RunTrackers:
    """The tracker runs of one method × seed (none when `report_to` is empty, or on a non-main process)."""

    def __init__(self, trackers: list | None = None, skip_below: dict[str, int] | None = None):
        self.trackers = trackers or []
        self.skip_below = skip_below or {}  # tracker name -> first step it has not seen (a resumed W&B run)

    def log(self, row: dict) -> None:
        """One metrics.jsonl row: every key but `step`, at `step`."""
        step = row["step"]
        values = {k: v for k, v in row.items() if k != "step"}
        for tracker in self.trackers:
            if step >= self.skip_below.get(tracker.name, 0):
                tracker.log(values, step=step)

    def state(self) -> dict:
        """What a checkpoint keeps to continue these tracker runs: the W&B run id."""
        return {t.name: {"id": t.run.id} for t in self.trackers if t.name == "wandb"}

    def finish(self) -> None:
        for tracker in self.trackers:
            tracker.finish()
        self.trackers = []


def open_run(cfg, name: str, seed: int, metrics: Path, state: dict | None = None) -> RunTrackers:
    """Open the tracker runs of run `name` × `seed` (configured by `cfg`, an ExperimentConfig: a sweep's
    variant) and log the rows `metrics` already holds (a resumed run's). `state`: what RunTrackers.state()
    gave at the checkpoint. Call on the main process only."""
    names = tracker_names(cfg.report_to)
    if not names:
        return RunTrackers()
    from accelerate import PartialState

    PartialState()  # accelerate's trackers log through its process state (under accelerate launch: already up)
    out = Path(cfg.out)
    run_name = f"{name}/seed{seed}"
    config = {"run.name": name, "run.seed": seed, **flat_config(cfg.model_dump(mode="json"))}
    state = state or {}
    trackers, skip_below = [], {}
    for tracker_name in names:
        tracker = _OPEN[tracker_name](out, run_name, state.get(tracker_name, {}))
        tracker.main_process_only = False  # only the main process gets here (accelerate would ask its state)
        try:
            tracker.start()
            tracker.store_init_configuration(config)
        except Exception as err:  # e.g. W&B online without a login: one line, not the library's traceback
            raise ValueError(f"report_to {tracker_name}: {' '.join(str(err).split())}") from err
        if tracker_name == "wandb" and tracker.run.resumed:
            skip_below["wandb"] = tracker.run.starting_step
        trackers.append(tracker)
    tracking = RunTrackers(trackers, skip_below)
    for line in metrics.read_text().splitlines() if metrics.exists() else []:
        tracking.log(json.loads(line))
    return tracking


def _tensorboard(out: Path, run_name: str, state: dict):
    from accelerate.tracking import TensorBoardTracker

    logging_dir = out / "tracking" / "tensorboard"
    shutil.rmtree(logging_dir / run_name, ignore_errors=True)  # rewritten from metrics.jsonl (see Resume)
    return TensorBoardTracker(run_name, logging_dir)


def _wandb(out: Path, run_name: str, state: dict):
    from accelerate.tracking import WandBTracker

    kwargs: dict[str, Any] = {"name": run_name, "group": out.resolve().name, "resume": "allow"}
    if "id" in state:
        kwargs["id"] = state["id"]
    if not os.environ.get("WANDB_DIR"):
        kwargs["dir"] = out / "tracking"
        kwargs["dir"].mkdir(parents=True, exist_ok=True)
    return WandBTracker(os.environ.get("WANDB_PROJECT") or "overopt", **kwargs)


_OPEN: dict[str, Callable[[Path, str, dict], Any]] = {"tensorboard": _tensorboard, "wandb": _wandb}
