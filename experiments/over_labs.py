"""The conclusions over independent labs (README "Conclusions, and whether they survive replication"): each
study is one `overopt run | compare | scaling --labs N` command; this script runs it (resuming what exists),
times it, and writes its OUT/labs.md into benchmarks/RESULTS.md as the study's section, with the command,
date, machine and wall time.

    python experiments/over_labs.py --list                        # the studies, their commands
    python experiments/over_labs.py frontier-par-uwo              # run one (each prints its time below)
    python experiments/over_labs.py frontier-par-uwo --score-only # rewrite its section from OUT as it is

The unit of every interval is the lab (overopt.report.labs); the studies' grids are in benchmarks/grids/.
"""

from __future__ import annotations

import dataclasses
import shlex
import time
from pathlib import Path
from typing import Annotated

import tyro

from overopt.cli import main as overopt
from overopt.report.labs import build_labs_report
from overopt.results import section_head, write_section

ROOT = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Study:
    title: str
    argv: tuple[str, ...]  # the overopt command after `overopt`, --out included
    note: str  # what the section says before the tables: what each lab redraws, what the study leaves fixed
    minutes: int  # about, on 2 CPU cores, from nothing

    @property
    def out(self) -> Path:
        return ROOT / self.argv[self.argv.index("--out") + 1]


GRIDS = "benchmarks/grids"
STUDIES = {
    "labs-frontier-par-uwo": Study(
        "The `summarize` frontier over 3 labs: PAR and the UWO ensemble against `kl`",
        (
            "compare",
            "--labs",
            "3",
            "--seeds",
            "2",
            "--grid",
            f"{GRIDS}/frontier-labs-par-uwo.yaml",
            "--out",
            "runs/frontier-labs-paruwo",
            "--jobs",
            "2",
        ),  # fmt: skip
        "Each lab redraws the world, SFT policy, pairs, proxy RM and the ensemble's members from seed i; 2 RL "
        "seeds per grid point.",
        75,
    ),
    "labs-frontier-full": Study(
        "The full `summarize` frontier over 5 labs: every method of src/overopt/presets/frontier.yaml",
        ("compare", "--labs", "5", "--seeds", "2", "--out", "runs/frontier-labs5-full", "--jobs", "2"),
        "Each lab redraws the world, SFT policy, pairs, proxy RM and the ensemble's members from seed i; 2 RL "
        "seeds per grid point, 37 points.",
        90,
    ),
    "labs-scaling-rl": Study(
        "RL and best-of-n scaling over 3 labs: RM size, pairs and policy size",
        (
            "scaling",
            "--labs",
            "3",
            "--seeds",
            "2",
            "--methods",
            "bon,none",
            "--grid",
            f"{GRIDS}/scaling-labs-rl.yaml",
            "--out",
            "runs/scaling-rl-labs3",
            "--jobs",
            "2",
        ),  # fmt: skip
        "Each lab redraws every cell's RM (and world, SFT policies, pairs) from seed i; `none` (RL, 200 updates) "
        "and best-of-n, 2 seeds per cell.",
        60,
    ),
}


@dataclasses.dataclass
class Args:
    study: Annotated[str, tyro.conf.Positional] = ""
    """A study's name (--list shows them)."""
    list: bool = False
    """Print the studies and their commands."""
    score_only: bool = False
    """Rewrite the section from the study's OUT without running anything."""
    wall_min: float | None = None
    """With --score-only: the wall time of the run that made OUT, when measured outside this script."""
    note: str = ""
    """Said after the study's own note: what this run reused, or how it differs from the study's command."""


def section(name: str, study: Study, wall_min: float | None, note: str = "") -> str:
    command = f"python experiments/over_labs.py {name}"
    head = section_head(study.title, command, f" (runs `overopt {shlex.join(study.argv)}`)")
    timing = f" {wall_min:.1f} min on this machine." if wall_min is not None else ""
    body = (study.out / "labs.md").read_text().split("\n", 2)[2]  # without its own `# Over labs` title
    return "\n".join([*head, study.note + timing + (f" {note}" if note else ""), "", body.rstrip()])


def main(args: Args) -> None:
    if args.list or not args.study:
        for name, s in STUDIES.items():
            print(f"{name} (about {s.minutes} min on 2 cores): overopt {shlex.join(s.argv)}")
        return
    if args.study not in STUDIES:
        raise SystemExit(f"over_labs: no study {args.study!r}; studies: {', '.join(STUDIES)}")
    study, wall_min = STUDIES[args.study], args.wall_min
    if not args.score_only:
        start = time.perf_counter()
        overopt(list(study.argv))
        wall_min = (time.perf_counter() - start) / 60
    else:
        build_labs_report(study.out)
    write_section(args.study, section(args.study, study, wall_min, args.note))
    print(f"over_labs: wrote section {args.study} of benchmarks/RESULTS.md")


if __name__ == "__main__":
    main(tyro.cli(Args))
