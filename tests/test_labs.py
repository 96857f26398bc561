"""Lab replicates (overopt.labs) and the statistics over labs (overopt.report.labs, overopt.stats)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as scipy_stats

from overopt import compare, scaling
from overopt.config import ExperimentConfig
from overopt.labs import replicate
from overopt.report.frontier import analyze_frontier
from overopt.report.labs import build_labs_report, labs_markdown, leave_one_lab_out
from overopt.stats import interval, labs_to_resolve, prediction_interval, t_quantile, variance_components

# -- the statistics ---------------------------------------------------------------------------------------


def test_variance_components_by_hand_and_against_scipys_f_statistic():
    groups = [[1.0, 2.0, 3.0], [4.0, 6.0, 8.0], [0.0, 0.5, 1.0]]
    # by hand: means 2, 6, 0.5, grand 8.5/3; MSB = 3·Σ(mean − grand)² / 2; MSW = (2 + 8 + 0.5) / 6
    grand = 8.5 / 3
    msb = 3 * ((2 - grand) ** 2 + (6 - grand) ** 2 + (0.5 - grand) ** 2) / 2
    msw = (2 + 8 + 0.5) / 6
    got = variance_components(groups)
    assert got["within_var"] == pytest.approx(msw, rel=1e-12)
    assert got["between_var"] == pytest.approx((msb - msw) / 3, rel=1e-12)
    assert got["icc"] == pytest.approx(got["between_var"] / (got["between_var"] + msw), rel=1e-12)
    # scipy's one-way ANOVA F = MSB / MSW, unbalanced groups too (n₀ in place of n)
    rng = np.random.default_rng(0)
    uneven = [list(rng.normal(m, 1.0, n)) for m, n in [(0, 3), (2, 5), (1, 2), (4, 4)]]
    got = variance_components(uneven)
    sizes = np.array([len(g) for g in uneven], dtype=float)
    n0 = (sizes.sum() - (sizes**2).sum() / sizes.sum()) / (len(uneven) - 1)
    f = scipy_stats.f_oneway(*uneven).statistic
    assert (got["within_var"] + n0 * got["between_var"]) / got["within_var"] == pytest.approx(f, rel=1e-10)


def test_variance_components_are_unbiased_and_floored_at_zero():
    rng = np.random.default_rng(1)
    sigma_b, sigma_w, labs, seeds = 0.3, 0.1, 5, 3
    draws = [variance_components(rng.normal(rng.normal(0, sigma_b, (labs, 1)), sigma_w, (labs, seeds)).tolist())
             for _ in range(4000)]  # fmt: skip
    assert np.mean([d["within_var"] for d in draws]) == pytest.approx(sigma_w**2, rel=0.03)
    assert np.mean([d["between_var"] for d in draws]) == pytest.approx(sigma_b**2, rel=0.06)  # rarely truncated
    same = variance_components([[1.0, 2.0], [1.1, 1.9]])  # lab means closer than seeds predict
    assert same["between_var"] == 0.0 and same["icc"] == 0.0
    assert variance_components([[1.0, 2.0]]) is None and variance_components([[1.0], [2.0]]) is None


def test_labs_to_resolve_is_the_smallest_count_whose_interval_excludes_zero():
    between, within, seeds, effect = 0.04, 0.01, 3, 0.2
    labs = labs_to_resolve(effect, between, within, seeds)
    half = [t_quantile(0.975, n - 1) * math.sqrt((between + within / seeds) / n) for n in (labs - 1, labs)]
    assert half[0] >= effect > half[1]
    assert labs_to_resolve(-effect, between, within, seeds) == labs
    assert labs_to_resolve(0.0, between, within, seeds) is None
    assert labs_to_resolve(1e-6, between, within, seeds) is None  # beyond 100 labs


# -- replicates --------------------------------------------------------------------------------------------


def test_a_replicate_redraws_seed_and_world_unless_the_world_is_held(tmp_path):
    from overopt.pipeline import stage_fingerprints

    cfg = ExperimentConfig(out=tmp_path, labs=3, seed=5)
    labs = [replicate(cfg, i) for i in range(3)]
    assert [lab.seed for lab in labs] == [5, 6, 7] and all(lab.labs == 1 for lab in labs)
    assert [lab.summarize.world_seed for lab in labs] == [1234, 1235, 1236]
    assert [lab.out for lab in labs] == [tmp_path / "labs" / f"lab{i}" for i in range(3)]
    fps = [stage_fingerprints(lab, "preference") for lab in labs]
    for stage in ("sft", "data", "rm"):
        assert len({fp[stage] for fp in fps}) == 3, stage
    held = [replicate(cfg.model_copy(update={"lab_hold": "world"}), i) for i in range(3)]
    assert {lab.summarize.world_seed for lab in held} == {1234} and [lab.seed for lab in held] == [5, 6, 7]
    # lab 0 is the one-lab command: the world at its old fixed seed keeps the stages' old fingerprints
    assert stage_fingerprints(labs[0].model_copy(update={"out": tmp_path}), "preference") == stage_fingerprints(
        ExperimentConfig(out=tmp_path, seed=5), "preference"
    )


def _fake_lab(path, seeds: dict[str, list[tuple[float, bool, bool]]], sft: float, accuracy: float):
    """A lab's summary.json as report.summary writes it: per method, per seed (gold final, hacked, rose)."""
    methods = {
        name: {"n_seeds": len(rows), "seeds": [
            {"seed": k, "gold_final": g, "gold_peak": g + 0.1, "kl_final": 1.0 + k, "hacked": h, "rose": r}
            for k, (g, h, r) in enumerate(rows)]}
        for name, rows in seeds.items()
    }  # fmt: skip
    path.mkdir(parents=True)
    summary = {"testbed": "summarize", "preset": "x", "sft": {"gold_reward": sft},
               "stages": {"rm": {"metrics": {"heldout_accuracy": accuracy}}}, "methods": methods}  # fmt: skip
    (path / "summary.json").write_text(json.dumps(summary))


