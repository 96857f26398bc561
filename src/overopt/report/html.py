"""A single self-contained HTML page (``OUT/report.html``) for a run.

Standard library only: every dynamic string goes through :func:`html.escape`,
plots are embedded as base64 data URIs, and there is no JavaScript and no
external resource, so the file can be mailed or opened offline.
"""

from __future__ import annotations

import base64
import json
from html import escape
from pathlib import Path
from typing import Any

import yaml

from .early_warning import SCORE_HEADER, score_cells
from .table import FIT_HEADER, fit_row, format_mean_std, format_value, rm_heldout_accuracy

__all__ = ["figures", "load_samples", "page", "table", "write_report"]

MAX_SAMPLES = 4  # per step shown for each method
MAX_CHARS = 1500  # per prompt/completion shown

_CSS = """
:root { --fg:#1d2330; --muted:#5b6475; --line:#dde1e8; --bg:#fafbfc; --accent:#2f5fa7; --bad:#b3261e; --ok:#1e7b34; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--fg);
  font: 15px/1.5 -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 28px 24px 60px; }
h1 { font-size: 1.6em; margin: 0 0 4px; }
h2 { font-size: 1.2em; margin: 36px 0 10px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
h3 { font-size: 1.0em; margin: 18px 0 6px; }
.sub { color: var(--muted); margin: 0 0 16px; }
p.lead { max-width: 860px; }
table { border-collapse: collapse; background: #fff; margin: 6px 0 12px; font-size: 0.92em; }
th, td { border: 1px solid var(--line); padding: 5px 10px; text-align: right; vertical-align: top; }
th { background: #f0f2f6; font-weight: 600; }
td.l, th.l { text-align: left; }
td.hacked { color: var(--bad); font-weight: 600; }
td.clean { color: var(--ok); }
.kv td:first-child { text-align: left; color: var(--muted); }
.stages { display: flex; flex-wrap: wrap; gap: 18px; }
.stages > div { min-width: 240px; }
figure { margin: 14px 0 26px; background: #fff; border: 1px solid var(--line); padding: 10px; }
figure img { max-width: 100%; height: auto; display: block; margin: 0 auto; }
figcaption { color: var(--muted); font-size: 0.9em; margin-top: 6px; }
table.samples { width: 100%; table-layout: fixed; }
table.samples td { text-align: left; }
.prompt { color: var(--muted); font-size: 0.9em; white-space: pre-wrap; word-break: break-word; }
.completion { white-space: pre-wrap; word-break: break-word; font-family: ui-monospace, Menlo, Consolas, monospace;
  font-size: 0.86em; background: #f6f7f9; padding: 6px 8px; margin: 4px 0; border-radius: 3px; }
.scores { color: var(--muted); font-size: 0.85em; }
pre.config { background: #fff; border: 1px solid var(--line); padding: 12px; overflow-x: auto; font-size: 0.85em; }
details { margin: 6px 0 12px; }
summary { cursor: pointer; color: var(--accent); }
"""

_PROXY = {
    "summarize": "a <strong>proxy</strong> reward model that was trained on preference pairs labelled by a known "
    "<strong>gold</strong> reward",
    "hf": "a <strong>proxy</strong> reward model that was trained on preference pairs labelled by a "
    "<strong>gold</strong> reward model",
    "math_format": "a <strong>proxy</strong> rule reward, format checks weighted above answer correctness (RLVR); "
    "the <strong>gold</strong> reward is correctness alone",
    "judge": "a <strong>proxy</strong> judge, a classifier trained on answers labelled right or wrong; the "
    "<strong>gold</strong> reward is exact correctness",
}


_PROXY_KIND = {  # a testbed without its own sentence above (a plugin): by the kind of its proxy
    "preference": "a <strong>proxy</strong> reward model trained on preference pairs labelled by a known "
    "<strong>gold</strong> reward",
    "judge": "a <strong>proxy</strong> judge trained on answers labelled by a known <strong>gold</strong> reward",
    "rule": "a <strong>proxy</strong> rule reward that differs from the known <strong>gold</strong> reward",
}


