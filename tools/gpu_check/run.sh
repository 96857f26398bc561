#!/usr/bin/env bash
# The GPU check of shared/GPU.md, as one script with a time budget (about 8 minutes; hard stop well inside 10).
#
#   bash tools/gpu_check/run.sh                                    # on the GPU machine, from the repo root
#   OUT=/tmp/gpucheck GPU_CHECK_SMALL=1 bash tools/gpu_check/run.sh   # tiny shapes, CPU fallback (~3 min)
#
# Steps (each under `timeout`, each failure recorded and the script goes on):
#   0. device and versions (nvidia-smi -L, pip list), then install what is not importable from ./wheels
#      (pip --no-index; with dependency resolution, else --no-deps, else --target), then `pip install -e .`
#      (PYTHONPATH=src is set anyway, and every overopt command runs as `python -m overopt`).
#   2. first (GPU_CHECK_LAB=0 skips it): the built-in lab on the GPU (config `device` auto, issue 28; never run on
#      one before): the `default` preset for method kl and one seed, stage times next to RESULTS.md's CPU figures
#      (stages.py, at most ~180 s, partial times on timeout), then the `summarize` frontier grid on those stages
#      for 150 s, runs per hour next to the 2-core CPU's (frontier.py); stacked sampling's time per run against
#      the number of runs K on the GPU (benchmarks/stacked_sampling.py, its table in run.log); the smoke preset
#      twice from nothing, compared bit for bit (repeatable.py).
#   bf16 diagnosis (bf16_diagnosis.py): SDPA kernels on fully masked rows, the 100M model's forward/backward.
#   3. overopt's RL step vs TRL's GRPOTrainer on a ~100M Llama, bfloat16, with transformers' masks (the failure)
#      and with overopt's pad-safe masks (throughput.py --mask); generation alone (gen_speed.py).
#   1. the tiny HF world of tests/test_hf_testbed.py (make_tiny_hf.py), `overopt run --testbed hf --preset
#      smoke --hf.dtype auto` on it in-process (smoke.py), and `pytest tests/test_hf_testbed.py` with a plugin
#      that records each test's CUDA use (cuda_plugin.py) and a probe that records every child Python
#      process's (probe/sitecustomize.py); where vLLM is importable, the smoke run again with
#      `--rl.generation vllm` (smoke_vllm).
#   4. OUT/summary.md and OUT/results.json (summarize.py); OUT/logs.tar.gz holds every log and JSON.
#
# Environment: OUT (default /tmp/gpucheck), PY (default python3), GPU_CHECK_SMALL=1 (tiny shapes),
# GPU_CHECK_BUDGET_S (default 530: the steps' total; summarising, at most 40 s, comes after: under 10 minutes
# in all), GPU_CHECK_INSTALL=0|1|dry (dry: pip --dry-run, no editable install; for a local check),
# GPU_CHECK_ONLY="bf16_diagnosis throughput_unfixed ..." (run only the steps named; install and versions always run),
# GPU_CHECK_LAB=0 (skip step 2).
set -u
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT" || exit 1
OUT=${OUT:-/tmp/gpucheck}
mkdir -p "$OUT"
PY=${PY:-$(command -v python3 || command -v python)}
SMALL=${GPU_CHECK_SMALL:-0}
BUDGET=${GPU_CHECK_BUDGET_S:-530}
INSTALL=${GPU_CHECK_INSTALL:-1}
RESERVE=15  # seconds kept back: a step killed at its limit gets 10 s more (timeout -k 10)
T0=$(date +%s)
WORK=$(mktemp -d /tmp/gpucheck-work.XXXXXX)
J=$WORK/json
L=$WORK/logs
mkdir -p "$J" "$L"
[ "$SMALL" = 1 ] && touch "$J/small"
exec > >(tee -a "$OUT/run.log") 2>&1
TEE_PID=$!

export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg HF_HOME="$WORK/hf_home" WANDB_MODE=disabled PYTHONDONTWRITEBYTECODE=1
export PYTHONPATH="$ROOT/src:$ROOT/tools/gpu_check${PYTHONPATH:+:$PYTHONPATH}"
PROBE="$ROOT/tools/gpu_check/probe"

left() { echo $((BUDGET - ($(date +%s) - T0) - RESERVE)); }