def test_run_statistics_pair_within_lab_and_seed_and_score_validity(tmp_path):
    none = [[(0.1, True, True), (0.2, True, True)], [(-0.3, True, True), (0.0, False, True)],
            [(0.4, True, False), (0.5, True, True)]]  # fmt: skip
    kl = [[(0.5, False, True), (0.4, False, True)], [(0.3, False, True), (0.2, False, True)],
          [(0.6, False, True), (0.9, False, True)]]  # fmt: skip
    labs = []
    for i in range(3):
        _fake_lab(tmp_path / "labs" / f"lab{i}", {"none": none[i], "kl": kl[i]}, sft=0.1 * i, accuracy=0.7)
        labs.append({"lab": i, "seed": i, "world_seed": 1234 + i, "out": f"labs/lab{i}"})
    (tmp_path / "labs.json").write_text(json.dumps({"kind": "run", "hold": None, "labs": labs}))
    result = build_labs_report(tmp_path)
    m = result["methods"]
    assert m["none"]["gold_final"]["per_lab"] == pytest.approx([0.15, -0.15, 0.45])
    assert m["none"]["gold_final"]["mean"] == pytest.approx(interval([0.15, -0.15, 0.45])["mean"])
    assert m["none"]["gold_final"]["new_lab"] == pytest.approx(prediction_interval([0.15, -0.15, 0.45]))
    diffs = [np.mean([a[0] - b[0] for a, b in zip(kl[i], none[i])]) for i in range(3)]
    assert m["kl"]["vs_baseline"]["per_lab"] == pytest.approx(diffs)
    assert m["kl"]["vs_baseline"]["lo"] == pytest.approx(interval(diffs)["lo"])
    parts = variance_components([[g for g, _, _ in lab] for lab in none])
    assert m["none"]["gold_final"]["variance"]["between_var"] == pytest.approx(parts["between_var"])
    assert result["validity"] == {"hacked_share": 5 / 6, "rose_share": 5 / 6, "runs": 6, "labs": 3,
                                  "bar": {"hacked": 0.8, "rose": 0.9}, "valid": False}  # fmt: skip
    assert json.loads((tmp_path / "summary.json").read_text())["labs"] == 3
    assert "NOT valid" in (tmp_path / "labs.md").read_text()


