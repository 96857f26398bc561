"""`overopt compare`: the frontier comparison end to end on the smoke preset (`--quick`), its grid file, and
results that do not depend on how many runs execute at once (`--jobs`, `--launcher`, in `overopt compare`
and `overopt run` alike: both go through overopt.launch)."""

from __future__ import annotations

import json
import shutil

import pytest

from overopt.cli import main
from overopt.compare import load_grid, quick_grid, variants
from overopt.config import load_config

QUICK = ["compare", "--preset", "smoke", "--quick", "--seeds", "2"]


def _rows(out, run, seed=0):
    return [json.loads(line) for line in (out / "runs" / run / f"seed{seed}" / "metrics.jsonl").open()]


def _without_times(rows):
    return [{k: v for k, v in r.items() if k not in ("wall_s", "train/wall_s")} for r in rows]


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare") / "quick"
    main([*QUICK, "--out", str(out), "--jobs", "2"])
    return out


def test_quick_compare_runs_every_method_and_writes_the_frontier(quick):
    plan = json.loads((quick / "frontier_plan.json").read_text())
    grid, _ = load_grid()
    assert list(plan["methods"]) == list(grid)  # every method of the grid runs on summarize
    assert plan["baselines"] == {"none": "none", "kl": "kl"} and plan["seeds"] == [0, 1]
    for name, entry in plan["methods"].items():
        published = [p for p in entry["points"] if p["published"]]
        assert len(published) == 1, name  # the paper's point is one point of the grid
        for point in entry["points"]:
            last = _rows(quick, point["run"])[-1]
            if entry["strength_key"]:  # every method logs its effective strength
                assert entry["strength_key"] in last, (point["run"], sorted(last))
    # Calibrated knobs: OCRM's β_w is chosen so that ESS/N hits the target; GR's controller moves γ.
    ocrm = _rows(quick, "ocrm+kl@ocrm.target_ess_frac=0.1")[-1]
    assert ocrm["ocrm/ess_frac"] == pytest.approx(0.1, abs=1e-6) and ocrm["ocrm/beta_w"] > 0.001
    assert _rows(quick, "ocrm+kl@ocrm.beta_w=0.001")[-1]["ocrm/ess_frac"] > 0.99
    gr = _rows(quick, "gr@gr.target_correction=10.0")
    assert gr[-1]["gr/gamma"] > gr[1]["gr/gamma"] > 0.01  # tiny smoke corrections: γ grows towards the target
    frontier = json.loads((quick / "frontier.json").read_text())
    assert set(frontier["methods"]) == set(grid)
    for name, m in frontier["methods"].items():
        assert set(m["matched"]) == {"1", "2", "4", "8"} and m["verdict"]["sentence"], name
        assert m["cv_gold"]["n"] == 2, name
    assert set(frontier["none_early"]) == {"1", "2", "4", "8"}
    html = (quick / "report.html").read_text()
    assert "Frontier at matched KL" in html and "Mechanisms" in html
    (timing,) = json.loads((quick / "compare_timing.json").read_text())["invocations"]
    n_runs = 2 * sum(len(e["points"]) for e in plan["methods"].values())
    assert timing["jobs"] == 2 and timing["threads_per_run"] == 1 and timing["runs"] == timing["ran"] == n_runs
    assert timing["launcher"] == "local"


def _sharing_stages(out, quick):
    out.mkdir()
    (out / "artifacts").symlink_to(quick / "artifacts")  # the shared stages: reuse them
    return out


def _invocations(out, command):
    return json.loads((out / f"{command}_timing.json").read_text())["invocations"]


