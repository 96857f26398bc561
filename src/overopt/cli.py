"""overopt: reproduce reward-model overoptimization and compare its mitigations.

`overopt run`, `overopt compare`, `overopt scaling`, `overopt report` and `overopt export` (tyro over the
pydantic config).

`overopt run` parses in two passes: the first finds --preset / --config, the second parses every
config field as an override on top of that preset (so `--help` shows the preset's values).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import re
import sys
from functools import partial
from pathlib import Path
from typing import Annotated, NoReturn

import tyro
import yaml
from pydantic import ValidationError
from safetensors import SafetensorError

from overopt import preempt
from overopt.config import ExperimentConfig, load_config
from overopt.errors import PREEMPTED_STATUS, NumericalFault, Preempted, StaleArtifactError, disk_full, validation_line
from overopt.progress import console


@dataclasses.dataclass(frozen=True)
class _RunSelector:
    preset: str = "default"
    config: Path | None = None
    testbed: str | None = None
    methods: str | None = None  # read first: a plugin part's knobs become --method_args.<part>.<knob> options


def run(argv: list[str]) -> dict:
    """Run the lab experiment: `overopt run [--preset NAME | --config FILE.yaml] [--field value ...]`."""
    from overopt.experiment import run_experiment

    selector, rest = _parse(_RunSelector, args=argv, add_help=False, return_unknown_args=True)
    base = load_config(selector.preset, selector.config, selector.testbed)
    if selector.methods is not None:
        base = ExperimentConfig.model_validate({**base.model_dump(), "methods": selector.methods})
    cfg = _overrides(
        base, rest, "overopt run", "Reproduce reward-model overoptimization end to end and compare methods."
    )
    if cfg.labs > 1:  # each lab's own summary.json; the report is the statistics over labs
        return _over_labs(cfg, partial(run_experiment, report=False), "run")
    return run_experiment(cfg)


def _overrides(base: ExperimentConfig, rest: list[str], prog: str, description: str) -> ExperimentConfig:
    """Every config field as an override of `base` (`--help` lists them with the preset's values)."""
    return _parse(
        ExperimentConfig, default=base, args=rest, prog=prog, description=description,
        config=(tyro.conf.FlagConversionOff,),
    )  # fmt: skip


@dataclasses.dataclass(frozen=True)
class _CompareSelector:
    preset: str = "default"
    config: Path | None = None
    testbed: str | None = None
    grid: Path | None = None
    """YAML file of strength grids (default: overopt/presets/frontier.yaml)."""
    quick: bool = False
    """Each method's published point and its strongest one only (the test suite runs this on smoke)."""
    grid_methods: str = ""
    """Comma-separated subset of the grid's methods (default: all the testbed can run)."""


def compare(argv: list[str]) -> dict:
    """Frontier comparison: `overopt compare [--preset NAME] [--grid FILE] [--jobs N] [--quick] [--field value ...]`.

    Every method of the grid over its strength knob × seeds, at `--threads` (default 1) torch threads per
    run whatever the number of jobs (default 0: usable cores ÷ threads), into one OUT with frontier_plan.json;
    the report adds frontier.json, the frontier plots and the matched-KL tables."""
    from overopt.compare import run_compare

    selector, rest = _parse(_CompareSelector, args=argv, add_help=False, return_unknown_args=True)
    base = load_config(selector.preset, selector.config, selector.testbed)
    out = Path("runs") / f"compare-{base.testbed}-{base.preset}"
    base = base.model_copy(update={"threads": 1, "jobs": 0, "out": out})
    cfg = _overrides(
        base, rest, "overopt compare",
        "Every method over a grid of its strength × seeds; frontiers and gold at matched KL. Besides the fields "
        "below: --grid FILE.yaml, --grid-methods a,b, --quick.",
    )  # fmt: skip
    if cfg.labs > 1:
        one = partial(run_compare, grid_file=selector.grid, quick=selector.quick, methods=selector.grid_methods,
                      report=False)  # fmt: skip
        return _over_labs(cfg, one, "compare")
    return run_compare(cfg, selector.grid, selector.quick, selector.grid_methods)


def _parse(cls, **kwargs):
    """tyro.cli, with its boxed error report turned into a ValueError with one line (help still prints)."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured), contextlib.redirect_stdout(captured):
            return tyro.cli(cls, **kwargs)
    except SystemExit as exit_:
        if exit_.code in (0, None):  # --help
            sys.stdout.write(captured.getvalue())
            raise
        raise ValueError(_tyro_error_line(captured.getvalue(), exit_.__context__)) from None


def _tyro_error_line(report: str, cause: BaseException | None) -> str:
    """The gist of tyro's error report: 'field: problem' for validation errors, else its first lines."""
    # tyro wraps a nested section's pydantic error (its __context__) and names the section in `arg`.
    validation = cause if isinstance(cause, ValidationError) else getattr(cause, "__context__", None)
    if isinstance(validation, ValidationError):
        section = getattr(cause, "arg", "") if cause is not validation else ""
        return validation_line(validation, section if isinstance(section, str) else "")
    lines = [re.sub(r"^[│╭╰\s]+|[│╮╯\s]+$", "", line) for line in report.splitlines()]
    lines = [line for line in lines if line.strip("─- ") and not line.startswith("For full helptext")]
    lines = lines[1:] if len(lines) > 1 else lines  # the first line is the box's title
    kept = []
    for line in lines[:2]:
        if line.startswith("Argument helptext"):
            break
        kept.append(line)
    return " ".join(kept) or "invalid command line"


@dataclasses.dataclass(frozen=True)
class _ScalingSelector:
    preset: str = "default"
    config: Path | None = None
    testbed: str | None = None
    grid: Path | None = None
    """YAML file of the axes (default: overopt/presets/scaling.yaml)."""
    quick: bool = False
    """The grid's `quick` entry: a smoke-sized grid (the test suite runs it on the smoke preset)."""


def scaling(argv: list[str]) -> dict:
    """Scaling laws: `overopt scaling [--preset NAME] [--grid FILE] [--quick] [--field value ...]`.

    One `overopt run` (default methods: bon,none) per cell of a grid over the proxy RM's size, its number of
    gold-labelled pairs and the policy's size, into OUT/cells/<cell>; then OUT/scaling.json, plots, scaling.html."""
    from overopt.scaling import run_scaling

    selector, rest = _parse(_ScalingSelector, args=argv, add_help=False, return_unknown_args=True)
    base = load_config(selector.preset, selector.config, selector.testbed)
    base = base.model_copy(
        update={"methods": "bon,none", "out": Path("runs") / f"scaling-{base.testbed}-{base.preset}"}
    )
    cfg = _overrides(
        base, rest, "overopt scaling",
        "Gao et al.'s functional forms per cell of a grid over RM size, RM data and policy size; their trends. "
        "Besides the fields below: --grid FILE.yaml, --quick.",
    )  # fmt: skip
    if cfg.labs > 1:
        return _over_labs(cfg, partial(run_scaling, grid_file=selector.grid, quick=selector.quick), "scaling")
    return run_scaling(cfg, selector.grid, selector.quick)


@dataclasses.dataclass(frozen=True)
class _ReportArgs:
    directory: Annotated[Path, tyro.conf.Positional]
    """Output directory of an `overopt run`."""


def report(argv: list[str]) -> dict:
    """Rebuild summary.json, plots and report.html from a run directory."""
    from overopt.report import build_report

    args = _parse(_ReportArgs, args=argv, prog="overopt report")
    return build_report(args.directory, console=console)


@dataclasses.dataclass(frozen=True)
class _ExportArgs:
    directory: Annotated[Path, tyro.conf.Positional]
    """Output directory of an `overopt run` (its gold-labelled pairs or PRM data)."""
    to: Path
    """Folder for the JSON Lines files in TRL's dataset formats (preference/, prompt_only/, stepwise/)."""


def export(argv: list[str]) -> dict:
    """Write a run's gold-labelled data in TRL's dataset formats (overopt.export)."""
    from overopt.export import export_lab

    args = _parse(_ExportArgs, args=argv, prog="overopt export")
    written = export_lab(args.directory, args.to)
    for path, rows in written.items():
        console.print(f"{args.to / path}: {rows} rows")
    return written


COMMANDS = {"run": run, "compare": compare, "scaling": scaling, "report": report, "export": export}
EXIT_STATUSES = f"""
exit status: 0 done; 2 bad input, a full disk, or OUT in use by another command; 3 numerical fault;
{PREEMPTED_STATUS} preempted by SIGTERM or SIGUSR1 (the running stage wrote its checkpoint: rerun the same command)"""


def _fail(message: str) -> NoReturn:
    """Bad input ends with one line on stderr and exit status 2 (--debug shows the traceback)."""
    print(f"overopt: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def main(argv: list[str] | None = None) -> None:
    # OpenMP threads (torch's CPU threads) that wait for work sleep at once instead of spinning for a few
    # ms: when other processes share the cores (--jobs, a second overopt, anything else), spinning threads
    # took turns with working ones and made RL updates many times slower (benchmarks/oversubscription.py).
    # Read when torch loads, so set before it does; a value the user set (even empty) is kept.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0] not in COMMANDS:
        usage = "\n\nusage: overopt {run,compare,scaling,report,export} [--help]"
        print(__doc__.strip().splitlines()[0], usage, file=sys.stderr)
        print(EXIT_STATUSES, file=sys.stderr)
        raise SystemExit(0 if argv[:1] in (["-h"], ["--help"]) else 2)
    try:
        # SIGTERM/SIGUSR1 while training: the running stage checkpoints, then the command stops (`report`
        # has nothing to checkpoint: the signals keep their usual effect there).
        with preempt.handling() if argv[0] not in ("report", "export") else contextlib.nullcontext():
            COMMANDS[argv[0]](argv[1:])
    except Preempted as err:
        print(f"overopt: preempted: {err}", file=sys.stderr)
        raise SystemExit(PREEMPTED_STATUS) from None
    except NumericalFault as err:
        if debug:
            raise
        print(f"overopt: numerical fault: {err}", file=sys.stderr)
        raise SystemExit(3) from None
    except (OSError, SafetensorError) as err:
        if debug:
            raise
        if disk_full(err):
            where = f" writing {err.filename}" if getattr(err, "filename", None) else ""
            _fail(f"no space left on the device{where}: free some space and rerun the same command to resume")
        _fail(" ".join(str(err).split()))
    except (ValueError, StaleArtifactError, ValidationError, yaml.YAMLError) as err:
        if debug:
            raise
        _fail(" ".join(str(err).split()) if not isinstance(err, ValidationError) else validation_line(err))


def _over_labs(cfg, one, kind: str) -> dict:
    """Run every lab replicate of `cfg` with `one`, then the statistics over labs (overopt.labs, report.labs)."""
    from overopt.labs import run_labs
    from overopt.report.labs import build_labs_report

    run_labs(cfg, one, kind)
    return build_labs_report(cfg.out, console=console)