def test_mechanisms_over_labs_take_each_labs_mean_as_one_unit(tmp_path):
    """Each lab's mechanism figure is its own mean over runs (report.mechanisms); the interval is over labs,
    and the verdict is the deciding figure's: the accuracy change for OCRM, the correlation for ensembles."""
    accuracy = [[(0.70, 0.50), (0.72, 0.44)], [(0.68, 0.50), (0.70, 0.52)], [(0.75, 0.40), (0.71, 0.49)]]
    disagreement = [[0.2, 0.1], [-0.1, 0.0], [0.3, 0.2]]
    labs = []
    for i in range(3):
        path = tmp_path / "labs" / f"lab{i}"
        _fake_lab(path, {"none": [(0.0, True, True)] * 2, "ensemble_uwo": [(0.3, False, True)] * 2}, 0.1, 0.7)
        summary = json.loads((path / "summary.json").read_text())
        for seed, (sft, final) in zip(summary["methods"]["none"]["seeds"], accuracy[i], strict=True):
            seed["mech"] = {"proxy_accuracy_sft": sft, "proxy_accuracy_final": final}
        for seed, corr in zip(summary["methods"]["ensemble_uwo"]["seeds"], disagreement[i], strict=True):
            seed["mech"] = {"disagreement_error_corr_mean": corr}
        (path / "summary.json").write_text(json.dumps(summary))
        labs.append({"lab": i, "seed": i, "world_seed": 1234 + i, "out": f"labs/lab{i}"})
    (tmp_path / "labs.json").write_text(json.dumps({"kind": "run", "hold": None, "labs": labs}))
    mech = build_labs_report(tmp_path)["mechanisms"]
    changes = [np.mean([f - s for s, f in lab]) for lab in accuracy]
    assert mech["ocrm"]["numbers"]["change"]["per_lab"] == pytest.approx(changes)
    assert mech["ocrm"]["numbers"]["change"]["hi"] == pytest.approx(interval(changes)["hi"])
    assert mech["ocrm"]["deciding"] == "change" and mech["ocrm"]["status"] == "supported"
    corrs = [np.mean(lab) for lab in disagreement]  # 0.15, -0.05, 0.25: its interval crosses 0
    assert mech["ensemble"]["numbers"]["corr"]["per_lab"] == pytest.approx(corrs)
    assert mech["ensemble"]["status"] == "inconclusive"
    assert "**Mechanisms over labs**" in (tmp_path / "labs.md").read_text()


def _frontier(points: dict[str, dict[str, list[tuple[float, float]]]], early: float) -> dict:
    """An analyze_frontier result with only what leave_one_lab_out reads: method -> point -> [(gold, kl) per seed]."""
    methods = {m: {"points": [{"run": run, "per_seed": {str(s): {"gold": g, "kl": k} for s, (g, k) in enumerate(v)}}
                              for run, v in pts.items()]} for m, pts in points.items()}  # fmt: skip
    return {"methods": methods, "none_early": {"2": {"mean": early}}}


def test_leave_one_lab_out_chooses_each_labs_point_on_the_other_labs():
    """Three labs, one seed each: at KL ≤ 2, lab j takes the point with the best gold over the other labs among
    those within budget at lab j, never its own best (that would be in sample)."""
    kl_points = [{"kl@a": [(0.50, 1.0)], "kl@b": [(0.60, 1.5)]},   # lab 0: b is its own best
                 {"kl@a": [(0.52, 1.0)], "kl@b": [(0.40, 3.0)]},   # lab 1: b over the budget here
                 {"kl@a": [(0.48, 1.0)], "kl@b": [(0.45, 1.8)]}]  # fmt: skip
    chi_points = [{"chi2@a": [(0.55, 1.0)]}, {"chi2@a": [(0.50, 1.0)]}, {"chi2@a": [(0.47, 1.2)]}]
    frontiers = [_frontier({"kl": k, "chi2": c}, early=0.3 + 0.1 * j)
                 for j, (k, c) in enumerate(zip(kl_points, chi_points, strict=True))]  # fmt: skip
    result = leave_one_lab_out(frontiers, ["2"])
    kl = result["kl"]["matched"]["2"]
    # lab 0: other labs' means a 0.50, b (0.40+0.45)/2 = 0.425 -> a (0.50), not its own best b (0.60)
    # lab 1: b is over the budget at lab 1 -> a (0.52); lab 2: a (0.505) beats b (0.50) -> a (0.48)
    assert kl["chosen"] == ["kl@a", "kl@a", "kl@a"] and kl["per_lab"] == pytest.approx([0.50, 0.52, 0.48])
    assert kl["mean"] == pytest.approx(interval([0.50, 0.52, 0.48])["mean"])
    chi2 = result["chi2"]["matched"]["2"]
    assert chi2["vs"]["per_lab"] == pytest.approx([0.05, -0.02, -0.01])
    assert chi2["vs"]["lo"] == pytest.approx(interval([0.05, -0.02, -0.01])["lo"])
    assert chi2["vs_none_early"]["per_lab"] == pytest.approx([0.25, 0.10, -0.03])
    # at any KL, lab 1 takes b (best over labs 0 and 2: 0.525 against a's 0.49) and reads its 0.40 there
    assert result["kl"]["cv_gold"]["chosen"][1] == "kl@b" and result["kl"]["cv_gold"]["per_lab"][1] == 0.40
    assert leave_one_lab_out(frontiers[:1], ["2"]) == {}  # one lab: nothing to choose on


