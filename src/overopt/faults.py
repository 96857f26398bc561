"""Fault injection for the crash tests: make a run die with SIGKILL at an exact moment.

OVEROPT_KILL_AT=<point>:<n> kills the process the n-th time it reaches `faults.point("<point>")`, e.g.
`rl.step:4` or `checkpoint.write:2` (after the files of a checkpoint are written, before the rename
that publishes it). Unset, a point costs one comparison.
"""

from __future__ import annotations

import os
import signal

_target = os.environ.get("OVEROPT_KILL_AT", "")
_name, _, _count = _target.partition(":")
_remaining = int(_count or 1) if _target else 0


def point(name: str) -> None:
    global _remaining
    if _remaining and name == _name:
        _remaining -= 1
        if _remaining == 0:
            os.kill(os.getpid(), signal.SIGKILL)
