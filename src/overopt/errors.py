"""Errors that mean "bad input": the CLI turns them into one line and exit status 2."""

from __future__ import annotations

import errno

from pydantic import ValidationError


class StaleArtifactError(RuntimeError):
    """An artifact in OUT was built from a different configuration."""


class NumericalFault(RuntimeError):
    """A NaN or Inf reached the rewards, the loss or the gradients; the update was not applied."""


class InUse(ValueError):
    """OUT, or one run in it, is held by another process (overopt.lock); the CLI refuses in one line."""


class Preempted(Exception):
    """SIGTERM or SIGUSR1 stopped the command at a step boundary, its checkpoint written (overopt.preempt).

    Not an error: the CLI says so in one line and exits with status 75 (PREEMPTED_STATUS); rerunning the
    same command resumes."""


PREEMPTED_STATUS = 75  # sysexits.h EX_TEMPFAIL: "temporary failure; the user is invited to retry"


def validation_line(err: ValidationError, section: str = "") -> str:
    """'section.field: problem' for the first error (a model-level check names its fields itself)."""
    first = err.errors()[0]
    field = ".".join(str(part) for part in (section, *first["loc"]) if part)
    message = first["msg"].removeprefix("Value error, ")
    return f"{field}: {message}" if field else message


def disk_full(err: BaseException) -> bool:
    """True for a write that failed for lack of space (safetensors reports it as 'os error 28' text)."""
    return getattr(err, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in str(err)