def test_one_seed_labs_report_the_choice_on_the_other_labs_only():
    """With one RL seed per lab a lab's own choice is in sample: labs.md shows the leave-one-lab-out tables."""
    frontier = _frontier({"kl": {"kl@a": [(0.5, 1.0)]}, "chi2": {"chi2@a": [(0.55, 1.0)]}}, early=0.3)
    result = {
        "kind": "compare",
        "labs": 2,
        "labs_done": 2,
        "budgets": ["2"],
        "testbed": "summarize",
        "preset": "default",
        "one_seed": True,
        "methods": {},
        "lolo": leave_one_lab_out([frontier] * 2, ["2"]),
    }
    text = labs_markdown(result)
    assert "**Gold at matched KL (chosen on the other labs)**" in text and "**Gold at matched KL**" not in text
    assert "would be in sample" in text and "| chi2 | 0.550" in text
    # with two seeds or more, each lab's own (leave-one-seed-out) tables come first, then these
    cell = {"mean": 0.6, "lo": 0.5, "hi": 0.7, "n": 2}
    own = {"cv_gold": cell, "cv_vs_kl": cell, "matched": {"2": {"gold": cell, "vs_kl": cell, "vs_none_early": cell}}}
    text = labs_markdown({**result, "one_seed": False, "methods": {"chi2": own}})
    assert text.index("**Gold at matched KL**") < text.index("**Gold at matched KL (chosen on the other labs)**")
    assert "would be in sample" not in text and "| chi2 | 0.600 [0.500, 0.700] |" in text


def _script(name: str):
    path = Path(__file__).resolve().parents[1] / "experiments" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


over_labs = _script("over_labs")


@pytest.mark.parametrize("name", list(over_labs.STUDIES))
def test_each_studys_grid_loads_and_it_writes_under_runs_with_three_labs_or_more(name):
    study = over_labs.STUDIES[name]
    argv = study.argv
    grid = over_labs.ROOT / argv[argv.index("--grid") + 1] if "--grid" in argv else None  # None: the preset's
    if argv[0] == "compare":
        assert "none" in compare.load_grid(grid)[0]
    elif argv[0] == "scaling":
        assert scaling.load_grid(grid, quick=False)
    else:
        assert argv[0] == "run" and grid is None
    assert argv[argv.index("--out") + 1].startswith("runs/") and int(argv[argv.index("--labs") + 1]) >= 3


# -- the commands, end to end -----------------------------------------------------------------------------


@pytest.mark.usefixtures("one_thread")
def test_run_with_two_labs_trains_two_labs_and_summarises_over_them(tmp_path):
    from overopt.cli import main

    out = tmp_path / "out"
    main(["run", "--labs", "2", "--preset", "smoke", "--threads", "1", "--out", str(out)])
    stage = {i: {s: json.loads((out / "labs" / f"lab{i}" / "artifacts" / s / "stage.json").read_text())["fingerprint"]
                 for s in ("sft", "rm")} for i in range(2)}  # fmt: skip
    assert stage[0]["sft"] != stage[1]["sft"] and stage[0]["rm"] != stage[1]["rm"]
    record = json.loads((out / "labs.json").read_text())
    assert [(lab["seed"], lab["world_seed"]) for lab in record["labs"]] == [(0, 1234), (1, 1235)]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["kind"] == "run" and summary["labs"] == summary["labs_done"] == 2
    kl = summary["methods"]["kl"]
    assert len(kl["gold_final"]["per_lab"]) == 2 and "variance" in kl["gold_final"] and kl["vs_baseline"]["n"] == 2
    assert summary["replicates"] == record["labs"]


