"""A run killed at any moment resumes into the same OUT and reproduces the uninterrupted run bit for bit.

The kills are real SIGKILLs of forked `overopt run` processes at exact moments (overopt.faults; from a
shell, OVEROPT_KILL_AT arms the same points); "identical"
means every metrics.jsonl row (all keys but the wall-clock times), every samples.jsonl line and every
tensor of every safetensors file under artifacts/ and runs/ (SFT policy, RMs, final policies).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from overopt import faults
from overopt.checkpoint import Checkpointer
from overopt.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")  # the runs below set --threads 1; restored afterwards

SMOKE = ["run", "--preset", "smoke", "--threads", "1", "--checkpoint_every_s", "0"]  # conftest.uninterrupted runs it

# (moment, newest checkpoints left behind): the smoke run's SFT takes 15 steps and checkpoints after
# steps 1-14 (writes 1-14), its RM 5 steps (writes 15-18), each RL run 6 steps. The two runs are trained
# together (batch_runs): they take turns, each step of `none` before the same step of `kl` (writes 19, 21, 23, ...
# are none's, 20, 22, ... kl's), so a moment inside one run leaves both runs' newest checkpoints behind.
KILLS = [
    ("sft:2", "sft/step-000000001"),  # inside SFT
    ("sft:11", "sft/step-000000010"),
    ("checkpoint.write:3", "sft/step-000000002"),  # SFT checkpoint 3 written, not yet renamed into place
    ("stage.publish:1", "sft/step-000000014"),  # SFT finished and written, its directory not yet renamed into place
    ("pairs:1", None),  # inside the sampling of preference pairs
    ("rm:3", "rm/step-000000002"),  # inside RM training
    ("checkpoint.write:16", "rm/step-000000001"),  # during an RM checkpoint write
    ("rl none seed0:1", None),  # first RL update (after the step-0 evaluation, before any checkpoint)
    ("rl none seed0:5", ("runs/none/seed0/step-000000004", "runs/kl/seed0/step-000000004")),
    # between the metrics and samples lines of none's step 3 (the 3rd evaluation: none's and kl's step 0 before it)
    ("eval.logged:3", ("runs/none/seed0/step-000000002", "runs/kl/seed0/step-000000002")),
    # during none's 2nd RL checkpoint write
    ("checkpoint.write:21", ("runs/none/seed0/step-000000001", "runs/kl/seed0/step-000000001")),
    ("rl kl seed0:6", ("runs/none/seed0/step-000000005", "runs/kl/seed0/step-000000005")),  # the last update
]


def _child(args: list[str], kill_at: str) -> None:
    """`overopt run` in a forked process (the parent has imported everything: no start-up cost)."""
    faults.arm(kill_at)
    try:
        main(args)
    except SystemExit as exit_:
        os._exit(exit_.code if isinstance(exit_.code, int) else 1)
    os._exit(0)


def _overopt_processes(jobs: list[tuple[Path, str]]) -> list[int]:
    """Run `overopt run` into each OUT, each in its own process, killed at its moment ('' = never); exit codes.

    The processes are forked from this one's main thread, so that a SIGKILL ends a real process.
    """
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_child, args=([*SMOKE, "--out", str(out)], kill_at)) for out, kill_at in jobs]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=300)
    return [proc.exitcode for proc in procs]


def _metrics(path: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if "wall" not in k} for line in path.open()]


def assert_same_results(expected: Path, got: Path) -> None:
    logs = sorted(p.relative_to(expected) for p in expected.glob("runs/*/seed*/*.jsonl"))
    assert logs and logs == sorted(p.relative_to(got) for p in got.glob("runs/*/seed*/*.jsonl"))
    for log in logs:
        if log.name == "metrics.jsonl":
            assert _metrics(expected / log) == _metrics(got / log), log
        else:
            assert (expected / log).read_text() == (got / log).read_text(), log
    weights = sorted(p.relative_to(expected) for p in expected.glob("**/*.safetensors"))
    assert any(w.name == "policy.safetensors" for w in weights)
    assert weights == sorted(p.relative_to(got) for p in got.glob("**/*.safetensors"))
    for w in weights:
        a, b = load_file(expected / w), load_file(got / w)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), w
    assert not (got / "checkpoints").exists(), "a finished OUT keeps no checkpoints"


@pytest.mark.slow
def test_sigkill_at_twelve_moments_resumes_bit_for_bit(uninterrupted, tmp_path):
    outs = {moment: tmp_path / moment.replace(" ", "_").replace(":", "@") for moment, _ in KILLS}
    problems = []
    for pair in (KILLS[i : i + 2] for i in range(0, len(KILLS), 2)):  # two single-threaded runs at a time
        killed = _overopt_processes([(outs[moment], moment) for moment, _ in pair])
        for (moment, left), code in zip(pair, killed, strict=True):
            newest = [p.relative_to(outs[moment] / "checkpoints") for p in outs[moment].glob("checkpoints/**/step-*")]
            if code != -signal.SIGKILL:
                problems.append(f"{moment}: not killed (exit {code})")
            elif sorted(newest) != sorted(Path(c) for c in ((left,) if isinstance(left, str) else left or ())):
                problems.append(f"{moment}: expected checkpoint {left}, found {newest}")
        resumed = _overopt_processes([(outs[moment], "") for moment, _ in pair])
        problems += [f"{moment}: resume exited {code}" for (moment, _), code in zip(pair, resumed, strict=True) if code]
    assert not problems, problems
    for moment, _ in KILLS:
        assert_same_results(uninterrupted, outs[moment])


# -- the same in-process, for the methods that carry state from step to step ----------------------

STATEFUL = ["--methods", "ref_reset+kl,par,constrained,ocrm+kl", "--ref_reset.every", "2", "--rl.kl.adaptive", "True"]


class _Crash(BaseException):
    """Stands in for a SIGKILL inside the test process (the CLI catches no BaseException)."""


def _crash() -> None:
    raise _Crash


@pytest.fixture(scope="module")
def stateful_uninterrupted(uninterrupted, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("stateful") / "out"
    shutil.copytree(uninterrupted / "artifacts", out / "artifacts")  # same shared stages: only the runs differ
    main([*SMOKE, "--out", str(out), *STATEFUL])
    return out


@pytest.mark.parametrize(
    "moment",
    [
        "rl ref_reset+kl seed0:3",  # after one reference reset (every 2 steps), before the next
        "rl par seed0:4",  # PAR's cache of SFT reference rewards
        "rl constrained seed0:5",  # the Lagrange multiplier
        "rl ocrm+kl seed0 phase 1:1",  # inside OCRM round 1: the refitted RM and the moved anchor
        "ocrm round 2 rm:2",  # inside OCRM round 2's RM refit
    ],
)
def test_stateful_methods_resume_bit_for_bit(stateful_uninterrupted, tmp_path, moment):
    out = tmp_path / "out"
    shutil.copytree(stateful_uninterrupted / "artifacts", out / "artifacts")
    faults.arm(moment, crash=_crash)
    try:
        with pytest.raises(_Crash):
            main([*SMOKE, "--out", str(out), *STATEFUL])
    finally:
        faults.arm("")
    assert list(out.glob("checkpoints/runs/*/seed0/step-*"))
    main([*SMOKE, "--out", str(out), *STATEFUL])
    assert_same_results(stateful_uninterrupted, out)


def test_ppo_with_ocrm_resumes_bit_for_bit(uninterrupted, tmp_path):
    """PPO adds a value model (refitted from each round's RM) to what a checkpoint must carry."""
    args = ["--methods", "ocrm+kl", "--rl.algo", "ppo"]
    straight, out = tmp_path / "straight", tmp_path / "out"
    for target in (straight, out):
        shutil.copytree(uninterrupted / "artifacts", target / "artifacts")
    main([*SMOKE, "--out", str(straight), *args])
    faults.arm("rl ocrm+kl seed0 phase 2:1", crash=_crash)
    try:
        with pytest.raises(_Crash):
            main([*SMOKE, "--out", str(out), *args])
    finally:
        faults.arm("")
    main([*SMOKE, "--out", str(out), *args])
    assert_same_results(straight, out)


# -- bad checkpoints, a full disk, a NaN ---------------------------------------------------------


def _interrupted_run(uninterrupted: Path, out: Path, moment: str) -> None:
    shutil.copytree(uninterrupted / "artifacts", out / "artifacts")
    faults.arm(moment, crash=_crash)
    try:
        with pytest.raises(_Crash):
            main([*SMOKE, "--out", str(out)])
    finally:
        faults.arm("")


def _one_error_line(capsys, code: int = 2) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("overopt: ")]
    assert len(lines) == 1 and err.strip().endswith(lines[0]), err
    return lines[0]


