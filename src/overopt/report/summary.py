"""Load a run output directory and condense it into ``summary.json``.

This module only *reads* the output directory written by ``overopt run``
(plus writes ``summary.json`` into it).  It must not import torch or
transformers: reports are built on machines that may only have the
lightweight dependencies installed.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from overopt.laws import fit_curves
from overopt.stats import finite_float as _num

from .common import is_best_of_n, load_config, order_methods
from .mechanisms import MECH_KEYS, run_mechanisms

__all__ = [
    "FINAL_KEYS",
    "STAT_KEYS",
    "build_summary",
    "gain_curve",
    "hacking_check",
    "is_best_of_n",
    "method_fit",
    "load_config",
    "load_runs",
    "load_stages",
    "mean_std",
    "order_methods",
    "write_summary",
]

# Per-seed scalars that are aggregated over seeds in summary["methods"][m].
STAT_KEYS = ("gold_final", "gold_peak", "proxy_final", "kl_final", "wall_s", "gold_peak_step")
# metrics.jsonl key read from the last row for each "final" scalar.
FINAL_KEYS = {
    "gold_final": "gold_reward",
    "proxy_final": "proxy_reward",
    "kl_final": "kl_sft",
    "wall_s": "wall_s",
}
# Stages with a known order; any other artifact directory follows alphabetically.
_STAGE_ORDER = ("sft", "pairs", "judge_data", "rm")
_SEED_RE = re.compile(r"^seed(\d+)$")


# --------------------------------------------------------------------------- #
# small numeric helpers
# --------------------------------------------------------------------------- #
def mean_std(values: Iterable[Any]) -> dict[str, Any]:
    """Mean and spread of the finite numbers in ``values``.

    Returns ``{"mean": float, "std": float, "n": int}`` where ``std`` is the
    *sample* standard deviation (ddof=1), and 0.0 when ``n == 1``.  Values that
    are missing or non-finite are ignored and not counted in ``n``; when no
    value is left, ``mean`` and ``std`` are None and ``n`` is 0.
    """
    xs = [v for v in (_num(x) for x in values) if v is not None]
    n = len(xs)
    if n == 0:
        return {"mean": None, "std": None, "n": 0}
    mean = sum(xs) / n
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "n": n}


def _json_safe(obj: Any) -> Any:
    """Replace non-finite floats by None so the output is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


# --------------------------------------------------------------------------- #
# loading
# --------------------------------------------------------------------------- #
def read_jsonl(path: Path) -> list[dict]:
    """Parse a JSONL file of objects; blank lines are skipped.

    Raises ValueError naming the file and the (1-based) line number for a line
    that is not valid JSON or not a JSON object.
    """
    rows: list[dict] = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: malformed JSON line ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            rows.append(obj)
    return rows


def load_runs(out_dir: str | Path) -> dict[str, dict[int, list[dict]]]:
    """Read every ``OUT/runs/<method>/seed<k>/metrics.jsonl``.

    Returns ``{method: {seed: rows}}`` with seeds in increasing order and rows in
    file (= step) order.  Missing or empty metrics files are skipped, as are
    directories not named ``seed<k>``; a method without any rows is left out.
    Returns ``{}`` when ``OUT/runs`` does not exist.  A malformed JSON line
    raises ValueError naming the file and line number.
    """
    runs_dir = Path(out_dir) / "runs"
    result: dict[str, dict[int, list[dict]]] = {}
    if not runs_dir.is_dir():
        return result
    for method_dir in sorted(p for p in runs_dir.iterdir() if p.is_dir()):
        seeds: dict[int, list[dict]] = {}
        seed_dirs = []
        for seed_dir in method_dir.iterdir():
            m = _SEED_RE.match(seed_dir.name)
            if m and seed_dir.is_dir():
                seed_dirs.append((int(m.group(1)), seed_dir))
        for seed, seed_dir in sorted(seed_dirs):
            path = seed_dir / "metrics.jsonl"
            if not path.is_file():
                continue
            rows = read_jsonl(path)
            if rows:
                seeds[seed] = rows
        if seeds:
            result[method_dir.name] = seeds
    return result


def _testbed_record(out_dir: Path) -> dict:
    """``OUT/testbed.json`` (written by the pipeline; {} for directories from before it existed)."""
    path = out_dir / "testbed.json"
    try:
        record = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, json.JSONDecodeError) as exc:
        warnings.warn(f"{path}: could not read it ({exc}); naming the testbed from config.yaml", stacklevel=2)
        return {}
    return record if isinstance(record, dict) else {}


def load_stages(out_dir: str | Path) -> dict[str, dict]:
    """``{stage: stage.json content}`` for every ``OUT/artifacts/<stage>/stage.json``.

    Ordered sft, pairs, rm, then any other stage alphabetically.  Missing files
    are skipped; an unreadable one is skipped with a warning.
    """
    art = Path(out_dir) / "artifacts"
    if not art.is_dir():
        return {}
    names = sorted(p.name for p in art.iterdir() if (p / "stage.json").is_file())
    names.sort(key=lambda n: (_STAGE_ORDER.index(n) if n in _STAGE_ORDER else len(_STAGE_ORDER), n))
    stages: dict[str, dict] = {}
    for name in names:
        path = art / name / "stage.json"
        try:
            content = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            warnings.warn(f"{path}: unreadable stage file ({exc}); skipped", stacklevel=2)
            continue
        if isinstance(content, dict):
            stages[name] = content
        else:
            warnings.warn(f"{path}: expected a JSON object; skipped", stacklevel=2)
    return stages


