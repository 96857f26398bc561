"""Testbeds: tasks with a known gold reward (see base.Testbed)."""

from overopt.config import ExperimentConfig
from overopt.testbeds.arithmetic import ArithmeticSpec, ArithmeticTestbed, JudgeTestbed
from overopt.testbeds.base import SFTExample, Testbed
from overopt.testbeds.summarize import SummarizeSpec, SummarizeTestbed

# The config section that describes each testbed's world.
_SECTIONS = {"summarize": "summarize", "math_format": "math", "judge": "math", "hf": "hf"}


def testbed_section(name: str) -> str:
    return _SECTIONS[name]


def make_testbed(cfg: ExperimentConfig) -> Testbed:
    """The testbed named by `cfg.testbed`, configured from its section of the config."""
    if cfg.testbed == "summarize":
        return SummarizeTestbed(SummarizeSpec(**cfg.summarize.model_dump()))
    if cfg.testbed in ("math_format", "judge"):
        cls = ArithmeticTestbed if cfg.testbed == "math_format" else JudgeTestbed
        return cls(ArithmeticSpec(**cfg.math.model_dump()))
    if cfg.testbed == "hf":
        from overopt.testbeds.hf import HFTestbed  # loads models and data: only when asked for

        return HFTestbed(cfg.hf)
    raise ValueError(f"unknown testbed {cfg.testbed!r}")


__all__ = [
    "ArithmeticSpec", "ArithmeticTestbed", "JudgeTestbed", "SFTExample", "SummarizeSpec",
    "SummarizeTestbed", "Testbed", "make_testbed", "testbed_section",
]  # fmt: skip
