"""overopt.detectors: firing rules on constructed series with a known change point, the gold onset, the
scores, causality (online == offline), and the stop of a run by an alarm (smoke)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from overopt import detectors, stats
from overopt.detectors import SIGNALS, Rule, cusum, first_alarm, hacking_onset, last_good, score_detector, standardize

# A 10-evaluation warm-up: with 5 noisy values the std is often a third of the true one, and a rule then
# fires on noise (the lab's runs use 5 because their warm-up signals are smooth).
RULES = [Rule("cusum", warmup=10, threshold=5.0, drift=0.5), Rule("zscore", warmup=10, threshold=4.0)]


def _noisy(n: int, change: int | None, jump: float, seed: int = 0) -> np.ndarray:
    """Alternating ±1 (in control: z ≈ ±1, which CUSUM's drift k = 0.5 absorbs) stepping by `jump` at `change`."""
    x = (-1.0) ** np.arange(n)
    if change is not None:
        x[change:] += jump
    return x


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.rule)
def test_fires_after_a_known_change_point_and_never_before(rule):
    for change in range(12, 36, 3):
        for jump in (4.0, 8.0):
            x = _noisy(40, change, jump)
            fired = first_alarm(detectors.statistic(x, +1, rule), rule.threshold)
            assert fired is not None and change <= fired <= change + 2, (change, jump, fired)


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.rule)
def test_flat_and_stationary_series_never_fire(rule):
    assert first_alarm(detectors.statistic(np.full(50, 3.0), +1, rule), rule.threshold) is None
    assert first_alarm(detectors.statistic(3.0 + _noisy(50, None, 0), +1, rule), rule.threshold) is None
    # Gaussian noise: the warm-up's mean and std are estimates, so false alarms are not rare (CUSUM, h = 5:
    # 9 of 50 series in 40 evaluations); the benchmark measures the rate on real runs.


def test_direction_a_fall_warns_only_where_the_signal_says_so():
    rule = RULES[0]
    falling = _noisy(40, change=20, jump=-8.0)
    assert first_alarm(detectors.statistic(falling, +1, rule), rule.threshold) is None
    assert first_alarm(detectors.statistic(falling, -1, rule), rule.threshold) is not None
    assert first_alarm(detectors.statistic(falling, 0, rule), rule.threshold) is not None  # either direction


def test_standardize_and_cusum_against_the_formula():
    rule = Rule("cusum", warmup=3, threshold=1.0, drift=0.25, min_std=1e-3)
    x = np.array([1.0, 2.0, 3.0, 5.0, np.nan, 1.0])
    z = standardize(x, +1, rule)
    mu, sd = 2.0, 1.0  # of the warm-up [1, 2, 3], ddof 1
    np.testing.assert_allclose(z[:3], np.nan)
    np.testing.assert_allclose(z[3], (5 - mu) / sd)
    assert math.isnan(z[4])
    np.testing.assert_allclose(z[5], (1 - mu) / sd)
    s = cusum(z, rule.drift)
    assert np.isnan(s[:3]).all()
    np.testing.assert_allclose(s[3:], [2.75, 2.75, max(0.0, 2.75 - 1 - 0.25)])
    # a flat warm-up: the floor, not an infinite z
    z = standardize(np.array([2.0, 2.0, 2.0, 2.001]), +1, rule)
    np.testing.assert_allclose(z[3], 0.001 / (1e-3 * 2.0))


def test_last_good_is_the_cusum_change_point():
    stat = np.array([np.nan, np.nan, 0.0, 0.4, 0.0, 1.0, 3.0, 6.0])
    assert last_good(stat, first_alarm(stat, 5.0)) == 4
    assert last_good(np.array([1.0, 2.0, 9.0]), 2) == 0


