"""Tests for overopt.report.mechanisms on hand-made metrics rows (no torch)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from overopt.report import build_report, load_runs
from overopt.report.mechanisms import MECH_KEYS, mechanism_verdicts, pearson, plot_mechanisms, run_mechanisms
from overopt.report.summary import build_summary

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_pearson_matches_numpy():
    rng = np.random.default_rng(3)
    x = rng.normal(size=20)
    y = 0.5 * x + rng.normal(size=20)
    assert pearson(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1])
    assert pearson(x, -2 * x + 1) == pytest.approx(-1.0)
    # Non-finite or missing pairs are dropped before correlating.
    xs = [1.0, 2.0, None, 3.0, 4.0, float("nan")]
    ys = [2.0, 1.0, 5.0, 4.0, 3.0, 1.0]
    assert pearson(xs, ys) == pytest.approx(np.corrcoef([1, 2, 3, 4], [2, 1, 4, 3])[0, 1])
    assert pearson([1.0, 2.0], [3.0, 4.0]) is None  # fewer than 3 pairs
    assert pearson([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]) is None  # zero variance


def mech_rows(seed: int = 0, ocrm: bool = False) -> list[dict]:
    """Five evaluations: proxy accuracy falls 0.8 → 0.6 while the gradient norm grows; sign flips rise."""
    acc = [0.80, 0.75, 0.70, 0.65, 0.60]
    rows = []
    for i, a in enumerate(acc):
        r = {"step": 10 * i, "gold_reward": 0.1 * i, "proxy_reward": 0.2 * i, "kl_sft": 0.5 * i,
             "mech/proxy_accuracy": a - 0.01 * seed}  # fmt: skip
        if i > 0:
            r.update({"train/grad_norm": 1.0 + i, "mech/sign_flip_rate": 0.1 * i, "mech/sign_flip_mass": 0.05 * i,
                      "mech/radius_auroc": 0.6 + 0.02 * i, "mech/disagreement_error_corr": 0.3})  # fmt: skip
        if ocrm:
            r["ocrm/round"] = 0 if i < 3 else 1
            r["mech/rm0_accuracy"] = a - 0.01 * seed - 0.1
            r["gr/grad_norm"] = 5.0 - i  # preferred over train/grad_norm
        rows.append(r)
    return rows


def test_run_mechanisms_known_values():
    m = run_mechanisms(mech_rows())
    assert list(m) == list(MECH_KEYS)
    # grad norm 2..5 rises exactly as accuracy 0.75..0.60 falls: r = -1.
    assert m["grad_norm_accuracy_corr"] == pytest.approx(-1.0)
    assert m["proxy_accuracy_sft"] == 0.8 and m["proxy_accuracy_final"] == 0.6
    assert m["sign_flip_rate_first"] == pytest.approx(0.1) and m["sign_flip_rate_final"] == pytest.approx(0.4)
    assert m["sign_flip_mass_mean"] == pytest.approx(0.125)
    assert m["radius_auroc_mean"] == pytest.approx(0.65)
    assert m["disagreement_error_corr_mean"] == pytest.approx(0.3)
    assert m["ocrm_refit_gain"] is None

    o = run_mechanisms(mech_rows(ocrm=True))
    assert o["ocrm_refit_gain"] == pytest.approx(0.1)  # rows with round ≥ 1: accuracy − RM_0 accuracy
    assert o["grad_norm_accuracy_corr"] == pytest.approx(1.0)  # gr/grad_norm 4..1 falls with accuracy

    bare = run_mechanisms([{"step": 0, "gold_reward": 0.0}, {"step": 10, "gold_reward": 1.0}])
    assert all(v is None for v in bare.values())


def test_grad_norm_accuracy_correlation_of_changes_removes_the_common_drift():
    # Both series fall with time (levels r > 0), but step to step the norm rises when accuracy falls.
    norms = [10.0, 9.5, 7.0, 6.5, 4.0, 3.5]
    accs = [0.90, 0.70, 0.68, 0.48, 0.46, 0.26]
    rows = [{"step": 0, "mech/proxy_accuracy": 0.9}] + [
        {"step": 10 * (i + 1), "train/grad_norm": n, "mech/proxy_accuracy": a}
        for i, (n, a) in enumerate(zip(norms, accs))
    ]
    m = run_mechanisms(rows)
    assert m["grad_norm_accuracy_corr"] > 0.9
    # changes: norm (-0.5, -2.5, -0.5, -2.5, -0.5), accuracy (-0.20, -0.02, -0.20, -0.02, -0.20): r = -1
    assert m["grad_norm_accuracy_corr_diff"] == pytest.approx(-1.0)


def make_out(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    for name, ocrm in (("none", False), ("ocrm", True)):
        for seed in (0, 1, 2):
            d = out / "runs" / name / f"seed{seed}"
            d.mkdir(parents=True)
            (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in mech_rows(seed, ocrm)))
    return out


def test_summary_gets_mech(tmp_path):
    out = make_out(tmp_path)
    s = build_summary(out)
    seed = s["methods"]["none"]["seeds"][1]
    assert seed["mech"]["proxy_accuracy_sft"] == pytest.approx(0.79)
    mech = s["methods"]["ocrm"]["mech"]
    assert set(mech) == set(MECH_KEYS)
    assert mech["ocrm_refit_gain"] == {"mean": pytest.approx(0.1), "std": pytest.approx(0.0), "n": 3}
    assert s["methods"]["none"]["mech"]["ocrm_refit_gain"] == {"mean": None, "std": None, "n": 0}


def test_mechanism_verdicts(tmp_path):
    out = make_out(tmp_path)
    items = {v["claim"]: v for v in mechanism_verdicts(build_summary(out))}
    assert list(items) == ["ocrm", "signcert", "gr", "ensemble"]
    o = items["ocrm"]
    # none's seeds: 0.80 − 0.01 s → 0.60 − 0.01 s; the change is −0.2 at every seed.
    assert o["numbers"]["change"] == {"mean": pytest.approx(-0.2), "lo": pytest.approx(-0.2),
                                      "hi": pytest.approx(-0.2), "n": 3}  # fmt: skip
    assert o["numbers"]["accuracy_sft"]["mean"] == pytest.approx(0.79)
    assert o["numbers"]["refit_gain"]["mean"] == pytest.approx(0.1) and o["numbers"]["refit_gain"]["n"] == 3
    assert o["status"] == "supported"
    assert "0.790 [0.765, 0.815] at SFT" in o["verdict"] and "+0.100" in o["verdict"]
    sc = items["signcert"]
    assert sc["numbers"]["change"]["mean"] == pytest.approx(0.3) and sc["status"] == "supported"
    assert sc["numbers"]["radius_auroc"]["mean"] == pytest.approx(0.65) and sc["numbers"]["radius_auroc"]["n"] == 6
    gr = items["gr"]
    # none: r = -1 (train/grad_norm rises), ocrm: r = +1 (gr/grad_norm falls): mean 0 over 6 runs.
    assert gr["numbers"]["corr"]["mean"] == pytest.approx(0.0) and gr["status"] == "no clear relation"
    assert gr["numbers"]["corr"]["lo"] < 0 < gr["numbers"]["corr"]["hi"]
    ens = items["ensemble"]
    assert ens["numbers"]["corr"]["mean"] == pytest.approx(0.3) and ens["status"] == "supported"
    assert "+0.300" in ens["verdict"]


def test_verdicts_skip_claims_without_data():
    summary = {"methods": {"kl": {"seeds": [{"seed": 0, "mech": run_mechanisms([{"step": 0}, {"step": 1}])}]}}}
    assert mechanism_verdicts(summary) == []
    assert mechanism_verdicts({"methods": {}}) == []


def test_plots_and_report_section(tmp_path):
    out = make_out(tmp_path)
    paths = plot_mechanisms(out, load_runs(out))
    assert [p.name for p in paths] == ["mech_accuracy.png", "mech_sign_flips.png", "mech_grad_norm.png",
                                       "mech_disagreement.png"]  # fmt: skip
    for p in paths:
        assert p.read_bytes()[:8] == PNG_MAGIC
    build_report(out, console=Console(file=io.StringIO(), width=200))
    html = (out / "report.html").read_text()
    assert "<h2>Mechanisms</h2>" in html
    assert "OCRM — the RM gets worse off-policy: supported" in html
    assert "Ensembles — disagreement marks error: supported" in html
    assert "Frontier at matched KL" not in html
    # 4 standard plots (one frontier.png) + 4 mechanism plots + early warning.
    assert html.count('src="data:image/png;base64,') == 9
    # Rows without mech/* keys: no section, no plots.
    assert plot_mechanisms(out, {"none": {0: [{"step": 0, "gold_reward": 0.0}]}}) == []


def test_report_never_imports_torch(tmp_path):
    """The whole report (frontier + mechanisms included) runs without torch/transformers."""
    import subprocess
    import sys

    out = make_out(tmp_path)
    code = (
        "import sys; from overopt.report import build_report; from overopt.report import frontier, mechanisms; "
        f"build_report({str(out)!r}); bad = [m for m in ('torch', 'transformers') if m in sys.modules]; "
        "sys.exit(f'imported {bad}' if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
