"""Frontier comparison: every mitigation over a grid of its strength knob × seeds.

A driver runs each method at several strengths into one output directory and
writes ``OUT/frontier_plan.json``::

    {"testbed", "preset", "seeds": [0, 1, ...], "budgets": [1, 2, 4, 8],
     "baselines": {"none": <entry of methods>, "kl": <entry of methods>},   # either may be absent
     "methods": {name: {"method", "strength_key",
                        "points": [{"run", "field", "value", "published"}, ...]}}}

Each point's runs are ``OUT/runs/<run>/seed<k>/metrics.jsonl``; missing seeds
are skipped (every figure records its ``n``).  This module turns them into
``OUT/frontier.json`` (:func:`analyze_frontier`), markdown tables
(:func:`frontier_markdown`) and two plots (:func:`plot_frontier`).

Every uncertainty is a 95 % Student t interval over seeds (overopt.stats.interval:
the mean's, or the jackknife's for the envelope), so the output is deterministic.  Selections that use the gold reward
(best point, point at a KL budget) are made leave-one-seed-out, so the
reported value of a seed never helped choose the point it is read from.

Reads the output directory only; numpy and the standard library (matplotlib in
:func:`plot_frontier` only).  Never imports torch/transformers.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from overopt.stats import CI, interval

from .summary import _json_safe, _num, hacking_check, read_jsonl
from .table import format_ci

__all__ = [
    "PLAN_FILE",
    "RESULT_FILE",
    "analyze_frontier",
    "best_rows",
    "early_stop_gold",
    "envelope_band",
    "format_ci",
    "frontier_markdown",
    "kl_grid",
    "lift_over_path",
    "load_plan",
    "loso_select",
    "matched_rows",
    "method_verdict",
    "paired_diff_ci",
    "path_gold_at_kl",
    "plot_frontier",
    "run_figures",
    "upper_envelope",
    "write_frontier",
]

PLAN_FILE = "frontier_plan.json"
RESULT_FILE = "frontier.json"
NONE_EARLY = "none stopped early"


# --------------------------------------------------------------------------- #
# statistics
# --------------------------------------------------------------------------- #
def _val(x: Any) -> float | None:
    """``x`` as a finite float (numpy scalars included), or None."""
    if isinstance(x, np.generic):
        x = x.item()
    return _num(x)


def paired_diff_ci(a: Mapping[int, Any], b: Mapping[int, Any]) -> CI:
    """Interval (overopt.stats.interval) of the mean per-seed difference ``d_s = a[s] - b[s]``.

    Only seeds present (and finite) in both ``a`` and ``b`` count. Adds ``"seeds"``: the seeds used.
    """
    seeds = [s for s in sorted(a) if s in b and _val(a[s]) is not None and _val(b[s]) is not None]
    out = interval([_val(a[s]) - _val(b[s]) for s in seeds])
    out["seeds"] = seeds
    return out


# --------------------------------------------------------------------------- #
# one run
# --------------------------------------------------------------------------- #
def _path(rows: list[dict]) -> list[tuple[float, float]]:
    """(kl_sft, gold_reward) of the evaluations where both are finite, in row order."""
    pts = [(_num(r.get("kl_sft")), _num(r.get("gold_reward"))) for r in rows]
    return [(k, g) for k, g in pts if k is not None and g is not None]


def early_stop_gold(rows: list[dict], budget: float) -> float | None:
    """Gold reward when a practitioner stops at a KL budget without seeing gold.

    With i* = the first evaluation whose ``kl_sft`` exceeds ``budget`` (rows
    without a finite ``kl_sft`` never do), the value is ``gold(rows[i* - 1])``:
    training stops at the last evaluation inside the budget, and evaluations
    after the crossing are not used even if KL comes back down.  When KL never
    exceeds the budget, ``gold(rows[-1])``.  None when i* == 0 or that gold is
    missing.
    """
    for i, r in enumerate(rows):
        k = _num(r.get("kl_sft"))
        if k is not None and k > budget:
            return _num(rows[i - 1].get("gold_reward")) if i > 0 else None
    return _num(rows[-1].get("gold_reward")) if rows else None


def path_gold_at_kl(rows: list[dict], kl: float) -> float | None:
    """Gold along a run's own trajectory at KL ``kl``.

    Over the evaluations (k_i, g_i) with finite KL and gold, in step order, let
    i be the first with k_i ≥ kl.  Then the value is g_0 when i == 0, g_i when
    k_i == kl, else the linear interpolation
    ``g_{i-1} + (kl - k_{i-1}) / (k_i - k_{i-1}) · (g_i - g_{i-1})``.
    None when the trajectory never reaches ``kl``.
    """
    kl = _val(kl)
    if kl is None:
        return None
    pts = _path(rows)
    for i, (k, g) in enumerate(pts):
        if k >= kl:
            if i == 0 or k == kl:
                return g
            k0, g0 = pts[i - 1]
            return g0 + (kl - k0) / (k - k0) * (g - g0)
    return None


def lift_over_path(figs: Mapping[int, Mapping[str, Any]], none_rows: Mapping[int, list[dict]]) -> dict[str, Any]:
    """Final gold minus the gold of none's own path at the same final KL, per seed.

    ``figs``: seed -> :func:`run_figures` of a run; ``none_rows``: seed -> none's rows. Seeds where
    none never reached the run's KL are left out. Returns the interval plus ``"per_seed"``."""
    lifts = {}
    for s, f in figs.items():
        ref = path_gold_at_kl(none_rows[s], f["kl"]) if s in none_rows and f["kl"] is not None else None
        if ref is not None and f["gold"] is not None:
            lifts[s] = f["gold"] - ref
    return {**interval(lifts.values()), "per_seed": _str_keys(lifts)}