# --------------------------------------------------------------------------- #
# analysis
# --------------------------------------------------------------------------- #
def hacking_check(rows: list[dict], min_drop_frac: float = 0.3) -> dict[str, Any]:
    """Decide whether one run shows reward hacking (overoptimization).

    With ``sft_gold = rows[0]["gold_reward"]`` (the step-0 SFT evaluation), the
    gold peak at ``argmax(gold)`` (first maximum) and the last row as "final":

    * ``gain = gold_peak - sft_gold`` and ``rose = gain > 0``;
    * ``drop = gold_peak - gold_final`` and ``drop_frac = drop / gain``
      (None when ``gain <= 0``);
    * ``proxy_rose_after_peak = proxy_final > proxy at the gold peak``;
    * ``hacked = rose and drop_frac >= min_drop_frac and proxy_rose_after_peak``.

    Rows whose gold reward is missing or non-finite are ignored for the peak.
    Returns a dict with those fields plus ``sft_gold``, ``gold_peak``,
    ``gold_peak_index``, ``gold_peak_step``, ``gold_final``, ``proxy_at_peak``,
    ``proxy_final`` and ``min_drop_frac``.  Raises ValueError on empty ``rows``.
    """
    if not rows:
        raise ValueError("hacking_check: no rows")
    golds = [_num(r.get("gold_reward")) for r in rows]
    sft_gold = golds[0]
    finite = [(g, i) for i, g in enumerate(golds) if g is not None]
    if not finite:
        peak_idx = None
        gold_peak = None
    else:
        gold_peak = max(g for g, _ in finite)
        peak_idx = next(i for g, i in finite if g == gold_peak)
    gold_final = golds[-1]
    proxy_final = _num(rows[-1].get("proxy_reward"))
    proxy_at_peak = _num(rows[peak_idx].get("proxy_reward")) if peak_idx is not None else None

    gain = gold_peak - sft_gold if (gold_peak is not None and sft_gold is not None) else None
    drop = gold_peak - gold_final if (gold_peak is not None and gold_final is not None) else None
    rose = gain is not None and gain > 0
    drop_frac = drop / gain if (rose and drop is not None) else None
    proxy_rose = proxy_final is not None and proxy_at_peak is not None and proxy_final > proxy_at_peak
    hacked = bool(rose and drop_frac is not None and drop_frac >= min_drop_frac and proxy_rose)
    return {
        "sft_gold": sft_gold,
        "gold_peak": gold_peak,
        "gold_peak_index": peak_idx,
        "gold_peak_step": rows[peak_idx].get("step") if peak_idx is not None else None,
        "gold_final": gold_final,
        "proxy_at_peak": proxy_at_peak,
        "proxy_final": proxy_final,
        "gain": gain,
        "drop": drop,
        "rose": rose,
        "drop_frac": drop_frac,
        "proxy_rose_after_peak": proxy_rose,
        "hacked": hacked,
        "min_drop_frac": min_drop_frac,
    }


def gain_curve(rows: list[dict]) -> tuple[list[float], list[float]]:
    """One run's (d, R): d = sqrt(KL to SFT), estimates below 0 read as 0, and R = gold − gold at the first
    evaluation, over the evaluations with a finite KL and gold (none when the first has no gold)."""
    base = _num(rows[0].get("gold_reward")) if rows else None
    points = [(_num(r.get("kl_sft")), _num(r.get("gold_reward"))) for r in rows]
    points = [(math.sqrt(max(kl, 0.0)), gold - base) for kl, gold in points
              if kl is not None and gold is not None and base is not None]  # fmt: skip
    return [d for d, _ in points], [gain for _, gain in points]


def method_fit(seeds: dict[int, list[dict]]) -> dict[str, Any]:
    """Gao et al.'s functional form (arXiv 2210.10760) fitted to one method's seeds (overopt.laws.fit_curves):
    R = gold − gold at the first evaluation (the SFT policy, or best-of-1) against d = sqrt(KL to SFT), KL
    estimates below 0 read as 0. Best-of-n runs take the form d(α − βd), the others d(α − β log d). Data
    from which nothing can be fitted gives {"form", "error"} instead of raising."""
    form = "bon" if is_best_of_n(seeds) else "rl"
    curves, bases = [], []
    for rows in seeds.values():
        curve = gain_curve(rows)
        if curve[0]:
            curves.append(curve)
            bases.append(_num(rows[0].get("gold_reward")))
    try:
        fit = fit_curves(curves, form)
    except ValueError as err:
        return {"form": form, "error": str(err)}
    return {**fit, "gold_sft": sum(bases) / len(bases), "error": None}


