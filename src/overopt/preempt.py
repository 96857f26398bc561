"""Preemption: SIGTERM or SIGUSR1 (how clusters ask a job to stop) checkpoints the running stage, then stops.

Slurm sends SIGTERM (or, with `--signal=USR1@<seconds>`, SIGUSR1) some time before it kills a preempted
or timed-out job; Kubernetes and most batch systems send SIGTERM with a grace period. During a command
the CLI installs handlers (`handling()`) that only record the signal. The work notices it at its next
safe point:

- a training loop (SFT, RM, judge, RL, an OCRM refit) at its next step boundary: Checkpointer.due() is
  then true, Checkpointer.save() writes the checkpoint and raises Preempted;
- a stage that has not started yet does not start (StageProgress raises Preempted on entry);
- a stage without checkpoints (sampling the preference pairs or the judge's answers, an evaluation,
  the report) runs to its end first: it is short, and a rerun would start it again anyway.

The CLI then prints one line and exits with status 75 (errors.PREEMPTED_STATUS); the same command
resumes from the checkpoint and reproduces the uninterrupted run (tests/test_preempt.py). A process
that runs workers (`--jobs N`, overopt.launch) passes the signal on to them; each worker checkpoints
its own run. `overopt report` installs nothing. SIGKILL cannot be caught: what it interrupts resumes
from the newest periodic checkpoint (`--checkpoint_every_s`).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
from collections.abc import Iterator

from overopt.errors import Preempted

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
_requested: str | None = None  # the name of the signal received, once one is


def requested() -> str | None:
    """The signal that asked this process to stop ('SIGTERM', 'SIGUSR1'), or None."""
    return _requested


def check(where: str) -> None:
    """Raise Preempted if a stop was asked for: `where` says what does not start (e.g. "before stage 'rm'")."""
    if _requested is not None:
        stop(where)


def stop(what: str) -> None:
    raise Preempted(f"{_requested} received; {what}; rerun the same command to resume")


def _handler(signum: int, frame) -> None:
    global _requested
    _requested = signal.Signals(signum).name
    # Worker processes (multiprocessing children of this command) run their own stages: pass it on. Each
    # records it once however often it arrives (a cluster may already have signalled every process).
    for child in multiprocessing.active_children():
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signum)


def install() -> None:
    """Record SIGTERM and SIGUSR1 in this process from now on (a worker process calls it once, at start)."""
    for signum in SIGNALS:
        signal.signal(signum, _handler)


@contextlib.contextmanager
def handling() -> Iterator[None]:
    """Record SIGTERM and SIGUSR1 for the duration of a command; the previous handlers come back after.

    Python runs signal handlers in the main thread only, so elsewhere (a command called from a thread)
    nothing is installed and the signals keep their previous behaviour."""
    global _requested
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in SIGNALS}
    _requested = None
    install()
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _requested = None