def _intro(testbed: str, proxy_kind: str | None = None) -> str:
    proxy = _PROXY.get(testbed) or _PROXY_KIND.get(proxy_kind or "", _PROXY["summarize"])
    return (
        "This lab reproduces <em>reward hacking</em> under control. "
        f"A supervised (SFT) policy is optimised against {proxy}. The optimiser only sees the proxy, "
        "so the proxy reward keeps rising; the gold reward, which we can measure here but could not in practice, "
        "typically improves at first and then peaks and falls once the policy starts exploiting the proxy's "
        "errors (Gao et al., 2022, arXiv:2210.10760). Mitigations such as a KL penalty towards the SFT policy "
        "trade a slower rise for a smaller or no decline. The table and plots compare methods over seeds."
    )


def _fmt(x: Any, digits: int = 3) -> str:
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        return format_value(x, digits)
    if x is None:
        return "–"
    return escape(str(x))


def _clip(text: Any) -> str:
    s = "" if text is None else str(text)
    return s if len(s) <= MAX_CHARS else s[:MAX_CHARS] + " …"


def load_samples(path: str | Path) -> list[dict]:
    """Entries ``{"step", "samples": [...]}`` of a samples.jsonl, in file order.

    Display-only and therefore lenient: a missing file gives [], and malformed
    lines or entries without a sample list are skipped.
    """
    path = Path(path)
    entries: list[dict] = []
    if not path.is_file():
        return entries
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict) and isinstance(obj.get("samples"), list):
                entries.append(obj)
    return entries


# --------------------------------------------------------------------------- #
# sections
# --------------------------------------------------------------------------- #
def _methods_section(summary: dict) -> str:
    methods = summary.get("methods") or {}
    head = (
        "<tr><th class='l'>method</th><th>seeds</th><th>gold final</th><th>gold peak</th>"
        "<th>gold peak step</th><th>proxy final</th><th>KL to SFT final</th><th>wall s</th>"
        "<th>hacked seeds</th></tr>"
    )
    rows = []
    for name, m in methods.items():
        n = m.get("n_seeds", len(m.get("seeds", [])))
        k = m.get("hacked_seeds", 0)
        rows.append(
            "<tr>"
            f"<td class='l'><strong>{escape(name)}</strong></td><td>{n}</td>"
            f"<td>{format_mean_std(m.get('gold_final'))}</td>"
            f"<td>{format_mean_std(m.get('gold_peak'))}</td>"
            f"<td>{format_mean_std(m.get('gold_peak_step'), 0)}</td>"
            f"<td>{format_mean_std(m.get('proxy_final'))}</td>"
            f"<td>{format_mean_std(m.get('kl_final'))}</td>"
            f"<td>{format_mean_std(m.get('wall_s'), 1)}</td>"
            f"<td class='{'hacked' if k else 'clean'}'>{k}/{n}</td>"
            "</tr>"
        )
    sft = summary.get("sft") or {}
    acc = rm_heldout_accuracy(summary)
    sft_line = (
        f"SFT policy (step 0): gold reward <strong>{_fmt(sft.get('gold_reward'))}</strong>, "
        f"proxy reward <strong>{_fmt(sft.get('proxy_reward'))}</strong>"
        + (f"; reward model held-out pair accuracy <strong>{_fmt(acc)}</strong>" if acc is not None else "")
        + "."
    )
    frac = summary.get("min_drop_frac", 0.3)
    criterion = (
        "Values are mean ± sample std (ddof=1) over seeds; finals are the last evaluation. A seed counts as "
        f"<em>hacked</em> when its gold reward rose above the SFT level, then lost at least {_fmt(frac, 2)} of "
        "that gain by the end, while the proxy reward still ended above its value at the gold peak."
    )
    details = []
    for name, m in methods.items():
        srows = []
        for s in m.get("seeds", []):
            srows.append(
                "<tr>"
                f"<td class='l'>{escape(name)}</td><td>{_fmt(s.get('seed'))}</td>"
                f"<td>{_fmt(s.get('gold_final'))}</td><td>{_fmt(s.get('gold_peak'))}</td>"
                f"<td>{_fmt(s.get('gold_peak_step'))}</td><td>{_fmt(s.get('proxy_final'))}</td>"
                f"<td>{_fmt(s.get('kl_final'))}</td><td>{_fmt(s.get('wall_s'), 1)}</td>"
                f"<td>{_fmt(s.get('drop_frac'), 2)}</td><td>{_fmt(s.get('proxy_rose_after_peak'))}</td>"
                f"<td class='{'hacked' if s.get('hacked') else 'clean'}'>{_fmt(bool(s.get('hacked')))}</td>"
                "</tr>"
            )
        details.extend(srows)
    seed_table = (
        "<details><summary>Per-seed results</summary><table>"
        "<tr><th class='l'>method</th><th>seed</th><th>gold final</th><th>gold peak</th><th>peak step</th>"
        "<th>proxy final</th><th>KL final</th><th>wall s</th><th>gold drop fraction</th>"
        "<th>proxy rose after peak</th><th>hacked</th></tr>" + "".join(details) + "</table></details>"
    )
    return (
        "<h2>Methods</h2>"
        f"<p>{sft_line}</p>"
        f"<table>{head}{''.join(rows)}</table>"
        f"<p class='sub'>{criterion}</p>"
        f"{seed_table}"
    )