@pytest.mark.usefixtures("one_thread")
def test_compare_with_three_labs_pairs_methods_within_each_lab(tmp_path):
    from overopt.cli import main

    out = tmp_path / "out"
    main(["compare", "--labs", "3", "--preset", "smoke", "--quick", "--grid-methods", "none,kl,chi2", "--out",
          str(out), "--jobs", "1"])  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    assert summary["kind"] == "compare" and summary["labs_done"] == 3
    frontiers = [json.loads((out / "labs" / f"lab{i}" / "summary.json").read_text()) for i in range(3)]
    assert all(f["methods"] for f in frontiers)
    for budget, cell in summary["methods"]["chi2"]["matched"].items():
        assert len(cell["vs_kl"]["per_lab"]) == 3 and cell["vs_kl"]["n"] == 3, budget
    text = (out / "labs.md").read_text()
    # --quick trains one RL seed per lab: a lab's own choice would be in sample, so the tables are the choice
    # made on the other labs (leave-one-lab-out) only
    assert summary["one_seed"] and "**Gold at matched KL**" not in text
    for table in ("Gold at matched KL", "Paired against `kl`", "Paired against `none` stopped early"):
        assert f"**{table} (chosen on the other labs)**" in text
    against_kl = text.split("Paired against `kl`")[1].split("**")[1]
    assert "| chi2 |" in against_kl and "| kl |" not in against_kl  # kl is the reference, not a row
    assert "| none |" not in text.split("stopped early (chosen on the other labs)**")[1]
    assert summary["lolo"]["chi2"]["cv_gold"]["n"] == 3  # every lab chose on the two others
    assert summary["mechanisms"]["ocrm"]["numbers"]["change"]["n"] == 3  # OCRM's premise, one unit per lab
    cv = {m: [f["methods"][m]["cv_gold"]["mean"] for f in (analyze_frontier(out / "labs" / f"lab{i}")
                                                          for i in range(3))] for m in ("kl", "chi2")}  # fmt: skip
    assert summary["methods"]["chi2"]["cv_vs_kl"]["per_lab"] == pytest.approx(np.subtract(cv["chi2"], cv["kl"]))
    study = over_labs.Study("A study", f"compare --out {out}", "What each lab redraws.", 1)
    section = over_labs.section("a-study", study, 2.0)
    assert section.startswith("## A study") and "What each lab redraws. 2.0 min on this machine." in section
    assert "**Paired against `kl` (chosen on the other labs)**" in section and "# Over labs" not in section


def test_scaling_statistics_give_each_cells_fit_and_each_labs_trend_over_labs(tmp_path):
    """d* and α per cell over labs, and the slope of d* against log10 RM parameters per lab, then over labs."""
    params = {"base": 1000, "rm_small": 100, "rm_big": 10000}
    d_star = [{"rm_small": 1.0, "base": 1.2, "rm_big": 1.4}, {"rm_small": 1.1, "base": 1.1, "rm_big": 1.1},
              {"rm_small": 0.9, "base": 1.3, "rm_big": 1.5}]  # fmt: skip
    labs = []
    for i, lab in enumerate(d_star):
        cells = [{"cell": name, "axis": "base" if name == "base" else "rm_size", "value": None,
                  "rm_params": params[name], "policy_params": 500, "pairs": 300, "rm_accuracy": 0.6 + 0.1 * i,
                  "methods": {"bon": {"fit": {"alpha": 0.4 + i, "beta": 0.1, "d_peak": d}}}}
                 for name, d in lab.items()]  # fmt: skip
        path = tmp_path / "labs" / f"lab{i}"
        path.mkdir(parents=True)
        (path / "scaling.json").write_text(json.dumps({"cells": cells}))
        labs.append({"lab": i, "seed": i, "world_seed": 1234 + i, "out": f"labs/lab{i}"})
    (tmp_path / "labs.json").write_text(json.dumps({"kind": "scaling", "hold": None, "labs": labs}))
    result = build_labs_report(tmp_path)
    big = result["cells"]["rm_big"]["methods"]["bon"]
    assert big["d_peak"]["per_lab"] == [1.4, 1.1, 1.5] and big["d_peak"]["lo"] == pytest.approx(
        interval([1.4, 1.1, 1.5])["lo"]
    )
    assert big["alpha"]["mean"] == pytest.approx(1.4)
    # per lab, d* against log10 params at x = 2, 3, 4: slopes 0.2, 0, 0.3 (least squares by hand)
    slopes = result["trends"]["rm_size"]["bon"]["d_peak"]
    assert slopes["per_lab"] == pytest.approx([0.2, 0.0, 0.3])
    assert slopes["hi"] == pytest.approx(interval([0.2, 0.0, 0.3])["hi"])
    assert result["trends"]["rm_size"]["rm_accuracy"]["accuracy"]["per_lab"] == pytest.approx([0.0, 0.0, 0.0])
    text = (tmp_path / "labs.md").read_text()
    assert "| rm_size | bon |" in text and "bon d*" in text