def run_figures(rows: list[dict], strength_key: str | None = None) -> dict[str, Any]:
    """Figures of one run: ``gold`` and ``kl`` = ``gold_reward`` and ``kl_sft``
    of the last row; ``strength`` = mean of ``strength_key`` over the rows with
    step > 0 that have it (None when there are none or no key); ``hacked`` =
    :func:`~overopt.report.summary.hacking_check` (rows)["hacked"]."""
    strength = None
    if strength_key:
        vals = [_num(r.get(strength_key)) for r in rows if (_num(r.get("step")) or 0) > 0]
        vals = [v for v in vals if v is not None]
        strength = sum(vals) / len(vals) if vals else None
    return {
        "gold": _num(rows[-1].get("gold_reward")),
        "kl": _num(rows[-1].get("kl_sft")),
        "strength": strength,
        "hacked": bool(hacking_check(rows)["hacked"]),
    }


# --------------------------------------------------------------------------- #
# frontier envelope
# --------------------------------------------------------------------------- #
def kl_grid(kls: Iterable[Any], n: int = 48) -> list[float]:
    """KL values to evaluate an envelope on: 0, every point's KL (where the step
    function changes) and ``n`` evenly spaced values up to 1.1 · max KL."""
    ks = [v for v in (_val(k) for k in kls) if v is not None]
    top = max(ks + [0.0]) * 1.1 or 1.0
    return [float(x) for x in np.unique(np.concatenate([[0.0], ks, np.linspace(0.0, top, n)]))]


def upper_envelope(kls: Iterable[Any], golds: Iterable[Any], grid: Iterable[float]) -> list[float | None]:
    """Upper envelope of points (k_j, g_j): ``env(x) = max{g_j : k_j ≤ x}`` at
    each grid value x; None where no point has k_j ≤ x.  Points with a missing
    k or g are ignored."""
    pts = [(k, g) for k, g in zip((_val(k) for k in kls), (_val(g) for g in golds)) if k is not None and g is not None]
    out: list[float | None] = []
    for x in grid:
        inside = [g for k, g in pts if k <= x]
        out.append(max(inside) if inside else None)
    return out


def envelope_band(
    kl_by_seed: list[Mapping[int, float]], gold_by_seed: list[Mapping[int, float]], grid: list[float]
) -> tuple[list[float | None], list[float | None]]:
    """Interval of the upper envelope at each grid value, over seeds (overopt.stats.interval's jackknife).

    Point j has per-seed final KL k_js and gold g_js. On a set of seeds, point j's coordinates are its
    means over the seeds of the set it has (a point with none of them drops out), and the envelope
    is :func:`upper_envelope` of those points. Its interval at x is the jackknife's over the S seeds
    any point has (leave one seed out), on S − 1 degrees of freedom; None where the envelope (or a
    leave-one-out envelope) is undefined at x, or with fewer than 2 seeds.
    """
    seeds = sorted({s for d in kl_by_seed for s in d} & {s for d in gold_by_seed for s in d})
    if not seeds or not kl_by_seed:
        return [None] * len(grid), [None] * len(grid)

    def envelope_at(x: float):
        def statistic(subset):
            pts = []
            for kd, gd in zip(kl_by_seed, gold_by_seed):
                pairs = [(_val(kd.get(s)), _val(gd.get(s))) for s in subset]
                pairs = [(k, g) for k, g in pairs if k is not None and g is not None]
                if pairs:
                    pts.append((float(np.mean([k for k, _ in pairs])), float(np.mean([g for _, g in pairs]))))
            return upper_envelope([k for k, _ in pts], [g for _, g in pts], [x])[0]

        return statistic

    bands = [interval(seeds, statistic=envelope_at(x)) for x in grid]
    return [b["lo"] for b in bands], [b["hi"] for b in bands]


