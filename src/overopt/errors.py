"""Errors that mean "bad input": the CLI turns them into one line and exit status 2."""


class StaleArtifactError(RuntimeError):
    """An artifact in OUT was built from a different configuration."""
