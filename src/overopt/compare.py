"""`overopt compare`: every mitigation over a grid of its strength knob × seeds, compared at matched KL.

A knob copied from a paper is not a strength (docs/results/mitigations.md), so each method runs at several
strengths, from off (`none`) to dominant, each measured by the method's effective-strength figure.
The grids are `presets/frontier.yaml` (or `--grid FILE`). One output directory holds every run
(`runs/<method>@<field>=<value>/seed<k>`) and `frontier_plan.json`; the report then adds the
frontier analysis (overopt.report.frontier): gold-vs-KL frontiers with t-interval bands, gold at
matched KL budgets against `kl` and against `none` stopped early, the best point of each method
chosen leave-one-seed-out, and which methods move the frontier up.

Runs go to `--jobs` processes (default: one per usable core) or to a cluster (`--launcher submitit`),
through overopt.launch as in `overopt run`. Each run uses `--threads` torch threads (default 1 here)
whatever the number of jobs, and its randomness depends only on its own seed, so the results do not
depend on how many run at once (tests/test_compare.py checks this). The shared stages (SFT, labelled
data, proxy RMs and ensemble members) are trained first, in this process. Re-running into the same
OUT reuses finished runs; adding seeds runs only the new ones.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from overopt import launch
from overopt.config import PRESET_DIR, ExperimentConfig, read_yaml
from overopt.io import atomic_write_text
from overopt.lock import out_lock
from overopt.progress import console

GRID_FILE = PRESET_DIR / "frontier.yaml"
PLAN_FILE = "frontier_plan.json"  # read by overopt.report.frontier
TIMING_FILE = "compare_timing.json"  # every invocation: runs in the plan, runs it ran, jobs, wall time


@dataclasses.dataclass(frozen=True)
class Point:
    """One grid point: `method` with `field` set to `value` (`field` None: the method as configured).

    `label` is the grid's key: the method, or the method with fields pinned for all its points
    (`signcert+kl@signcert.weighting=shrink_clip`), which `pinned` holds as (field, value) pairs."""

    method: str
    field: str | None
    value: Any
    published: bool
    label: str = ""
    pinned: tuple[tuple[str, str], ...] = ()

    @property
    def run(self) -> str:
        label = self.label or self.method
        return label if self.field is None else f"{label}@{self.field}={self.value}"


def _grid_key(path: Path, key: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """A grid key `method[@field=value...]` as the method and its pinned fields."""
    method, *pins = key.split("@")
    pinned = []
    for pin in pins:
        field, sep, value = pin.partition("=")
        if not sep or not field or not value:
            raise ValueError(f"{path}: methods.{key}: pin fields as method@field=value, got {pin!r}")
        pinned.append((field, value))
    return method, tuple(pinned)


def load_grid(path: Path | None = None) -> tuple[dict[str, list[Point]], list[float]]:
    """The grid file as {method: points} and the KL budgets; malformed entries raise ValueError naming them."""
    path = GRID_FILE if path is None else Path(path)
    data = read_yaml(path)
    budgets = data.get("budgets", [1, 2, 4, 8])
    if not isinstance(budgets, list) or not budgets or not all(isinstance(b, (int, float)) and b > 0 for b in budgets):
        raise ValueError(f"{path}: budgets must be a list of positive numbers (KL in nats)")
    methods = data.get("methods")
    if not isinstance(methods, dict) or not methods:
        raise ValueError(f"{path}: expected a 'methods' mapping of method -> grid axes")
    grid: dict[str, list[Point]] = {}
    for key, axes in methods.items():
        method, pinned = _grid_key(path, key)
        axes = [] if axes in (None, [], {}) else axes
        axes = [axes] if isinstance(axes, dict) else axes
        if not isinstance(axes, list):
            raise ValueError(f"{path}: methods.{method}: expected an axis {{field, values, published}} or a list")
        points = []
        for axis in axes:
            if not isinstance(axis, dict) or set(axis) - {"field", "values", "published"} or "field" not in axis:
                raise ValueError(f"{path}: methods.{method}: each axis is {{field, values, published}}, got {axis!r}")
            values = axis.get("values")
            if not isinstance(values, list) or not values:
                raise ValueError(f"{path}: methods.{method}: axis {axis['field']!r} needs a non-empty list of values")
            points += [Point(method, axis["field"], v, v == axis.get("published"), key, pinned) for v in values]
        grid[key] = points or [Point(method, None, None, True, key, pinned)]
    return grid, [float(b) for b in budgets]


def quick_grid(grid: dict[str, list[Point]]) -> dict[str, list[Point]]:
    """`--quick`: each method's published point and its last (strongest) one."""
    return {m: list(dict.fromkeys([*(p for p in pts if p.published), pts[-1]])) for m, pts in grid.items()}