def loso_select(
    gold: Mapping[str, Mapping[int, float]],
    kl: Mapping[str, Mapping[int, float]] | None = None,
    budget: float | None = None,
) -> dict[int, tuple[str, float]]:
    """Leave-one-seed-out choice of a point, per held-out seed.

    ``gold[p][s]`` is point p's final gold at seed s.  For each seed s, the
    candidates are the points with a gold value at s (and, when ``budget`` is
    given, ``kl[p][s] ≤ budget``).  Each candidate is scored by its mean gold
    over the *other* seeds, ``mean_{t≠s} gold[p][t]`` (its own ``gold[p][s]``
    when it has no other seed); the highest score wins (ties: first in order).
    Returns ``{s: (chosen point, gold[chosen][s])}``; seeds without a
    candidate are absent.
    """
    seeds = sorted({s for d in gold.values() for s in d})
    out: dict[int, tuple[str, float]] = {}
    for s in seeds:
        best: tuple[float, str] | None = None
        for p, gd in gold.items():
            if _val(gd.get(s)) is None:
                continue
            if budget is not None:
                k = _val((kl or {}).get(p, {}).get(s))
                if k is None or k > budget:
                    continue
            others = [_val(v) for t, v in gd.items() if t != s and _val(v) is not None]
            score = sum(others) / len(others) if others else _val(gd[s])
            if best is None or score > best[0]:
                best = (score, p)
        if best is not None:
            out[s] = (best[1], float(gold[best[1]][s]))
    return out


# --------------------------------------------------------------------------- #
# loading
# --------------------------------------------------------------------------- #
def load_plan(out_dir: str | Path) -> dict | None:
    """``OUT/frontier_plan.json`` as a dict, or None when it does not exist."""
    path = Path(out_dir) / PLAN_FILE
    if not path.is_file():
        return None
    plan = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(plan, dict) or not isinstance(plan.get("methods"), dict):
        raise ValueError(f"{path}: expected an object with a 'methods' mapping")
    return plan


def _load_point(out_dir: Path, run: str, seeds: list[int] | None, runs: Mapping | None) -> dict[int, list[dict]]:
    """``{seed: rows}`` of one point; missing or empty metrics files are skipped."""
    if runs is not None and run in runs:
        have = runs[run]
        return {s: have[s] for s in sorted(have) if seeds is None or s in seeds}
    base = out_dir / "runs" / run
    if seeds is None:
        seeds = sorted(int(p.name[4:]) for p in base.glob("seed*") if p.name[4:].isdigit())
    out: dict[int, list[dict]] = {}
    for s in seeds:
        path = base / f"seed{s}" / "metrics.jsonl"
        if path.is_file():
            rows = read_jsonl(path)
            if rows:
                out[s] = rows
    return out


def _knob(point: Mapping[str, Any]) -> str:
    field = point.get("field")
    return "off" if field is None else f"{field}={point.get('value')}"


def _bkey(budget: Any) -> str:
    return f"{float(budget):g}"


def _str_keys(d: Mapping[int, Any]) -> dict[str, Any]:
    return {str(k): v for k, v in d.items()}


def _point_entry(point: Mapping, seeds_rows: dict[int, list[dict]], strength_key: str | None) -> dict[str, Any]:
    figs = {s: run_figures(rows, strength_key) for s, rows in seeds_rows.items()}
    h = sum(f["hacked"] for f in figs.values())
    return {
        "run": point["run"],
        "field": point.get("field"),
        "value": point.get("value"),
        "knob": _knob(point),
        "published": bool(point.get("published", False)),
        "n": len(figs),
        "seeds": sorted(figs),
        "kl": interval(f["kl"] for f in figs.values()),
        "gold": interval(f["gold"] for f in figs.values()),
        "strength": interval(f["strength"] for f in figs.values()),
        "hacked": f"{h}/{len(figs)}",
        "hacked_count": h,
        "per_seed": _str_keys(figs),
        "_figs": figs,  # int-keyed; removed before output
    }


def _none_path(seeds_rows: dict[int, list[dict]]) -> dict[str, list]:
    """Mean of KL and gold over seeds at each step along none's trajectory (interval for gold)."""
    by_step: dict[float, list[tuple[float, float]]] = {}
    for rows in seeds_rows.values():
        for r in rows:
            step, k, g = _num(r.get("step")), _num(r.get("kl_sft")), _num(r.get("gold_reward"))
            if step is not None and k is not None and g is not None:
                by_step.setdefault(step, []).append((k, g))
    out: dict[str, list] = {"step": [], "kl": [], "gold": [], "lo": [], "hi": [], "n": []}
    for step in sorted(by_step):
        ks, gs = zip(*by_step[step])
        ci = interval(gs)
        for key, v in (("step", step), ("kl", float(np.mean(ks))), ("gold", ci["mean"]), ("lo", ci["lo"]),
                       ("hi", ci["hi"]), ("n", ci["n"])):  # fmt: skip
            out[key].append(v)
    return out


