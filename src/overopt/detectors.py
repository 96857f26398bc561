"""Early warning of reward hacking from signals a practitioner has without gold (docs/results/early-warning.md), and the
gold-side truth they are scored against. Numpy only: the report uses it and never imports torch.

A detector is a *signal* (one number per evaluation, computed from what the run logged up to that
evaluation: causal, so the online value equals the offline one) and a *firing rule* on that signal:

* standardise against the run's own warm-up, z_t = s·(x_t − μ_w)/σ_w, with μ_w, σ_w the mean and std of
  the signal's first `warmup` defined values (σ_w floored at `min_std`·max(1, |μ_w|) so that a flat warm-up does not
  make every later wobble infinite) and s = +1 when a rise warns, −1 when a fall warns (|z| for either);
* then either `zscore` (fire when z_t > h) or `cusum`, Page's one-sided CUSUM (Biometrika 1954)
  S_t = max(0, S_{t−1} + z_t − k), fire when S_t > h. CUSUM is the default: hacking is a persistent drift
  rather than one outlier, and CUSUM is the sequential test that accumulates small persistent shifts
  (it is optimal for detecting a mean shift of size 2k, Lorden 1971); its change-point estimate, the
  last evaluation at which S was 0, is what a roll-back returns to.

Signals (`SIGNALS`; the RM ones are measured at each evaluation by overopt.stages.alarms and logged as
`alarm/<name>`, the trajectory ones are computed here from the logged series):

  kl             KL(π ‖ π_SFT) on the held-out samples
  kl_accel       its second difference between evaluations (KL acceleration)
  entropy        the policy's mean token entropy on the held-out samples; a fall warns
  entropy_drop   the fall of the entropy since the previous evaluation (the rate of collapse)
  length_drift   |mean length − mean length at step 0| / mean length at step 0
  proxy_accel    second difference of the proxy reward (a proxy that speeds up while the policy drifts)
  grad_norm      the last update's gradient norm (GR, arXiv 2602.18037: tied to the RM's accuracy where
                 the policy is); either direction warns
  ensemble_std   mean std of the ensemble members' scores on the current samples (needs an ensemble)
  head_std       the same for `alarm.heads` extra linear heads fitted on the RM's frozen features, each to a
                 bootstrap resample of the RM's own pairs (an ensemble at no extra data, and no extra RM)
  pairs_ess      ESS/N of the importance weights π/π_SFT of the RM's own training pairs (OCRM's weights,
                 arXiv 2507.15507, from log-likelihoods only: how far the policy left the RM's data); a
                 fall warns
  low_radius     share of current samples whose certified sign radius (SignCert-PO, arXiv 2604.02986) is
                 below the 10 % quantile of the SFT samples' radii
  proxy_tail     share of current samples the proxy scores above every SFT sample of step 0

Gold side (`hacking_onset`): with g_0 the SFT gold and P_t the running gold peak, the run hacks at the
first evaluation t_loss where it has lost ≥ `drop` of its gain, g_t ≤ P_t − drop·(P_t − g_0) with
P_t > g_0; the onset is the last evaluation s < t_loss with g_s ≥ P_s − `tol`·(P_{t_loss} − g_0), the last
one still near the peak. A run with no t_loss never hacks. `score_detector` turns onsets and alarms into
lead time, detection and false-alarm rates, AUROC and gold regret.

Baselines (`BASELINES`): a detector used as a stopping rule must beat what a practitioner does without one,
also without gold. `fixed_step` stops at the first evaluation at or past a fraction f of the run's updates;
`fixed_kl` at the first evaluation whose KL to the SFT policy reaches κ; `heldout_rm` keeps the checkpoint
(evaluation) a validation RM scores best, an RM trained on the practitioner's own held-out preference pairs,
which the proxy RM never saw (`heldout_rm_reward`, logged with eval.heldout_rm_prompts). f and κ are tuned
like a detector's rule (`tune_baseline`: least mean regret on other runs); the validation RM has no knob.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from overopt import stats

RULES = ("cusum", "zscore")


def _column(rows: Sequence[Mapping], key: str) -> np.ndarray:
    """(T,) float64 of rows[t][key], NaN where missing or not a finite number."""
    values = [stats.finite_float(row.get(key)) for row in rows]
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def _diff(x: np.ndarray, order: int) -> np.ndarray:
    """Backward difference of the given order, NaN where it needs evaluations before the first."""
    out = x.copy()
    for _ in range(order):
        out = np.concatenate([[np.nan], np.diff(out)])
    return out


def _length_drift(rows: Sequence[Mapping]) -> np.ndarray:
    length = _column(rows, "mean_length")
    return np.abs(length - length[0]) / length[0] if len(length) and length[0] > 0 else np.full(len(rows), np.nan)


@dataclass(frozen=True)
class Signal:
    name: str
    direction: int  # +1: a rise warns, −1: a fall warns, 0: either
    series: Callable[[Sequence[Mapping]], np.ndarray]  # rows -> (T,), element t from rows[: t + 1] only


def _logged(name: str) -> Callable[[Sequence[Mapping]], np.ndarray]:
    return lambda rows: _column(rows, f"alarm/{name}")


SIGNALS: dict[str, Signal] = {
    s.name: s
    for s in (
        Signal("kl", +1, lambda rows: _column(rows, "kl_sft")),
        Signal("kl_accel", +1, lambda rows: _diff(_column(rows, "kl_sft"), 2)),
        Signal("entropy", -1, lambda rows: _column(rows, "entropy")),
        Signal("entropy_drop", +1, lambda rows: -_diff(_column(rows, "entropy"), 1)),
        Signal("length_drift", +1, _length_drift),
        Signal("proxy_accel", +1, lambda rows: _diff(_column(rows, "proxy_reward"), 2)),
        Signal("grad_norm", 0, lambda rows: _column(rows, "train/grad_norm")),
        Signal("ensemble_std", +1, _logged("ensemble_std")),
        Signal("head_std", +1, _logged("head_std")),
        Signal("pairs_ess", -1, _logged("pairs_ess")),
        Signal("low_radius", +1, _logged("low_radius")),
        Signal("proxy_tail", +1, _logged("proxy_tail")),
    )
}


@dataclass(frozen=True)
class Rule:
    """A firing rule (the `alarm` config section's knobs)."""

    rule: str = "cusum"
    warmup: int = 3
    threshold: float = 5.0
    drift: float = 0.5
    min_std: float = 1e-3

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"alarm rule must be one of {', '.join(RULES)}, got {self.rule!r}")
        if self.warmup < 2:
            raise ValueError(f"alarm warm-up must be >= 2 evaluations (a std needs two), got {self.warmup}")
        if not (self.threshold > 0 and self.drift >= 0 and self.min_std > 0):
            raise ValueError(
                "alarm threshold > 0, drift >= 0, min_std > 0 needed, "
                f"got {self.threshold}, {self.drift}, {self.min_std}"
            )