def variants(cfg: ExperimentConfig, grid: dict[str, list[Point]]) -> list[tuple[str, str, ExperimentConfig]]:
    """(run name, method, configuration) for every grid point; bad fields raise ValueError naming them."""
    out = []
    for points in grid.values():
        for p in points:
            variant = cfg
            for field, value in p.pinned + (((p.field, p.value),) if p.field is not None else ()):
                variant = variant.with_override(field, value, what=f"grid field of {p.label or p.method}")
            out.append((p.run, p.method, variant))
    return out


def frontier_plan(cfg: ExperimentConfig, grid: dict[str, list[Point]], budgets: list[float], plans) -> dict:
    """`OUT/frontier_plan.json`: what overopt.report.frontier reads (see its module docstring)."""
    methods = {
        m: {
            "method": points[0].method,
            "strength_key": plans[points[0].run][0].strength_key,
            "points": [{"run": p.run, "field": p.field, "value": p.value, "published": p.published} for p in points],
        }
        for m, points in grid.items()
    }
    baselines = {name: name for name in ("none", "kl") if name in methods}
    return {
        "testbed": cfg.testbed, "preset": cfg.preset, "seeds": list(range(cfg.seeds)), "budgets": budgets,
        "baselines": baselines, "methods": methods,
    }  # fmt: skip


def run_compare(
    cfg: ExperimentConfig,
    grid_file: Path | None = None,
    quick: bool = False,
    methods: str = "",
    report: bool = True,
) -> dict:
    """Run (or resume) the frontier comparison into cfg.out and build its report (without `report`: only
    summary.json; `overopt report OUT` builds the rest); returns the summary."""
    from overopt.methods import resolve_method
    from overopt.pipeline import open_testbed, resolve_plans

    grid, budgets = load_grid(grid_file)
    if methods:
        wanted = [m.strip() for m in methods.split(",") if m.strip()]
        unknown = [m for m in wanted if m not in grid]
        if unknown:
            where = grid_file or GRID_FILE
            raise ValueError(f"compare: {unknown[0]!r} has no grid in {where}; grids: {', '.join(grid)}")
        grid = {m: grid[m] for m in wanted}
    if quick:
        grid = quick_grid(grid)
    # The shared stages use every core, as in `overopt run` (so they are the same artifacts); each run
    # then uses cfg.threads threads, whatever the number of jobs.
    testbed = open_testbed(cfg.model_copy(update={"threads": 0}), {})
    for m in list(grid):  # methods this testbed's proxy cannot run are left out, not an error
        try:
            resolve_method(grid[m][0].method, cfg.rl).check_proxy(testbed.proxy, testbed.name)
        except ValueError as err:
            console.print(f"[dim]compare: left out {m}: {err}[/dim]")
            del grid[m]
    cfg = cfg.model_copy(update={"methods": ",".join(dict.fromkeys(p[0].method for p in grid.values())), "sweep": ""})
    named = variants(cfg, grid)
    plans = resolve_plans(cfg, named)
    with out_lock(cfg.out):  # OUT is this command's (overopt.lock); its workers only read the stages
        return _run_grid(cfg, testbed, grid, budgets, named, plans, report)


def _run_grid(cfg: ExperimentConfig, testbed, grid, budgets, named, plans, report: bool = True) -> dict:
    """The comparison with OUT held: the shared stages, the plan, every run not finished yet, the report."""
    from overopt.experiment import finish
    from overopt.pipeline import build_lab, jobs

    with testbed.precision():
        lab = build_lab(cfg, testbed, plans)
        launch.train_shared(lab, plans)  # ensemble members here, not in several jobs at once
    out = Path(cfg.out)
    atomic_write_text(out / PLAN_FILE, json.dumps(frontier_plan(cfg, grid, budgets, plans), indent=2) + "\n")
    done = launch.run_jobs(lab, plans, named, jobs(cfg, plans), testbed.precision)
    launch.log_invocation(out / TIMING_FILE, **done)
    console.print(f"compare: {done['ran']} of {done['runs']} runs in {done['wall_s']:.0f} s, {done['jobs']} at once")
    return finish(cfg, report)
