"""`overopt run` and `overopt report` (tyro over the pydantic config).

`overopt run` parses in two passes: the first finds --preset / --config, the second parses every
config field as an override on top of that preset (so `--help` shows the preset's values).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Annotated

import tyro

from overopt.config import ExperimentConfig, load_config


@dataclasses.dataclass(frozen=True)
class _RunSelector:
    preset: str = "default"
    config: Path | None = None


def run(argv: list[str]) -> dict:
    """Run the lab experiment: `overopt run [--preset NAME | --config FILE.yaml] [--field value ...]`."""
    from overopt.pipeline import run_experiment

    selector, rest = tyro.cli(_RunSelector, args=argv, add_help=False, return_unknown_args=True)
    base = load_config(selector.preset, selector.config)
    cfg = tyro.cli(
        ExperimentConfig, default=base, args=rest, prog="overopt run",
        description="Reproduce reward-model overoptimization end to end and compare methods.",
        config=(tyro.conf.FlagConversionOff,),
    )
    return run_experiment(cfg)


@dataclasses.dataclass(frozen=True)
class _ReportArgs:
    directory: Annotated[Path, tyro.conf.Positional]
    """Output directory of an `overopt run`."""


def report(argv: list[str]) -> dict:
    """Rebuild summary.json, plots and report.html from a run directory."""
    from overopt.report import build_report

    args = tyro.cli(_ReportArgs, args=argv, prog="overopt report")
    return build_report(args.directory)


COMMANDS = {"run": run, "report": report}


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        tyro.extras.subcommand_cli_from_dict(
            {name: fn for name, fn in COMMANDS.items()}, args=argv or ["--help"], prog="overopt"
        )
        return
    COMMANDS[argv[0]](argv[1:])
