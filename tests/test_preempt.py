"""Preemption (overopt.preempt): SIGTERM or SIGUSR1 mid-RL checkpoints the step, exits 75, and the same
command resumes into exactly the uninterrupted run (every metrics.jsonl row but wall times, every
samples line, every weight: test_resume.assert_same_results).

The signal is real and comes from outside: the forked `overopt run` stops itself (SIGSTOP) at an exact
step, this process sends it SIGTERM or SIGUSR1 and lets it go on (SIGCONT). Checkpoints are otherwise
an hour apart, so the only one there is the one the signal asked for.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest
from test_lock import _fork, _stopped
from test_resume import assert_same_results

from overopt import faults, preempt
from overopt.cli import main
from overopt.progress import StageProgress

pytestmark = pytest.mark.usefixtures("one_thread", "no_report")

# The smoke run of test_resume.SMOKE (the reference `uninterrupted`), with no periodic checkpoint.
COMMAND = ["run", "--preset", "smoke", "--threads", "1", "--checkpoint_every_s", "3600"]


@pytest.mark.parametrize(
    ("signum", "moment", "checkpoints"),
    [  # the two runs are trained together (batch_runs): each reaches its own next step boundary and checkpoints
        (signal.SIGTERM, "rl none seed0:2", ["runs/none/seed0/step-000000002", "runs/kl/seed0/step-000000002"]),
        # Slurm's --signal=USR1@..., in the 2nd run (it is first to stop: none checkpoints after its last update)
        (signal.SIGUSR1, "rl kl seed0:5", ["runs/kl/seed0/step-000000005", "runs/none/seed0/step-000000006"]),
    ],
    ids=["SIGTERM", "SIGUSR1"],
)
def test_a_signal_mid_rl_checkpoints_exits_75_and_the_same_command_resumes_bit_for_bit(
    uninterrupted, tmp_path, signum, moment, checkpoints
):
    out = tmp_path / "out"
    shutil.copytree(uninterrupted / "artifacts", out / "artifacts")  # the shared stages: only RL runs here
    stderr = tmp_path / "preempted.err"

    def stop_until_signalled() -> None:
        # The signal is pending while the child is stopped, but the kernel may hand it to another thread (a
        # progress bar's), and Python runs the handler in the main thread only at its next check: without this
        # wait the run can pass its step boundary first and checkpoint one step later (seen in CI).
        os.kill(os.getpid(), signal.SIGSTOP)
        deadline = time.monotonic() + 30
        while preempt.requested() is None and time.monotonic() < deadline:
            time.sleep(0.001)

    def preempted() -> None:
        sys.stderr = open(stderr, "w")  # noqa: SIM115 (the child's own log; the parent reads it)
        faults.arm(moment, crash=stop_until_signalled)
        main([*COMMAND, "--out", str(out)])

    pid = _fork(preempted)
    try:
        _stopped(pid)
        os.kill(pid, signum)  # pending until it goes on
    finally:
        os.kill(pid, signal.SIGCONT)
        _, status = os.waitpid(pid, 0)
    log = stderr.read_text()
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 75, log[-2000:]
    written = ", ".join(f"checkpoint {out / 'checkpoints' / c} written" for c in checkpoints)
    assert [line for line in log.splitlines() if line.startswith("overopt: ")] == [
        f"overopt: preempted: {signal.Signals(signum).name} received; {written}; rerun the same command to resume"
    ]
    found = [p.relative_to(out / "checkpoints") for p in out.glob("checkpoints/**/step-*")]
    assert sorted(found) == sorted(Path(c) for c in checkpoints)
    assert not (out / ".overopt.lock.json").exists()  # OUT is free for the rerun
    main([*COMMAND, "--out", str(out)])  # the same command
    assert_same_results(uninterrupted, out)


def test_signal_handlers_last_as_long_as_the_command(tmp_path, capsys):
    """Installed by the CLI for one command; a stage that has not started once a stop is asked does not."""

    before = {s: signal.getsignal(s) for s in preempt.SIGNALS}
    seen = []

    def command(argv):
        seen.extend(signal.getsignal(s) for s in preempt.SIGNALS)
        os.kill(os.getpid(), signal.SIGTERM)  # recorded, not fatal
        with StageProgress("pairs"):
            raise AssertionError("a stage started after SIGTERM")

    from overopt import cli

    commands = {**cli.COMMANDS, "run": command}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cli, "COMMANDS", commands)
        with pytest.raises(SystemExit) as exit_info:
            main(["run"])
    assert exit_info.value.code == 75
    assert capsys.readouterr().err.strip() == (
        "overopt: preempted: SIGTERM received; 'pairs' not started; rerun the same command to resume"
    )
    assert all(handler is preempt._handler for handler in seen)  # noqa: SLF001
    assert {s: signal.getsignal(s) for s in preempt.SIGNALS} == before and preempt.requested() is None