# --------------------------------------------------------------------------- #
# verdict
# --------------------------------------------------------------------------- #
def method_verdict(name: str, points: list[dict], none_gold: float | None, is_none: bool = False) -> dict[str, Any]:
    """Where a method stands against none's own gold-vs-KL path.

    With each point's lift CI (gold minus none's path at the same KL, per seed):
    "moves the frontier up" when some point's lift has ``lo > 0``; "below
    none's path" when every point with a lift has ``hi < 0`` (lifts over one seed only do not count);
    otherwise "on
    none's path", and then ``stops_better`` = (best mean final gold >
    none's mean final gold).  "no path comparison" when no point has a lift
    ("no none baseline" when ``none_gold`` is None too).
    """
    if is_none:
        return {"label": "baseline", "stops_better": None, "sentence": f"{name} is the no-mitigation baseline."}
    # A lift needs two seeds or more to have an interval: a point whose KL stays within none's path for
    # one seed only does not decide the verdict.
    lifted = [p for p in points if p.get("lift") and p["lift"]["n"] > 1]
    golds = [p["gold"]["mean"] for p in points if p["gold"]["mean"] is not None]
    best_gold = max(golds) if golds else None
    stops = None if best_gold is None or none_gold is None else bool(best_gold > none_gold)
    if not lifted and none_gold is None:
        return {"label": "no none baseline", "stops_better": None, "sentence": f"{name}: no none baseline to compare."}
    if not lifted:
        sentence = f"{name}: no point lies within none's KL range, so there is no path comparison."
        return {"label": "no path comparison", "stops_better": stops, "sentence": sentence}
    top = max(lifted, key=lambda p: p["lift"]["mean"])
    lift_txt = f"{format_ci(top['lift'], signed=True)} at {top['knob']} (n={top['lift']['n']})"
    if any(p["lift"]["lo"] > 0 for p in lifted):
        up = max((p for p in lifted if p["lift"]["lo"] > 0), key=lambda p: p["lift"]["mean"])
        return {"label": "moves the frontier up", "stops_better": stops,
                "sentence": f"{name} moves the frontier up: final gold is {format_ci(up['lift'], signed=True)} "
                            f"above none's own path at the same KL at {up['knob']} (n={up['lift']['n']})."}  # fmt: skip
    if all(p["lift"]["hi"] < 0 for p in lifted):
        return {
            "label": "below none's path",
            "stops_better": stops,
            "sentence": f"{name} is below none's path: every point ends under it (best lift {lift_txt}).",
        }
    cmp = (f"best final gold {best_gold:.3f} vs none's {none_gold:.3f}"
           if stops is not None else "none's final gold unknown")  # fmt: skip
    tail = "stops at a better point" if stops else "does not stop at a better point"
    return {
        "label": "on none's path",
        "stops_better": stops,
        "sentence": f"{name} is on none's path (best lift {lift_txt}) and {tail}: {cmp}.",
    }


# --------------------------------------------------------------------------- #
# analysis
# --------------------------------------------------------------------------- #
def _ranked(names_means: Iterable[tuple[str, float | None]]) -> list[str]:
    items = list(names_means)
    return [n for n, _ in sorted(items, key=lambda nm: (nm[1] is None, -(nm[1] or 0.0)))]


