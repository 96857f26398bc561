"""Tests for overopt.report on a synthetic output directory (no torch)."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from overopt.report import build_report, hacking_check, load_runs
from overopt.report.plots import grid_keys, plot_all
from overopt.report.summary import build_summary, mean_std, order_methods
from overopt.report.table import format_mean_std

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
STEPS = list(range(0, 110, 10))  # 11 evaluations, step 0 = SFT policy

# Gold curves (hand-made). "none" rises then falls (hacked); "kl" rises and plateaus.
GOLD = {
    ("none", 0): [0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 0.8, 0.6, 0.4, 0.3, 0.2],  # peak 1.0 @ 50, final 0.2
    ("none", 1): [0.1, 0.4, 0.8, 1.0, 1.2, 1.0, 0.8, 0.6, 0.5, 0.4, 0.3],  # peak 1.2 @ 40, final 0.3
    ("kl", 0): [0.0, 0.2, 0.4, 0.5, 0.55, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6],  # peak 0.6 @ 50, final 0.6
    ("kl", 1): [0.1, 0.3, 0.45, 0.55, 0.6, 0.62, 0.61, 0.6, 0.6, 0.6, 0.6],  # peak 0.62 @ 50, final 0.6
}
PROXY_SLOPE = {"none": 0.03, "kl": 0.01}
KL_SLOPE = {"none": 0.5, "kl": 0.1}


def _rows(method: str, seed: int) -> list[dict]:
    rows = []
    for i, step in enumerate(STEPS):
        row = {
            "step": step,
            "proxy_reward": 0.1 * seed + PROXY_SLOPE[method] * step,
            "gold_reward": GOLD[(method, seed)][i],
            "kl_sft": KL_SLOPE[method] * i * (1 + 0.1 * seed),
            "entropy": 2.0 - 0.1 * i,
            "mean_length": 20 + i + seed,
            "wall_s": 3.0 * i + seed,
            "train/loss": 1.0 / (i + 1),
        }
        if method == "kl":
            row["kl/coef"] = 0.05
        rows.append(row)
    return rows


def make_out(tmp_path: Path, samples: bool = True, stages: bool = True) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.yaml").write_text(
        yaml.safe_dump({"testbed": "toy", "preset": "tiny", "methods": "none,kl", "seeds": 2, "rm": {"epochs": 1}}),
        encoding="utf-8",
    )
    if stages:
        for name, metrics in (
            ("sft", {"train_loss": 1.5, "eval_loss": 1.7}),
            ("pairs", {"n_pairs": 512, "gold_margin_mean": 0.4}),
            ("rm", {"train_accuracy": 0.91, "heldout_accuracy": 0.78}),
        ):
            d = out / "artifacts" / name
            d.mkdir(parents=True)
            (d / "stage.json").write_text(json.dumps({"stage": name, "wall_s": 12.5, "metrics": metrics}))
    for method in ("none", "kl"):
        for seed in (0, 1):
            d = out / "runs" / method / f"seed{seed}"
            d.mkdir(parents=True)
            rows = _rows(method, seed)
            (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            if samples:
                entries = [
                    {
                        "step": 0,
                        "samples": [
                            {
                                "prompt": "Write <b>bold</b> & co",
                                "completion": f"sft answer {method} <b>x</b>",
                                "gold_reward": 0.1,
                                "proxy_reward": 0.2,
                            },
                            {"prompt": "Second prompt", "completion": "plain", "gold_reward": 0.0, "proxy_reward": 0.1},
                        ],
                    },
                    {
                        "step": 50,
                        "samples": [{"prompt": "p", "completion": "MIDSTEP", "gold_reward": 0.5, "proxy_reward": 0.6}],
                    },
                    {
                        "step": 100,
                        "samples": [
                            {
                                "prompt": "Write <b>bold</b> & co",
                                "completion": f"FINAL {method} !!!!",
                                "gold_reward": -0.3,
                                "proxy_reward": 2.5,
                            },
                        ],
                    },
                ]
                (d / "samples.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))
    return out


def _quiet_console() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, width=200, color_system=None), buf


def test_build_report_end_to_end(tmp_path):
    out = make_out(tmp_path)
    console, buf = _quiet_console()
    summary = build_report(out, console=console)

    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["testbed"] == "toy" and on_disk["preset"] == "tiny"
    assert list(on_disk["methods"]) == ["none", "kl"]  # config order
    # SFT = mean over the 4 runs' step-0 rows.
    assert on_disk["sft"]["gold_reward"] == pytest.approx((0.0 + 0.1 + 0.0 + 0.1) / 4)
    assert on_disk["sft"]["proxy_reward"] == pytest.approx((0.0 + 0.1 + 0.0 + 0.1) / 4)
    assert on_disk["stages"]["rm"]["metrics"]["heldout_accuracy"] == 0.78
    assert list(on_disk["stages"]) == ["sft", "pairs", "rm"]

    for m in on_disk["methods"].values():
        for key in ("gold_final", "gold_peak", "proxy_final", "kl_final", "wall_s", "gold_peak_step"):
            assert set(m[key]) >= {"mean", "std", "n"}
            assert m[key]["n"] == 2
            assert isinstance(m[key]["mean"], float) and isinstance(m[key]["std"], float)
        assert isinstance(m["hacked_seeds"], int)
        assert len(m["seeds"]) == 2
        for s in m["seeds"]:
            for key in (
                "gold_final",
                "gold_peak",
                "gold_peak_step",
                "proxy_final",
                "kl_final",
                "wall_s",
                "rose",
                "drop_frac",
                "proxy_rose_after_peak",
                "hacked",
            ):
                assert key in s

    none, kl = on_disk["methods"]["none"], on_disk["methods"]["kl"]
    # gold_final: none = {0.2, 0.3} -> mean 0.25, ddof=1 std = sqrt(2 * 0.05^2 / 1)
    assert none["gold_final"]["mean"] == pytest.approx(0.25)
    assert none["gold_final"]["std"] == pytest.approx(math.sqrt(2 * 0.05**2))
    assert none["gold_peak"]["mean"] == pytest.approx(1.1)
    assert none["gold_peak"]["std"] == pytest.approx(math.sqrt(2 * 0.1**2))
    assert none["gold_peak_step"]["mean"] == pytest.approx(45.0)
    assert none["gold_peak_step"]["std"] == pytest.approx(math.sqrt(2 * 5.0**2))
    # proxy_final = 0.1*seed + 0.03*100 -> {3.0, 3.1}; kl_final = 0.5*10*(1+0.1 seed) -> {5.0, 5.5}
    assert none["proxy_final"]["mean"] == pytest.approx(3.05)
    assert none["kl_final"]["mean"] == pytest.approx(5.25)
    assert none["kl_final"]["std"] == pytest.approx(math.sqrt(2 * 0.25**2))
    # wall_s = last row's wall_s = 30 + seed
    assert none["wall_s"]["mean"] == pytest.approx(30.5)
    assert kl["gold_final"]["mean"] == pytest.approx(0.6)
    assert kl["gold_final"]["std"] == pytest.approx(0.0)
    assert kl["gold_peak"]["mean"] == pytest.approx(0.61)

    assert none["hacked_seeds"] == 2
    assert kl["hacked_seeds"] == 0
    s0 = none["seeds"][0]
    assert s0["seed"] == 0 and s0["gold_peak_step"] == 50
    assert s0["drop_frac"] == pytest.approx((1.0 - 0.2) / (1.0 - 0.0))
    assert summary["methods"]["none"]["hacked_seeds"] == 2  # returned dict matches

    # Plots: every png exists and is a real PNG.
    for name in ("rewards_vs_step.png", "gold_vs_kl.png", "metrics_grid.png", "frontier.png"):
        p = out / "plots" / name
        assert p.is_file()
        assert p.read_bytes()[:8] == PNG_MAGIC

    html = (out / "report.html").read_text()
    assert html.startswith("<!DOCTYPE html>")
    assert "none" in html and "kl" in html
    assert html.count('src="data:image/png;base64,') == 5  # 4 standard plots + early warning
    assert "<h2>Early warning</h2>" in html and (out / "plots" / "early_warning.png").read_bytes()[:8] == PNG_MAGIC
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; co" in html
    assert "sft answer none &lt;b&gt;x&lt;/b&gt;" in html
    assert "<b>bold</b>" not in html and "<b>x</b>" not in html
    assert "FINAL kl !!!!" in html
    assert "MIDSTEP" not in html  # only step 0 and the final step are shown
    assert "<script" not in html and "http://" not in html and "https://" not in html
    assert "Resolved config" in html and "testbed: toy" in html
    assert "0.780" in html  # RM held-out accuracy
    assert "2/2" in html and "0/2" in html

    text = buf.getvalue()
    assert "none" in text and "kl" in text and "2/2" in text and "0/2" in text
    assert "±" in text and "held-out" in text


def test_missing_samples_and_stages_tolerated(tmp_path):
    out = make_out(tmp_path, samples=False, stages=False)
    (out / "config.yaml").unlink()
    console, _ = _quiet_console()
    summary = build_report(out, console=console)
    assert summary["stages"] == {}
    assert summary["testbed"] == "unknown"
    assert list(summary["methods"]) == ["kl", "none"]  # no config: alphabetical
    html = (out / "report.html").read_text()
    assert "Example completions" not in html
    assert (out / "summary.json").is_file()


def test_malformed_metrics_line_names_file(tmp_path):
    out = make_out(tmp_path, samples=False, stages=False)
    bad = out / "runs" / "kl" / "seed1" / "metrics.jsonl"
    lines = bad.read_text().splitlines()
    lines[2] = '{"step": 20, "gold_reward": '
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"metrics\.jsonl:3"):
        load_runs(out)
    with pytest.raises(ValueError, match=str(bad).replace("\\", "\\\\")):
        build_report(out, console=_quiet_console()[0])


def test_no_runs_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        build_report(tmp_path / "nope")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(FileNotFoundError, match="runs/"):
        build_report(out)
    (out / "runs" / "none" / "seed0").mkdir(parents=True)
    with pytest.raises(FileNotFoundError):
        build_report(out)
    (out / "runs" / "none" / "seed0" / "metrics.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        build_report(out)


def test_load_runs_skips_empty_and_orders_seeds(tmp_path):
    out = make_out(tmp_path, samples=False, stages=False)
    (out / "runs" / "kl" / "seed1" / "metrics.jsonl").write_text("")
    (out / "runs" / "kl" / "notaseed").mkdir()
    (out / "runs" / "none" / "seed10").mkdir()
    (out / "runs" / "none" / "seed10" / "metrics.jsonl").write_text(json.dumps(_rows("none", 0)[0]) + "\n")
    runs = load_runs(out)
    assert list(runs["kl"]) == [0]
    assert list(runs["none"]) == [0, 1, 10]
    s = build_summary(out, runs=runs)
    assert s["methods"]["kl"]["gold_final"]["n"] == 1
    assert s["methods"]["kl"]["gold_final"]["std"] == 0.0  # n == 1 -> 0.0


def test_hacking_check_cases():
    def rows(gold, proxy):
        return [{"step": 10 * i, "gold_reward": g, "proxy_reward": p} for i, (g, p) in enumerate(zip(gold, proxy))]

    r = hacking_check(rows([0.0, 1.0, 0.5], [0.0, 1.0, 2.0]))
    assert r["rose"] and r["drop_frac"] == pytest.approx(0.5) and r["proxy_rose_after_peak"] and r["hacked"]
    assert r["gold_peak_step"] == 10 and r["gain"] == pytest.approx(1.0) and r["drop"] == pytest.approx(0.5)
    # Proxy fell too after the gold peak: not hacking (just a bad update).
    assert not hacking_check(rows([0.0, 1.0, 0.5], [0.0, 1.0, 0.9]))["hacked"]
    # Drop below threshold.
    r = hacking_check(rows([0.0, 1.0, 0.75], [0.0, 1.0, 2.0]))
    assert r["drop_frac"] == pytest.approx(0.25) and not r["hacked"]
    assert hacking_check(rows([0.0, 1.0, 0.75], [0.0, 1.0, 2.0]), min_drop_frac=0.25)["hacked"]
    # Gold never rose: drop_frac None.
    r = hacking_check(rows([0.5, 0.4, 0.3], [0.0, 1.0, 2.0]))
    assert not r["rose"] and r["drop_frac"] is None and not r["hacked"]
    assert r["gain"] == pytest.approx(0.0)
    # Peak at the end: nothing to drop, proxy cannot rise after.
    r = hacking_check(rows([0.0, 0.5, 1.0], [0.0, 1.0, 2.0]))
    assert r["drop_frac"] == pytest.approx(0.0) and not r["proxy_rose_after_peak"] and not r["hacked"]
    with pytest.raises(ValueError):
        hacking_check([])


def test_helpers():
    assert mean_std([1.0]) == {"mean": 1.0, "std": 0.0, "n": 1}
    d = mean_std([1.0, 2.0, 3.0, float("nan"), None])
    assert d["n"] == 3 and d["mean"] == pytest.approx(2.0) and d["std"] == pytest.approx(1.0)
    assert mean_std([])["n"] == 0
    assert format_mean_std({"mean": 0.25, "std": 0.0707, "n": 2}) == "0.250 ± 0.071"
    assert format_mean_std({"mean": 12.34, "std": 1.0, "n": 2}, digits=1) == "12.3 ± 1.0"
    assert format_mean_std({"mean": None, "std": None, "n": 0}) == "–"
    assert order_methods(["zeta", "kl", "ocrm+kl", "none"], {"methods": "none, ocrm+kl,missing"}) == [
        "none",
        "ocrm+kl",
        "kl",
        "zeta",
    ]


def test_grid_keys_and_single_seed_plots(tmp_path):
    out = make_out(tmp_path, samples=False, stages=False)
    runs = load_runs(out)
    keys = grid_keys(runs)
    assert keys[:3] == ["kl_sft", "entropy", "mean_length"]
    assert "train/loss" in keys and "kl/coef" not in keys and keys[-1] == "wall_s"
    assert "gold_reward" not in keys and "step" not in keys
    single = {"kl": {0: runs["kl"][0]}}
    paths = plot_all(out, single)
    assert [p.name for p in paths] == ["rewards_vs_step.png", "gold_vs_kl.png", "metrics_grid.png"]
    assert plot_all(out, {}) == []


def test_sweep_variants_follow_their_method_in_sweep_order():
    from overopt.report.summary import order_methods

    config = {"methods": "none,kl", "sweep": "rl.kl.coef=0.5,0.05"}
    names = ["kl@rl.kl.coef=0.05", "none@rl.kl.coef=0.5", "kl@rl.kl.coef=0.5", "none@rl.kl.coef=0.05", "extra"]
    assert order_methods(names, config) == [
        "none@rl.kl.coef=0.5",
        "none@rl.kl.coef=0.05",
        "kl@rl.kl.coef=0.5",
        "kl@rl.kl.coef=0.05",
        "extra",
    ]


def test_fit_rows_say_when_there_is_no_fit_no_peak_or_a_peak_beyond_the_data():
    from overopt.report.table import FIT_HEADER, fit_row

    base = {"form": "rl", "alpha": 0.2, "beta": 0.25, "r2": 0.99, "d_max": 3.0, "error": None,
            "ci": {"alpha": [0.19, 0.21], "beta": None}, "forecast": {"error": "too few points"}}  # fmt: skip
    row = fit_row("none", {**base, "d_peak": 0.72, "gold_peak": 0.18})
    assert len(row) == len(FIT_HEADER) and row[2] == "0.200 [0.190, 0.210]" and row[3] == "0.250"
    assert row[5] == "0.72 (0.180)" and row[6] == "– (too few points)"
    assert fit_row("none", {**base, "d_peak": None, "gold_peak": None})[5] == "no peak (β ≤ 0)"
    assert fit_row("dpo", {**base, "d_peak": 3.5e5, "gold_peak": 4e3})[5].startswith("beyond the data")
    far = {"error": None, "d_peak": 6165.9, "d_peak_error": 6164.0, "gold_peak_error": 130.8}
    assert fit_row("kl", {**base, "d_peak": 2.3, "forecast": far})[6] == "beyond the data (d* 6.17e+03)"
    assert "no fit: fit rl: every d is 0" in fit_row("x", {"form": "rl", "error": "fit rl: every d is 0"})[2]