def _seed_summary(seed: int, rows: list[dict], min_drop_frac: float) -> dict[str, Any]:
    check = hacking_check(rows, min_drop_frac=min_drop_frac)
    last = rows[-1]
    out: dict[str, Any] = {"seed": seed, "n_evals": len(rows), "final_step": last.get("step")}
    for name, key in FINAL_KEYS.items():
        out[name] = _num(last.get(key))
    out["gold_peak"] = check["gold_peak"]
    out["gold_peak_step"] = check["gold_peak_step"]
    for k, v in check.items():
        out.setdefault(k, v)
    out["mech"] = run_mechanisms(rows)
    return out


def _require_runs(out_dir: Path, runs: dict) -> None:
    if not out_dir.is_dir():
        raise FileNotFoundError(f"{out_dir}: output directory does not exist")
    runs_dir = out_dir / "runs"
    if not runs_dir.is_dir():
        raise FileNotFoundError(f"{out_dir}: no runs/ directory (has `overopt run` finished any policy run?)")
    if not runs:
        if not any(runs_dir.glob("*/seed*/metrics.jsonl")):
            raise FileNotFoundError(f"{runs_dir}: no <method>/seed<k>/metrics.jsonl files found")
        raise ValueError(f"{runs_dir}: every metrics.jsonl is empty")


def build_summary(
    out_dir: str | Path,
    runs: dict[str, dict[int, list[dict]]] | None = None,
    min_drop_frac: float = 0.3,
) -> dict[str, Any]:
    """Summarise a run output directory.

    Schema (extra keys may be present)::

        {"testbed": str, "preset": str,
         "sft": {"gold_reward": float, "proxy_reward": float},
         "stages": {stage: stage.json content},
         "methods": {name: {
             "gold_final" | "gold_peak" | "proxy_final" | "kl_final" | "wall_s"
             | "gold_peak_step": {"mean": float, "std": float, "n": int},
             "hacked_seeds": int,
             "mech": {name: {"mean", "std", "n"}},   # see report.mechanisms
             "fit": method_fit(seeds),               # Gao et al.'s functional form, t intervals, forecast
             "seeds": [per-seed dicts, each with "mech": run_mechanisms(rows) and, for a run an alarm
                       stopped, "alarm_stop": {"alarm", "step", "last_good_step", "gold_reward"}]}}}

    ``sft`` is the mean of the first (step-0) row over all runs of all methods.
    Finals are read from the last row of each run; ``wall_s`` is the last row's
    ``wall_s``.  ``std`` is the sample standard deviation over seeds (ddof=1),
    and 0.0 when ``n == 1``; ``mean``/``std`` are None when no seed has a finite
    value (``n == 0``).  Methods are ordered as in config ``methods``, then any
    others alphabetically.  ``runs`` may be passed to avoid re-reading.
    """
    out_dir = Path(out_dir)
    if runs is None:
        runs = load_runs(out_dir)
    _require_runs(out_dir, runs)
    config = load_config(out_dir)

    all_runs = [rows for seeds in runs.values() for rows in seeds.values()]
    sft = {
        "gold_reward": mean_std(r[0].get("gold_reward") for r in all_runs)["mean"],
        "proxy_reward": mean_std(r[0].get("proxy_reward") for r in all_runs)["mean"],
    }

    methods: dict[str, Any] = {}
    for name in order_methods(runs, config):
        seeds = [_seed_summary(seed, rows, min_drop_frac) for seed, rows in runs[name].items()]
        for s in seeds:  # a run stopped by an alarm (rl.stop_on_alarm): where, why, gold there, last-good step
            stop = out_dir / "runs" / name / f"seed{s['seed']}" / "alarm_stop.json"
            if stop.is_file():
                s["alarm_stop"] = json.loads(stop.read_text())
        entry: dict[str, Any] = {k: mean_std(s[k] for s in seeds) for k in STAT_KEYS}
        entry["hacked_seeds"] = sum(1 for s in seeds if s["hacked"])
        entry["mech"] = {k: mean_std(s["mech"][k] for s in seeds) for k in MECH_KEYS}
        entry["n_seeds"] = len(seeds)
        entry["fit"] = method_fit(runs[name])
        entry["seeds"] = seeds
        methods[name] = entry

    ran = _testbed_record(out_dir)  # the testbed that ran (a plugin's config names it by import path)
    return {
        "testbed": str(ran.get("name", config.get("testbed", "unknown"))),
        "testbed_spec": str(ran.get("spec", config.get("testbed", "unknown"))),
        "proxy": ran.get("proxy"),
        "preset": str(config.get("preset", "unknown")),
        "sft": sft,
        "stages": load_stages(out_dir),
        "methods": methods,
        "min_drop_frac": min_drop_frac,
        "config": config,
    }


def write_summary(out_dir: str | Path, summary: dict | None = None) -> Path:
    """Write ``OUT/summary.json`` (building the summary unless given) and
    return its path.  Non-finite floats are written as null."""
    out_dir = Path(out_dir)
    if summary is None:
        summary = build_summary(out_dir)
    path = out_dir / "summary.json"
    text = json.dumps(_json_safe(summary), indent=2, allow_nan=False, default=str)
    path.write_text(text + "\n", encoding="utf-8")
    return path
