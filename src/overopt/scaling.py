"""`overopt scaling`: how overoptimization's functional forms move with the proxy RM's size, its data and the
policy's size (Gao, Schulman & Hilton, arXiv 2210.10760, Fig. 1–3 analogues), on the lab's own models.

The grid (presets/scaling.yaml, or `--grid FILE`) varies one axis at a time around the preset's sizes:
- RM size: the proxy RM starts from an SFT model of that size (rm.hidden_size/num_layers/num_heads), trained on
  the same demonstrations, as Gao et al. start each RM from a pretrained model of its size; a resized head on
  the policy's backbone would vary nothing but the head. The policy stays the preset's;
- RM data: the number of gold-labelled pairs (pairs.n_prompts), at the preset's RM size;
- policy size: the policy (model.*), with the RM at the preset's size, trained on pairs sampled from that policy.
Each cell is an `overopt run` of best-of-n and one RL method (default `bon,none`: RLOO with no KL) in
OUT/cells/<cell>/, whose summary.json holds each method's fit (its plots and page: `overopt report <cell dir>`).
A cell reuses any finished stage of another cell
built from the same configuration (the same fingerprint), so the preset's SFT policy is trained once.
OUT/scaling_plan.json lists the cells; the analysis (overopt.report.scaling) writes OUT/scaling.json, the plots
and OUT/scaling.html. Rerunning the same command resumes: finished cells and runs are reused.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from overopt.config import PRESET_DIR, ExperimentConfig, ModelConfig, read_yaml
from overopt.io import atomic_write_text, read_json
from overopt.lock import out_lock
from overopt.progress import console
from overopt.report.scaling import PLAN_FILE, build_scaling

GRID_FILE = PRESET_DIR / "scaling.yaml"
AXES = ("rm_size", "pairs", "policy_size")


def load_grid(path: Path | None, quick: bool) -> dict[str, list]:
    """The grid's three axes (its `quick` entry with `quick`); malformed entries raise ValueError naming them."""
    path = GRID_FILE if path is None else Path(path)
    entry = read_yaml(path).get("quick" if quick else "default")
    if not isinstance(entry, dict):
        raise ValueError(
            f"{path}: expected a {'quick' if quick else 'default'!r} mapping of rm_sizes, pairs, policy_sizes"
        )
    grid = {}
    for axis, key in zip(AXES, ("rm_sizes", "pairs", "policy_sizes")):
        values = entry.get(key)
        if not isinstance(values, list) or not values:
            raise ValueError(f"{path}: {key}: expected a non-empty list")
        if axis == "pairs":
            if not all(isinstance(v, int) and v > 0 for v in values):
                raise ValueError(f"{path}: pairs: expected positive integers, got {values!r}")
        else:
            for v in values:
                if not (isinstance(v, list) and len(v) == 3 and all(isinstance(x, int) and x > 0 for x in v)):
                    raise ValueError(f"{path}: {key}: each size is [hidden_size, num_layers, num_heads], got {v!r}")
        grid[axis] = values
    return grid


def cells(base: ExperimentConfig, grid: dict[str, list]) -> dict[str, tuple[str, object, ExperimentConfig]]:
    """{cell name: (axis, value, configuration)}: the preset's own cell ("base"), then every other value of each
    axis. Every axis must contain the preset's value (the cell the axes share)."""
    here = {"rm_size": _size(base.model), "pairs": base.pairs.n_prompts, "policy_size": _size(base.model)}
    for axis, values in grid.items():
        if here[axis] not in [v if axis == "pairs" else list(v) for v in values]:
            raise ValueError(f"scaling: the {axis} axis {values} must contain the preset's value {here[axis]}")
    out = {"base": ("base", here, base)}
    rm_centre = {f: getattr(base.model, f) for f in ModelConfig.model_fields}
    for axis in AXES:
        for value in grid[axis]:
            if value == here[axis]:
                continue
            if axis == "rm_size":
                name, update = "rm_{}x{}x{}".format(*value), {"rm": dict(zip(rm_centre, value))}
            elif axis == "pairs":
                name, update = f"pairs_{value}", {"pairs": {"n_prompts": value}}
            else:  # the policy changes, the RM keeps the preset's size
                name, update = "policy_{}x{}x{}".format(*value), {"model": dict(zip(rm_centre, value)), "rm": rm_centre}
            data = base.model_dump()
            for section, fields in update.items():
                data[section] = {**data[section], **fields}
            out[name] = (axis, value, ExperimentConfig.model_validate(data))
    return out


def _size(model: ModelConfig) -> list[int]:
    return [model.hidden_size, model.num_layers, model.num_heads]


def run_scaling(base: ExperimentConfig, grid_file: Path | None = None, quick: bool = False) -> dict:
    """Run (or resume) every cell of the grid into base.out, then write scaling.json, plots and scaling.html."""
    from overopt.experiment import run_experiment
    from overopt.pipeline import quiet_libraries
    from overopt.testbeds import make_testbed

    grid = load_grid(grid_file, quick)
    quiet_libraries()
    testbed = make_testbed(base)
    if testbed.proxy != "preference" or testbed.policy_path is not None:
        raise ValueError(f"scaling: testbed {base.testbed!r} has no Bradley-Terry RM and policy of the lab's own to "
                         "size; use summarize, or a plugin testbed with a preference proxy")  # fmt: skip
    out = Path(base.out)
    grid_cells = cells(base, grid)
    with out_lock(out):
        plan = {"preset": base.preset, "testbed": base.testbed, "methods": base.method_list, "seeds": base.seeds,
                "quick": quick, "cells": {}}  # fmt: skip
        for i, (name, (axis, value, cfg)) in enumerate(grid_cells.items(), 1):
            console.rule(f"scaling cell {i}/{len(grid_cells)}: {name}")
            cell_out = out / "cells" / name
            cfg = cfg.model_copy(update={"out": cell_out})
            _reuse_stages(out / "cells", cell_out, cfg)
            run_experiment(cfg, report=False)  # each cell's summary.json; its report: `overopt report <cell>`
            plan["cells"][name] = {"axis": axis, "value": value, "out": str(cell_out.relative_to(out))}
            atomic_write_text(out / PLAN_FILE, json.dumps(plan, indent=2) + "\n")  # partial grids are reported too
        return build_scaling(out, console=console)


def _reuse_stages(cells_dir: Path, cell_out: Path, cfg: ExperimentConfig) -> None:
    """Hard-link (or copy) into this cell every stage it needs that another cell already built from the same
    configuration. A stage is the same when its fingerprint is (overopt.pipeline), whatever it is called there:
    the preset's SFT policy is also a policy-size cell's RM backbone."""
    from overopt.pipeline import own_rm_backbone, stage_fingerprints  # what a cell's stages are checked against

    fps = stage_fingerprints(cfg, "preference")
    wanted = {"sft": fps["sft"], "pairs": fps["data"], "rm": fps["rm"]}
    if own_rm_backbone(cfg):
        wanted["rm_backbone"] = fps["rm_backbone"]
    built = {}
    for marker in cells_dir.glob("*/artifacts/*/stage.json"):
        built.setdefault(read_json(marker).get("fingerprint"), marker.parent)
    for name, fp in wanted.items():
        target = cell_out / "artifacts" / name
        if fp in built and not (target / "stage.json").exists() and built[fp] != target:
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(built[fp], target, copy_function=_link_or_copy)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another filesystem, or no hard links
        shutil.copy2(src, dst)
