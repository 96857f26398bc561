"""benchmarks/RESULTS.md, the results the scripts in benchmarks/ write: each its own section between
``<!-- NAME:start -->`` and ``<!-- NAME:end -->`` (docs/hooks.py includes them in the docs), and the machine
they ran on."""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "RESULTS.md"  # the repository's, beside the scripts


def machine() -> str:
    """The machine a result was measured on: CPU cores, processor, OS, Python and torch versions."""
    import torch

    cpu = platform.processor() or platform.machine()
    versions = f"Python {platform.python_version()}, torch {torch.__version__}"
    return f"{os.cpu_count()} CPU cores ({cpu}), {platform.system()}, {versions}"


def section_head(title: str, command: str, after: str = "", machine_note: str = "") -> list[str]:
    """The first lines of a section: its heading, the command that wrote it (`after` follows it, e.g. the
    commands it ran), today's date, the machine (`machine_note` follows it, e.g. the usable cores) and a blank
    line."""
    return [f"## {title}", "", f"Command: `{command}`{after}  ", f"Date: {datetime.date.today().isoformat()}  ",
            f"Machine: {machine()}{machine_note}", ""]  # fmt: skip


def markdown_table(header: list[str], rows: list[str]) -> list[str]:
    """A markdown table's lines: the header cells, the rule, then the rows (already written as `| a | b |`)."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *rows]


def write_section(name: str, body: str, path: Path = RESULTS) -> None:
    """Replace the section between NAME's markers in RESULTS.md (append it if absent)."""
    text = (
        path.read_text()
        if path.exists()
        else "# Benchmark results\n\nEach section is written by the script it names.\n"
    )
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{body}\n{end}"
    if start in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)
