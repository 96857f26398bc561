"""Mechanisms: do the measurements behind each mitigation's premise hold in these runs?

The training side logs, per evaluation (any key may be absent):

* ``mech/proxy_accuracy``: share of pairs of current-policy held-out samples
  the proxy orders as the gold reward does (step 0 included);
* ``mech/rm0_accuracy``: the same for OCRM's original RM_0 (``ocrm/round`` ≥ 1
  marks rows after a refit);
* ``mech/sign_flip_rate``, ``mech/sign_flip_mass``, ``mech/radius_auroc``
  (step > 0, averaged over the updates since the last evaluation): share of
  training completions whose proxy and gold advantages differ in sign; the same
  weighted by |proxy advantage|; AUROC of −(sign radius) for predicting a flip;
* ``mech/disagreement_error_corr``: ensemble runs, correlation between member
  std and |proxy − gold| (both standardised on SFT samples);
* the gradient norm: ``gr/grad_norm`` when logged, else ``train/grad_norm``.

:func:`run_mechanisms` condenses one run, :func:`mechanism_verdicts` turns the
per-seed figures of ``summary.json`` into one line per claim, and
:func:`plot_mechanisms` draws ``OUT/plots/mech_*.png``.  Reads outputs only;
numpy, matplotlib (plots) and the standard library; never torch/transformers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from overopt.stats import finite_float as _f
from overopt.stats import interval

__all__ = [
    "MECH_KEYS",
    "grad_norm",
    "mechanism_verdicts",
    "pearson",
    "plot_mechanisms",
    "run_mechanisms",
    "verdict_status",
]

ACC, RM0, ROUND = "mech/proxy_accuracy", "mech/rm0_accuracy", "ocrm/round"
FLIP, MASS, AUROC, DIS = (
    "mech/sign_flip_rate",
    "mech/sign_flip_mass",
    "mech/radius_auroc",
    "mech/disagreement_error_corr",
)
# Keys of run_mechanisms(rows), in order.
MECH_KEYS = (
    "grad_norm_accuracy_corr",
    "grad_norm_accuracy_corr_diff",
    "proxy_accuracy_sft",
    "proxy_accuracy_final",
    "sign_flip_rate_first",
    "sign_flip_rate_final",
    "sign_flip_mass_mean",
    "radius_auroc_mean",
    "disagreement_error_corr_mean",
    "ocrm_refit_gain",
)


def _mean(xs: Iterable[Any]) -> float | None:
    vals = [v for v in (_f(x) for x in xs) if v is not None]
    return sum(vals) / len(vals) if vals else None


def _step(r: Mapping) -> float:
    return _f(r.get("step")) or 0.0


def pearson(x: Iterable[Any], y: Iterable[Any]) -> float | None:
    """Pearson correlation (``numpy.corrcoef``) over the pairs where both values are finite; None with
    fewer than 3 such pairs or when either side has zero variance. (The report cannot import torch:
    ``overopt.ops.pearson`` is the training side's.)"""
    pairs = [(a, b) for a, b in zip((_f(v) for v in x), (_f(v) for v in y)) if a is not None and b is not None]
    if len(pairs) < 3:
        return None
    xs, ys = np.array(pairs, dtype=float).T
    if np.ptp(xs) == 0 or np.ptp(ys) == 0:
        return None
    return float(np.corrcoef(xs, ys)[0, 1])


def grad_norm(row: Mapping) -> float | None:
    """The row's gradient norm: ``gr/grad_norm`` when finite, else ``train/grad_norm``."""
    g = _f(row.get("gr/grad_norm"))
    return g if g is not None else _f(row.get("train/grad_norm"))


def run_mechanisms(rows: list[dict]) -> dict[str, float | None]:
    """Mechanism figures of one run (every value None when its keys are absent).

    * ``grad_norm_accuracy_corr`` = :func:`pearson` over evaluations with
      step > 0 of (:func:`grad_norm`, ``mech/proxy_accuracy``);
      ``grad_norm_accuracy_corr_diff`` the same for their changes between consecutive evaluations (both
      series drift with training time, which alone correlates them; the differences remove the drift);
    * ``proxy_accuracy_sft`` / ``_final``: ``mech/proxy_accuracy`` of the step-0
      row / of the last row that has it;
    * ``sign_flip_rate_first`` / ``_final``: ``mech/sign_flip_rate`` of the first
      row with step > 0 / of the last row that has it;
    * ``sign_flip_mass_mean``, ``radius_auroc_mean``,
      ``disagreement_error_corr_mean``: means over the rows that have them;
    * ``ocrm_refit_gain`` = mean over rows with ``ocrm/round`` ≥ 1 of
      (``mech/proxy_accuracy`` − ``mech/rm0_accuracy``): the refit's accuracy
      gain over RM_0 on current-policy samples.
    """
    later = [r for r in rows if _step(r) > 0]
    sft = next((r for r in rows if _step(r) == 0), None)
    acc_rows = [r for r in rows if _f(r.get(ACC)) is not None]
    first = later[0] if later else None
    flips = [r for r in later if _f(r.get(FLIP)) is not None]
    refit = [r for r in rows if (_f(r.get(ROUND)) or 0) >= 1]
    gains = [
        _f(r.get(ACC)) - _f(r.get(RM0)) for r in refit if _f(r.get(ACC)) is not None and _f(r.get(RM0)) is not None
    ]
    norms, accs = [grad_norm(r) for r in later], [_f(r.get(ACC)) for r in later]
    pairs = [(n, a) for n, a in zip(norms, accs) if n is not None and a is not None]
    steps = list(zip(pairs, pairs[1:]))
    return {
        "grad_norm_accuracy_corr": pearson(norms, accs),
        "grad_norm_accuracy_corr_diff": pearson([b[0] - a[0] for a, b in steps], [b[1] - a[1] for a, b in steps]),
        "proxy_accuracy_sft": _f(sft.get(ACC)) if sft else None,
        "proxy_accuracy_final": _f(acc_rows[-1].get(ACC)) if acc_rows else None,
        "sign_flip_rate_first": _f(first.get(FLIP)) if first else None,
        "sign_flip_rate_final": _f(flips[-1].get(FLIP)) if flips else None,
        "sign_flip_mass_mean": _mean(r.get(MASS) for r in rows),
        "radius_auroc_mean": _mean(r.get(AUROC) for r in rows),
        "disagreement_error_corr_mean": _mean(r.get(DIS) for r in rows),
        "ocrm_refit_gain": _mean(gains),
    }


# --------------------------------------------------------------------------- #
# verdicts
# --------------------------------------------------------------------------- #
def _seed_mechs(summary: Mapping, only: str | None = None) -> list[tuple[str, dict]]:
    """(method, per-seed mech dict) for every seed in the summary (or of method ``only``)."""
    out = []
    for name, m in (summary.get("methods") or {}).items():
        if only is not None and name != only:
            continue
        out.extend((name, s.get("mech") or {}) for s in m.get("seeds") or [])
    return out


def _paired(mechs: list[dict], a: str, b: str) -> tuple[list[float], list[float]]:
    pairs = [(_f(d.get(a)), _f(d.get(b))) for d in mechs]
    pairs = [(x, y) for x, y in pairs if x is not None and y is not None]
    return [x for x, _ in pairs], [y for _, y in pairs]


def verdict_status(ci: Mapping, above: float = 0.0, expect_up: bool | None = True) -> str:
    """Verdict of a CI against ``above``: supported (on the expected side), contradicted (other side),
    inconclusive; with no expected side (``expect_up`` None, GR's correlation): "tracks it positively",
    "tracks it negatively" or "no clear relation"."""
    if ci.get("n", 0) < 2:
        return "inconclusive (n<2)"
    lo_ok, hi_ok = ci["lo"] > above, ci["hi"] < above
    if expect_up is None:
        return f"tracks it {'positively' if lo_ok else 'negatively'}" if lo_ok or hi_ok else "no clear relation"
    if (lo_ok and expect_up) or (hi_ok and not expect_up):
        return "supported"
    if lo_ok or hi_ok:
        return "contradicted"
    return "inconclusive"


def mechanism_verdicts(summary: Mapping) -> list[dict[str, Any]]:
    """One verdict per mechanistic claim that has data, from summary's per-seed ``mech`` dicts.

    Each item: ``{"claim", "method", "statement", "status", "verdict" (one line
    quoting mean [95 % Student t interval over runs] and n), "numbers": {name: CI}, "deciding": (name, value,
    expected side)}``: the status is :func:`verdict_status` of ``numbers[name]`` against the value (the
    statistics over labs apply the same test to the labs' figures).  Claims:

    * ``ocrm`` — "the RM gets worse off-policy": proxy accuracy at SFT vs final
      over the seeds of ``none`` (all runs when there is no ``none``), the
      paired change final − SFT (supported when its CI is below 0), plus
      OCRM's refit gain over all runs that have it;
    * ``signcert`` — "hacking is flipped advantage signs": sign-flip rate at the
      first vs final evaluation (``none``, else all runs), paired change
      (supported when above 0), and the mean radius AUROC over all runs vs 0.5;
    * ``gr`` — "gradient norm tracks reward accuracy": mean over runs of the
      per-run grad-norm/accuracy correlation (its sign is reported);
    * ``ensemble`` — "disagreement marks error": mean over runs of the
      disagreement–error correlation (supported when above 0).
    """
    from .table import format_ci

    items: list[dict[str, Any]] = []
    has_none = any(n == "none" for n in (summary.get("methods") or {}))
    base = _seed_mechs(summary, "none") if has_none else _seed_mechs(summary)
    who = "none" if has_none else "all runs"
    everyone = [d for _, d in _seed_mechs(summary)]

    # OCRM: the RM degrades on the policy's own samples; a refit recovers some of it.
    sft, fin = _paired([d for _, d in base], "proxy_accuracy_sft", "proxy_accuracy_final")
    gains = [d.get("ocrm_refit_gain") for d in everyone]
    gain = interval(gains)
    if sft or gain["n"]:
        nums: dict[str, Any] = {"refit_gain": gain}
        parts: list[str] = []
        if sft:
            a, b, d = interval(sft), interval(fin), interval(y - x for x, y in zip(sft, fin))
            nums.update(accuracy_sft=a, accuracy_final=b, change=d)
            parts.append(f"proxy accuracy on current-policy pairs goes from {format_ci(a)} at SFT to {format_ci(b)} "
                         f"at the end ({who}; change {format_ci(d, signed=True)}, n={d['n']})")  # fmt: skip
        if gain["n"]:
            parts.append(f"OCRM's refit gains {format_ci(gain, signed=True)} over RM_0 (n={gain['n']} runs)")
        deciding = ("change", 0.0, False) if sft else ("refit_gain", 0.0, True)
        status = verdict_status(nums[deciding[0]], *deciding[1:])
        items.append({"claim": "ocrm", "method": "OCRM", "statement": "the RM gets worse off-policy",
                      "status": status, "verdict": f"OCRM — the RM gets worse off-policy: {status}; "
                      + "; ".join(parts) + ".", "numbers": nums, "deciding": deciding})  # fmt: skip

    # SignCert-PO: hacking shows up as proxy/gold advantage sign flips, and a small radius predicts them.
    first, last = _paired([d for _, d in base], "sign_flip_rate_first", "sign_flip_rate_final")
    auroc = interval(d.get("radius_auroc_mean") for d in everyone)
    if first or auroc["n"]:
        nums, parts = {"radius_auroc": auroc}, []
        if first:
            a, b, d = interval(first), interval(last), interval(y - x for x, y in zip(first, last))
            nums.update(flip_rate_first=a, flip_rate_final=b, change=d)
            parts.append(f"sign-flip rate goes from {format_ci(a)} at the first evaluation to {format_ci(b)} at the "
                         f"end ({who}; change {format_ci(d, signed=True)}, n={d['n']})")  # fmt: skip
        if auroc["n"]:
            parts.append(f"radius AUROC for predicting a flip {format_ci(auroc)} vs chance 0.5 "
                         f"({verdict_status(auroc, above=0.5)}, n={auroc['n']} runs)")  # fmt: skip
        deciding = ("change", 0.0, True) if first else ("radius_auroc", 0.5, True)
        status = verdict_status(nums[deciding[0]], *deciding[1:])
        items.append({"claim": "signcert", "method": "SignCert-PO", "statement": "hacking is flipped advantage signs",
                      "status": status, "verdict": f"SignCert-PO — hacking is flipped advantage signs: {status}; "
                      + "; ".join(parts) + ".", "numbers": nums, "deciding": deciding})  # fmt: skip

    # GR: gradient norm moves with the proxy's accuracy on the policy's samples. Both drift with training
    # time, so the verdict rests on their changes between evaluations, the levels' r is quoted beside it.
    corr = interval(d.get("grad_norm_accuracy_corr") for d in everyone)
    diff = interval(d.get("grad_norm_accuracy_corr_diff") for d in everyone)
    if corr["n"] or diff["n"]:
        deciding = ("corr_diff", 0.0, None) if diff["n"] else ("corr", 0.0, None)
        decisive = diff if diff["n"] else corr
        status = verdict_status(decisive, *deciding[1:])
        items.append({"claim": "gr", "method": "GR", "statement": "gradient norm tracks reward accuracy",
                      "status": status, "verdict": f"GR — gradient norm tracks reward accuracy: {status}; mean "
                      f"per-run Pearson r between the changes of gradient norm and proxy accuracy from one "
                      f"evaluation to the next {format_ci(diff, signed=True)} (levels: {format_ci(corr, signed=True)}, "
                      f"which training time alone inflates; n={decisive['n']} runs).",
                      "numbers": {"corr": corr, "corr_diff": diff}, "deciding": deciding})  # fmt: skip

    # Ensembles: member disagreement is larger where the proxy is more wrong.
    dis = interval(d.get("disagreement_error_corr_mean") for d in everyone)
    if dis["n"]:
        deciding = ("corr", 0.0, True)
        status = verdict_status(dis, *deciding[1:])
        items.append({"claim": "ensemble", "method": "Ensembles", "statement": "disagreement marks error",
                      "status": status, "verdict": f"Ensembles — disagreement marks error: {status}; mean "
                      f"correlation between member std and |proxy − gold| {format_ci(dis, signed=True)} "
                      f"(n={dis['n']} runs).", "numbers": {"corr": dis}, "deciding": deciding})  # fmt: skip
    return items


# --------------------------------------------------------------------------- #
# plots
# --------------------------------------------------------------------------- #
def _families(runs: Mapping[str, Mapping[int, list[dict]]]) -> dict[str, dict[int, list[dict]]]:
    """Runs pooled by method: sweep variants ``method@field=value`` join their method (keys renumbered)."""
    fam: dict[str, dict[int, list[dict]]] = {}
    for name, seeds in runs.items():
        d = fam.setdefault(name.partition("@")[0], {})
        for rows in seeds.values():
            d[len(d)] = rows
    return fam


def _has(seeds: Mapping[int, list[dict]], key: str) -> bool:
    return any(_f(r.get(key)) is not None for rows in seeds.values() for r in rows)


def _with_grad(seeds: Mapping[int, list[dict]]) -> dict[int, list[dict]]:
    return {s: [{**r, "_grad_norm": grad_norm(r)} for r in rows if _step(r) > 0] for s, rows in seeds.items()}


def plot_mechanisms(out_dir: str | Path, runs: Mapping[str, Mapping[int, list[dict]]]) -> list[Path]:
    """Write one ``OUT/plots/mech_*.png`` per claim that has data; returns the paths.

    * ``mech_accuracy``: ``mech/proxy_accuracy`` vs step per method (mean ±
      std over runs, sweep variants pooled), OCRM's RM_0 accuracy dashed;
    * ``mech_sign_flips``: sign-flip rate and radius AUROC (0.5 dotted) vs step;
    * ``mech_grad_norm``: gradient norm vs proxy accuracy, one point per
      evaluation with step > 0, per method, with the pooled Pearson r;
    * ``mech_disagreement``: disagreement–error correlation vs step.
    """
    from .plots import _plot_mean_band, aggregate, method_colors, new_figure, save_figure, style_axes

    fam = _families(runs)
    colors = method_colors(list(fam))
    plot_dir = Path(out_dir) / "plots"
    paths: list[Path] = []

    def lines(ax, key: str, dashed: str | None = None) -> None:
        for m, seeds in fam.items():
            if _has(seeds, key):
                _plot_mean_band(ax, aggregate(seeds, key), colors[m], f"{m} (n={len(seeds)})")
            if dashed and _has(seeds, dashed):
                agg = aggregate(seeds, dashed)
                ax.plot(agg["step"], agg["mean"], color=colors[m], linestyle="--", linewidth=1.4, label=f"{m}: RM_0")

    if any(_has(s, ACC) for s in fam.values()):
        plot_dir.mkdir(parents=True, exist_ok=True)
        fig = new_figure(7.5, 4.6)
        ax = fig.add_subplot(1, 1, 1)
        lines(ax, ACC, dashed=RM0)
        style_axes(ax, "Proxy accuracy on current-policy sample pairs (dashed: OCRM's RM_0)", "step", "pair accuracy")
        ax.legend(fontsize=8, frameon=False)
        paths.append(save_figure(fig, plot_dir / "mech_accuracy.png"))

    if any(_has(s, FLIP) or _has(s, AUROC) for s in fam.values()):
        plot_dir.mkdir(parents=True, exist_ok=True)
        fig = new_figure(12, 4.6)
        a1, a2 = fig.subplots(1, 2)
        lines(a1, FLIP)
        lines(a2, AUROC)
        a2.axhline(0.5, color="0.3", linestyle=":", linewidth=1.1, label="chance")
        style_axes(a1, "Share of completions with proxy/gold advantage signs flipped", "step", "sign-flip rate")
        style_axes(a2, "AUROC of −(sign radius) for predicting a flip", "step", "AUROC")
        for ax in (a1, a2):
            ax.legend(fontsize=8, frameon=False)
        paths.append(save_figure(fig, plot_dir / "mech_sign_flips.png"))

    grad = {m: _with_grad(s) for m, s in fam.items()}
    if any(_has(s, ACC) and _has(s, "_grad_norm") for s in grad.values()):
        plot_dir.mkdir(parents=True, exist_ok=True)
        fig = new_figure(7.5, 4.8)
        ax = fig.add_subplot(1, 1, 1)
        for m, seeds in grad.items():
            pts = [(r["_grad_norm"], _f(r.get(ACC))) for rows in seeds.values() for r in rows]
            pts = [(g, a) for g, a in pts if g is not None and a is not None]
            if not pts:
                continue
            r = pearson(*zip(*pts))
            label = f"{m} (pooled r={r:+.2f})" if r is not None else m
            ax.scatter([g for g, _ in pts], [a for _, a in pts], s=14, alpha=0.7, color=colors[m], label=label)
        style_axes(ax, "Gradient norm vs proxy accuracy (one point per evaluation)", "gradient norm", "proxy accuracy")
        ax.legend(fontsize=8, frameon=False)
        paths.append(save_figure(fig, plot_dir / "mech_grad_norm.png"))

    if any(_has(s, DIS) for s in fam.values()):
        plot_dir.mkdir(parents=True, exist_ok=True)
        fig = new_figure(7.5, 4.6)
        ax = fig.add_subplot(1, 1, 1)
        lines(ax, DIS)
        ax.axhline(0.0, color="0.3", linestyle=":", linewidth=1.1)
        style_axes(ax, "Correlation of ensemble disagreement with |proxy − gold|", "step", "correlation")
        ax.legend(fontsize=8, frameon=False)
        paths.append(save_figure(fig, plot_dir / "mech_disagreement.png"))
    return paths
