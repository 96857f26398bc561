"""End to end: `overopt run --preset smoke` writes every file of the output contract, reuses finished work."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from overopt.cli import main

CONTRACT_KEYS = {"step", "proxy_reward", "gold_reward", "kl_sft", "entropy", "mean_length", "wall_s"}
STAT_KEYS = {"gold_final", "gold_peak", "proxy_final", "kl_final", "wall_s", "gold_peak_step"}


@pytest.fixture(scope="module")
def smoke_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke") / "out"
    main(["run", "--preset", "smoke", "--out", str(out), "--report_to", "tensorboard"])  # trackers change no result
    return out


def test_smoke_run_writes_the_output_contract(smoke_out):
    cfg = yaml.safe_load((smoke_out / "config.yaml").read_text())
    assert cfg["preset"] == "smoke" and cfg["testbed"] == "summarize"
    for stage in ("sft", "rm"):
        assert list((smoke_out / "artifacts" / stage).glob("*.safetensors")), f"{stage} has no safetensors weights"
        assert (smoke_out / "artifacts" / stage / "config.json").exists()
    for method in ("none", "kl"):
        rows = [json.loads(line) for line in (smoke_out / "runs" / method / "seed0" / "metrics.jsonl").open()]
        assert [r["step"] for r in rows] == [0, 3, 6]
        for row in rows:
            assert CONTRACT_KEYS <= row.keys()
    summary = json.loads((smoke_out / "summary.json").read_text())
    assert summary["testbed"] == "summarize" and summary["preset"] == "smoke"
    assert set(summary["sft"]) >= {"gold_reward", "proxy_reward"}
    assert list(summary["methods"]) == ["none", "kl"]
    for stats in summary["methods"].values():
        assert STAT_KEYS <= stats.keys()
        assert set(stats["gold_final"]) == {"mean", "std", "n"} and stats["gold_final"]["n"] == 1
    assert "heldout_accuracy" in summary["stages"]["rm"]["metrics"]
    html = (smoke_out / "report.html").read_text()
    assert "data:image/png;base64" in html and "heldout" in html.replace(" ", "_").lower()
    pngs = list((smoke_out / "plots").glob("*.png"))
    assert pngs and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


def test_report_to_tensorboard_writes_each_runs_metrics(smoke_out):
    """`--report_to tensorboard`: one TensorBoard run per method × seed holding every metrics.jsonl figure."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for method in ("none", "kl"):
        rows = [json.loads(line) for line in (smoke_out / "runs" / method / "seed0" / "metrics.jsonl").open()]
        events = EventAccumulator(str(smoke_out / "tracking" / "tensorboard" / method / "seed0")).Reload()
        keys = {key for row in rows for key in row} - {"step"}
        assert set(events.Tags()["scalars"]) == keys
        for key in keys:
            assert [(e.step, e.value) for e in events.Scalars(key)] == [
                (r["step"], pytest.approx(r[key], rel=1e-6, abs=1e-30)) for r in rows if key in r
            ], key


def test_rerun_reuses_finished_stages_and_runs(smoke_out):
    stamps = {p: p.stat().st_mtime_ns for p in smoke_out.glob("**/stage.json")}
    metrics = (smoke_out / "runs" / "none" / "seed0" / "metrics.jsonl").read_text()
    main(["run", "--preset", "smoke", "--out", str(smoke_out)])
    assert {p: p.stat().st_mtime_ns for p in smoke_out.glob("**/stage.json")} == stamps
    assert (smoke_out / "runs" / "none" / "seed0" / "metrics.jsonl").read_text() == metrics


def test_report_command_rebuilds_from_outputs(smoke_out):
    (smoke_out / "summary.json").unlink()
    (smoke_out / "report.html").unlink()
    main(["report", str(smoke_out)])
    assert json.loads((smoke_out / "summary.json").read_text())["preset"] == "smoke"
    assert (smoke_out / "report.html").exists()


@pytest.mark.parametrize("change", [["--rm.lr", "0.5"], ["--rl.lr", "0.5"]], ids=["shared-stage", "run"])
def test_changed_config_is_refused_in_the_same_out_before_anything_is_written(smoke_out, capsys, change):
    before = {p: p.read_bytes() for p in smoke_out.glob("**/*") if p.is_file()}
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--preset", "smoke", "--out", str(smoke_out), *change])
    assert exit_info.value.code == 2
    assert "different configuration" in capsys.readouterr().err
    # config.yaml still describes what OUT holds.
    assert {p: p.read_bytes() for p in smoke_out.glob("**/*") if p.is_file()} == before


