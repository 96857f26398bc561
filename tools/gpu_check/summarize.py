"""GPU check, step 4: gather every step's JSON into OUT/results.json and write OUT/summary.md.

    python tools/gpu_check/summarize.py WORK OUT

WORK/json holds what the steps wrote (steps.jsonl, versions.json, smoke.json, pytest.json, probe_*.jsonl,
stages.json, frontier.json, repeatable.json, throughput.json, gpu_samples.csv, nvidia_smi.txt); a missing or
broken file is reported as such, never fatal. summary.md is written to paste into benchmarks/RESULTS.md and
the closing note.
"""

from __future__ import annotations

import datetime
import json
import re
import sys
from pathlib import Path


def load(path: Path):
    try:
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except Exception as err:  # noqa: BLE001
        return {"unreadable": repr(err)}


def merge_pytest(j: Path) -> dict | None:
    """cuda_plugin's files (one per pytest process: main and each xdist worker), merged by test id."""
    files = sorted(j.glob("pytest.*.json"))
    if not files:
        return None
    tests: dict[str, dict] = {}
    status = None
    for f in files:
        part = load(f)
        if not isinstance(part, dict):
            continue
        if part.get("worker") == "main":
            status = part.get("exitstatus")
        for t in part.get("tests", []):
            row = tests.setdefault(t["test"], {})
            for k, v in t.items():
                if k == "outcome" and row.get("outcome") == "failed":
                    continue
                if v is not None:
                    row[k] = v
    return {"exitstatus": status, "files": [f.name for f in files], "tests": list(tests.values())}


def subprocess_cuda(test_id: str, probe: list) -> list[str]:
    """The probe records of `overopt` subprocesses that ran for a test: its tmp_path (pytest names it after the
    test, non-word characters replaced by '_', cut at 30 characters) appears in their --out argument."""
    name = re.sub(r"[\W]", "_", test_id.split("::")[-1])[:30]
    out = []
    for p in probe if isinstance(probe, list) else []:
        if isinstance(p, dict) and re.search(rf"/{re.escape(name)}\d+/", " ".join(p.get("argv", [])) + "/"):
            peak = p.get("cuda_peak_allocated_mib")
            out.append("CUDA" + (f" {peak:.0f} MiB" if peak is not None else "") if p.get("cuda_initialized")
                       else "no CUDA")  # fmt: skip
    return out


def gpu_samples(path: Path) -> list[tuple[float, float, float]]:
    rows = []
    try:
        for line in path.read_text().splitlines():
            parts = [p.strip() for p in line.split(",")]
            if len(parts) >= 3:
                try:
                    rows.append((float(parts[0]), float(parts[1]), float(parts[2])))
                except ValueError:
                    pass
    except FileNotFoundError:
        pass
    return rows


def window(samples, start: float, end: float) -> dict | None:
    inside = [s for s in samples if start <= s[0] <= end]
    if not inside:
        return None
    return {"samples": len(inside), "max_mem_used_mib": max(s[1] for s in inside),
            "max_util_pct": max(s[2] for s in inside)}  # fmt: skip