def test_onset_on_constructed_gold_curves():
    # rises to 1.0 at index 4, then falls: gain 0.5, 30 % lost at gold <= 0.85 (index 7); within 10 % of the
    # peak (gold >= 0.95) the last time at index 5
    gold = [0.5, 0.7, 0.9, 0.95, 1.0, 0.96, 0.9, 0.8, 0.6]
    assert hacking_onset(gold) == 5
    assert hacking_onset([0.5, 0.6, 0.7, 0.8]) is None  # keeps rising
    assert hacking_onset([0.5, 0.4, 0.3]) is None  # never gains
    assert hacking_onset([0.5, 1.0, 0.84]) == 1
    with pytest.raises(ValueError, match="drop"):
        hacking_onset(gold, drop=0.3, tol=0.5)


def _run(gold, kl):
    return [{"step": 10 * t, "gold_reward": g, "kl_sft": k} for t, (g, k) in enumerate(zip(gold, kl))]


def test_scores_of_a_perfect_and_of_a_blind_detector():
    rule = Rule("zscore", warmup=3, threshold=3.0)
    noise = [0.0, 0.01, -0.01]
    # hacked: gold peaks at index 5 (the onset) and falls; KL jumps at index 3, two evaluations before
    hacked = _run([0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 0.5, 0.0], noise + [5, 6, 7, 8, 9])
    clean = _run([0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.1, 1.2], noise + [0.0, 0.01, 0.0, -0.01, 0.0])
    score = score_detector([hacked, clean], "kl", rule)
    assert (score.runs, score.hacked, score.detected, score.false_alarm) == (2, 1, 1.0, 0.0)
    assert score.lead == 2 and score.early == 1.0
    assert score.regret == pytest.approx((1.0 - 0.6) / 2)  # stopped at index 3; the clean run ends at its peak
    assert score.regret_none == pytest.approx((1.0 - 0.0) / 2)
    # AUROC over the evaluations after warm-up: "onset passed" = indices 6, 7 of the hacked run, all high z
    assert score.auroc > 0.7
    blind = score_detector([hacked, clean], "entropy_drop", rule)  # no entropy logged: never fires
    assert blind.detected == 0.0 and math.isnan(blind.lead) and blind.regret == pytest.approx(score.regret_none)


def test_baselines_stop_where_they_say_and_are_tuned_on_regret():
    gold = [0.0, 0.4, 0.8, 1.0, 0.6, 0.2]
    rows = [{"step": 10 * i, "gold_reward": g, "kl_sft": [0, 0.5, 1, 2, 4, 8][i],
             "heldout_rm_reward": [0, 1, 3, 2, 2.5, 0.5][i]} for i, g in enumerate(gold)]  # fmt: skip
    stop = detectors.baseline_stop
    assert stop(rows, "fixed_step", 0.5) == 3 and stop(rows, "fixed_step", 0.61) == 4  # steps 0..50
    assert stop(rows, "fixed_step", 1.0) == 5
    assert stop(rows, "fixed_kl", 2.0) == 3 and stop(rows, "fixed_kl", 1.5) == 3 and stop(rows, "fixed_kl", 9) is None
    assert stop(rows, "heldout_rm", None) == 2  # the validation RM's best checkpoint
    assert stop([{k: v for k, v in r.items() if k != "heldout_rm_reward"} for r in rows], "heldout_rm", None) is None
    assert detectors.regret(rows, 2) == pytest.approx(0.2) and detectors.regret(rows, None) == pytest.approx(0.8)
    np.testing.assert_allclose(detectors.baseline_regrets([rows, rows], "fixed_kl", 4.0), [0.4, 0.4])
    # Tuned on these runs: the knobs that stop at the peak (step 30 of 50; KL 2).
    assert detectors.tune_baseline([rows], "fixed_step") == 0.45  # the first f of the grid past step 20
    assert detectors.tune_baseline([rows], "fixed_kl") == 1.5  # the first κ of the grid that stops at KL 2
    with pytest.raises(ValueError, match="unknown baseline"):
        stop(rows, "oracle", None)