def analyze_frontier(out_dir: str | Path, runs: Mapping[str, Mapping[int, list[dict]]] | None = None) -> dict:
    """Analyse the frontier comparison described by ``OUT/frontier_plan.json``.

    ``runs`` (the output of :func:`~overopt.report.summary.load_runs`) may be
    passed to avoid re-reading.  Returns a JSON-safe dict::

        {"testbed", "preset", "seeds", "budgets", "baselines": {"none", "kl"},
         "sft_gold",                                    # mean step-0 gold over all runs
         "none": {"run", "point", "path": {"step","kl","gold","lo","hi","n"}} | None,
         "methods": {name: {
             "method", "strength_key", "points": [point],
             "envelope": {"kl", "gold", "lo", "hi"},   # on a KL grid, none's point included
             "matched": {budget: {"mean","lo","hi","n","per_seed","chosen","vs_kl","vs_none_early"}},
             "best": {"run","knob","published","strength","gold","kl","hacked"} | None,
             "cv_gold": {"mean","lo","hi","n","per_seed","chosen"},
             "verdict": {"label","stops_better","sentence"}}},
         "none_early": {budget: {"mean","lo","hi","n","per_seed"}},
         "ranking": {"cv_gold": [names], "matched": {budget: [names (+ "none stopped early")]}},
         "verdicts": [sentences]}

    with point = ``{"run","field","value","knob","published","n","seeds",
    "kl","gold","strength" (CIs),"hacked" ("h/n"),"hacked_count","per_seed",
    "lift" (CI + "per_seed") | None}``.  Budget keys are ``f"{budget:g}"``;
    seed keys are strings.  ``vs_kl`` / ``vs_none_early`` are
    :func:`paired_diff_ci` of the matched per-seed gold against kl's matched
    gold and against none stopped early.  Raises FileNotFoundError without a plan.
    """
    out_dir = Path(out_dir)
    plan = load_plan(out_dir)
    if plan is None:
        raise FileNotFoundError(f"{out_dir / PLAN_FILE}: no frontier plan")
    seeds = [int(s) for s in plan["seeds"]] if plan.get("seeds") is not None else None
    budgets = [float(b) for b in plan.get("budgets") or []]
    baselines = plan.get("baselines") or {}
    none_name = baselines.get("none") if baselines.get("none") in plan["methods"] else None
    kl_name = baselines.get("kl") if baselines.get("kl") in plan["methods"] else None

    rows_of: dict[str, dict[int, list[dict]]] = {}
    methods: dict[str, dict[str, Any]] = {}
    for name, spec in plan["methods"].items():
        pts = []
        for point in spec.get("points") or []:
            if point["run"] not in rows_of:
                rows_of[point["run"]] = _load_point(out_dir, point["run"], seeds, runs)
            pts.append(_point_entry(point, rows_of[point["run"]], spec.get("strength_key")))
        methods[name] = {"method": spec.get("method", name), "strength_key": spec.get("strength_key"), "points": pts}

    sft = [_num(rs[0].get("gold_reward")) for sr in rows_of.values() for rs in sr.values()]
    sft = [v for v in sft if v is not None]

    none_pt = methods[none_name]["points"][0] if none_name and methods[none_name]["points"] else None
    none_rows = rows_of.get(none_pt["run"], {}) if none_pt else {}

    # Lift over none's own path, per point (not for the none baseline itself).
    for name, m in methods.items():
        for p in m["points"]:
            if name == none_name or not none_rows:
                p["lift"] = None
                continue
            p["lift"] = lift_over_path(p["_figs"], none_rows)

    # None stopped early at each budget.
    none_early: dict[str, dict[int, float]] = {}
    for b in budgets:
        vals = {s: early_stop_gold(rows, b) for s, rows in none_rows.items()}
        none_early[_bkey(b)] = {s: v for s, v in vals.items() if v is not None}

    # Matched-KL and cross-validated best, both leave-one-seed-out.
    matched_raw: dict[str, dict[str, dict[int, tuple[str, float]]]] = {}
    for name, m in methods.items():
        gold = {p["run"]: {s: f["gold"] for s, f in p["_figs"].items() if f["gold"] is not None} for p in m["points"]}
        kls = {p["run"]: {s: f["kl"] for s, f in p["_figs"].items() if f["kl"] is not None} for p in m["points"]}
        matched_raw[name] = {_bkey(b): loso_select(gold, kls, b) for b in budgets}
        cv = loso_select(gold)
        m["cv_gold"] = {**interval(v for _, v in cv.values()),
                        "per_seed": _str_keys({s: v for s, (_, v) in cv.items()}),
                        "chosen": _str_keys({s: p for s, (p, _) in cv.items()})}  # fmt: skip

    for name, m in methods.items():
        m["matched"] = {}
        for bk, sel in matched_raw[name].items():
            vals = {s: v for s, (_, v) in sel.items()}
            entry = {**interval(vals.values()), "per_seed": _str_keys(vals),
                     "chosen": _str_keys({s: p for s, (p, _) in sel.items()})}  # fmt: skip
            kl_vals = {s: v for s, (_, v) in matched_raw[kl_name][bk].items()} if kl_name else None
            entry["vs_kl"] = paired_diff_ci(vals, kl_vals) if kl_vals is not None and name != kl_name else None
            entry["vs_none_early"] = paired_diff_ci(vals, none_early[bk]) if none_pt else None
            m["matched"][bk] = entry

        scored = [p for p in m["points"] if p["gold"]["mean"] is not None]
        best = max(scored, key=lambda p: p["gold"]["mean"]) if scored else None
        m["best"] = (
            {k: best[k] for k in ("run", "knob", "published", "strength", "gold", "kl", "hacked")} if best else None
        )

        # Envelope over the method's points plus none's point (its "off" end).
        env_pts = [p for p in m["points"] if p["n"] > 0]
        if none_pt is not None and name != none_name and none_pt["n"] > 0:
            env_pts.append(none_pt)
        grid = kl_grid(p["kl"]["mean"] for p in env_pts)
        lo, hi = envelope_band(
            [{s: f["kl"] for s, f in p["_figs"].items() if f["kl"] is not None} for p in env_pts],
            [{s: f["gold"] for s, f in p["_figs"].items() if f["gold"] is not None} for p in env_pts],
            grid,
        )
        gold_env = upper_envelope([p["kl"]["mean"] for p in env_pts], [p["gold"]["mean"] for p in env_pts], grid)
        m["envelope"] = {"kl": grid, "gold": gold_env, "lo": lo, "hi": hi}
        m["verdict"] = method_verdict(
            name, m["points"], none_pt["gold"]["mean"] if none_pt else None, is_none=(name == none_name)
        )

    none_early_out = {
        bk: {**interval(v.values()), "per_seed": _str_keys(v)} for bk, v in none_early.items()
    } if none_pt else {}  # fmt: skip
    ranking = {
        "cv_gold": _ranked((n, m["cv_gold"]["mean"]) for n, m in methods.items()),
        "matched": {
            _bkey(b): _ranked(
                [(n, m["matched"][_bkey(b)]["mean"]) for n, m in methods.items()]
                + ([(NONE_EARLY, none_early_out[_bkey(b)]["mean"])] if none_pt else [])
            )
            for b in budgets
        },
    }
    for m in methods.values():
        for p in m["points"]:
            p.pop("_figs", None)
    return _json_safe({
        "testbed": plan.get("testbed"),
        "preset": plan.get("preset"),
        "seeds": seeds,
        "budgets": budgets,
        "baselines": {"none": none_name, "kl": kl_name},
        "sft_gold": float(np.mean(sft)) if sft else None,
        "none": {"run": none_pt["run"], "point": none_pt, "path": _none_path(none_rows)} if none_pt else None,
        "methods": methods,
        "none_early": none_early_out,
        "ranking": ranking,
        "verdicts": [m["verdict"]["sentence"] for m in methods.values()],
    })  # fmt: skip


