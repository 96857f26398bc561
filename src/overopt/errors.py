"""Errors that mean "bad input": the CLI turns them into one line and exit status 2."""

from __future__ import annotations

import errno

from pydantic import ValidationError


class StaleArtifactError(RuntimeError):
    """An artifact in OUT was built from a different configuration."""


class NumericalFault(RuntimeError):
    """A NaN or Inf reached the rewards, the loss or the gradients; the update was not applied."""


def validation_line(err: ValidationError, section: str = "") -> str:
    """'section.field: problem' for the first error (the section alone for a model-level check)."""
    first = err.errors()[0]
    field = ".".join(str(part) for part in (section, *first["loc"]) if part) or "config"
    return f"{field}: {first['msg'].removeprefix('Value error, ')}"


def disk_full(err: BaseException) -> bool:
    """True for a write that failed for lack of space (safetensors reports it as 'os error 28' text)."""
    return getattr(err, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in str(err)