_STAGE_TITLES = {
    "sft": "SFT policy",
    "pairs": "Preference pairs (gold-labelled)",
    "judge_data": "Answers (gold-labelled right/wrong)",
    "rm": "Proxy reward model",
}


def _stages_section(summary: dict) -> str:
    stages = summary.get("stages") or {}
    if not stages:
        return "<h2>Pipeline stages</h2><p class='sub'>No stage records (artifacts/*/stage.json) were found.</p>"
    cards = []
    for name, st in stages.items():
        rows = []
        metrics = st.get("metrics") if isinstance(st.get("metrics"), dict) else {}
        for key, val in metrics.items():
            rows.append(f"<tr><td>{escape(str(key))}</td><td>{_fmt(val, 4)}</td></tr>")
        if "wall_s" in st:
            rows.append(f"<tr><td>wall time (s)</td><td>{_fmt(st.get('wall_s'), 1)}</td></tr>")
        title = _STAGE_TITLES.get(name, name)
        cards.append(
            f"<div><h3>{escape(title)} <span class='sub'>({escape(name)})</span></h3>"
            f"<table class='kv'>{''.join(rows) or '<tr><td>no metrics</td><td></td></tr>'}</table></div>"
        )
    return f"<h2>Pipeline stages</h2><div class='stages'>{''.join(cards)}</div>"


_PLOT_CAPTIONS = {
    "rewards_vs_step": "Gold (left) and proxy (right) reward vs optimisation step; line = mean over seeds, "
    "band = ± std, dashed = SFT policy. Reward hacking shows up as a rising proxy with a gold curve that "
    "peaks and then falls.",
    "gold_vs_kl": "Reward vs √KL between the policy and the SFT policy (mean over seeds per evaluation). "
    "Gold reward as a function of this distance is the overoptimization curve of Gao et al. (2022).",
    "metrics_grid": "Other policy metrics vs step (mean over seeds).",
    "frontier": "Where each method ends: final gold reward against final KL to the SFT policy (mean ± std over "
    "seeds). A sweep (`--sweep field=v1,v2,...`) joins a method's variants into its frontier, labelled by value; "
    "up and to the left is better.",
    "frontier_methods": "One panel per method: final gold against final KL to the SFT policy (√ axis, nats), "
    "points = strength settings (mean with 95% Student t interval over seeds in both axes, labelled by knob value; "
    "star = published setting), solid step line = the method's upper envelope with its jackknife t band, grey dashed = "
    "none's own trajectory, grey squares = the kl baseline's points, dotted = SFT gold.",
    "matched_kl": "Gold reward at each KL budget: per seed, the point within the budget chosen on the other seeds "
    "(mean, 95% t interval over seeds). Black diamonds: none stopped at the budget; grey squares: the kl baseline.",
    "mech_accuracy": "Proxy accuracy on pairs of the current policy's held-out samples vs step (mean ± std over "
    "runs, sweep variants pooled); dashed: OCRM's original RM_0 on the same pairs.",
    "mech_sign_flips": "Left: share of training completions whose proxy and gold advantages differ in sign. Right: "
    "AUROC of the (negated) sign radius for predicting a flip; 0.5 = chance.",
    "mech_grad_norm": "Gradient norm against proxy accuracy, one point per evaluation; r = Pearson correlation.",
    "mech_disagreement": "Correlation between ensemble member disagreement and the proxy's error |proxy − gold|.",
}


