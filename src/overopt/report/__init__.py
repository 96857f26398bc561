"""Reports for a finished (or partial) ``overopt run`` output directory.

Reads ``OUT/`` only; writes ``OUT/summary.json``, ``OUT/plots/*.png`` and
``OUT/report.html``.  Never imports torch/transformers, so it can run on any
machine with the output directory.
"""

from __future__ import annotations

from pathlib import Path

from .summary import build_summary, hacking_check, load_runs, write_summary

__all__ = ["build_report", "build_summary", "hacking_check", "load_runs", "write_summary"]


def build_report(out_dir: str | Path, console=None) -> dict:
    """Load runs, write summary.json, plots and report.html, print the table.

    Returns the summary dict (see :func:`build_summary`).  Raises
    FileNotFoundError when OUT, OUT/runs or any metrics.jsonl is missing, and
    ValueError when all metrics files are empty or one has a malformed line.
    """
    # Imported lazily: matplotlib/rich are only needed when a report is built.
    from .html import write_report
    from .plots import plot_all
    from .table import print_summary_table

    out_dir = Path(out_dir)
    runs = load_runs(out_dir)
    summary = build_summary(out_dir, runs=runs)  # raises if there is nothing to report
    write_summary(out_dir, summary)
    plot_paths = plot_all(out_dir, runs)
    write_report(out_dir, summary, plot_paths)
    print_summary_table(summary, console=console)
    return summary
