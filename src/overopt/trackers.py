"""Experiment trackers: every row of a run's metrics.jsonl, with the run's configuration, in TensorBoard,
W&B, Trackio or MLflow.

`--report_to tensorboard,wandb,trackio,mlflow` opens one tracker run per method × seed, named
`<method>/seed<k>` and grouped by OUT: TensorBoard and W&B through accelerate's tracking API
(`accelerate.tracking`), Trackio and MLflow through their own clients (accelerate's keep one global
run, but the runs of a batched group, overopt.batching, are open together):

  - tensorboard: event files in OUT/tracking/tensorboard/<method>/seed<k>/, the configuration as
    hparams (`tensorboard --logdir OUT/tracking/tensorboard`);
  - wandb: project $WANDB_PROJECT (default `overopt`), group = OUT's name, the configuration as the
    run's config; local files under OUT/tracking/wandb/ unless WANDB_DIR is set (WANDB_MODE=offline:
    upload them later with `wandb sync`);
  - trackio: project = OUT's name, group = the method, local only (no Space): a SQLite database in
    $TRACKIO_DIR, which overopt sets, when unset, to the first OUT's tracking/trackio/ (trackio reads it
    once per process: the labs of `--labs` share that one, each its own project);
  - mlflow: MLflow's file store (`file:` URI) in OUT/tracking/mlflow/, experiment = OUT's name, metric
    names with `.` for `/` (mlflow_key), the configuration as params
    (`MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri OUT/tracking/mlflow`).

Each row is logged at its `step` with every key but `step`. Trackers only read what the run has
already written: they draw no random numbers and are in no fingerprint, so the results are the same
with or without them. Only the main process reports (`accelerate launch`).

Resume. A tracker run mirrors metrics.jsonl: when a run resumes from a checkpoint, the rows it kept
are logged again first, then the new ones. TensorBoard's directory for the run is emptied first, and
Trackio's and MLflow's run of that name deleted, so each holds exactly what an uninterrupted run writes.
W&B continues the same run (its id is kept in the checkpoint): online, the rows W&B already has are
skipped; offline, every attempt is a new directory of that run id, the newest one complete.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

WIRED = ("tensorboard", "wandb", "trackio", "mlflow")  # accelerate's tracker names that overopt opens


def tracker_names(report_to: str) -> list[str]:
    """The trackers named in `report_to` (comma-separated); unknown names and missing packages raise ValueError."""
    names = list(dict.fromkeys(n.strip() for n in report_to.split(",") if n.strip()))
    if not names:
        return []
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS
    from accelerate.utils import is_mlflow_available, is_tensorboard_available, is_trackio_available, is_wandb_available

    available = {"tensorboard": is_tensorboard_available, "wandb": is_wandb_available,
                 "trackio": is_trackio_available, "mlflow": is_mlflow_available}  # fmt: skip
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


def _trackio(out: Path, run_name: str, state: dict):
    # trackio fixes its directory when first imported: set it before that, unless the user has set it
    if "trackio" not in sys.modules and not os.environ.get("TRACKIO_DIR"):
        os.environ["TRACKIO_DIR"] = str((out / "tracking" / "trackio").resolve())
    import trackio

    project = out.resolve().name
    try:
        runs = list(trackio.Api().runs(project))
    except ValueError:  # no such project yet
        runs = []
    for run in runs:
        if run.name == run_name:
            run.delete()  # rewritten from metrics.jsonl (see Resume)
    return _TrackioRun(project, run_name, group=run_name.rsplit("/seed", 1)[0])


class _TrackioRun:
    """A Trackio run. Not accelerate's TrackioTracker: it stores its configuration in trackio.config, the
    newest run's, with an `allow_val_change` key (trackio's config is a dict)."""

    name = "trackio"

    def __init__(self, project: str, run_name: str, group: str):
        self.project, self.run_name, self.group = project, run_name, group

    def start(self) -> None:
        import trackio

        # A newer trackio.init finishes this run; its Run still logs, writing inline (batched runs rely on it).
        # No space_id: local (TRACKIO_SPACE_ID / TRACKIO_SERVER_URL, when set, are trackio's own choice).
        # With an HF token it asks the Hub once for the user name (config's _Username): HF_HUB_OFFLINE=1 stops it.
        self.run = trackio.init(project=self.project, name=self.run_name, group=self.group,
                                auto_log_cpu=False, auto_log_gpu=False)  # fmt: skip

    def store_init_configuration(self, values: dict) -> None:
        self.run.config.update(values)  # stored with the first row

    def log(self, values: dict, step: int) -> None:
        self.run.log(values, step=step)

    def finish(self) -> None:
        self.run.finish()


def _mlflow(out: Path, run_name: str, state: dict):
    directory = out / "tracking" / "mlflow"
    directory.mkdir(parents=True, exist_ok=True)
    return _MLflowRun(directory.resolve().as_uri(), out.resolve().name, run_name)


def mlflow_key(key: str) -> str:
    """A metric's name in MLflow: `/` as `.`, since the file store keeps each metric in a file at its name's
    path, and `alarm/kl` (a file) cannot also be the directory of `alarm/kl/fired`."""
    return key.replace("/", ".")


class _MLflowRun:
    """An MLflow run through MlflowClient, bound to its store and run id: not accelerate's MLflowTracker,
    whose fluent calls (mlflow.start_run, log_metrics) go to mlflow's one active run."""

    name = "mlflow"

    def __init__(self, uri: str, experiment: str, run_name: str):
        self.uri, self.experiment, self.run_name = uri, experiment, run_name

    def start(self) -> None:
        # MLflow 3.7+ refuses the file store (in maintenance, SQLite is its successor) unless asked for
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow import MlflowClient

        self.client = MlflowClient(self.uri)
        experiment = self.client.get_experiment_by_name(self.experiment)
        if experiment is None:
            state = random.getstate()  # a new experiment id may draw from `random` (a uuid4 with leading zeros)
            experiment_id = self.client.create_experiment(self.experiment)
            random.setstate(state)
        else:
            experiment_id = experiment.experiment_id
        for run in self.client.search_runs([experiment_id], f"attributes.run_name = '{self.run_name}'"):
            self.client.delete_run(run.info.run_id)  # rewritten from metrics.jsonl (see Resume)
        self.run = self.client.create_run(experiment_id, run_name=self.run_name)

    def store_init_configuration(self, values: dict) -> None:
        from mlflow.entities import Param

        params = [Param(key, str(value)) for key, value in values.items()]  # MLflow's params are text
        for i in range(0, len(params), 100):  # at most 100 params a batch
            self.client.log_batch(self.run.info.run_id, params=params[i : i + 100])

    def log(self, values: dict, step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(mlflow_key(k), float(v), now, step) for k, v in values.items() if isinstance(v, int | float)]
        self.client.log_batch(self.run.info.run_id, metrics=metrics)  # MLflow's metrics are numbers

    def finish(self) -> None:
        self.client.set_terminated(self.run.info.run_id)


_OPEN: dict[str, Callable[[Path, str, dict], Any]] = {
    "tensorboard": _tensorboard, "wandb": _wandb, "trackio": _trackio, "mlflow": _mlflow,
}  # fmt: skip
