"""One command per OUT, one process per run (overopt.lock).

Two `overopt run --out SAME` started a second apart used to both exit 0, each run's metrics.jsonl
ending with the other's rows too. Here the first command is a forked `overopt run` that stops itself
(SIGSTOP) in the middle of its first RL run, holding OUT; the second is refused in one line, exit 2,
writing nothing; the first then goes on and ends with exactly the results of an undisturbed run.
A lock whose holder was SIGKILLed is taken over (tests/test_resume.py also resumes 12 SIGKILLed runs
through it), with flock and with filelock's fallback for filesystems without flock.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import signal
import socket
import sys
from pathlib import Path

import pytest
from test_resume import SMOKE, assert_same_results

from overopt import faults, lock
from overopt.cli import main
from overopt.errors import InUse

pytestmark = pytest.mark.usefixtures("one_thread")  # the runs below set --threads 1; restored afterwards


def _fork(body) -> int:
    """Run `body()` in a forked child that ends with its exit status (the parent has imported everything)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            body()
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        finally:
            sys.stderr.flush()
            os._exit(code)
    return pid


def _stopped(pid: int) -> None:
    """Wait until the child has stopped itself (SIGSTOP); fail if it ended instead."""
    _, status = os.waitpid(pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status), f"the child ended (wait status {status}) before it stopped"


def _files(out: Path) -> dict[str, bytes]:
    """Every file under OUT (hidden ones too) with its bytes."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def _refusal(capsys) -> str:
    """The one line of a refusal (after the 'reusing ...' notes of the stages it read first)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("overopt: ")]
    assert len(lines) == 1 and err.strip().endswith(lines[0]), err
    return lines[0]


def test_a_second_command_into_a_busy_out_exits_2_in_one_line_and_the_first_is_undisturbed(
    uninterrupted, tmp_path, capsys, no_report
):
    out = tmp_path / "out"
    shutil.copytree(uninterrupted / "artifacts", out / "artifacts")  # the first command trains the runs only
    stderr = tmp_path / "first.err"

    def first() -> None:
        sys.stderr = open(stderr, "w")  # noqa: SIM115 (the child's own log; the parent reads it)
        faults.arm("rl none seed0:2", crash=faults.send(signal.SIGSTOP))  # mid-run, OUT held
        main([*SMOKE, "--out", str(out)])

    pid = _fork(first)
    try:
        _stopped(pid)
        before = _files(out)
        assert json.loads(before[".overopt.lock.json"])["pid"] == pid
        for second in ([*SMOKE, "--out", str(out)], ["compare", "--preset", "smoke", "--quick", "--out", str(out)]):
            with pytest.raises(SystemExit) as exit_info:
                main(second)
            assert exit_info.value.code == 2
            line, host = _refusal(capsys), socket.gethostname()
            assert line.startswith(f"overopt: error: {out} is in use by pid {pid} on host {host} since ")
            assert line.endswith("(another overopt command writes there: wait for it to end, or choose another --out)")
            assert _files(out) == before, "the refused command wrote into OUT"
    finally:
        os.kill(pid, signal.SIGCONT)
        _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, stderr.read_text()[-2000:]
    assert_same_results(uninterrupted, out)
    assert not (out / ".overopt.lock.json").exists()  # the holder's record goes with the lock


def test_a_run_held_by_another_process_is_refused_and_left_alone(uninterrupted, tmp_path, capsys):
    """Parallel workers and cluster jobs take each run's lock: a run in training is never trained twice."""
    out = tmp_path / "out"
    shutil.copytree(uninterrupted / "artifacts", out / "artifacts")
    run_dir = out / "runs" / "none" / "seed0"
    with lock.run_lock(run_dir):  # this process trains it (another lock instance is another holder)
        with pytest.raises(SystemExit) as exit_info:
            main([*SMOKE, "--out", str(out)])
        assert exit_info.value.code == 2
        assert _refusal(capsys).startswith(f"overopt: error: {run_dir} is in use by pid {os.getpid()} on host ")
        assert not run_dir.exists()
    assert not (out / ".overopt.lock.json").exists()  # the refused command let go of OUT


def _holds_then_dies(path: Path) -> int:
    """A child that takes OUT's lock, stops, and is SIGKILLed in that state; returns its pid."""

    def body() -> None:
        with lock.out_lock(path):
            os.kill(os.getpid(), signal.SIGSTOP)

    return _fork(body)


@pytest.mark.parametrize("flock", [True, False], ids=["flock", "no_flock"])
def test_a_lock_left_by_a_killed_holder_is_taken_over(tmp_path, monkeypatch, flock):
    """With flock the kernel frees a dead holder's lock; without it (ENOSYS: Lustre without -o flock, some
    FUSE mounts) filelock's marker records pid and host, and a marker of a dead process is taken over."""
    if not flock:

        def no_flock(fd, operation):
            raise OSError(errno.ENOSYS, "Function not implemented")

        monkeypatch.setattr(fcntl, "flock", no_flock)
    out = tmp_path / "out"
    pid = _holds_then_dies(out)
    try:
        _stopped(pid)
        with pytest.raises(InUse, match=rf"^{out} is in use by pid {pid} on host {socket.gethostname()} since "):
            with lock.out_lock(out):
                pass
        assert bool((out / lock.LOCK_NAME).read_text()) is not flock  # a flock file stays empty, a marker does not
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert json.loads((out / ".overopt.lock.json").read_text())["pid"] == pid  # the dead holder's record
    with lock.out_lock(out):
        assert json.loads((out / ".overopt.lock.json").read_text())["pid"] == os.getpid()
    assert not (out / ".overopt.lock.json").exists()
