"""Experiment trackers (--report_to): what TensorBoard's event files, W&B's offline run, Trackio's database and
MLflow's file store hold, read back with their own readers; resumed runs mirror metrics.jsonl; batched runs
(open together) keep apart; bad names are one-line errors.
The end-to-end check (`overopt run --preset smoke --report_to tensorboard`) is in test_pipeline.py."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from pydantic import ValidationError

from overopt import trackers
from overopt.cli import main
from overopt.config import load_config

ROWS = [  # alarm/kl and alarm/kl/fired: one name a path prefix of another, as the alarms write them
    {"step": 0, "proxy_reward": 0.25, "gold_reward": 0.5, "kl_sft": 0.0, "mech/fooled": 1, "alarm/kl": 0.0,
     "alarm/kl/fired": 0},
    {"step": 3, "proxy_reward": 0.75, "gold_reward": 0.625, "kl_sft": 0.125, "mech/fooled": 2, "alarm/kl": 0.5,
     "alarm/kl/fired": 0},
    {"step": 6, "proxy_reward": 1.5, "gold_reward": -0.375, "kl_sft": 1.0, "mech/fooled": 0, "alarm/kl": 2.0,
     "alarm/kl/fired": 1},
]  # fmt: skip


def _config(tmp_path: Path, report_to: str):
    return load_config("smoke").model_copy(update={"out": tmp_path / "my-out", "report_to": report_to})


def _write_rows(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _rng_states() -> tuple:
    return random.getstate(), np.random.get_state()[1].tolist(), torch.get_rng_state().tolist()


def tensorboard_scalars(directory: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} from the event files in `directory`, as TensorBoard reads them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(directory)).Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _expected(rows: list[dict]) -> dict[str, list[tuple[int, float]]]:
    return {key: [(r["step"], pytest.approx(r[key])) for r in rows] for key in rows[0] if key != "step"}


def test_tensorboard_holds_every_row_at_its_step_and_the_config(tmp_path):
    cfg = _config(tmp_path, "tensorboard")
    metrics = tmp_path / "my-out" / "runs" / "none" / "seed0" / "metrics.jsonl"
    before = _rng_states()
    tracking = trackers.open_run(cfg, "none", 0, metrics)
    for row in ROWS:
        tracking.log(row)
    tracking.finish()
    assert _rng_states() == before  # trackers draw no random numbers: results are the same without them
    run_dir = tmp_path / "my-out" / "tracking" / "tensorboard" / "none" / "seed0"
    assert tensorboard_scalars(run_dir) == _expected(ROWS)
    (hparams,) = run_dir.glob("*/hparams.yml")  # accelerate's store_init_configuration
    stored = yaml.safe_load(hparams.read_text())
    assert stored["run.name"] == "none" and stored["run.seed"] == 0
    assert stored["rl.steps"] == cfg.rl.steps and stored["report_to"] == "tensorboard"


def test_a_resumed_run_rewrites_its_tensorboard_run_from_metrics_jsonl(tmp_path):
    """The first attempt logged 3 rows, its checkpoint kept 2: the resumed run replays those 2 and goes on,
    so TensorBoard shows what an uninterrupted run shows (no duplicate step 6)."""
    cfg = _config(tmp_path, "tensorboard")
    metrics = tmp_path / "my-out" / "runs" / "kl" / "seed1" / "metrics.jsonl"
    first = trackers.open_run(cfg, "kl", 1, metrics)
    for row in ROWS:
        first.log({**row, "gold_reward": 9.0})  # what the interrupted attempt logged after the checkpoint differs
    first.finish()
    _write_rows(metrics, ROWS[:2])  # metrics.jsonl as cut back to the checkpoint
    resumed = trackers.open_run(cfg, "kl", 1, metrics, state={})
    resumed.log(ROWS[2])
    resumed.finish()
    assert tensorboard_scalars(tmp_path / "my-out" / "tracking" / "tensorboard" / "kl" / "seed1") == _expected(ROWS)


def _wandb_records(path: Path):
    """The records of a .wandb file (wandb's LevelDB-style log: a 7-byte header, then in 32 KiB blocks
    chunks of [crc32:4][length:2][type:1] whose types 1 = full, 2..4 = first, middle, last piece)."""
    from wandb.proto.wandb_internal_pb2 import Record

    data, pos, payload = path.read_bytes(), 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a chunk header is padding
            pos += 32768 - pos % 32768
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        payload += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            yield Record.FromString(payload)
            payload = b""


def _offline_run(run_dir: Path) -> dict:
    """An offline W&B run directory as {id, name, group, project, config, history: {key: [(step, value)]}}."""
    (path,) = run_dir.glob("run-*.wandb")
    found: dict = {"history": {}}
    for record in _wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
            found.update(id=run.run_id, name=run.display_name, group=run.run_group, project=run.project)
            found["config"] = {c.key: json.loads(c.value_json) for c in run.config.update}
        elif kind == "config":
            found["config"].update({c.key: json.loads(c.value_json) for c in record.config.update})
        elif kind == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
            for key, value in items.items():
                if not key.startswith("_"):
                    found["history"].setdefault(key, []).append((record.history.step.num, value))
    return found


def test_wandb_offline_run_holds_the_config_and_every_row_and_resumes_the_same_run(tmp_path, monkeypatch):
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-dir"))
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    (tmp_path / "wandb-dir").mkdir()
    cfg = _config(tmp_path, "wandb")
    metrics = tmp_path / "my-out" / "runs" / "none" / "seed0" / "metrics.jsonl"
    before = _rng_states()
    first = trackers.open_run(cfg, "none", 0, metrics)
    first.log(ROWS[0])
    state = first.state()  # kept in the run's checkpoint
    first.log(ROWS[1])
    first.finish()
    assert _rng_states() == before
    _write_rows(metrics, ROWS[:1])  # the checkpoint came after step 0
    resumed = trackers.open_run(cfg, "none", 0, metrics, state=state)
    for row in ROWS[1:]:
        resumed.log(row)
    resumed.finish()
    wandb.teardown()  # finish() returns before wandb-core has written everything to the offline files

    runs = sorted((tmp_path / "wandb-dir" / "wandb").glob("offline-run-*"))
    assert len(runs) == 2
    attempts = [_offline_run(r) for r in runs]
    for got in attempts:
        assert got["id"] == state["wandb"]["id"]
        assert (got["name"], got["group"], got["project"]) == ("none/seed0", "my-out", "overopt")
        assert got["config"]["rl.steps"] == cfg.rl.steps and got["config"]["run.seed"] == 0
    assert attempts[0]["history"] == _expected(ROWS[:2])
    assert attempts[1]["history"] == _expected(ROWS)  # offline: the newest directory holds the whole run


def _batched_then_resumed(cfg) -> None:
    """Runs none/seed0 and kl/seed1 open together (a batched group, overopt.batching) log their rows in turn;
    then none/seed0 resumes from a checkpoint that kept 2 of its 3 rows (the killed attempt's third differs)."""
    out = Path(cfg.out)
    metrics = out / "runs" / "none" / "seed0" / "metrics.jsonl"
    before = _rng_states()
    first = trackers.open_run(cfg, "none", 0, metrics)
    other = trackers.open_run(cfg, "kl", 1, out / "runs" / "kl" / "seed1" / "metrics.jsonl")
    for row in ROWS:
        first.log({**row, "gold_reward": 9.0} if row["step"] == 6 else row)
        other.log({**row, "proxy_reward": -row["proxy_reward"]})
    first.finish()
    other.finish()
    assert _rng_states() == before
    _write_rows(metrics, ROWS[:2])  # metrics.jsonl as cut back to the checkpoint
    resumed = trackers.open_run(cfg, "none", 0, metrics, state={})
    resumed.log(ROWS[2])
    resumed.finish()


KL_ROWS = [{**row, "proxy_reward": -row["proxy_reward"]} for row in ROWS]


def test_trackio_holds_every_row_at_its_step_and_the_config_locally(tmp_path, monkeypatch):
    from trackio import Api
    from trackio.sqlite_storage import SQLiteStorage

    for remote in ("TRACKIO_SPACE_ID", "TRACKIO_SERVER_URL"):  # local only: no Space, no server
        monkeypatch.delenv(remote, raising=False)
    cfg = _config(tmp_path, "trackio").model_copy(update={"out": tmp_path / "trackio-out"})  # its own project
    _batched_then_resumed(cfg)  # trackio's directory: conftest's (trackio reads TRACKIO_DIR once per process)

    runs = {run.name: run for run in Api().runs("trackio-out")}
    assert len(Api().runs("trackio-out")) == 2 and sorted(runs) == ["kl/seed1", "none/seed0"]  # killed: deleted
    for name, rows in [("none/seed0", ROWS), ("kl/seed1", KL_ROWS)]:
        logs = SQLiteStorage.get_logs("trackio-out", name, run_id=runs[name].id)
        history = {key: [(log["step"], log[key]) for log in logs] for key in rows[0] if key != "step"}
        assert history == _expected(rows)
        config = runs[name].config
        assert config["run.name"] == name.split("/")[0] and config["_Group"] == name.split("/")[0]
        assert config["rl.steps"] == cfg.rl.steps and config["report_to"] == "trackio"
        assert "allow_val_change" not in config  # accelerate's TrackioTracker would add it


def test_mlflow_file_store_holds_every_row_at_its_step_and_the_config(tmp_path):
    from mlflow import MlflowClient

    cfg = _config(tmp_path, "mlflow")
    _batched_then_resumed(cfg)

    client = MlflowClient((tmp_path / "my-out" / "tracking" / "mlflow").as_uri())  # a file: URI, no server
    experiment = client.get_experiment_by_name("my-out")
    found = client.search_runs([experiment.experiment_id])
    runs = {run.info.run_name: run for run in found}
    assert len(found) == 2 and sorted(runs) == ["kl/seed1", "none/seed0"]  # the killed attempt's run: deleted
    for name, rows in [("none/seed0", ROWS), ("kl/seed1", KL_ROWS)]:
        run_id = runs[name].info.run_id
        history = {}
        for key in rows[0].keys() - {"step"}:
            metrics = client.get_metric_history(run_id, trackers.mlflow_key(key))  # `/` as `.`
            history[key] = sorted((m.step, m.value) for m in metrics)
        assert history == _expected(rows)
        params = runs[name].data.params  # text
        assert params["run.seed"] == name[-1] and params["rl.steps"] == str(cfg.rl.steps)
        assert params["report_to"] == "mlflow" and runs[name].info.status == "FINISHED"


def test_no_trackers_open_nothing(tmp_path):
    tracking = trackers.open_run(_config(tmp_path, ""), "none", 0, tmp_path / "metrics.jsonl")
    tracking.log(ROWS[0])
    assert tracking.state() == {} and not (tmp_path / "my-out").exists()


@pytest.mark.parametrize(
    ("report_to", "message"),
    [
        ("tensorboard,bogus", "report_to: unknown tracker 'bogus'; overopt reports to tensorboard, wandb, trackio"),
        ("aim", "report_to: 'aim' is an accelerate tracker that overopt does not open"),
        ("wandb", "report_to: wandb is not installed: pip install 'overopt[trackers]'"),
    ],
    ids=["unknown", "not-wired", "not-installed"],
)
def test_bad_tracker_names_are_one_line_errors(report_to, message, tmp_path, monkeypatch, capsys):
    import accelerate.utils

    monkeypatch.setattr(accelerate.utils, "is_wandb_available", lambda: False)
    with pytest.raises(ValidationError, match="report_to"):
        load_config("smoke").model_validate({**load_config("smoke").model_dump(), "report_to": report_to})
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--preset", "smoke", "--out", str(tmp_path / "never"), "--report_to", report_to])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "never").exists()