def test_bad_input_is_one_line_exit_2(tmp_path, capsys):
    # Once through the real entry point (`python -m overopt`, a fresh interpreter), then in-process.
    argv = ["run", "--preset", "smoke", "--out", str(tmp_path / "a"), "--methods", "none,bogus"]
    proc = subprocess.run([sys.executable, "-m", "overopt", *argv], capture_output=True, text=True)
    assert proc.returncode == 2, (argv, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    for argv in (["run", "--preset", "nope"], ["report", str(tmp_path / "missing")]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_docs_config_table_is_current():
    """The configuration reference's table of config fields is generated from the config; it must match the code."""
    from pathlib import Path

    from overopt.config import markdown_table

    page = (Path(__file__).parents[1] / "docs" / "reference" / "configuration.md").read_text()
    assert markdown_table() in page, (
        "regenerate the table of docs/reference/configuration.md with overopt.config.markdown_table()"
    )


def test_a_pickle_planted_where_weights_are_expected_is_refused(smoke_out, tmp_path, capsys):
    """Weights load only from safetensors: a pickle in place of the SFT weights is never unpickled."""
    import shutil

    import torch

    out = tmp_path / "planted"
    shutil.copytree(smoke_out, out)
    (out / "artifacts" / "sft" / "model.safetensors").unlink()
    torch.save({"not": "weights"}, out / "artifacts" / "sft" / "pytorch_model.bin")
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--preset", "smoke", "--out", str(out)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("overopt: error:")]
    assert len(errors) == 1 and "safetensors" in errors[0] and err.strip().endswith(errors[0]), err


@pytest.mark.parametrize(
    ("damage", "detail"),
    [
        ("truncated_weights", ""),
        ("missing_pairs_file", ""),
        ("pairs_missing_a_column", "its 'train' split has no 'gold_chosen' column"),
        ("pairs_without_rows", ""),
    ],
)
def test_a_damaged_finished_stage_is_named_in_one_line(smoke_out, tmp_path, damage, detail, capsys):
    import shutil

    from datasets import load_from_disk

    out = tmp_path / "out"
    shutil.copytree(smoke_out, out)
    broken = out / "artifacts" / ("sft" if damage == "truncated_weights" else "pairs")
    if damage == "truncated_weights":
        target = broken / "model.safetensors"
        target.write_bytes(target.read_bytes()[:100])
    elif damage == "missing_pairs_file":
        for arrow in (broken / "data").glob("*/*.arrow"):
            arrow.unlink()
    else:
        pairs = load_from_disk(str(broken / "data"), keep_in_memory=True)
        if damage == "pairs_missing_a_column":
            pairs["train"] = pairs["train"].remove_columns("gold_chosen")
        else:
            pairs["test"] = pairs["test"].select([])
        shutil.rmtree(broken / "data")
        pairs.save_to_disk(str(broken / "data"))
    before = {p: p.read_bytes() for p in out.glob("**/*") if p.is_file() and p.name != "config.yaml"}
    with pytest.raises(SystemExit) as exit_info:  # in-process: an interpreter start per case was most of its time
        main(["run", "--preset", "smoke", "--out", str(out)])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("overopt: error:")]
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert len(errors) == 1 and errors[0].startswith(f"overopt: error: {broken}: cannot load it ({detail}")
    assert errors[0] == err.strip().splitlines()[-1]  # progress lines ("reusing ...") come first
    assert "delete the directory to rebuild it" in errors[0]
    # Nothing already written was touched (config.yaml records the latest command: its `out` moved here).
    assert {p: p.read_bytes() for p in out.glob("**/*") if p.is_file() and p.name != "config.yaml"} == before


# The `summarize` default preset's stage fingerprints on the CPU and a hash of the frontier grid's 37 run
# fingerprints (seed 0), as they were at 8ed8a00 (and in OUTs built since 2026-12-06).
PINNED_STAGES = {"sft": "b8e07a27479a9999", "data": "181f932a50c13513", "rm": "db78746bcb6477f1",
                 "rm_backbone": "b8e07a27479a9999"}  # fmt: skip
PINNED_RUNS = {"none": "f93c225d8967332f", "kl": "6e101176c81cd548", "frontier grid": "eedc8dd6088ccfa1"}


def test_fingerprints_of_finished_work_are_pinned():
    """Fingerprints decide whether a finished stage or run in OUT is reused: a change that moves them makes every
    OUT built before it stale, its stages and runs trained again. A new knob left at its old behaviour must leave
    them as they are (pipeline._run_fingerprint); change the pins only on purpose, and say so in the commit."""
    import hashlib

    from overopt.compare import load_grid, variants
    from overopt.config import load_config
    from overopt.pipeline import _run_fingerprint, resolve_plans, stage_fingerprints

    cfg = load_config(preset="default", testbed="summarize")
    stages = stage_fingerprints(cfg, "preference", "cpu")
    assert stages == PINNED_STAGES
    runs = {
        name: _run_fingerprint(stages["rm"], plan, variant, 0) for name, (plan, variant) in resolve_plans(cfg).items()
    }
    grid, _ = load_grid()
    frontier = {name: _run_fingerprint(stages["rm"], plan, variant, 0)
                for name, (plan, variant) in resolve_plans(cfg, variants(cfg, grid)).items()}  # fmt: skip
    assert len(frontier) == 37
    runs["frontier grid"] = hashlib.sha256(json.dumps(frontier, sort_keys=True).encode()).hexdigest()[:16]
    assert runs == PINNED_RUNS, json.dumps(frontier, indent=1)