def write_frontier(out_dir: str | Path, runs: Mapping[str, Mapping[int, list[dict]]] | None = None) -> dict:
    """:func:`analyze_frontier`, written to ``OUT/frontier.json``; returns the result."""
    result = analyze_frontier(out_dir, runs=runs)
    text = json.dumps(result, indent=2, allow_nan=False)
    (Path(out_dir) / RESULT_FILE).write_text(text + "\n", encoding="utf-8")
    return result


# --------------------------------------------------------------------------- #
# markdown
# --------------------------------------------------------------------------- #
def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _cell(ci: Mapping | None, n_all: int | None, signed: bool = False) -> str:
    text = format_ci(ci, signed=signed)
    if ci and ci.get("mean") is not None and n_all is not None and ci["n"] < n_all and ci["n"] > 1:
        text += f" (n={ci['n']})"
    return text


def matched_rows(result: Mapping) -> tuple[list[str], list[list[str]], list[list[str]]]:
    """Header and rows of the matched-KL table and of its differences table (plain strings)."""
    budgets = [_bkey(b) for b in result.get("budgets") or []]
    n_all = len(result["seeds"]) if result.get("seeds") else None
    header = ["method"] + [f"KL ≤ {b}" for b in budgets]
    rows = [[name] + [_cell(m["matched"][b], n_all) for b in budgets] for name, m in result["methods"].items()]
    if result.get("none_early"):
        rows.append([NONE_EARLY] + [_cell(result["none_early"][b], n_all) for b in budgets])
    kl_name = (result.get("baselines") or {}).get("kl")
    diffs = []
    for name, m in result["methods"].items():
        if kl_name and name != kl_name:
            diffs.append([f"{name} − {kl_name}"] + [_cell(m["matched"][b]["vs_kl"], n_all, True) for b in budgets])
        if result.get("none_early"):
            diffs.append([f"{name} − {NONE_EARLY}"]
                         + [_cell(m["matched"][b]["vs_none_early"], n_all, True) for b in budgets])  # fmt: skip
    diffs = [row for row in diffs if any(cell != "–" for cell in row[1:])]  # no point within any budget: no row
    return header, rows, diffs


def best_rows(result: Mapping) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the best-gold table (plain strings)."""
    header = ["method", "best knob", "strength", "final gold (in-sample best)", "hacked", "CV gold", "verdict"]
    n_all = len(result["seeds"]) if result.get("seeds") else None
    rows = []
    for name, m in result["methods"].items():
        b = m.get("best") or {}
        knob = (b.get("knob", "–") + (" ★" if b.get("published") else "")) if b else "–"
        rows.append([name, knob, _cell(b.get("strength"), n_all), _cell(b.get("gold"), n_all), b.get("hacked", "–"),
                     _cell(m["cv_gold"], n_all), m["verdict"]["label"]])  # fmt: skip
    return header, rows


def frontier_markdown(result: Mapping) -> str:
    """Markdown for RESULTS.md / the README: (a) gold at matched KL budgets
    (methods + none stopped early × budgets, cells "mean [lo, hi]") and the
    per-seed paired differences vs kl and vs none stopped early; (b) the best
    final gold over the grid (in-sample best point, its strength and hacked
    seeds, leave-one-seed-out CV gold, verdict); then one verdict line per
    method.  CIs are 95 % Student t over seeds; "(n=k)" marks missing seeds."""
    header, rows, diffs = matched_rows(result)
    parts = [
        "**Gold at matched KL budgets** (per seed, among the points whose final KL is within the budget, the "
        "one with the best mean gold over the other seeds"
        + (
            "; none stopped early = none halted at the last evaluation before its KL crossed the budget"
            if result.get("none_early")
            else ""
        )
        + "). Mean [95 % Student t interval] over seeds.",
        "",
        _md_table(header, rows),
    ]
    if diffs:
        parts += [
            "",
            "Paired differences per seed (mean [95 % CI]):",
            "",
            _md_table(["comparison"] + header[1:], diffs),
        ]
    bh, brows = best_rows(result)
    parts += [
        "",
        "**Best final gold over the grid** (in-sample best point, ★ = published setting; CV gold = "
        "leave-one-seed-out: choose on the other seeds, read at the held-out one).",
        "",
        _md_table(bh, brows),
        "",
    ]
    parts += [f"- {s}" for s in result.get("verdicts") or []]
    return "\n".join(parts) + "\n"


# --------------------------------------------------------------------------- #
# plots
# --------------------------------------------------------------------------- #
def error_bars(cis: list[dict]) -> np.ndarray:
    """Asymmetric error bars (mean − lo, hi − mean) of CIs, clipped at 0; a CI without bounds (one unit: n = 1,
    lo and hi None) gets none (0), so one seed's point is drawn without a bar instead of failing the plot."""

    def half(a, b):
        return a - b if a is not None and b is not None else 0.0

    err = np.array([[half(c["mean"], c["lo"]) for c in cis], [half(c["hi"], c["mean"]) for c in cis]], dtype=float)
    return np.clip(err, 0.0, None)