@pytest.mark.slow
def test_results_do_not_depend_on_how_many_run_at_once(quick, tmp_path):
    """The same runs one by one (in-process), two at once (spawned processes) and as submitit jobs are
    identical, in `overopt compare` and in `overopt run`; `--jobs` and `--launcher` are in no fingerprint."""
    out = _sharing_stages(tmp_path / "one", quick)
    main([*QUICK, "--out", str(out), "--jobs", "1", "--grid-methods", "none,gr,signcert+kl"])
    assert [(i["jobs"], i["ran"]) for i in _invocations(out, "compare")] == [(1, 10)]
    runs = sorted(p.parent.relative_to(out / "runs") for p in (out / "runs").glob("*/seed*/metrics.jsonl"))
    assert len(runs) == 2 * 5
    for run in runs:
        one = _without_times([json.loads(x) for x in (out / "runs" / run / "metrics.jsonl").open()])
        two = _without_times([json.loads(x) for x in (quick / "runs" / run / "metrics.jsonl").open()])
        assert one == two, run
    # `overopt run --jobs 2`; then `--launcher submitit` (here submitit's local executor: there is no Slurm)
    # into the same OUT, which reuses seed 0 (finished runs are reused whatever --jobs and --launcher) and
    # runs seed 1 again, deleted, as a job.
    run_out = _sharing_stages(tmp_path / "run", quick)
    argv = ["run", "--preset", "smoke", "--seeds", "2", "--threads", "1", "--methods", "none", "--out", str(run_out)]
    main([*argv, "--jobs", "2"])
    shutil.rmtree(run_out / "runs" / "none" / "seed1")
    main([*argv, "--launcher", "submitit"])
    (pool, submitit) = _invocations(run_out, "run")
    assert (pool["launcher"], pool["jobs"], pool["threads_per_run"], pool["ran"]) == ("local", 2, 1, 2)
    assert (submitit["launcher"], submitit["ran"]) == ("submitit", 1)
    assert len(list((run_out / "submitit").glob("*_result.pkl"))) == 1, "no submitit job ran"
    for seed in (0, 1):  # each equals the one-by-one run of `overopt compare` above
        assert _without_times(_rows(run_out, "none", seed)) == _without_times(_rows(out, "none", seed)), seed


def test_grid_files_are_checked(tmp_path, capsys):
    grid, budgets = load_grid()
    assert budgets == [1.0, 2.0, 4.0, 8.0]
    quick_points = quick_grid(grid)
    assert all(len(points) <= 2 and any(p.published for p in points) for points in quick_points.values())
    # A key with a pinned field: its runs carry the pin, and their configurations have it set.
    clip = grid["signcert+kl@signcert.weighting=shrink_clip"]
    assert clip[1].run == "signcert+kl@signcert.weighting=shrink_clip@signcert.quantile=0.2"
    assert clip[1].method == "signcert+kl" and clip[1].published
    named = {run: variant for run, _, variant in variants(load_config("smoke"), {"x": clip})}
    chosen = named["signcert+kl@signcert.weighting=shrink_clip@signcert.quantile=0.2"].signcert
    assert (chosen.weighting, chosen.quantile) == ("shrink_clip", 0.2)
    cases = {
        "methods: {'kl@rl.kl.coef': {field: rl.kl.coef, values: [1]}}\n": "pin fields as method@field=value",
        "methods: [kl]\n": "expected a 'methods' mapping",
        "methods: {kl: {values: [1]}}\n": "each axis is {field, values, published}",
        "methods: {kl: {field: rl.kl.coef, values: []}}\n": "needs a non-empty list of values",
        "budgets: [0]\nmethods: {kl: {field: rl.kl.coef, values: [1]}}\n": "budgets must be a list of positive",
        "methods: {kl: {field: model.hidden_size, values: [8]}}\n": "only rl.* and method sections",
        "methods: {kl: {field: rl.kl.nope, values: [1]}}\n": "unknown field 'nope'",
    }
    for text, message in cases.items():
        path = tmp_path / "grid.yaml"
        path.write_text(text)
        with pytest.raises(SystemExit):
            main([*QUICK, "--out", str(tmp_path / "never"), "--grid", str(path)])
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (text, err)
        assert not (tmp_path / "never").exists()
    with pytest.raises(SystemExit):
        main([*QUICK, "--out", str(tmp_path / "never"), "--grid-methods", "kl,bogus"])
    assert "'bogus' has no grid" in capsys.readouterr().err
