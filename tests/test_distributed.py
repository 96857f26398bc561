"""Several processes through accelerate: `accelerate launch` of the smoke pipeline with 2 CPU processes
(gloo) against one process with the same global batch.

Tolerance (README, "Several processes"): every logged figure within 1e-4 relative (wall times aside),
every sampled completion identical, and every trained weight (SFT, RM, each run's policy) within 1e-4.
The two differ only by float rounding: the processes' gradients are averaged by DDP rather than summed
in one batch, and each forward sees half the rows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from overopt import distributed
from overopt.cli import main
from overopt.config import RLConfig

REPO = Path(__file__).resolve().parents[1]
# Each method exercises a cross-process reduction: KL in the reward (gathered sequence KLs), SignCert-PO
# (gathered hidden states, a batch quantile), an RM ensemble (gathered members, more RMs trained), PAR and
# constrained RLHF (batch statistics of the gathered rewards), GR (two synchronised backward passes),
# OCRM (an RM refit across processes), Dr.GRPO-style token sums through the default seq-mean loss.
METHODS = "kl,signcert,ensemble_mean,par,constrained,gr,ocrm+kl"
ARGS = ["run", "--preset", "smoke", "--methods", METHODS, "--rl.steps", "8", "--rl.lr", "3e-3"]


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]


def _completions(run_dir: Path) -> list[list[str]]:
    rows = [json.loads(line) for line in (run_dir / "samples.jsonl").open()]
    return [[s["prompt"] + " → " + s["completion"] for s in row["samples"]] for row in rows]


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


@pytest.mark.slow
def test_two_processes_match_one_with_the_same_global_batch(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    main([*ARGS, "--out", str(one)])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    config = REPO / "accelerate" / "ddp.yaml"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config)]
    done = subprocess.run(
        [*launch, "--num_processes", "2", "-m", "overopt", *ARGS, "--out", str(two)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "overopt · testbed summarize" in done.stderr and done.stderr.count("rl kl seed0") == 1  # one reporter

    for stage in ("sft", "rm", "rm_1"):
        a, b = (load_file(out / "artifacts" / stage / "model.safetensors") for out in (one, two))
        assert _max_diff(a, b) < 1e-4, stage
    runs = sorted(p.relative_to(one) for p in one.glob("runs/*/seed0"))
    assert len(runs) == len(METHODS.split(","))
    for run in runs:
        rows_one, rows_two = _metrics(one / run), _metrics(two / run)
        assert [r["step"] for r in rows_one] == [r["step"] for r in rows_two]
        for r1, r2 in zip(rows_one, rows_two):
            assert r1.keys() == r2.keys(), run
            for key in r1:
                if "wall" not in key and isinstance(r1[key], float):
                    # alarm/*: differences of logged figures (kl_accel: KL_t − 2 KL_{t−1} + KL_{t−2}) carry the
                    # figures' absolute error several times over
                    tol = 1e-5 if key.startswith("alarm/") else 1e-6
                    assert r2[key] == pytest.approx(r1[key], rel=1e-4, abs=tol), (run, r1["step"], key)
        assert _completions(one / run) == _completions(two / run), run
        weights = [load_file(out / run / "policy.safetensors") for out in (one, two)]
        assert _max_diff(*weights) < 1e-4, run
        assert _max_diff(weights[0], load_file(one / "artifacts" / "sft" / "model.safetensors")) > 1e-3  # it trained
    # The scratch copies of the non-main process are gone; only the main process wrote.
    assert not list(two.glob("artifacts/.*"))


def test_shares_cover_every_row_once(monkeypatch):
    for world in (1, 2, 3, 5):
        for n in (0, 1, 4, 7, 16):
            rows = []
            for rank in range(world):
                monkeypatch.setattr(distributed, "world", lambda w=world: w)
                monkeypatch.setattr(distributed, "rank", lambda r=rank: r)
                rows += list(range(n))[distributed.share(n)]
            assert rows == list(range(n)), (world, n)


def test_batches_that_do_not_split_into_whole_groups_are_refused(monkeypatch):
    from overopt.stages.rl import _check_processes

    monkeypatch.setattr(distributed, "world", lambda: 3)
    with pytest.raises(ValueError, match="prompts_per_step=8 must be a multiple of the 3 processes"):
        _check_processes(RLConfig(prompts_per_step=8))
    with pytest.raises(ValueError, match="ppo runs in one process"):
        _check_processes(RLConfig(prompts_per_step=9, algo="ppo"))
    _check_processes(RLConfig(prompts_per_step=9))


def test_one_process_is_the_identity():
    assert (distributed.world(), distributed.rank(), distributed.is_main()) == (1, 0, True)
    x = torch.arange(6.0).view(3, 2)
    assert distributed.all_sum(x) is x and distributed.gather_rows(x) is x
    model = torch.nn.Linear(2, 1)
    assert distributed.prepare(model) is model
