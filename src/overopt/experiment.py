"""`overopt run` end to end: the shared stages (overopt.pipeline), every method × seed (overopt.launch), then the
report. It imports the pipeline and the launcher; neither imports it (the launcher's workers call the pipeline).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from overopt import distributed, launch
from overopt.config import ExperimentConfig
from overopt.lock import out_lock
from overopt.pipeline import build_lab, jobs, open_testbed, resolve_plans
from overopt.progress import console

RUN_TIMING_FILE = "run_timing.json"  # every invocation: runs, runs it ran, jobs, threads per run, wall time of the runs


def run_experiment(
    cfg: ExperimentConfig, variants: list[tuple[str, str, ExperimentConfig]] | None = None, report: bool = True
) -> dict:
    """Run (or resume) every stage and every method × seed, then build the report (without `report`: only
    summary.json; overopt.scaling's cells, whose report is the grid's).

    `variants` (run name, method, configuration) replaces `cfg.method_variants()` (the frontier
    comparison of overopt.compare runs each method over its own grid)."""
    named = cfg.method_variants() if variants is None else variants
    plans = resolve_plans(cfg, named)  # bad method names and sweeps fail here, before anything is written
    testbed = open_testbed(cfg, plans)
    # OUT is this command's from here on (overopt.lock): a second command into it is refused, writing nothing.
    with out_lock(cfg.out):
        with testbed.precision():  # hf: bfloat16 autocast if asked for
            lab = build_lab(cfg, testbed, plans)
            launch.train_shared(lab, plans)  # every stage is finished before any run starts (--jobs, --launcher)
        done = launch.run_jobs(lab, plans, named, jobs(cfg, plans), testbed.precision)
        if distributed.is_main():
            launch.log_invocation(Path(cfg.out) / RUN_TIMING_FILE, **done)
        return finish(cfg, report)


def finish(cfg: ExperimentConfig, report: bool = True) -> dict:
    """Every stage and run is done: drop the checkpoints, build the report (main process only); without
    `report`, only summary.json (`overopt report OUT` builds the rest later)."""
    from overopt.report import build_report, write_summary  # the report reads outputs only; imported at the end

    if not distributed.is_main():
        return {}
    out = Path(cfg.out)
    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    if not report:
        write_summary(out)
        return {}
    return build_report(out, console=console)