def _snapshot(out: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in out.glob("**/*") if p.is_file() and p.name != "config.yaml"}


@pytest.mark.parametrize("damage", ["truncated_weights", "pickled_weights", "garbled_state"])
def test_a_damaged_checkpoint_ends_in_one_line_and_is_left_as_it_was(uninterrupted, tmp_path, capsys, damage):
    out = tmp_path / "out"
    _interrupted_run(uninterrupted, out, "rl none seed0:4")
    newest = out / "checkpoints" / "runs" / "none" / "seed0" / "step-000000003"
    marker = tmp_path / "unpickled"
    if damage == "truncated_weights":
        (newest / "policy.safetensors").write_bytes((newest / "policy.safetensors").read_bytes()[:200])
    elif damage == "pickled_weights":

        class Payload:
            def __reduce__(self):
                return (open, (str(marker), "w"))

        torch.save(Payload(), newest / "policy.safetensors")
    else:
        (newest / "state.json").write_text((newest / "state.json").read_text()[:-40])
    before = _snapshot(out)
    with pytest.raises(SystemExit) as exit_info:
        main([*SMOKE, "--out", str(out)])
    line = _one_error_line(capsys)
    assert exit_info.value.code == 2
    assert line.startswith(f"overopt: error: {newest}: cannot read the checkpoint")
    assert line.endswith(f"delete {newest.parent} to restart that stage")
    assert _snapshot(out) == before and not marker.exists()


