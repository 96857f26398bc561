"""Statistics over lab replicates (overopt.labs): the lab is the unit, RL seeds are nested within it.

Read from each lab's own outputs (OUT/labs/lab<i>/summary.json, frontier_plan.json, scaling.json), written to
OUT/summary.json and OUT/labs.md, shown as a table. Every interval is overopt.stats.interval over the labs'
means (Student t, n = labs); a difference between methods is paired within a lab and seed (the per-seed
differences of one lab averaged, then the interval over labs).

- `run`: per method, final gold, peak gold and final KL over labs, hacked runs out of (lab, seed), each
  quantity's variance split between labs and within a lab (stats.variance_components), and each method
  against `none` (or the first method); the testbed's validity at this preset (`none` hacks in ≥ 80 % of
  the (lab, seed) runs, gold first rises above the SFT level in ≥ 90 %); where one new lab would fall
  (stats.prediction_interval).
- `compare`: each lab's frontier analysis (report.frontier.analyze_frontier), then gold at matched KL paired
  against `kl` and against `none` stopped early, and the leave-one-seed-out best point (also against `kl`'s,
  paired within lab), over labs. Also each point chosen on the other labs (leave-one-lab-out,
  `leave_one_lab_out`): the strength a user would pick from other RMs, read on a new one. It needs no second
  seed, so it is the matched-KL figure of a study with one RL seed per lab (`--seeds 1`), where a lab's own
  choice would be in sample.
- `scaling`: each cell's RM accuracy and each method's fitted α, β and predicted peak d* over labs; each
  lab's log-linear trend of α, β, d* and the RM's accuracy along each axis, the slope's interval over labs
  (does a bigger RM overoptimize later? its d* slope against log10 RM parameters, with the lab as the unit).
- `run` and `compare` also: each mechanism claim's figures (report.mechanisms.mechanism_verdicts on each
  lab's summary.json) over labs, with the claim's verdict from the interval over labs.
Never imports torch.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from overopt.labs import read_labs
from overopt.stats import interval, labs_to_resolve, prediction_interval, variance_components

from .frontier import analyze_frontier, format_ci, loso_select, paired_diff_ci
from .mechanisms import mechanism_verdicts, verdict_status
from .scaling import AXIS_X, log_linear_trend, trends
from .summary import _json_safe, _num

VALID_HACKED, VALID_ROSE = 0.8, 0.9  # the testbed-validity bar (issue 29): share of (lab, seed) runs of `none`
LEVEL_KEYS = ("gold_final", "gold_peak", "kl_final")
SCALING_KEYS = ("alpha", "beta", "d_peak")  # each method's fit per cell (laws.Fit); d_peak: the predicted peak d*
SIGNED_MECH = ("change", "refit_gain", "corr", "corr_diff")  # differences and correlations print with a sign


def _lab_summaries(out: Path, labs: list[dict], name: str) -> list[dict | None]:
    paths = [out / lab["out"] / name for lab in labs]
    return [json.loads(p.read_text()) if p.is_file() else None for p in paths]


def _by_seed(entry: dict, key: str) -> dict[int, float]:
    return {s["seed"]: v for s in entry.get("seeds") or [] if (v := _num(s.get(key))) is not None}


def _paired(a: dict[int, float], b: dict[int, float]) -> list[float]:
    return [a[s] - b[s] for s in sorted(a.keys() & b.keys())]


def _components(per_lab: list[list[float]], effect: float | None = None) -> dict[str, Any]:
    """Between/within split of per-(lab, seed) values, and the labs it takes to resolve `effect` from 0."""
    parts = variance_components([v for v in per_lab if v])
    if parts is None:
        return {}
    if effect is not None:
        seeds = int(np.mean([len(v) for v in per_lab if v]))
        parts["labs_to_resolve"] = labs_to_resolve(effect, parts["between_var"], parts["within_var"], seeds)
    return parts


def run_statistics(out: Path, labs: list[dict]) -> dict[str, Any]:
    """Statistics over labs of `overopt run --labs N` (module docstring)."""
    summaries = _lab_summaries(out, labs, "summary.json")
    done = [(lab, s) for lab, s in zip(labs, summaries, strict=True) if s is not None]
    names = list(dict.fromkeys(m for _, s in done for m in s["methods"]))
    baseline = "none" if "none" in names else (names[0] if names else None)
    methods: dict[str, Any] = {}
    for name in names:
        entries = [(lab, s["methods"][name]) for lab, s in done if name in s["methods"]]
        entry: dict[str, Any] = {"labs": len(entries), "seeds": [e.get("n_seeds") for _, e in entries]}
        for key in LEVEL_KEYS:
            per_lab = [list(_by_seed(e, key).values()) for _, e in entries]
            entry[key] = interval(float(np.mean(v)) for v in per_lab if v)
            entry[key]["per_lab"] = [float(np.mean(v)) if v else None for v in per_lab]
            entry[key]["new_lab"] = prediction_interval(entry[key]["per_lab"])  # where one more lab would fall
            entry[key]["variance"] = _components(per_lab)
        runs = [s for _, e in entries for s in e.get("seeds") or []]
        entry["hacked"] = {"runs": sum(bool(s.get("hacked")) for s in runs), "of": len(runs)}
        entry["rose"] = {"runs": sum(bool(s.get("rose")) for s in runs), "of": len(runs)}
        if baseline and name != baseline:
            diffs = [_paired(_by_seed(s["methods"][name], "gold_final"), _by_seed(s["methods"][baseline], "gold_final"))
                     for _, s in done if name in s["methods"] and baseline in s["methods"]]  # fmt: skip
            diff = interval(float(np.mean(d)) for d in diffs if d)
            entry["vs_baseline"] = {**diff, "baseline": baseline, "per_lab": [float(np.mean(d)) for d in diffs if d],
                                    "variance": _components(diffs, diff["mean"])}  # fmt: skip
        methods[name] = entry
    sft = [_num((s.get("sft") or {}).get("gold_reward")) for _, s in done]
    rm = [_num((((s.get("stages") or {}).get("rm") or {}).get("metrics") or {}).get("heldout_accuracy"))
          for _, s in done]  # fmt: skip
    result = {
        "kind": "run", "labs": len(labs), "labs_done": len(done), "baseline": baseline,
        "testbed": done[0][1].get("testbed") if done else None, "preset": done[0][1].get("preset") if done else None,
        "sft_gold": {**interval(sft), "per_lab": sft}, "rm_accuracy": {**interval(rm), "per_lab": rm},
        "methods": methods, "mechanisms": mechanism_statistics(summaries),
    }  # fmt: skip
    if "none" in methods:
        none = methods["none"]
        hacked = none["hacked"]["runs"] / max(1, none["hacked"]["of"])
        rose = none["rose"]["runs"] / max(1, none["rose"]["of"])
        result["validity"] = {"hacked_share": hacked, "rose_share": rose, "runs": none["hacked"]["of"],
                              "labs": none["labs"], "bar": {"hacked": VALID_HACKED, "rose": VALID_ROSE},
                              "valid": hacked >= VALID_HACKED and rose >= VALID_ROSE}  # fmt: skip
    return result


def mechanism_statistics(summaries: list[dict | None]) -> dict[str, Any]:
    """Each mechanism claim over the labs' summaries: every figure of the claim's verdict (its mean over one
    lab's runs) as one unit per lab, the interval over labs, and the verdict of the figure that decided it in
    most labs (report.mechanisms.mechanism_verdicts' ``deciding``), tested the same way over labs."""
    claims: dict[str, Any] = {}
    for summary in summaries:
        for item in mechanism_verdicts(summary) if summary is not None else []:
            claim = claims.setdefault(item["claim"], {"method": item["method"], "statement": item["statement"],
                                                      "numbers": {}, "deciding_by_lab": []})  # fmt: skip
            claim["deciding_by_lab"].append(tuple(item["deciding"]))
            for key, ci in item["numbers"].items():
                claim["numbers"].setdefault(key, []).append(_num(ci.get("mean")))
    for claim in claims.values():
        claim["numbers"] = {k: {**interval(v), "per_lab": v} for k, v in claim["numbers"].items()}
        key, above, expect_up = Counter(claim.pop("deciding_by_lab")).most_common(1)[0][0]
        claim["deciding"] = key
        claim["status"] = verdict_status(claim["numbers"][key], above, expect_up)
    return claims


def compare_statistics(out: Path, labs: list[dict]) -> dict[str, Any]:
    """Statistics over labs of `overopt compare --labs N`: each lab's frontier, then matched KL over labs."""
    frontiers = []
    for lab in labs:
        lab_out = out / lab["out"]
        frontiers.append(analyze_frontier(lab_out) if (lab_out / "frontier_plan.json").is_file() else None)
    done = [f for f in frontiers if f is not None]
    budgets = [f"{b:g}" for b in (done[0]["budgets"] if done else [])]
    methods: dict[str, Any] = {}
    for name in dict.fromkeys(m for f in done for m in f["methods"]):
        per = [f["methods"][name] for f in done if name in f["methods"]]
        entry: dict[str, Any] = {"labs": len(per), "cv_gold": _over_labs([m["cv_gold"] for m in per]),
                                 "matched": {}}  # fmt: skip
        for b in budgets:
            cells = [m["matched"].get(b) or {} for m in per]
            entry["matched"][b] = {
                "gold": _over_labs(cells),
                "vs_kl": _over_labs([c.get("vs_kl") or {} for c in cells]),
                "vs_none_early": _over_labs([c.get("vs_none_early") or {} for c in cells]),
            }
        methods[name] = entry
    if "kl" in methods:  # each method's best point (leave-one-seed-out) against kl's, paired within lab
        kl_cv = [f["methods"].get("kl", {}).get("cv_gold", {}).get("mean") for f in done]
        for name, entry in methods.items():
            mine = [f["methods"].get(name, {}).get("cv_gold", {}).get("mean") for f in done]
            diffs = [a - b for a, b in zip(mine, kl_cv, strict=True) if _num(a) is not None and _num(b) is not None]
            entry["cv_vs_kl"] = {**interval(diffs), "per_lab": diffs}
    return {
        "kind": "compare", "labs": len(labs), "labs_done": len(done), "budgets": budgets,
        "one_seed": bool(done) and all(len(f.get("seeds") or []) == 1 for f in done),
        "lolo": leave_one_lab_out(done, budgets),
        "testbed": done[0]["testbed"] if done else None, "preset": done[0]["preset"] if done else None,
        "sft_gold": _over_labs([{"mean": f.get("sft_gold")} for f in done]), "methods": methods,
        "mechanisms": mechanism_statistics(_lab_summaries(out, labs, "summary.json")),
    }  # fmt: skip


def _lab_means(frontier: dict, name: str, key: str) -> dict[str, float]:
    """Point (its run name) -> the lab's mean over its seeds of `key` ('gold' or 'kl', final values)."""
    out = {}
    for point in frontier["methods"].get(name, {}).get("points") or []:
        values = [v for f in (point.get("per_seed") or {}).values() if (v := _num(f.get(key))) is not None]
        if values:
            out[point["run"]] = float(np.mean(values))
    return out


def _by_point(per_lab: list[dict[str, float]]) -> dict[str, dict[int, float]]:
    return {
        p: {j: lab[p] for j, lab in enumerate(per_lab) if p in lab}
        for p in dict.fromkeys(k for lab in per_lab for k in lab)
    }


def _selection(chosen: dict[int, tuple[str, float]], n_labs: int) -> dict[str, Any]:
    """Interval over labs of the chosen points' gold, with each lab's value and choice."""
    values = {j: v for j, (_, v) in chosen.items()}
    return {**interval(values.values()), "per_lab": [values.get(j) for j in range(n_labs)],
            "chosen": [chosen[j][0] if j in chosen else None for j in range(n_labs)]}  # fmt: skip


def _versus(chosen: dict[int, tuple[str, float]], against: dict[int, float], n_labs: int) -> dict[str, Any]:
    """The chosen points' gold minus `against`, paired within lab (labs that have both)."""
    values = {j: v for j, (_, v) in chosen.items()}
    diff = paired_diff_ci(values, against)
    return {**{k: diff[k] for k in ("mean", "lo", "hi", "n")},
            "per_lab": [values[j] - against[j] if j in diff["seeds"] else None for j in range(n_labs)]}  # fmt: skip


def leave_one_lab_out(frontiers: list[dict], budgets: list[str]) -> dict[str, Any]:
    """Each method's point chosen on the other labs and read on the held-out one, for every lab in turn.

    A lab's value at a point is its mean over its RL seeds of the final gold (and KL). At budget b, lab j takes
    the point, among those whose KL at lab j is ≤ b, with the best mean gold over the other labs
    (report.frontier.loso_select with labs as the units); `cv_gold` the same at any KL. Differences against
    `kl`'s own choice and against `none` stopped early (its lab mean) are paired within lab. Frontiers are
    analyze_frontier outputs, one per lab; empty with fewer than 2 labs, where nothing is left to choose on."""
    n = len(frontiers)
    if n < 2:
        return {}
    names = list(dict.fromkeys(m for f in frontiers for m in f["methods"]))
    gold = {m: _by_point([_lab_means(f, m, "gold") for f in frontiers]) for m in names}
    kls = {m: _by_point([_lab_means(f, m, "kl") for f in frontiers]) for m in names}
    chosen = {m: {b: loso_select(gold[m], kls[m], float(b)) for b in budgets} for m in names}
    cv = {m: loso_select(gold[m]) for m in names}
    early = {b: {j: v for j, f in enumerate(frontiers)
                 if (v := _num(((f.get("none_early") or {}).get(b) or {}).get("mean"))) is not None}
             for b in budgets}  # fmt: skip

    def values(selected: dict[int, tuple[str, float]]) -> dict[int, float]:
        return {j: v for j, (_, v) in selected.items()}

    result: dict[str, Any] = {}
    for m in names:
        entry: dict[str, Any] = {"cv_gold": _selection(cv[m], n), "matched": {}}
        if "kl" in names and m != "kl":
            entry["cv_gold"]["vs"] = _versus(cv[m], values(cv["kl"]), n)
        for b in budgets:
            cell = _selection(chosen[m][b], n)
            if "kl" in names and m != "kl":
                cell["vs"] = _versus(chosen[m][b], values(chosen["kl"][b]), n)
            cell["vs_none_early"] = _versus(chosen[m][b], early[b], n) if m != "none" and early[b] else None
            entry["matched"][b] = cell
        result[m] = entry
    return result


def _over_labs(cells: list[dict]) -> dict[str, Any]:
    """Interval over labs of each lab's estimate (`mean` of its own seeds' interval or paired difference)."""
    per_lab = [_num(c.get("mean")) for c in cells]
    return {**interval(per_lab), "per_lab": per_lab}


def scaling_statistics(out: Path, labs: list[dict]) -> dict[str, Any]:
    """Statistics over labs of `overopt scaling --labs N` (module docstring)."""
    results = _lab_summaries(out, labs, "scaling.json")
    done = [r for r in results if r is not None]
    cells: dict[str, Any] = {}
    slopes: dict[str, Any] = {}  # {axis: {method or "rm_accuracy": {key: [slope per lab]}}}
    for r in done:
        fine = [c for c in r["cells"] if "error" not in c]
        for cell in fine:
            c = cells.setdefault(cell["cell"], {"axis": cell["axis"], "value": cell["value"], "rm_accuracy": [],
                                                "methods": {}})  # fmt: skip
            c["rm_accuracy"].append(_num(cell.get("rm_accuracy")))
            for m, e in (cell.get("methods") or {}).items():
                fit = e.get("fit") or {}
                for k in SCALING_KEYS:
                    c["methods"].setdefault(m, {}).setdefault(k, []).append(_num(fit.get(k)))
        methods = list(dict.fromkeys(m for c in fine for m in c.get("methods") or {}))
        lab_trends = trends(fine, methods, SCALING_KEYS)  # the one-lab report's trends, with d* added
        for axis, x_key in AXIS_X.items():
            members = [c for c in fine if c["axis"] in (axis, "base")]
            accuracy = log_linear_trend([c.get(x_key) for c in members], [c.get("rm_accuracy") for c in members])
            lab_trends[axis]["rm_accuracy"] = {"accuracy": accuracy}
            for name, ks in lab_trends[axis].items():
                for k, trend in ks.items():
                    slopes.setdefault(axis, {}).setdefault(name, {}).setdefault(k, []).append(
                        _num((trend or {}).get("slope"))
                    )
    for c in cells.values():
        c["rm_accuracy"] = {**interval(c["rm_accuracy"]), "per_lab": c["rm_accuracy"]}
        c["methods"] = {m: {k: {**interval(v), "per_lab": v} for k, v in ks.items()} for m, ks in c["methods"].items()}
    over_labs = {a: {m: {k: {**interval(v), "per_lab": v} for k, v in ks.items()} for m, ks in ms.items()}
                 for a, ms in slopes.items()}  # fmt: skip
    return {"kind": "scaling", "labs": len(labs), "labs_done": len(done), "cells": cells, "trends": over_labs}


STATISTICS = {"run": run_statistics, "compare": compare_statistics, "scaling": scaling_statistics}


def labs_markdown(result: dict) -> str:
    """OUT/labs.md: the tables of the statistics over labs."""
    n = f"{result['labs_done']} of {result['labs']} labs"
    lines = [f"# Over labs ({result['kind']}, {n})", ""]
    if result["kind"] == "run":
        lines += [
            f"Testbed `{result['testbed']}`, preset `{result['preset']}`. Mean over labs [95 % Student t "
            "interval, unit: the lab; RL seeds averaged within each lab]. SFT gold "
            f"{format_ci(result['sft_gold'])}; proxy RM held-out accuracy {format_ci(result['rm_accuracy'])}.",
            "",
            f"| method | gold final | gold peak | KL final | hacked runs | vs {result['baseline']} "
            "(paired) | sd between / within labs (gold final) | labs to resolve |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, m in result["methods"].items():
            v = m["gold_final"]["variance"]
            split = f"{v['between_sd']:.3f} / {v['within_sd']:.3f}" if v else "–"
            vs = m.get("vs_baseline")
            need = (vs or {}).get("variance", {}).get("labs_to_resolve")
            lines.append(
                f"| {name} | {format_ci(m['gold_final'])} | {format_ci(m['gold_peak'])} | "
                f"{format_ci(m['kl_final'], 2)} | {m['hacked']['runs']}/{m['hacked']['of']} | "
                f"{format_ci(vs, signed=True) if vs else ''} | {split} | {need if need else '–'} |"
            )
        new_lab = [f"{name} {format_ci(m['gold_final']['new_lab'])}" for name, m in result["methods"].items()]
        lines += ["", "Final gold of one new lab (95 % prediction interval, mean ± t·sd·√(1 + 1/labs)): "
                  + "; ".join(new_lab) + "."]  # fmt: skip
        if "validity" in result:
            v = result["validity"]
            lines += [
                "",
                f"Validity (`none`, {v['runs']} runs over {v['labs']} labs): hacks in {v['hacked_share']:.0%} "
                f"(bar {v['bar']['hacked']:.0%}), gold rises above SFT in {v['rose_share']:.0%} (bar "
                f"{v['bar']['rose']:.0%}): {'valid' if v['valid'] else 'NOT valid'}.",
            ]
    elif result["kind"] == "compare":
        lines += _compare_markdown(result)
    else:
        methods = list(dict.fromkeys(m for c in result["cells"].values() for m in c["methods"]))
        lines += [
            "Per cell: the proxy RM's held-out accuracy and each method's fitted α, β and predicted peak d* "
            "(√KL at the gold peak), mean over labs [95 % Student t interval, unit: the lab; the fit per lab over "
            "its seeds].",
            "",
            "| cell | axis | RM accuracy | " + " | ".join(f"{m} α | {m} β | {m} d*" for m in methods) + " |",
            "|---|---|---|" + "---|---|---|" * len(methods),
        ]
        for name, c in result["cells"].items():
            fits = [format_ci((c["methods"].get(m) or {}).get(k)) for m in methods for k in SCALING_KEYS]
            lines.append(f"| {name} | {c['axis']} | {format_ci(c['rm_accuracy'])} | " + " | ".join(fits) + " |")
        lines += [
            "",
            "Slope against log10 of the axis (RM or policy parameters, pairs), each lab's own log-linear trend over "
            "the axis's cells, mean over labs [95 % t interval]; above 0: grows with the axis.",
            "",
            "| axis | method | α slope | β slope | d* slope |",
            "|---|---|---|---|---|",
        ]
        for axis, ms in result["trends"].items():
            for m, ks in ms.items():
                if m == "rm_accuracy":
                    continue
                cells = " | ".join(format_ci(ks.get(k), signed=True) for k in SCALING_KEYS)
                lines.append(f"| {axis} | {m} | {cells} |")
        accuracy = [f"{axis} {format_ci(ms['rm_accuracy']['accuracy'], signed=True)}"
                    for axis, ms in result["trends"].items() if "rm_accuracy" in ms]  # fmt: skip
        lines += ["", "RM accuracy slope per axis: " + "; ".join(accuracy) + "."]
    if result.get("mechanisms"):
        lines += [""] if lines[-1] else []
        lines += ["**Mechanisms over labs**: each figure one lab's mean over its runs (of `none` for the accuracy "
                  "and flip-rate changes, of every run that has it otherwise), then the mean over labs [95 % t "
                  "interval, unit: the lab]; the verdict is the deciding figure's.", "",
                  "| claim | verdict over labs (deciding figure) | figures |", "|---|---|---|"]  # fmt: skip
        for c in result["mechanisms"].values():
            figures = "; ".join(f"{k} {format_ci(v, signed=k in SIGNED_MECH)}" for k, v in c["numbers"].items()
                                if v.get("n"))  # fmt: skip
            lines.append(f"| {c['method']}: {c['statement']} | {c['status']} ({c['deciding']}) | {figures} |")
    return "\n".join(lines) + "\n"


_COMPARE_TABLES = (
    ("Gold at matched KL", "gold", None),
    ("Paired against `kl`", "vs_kl", "kl"),
    ("Paired against `none` stopped early", "vs_none_early", "none"),
)


def _compare_tables(budgets: list[str], rows: dict[str, tuple[str, str, dict[str, dict]]], suffix: str) -> list[str]:
    """The three matched-KL tables; `rows`: method -> (cv gold, cv gold − kl, {key: {budget: cell}})."""
    lines: list[str] = []
    for title, key, reference in _COMPARE_TABLES:
        lead_cols = 2 if key == "gold" else 0
        lines += [f"**{title}{suffix}**", "", "| method | " + ("cv gold | cv gold − kl | " if lead_cols else "")
                  + " | ".join(f"KL ≤ {b}" for b in budgets) + " |",
                  "|" + "---|" * (1 + lead_cols + len(budgets))]  # fmt: skip
        for name, (cv, cv_vs_kl, cells) in rows.items():
            if reference and (name == reference or not any((cells[key][b] or {}).get("n") for b in budgets)):
                continue  # the reference itself, or nothing to pair with
            text = [format_ci(cells[key][b], signed=bool(reference)) for b in budgets]
            lead = f"{cv} | {cv_vs_kl if name != 'kl' else ''} | " if key == "gold" else ""
            lines.append(f"| {name} | {lead}" + " | ".join(text) + " |")
        lines.append("")
    return lines


def _compare_markdown(result: dict) -> list[str]:
    """`compare`'s tables: each lab's own (leave-one-seed-out) choice, unless every lab has one seed, where that
    choice would be in sample; then the choice made on the other labs (leave-one-lab-out)."""
    budgets, lines = result["budgets"], []
    head = f"Testbed `{result['testbed']}`, preset `{result['preset']}`. "
    if not result.get("one_seed"):
        lines += [
            head + "Gold at matched KL, each lab's leave-one-seed-out choice; paired differences within lab and "
            "seed, then mean over labs [95 % Student t interval, unit: the lab]. cv gold: each lab's "
            "leave-one-seed-out best point at any KL; cv gold − kl: the same against `kl`'s, paired within lab.",
            "",
        ]
        rows = {name: (format_ci(m["cv_gold"]), format_ci(m.get("cv_vs_kl"), signed=True),
                       {key: {b: m["matched"][b][key] for b in budgets} for _, key, _ in _COMPARE_TABLES})
                for name, m in result["methods"].items()}  # fmt: skip
        lines += _compare_tables(budgets, rows, "")
        head = ""
    if result.get("lolo"):
        lines += [
            head + "Chosen on the other labs (leave-one-lab-out): at each KL budget, lab j takes the point with the "
            "best mean gold over the other labs among those within the budget at lab j, and its gold there (mean "
            "over its seeds) is lab j's value; paired differences within lab, then mean over labs [95 % Student t "
            "interval, unit: the lab]. cv gold: the same at any KL."
            + (
                " Every lab has one RL seed, so a lab's own choice would be in sample: these are the study's tables."
                if result.get("one_seed")
                else ""
            ),
            "",
        ]
        rows = {name: (format_ci(m["cv_gold"]), format_ci(m["cv_gold"].get("vs"), signed=True),
                       {"gold": {b: m["matched"][b] for b in budgets},
                        "vs_kl": {b: m["matched"][b].get("vs") for b in budgets},
                        "vs_none_early": {b: m["matched"][b].get("vs_none_early") for b in budgets}})
                for name, m in result["lolo"].items()}  # fmt: skip
        lines += _compare_tables(budgets, rows, " (chosen on the other labs)")
    return lines


def build_labs_report(out: str | Path, console=None) -> dict:
    """OUT/summary.json and OUT/labs.md from the labs' outputs (OUT/labs.json says which); prints the tables."""
    out = Path(out)
    record = read_labs(out)
    if record is None:
        raise FileNotFoundError(f"{out}: no labs.json (is it the output of a command with --labs?)")
    result = STATISTICS[record["kind"]](out, record["labs"])
    result["replicates"] = record["labs"]
    result["hold"] = record.get("hold")
    (out / "summary.json").write_text(json.dumps(_json_safe(result), indent=2, allow_nan=False) + "\n")
    text = labs_markdown(result)
    (out / "labs.md").write_text(text)
    if console is not None:
        from rich.markdown import Markdown

        console.print(Markdown(text))
    return result
