"""Testbeds: tasks with a known gold reward (see base.Testbed)."""

from overopt.config import ExperimentConfig
from overopt.testbeds.base import SFTExample, Testbed
from overopt.testbeds.summarize import SummarizeSpec, SummarizeTestbed


def make_testbed(cfg: ExperimentConfig) -> Testbed:
    """The testbed named by `cfg.testbed`, configured from its section of the config."""
    if cfg.testbed == "summarize":
        return SummarizeTestbed(SummarizeSpec(**cfg.summarize.model_dump()))
    raise ValueError(f"unknown testbed {cfg.testbed!r}")


__all__ = ["SFTExample", "SummarizeSpec", "SummarizeTestbed", "Testbed", "make_testbed"]
