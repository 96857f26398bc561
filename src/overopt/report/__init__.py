"""Reports for a finished (or partial) ``overopt run`` output directory.

Reads ``OUT/`` only; writes ``OUT/summary.json``, ``OUT/plots/*.png`` and
``OUT/report.html`` (plus ``OUT/frontier.json`` when ``OUT/frontier_plan.json``
exists).  Never imports torch/transformers, so it can run on any
machine with the output directory.
"""

from __future__ import annotations

from pathlib import Path

from .summary import build_summary, hacking_check, load_runs, write_summary

__all__ = ["build_report", "build_summary", "hacking_check", "load_runs", "write_summary"]


def build_report(out_dir: str | Path, console=None) -> dict:
    """Load runs, write summary.json, plots and report.html, print the table.

    With ``OUT/frontier_plan.json`` present, also writes ``OUT/frontier.json``
    and the frontier plots, adds the "Frontier at matched KL" section to the
    page and prints one line about it.  The "Mechanisms" section appears when
    the runs logged ``mech/*`` keys.

    Returns the summary dict (see :func:`build_summary`).  Raises
    FileNotFoundError when OUT, OUT/runs or any metrics.jsonl is missing, and
    ValueError when all metrics files are empty or one has a malformed line.
    """
    # Imported lazily: matplotlib/rich are only needed when a report is built.
    from rich.console import Console

    from .early_warning import configured_rule, detector_scores, plot_early_warning
    from .frontier import PLAN_FILE, RESULT_FILE, plot_frontier, write_frontier
    from .html import write_report
    from .mechanisms import mechanism_verdicts, plot_mechanisms
    from .plots import plot_all
    from .table import print_summary_table

    out_dir = Path(out_dir)
    runs = load_runs(out_dir)
    summary = build_summary(out_dir, runs=runs)  # raises if there is nothing to report
    write_summary(out_dir, summary)
    plot_paths = plot_all(out_dir, runs, {m: entry.get("fit") for m, entry in summary["methods"].items()})
    frontier, frontier_plots = None, []
    if (out_dir / PLAN_FILE).is_file():
        frontier = write_frontier(out_dir, runs=runs)
        frontier_plots = plot_frontier(out_dir, frontier)
    mech_plots = plot_mechanisms(out_dir, runs)
    rule = configured_rule(summary.get("config") or {})
    scores = detector_scores(runs, rule)
    early = (rule, scores, plot_early_warning(out_dir, runs, rule, summary)) if scores else None
    write_report(out_dir, summary, plot_paths, frontier=frontier, frontier_plots=frontier_plots,
                 mechanisms=mechanism_verdicts(summary), mech_plots=mech_plots, early=early)  # fmt: skip
    console = console or Console()
    print_summary_table(summary, console=console)
    if frontier is not None:
        console.print(f"frontier: {len(frontier['methods'])} methods, KL budgets "
                      f"{', '.join(f'{b:g}' for b in frontier['budgets'])} -> {out_dir / RESULT_FILE}",
                      highlight=False)  # fmt: skip
    return summary
