"""Direct alignment in the lab: DPO, IPO, SimPO, RPO and hinge trained on the proxy RM's pairs, on the run contract."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from overopt import faults
from overopt.cli import main
from overopt.config import RLConfig, load_config
from overopt.methods import resolve_method

pytestmark = pytest.mark.usefixtures("one_thread")  # the runs below set --threads 1; restored afterwards

SMOKE = ["run", "--preset", "smoke", "--threads", "1", "--checkpoint_every_s", "0"]  # as conftest.uninterrupted
EVERY = ["--eval.every", "5"]  # eval.* is in the runs' fingerprints only: the copied stages are reused
LOSSES = ("dpo", "ipo", "simpo", "rpo", "hinge")
DAA = ["--methods", ",".join(LOSSES)]
CONTRACT = {"gold_reward", "proxy_reward", "kl_sft", "entropy", "mean_length", "daa/implicit_accuracy",
            "daa/chosen_logratio", "daa/rejected_logratio", "daa/margin", "daa/heldout_loss"}  # fmt: skip


@pytest.fixture(scope="module")
def daa_out(uninterrupted, tmp_path_factory):
    out = tmp_path_factory.mktemp("daa") / "out"
    shutil.copytree(uninterrupted / "artifacts", out / "artifacts")  # the smoke run's SFT, pairs and RM
    main([*SMOKE, "--out", str(out), *DAA, *EVERY])
    return out


def _rows(out, method):
    return [json.loads(line) for line in (out / "runs" / method / "seed0" / "metrics.jsonl").open()]


def test_every_loss_trains_on_the_pairs_and_is_evaluated_on_the_run_contract(daa_out):
    # smoke: 270 training pairs, batches of 64, 2 epochs = 10 updates, evaluated every 5
    for loss in LOSSES:
        rows = _rows(daa_out, loss)
        assert [r["step"] for r in rows] == [0, 5, 10], loss
        for row in rows:
            assert CONTRACT <= row.keys()
        assert "train/loss" in rows[1] and "train/loss" not in rows[0]
        # Step 0 is the SFT policy, π_θ = π_ref: no log-ratio, no KL; every reference-based margin is 0 (ties: 1/2).
        # (compute_once: the policy's log-probs of its samples come from the sampler's cached decoding, the SFT's
        # from one forward pass, so their KL is 0 to float32 rounding only.)
        assert abs(rows[0]["kl_sft"]) < 1e-6 and rows[0]["daa/chosen_logratio"] == 0 == rows[0]["daa/rejected_logratio"]
        if loss != "simpo":
            assert rows[0]["daa/implicit_accuracy"] == 0.5 and rows[0]["daa/margin"] == 0
        assert rows[-1]["kl_sft"] > 0 and (daa_out / "runs" / loss / "seed0" / "policy.safetensors").is_file()
    # DPO pushes the chosen completions' log-ratio above the rejected ones'.
    last = _rows(daa_out, "dpo")[-1]
    assert last["daa/margin"] > 0 and last["daa/chosen_logratio"] > last["daa/rejected_logratio"]
    summary = json.loads((daa_out / "summary.json").read_text())
    assert list(summary["methods"]) == list(LOSSES)
    assert all(summary["methods"][loss]["fit"]["form"] == "rl" for loss in LOSSES)


class _Crash(BaseException):
    """Stands in for a SIGKILL inside the test process (the CLI catches no BaseException)."""


def _crash() -> None:
    raise _Crash


def test_a_daa_run_killed_mid_training_resumes_bit_for_bit(daa_out, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(daa_out / "artifacts", out / "artifacts")
    args = [*SMOKE, "--out", str(out), "--methods", "rpo", *EVERY]
    faults.arm("rpo rpo seed0:7", crash=_crash)  # after the step-5 evaluation and its checkpoint, in epoch 2
    try:
        with pytest.raises(_Crash):
            main(args)
    finally:
        faults.arm("")
    assert list(out.glob("checkpoints/runs/rpo/seed0/step-*"))
    main(args)
    for log in ("metrics.jsonl", "samples.jsonl"):
        expected = (daa_out / "runs" / "rpo" / "seed0" / log).read_text().splitlines()
        got = (out / "runs" / "rpo" / "seed0" / log).read_text().splitlines()
        if log == "metrics.jsonl":
            expected, got = ([{k: v for k, v in json.loads(x).items() if k != "wall_s"} for x in rows]
                             for rows in (expected, got))  # fmt: skip
        assert got == expected, log
    a, b = (load_file(o / "runs" / "rpo" / "seed0" / "policy.safetensors") for o in (daa_out, out))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    ("name", "message"),
    [("dpo+kl", "direct-alignment loss with its own training"), ("bon+dpo", "not with 'dpo'")],
)
def test_daa_methods_take_no_other_part(name, message):
    with pytest.raises(ValueError, match=message):
        resolve_method(name, RLConfig())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--testbed", "math_format", "--methods", "dpo"], "'dpo' trains on gold-labelled preference pairs"),
        (["--methods", "dpo", "--dpo.beta", "0"], "dpo.beta: Input should be greater than 0"),
        (["--methods", "simpo", "--simpo.gamma", "-1"], "simpo.gamma: Input should be greater than or equal to 0"),
        (["--methods", "ipo", "--daa.epochs", "0"], "daa.epochs: Input should be greater than 0"),
    ],
)
def test_bad_daa_input_is_one_line(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--preset", "smoke", "--out", str(tmp_path / "o"), *args])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1 and message in err, err


def test_beta_sweeps_name_one_run_per_value():
    cfg = load_config("smoke").model_copy(update={"methods": "dpo,rpo", "sweep": "dpo.beta=0.01,1"})
    variants = cfg.method_variants()
    assert [name for name, _, _ in variants] == ["dpo@dpo.beta=0.01", "rpo@dpo.beta=0.01", "dpo@dpo.beta=1",
                                                 "rpo@dpo.beta=1"]  # fmt: skip
    assert [v.dpo.beta for _, _, v in variants] == [0.01, 0.01, 1.0, 1.0]