def fmt(v, digits: int = 1) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def main() -> int:
    work, out = Path(sys.argv[1]), Path(sys.argv[2])
    j = work / "json"
    steps = load(j / "steps.jsonl") or []
    data = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "nvidia_smi": (j / "nvidia_smi.txt").read_text().strip() if (j / "nvidia_smi.txt").exists() else None,
        "small_mode": (j / "small").exists(),
        "steps": steps,
        "versions": load(j / "versions.json"),
        "smoke": load(j / "smoke.json"),
        "pytest": merge_pytest(j),
        "stages": load(j / "stages.json"),
        "frontier": load(j / "frontier.json"),
        "repeatable": load(j / "repeatable.json"),
        "throughput": load(j / "throughput.json"),
        "probe": {p.stem: load(p) for p in sorted(j.glob("probe_*.jsonl"))},
    }
    samples = gpu_samples(j / "gpu_samples.csv")
    if samples:
        data["gpu_idle_mem_used_mib"] = min(s[1] for s in samples)
        for s in steps:
            if isinstance(s, dict) and "start" in s:
                s["gpu"] = window(samples, s["start"], s["end"])
    pytest = data["pytest"] if isinstance(data["pytest"], dict) else None
    if pytest and samples:
        for t in pytest.get("tests", []):
            if "start" in t:
                t["gpu"] = window(samples, t["start"] - 0.5, t["end"] + 0.5)

    md: list[str] = []
    v = data["versions"] if isinstance(data["versions"], dict) else {}
    vers = v.get("versions", {})
    md += ["# GPU check (tools/gpu_check/run.sh)", ""]
    if data["small_mode"]:
        md += ["**SMALL mode** (GPU_CHECK_SMALL=1): tiny shapes, not the real check.", ""]
    md += [f"Date: {data['date']}  ", f"Device: {data['nvidia_smi'] or v.get('device_name') or 'no nvidia-smi'}  "]
    md += [
        f"Python {v.get('python')}, torch {vers.get('torch')} (CUDA {v.get('torch_cuda')}, available: "
        f"{v.get('cuda_available')}), transformers {vers.get('transformers')}, trl {vers.get('trl')}, accelerate "
        f"{vers.get('accelerate')}, peft {vers.get('peft')}, datasets {vers.get('datasets')}, tokenizers "
        f"{vers.get('tokenizers')}, pydantic {vers.get('pydantic')}, tyro {vers.get('tyro')}",
        "",
    ]
    bad_reqs = [r for r in v.get("requirements", []) if not r.get("ok")]
    if bad_reqs:
        md += ["Project requirements not met: " + ", ".join(f"`{r['requirement']}` ({r['installed']})"
                                                           for r in bad_reqs), ""]  # fmt: skip
    if v.get("pip_check"):
        md += ["pip check: " + "; ".join(v["pip_check"][:8]), ""]
    md += ["| step | exit | wall s | limit s | GPU mem max MiB | GPU util max % |", "|---|---|---|---|---|---|"]
    for s in steps:
        if not isinstance(s, dict):
            continue
        g = s.get("gpu") or {}
        wall = s["end"] - s["start"] if "start" in s else None
        rc = s.get("rc")
        rc_text = "skipped (no time left)" if s.get("skipped") else f"{rc} (timed out)" if rc in (124, 137) else str(rc)
        md.append(f"| {s.get('step')} | {rc_text} | {fmt(wall)} | {s.get('limit_s')} | "
                  f"{fmt(g.get('max_mem_used_mib'), 0)} | {fmt(g.get('max_util_pct'), 0)} |")  # fmt: skip
    md.append("")

    # 1. smoke + pytest
    sm = data["smoke"] if isinstance(data["smoke"], dict) else None
    md += ["## 1. `hf` testbed, `smoke` preset, `--hf.dtype auto`", ""]
    if sm:
        md.append(f"Command: `{sm.get('command')}`  ")
        md.append(f"Exit {sm.get('exit')}, {fmt(sm.get('wall_s'))} s; figures finite: **{sm.get('figures_finite')}**; "
                  f"CUDA used in-process: **{sm.get('ran_on_cuda')}** (peak {fmt(sm.get('cuda_peak_allocated_mib'))} "
                  f"MiB allocated)")  # fmt: skip
        for name, r in (sm.get("runs") or {}).items():
            last = r.get("last", {})
            md.append(f"- {name}: steps {r.get('steps')}, last gold {fmt(last.get('gold_reward'), 4)}, proxy "
                      f"{fmt(last.get('proxy_reward'), 4)}, KL {fmt(last.get('kl_sft'), 4)}")  # fmt: skip
        if sm.get("nonfinite"):
            md.append(f"- non-finite: {sm['nonfinite'][:5]}")
        if sm.get("traceback"):
            md += ["", "```", sm["traceback"][-1500:], "```"]
    else:
        md.append(f"No result ({data['smoke']}).")
    md.append("")
    md += ["### `pytest tests/test_hf_testbed.py`", ""]
    if pytest:
        tests = pytest.get("tests", [])
        counts: dict[str, int] = {}
        for t in tests:
            counts[t.get("outcome", "?")] = counts.get(t.get("outcome", "?"), 0) + 1
        tally = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
        md.append(f"Exit status {pytest.get('exitstatus')}: {tally}")
        md += ["", "| test | outcome | call s | CUDA peak in the pytest process, MiB | overopt subprocesses (probe) "
               "| GPU memory used, max MiB (nvidia-smi, whole GPU, all workers) |",
               "|---|---|---|---|---|---|"]  # fmt: skip
        probe = data["probe"].get("probe_pytest") or []
        for t in tests:
            g = t.get("gpu") or {}
            subs = subprocess_cuda(t["test"], probe)
            t["subprocesses"] = subs
            md.append(f"| `{t['test'].split('::', 1)[-1]}` | {t.get('outcome')} | {fmt(t.get('call_s'))} | "
                      f"{fmt(t.get('cuda_peak_allocated_mib'))} | {', '.join(subs) or '–'} | "
                      f"{fmt(g.get('max_mem_used_mib'), 0)} |")  # fmt: skip
        failed = [t for t in tests if t.get("outcome") == "failed"]
        for t in failed:
            md += ["", f"Failure of `{t['test']}`:", "```", (t.get("error") or "")[-1200:], "```"]
    else:
        md.append(f"No plugin result ({data['pytest']}): see pytest.log.")
    probe = data["probe"].get("probe_pytest") or []
    if isinstance(probe, list) and probe:
        md += ["", "Python processes under pytest (probe, at exit; SIGKILLed ones write nothing):", ""]
        for p in probe:
            md.append(f"- `{' '.join(p.get('argv', []))[:140]}`: CUDA initialised {p.get('cuda_initialized')}, "
                      f"peak {fmt(p.get('cuda_peak_allocated_mib'))} MiB")  # fmt: skip
    md.append("")

    # 2. default preset
    st = data["stages"] if isinstance(data["stages"], dict) else None
    md += ["## 2. `default` preset, one method and seed", ""]
    if st:
        ref = st.get("cpu_reference") or {}
        rows = ref.get("rows", {})
        how = f"timed out after {fmt(st.get('timeout_s'), 0)} s" if st.get("timed_out") else "finished"
        md.append(f"Command: `{st.get('command')}` (threads {st.get('threads')}, {st.get('cpu_count')} CPU cores), "
                  f"exit {st.get('exit')}, {how}, total {fmt(st.get('total_s'))} s.  ")  # fmt: skip
        md.append(f"CPU figure: RESULTS.md, {ref.get('machine')} ({ref.get('date')}), all stages of the full job.")
        md += ["", "| part | this machine, wall s | RESULTS.md CPU, wall s |", "|---|---|---|"]
        for r in st.get("rows", []):
            extra = f" (to step {r['last_step']})" if r.get("last_step") is not None and not st.get("finished") else ""
            md.append(f"| {r['part']}{extra} | {fmt(r.get('wall_s'))} | {fmt(rows.get(r['part']))} |")
        if st.get("unfinished_stage_dirs"):
            md.append(f"| unfinished: {', '.join(st['unfinished_stage_dirs'])} (checkpointed steps: "
                      f"{st.get('checkpointed_steps') or 'none'}) | | |")  # fmt: skip
        probe = data["probe"].get("probe_default") or []
        runs = [p for p in probe if isinstance(p, dict) and "overopt" in " ".join(p.get("argv", []))]
        used = [(p.get("cuda_initialized"), p.get("cuda_peak_allocated_mib")) for p in runs]
        md += ["", f"The `overopt run` process (probe at exit: CUDA initialised, peak MiB allocated): "
                   f"{used or 'no record (stopped by the timeout)'}; "
                   f"torch.cuda.is_available() there: {st.get('cuda_available_in_parent')}. With config `device` "
                   "auto the built-in testbed's stages and runs are on the GPU when it is available."]  # fmt: skip
    else:
        md.append(f"No result ({data['stages']}).")
    md.append("")
    fr = data["frontier"] if isinstance(data["frontier"], dict) else None
    md += ["## 2b. The `summarize` frontier grid on those stages: runs per hour", ""]
    if fr:
        ref = fr.get("cpu_reference") or {}
        how = f"stopped after {fmt(fr.get('timeout_s'), 0)} s" if fr.get("timed_out") else "finished"
        md += [
            f"Command: `{fr.get('command')}` on {fr.get('device')}, exit {fr.get('exit')}, {how}, wall "
            f"{fmt(fr.get('wall_s'))} s: {fr.get('finished')} runs finished, {fmt(fr.get('run_equivalents'))} "
            f"run equivalents (each run's last logged step ÷ rl.steps, summed over {len(fr.get('runs') or {})} "
            "runs), start-up included.",
            "",
            "| where | runs per hour |",
            "|---|---|",
            f"| this machine | {fmt(fr.get('runs_per_hour'))} |",
            f"| RESULTS.md, {ref.get('machine')} ({ref.get('date')}), `--jobs 2` | {fmt(ref.get('runs_per_hour'))} |",
        ]
    else:
        md.append(f"No result ({data['frontier']}).")
    md.append("")

    rp = data["repeatable"] if isinstance(data["repeatable"], dict) else None
    md += ["## 2c. The same command twice: bit for bit?", ""]
    if rp:
        sides = "; ".join(f"`{rp[s].get('command')}` exit {rp[s].get('exit')} in {fmt(rp[s].get('wall_s'))} s"
                          for s in ("a", "b") if isinstance(rp.get(s), dict))  # fmt: skip
        md += [f"{sides}. Repeatable: **{rp.get('repeatable')}**.", ""]
        md += [f"- {d}" for d in (rp.get("differences") or [])[:10]]
    else:
        md.append(f"No result ({data['repeatable']}).")
    md.append("")

    # 3. throughput
    tp = data["throughput"] if isinstance(data["throughput"], dict) else None
    md += ["## 3. RL step throughput: overopt vs TRL GRPOTrainer, ~100M Llama", ""]
    if tp:
        mdl, b, c = tp.get("model", {}), tp.get("batch", {}), tp.get("config", {})
        precision = "autocast, float32 weights" if c.get("dtype") == "bfloat16" else "no autocast"
        md.append(
            f"Policy: from-scratch Llama, random weights, {fmt((mdl.get('params') or 0) / 1e6)} M parameters (hidden "
            f"{mdl.get('hidden')}, {mdl.get('layers')} layers, {mdl.get('heads')} heads, intermediate "
            f"{mdl.get('intermediate')}, vocab {mdl.get('vocab')}, tied, {mdl.get('attn_implementation')}); RM: its "
            f"backbone + a scalar head. {b.get('prompts_per_step')} prompts × group {b.get('group_size')} = "
            f"{b.get('rows')} completions per update, prompts of {b.get('prompt_tokens')} tokens, ≤ {b.get('max_new')} "
            f"completion tokens, T = 1, GRPO without KL, {c.get('steps')} timed updates after 1 warm-up, "
            f"{c.get('reps')} runs per side, {c.get('dtype')} ({precision}), "
            f"{c.get('threads')} torch CPU threads, on {tp.get('device')}."
        )  # fmt: skip
        if tp.get("table_md"):
            md += ["", tp["table_md"], ""]
            md += [f"- {line}" for line in tp.get("ratios", [])]
        peaks = tp.get("medians", {})
        if peaks:
            md += ["", "| side | completions/s | gen tokens/s | peak CUDA memory allocated MiB |", "|---|---|---|---|"]
            for side, r in peaks.items():
                md.append(f"| {side} | {fmt(r.get('completions_per_s'))} | {fmt(r.get('tokens_per_s'), 0)} | "
                          f"{fmt(r.get('cuda_peak_allocated_mib'), 0)} |")  # fmt: skip
        runs = [r for r in tp.get("runs", []) if "error" not in r]
        if runs:
            md += ["", "Every run (wall s of the timed updates; peak CUDA memory allocated, in use at the run's start "
                   "in brackets):", "", "| side | rep | wall s | completions/s | gen tokens/s | peak CUDA MiB |",
                   "|---|---|---|---|---|---|"]  # fmt: skip
            for r in runs:
                md.append(f"| {r['side']} | {r['rep']} | {fmt(r.get('wall_s'), 2)} | "
                          f"{fmt(r.get('completions_per_s'))} | "
                          f"{fmt(r.get('gen_tokens_per_s'), 0)} | {fmt(r.get('cuda_peak_allocated_mib'), 0)} "
                          f"({fmt(r.get('cuda_in_use_at_start_mib'), 0)}) |")  # fmt: skip
        if tp.get("stopped_early"):
            md += ["", f"Stopped early: {tp['stopped_early']}."]
        dtypes = {r["side"]: r.get("head_dtypes") for r in tp.get("runs", []) if r.get("head_dtypes")}
        if dtypes:
            md += ["", "Output-head dtype seen (generation / other forwards): "
                   + "; ".join(f"{k}: {v}" for k, v in dtypes.items())]  # fmt: skip
        errors = [r for r in tp.get("runs", []) if r.get("error")]
        for r in errors[:2]:
            md += ["", f"{r['side']} rep {r['rep']} failed:", "```", r["error"][-1500:], "```"]
        if tp.get("trl_error"):
            md += ["", f"TRL unavailable: `{tp['trl_error'][:500]}`"]
        md.append(f"\nSame prompts on both sides: {tp.get('same_prompts_checked')}; total {fmt(tp.get('total_s'))} s.")
    else:
        md.append(f"No result ({data['throughput']}): see throughput.log.")
    md.append("")
    failed = [s for s in steps if isinstance(s, dict) and (s.get("rc") != 0 or s.get("skipped"))]
    if failed:
        md += ["## Steps that failed, timed out or were skipped", ""]
        md += [f"- {s['step']}: " + ("skipped, no time left" if s.get("skipped") else
               f"exit {s['rc']} (log: logs.tar.gz, logs/{s['step']}.log)") for s in failed]  # fmt: skip
    (out / "results.json").write_text(json.dumps(data, indent=1, default=str))
    (out / "summary.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
