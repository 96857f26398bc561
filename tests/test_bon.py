"""Best-of-n as a method and the functional-form fits in the run's summary and report (Gao et al., arXiv 2210.10760)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from overopt.cli import main
from overopt.config import EvalConfig, RLConfig, load_config
from overopt.laws import kl_bon_bound
from overopt.report.summary import method_fit


@pytest.fixture(scope="module")
def bon_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("bon") / "out"
    main(["run", "--preset", "smoke", "--methods", "none,bon", "--seeds", "2", "--out", str(out)])
    return out


def _rows(out, method, seed=0):
    return [json.loads(line) for line in (out / "runs" / method / f"seed{seed}" / "metrics.jsonl").open()]


def test_bon_writes_one_row_per_n_from_its_samples(bon_out):
    for seed in (0, 1):
        rows = _rows(bon_out, "bon", seed)
        assert [r["n"] for r in rows] == [r["step"] for r in rows] == [1, 2, 3, 4, 6, 8, 11, 16]  # smoke: N = 16
        scores = np.load(bon_out / "runs" / "bon" / f"seed{seed}" / "bon_scores.npz")
        proxy, gold = scores["proxy_reward"], scores["gold_reward"]
        assert proxy.shape == gold.shape == (32, 16)  # eval prompts × N
        # n = 1 is the plain mean of the samples, n = N the sample the proxy likes best, per prompt.
        assert rows[0]["gold_reward"] == pytest.approx(gold.mean(), abs=1e-12)
        best = proxy.argmax(1)
        assert rows[-1]["gold_reward"] == pytest.approx(gold[np.arange(32), best].mean(), abs=1e-12)
        assert rows[-1]["proxy_reward"] == pytest.approx(proxy.max(1).mean(), abs=1e-12)
        # The expected best of n never falls as n grows; the closed-form KL bounds the plug-in estimate.
        assert np.all(np.diff([r["proxy_reward"] for r in rows]) >= -1e-12)
        for r in rows:
            assert r["kl_sft"] == pytest.approx(kl_bon_bound(r["n"]))
            assert 0 <= r["kl_sft_plugin"] <= r["kl_sft"] + 1e-9
            assert {"gold/coverage", "mean_length", "eos_rate"} <= r.keys()
    assert _rows(bon_out, "bon", 0) != _rows(bon_out, "bon", 1)  # each seed draws its own samples


def test_summary_has_a_fit_for_every_method_and_the_report_shows_it(bon_out):
    summary = json.loads((bon_out / "summary.json").read_text())
    for method, form in (("none", "rl"), ("bon", "bon")):
        fit = summary["methods"][method]["fit"]
        assert fit["form"] == form and fit["error"] is None
        assert fit["n_seeds"] == 2 and fit["n_points"] == 2 * len(_rows(bon_out, method))
        assert {"alpha", "beta", "r2", "d_peak", "gold_peak", "ci", "forecast", "gold_sft"} <= fit.keys()
        assert {"d_peak_error", "observed_d_peak", "error"} <= fit["forecast"].keys()
    html = (bon_out / "report.html").read_text()
    assert "Functional forms" in html and "d(α − β d)" in html
    assert (bon_out / "plots" / "gold_vs_kl.png").is_file()


def test_method_fit_recovers_a_known_curve_from_rows():
    """The summary's fit reads d = sqrt(kl_sft) and the gain over the first row, per seed."""
    alpha, beta = 1.0, 0.4
    seeds = {}
    for seed, offset in enumerate((0.3, -0.2, 0.1)):  # seeds differ in their SFT level only
        kls = np.linspace(0.0, 9.0, 10)
        d = np.sqrt(kls)
        gold = offset + d * (alpha - beta * d)
        seeds[seed] = [{"step": i, "n": 2**i, "kl_sft": k, "gold_reward": g} for i, (k, g) in enumerate(zip(kls, gold))]
    fit = method_fit(seeds)
    assert fit["form"] == "bon"
    assert fit["alpha"] == pytest.approx(alpha) and fit["beta"] == pytest.approx(beta)
    assert fit["gold_sft"] == pytest.approx(np.mean([0.3, -0.2, 0.1]))
    rl = method_fit(
        {0: [{"step": 0, "kl_sft": -0.01, "gold_reward": 0.0}, {"step": 1, "kl_sft": 1.0, "gold_reward": 0.5}]}
    )
    assert rl["form"] == "rl" and "at least 3 points" in rl["error"]  # a one-line reason, not an exception


def test_bon_runs_ignore_rl_settings_but_not_their_own():
    """A best-of-n run's fingerprint: changing rl.* keeps it (nothing is trained), bon.* or eval.* changes it."""
    from overopt.pipeline import _run_fingerprint, resolve_plans

    def fingerprint(**sections) -> str:
        cfg = load_config("smoke")
        cfg = cfg.model_validate({**cfg.model_dump(), "methods": "bon", **sections})
        plan, variant = resolve_plans(cfg)["bon"]
        return _run_fingerprint("rm", plan, variant, 0)

    base = fingerprint()
    assert fingerprint(rl={**RLConfig().model_dump(), "lr": 0.1}) == base
    assert fingerprint(bon={"n_samples": 8}) != base
    assert fingerprint(eval={**EvalConfig().model_dump(), "n_prompts": 16}) != base