def _sqrt_axis(ax, xmax: float) -> None:
    ax.set_xscale("function", functions=(lambda x: np.sqrt(np.clip(x, 0, None)), lambda x: np.square(x)))
    ticks = [0.0] + [t for t in (0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128, 256) if t <= xmax * 1.05]
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:g}" for t in ticks], fontsize=8)
    ax.set_xlim(0, xmax * 1.08 if xmax > 0 else 1.0)


def _label(p: dict, many_fields: bool) -> str:
    if p.get("field") is None:
        return "off"
    v = f"{p['value']:g}" if isinstance(p.get("value"), (int, float)) else str(p.get("value"))
    return f"{p['field'].rsplit('.', 1)[-1]}={v}" if many_fields else v


def _frontier_panel(ax, name: str, m: dict, result: dict, color) -> None:
    none = result.get("none")
    if none and none["path"]["kl"]:
        path = none["path"]
        x = np.array(path["kl"])
        ax.plot(x, path["gold"], color="0.45", linestyle="--", linewidth=1.3, label="none's path")
        lo = np.array([np.nan if v is None else v for v in path["lo"]], dtype=float)
        hi = np.array([np.nan if v is None else v for v in path["hi"]], dtype=float)
        ax.fill_between(x, lo, hi, color="0.6", alpha=0.18, linewidth=0)
        p = none["point"]
        if p["n"]:
            ax.plot([p["kl"]["mean"]], [p["gold"]["mean"]], "X", color="0.3", markersize=7, label="none (final)")
    kl_name = result["baselines"].get("kl")
    if kl_name and name != kl_name:
        kp = [p for p in result["methods"][kl_name]["points"] if p["n"]]
        if kp:
            ax.plot([p["kl"]["mean"] for p in kp], [p["gold"]["mean"] for p in kp], "s", color="0.75",
                    markersize=5, label=f"{kl_name} points", zorder=2)  # fmt: skip
    env = m["envelope"]
    ex = np.array(env["kl"], dtype=float)
    ey = np.array([np.nan if v is None else v for v in env["gold"]], dtype=float)
    elo = np.array([np.nan if v is None else v for v in env["lo"]], dtype=float)
    ehi = np.array([np.nan if v is None else v for v in env["hi"]], dtype=float)
    ax.plot(ex, ey, color=color, linewidth=1.6, drawstyle="steps-post", label="envelope", zorder=3)
    ax.fill_between(ex, elo, ehi, color=color, alpha=0.15, linewidth=0, step="post")
    pts = [p for p in m["points"] if p["n"]]
    many = len({p.get("field") for p in pts}) > 1
    for published in (False, True):
        sel = [p for p in pts if p["published"] == published]
        if not sel:
            continue
        ax.errorbar([p["kl"]["mean"] for p in sel], [p["gold"]["mean"] for p in sel],
                    xerr=error_bars([p["kl"] for p in sel]), yerr=error_bars([p["gold"] for p in sel]),
                    fmt="*" if published else "o", markersize=11 if published else 5,
                    color=color, ecolor=color, elinewidth=0.9, capsize=2, zorder=4,
                    markeredgecolor="black" if published else color,
                    label="published setting" if published else f"{name} points")  # fmt: skip
    for p in pts:
        ax.annotate(_label(p, many), (p["kl"]["mean"], p["gold"]["mean"]), textcoords="offset points",
                    xytext=(4, 5), fontsize=7, color="black" if p["published"] else color,
                    fontweight="bold" if p["published"] else "normal")  # fmt: skip
    if result.get("sft_gold") is not None:
        ax.axhline(result["sft_gold"], color="0.3", linestyle=":", linewidth=1.1, label="SFT policy")