def standardize(x: np.ndarray, direction: int, rule: Rule) -> np.ndarray:
    """z_t = s·(x_t − μ_w)/σ_w after the warm-up (NaN during it, and NaN where x_t is), σ_w floored as the
    module says. The warm-up is the first `warmup` evaluations at which the signal is defined (a second
    difference is defined from the third evaluation on). NaN throughout while it is incomplete."""
    x = np.asarray(x, dtype=np.float64)
    z = np.full(x.shape, np.nan)
    defined = np.flatnonzero(np.isfinite(x))
    if len(defined) <= rule.warmup:
        return z
    warm = x[defined[: rule.warmup]]
    mu, sd = warm.mean(), warm.std(ddof=1)
    sd = max(sd, rule.min_std * max(1.0, abs(mu)))
    after = defined[rule.warmup - 1] + 1
    z[after:] = (x[after:] - mu) / sd
    return np.abs(z) if direction == 0 else direction * z


def cusum(z: np.ndarray, drift: float) -> np.ndarray:
    """Page's one-sided CUSUM S_t = max(0, S_{t−1} + z_t − k), S = 0 before the first finite z; a NaN z
    leaves S as it was (NaN while no z has been seen)."""
    out = np.full(len(z), np.nan)
    s, seen = 0.0, False
    for t, v in enumerate(z):
        if np.isfinite(v):
            s, seen = max(0.0, s + v - drift), True
        out[t] = s if seen else np.nan
    return out


def statistic(x: np.ndarray, direction: int, rule: Rule) -> np.ndarray:
    """The firing rule's statistic of a signal series: z (`zscore`) or the CUSUM of z (`cusum`)."""
    z = standardize(x, direction, rule)
    return cusum(z, rule.drift) if rule.rule == "cusum" else z


def first_alarm(stat: np.ndarray, threshold: float) -> int | None:
    """The first evaluation whose statistic exceeds the threshold, or None."""
    above = np.flatnonzero(np.nan_to_num(np.asarray(stat, dtype=np.float64), nan=-np.inf) > threshold)
    return int(above[0]) if len(above) else None


