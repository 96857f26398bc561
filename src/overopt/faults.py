"""Fault injection for the crash tests: make a run die at an exact moment.

OVEROPT_KILL_AT=<point>:<n> kills the process with SIGKILL the n-th time it reaches
`faults.point("<point>")`. Points are the stages' progress-bar names, reached once per unit of work
(`sft`, `pairs`, `rm`, `rl none seed0`, `ocrm round 1 rm`, ...), plus `checkpoint.write` (a
checkpoint's files are written, not yet published by its rename), `stage.publish` (a finished
stage's directory is about to be renamed into place) and `eval.logged` (between the metrics and the
samples lines of an evaluation). Unarmed, a point costs one comparison.

OVEROPT_KILL_SIGNAL=TERM (or USR1, ...) sends that signal instead of SIGKILL: a preemption at an exact
moment (overopt.preempt), e.g. `OVEROPT_KILL_AT="rl none seed0:3" OVEROPT_KILL_SIGNAL=TERM overopt run`.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable


def _sigkill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def send(signum: int) -> Callable[[], None]:
    """A crash that sends `signum` to this process (SIGTERM: a preemption rather than a crash)."""
    return lambda: os.kill(os.getpid(), signum)


_point, _remaining, _crash = "", 0, _sigkill


def arm(spec: str, crash: Callable[[], None] = _sigkill) -> None:
    """Crash at the n-th arrival at a point ('<point>:<n>', n = 1 if omitted); '' disarms."""
    global _point, _remaining, _crash
    name, sep, count = spec.rpartition(":")
    if not (sep and count.isdigit()):
        name, count = spec, "1"
    _point, _remaining, _crash = name, int(count) if spec else 0, crash


def point(name: str) -> None:
    global _remaining
    if _remaining and name == _point:
        _remaining -= 1
        if _remaining == 0:
            _crash()


_signal = os.environ.get("OVEROPT_KILL_SIGNAL", "").upper().removeprefix("SIG")
arm(os.environ.get("OVEROPT_KILL_AT", ""), send(signal.Signals[f"SIG{_signal}"]) if _signal else _sigkill)