def plot_frontier(out_dir: str | Path, result: Mapping) -> list[Path]:
    """Write ``OUT/plots/frontier_methods.png`` and ``OUT/plots/matched_kl.png``.

    frontier_methods: one panel per method (none excluded), final gold vs final
    KL on a √ axis (ticks in nats): none's mean trajectory (grey dashed, gold
    CI band) and final point, kl's points (light grey squares), the method's
    points with 95 % CI bars in both axes labelled by knob value (published
    setting a starred, bold label), its upper envelope (step line + jackknife t
    band) and the SFT gold (dotted).  matched_kl: gold at each KL budget per
    method with CI whiskers; none stopped early (black diamonds) and kl
    (dark grey squares) marked distinctly.  Returns the paths written.
    """
    from .plots import method_colors, new_figure, save_figure, style_axes

    result = dict(result)
    plot_dir = Path(out_dir) / "plots"
    plot_dir.mkdir(parents=True, exist_ok=True)
    none_name = result["baselines"].get("none")
    kl_name = result["baselines"].get("kl")
    names = [n for n in result["methods"] if n != none_name]
    colors = method_colors(list(result["methods"]))
    paths: list[Path] = []

    # The axis reaches the top of every point's KL bar; a point of one seed has no bar, only its mean.
    xs = [p["kl"]["mean"] if p["kl"]["hi"] is None else p["kl"]["hi"]
          for m in result["methods"].values() for p in m["points"] if p["n"]]  # fmt: skip
    if result.get("none") and result["none"]["path"]["kl"]:
        xs += result["none"]["path"]["kl"]
    xmax = max(xs) if xs else 1.0
    if names:
        ncols = min(3, len(names))
        nrows = math.ceil(len(names) / ncols)
        fig = new_figure(5.0 * ncols, 3.9 * nrows + 0.5)
        axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False, sharey=True)).ravel()
        for ax, name in zip(axes, names):
            _frontier_panel(ax, name, result["methods"][name], result, colors[name])
            _sqrt_axis(ax, xmax)
            style_axes(ax, f"{name}  ({result['methods'][name]['verdict']['label']})", "final KL to SFT (nats, √ axis)",
                   "final gold reward")  # fmt: skip
            ax.legend(fontsize=7, frameon=False, loc="best")
        for ax in axes[len(names) :]:
            ax.set_visible(False)
        fig.suptitle("Frontier per method: final gold vs final KL (mean, 95% t interval over seeds)", fontsize=12)
        paths.append(save_figure(fig, plot_dir / "frontier_methods.png"))

    budgets = [_bkey(b) for b in result.get("budgets") or []]
    if budgets:
        series = [(n, result["methods"][n]["matched"]) for n in result["methods"]]
        if result.get("none_early"):
            series.append((NONE_EARLY, result["none_early"]))
        fig = new_figure(min(11.0, max(6.5, 1.2 * len(budgets) + 0.2 * len(series) * len(budgets))), 4.6)
        ax = fig.add_subplot(1, 1, 1)
        width = 0.8 / max(len(series), 1)
        for i, (name, by_b) in enumerate(series):
            xi = [j - 0.4 + width * (i + 0.5) for j, b in enumerate(budgets) if by_b[b]["n"]]
            cis = [by_b[b] for b in budgets if by_b[b]["n"]]
            if not cis:
                continue
            style = {"fmt": "o", "color": colors.get(name), "markersize": 6}
            if name == NONE_EARLY:
                style = {"fmt": "D", "color": "black", "markersize": 7}
            elif name == kl_name:
                style = {"fmt": "s", "color": "0.35", "markersize": 7}
            elif name == none_name:
                style = {"fmt": "X", "color": "0.55", "markersize": 7}
            ax.errorbar(
                xi, [c["mean"] for c in cis], yerr=error_bars(cis), capsize=3, elinewidth=1.1, label=name, **style
            )
        if result.get("sft_gold") is not None:
            ax.axhline(result["sft_gold"], color="0.3", linestyle=":", linewidth=1.1, label="SFT policy")
        ax.set_xticks(range(len(budgets)))
        ax.set_xlim(-0.5, len(budgets) - 0.5)
        ax.set_xticklabels([f"KL ≤ {b}" for b in budgets])
        for j in range(len(budgets) - 1):
            ax.axvline(j + 0.5, color="0.85", linewidth=0.8)
        title = "Gold at matched KL budgets (leave-one-seed-out choice; mean, 95% t interval over seeds)"
        style_axes(ax, title, "KL budget (nats)", "gold reward")
        ax.legend(fontsize=8, frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5))
        paths.append(save_figure(fig, plot_dir / "matched_kl.png"))
    return paths