def last_good(stat: np.ndarray, fired: int) -> int:
    """The evaluation a roll-back returns to: the last one before `fired` whose statistic was ≤ 0 or not yet
    defined (warm-up); for CUSUM the classical change-point estimate. 0 when there is none."""
    before = np.nan_to_num(np.asarray(stat[:fired], dtype=np.float64), nan=0.0)
    calm = np.flatnonzero(before <= 0)
    return int(calm[-1]) if len(calm) else 0


def alarm_figures(rows: Sequence[Mapping], rule: Rule) -> dict[str, float]:
    """The detectors' figures of the latest row: `alarm/<name>` (signal) and `alarm/<name>/fired` (1.0 from
    the first firing on). Signals without a value in the rows (e.g. ensemble_std without an ensemble) are
    left out. Causal: depends on rows[: T] only."""
    out: dict[str, float] = {}
    for name, signal in SIGNALS.items():
        x = signal.series(rows)
        if not len(x) or not np.isfinite(x).any():
            continue
        if np.isfinite(x[-1]):
            out[f"alarm/{name}"] = float(x[-1])
        fired = first_alarm(statistic(x, signal.direction, rule), rule.threshold)
        out[f"alarm/{name}/fired"] = float(fired is not None)
    return out


# --------------------------------------------------------------------------- #
# gold side: the truth the detectors are scored against
# --------------------------------------------------------------------------- #
def hacking_onset(gold: Sequence[float], drop: float = 0.3, tol: float = 0.1) -> int | None:
    """The onset of hacking (module docstring) from a run's gold series, or None for a run that never loses
    `drop` of its gain. Evaluations with a non-finite gold are skipped."""
    if not (0 < drop <= 1 and 0 <= tol < drop):
        raise ValueError(f"hacking_onset: need 0 < drop <= 1 and 0 <= tol < drop, got drop={drop}, tol={tol}")
    g = np.asarray(gold, dtype=np.float64)
    if not len(g) or not np.isfinite(g[0]):
        return None
    peak = np.fmax.accumulate(np.where(np.isfinite(g), g, -np.inf))
    gain = peak - g[0]
    lost = np.flatnonzero(np.isfinite(g) & (gain > 0) & (g <= peak - drop * gain))
    if not len(lost):
        return None
    t_loss = int(lost[0])
    near = np.flatnonzero(np.isfinite(g[:t_loss]) & (g[:t_loss] >= peak[:t_loss] - tol * gain[t_loss]))
    return int(near[-1])


@dataclass(frozen=True)
class DetectorScore:
    """A detector scored over a set of runs (`score_detector`)."""

    runs: int
    hacked: int  # runs with an onset
    detected: float  # share of hacked runs where it fired (before or after the onset)
    lead: float  # median evaluations from its first alarm to the onset, over hacked runs it fired on (> 0: early)
    early: float  # share of hacked runs where it fired at or before the onset
    false_alarm: float  # share of never-hacking runs where it fired
    auroc: float  # of z (standardised signal) for "the onset has passed", over every evaluation after warm-up
    regret: float  # mean gold peak − gold where the run would stop (its first alarm, else the end)
    regret_none: float  # the same without a detector (every run to its end)


def detector_stop(rows: Sequence[Mapping], name: str, rule: Rule) -> int | None:
    """The evaluation where detector `name` under `rule` first fires on a run, or None."""
    signal = SIGNALS[name]
    return first_alarm(statistic(signal.series(rows), signal.direction, rule), rule.threshold)


def regret(rows: Sequence[Mapping], stop: int | None) -> float:
    """Gold regret of keeping the policy of evaluation `stop` (None: the run's end): gold peak − gold there."""
    gold = _column(rows, "gold_reward")
    return float(np.nanmax(gold) - gold[len(gold) - 1 if stop is None else stop])


