"""The conclusions over independent labs (README "Conclusions, and whether they survive replication"): each
study is one `overopt run | compare | scaling --labs N` command; this script runs it (resuming what exists),
times it, and writes its OUT/labs.md into benchmarks/RESULTS.md as the study's section, with the command,
date, machine and wall time.

    python experiments/over_labs.py --list                             # the studies, commands, minutes
    python experiments/over_labs.py labs-frontier-par-uwo              # run one, write its section
    python experiments/over_labs.py labs-frontier-par-uwo --score-only # rewrite it from OUT as it is

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
    command: str  # the overopt command after `overopt`, --out included
    note: str  # what the section says before the tables: what each lab redraws, what the study leaves fixed
    minutes: int  # about, on 2 CPU cores, from nothing

    @property
    def argv(self) -> list[str]:
        return shlex.split(self.command)

    @property
    def out(self) -> Path:
        return ROOT / self.argv[self.argv.index("--out") + 1]


STUDIES = {
    "labs-default": Study(
        "The default preset over 5 labs: `overopt run --labs 5`",
        "run --labs 5 --out runs/labs-default --threads 1",
        "Each lab draws its own world (summarize.world_seed 1234 + i), SFT corpus and policy, pairs and proxy RM "
        "from seed i; 3 RL seeds per lab.",
        20,
    ),
    "labs-default-rerun": Study(
        "The default preset's 5 labs again, on the machine at hand: `overopt run --labs 5`",
        "run --labs 5 --out runs/labs-default-2 --threads 1 --jobs 2",
        "The labs of `labs-default` (same seeds and world seeds) re-run where this script runs: on the same machine "
        "and versions it repeats that table (runs are bit-for-bit repeatable there); on another CPU it measures "
        "how far the over-labs figures move.",
        10,
    ),
    "labs-math_format": Study(
        "`math_format` over 5 labs: `overopt run --testbed math_format --labs 5 --methods none`",
        "run --testbed math_format --labs 5 --methods none --out runs/labs-math_format",
        "The testbed has a fixed world: a lab redraws the SFT corpus, the SFT policy and the RL seeds (the rule "
        "reward has nothing to train).",
        35,
    ),
    "labs-judge": Study(
        "`judge` over 5 labs: `overopt run --testbed judge --labs 5 --methods none`",
        "run --testbed judge --labs 5 --methods none --out runs/labs-judge",
        "The testbed has a fixed world: a lab redraws the SFT corpus and policy, the judge's labelled answers, its "
        "init and data order, and the RL seeds.",
        17,
    ),
    "labs-process": Study(
        "`process` over 5 labs: `overopt run --testbed process --labs 5 --methods none` (sum of step rewards)",
        "run --testbed process --labs 5 --methods none --out runs/labs-process",
        "The default return (`rl.aggregation sum`). The testbed has a fixed world: a lab redraws the SFT corpus "
        "and policy, the PRM's labelled solutions, init and data order, and the RL seeds.",
        18,
    ),
    "labs-process-min": Study(
        "`process` over 5 labs with the min return: `--rl.aggregation min --rl.min_temperature 0`",
        "run --testbed process --labs 5 --methods none --rl.aggregation min --rl.min_temperature 0 --out "
        "runs/labs-process-min",
        "The labs of `labs-process` with RRA's exact min of the step rewards (copy their stages in to reuse them: "
        'only the return differs). The validity line applies the bar to a mitigation, so "NOT valid" here means '
        "the min return is not hacked.",
        18,
    ),
    "labs-frontier-summarize": Study(
        "The `summarize` frontier over 5 labs: `none`, `kl`, `chi2`, `signcert+kl`",
        "compare --labs 5 --seeds 2 --grid-methods none,kl,chi2,signcert+kl --out runs/frontier-labs5 --jobs 2",
        "Each lab draws its world (summarize.world_seed 1234 + i), SFT corpus and policy, pairs and proxy RM from "
        "seed i; 2 RL seeds per lab; 16 points of the frontier grid (labs-frontier-full runs all 37).",
        35,
    ),
    "labs-frontier-judge": Study(
        "The `judge` frontier over 3 labs: `none`, `kl`, `chi2`",
        "compare --testbed judge --labs 3 --seeds 2 --grid-methods none,kl,chi2 --out runs/frontier-judge-labs3 "
        "--jobs 2",
        "The testbed has a fixed world: each lab redraws the SFT corpus and policy, the judge's labelled answers, "
        "its init and data order, from seed i; 2 RL seeds per lab.",
        24,
    ),
    "labs-frontier-math_format": Study(
        "The `math_format` frontier over 3 labs: `none`, `kl`, `chi2`",
        "compare --testbed math_format --labs 3 --seeds 2 --grid benchmarks/grids/frontier-labs-small.yaml --out "
        "runs/frontier-math_format-labs3 --jobs 2",
        "The testbed has a fixed world (a rule proxy: nothing to train): each lab redraws the SFT corpus and "
        "policy from seed i; 2 RL seeds per lab.",
        25,
    ),
    "labs-scaling-bon": Study(
        "Best-of-n scaling over 3 labs: RM size and pairs",
        "scaling --labs 3 --methods bon --grid benchmarks/grids/scaling-labs.yaml --out runs/scaling-bon-labs3 --jobs "
        "2",
        "Each lab redraws every cell's RM (and world, SFT, pairs) from seed i; best-of-n, 3 seeds.",
        30,
    ),
    "labs-frontier-par-uwo": Study(
        "The `summarize` frontier over 3 labs: PAR and the UWO ensemble against `kl`",
        "compare --labs 3 --seeds 2 --grid benchmarks/grids/frontier-labs-par-uwo.yaml --out "
        "runs/frontier-labs-paruwo --jobs 2",
        "Each lab redraws the world, SFT policy, pairs, proxy RM and the ensemble's members from seed i; 2 RL "
        "seeds per grid point.",
        18,
    ),
    "labs-frontier-full": Study(
        "The full `summarize` frontier over 5 labs: every method of src/overopt/presets/frontier.yaml",
        "compare --labs 5 --seeds 2 --out runs/frontier-labs5-full --jobs 2",
        "Each lab redraws the world, SFT policy, pairs, proxy RM and the ensemble's members from seed i; 2 RL "
        "seeds per grid point, 37 points.",
        75,
    ),
    "labs-frontier-full-1seed": Study(
        "The full `summarize` frontier over 5 labs, one RL seed each: every method of "
        "src/overopt/presets/frontier.yaml",
        "compare --labs 5 --seeds 1 --out runs/frontier-labs5-s1 --jobs 2",
        "Each lab redraws the world, SFT policy, pairs, proxy RM and the ensemble's members from seed i; one RL "
        "seed per grid point, 37 points, from nothing (issue 28's 5-lab frontier). With one seed a lab cannot "
        "choose its own point out of sample: the point at each KL budget is chosen on the other labs "
        "(leave-one-lab-out).",
        45,
    ),
    "labs-scaling-rl": Study(
        "RL and best-of-n scaling over 3 labs: RM size, pairs and policy size",
        "scaling --labs 3 --seeds 2 --methods bon,none --grid benchmarks/grids/scaling-labs-rl.yaml --out "
        "runs/scaling-rl-labs3 --jobs 2",
        "Each lab redraws every cell's RM (and world, SFT policies, pairs) from seed i; `none` (RL, 200 updates) "
        "and best-of-n, 2 seeds per cell.",
        30,
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
    head = section_head(study.title, command, f" (runs `overopt {study.command}`)")
    timing = f" {wall_min:.1f} min on this machine." if wall_min is not None else ""
    body = (study.out / "labs.md").read_text().split("\n", 2)[2]  # without its own `# Over labs` title
    return "\n".join([*head, study.note + timing + (f" {note}" if note else ""), "", body.rstrip()])


def main(args: Args) -> None:
    if args.list or not args.study:
        for name, s in STUDIES.items():
            print(f"{name} (about {s.minutes} min on 2 cores): overopt {s.command}")
        return
    if args.study not in STUDIES:
        raise SystemExit(f"over_labs: no study {args.study!r}; studies: {', '.join(STUDIES)}")
    study, wall_min = STUDIES[args.study], args.wall_min
    if not args.score_only:
        start = time.perf_counter()
        overopt(study.argv)
        wall_min = (time.perf_counter() - start) / 60
    else:
        build_labs_report(study.out)
    write_section(args.study, section(args.study, study, wall_min, args.note))
    print(f"over_labs: wrote section {args.study} of benchmarks/RESULTS.md")


if __name__ == "__main__":
    main(tyro.cli(Args))