# run_step NAME CAP_S CMD...: run CMD under `timeout min(CAP_S, time left)`, output to $L/NAME.log (tail shown).
run_step() {
    local name=$1 cap=$2
    shift 2
    case "$name" in install* | versions) ;; *)
        if [ -n "${GPU_CHECK_ONLY:-}" ] && [[ " $GPU_CHECK_ONLY " != *" $name "* ]]; then
            printf '{"step":"%s","rc":null,"skipped":true}\n' "$name" >>"$J/steps.jsonl"
            RC=125
            return
        fi ;;
    esac
    local limit
    limit=$(left)
    ((cap < limit)) && limit=$cap
    if ((limit < 15)); then
        echo "== $name: SKIPPED, no time left in the ${BUDGET} s budget"
        printf '{"step":"%s","rc":null,"skipped":true}\n' "$name" >>"$J/steps.jsonl"
        RC=125
        return
    fi
    echo "== [$(date +%T), +$(($(date +%s) - T0)) s] $name (limit ${limit} s): $*"
    local s e
    s=$(date +%s.%N)
    timeout -k 10 "$limit" "$@" >"$L/$name.log" 2>&1
    RC=$?
    e=$(date +%s.%N)
    tail -n "${TAIL_LINES:-12}" "$L/$name.log" | cut -c1-400
    printf '{"step":"%s","rc":%d,"start":%s,"end":%s,"limit_s":%d}\n' "$name" "$RC" "$s" "$e" "$limit" >>"$J/steps.jsonl"
    echo "== $name: exit $RC$( ((RC == 124 || RC == 137)) && echo ' (TIMED OUT)'), $(awk "BEGIN{printf \"%.1f\", $e - $s}") s"
    tar -czf "$OUT/logs.tar.gz" -C "$WORK" json logs 2>/dev/null # kept current: a hard stop still leaves it
}

echo "GPU check: $(date -Is), root $ROOT, work $WORK, OUT $OUT, python $PY, small=$SMALL, budget ${BUDGET} s"

# -- 0. device, versions, install ------------------------------------------------------------------
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi -L | tee "$J/nvidia_smi.txt"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >>"$L/nvidia_smi_full.log" 2>&1
    nvidia-smi >>"$L/nvidia_smi_full.log" 2>&1
    (while :; do
        printf '%s,%s\n' "$(date +%s.%N)" \
            "$(nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader,nounits 2>/dev/null | head -n 1)"
        sleep 1
    done) >"$J/gpu_samples.csv" 2>/dev/null &
    SAMPLER=$!
else
    echo "no nvidia-smi: no NVIDIA GPU here" | tee "$J/nvidia_smi.txt"
    SAMPLER=
fi
nproc 2>/dev/null | sed 's/^/CPU cores: /'
echo "== pip list"
timeout 60 "$PY" -m pip list 2>&1 | tee "$L/pip_list_before.log"

if [ "$INSTALL" != 0 ]; then
    MISSING=$(timeout 60 "$PY" tools/gpu_check/deps.py missing 2>>"$L/deps.log")
    echo "not importable here: ${MISSING:-nothing}"
    DRY=
    [ "$INSTALL" = dry ] && DRY=--dry-run
    if [ -n "$MISSING" ] && [ -d wheels ]; then
        # shellcheck disable=SC2086
        run_step install 120 "$PY" -m pip install $DRY --no-index --no-cache-dir --find-links wheels $MISSING
        if [ "$RC" != 0 ]; then
            CLOSURE=$("$PY" tools/gpu_check/deps.py closure wheels 2>>"$L/deps.log")
            echo "resolution failed: installing without dependencies: $CLOSURE"
            # shellcheck disable=SC2086
            [ -n "$CLOSURE" ] && run_step install_nodeps 90 "$PY" -m pip install $DRY --no-index --no-cache-dir --no-deps $CLOSURE
            if [ -n "$CLOSURE" ] && [ "$RC" != 0 ]; then
                # shellcheck disable=SC2086
                run_step install_target 90 "$PY" -m pip install --no-index --no-cache-dir --no-deps --target "$WORK/site" $CLOSURE
                export PYTHONPATH="$PYTHONPATH:$WORK/site"
            fi
        fi
    elif [ -n "$MISSING" ]; then
        echo "no ./wheels folder: cannot install $MISSING"
    fi
    if [ "$INSTALL" != dry ]; then
        run_step install_editable 90 "$PY" -m pip install --no-index --no-build-isolation --no-deps -e .
    fi
fi
run_step versions 60 "$PY" tools/gpu_check/deps.py report "$J/versions.json"
"$PY" - "$J/versions.json" <<'EOF' 2>/dev/null
import json, sys
d = json.load(open(sys.argv[1]))
v = d["versions"]
print(f"python {d['python']}  torch {v['torch']} (cuda {d.get('torch_cuda')}, available {d.get('cuda_available')})  "
      f"transformers {v['transformers']}  trl {v['trl']}  accelerate {v['accelerate']}  peft {v['peft']}  "
      f"datasets {v['datasets']}  device {d.get('device_name')}")
