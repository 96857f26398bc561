"""Tests for overopt.report.frontier on constructed output directories with known answers (no torch)."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from overopt.report import build_report
from overopt.report.frontier import (
    analyze_frontier,
    early_stop_gold,
    envelope_band,
    error_bars,
    format_ci,
    frontier_markdown,
    loso_select,
    paired_diff_ci,
    path_gold_at_kl,
    plot_frontier,
    upper_envelope,
    write_frontier,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SEEDS = [0, 1, 2]
NONE_KL = [0.0, 1.0, 2.0, 3.0, 4.0]
NONE_GOLD = [0.0, 0.5, 0.8, 0.6, 0.3]  # + 0.01 * seed: rises, peaks at KL 2, hacked by the end


def path_rows(kls, golds, strength_key=None, strength=None):
    rows = []
    for i, (k, g) in enumerate(zip(kls, golds)):
        row = {"step": 10 * i, "kl_sft": k, "gold_reward": g, "proxy_reward": 0.1 * i}
        if strength_key and i > 0:
            row[strength_key] = strength
        rows.append(row)
    return rows


def none_rows(seed):
    return path_rows(NONE_KL, [g + 0.01 * seed for g in NONE_GOLD])


def endpoint_rows(kl, gold, strength_key=None, strength=None):
    """Step 0 at the SFT policy (KL 0, gold = 0), then one evaluation at (kl, gold)."""
    return path_rows([0.0, kl], [0.0, gold], strength_key, strength)


def write_run(out: Path, run: str, seed: int, rows: list[dict]) -> None:
    d = out / "runs" / run / f"seed{seed}"
    d.mkdir(parents=True, exist_ok=True)
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def point(run, field=None, value=None, published=False):
    return {"run": run, "field": field, "value": value, "published": published}


def make_frontier_out(tmp_path: Path) -> Path:
    """none + four methods over 3 seeds, each with a known relation to none's path.

    * kl: endpoints are none's own evaluations 1 and 2 (exactly on none's path);
    * up: the same KLs with gold + 0.1 (moves the frontier up);
    * down: one point at KL 3 with gold 0.2 below none's path;
    * loso: two points at KL 0.5: A = (1, 0, 0) over seeds (best in-sample mean 1/3),
      B = 0.3 at every seed (best out of sample).
    """
    out = tmp_path / "out"
    out.mkdir()
    for s in SEEDS:
        rows = none_rows(s)
        write_run(out, "none", s, rows)
        write_run(out, "kl@rl.kl.coef=0.5", s, rows[:2])  # ends at (1, 0.5 + 0.01 s)
        write_run(out, "kl@rl.kl.coef=0.1", s, rows[:3])  # ends at (2, 0.8 + 0.01 s)
        for i, run in ((1, "up@up.x=2"), (2, "up@up.x=1")):
            shifted = [dict(r, gold_reward=r["gold_reward"] + (0.1 if r["step"] > 0 else 0.0)) for r in rows[: i + 1]]
            for r in shifted[1:]:
                r["up/strength"] = 0.2 * i
            write_run(out, run, s, shifted)
        write_run(out, "down@down.x=1", s, endpoint_rows(3.0, 0.4 + 0.01 * s))
        write_run(out, "loso@loso.x=A", s, endpoint_rows(0.5, [1.0, 0.0, 0.0][s]))
        write_run(out, "loso@loso.x=B", s, endpoint_rows(0.5, 0.3))
    plan = {
        "testbed": "toy",
        "preset": "tiny",
        "seeds": SEEDS,
        "budgets": [0.5, 1.5, 2.5],
        "baselines": {"none": "none", "kl": "kl"},
        "methods": {
            "none": {"method": "none", "strength_key": None, "points": [point("none", published=True)]},
            "kl": {"method": "kl", "strength_key": "kl/reward_share", "points": [
                point("kl@rl.kl.coef=0.5", "rl.kl.coef", 0.5), point("kl@rl.kl.coef=0.1", "rl.kl.coef", 0.1, True)]},
            "up": {"method": "up", "strength_key": "up/strength", "points": [
                point("up@up.x=2", "up.x", 2), point("up@up.x=1", "up.x", 1, True)]},
            "down": {"method": "down", "strength_key": None, "points": [point("down@down.x=1", "down.x", 1, True)]},
            "loso": {"method": "loso", "strength_key": None, "points": [
                point("loso@loso.x=A", "loso.x", "A"), point("loso@loso.x=B", "loso.x", "B", True)]},
        },
    }  # fmt: skip
    (out / "frontier_plan.json").write_text(json.dumps(plan))
    return out


# --------------------------------------------------------------------------- #
# pure functions
# --------------------------------------------------------------------------- #
def test_paired_diff_ci():
    a = {0: 1.0, 1: 2.0, 2: 3.0, 3: 9.0}
    b = {0: 0.5, 1: 1.5, 2: 2.5, 5: 0.0}
    d = paired_diff_ci(a, b)
    assert d["n"] == 3 and d["seeds"] == [0, 1, 2]
    assert d["mean"] == d["lo"] == d["hi"] == 0.5
    b[2] = 2.0  # differences 0.5, 0.5, 1.0: the Student t interval of their mean over 3 seeds
    d = paired_diff_ci(a, b)
    half = 4.302652729911275 * np.std([0.5, 0.5, 1.0], ddof=1) / np.sqrt(3)
    assert d["mean"] == pytest.approx(2 / 3) and d["lo"] == pytest.approx(2 / 3 - half)
    assert paired_diff_ci({0: 1.0}, {1: 1.0})["n"] == 0


def test_early_stop_gold():
    rows = path_rows([0.0, 1.0, 3.0, 2.0], [0.1, 0.5, 0.9, 0.7])
    assert early_stop_gold(rows, 2.5) == 0.5  # stops before KL 3, not using the later KL 2
    assert early_stop_gold(rows, 3.0) == 0.7  # never exceeded: final row
    assert early_stop_gold(rows, 0.5) == 0.1
    assert early_stop_gold(rows, -1.0) is None  # even the SFT evaluation exceeds the budget


def test_path_gold_at_kl():
    rows = path_rows([0.0, 1.0, 3.0, 2.0], [0.0, 0.5, 0.9, 0.1])
    assert path_gold_at_kl(rows, 2.0) == pytest.approx(0.7)  # first crossing: between KL 1 and 3
    assert path_gold_at_kl(rows, 0.5) == pytest.approx(0.25)
    assert path_gold_at_kl(rows, 1.0) == 0.5
    assert path_gold_at_kl(rows, 0.0) == 0.0
    assert path_gold_at_kl(rows, 3.5) is None


def test_upper_envelope_and_band():
    grid = [0.0, 0.5, 1.0, 1.5, 2.0, 5.0]
    assert upper_envelope([1.0, 2.0, 4.0], [0.5, 0.9, 0.3], grid) == [None, None, 0.5, 0.5, 0.9, 0.9]
    assert upper_envelope([1.0, 2.0], [0.9, 0.5], grid)[-1] == 0.9  # a worse point further out adds nothing
    # Seeds agree exactly: the band collapses onto the envelope.
    kl = [{0: 1.0, 1: 1.0}, {0: 2.0, 1: 2.0}]
    gold = [{0: 0.5, 1: 0.5}, {0: 0.9, 1: 0.9}]
    lo, hi = envelope_band(kl, gold, grid)
    assert lo == hi == [None, None, 0.5, 0.5, 0.9, 0.9]
    # Seed 1 of point 2 sits beyond x = 2: the envelope there is 0.5, 0.9 without seed 1; the jackknife's SE is
    # sqrt(1/2 · ((0.5 − 0.7)² + (0.9 − 0.7)²)) = 0.2, times t_{1, 0.975} = 12.706 around 0.5. At x = 5 the seeds agree.
    kl[1][1] = 2.4
    lo, hi = envelope_band(kl, gold, grid)
    assert lo[4] == pytest.approx(0.5 - 12.706204736 * 0.2) and hi[4] == pytest.approx(0.5 + 12.706204736 * 0.2)
    assert lo[5] == hi[5] == pytest.approx(0.9)


def test_loso_select_differs_from_in_sample():
    gold = {"A": {0: 1.0, 1: 0.0, 2: 0.0}, "B": {0: 0.3, 1: 0.3, 2: 0.3}}
    assert max(gold, key=lambda p: np.mean(list(gold[p].values()))) == "A"  # in-sample choice
    assert loso_select(gold) == {0: ("B", 0.3), 1: ("A", 0.0), 2: ("A", 0.0)}
    kl = {"A": {0: 1.0, 1: 1.0, 2: 1.0}, "B": {0: 3.0, 1: 0.5, 2: 3.0}}
    assert loso_select(gold, kl, budget=2.0) == {0: ("A", 1.0), 1: ("A", 0.0), 2: ("A", 0.0)}
    assert loso_select(gold, kl, budget=0.7) == {1: ("B", 0.3)}
    assert loso_select({"A": {4: 0.6}}) == {4: ("A", 0.6)}  # one seed: scored on itself


def test_format_ci():
    assert format_ci({"mean": 0.5, "lo": 0.25, "hi": 0.75, "n": 3}) == "0.500 [0.250, 0.750]"
    assert format_ci({"mean": 0.1, "lo": 0.05, "hi": 0.2, "n": 3}, signed=True) == "+0.100 [+0.050, +0.200]"
    assert format_ci({"mean": 0.5, "lo": 0.5, "hi": 0.5, "n": 1}) == "0.500 (n=1)"
    assert format_ci({"mean": None, "lo": None, "hi": None, "n": 0}) == "–"


# --------------------------------------------------------------------------- #
# the analysis
# --------------------------------------------------------------------------- #
def test_analyze_frontier_known_answers(tmp_path):
    out = make_frontier_out(tmp_path)
    res = write_frontier(out)
    assert json.loads((out / "frontier.json").read_text()) == res
    assert res["baselines"] == {"none": "none", "kl": "kl"}
    assert res["sft_gold"] == pytest.approx(np.mean([0.01 * s for s in SEEDS] * 5 + [0.0] * 9))
    m = res["methods"]

    # Points: mean final KL / gold, strength, hacked.
    none_pt = m["none"]["points"][0]
    assert none_pt["kl"]["mean"] == 4.0 and none_pt["gold"]["mean"] == pytest.approx(0.31)
    assert none_pt["hacked"] == "3/3" and none_pt["knob"] == "off" and none_pt["lift"] is None
    up1 = m["up"]["points"][1]
    assert up1["knob"] == "up.x=1" and up1["published"] and up1["n"] == 3
    assert up1["strength"]["mean"] == pytest.approx(0.4)
    assert m["kl"]["points"][0]["strength"]["n"] == 0  # no kl/reward_share logged

    # Lift over none's path and verdicts.
    for p in m["kl"]["points"]:
        assert p["lift"] == {"mean": 0.0, "lo": 0.0, "hi": 0.0, "n": 3, "per_seed": {"0": 0.0, "1": 0.0, "2": 0.0}}
    assert m["kl"]["verdict"]["label"] == "on none's path" and m["kl"]["verdict"]["stops_better"] is True
    assert "stops at a better point" in m["kl"]["verdict"]["sentence"]
    assert [p["lift"]["mean"] for p in m["up"]["points"]] == pytest.approx([0.1, 0.1])
    assert m["up"]["verdict"]["label"] == "moves the frontier up"
    assert m["down"]["points"][0]["lift"]["mean"] == pytest.approx(-0.2)
    assert m["down"]["verdict"]["label"] == "below none's path"
    # none's path at KL 0.5 is 0.25 + 0.01 s: B's lift is 0.05, 0.04, 0.03.
    assert m["loso"]["points"][1]["lift"]["mean"] == pytest.approx(0.04)
    assert m["none"]["verdict"]["label"] == "baseline"
    assert len(res["verdicts"]) == 5

    # Envelope of "up" (with none's point at KL 4): 0.61 from KL 1, 0.91 from KL 2.
    env = m["up"]["envelope"]
    at = dict(zip(env["kl"], env["gold"]))
    assert at[0.0] is None and at[1.0] == pytest.approx(0.61) and at[2.0] == pytest.approx(0.91)
    assert at[4.0] == pytest.approx(0.91) and max(env["kl"]) == pytest.approx(4.4)
    i2 = env["kl"].index(2.0)
    assert env["lo"][i2] <= env["gold"][i2] <= env["hi"][i2]

    # Matched KL (leave-one-seed-out within the budget).
    assert m["kl"]["matched"]["0.5"]["n"] == 0 and m["kl"]["matched"]["0.5"]["mean"] is None
    assert m["kl"]["matched"]["1.5"]["mean"] == pytest.approx(0.51)
    assert m["kl"]["matched"]["2.5"]["mean"] == pytest.approx(0.81)
    assert m["kl"]["matched"]["2.5"]["chosen"] == {"0": "kl@rl.kl.coef=0.1", "1": "kl@rl.kl.coef=0.1",
                                                   "2": "kl@rl.kl.coef=0.1"}  # fmt: skip
    assert m["none"]["matched"]["2.5"]["n"] == 0  # none ends at KL 4
    assert m["loso"]["matched"]["0.5"]["mean"] == pytest.approx(0.1)
    assert res["none_early"]["2.5"]["mean"] == pytest.approx(0.81)  # stops at KL 2
    assert res["none_early"]["0.5"]["mean"] == pytest.approx(0.01)  # stops at the SFT evaluation
    vs_kl = m["up"]["matched"]["2.5"]["vs_kl"]
    assert vs_kl["n"] == 3 and vs_kl["mean"] == pytest.approx(0.1) and vs_kl["hi"] - vs_kl["lo"] < 1e-9
    assert m["up"]["matched"]["2.5"]["vs_none_early"]["mean"] == pytest.approx(0.1)
    assert m["kl"]["matched"]["2.5"]["vs_kl"] is None
    assert m["kl"]["matched"]["0.5"]["vs_kl"] is None and m["up"]["matched"]["0.5"]["vs_kl"]["n"] == 0

    # Best over the grid: in-sample picks A, leave-one-seed-out does not.
    assert m["loso"]["best"]["run"] == "loso@loso.x=A" and m["loso"]["best"]["gold"]["mean"] == pytest.approx(1 / 3)
    cv = m["loso"]["cv_gold"]
    assert cv["mean"] == pytest.approx(0.1) and cv["n"] == 3
    assert cv["chosen"] == {"0": "loso@loso.x=B", "1": "loso@loso.x=A", "2": "loso@loso.x=A"}
    assert m["up"]["best"]["knob"] == "up.x=1" and m["up"]["cv_gold"]["mean"] == pytest.approx(0.91)

    # Rankings.
    assert res["ranking"]["cv_gold"] == ["up", "kl", "down", "none", "loso"]
    assert res["ranking"]["matched"]["2.5"][:3] == ["up", "kl", "none stopped early"]
    assert res["ranking"]["matched"]["2.5"][3:] == ["loso", "none", "down"]  # the last two: no value at KL ≤ 2.5

    # Determinism.
    assert analyze_frontier(out) == res


def test_partial_comparison_records_n(tmp_path):
    out = make_frontier_out(tmp_path)
    (out / "runs" / "up@up.x=1" / "seed2" / "metrics.jsonl").unlink()
    res = analyze_frontier(out)
    up = res["methods"]["up"]
    assert up["points"][1]["n"] == 2 and up["points"][1]["seeds"] == [0, 1]
    # Seed 2 can only use the KL-1 point (0.62): (0.90 + 0.91 + 0.62) / 3.
    m = up["matched"]["2.5"]
    assert m["mean"] == pytest.approx(0.81) and m["chosen"]["2"] == "up@up.x=2"
    assert m["vs_kl"]["seeds"] == [0, 1, 2]
    assert m["vs_kl"]["mean"] == pytest.approx((0.1 + 0.1 - 0.2) / 3)
    md = frontier_markdown(res)
    assert "| up | up.x=1 ★ | 0.400 [0.400, 0.400] (n=2) | 0.905 [0.841, 0.969] (n=2) | 0/2 |" in md


def test_frontier_markdown_and_plots(tmp_path):
    out = make_frontier_out(tmp_path)
    res = analyze_frontier(out)
    md = frontier_markdown(res)
    assert "| method | KL ≤ 0.5 | KL ≤ 1.5 | KL ≤ 2.5 |" in md
    assert "| kl | – | 0.510 [0.485, 0.535] | 0.810 [0.785, 0.835] |" in md
    assert "| none stopped early |" in md
    assert "| up − kl | – | +0.100 [+0.100, +0.100] | +0.100 [+0.100, +0.100] |" in md
    assert "| loso | loso.x=A | – | 0.333 [-1.101, 1.768] | 0/3 | 0.100 [-0.330, 0.530] | moves the frontier up |" in md
    assert "- up moves the frontier up" in md
    paths = plot_frontier(out, res)
    assert [p.name for p in paths] == ["frontier_methods.png", "matched_kl.png"]
    for p in paths:
        assert p.read_bytes()[:8] == PNG_MAGIC


def test_build_report_with_plan(tmp_path):
    out = make_frontier_out(tmp_path)
    buf = io.StringIO()
    build_report(out, console=Console(file=buf, width=200, color_system=None))
    res = json.loads((out / "frontier.json").read_text())
    assert set(res) == {"testbed", "preset", "seeds", "budgets", "baselines", "sft_gold", "none", "methods",
                        "none_early", "ranking", "verdicts"}  # fmt: skip
    for name in ("frontier_methods.png", "matched_kl.png", "frontier.png"):
        assert (out / "plots" / name).read_bytes()[:8] == PNG_MAGIC
    html = (out / "report.html").read_text()
    assert "<h2>Frontier at matched KL</h2>" in html
    assert "none stopped early" in html and "up moves the frontier up" in html
    assert "0.810 [0.785, 0.835]" in html and "loso.x=A ★" not in html and "up.x=1 ★" in html
    assert html.count('src="data:image/png;base64,') == 7  # 4 standard plots + 2 frontier plots + early warning
    assert "<script" not in html and "Mechanisms" not in html
    extra = [line for line in buf.getvalue().splitlines() if line.startswith("frontier:")]
    assert len(extra) == 1 and "frontier.json" in extra[0]
    summary = json.loads((out / "summary.json").read_text())
    assert "up@up.x=1" in summary["methods"] and summary["methods"]["up@up.x=1"]["n_seeds"] == 3


def test_build_report_without_plan_unchanged(tmp_path):
    out = make_frontier_out(tmp_path)
    (out / "frontier_plan.json").unlink()
    buf = io.StringIO()
    build_report(out, console=Console(file=buf, width=200, color_system=None))
    assert not (out / "frontier.json").exists()
    assert not (out / "plots" / "frontier_methods.png").exists()
    html = (out / "report.html").read_text()
    assert "Frontier at matched KL" not in html
    assert "frontier:" not in buf.getvalue()


def test_plan_without_baselines(tmp_path):
    out = make_frontier_out(tmp_path)
    plan = json.loads((out / "frontier_plan.json").read_text())
    plan["baselines"] = {}
    (out / "frontier_plan.json").write_text(json.dumps(plan))
    res = analyze_frontier(out)
    assert res["none"] is None and res["none_early"] == {}
    up = res["methods"]["up"]
    assert up["verdict"]["label"] == "no none baseline" and up["points"][0]["lift"] is None
    assert up["matched"]["2.5"]["vs_kl"] is None and up["matched"]["2.5"]["vs_none_early"] is None
    assert up["matched"]["2.5"]["mean"] == pytest.approx(0.91)
    # Without none's point, up's envelope starts at its own first point.
    assert max(up["envelope"]["kl"]) == pytest.approx(2.2) and up["envelope"]["gold"][-1] == pytest.approx(0.91)
    md = frontier_markdown(res)
    assert "none stopped early" not in md and "− kl" not in md
    assert len(plot_frontier(out, res)) == 2


def test_error_bars_are_the_intervals_halves_and_none_for_a_one_unit_point():
    # A point that one seed reached (n = 1: lo and hi None) failed the frontier plot of `compare --seeds 2`.
    cis = [{"mean": 0.5, "lo": 0.4, "hi": 0.7, "n": 3}, {"mean": 0.2, "lo": None, "hi": None, "n": 1},
           {"mean": 0.1, "lo": 0.15, "hi": 0.3, "n": 2}]  # fmt: skip
    assert error_bars(cis) == pytest.approx(np.array([[0.1, 0.0, 0.0], [0.2, 0.0, 0.2]]))


def test_one_seed_frontier_report(tmp_path):
    # `overopt compare --seeds 1` (the lab-replicate shape: one RL seed per lab) failed in the frontier plot:
    # with one seed no point has a KL interval, and the axis's extent took the intervals' upper ends.
    out = make_frontier_out(tmp_path)
    for seed in (1, 2):
        for run in (out / "runs").iterdir():
            shutil.rmtree(run / f"seed{seed}")
    plan = json.loads((out / "frontier_plan.json").read_text())
    (out / "frontier_plan.json").write_text(json.dumps(dict(plan, seeds=[0])))
    build_report(out, console=Console(file=io.StringIO(), width=200, color_system=None))
    res = json.loads((out / "frontier.json").read_text())
    assert all(p["n"] == 1 and p["kl"]["hi"] is None for m in res["methods"].values() for p in m["points"])
    for name in ("frontier_methods.png", "matched_kl.png"):
        assert (out / "plots" / name).read_bytes()[:8] == PNG_MAGIC