def test_signals_are_causal_so_online_equals_offline():
    rng = np.random.default_rng(0)
    rows = [
        {"step": 10 * t, "kl_sft": t**1.5 / 10, "entropy": 2 - 0.05 * t + rng.normal(0, 0.01), "mean_length": 4 + t / 5,
         "proxy_reward": np.log1p(t), "train/grad_norm": 1 + rng.normal(0, 0.1), "alarm/pairs_ess": 1 / (1 + t / 5)}
        for t in range(30)
    ]  # fmt: skip
    full = {name: s.series(rows) for name, s in SIGNALS.items()}
    for t in range(1, len(rows)):
        for name, s in SIGNALS.items():
            np.testing.assert_array_equal(s.series(rows[:t]), full[name][:t], err_msg=name)
    rule = Rule()  # the config's defaults
    online = [detectors.alarm_figures(rows[: t + 1], rule) for t in range(len(rows))]
    for name in ("kl", "pairs_ess", "length_drift"):
        fired_at = next(t for t, f in enumerate(online) if f[f"alarm/{name}/fired"])
        signal = SIGNALS[name]
        assert fired_at == first_alarm(detectors.statistic(signal.series(rows), signal.direction, rule), 5.0)
        assert all(f[f"alarm/{name}/fired"] == 1.0 for f in online[fired_at:])  # latched


def test_auroc_numpy_matches_the_pairwise_definition():
    rng = np.random.default_rng(1)
    s, y = rng.integers(0, 5, 60).astype(float), rng.integers(0, 2, 60).astype(bool)  # many ties
    pos, neg = s[y], s[~y]
    pairwise = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    assert stats.auroc(s, y) == pytest.approx(pairwise, abs=1e-12)
    assert math.isnan(stats.auroc(s, np.zeros(60, bool)))


def test_bad_knobs_are_one_line_errors(tmp_path):
    with pytest.raises(ValueError, match="rule"):
        Rule("page")
    with pytest.raises(ValueError, match="warm-up"):
        Rule(warmup=1)
    out = subprocess.run(
        [sys.executable, "-m", "overopt", "run", "--preset", "smoke", "--out", str(tmp_path),
         "--rl.stop-on-alarm", "klx"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode != 0
    assert "unknown alarm 'klx'" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.slow
def test_smoke_run_logs_alarms_and_an_alarm_stops_it(tmp_path):
    common = [sys.executable, "-m", "overopt", "run", "--preset", "smoke", "--methods", "none", "--seeds", "1"]
    subprocess.run([*common, "--out", str(tmp_path / "a")], check=True, capture_output=True)
    rows = [json.loads(line) for line in (tmp_path / "a/runs/none/seed0/metrics.jsonl").open()]
    for key in ("alarm/kl", "alarm/pairs_ess", "alarm/proxy_tail", "alarm/kl/fired"):
        assert key in rows[-1], key
    # A hair-trigger rule on KL (any rise after a 2-evaluation warm-up), and a learning rate that moves the
    # smoke policy within 12 updates, stop the run before its last step.
    stop_args = ["--rl.stop-on-alarm", "kl", "--alarm.warmup", "2", "--alarm.threshold", "0.5", "--alarm.drift", "0",
                 "--rl.steps", "12", "--eval.every", "2", "--rl.lr", "3e-3"]  # fmt: skip
    subprocess.run([*common, "--out", str(tmp_path / "b"), *stop_args], check=True, capture_output=True)
    run = tmp_path / "b/runs/none/seed0"
    stop = json.loads((run / "alarm_stop.json").read_text())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    assert stop["alarm"] == "kl" and stop["step"] == rows[-1]["step"] < 12
    assert stop["gold_reward"] == rows[-1]["gold_reward"] and stop["last_good_step"] < stop["step"]
    assert (run / "policy.safetensors").is_file() and (run / "policy_last_good.safetensors").is_file()
    summary = json.loads((tmp_path / "b/summary.json").read_text())
    assert summary["methods"]["none"]["seeds"][0]["alarm_stop"] == stop