EOF
"$PY" -c "import overopt; print('overopt from', overopt.__file__)" || echo "overopt NOT importable"

# -- 2. the built-in lab on the GPU (config `device` auto): the default preset's stages and one run, then the
#    frontier grid's runs per hour on those stages. First: the lab's CUDA path is new (issue 28) and never ran.
if [ "${GPU_CHECK_LAB:-1}" = 1 ]; then
    INNER=$(($(left) - 25))
    ((INNER > 180)) && INNER=180
    ST_ARGS=("$WORK/default_run" "$J/stages.json" --timeout "$INNER" --threads 0)
    [ "$SMALL" = 1 ] && ST_ARGS+=(--preset smoke --threads 1)
    if ((INNER < 30)); then
        echo "== default_preset: SKIPPED, ${INNER} s left in the ${BUDGET} s budget"
        printf '{"step":"default_preset","rc":null,"skipped":true}\n' >>"$J/steps.jsonl"
    else
        GPU_CHECK_CUDA_LOG="$J/probe_default.jsonl" PYTHONPATH="$PROBE:$PYTHONPATH" \
            TAIL_LINES=30 run_step default_preset $((INNER + 25)) "$PY" tools/gpu_check/stages.py "${ST_ARGS[@]}"
    fi
    if [ -d "$WORK/default_run/artifacts/rm" ]; then
        FR_ARGS=("$WORK/default_run" "$J/frontier.json" --timeout 150)
        [ "$SMALL" = 1 ] && FR_ARGS=("$WORK/default_run" "$J/frontier.json" --timeout 60 --preset smoke --jobs 1
                                      --threads 1)
        GPU_CHECK_CUDA_LOG="$J/probe_frontier.jsonl" PYTHONPATH="$PROBE:$PYTHONPATH" \
            TAIL_LINES=20 run_step frontier 180 "$PY" tools/gpu_check/frontier.py "${FR_ARGS[@]}"
    else
        echo "== frontier: SKIPPED, the default preset's stages did not finish"
        printf '{"step":"frontier","rc":null,"skipped":true}\n' >>"$J/steps.jsonl"
    fi
    # Stacking K runs' sampling (overopt.batching) on this device: per-run time against K (table in run.log).
    SS_DEVICE=cpu
    "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null && SS_DEVICE=cuda
    TAIL_LINES=12 run_step stacked_sampling 60 "$PY" benchmarks/stacked_sampling.py --device "$SS_DEVICE" --no-write
    # The same command twice from nothing: bit-for-bit the same on this device? (the smoke preset, none and kl)
    GPU_CHECK_CUDA_LOG="$J/probe_repeatable.jsonl" PYTHONPATH="$PROBE:$PYTHONPATH" TAIL_LINES=20 \
        run_step repeatable 140 "$PY" tools/gpu_check/repeatable.py "$WORK/repeat" "$J/repeatable.json"
fi

# -- bf16: the diagnosis of the non-finite gradients (SDPA kernels on fully masked rows; the 100M model) --------
DIAG_ARGS=(--out "$J/bf16_diagnosis.json")
[ "$SMALL" = 1 ] && DIAG_ARGS+=(--small)
TAIL_LINES=40 run_step bf16_diagnosis 150 "$PY" tools/gpu_check/bf16_diagnosis.py "${DIAG_ARGS[@]}"

# -- 3. throughput: overopt vs TRL GRPO, ~100M Llama, bf16 ---------------------------------------------
# First transformers' own masks (the failure of 2026-11-27, both sides, one short repetition), then the fix.
UNFIXED=(--out "$J/throughput_unfixed.json" --threads 8 --mask transformers --reps 1 --steps 2)
[ "$SMALL" = 1 ] && UNFIXED=(--out "$J/throughput_unfixed.json" --threads 1 --small --mask transformers)
TAIL_LINES=30 run_step throughput_unfixed 100 "$PY" tools/gpu_check/throughput.py "${UNFIXED[@]}"
TP_CAP=200
(($(left) < TP_CAP)) && TP_CAP=$(left)
# A repetition (both sides) takes ~40-60 s at the real sizes: none starts after TP_CAP - 70 s.
TP_ARGS=(--out "$J/throughput.json" --threads 8 --deadline-s $((TP_CAP - 70)))
[ "$SMALL" = 1 ] && TP_ARGS=(--out "$J/throughput.json" --threads 1 --small)
TAIL_LINES=30 run_step throughput "$TP_CAP" "$PY" tools/gpu_check/throughput.py "${TP_ARGS[@]}"