def score_detector(runs: Sequence[Sequence[Mapping]], name: str, rule: Rule, drop: float = 0.3, tol: float = 0.1):
    """Score detector `name` under `rule` over `runs` (each a list of metrics rows) against gold."""
    signal = SIGNALS[name]
    leads, early, fired_hacked, fired_clean, clean, z_all, passed, regrets, regret_none = ([] for _ in range(9))
    for rows in runs:
        gold = _column(rows, "gold_reward")
        onset = hacking_onset(gold, drop, tol)
        x = signal.series(rows)
        fired = detector_stop(rows, name, rule)
        regrets.append(regret(rows, fired))
        regret_none.append(regret(rows, None))
        z = standardize(x, signal.direction, rule)
        keep = np.isfinite(z)
        z_all.append(z[keep])
        passed.append((np.arange(len(z)) > onset)[keep] if onset is not None else np.zeros(keep.sum(), bool))
        if onset is None:
            clean.append(1)
            fired_clean.append(fired is not None)
        else:
            fired_hacked.append(fired is not None)
            if fired is not None:
                leads.append(onset - fired)
                early.append(fired <= onset)
            else:
                early.append(False)
    z_cat, y_cat = (np.concatenate(v) if v else np.array([]) for v in (z_all, passed))
    return DetectorScore(
        runs=len(runs),
        hacked=len(fired_hacked),
        detected=float(np.mean(fired_hacked)) if fired_hacked else math.nan,
        lead=float(np.median(leads)) if leads else math.nan,
        early=float(np.mean(early)) if early else math.nan,
        false_alarm=float(np.mean(fired_clean)) if fired_clean else math.nan,
        auroc=stats.auroc(z_cat, y_cat) if len(z_cat) else math.nan,
        regret=float(np.nanmean(regrets)) if regrets else math.nan,
        regret_none=float(np.nanmean(regret_none)) if regret_none else math.nan,
    )


# Candidate firing rules a tuning picks from (default knobs besides the rule and its threshold).
RULE_GRID: tuple[Rule, ...] = tuple(
    rule
    for warmup in (3, 5)
    for rule in (
        *(Rule("cusum", warmup=warmup, threshold=h) for h in (2.0, 3.0, 5.0, 8.0, 12.0, 20.0)),
        *(Rule("zscore", warmup=warmup, threshold=h) for h in (2.0, 3.0, 4.0, 6.0, 10.0)),
    )
)


def tune_rule(runs: Sequence[Sequence[Mapping]], name: str, grid: Sequence[Rule] = RULE_GRID) -> Rule:
    """The rule of `grid` whose first alarm costs the least gold on `runs` (mean regret; ties: fewer false
    alarms, then the first). Stopping too early costs as much as too late, so the regret balances both.
    Score the rule it returns on other runs: on these it is fitted."""

    def cost(rule: Rule) -> tuple[float, float]:
        s = score_detector(runs, name, rule)
        return (s.regret, s.false_alarm if math.isfinite(s.false_alarm) else 0.0)

    return min(grid, key=cost)


# --------------------------------------------------------------------------- #
# gold-free baselines: what a stopping rule must beat
# --------------------------------------------------------------------------- #
BASELINES = ("fixed_step", "fixed_kl", "heldout_rm")
BASELINE_GRIDS: dict[str, tuple[float | None, ...]] = {
    "fixed_step": tuple(round(0.05 * i, 2) for i in range(1, 21)),  # f: a share of the run's updates
    "fixed_kl": (0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 32.0),  # κ: nats
    "heldout_rm": (None,),  # no knob
}


def baseline_stop(rows: Sequence[Mapping], name: str, knob: float | None) -> int | None:
    """The evaluation whose policy baseline `name` keeps (module docstring), or None for the run's end.

    fixed_step: the first evaluation whose step is at least knob × the run's last step; fixed_kl: the first
    whose kl_sft is at least knob (None when none is); heldout_rm: the evaluation with the highest
    heldout_rm_reward (the first of ties; None when the run logged none)."""
    if name == "fixed_step":
        steps = _column(rows, "step")
        reached = np.flatnonzero(np.isfinite(steps) & (steps >= knob * np.nanmax(steps)))
        return int(reached[0]) if len(reached) else None
    if name == "fixed_kl":
        reached = np.flatnonzero(np.nan_to_num(_column(rows, "kl_sft"), nan=-np.inf) >= knob)
        return int(reached[0]) if len(reached) else None
    if name == "heldout_rm":
        score = _column(rows, "heldout_rm_reward")
        return int(np.nanargmax(score)) if np.isfinite(score).any() else None
    raise ValueError(f"unknown baseline {name!r}; baselines: {', '.join(BASELINES)}")


def baseline_regrets(runs: Sequence[Sequence[Mapping]], name: str, knob: float | None) -> np.ndarray:
    """(runs,) gold regret of baseline `name` at `knob` on each run."""
    return np.array([regret(rows, baseline_stop(rows, name, knob)) for rows in runs], dtype=np.float64)


def tune_baseline(runs: Sequence[Sequence[Mapping]], name: str) -> float | None:
    """The knob of BASELINE_GRIDS[name] with the least mean regret on `runs` (ties: the first). Score the knob it
    returns on other runs: on these it is fitted."""
    return min(BASELINE_GRIDS[name], key=lambda knob: float(np.nanmean(baseline_regrets(runs, name, knob))))
