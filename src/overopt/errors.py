"""Errors that mean "bad input": the CLI turns them into one line and exit status 2."""


class StaleArtifactError(RuntimeError):
    """An artifact in OUT was built from a different configuration."""


class NumericalFault(RuntimeError):
    """A NaN or Inf reached the rewards, the loss or the gradients; the update was not applied."""