# -- generation alone on the same model: overopt's sampler, generate with the dynamic and the static cache --------
GEN_ARGS=(--out "$J/gen_speed.json")
[ "$SMALL" = 1 ] && GEN_ARGS+=(--small)
TAIL_LINES=10 run_step gen_speed 150 "$PY" tools/gpu_check/gen_speed.py "${GEN_ARGS[@]}"

# -- 1. hf testbed: smoke run on CUDA, and its tests -------------------------------------------------
run_step tiny_hf 90 "$PY" tools/gpu_check/make_tiny_hf.py "$WORK/tiny_hf"
if [ -f "$WORK/tiny_hf/world.json" ]; then
    GPU_CHECK_CUDA_LOG="$J/probe_smoke.jsonl" PYTHONPATH="$PROBE:$PYTHONPATH" \
        run_step smoke 150 "$PY" tools/gpu_check/smoke.py "$WORK/tiny_hf/world.json" "$WORK/smoke_run" "$J/smoke.json"
    # The same run with its rollouts drawn by a colocated vLLM engine (rl.generation=vllm), where vLLM is installed:
    # overopt's vLLM path has only run against a stand-in module on the CPU (tests/test_vllm_sampling.py).
    if "$PY" -c "import vllm" 2>/dev/null; then
        GPU_CHECK_CUDA_LOG="$J/probe_smoke_vllm.jsonl" PYTHONPATH="$PROBE:$PYTHONPATH" TAIL_LINES=30 \
            run_step smoke_vllm 150 "$PY" tools/gpu_check/smoke.py "$WORK/tiny_hf/world.json" "$WORK/smoke_vllm" \
            "$J/smoke_vllm.json" --rl.generation vllm
    else
        echo "vLLM not importable here: smoke_vllm skipped"
    fi
else
    echo "no tiny HF world: smoke skipped"
fi

# Not -x: a failure on CUDA should not hide the other tests' results. The whole file takes ~280 s on 2 CPU
# cores; with pytest-xdist (in the GPU image) 4 workers share the GPU, and pytest-timeout stops a hung test.
PYTEST_ARGS=(tests/test_hf_testbed.py -v -rfE -p cuda_plugin -p no:cacheprovider)
"$PY" -c "import pytest_timeout" 2>/dev/null && PYTEST_ARGS+=(--timeout 150)
[ "$SMALL" != 1 ] && "$PY" -c "import xdist" 2>/dev/null && PYTEST_ARGS+=(-n 4)
[ "$SMALL" = 1 ] && PYTEST_ARGS+=(-k "smoke_runs_end_to_end or bfloat16_precision or named_presets")
GPU_CHECK_PYTEST_JSON="$J/pytest.json" GPU_CHECK_CUDA_LOG="$J/probe_pytest.jsonl" PYTHONPATH="$PROBE:$PYTHONPATH" \
    TAIL_LINES=40 run_step pytest 200 "$PY" -m pytest "${PYTEST_ARGS[@]}"

# -- 4. summary --------------------------------------------------------------------------------------
[ -n "$SAMPLER" ] && kill "$SAMPLER" 2>/dev/null
echo "== [+$(($(date +%s) - T0)) s] summary"
timeout 40 "$PY" tools/gpu_check/summarize.py "$WORK" "$OUT" >"$L/summarize.log" 2>&1 || {
    echo "summarize.py failed:"
    tail -n 20 "$L/summarize.log"
    { echo "# GPU check: summarize.py failed"; echo; cat "$J/nvidia_smi.txt"; echo; cat "$J/steps.jsonl"; } >"$OUT/summary.md"
}
for f in bf16_diagnosis throughput_unfixed throughput gen_speed; do  # at most 8 files come back: the rest is in logs.tar.gz
    [ -f "$J/$f.json" ] && cp "$J/$f.json" "$OUT/$f.json"
done
tar -czf "$OUT/logs.tar.gz" -C "$WORK" json logs 2>/dev/null
cat "$OUT/summary.md"
echo "== done in $(($(date +%s) - T0)) s; OUT: $(ls "$OUT" | tr '\n' ' ')"
rm -rf "$WORK"
exec 1>&- 2>&-
wait "$TEE_PID" 2>/dev/null || sleep 1
exit 0