def test_a_full_disk_keeps_the_last_checkpoint_and_the_rerun_resumes(uninterrupted, tmp_path, capsys, monkeypatch):
    import overopt.checkpoint as checkpoint

    out = tmp_path / "out"
    shutil.copytree(uninterrupted / "artifacts", out / "artifacts")
    writes = []
    real_save_model = checkpoint.save_model

    def fills_up(model, filename):  # the 4th checkpoint of the first run (writes alternate none, kl) hits a full disk
        writes.append(filename)
        if len(writes) == 7:
            Path(filename).write_bytes(b"\0" * 64)  # a partly written file, as a full disk leaves it
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        real_save_model(model, filename)

    monkeypatch.setattr(checkpoint, "save_model", fills_up)
    with pytest.raises(SystemExit) as exit_info:
        main([*SMOKE, "--out", str(out)])
    root = out / "checkpoints" / "runs" / "none" / "seed0"
    assert exit_info.value.code == 2
    assert _one_error_line(capsys) == (
        f"overopt: error: no space left on the device writing {root}: "
        "free some space and rerun the same command to resume"
    )
    assert sorted(p.name for p in root.iterdir()) == ["step-000000003"]  # no partial checkpoint left
    assert Checkpointer(root, "any", every_s=0)._complete()  # noqa: SLF001
    monkeypatch.setattr(checkpoint, "save_model", real_save_model)
    main([*SMOKE, "--out", str(out)])
    assert_same_results(uninterrupted, out)


def test_a_nan_loss_stops_the_run_with_its_last_checkpoint_intact(uninterrupted, tmp_path, capsys, monkeypatch):
    import overopt.stages.rl as rl

    out = tmp_path / "out"
    shutil.copytree(uninterrupted / "artifacts", out / "artifacts")
    calls = []
    real_loss = rl._minibatch_loss

    def nan_at_step_4(*args, **kwargs):  # none's 4th update (updates alternate none, kl)
        loss, figures = real_loss(*args, **kwargs)
        calls.append(1)
        if len(calls) == 7:
            loss, figures = loss * float("nan"), {**figures, "train/loss": float("nan")}
        return loss, figures

    monkeypatch.setattr(rl, "_minibatch_loss", nan_at_step_4)
    with pytest.raises(SystemExit) as exit_info:
        main([*SMOKE, "--out", str(out)])
    assert exit_info.value.code == 3
    line = _one_error_line(capsys, code=3)
    assert line.startswith("overopt: numerical fault: rl step 4: non-finite loss; the update was not applied")
    root = out / "checkpoints" / "runs" / "none" / "seed0"
    assert [p.name for p in root.iterdir()] == ["step-000000003"]
    before = _snapshot(out)
    monkeypatch.setattr(rl, "_minibatch_loss", real_loss)
    main([*SMOKE, "--out", str(out)])  # the NaN was injected: without it, the resumed run is the straight run
    assert_same_results(uninterrupted, out)
    assert before  # the failed run wrote its checkpoint and logs before the fault, and they were resumed from