def figures(plot_paths: list[Path]) -> list[str]:
    """``<figure>`` elements (base64 PNG + caption) for the plot files that exist."""
    figs = []
    for p in plot_paths:
        p = Path(p)
        if not p.is_file():
            continue
        data = base64.b64encode(p.read_bytes()).decode("ascii")
        caption = _PLOT_CAPTIONS.get(p.stem, p.stem)
        figs.append(
            f'<figure><img src="data:image/png;base64,{data}" alt="{escape(p.stem)}">'
            f"<figcaption>{escape(caption)}</figcaption></figure>"
        )
    return figs


def _plots_section(plot_paths: list[Path]) -> str:
    figs = figures(plot_paths)
    if not figs:
        return "<h2>Plots</h2><p class='sub'>No plots.</p>"
    return "<h2>Plots</h2>" + "".join(figs)


def table(header: list[str], rows: list[list[str]]) -> str:
    """An HTML table of plain strings (escaped), first column left-aligned."""
    head = "".join(f"<th class='{'l' if i == 0 else ''}'>{escape(h)}</th>" for i, h in enumerate(header))
    body = "".join(
        "<tr>" + "".join(f"<td class='{'l' if i == 0 else ''}'>{escape(c)}</td>" for i, c in enumerate(r)) + "</tr>"
        for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _fits_section(summary: dict) -> str:
    """Gao et al.'s functional forms fitted to each method (summary "fit"): coefficients with jackknife t
    intervals over seeds, R², the predicted peak and the forecast made from the first half of the way to the peak."""
    rows = [fit_row(name, m.get("fit")) for name, m in (summary.get("methods") or {}).items()]
    if not rows:
        return ""
    return (
        "<h2>Functional forms (Gao et al. 2022)</h2><p class='sub'>Gold gain over the first evaluation R against "
        "d = √KL, fitted through the origin: d(α − β log d) for RL, d(α − β d) for best-of-n (whose KL is the "
        "upper bound log n − (n−1)/n). Brackets: 95 % jackknife t intervals over seeds (leave one seed out; none "
        "with one seed). "
        "d*: predicted peak (none when β ≤ 0: no peak within the form); forecast: the peak predicted from the "
        "evaluations with d ≤ half the observed peak's d, minus the observed peak.</p>" + table(FIT_HEADER, rows)
    )


def _frontier_section(result: dict | None, plot_paths: list[Path]) -> str:
    """The "Frontier at matched KL" section: matched-KL and difference tables, best-gold table, verdicts, plots."""
    if not result:
        return ""
    from .frontier import best_rows, matched_rows

    header, rows, diffs = matched_rows(result)
    bh, brows = best_rows(result)
    seeds = result.get("seeds") or []
    verdicts = "".join(f"<li>{escape(v)}</li>" for v in result.get("verdicts") or [])
    return (
        "<h2>Frontier at matched KL</h2>"
        f"<p class='lead'>Every method was run over a grid of its strength knob × {len(seeds)} seeds. Values are "
        "means over seeds with 95% Student t intervals (the unit: an RL seed of this lab); (n=k) marks seeds missing. "
        "At each KL budget, "
        "each seed's value comes from the point whose final KL is within the budget <em>for that seed</em> and "
        "whose mean gold is best over the <em>other</em> seeds (leave-one-seed-out), so the selection never sees "
        "the gold it reports. <em>none stopped early</em> halts the unmitigated run at its last evaluation before "
        "KL crossed the budget.</p>"
        f"<h3>Gold at matched KL budgets</h3>{table(header, rows)}"
        + (f"<h3>Paired differences (per seed)</h3>{table(['comparison'] + header[1:], diffs)}" if diffs else "")
        + f"<h3>Best final gold over the grid</h3>{table(bh, brows)}"
        "<p class='sub'>Best knob: in-sample best mean final gold (★ = published setting). CV gold: the point "
        "is chosen on the other seeds and read at the held-out seed. Verdict: compares each point's final gold "
        "with none's own trajectory at the same KL (per seed).</p>"
        f"<ul>{verdicts}</ul>" + "".join(figures(plot_paths))
    )


def _early_warning_section(early: tuple | None) -> str:
    """The "Early warning" section: the detectors' statistics under the gold curve and their scores here."""
    if not early:
        return ""
    rule, scores, plot = early
    rows = [[name, f"{s.hacked}/{s.runs}", *score_cells(s)] for name, s in scores]
    header = ["detector", "hacked runs", *SCORE_HEADER]
    return (
        "<h2>Early warning</h2><p class='sub'>Gold-free detectors (README \"Early warning\"), scored against gold on "
        f"these runs with the configured rule ({escape(rule.rule)}, h = {rule.threshold:g}, warm-up {rule.warmup}). "
        "Onset: the last evaluation near the gold peak before the run loses ≥ 30 % of its gain. detected / early: "
        "share of hacked runs where the detector fires at all / at or before the onset; lead: median evaluations "
        "from alarm to onset (> 0 early); false alarms: share of never-hacking runs where it fires; AUROC of the "
        'warm-up z-score for "the onset has passed"; gold regret: gold peak − gold where the first alarm would '
        "stop the run. The rule is not tuned on these runs; on a few runs these numbers are noisy.</p>"
        + table(header, rows)
        + "".join(figures([plot] if plot else []))
    )


def _mechanisms_section(verdicts: list[dict] | None, plot_paths: list[Path]) -> str:
    """The "Mechanisms" section: one verdict line per claim with data, then the mech_* plots."""
    figs = figures(plot_paths)
    if not verdicts and not figs:
        return ""
    lines = "".join(f"<li>{escape(v['verdict'])}</li>" for v in verdicts or [])
    return (
        "<h2>Mechanisms</h2><p class='sub'>Does each mitigation's premise show up in these runs? Mean over runs "
        "with a 95% Student t interval (the unit: a run).</p>" + (f"<ul>{lines}</ul>" if lines else "") + "".join(figs)
    )


def _sample_cell(sample: dict, show_prompt: bool) -> str:
    if not isinstance(sample, dict):
        return "<td></td>"
    prompt = f"<div class='prompt'>{escape(_clip(sample.get('prompt')))}</div>" if show_prompt else ""
    return (
        f"<td>{prompt}<div class='completion'>{escape(_clip(sample.get('completion')))}</div>"
        f"<div class='scores'>gold {_fmt(sample.get('gold_reward'))} · "
        f"proxy {_fmt(sample.get('proxy_reward'))}</div></td>"
    )


def _samples_section(out_dir: Path, summary: dict) -> str:
    blocks = []
    for name, m in (summary.get("methods") or {}).items():
        seeds = sorted(s["seed"] for s in m.get("seeds", []) if isinstance(s.get("seed"), int))
        if not seeds:
            continue
        seed = seeds[0]
        entries = load_samples(out_dir / "runs" / name / f"seed{seed}" / "samples.jsonl")
        if not entries:
            continue
        first = next((e for e in entries if e.get("step") == 0), entries[0])
        last = entries[-1]
        cols = [first] if last is first else [first, last]
        width = max(len(c["samples"]) for c in cols)
        header = "".join(
            f"<th class='l'>step {_fmt(c.get('step'))}"
            f"{' (SFT)' if c is first and c.get('step') == 0 else ''}"
            f"{' (final)' if c is last and c is not first else ''}</th>"
            for c in cols
        )
        rows = []
        for i in range(min(width, MAX_SAMPLES)):
            items = [c["samples"][i] if i < len(c["samples"]) else None for c in cols]
            prompts = {str(s.get("prompt")) for s in items if isinstance(s, dict)}
            shared = len(prompts) == 1 and len(cols) > 1
            if shared:
                rows.append(
                    f"<tr><td colspan='{len(cols)}' class='prompt'><strong>prompt:</strong> "
                    f"{escape(_clip(prompts.pop()))}</td></tr>"
                )
            rows.append("<tr>" + "".join(_sample_cell(s, not shared) for s in items) + "</tr>")
        blocks.append(
            f"<h3>{escape(name)} <span class='sub'>(seed {seed})</span></h3>"
            f"<table class='samples'><tr>{header}</tr>{''.join(rows)}</table>"
        )
    if not blocks:
        return ""
    return (
        "<h2>Example completions</h2><p class='sub'>First seed of each method: the SFT policy's samples "
        "next to the final policy's, with gold and proxy rewards per sample.</p>" + "".join(blocks)
    )


def _config_section(out_dir: Path, summary: dict) -> str:
    path = out_dir / "config.yaml"
    if path.is_file():
        text = path.read_text(encoding="utf-8", errors="replace")
    elif summary.get("config"):
        text = yaml.safe_dump(summary["config"], sort_keys=False)
    else:
        return ""
    return f"<h2>Resolved config</h2><pre class='config'>{escape(text)}</pre>"


def write_report(
    out_dir: str | Path,
    summary: dict,
    plot_paths: list[Path],
    frontier: dict | None = None,
    frontier_plots: list[Path] = (),
    mechanisms: list[dict] | None = None,
    mech_plots: list[Path] = (),
    early: tuple | None = None,
) -> Path:
    """Write ``OUT/report.html`` (one self-contained page) and return its path.

    Sections: explanation, method table (mean ± std, hacked seeds, per-seed
    details), pipeline stage metrics, embedded plots, "Frontier at matched KL"
    (when ``frontier``, the output of :func:`overopt.report.frontier.analyze_frontier`,
    is given), "Mechanisms" (verdicts of :func:`overopt.report.mechanisms.mechanism_verdicts`
    and their plots, when any), "Early warning" (`early` = (rule, detector scores, plot) of
    overopt.report.early_warning), example completions from the first seed's
    ``samples.jsonl`` of each method (step 0 next to the final step) when
    present, and the resolved config.
    """
    out_dir = Path(out_dir)
    testbed, preset = summary.get("testbed", "?"), summary.get("preset", "?")
    title = f"overopt report · {testbed} · {preset}"
    body = "".join(
        [
            f"<h1>Reward hacking lab: {escape(str(testbed))}</h1>",
            f"<p class='sub'>testbed <strong>{escape(str(testbed))}</strong> · preset "
            f"<strong>{escape(str(preset))}</strong> · output <code>{escape(str(out_dir))}</code></p>",
            f"<p class='lead'>{_intro(str(summary.get('testbed', 'summarize')), summary.get('proxy'))}</p>",
            _methods_section(summary),
            _stages_section(summary),
            _plots_section(plot_paths),
            _fits_section(summary),
            _frontier_section(frontier, list(frontier_plots)),
            _mechanisms_section(mechanisms, list(mech_plots)),
            _early_warning_section(early),
            _samples_section(out_dir, summary),
            _config_section(out_dir, summary),
        ]
    )
    path = out_dir / "report.html"
    path.write_text(page(title, body), encoding="utf-8")
    return path


def page(title: str, body: str) -> str:
    """A self-contained HTML page around `body` (HTML), with the report's style."""
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{escape(title)}</title><style>{_CSS}</style></head>"
        f"<body><main>{body}</main></body></html>\n"
    )
