"""Testbeds: tasks with a known gold reward (see base.Testbed), found through one registry.

The built-in testbeds register here exactly as a plugin is found (overopt.registry): by name, an
import path `module:Class`, or an `overopt.testbeds` entry point. A built-in's knobs are its section
of ExperimentConfig (`summarize`, `math`, `hf`); a plugin's are its own pydantic model (the class
attribute `Args`), given as `testbed_args`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from overopt.distributed import lab_device
from overopt.errors import validation_line
from overopt.registry import Registry, source_version
from overopt.testbeds.arithmetic import ArithmeticSpec, ArithmeticTestbed, JudgeTestbed
from overopt.testbeds.base import SFTExample, Testbed, check_testbed
from overopt.testbeds.process import ProcessSpec, ProcessTestbed
from overopt.testbeds.summarize import SummarizeSpec, SummarizeTestbed

if TYPE_CHECKING:
    from overopt.config import ExperimentConfig


@dataclasses.dataclass(frozen=True)
class TestbedEntry:
    """How the lab makes one testbed from a configuration."""

    name: str
    make: Callable[[ExperimentConfig], Testbed]
    section: str | None = None  # the ExperimentConfig section holding a built-in's knobs
    args: type[BaseModel] | None = None  # a plugin's knobs (`testbed_args`)
    presets: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)  # a plugin's preset overrides
    version: str = ""  # a plugin's code version (overopt.registry.source_version); "" for built-ins

    def knobs(self, cfg: ExperimentConfig) -> dict:
        """What the testbed's world is built from, as recorded in the stage fingerprints."""
        if not self.section:
            return dict(cfg.testbed_args)
        section = getattr(cfg, self.section)
        knobs = section.model_dump()
        # summarize's world at its old fixed seed (its default, config.DEFAULT_WORLD_SEED) is the world built
        # before the seed was a knob: left out, so that the stages built then stay valid.
        field = type(section).model_fields.get("world_seed")
        if field is not None and knobs.get("world_seed") == field.default:
            del knobs["world_seed"]
        return knobs

    def validate_args(self, given: Mapping[str, Any]) -> dict:
        """`testbed_args` checked against the plugin's model, with its defaults filled in."""
        if self.args is None:
            if given:
                where = f"its section {self.section!r}" if self.section else "no Args model"
                raise ValueError(f"testbed_args: testbed {self.name!r} takes no testbed_args ({where})")
            return {}
        try:
            return self.args.model_validate(dict(given)).model_dump(mode="json")
        except ValidationError as err:
            raise ValueError(validation_line(err, "testbed_args")) from None


def _plugin(name: str, obj: object) -> TestbedEntry:
    """A plugin class (or factory): called with its `Args` instance when it declares one, else with nothing."""
    if isinstance(obj, TestbedEntry):
        return obj
    if not callable(obj):
        raise ValueError(f"testbed {name!r}: expected a testbed class or factory, got {type(obj).__name__}")
    args = getattr(obj, "Args", None)
    if args is not None and not (isinstance(args, type) and issubclass(args, BaseModel)):
        raise ValueError(f"testbed {name!r}: its Args must be a pydantic BaseModel class")

    def make(cfg: ExperimentConfig) -> Testbed:
        return obj(args.model_validate(cfg.testbed_args)) if args is not None else obj()

    presets = getattr(obj, "presets", {}) or {}
    return TestbedEntry(name, make, args=args, presets=presets, version=source_version(obj))


TESTBEDS: Registry[TestbedEntry] = Registry("testbed", "overopt.testbeds", _plugin)


def _hf(cfg: ExperimentConfig) -> Testbed:
    from overopt.testbeds.hf import HFTestbed  # loads models and data: only when asked for

    return HFTestbed(cfg.hf, device=lab_device(cfg.device))


def _summarize(cfg: ExperimentConfig) -> Testbed:
    return SummarizeTestbed(SummarizeSpec(**cfg.summarize.model_dump()))


def _arithmetic(cls: type[ArithmeticTestbed]) -> Callable[[ExperimentConfig], Testbed]:
    return lambda cfg: cls(ArithmeticSpec(**cfg.math.model_dump()))


TESTBEDS.register("summarize", TestbedEntry("summarize", _summarize, section="summarize"))
TESTBEDS.register("math_format", TestbedEntry("math_format", _arithmetic(ArithmeticTestbed), section="math"))
TESTBEDS.register("judge", TestbedEntry("judge", _arithmetic(JudgeTestbed), section="math"))


def _process(cfg: ExperimentConfig) -> Testbed:
    return ProcessTestbed(ProcessSpec(**cfg.process.model_dump()))


TESTBEDS.register("process", TestbedEntry("process", _process, section="process"))
TESTBEDS.register("hf", TestbedEntry("hf", _hf, section="hf"))


def make_testbed(cfg: ExperimentConfig) -> Testbed:
    """The testbed named by `cfg.testbed`, built from its knobs and checked against the protocol."""
    entry = TESTBEDS.resolve(cfg.testbed)
    return check_testbed(entry.make(cfg), cfg.testbed, device=lab_device(cfg.device))


__all__ = [
    "TESTBEDS", "ArithmeticSpec", "ArithmeticTestbed", "JudgeTestbed", "ProcessSpec", "ProcessTestbed", "SFTExample",
    "SummarizeSpec",
    "SummarizeTestbed", "Testbed", "TestbedEntry", "make_testbed",
]  # fmt: skip
