"""End to end on the RLVR testbeds: `overopt run --testbed math_format|judge --preset smoke`."""

from __future__ import annotations

import json

import pytest
import yaml
from datasets import load_from_disk
from transformers import AutoModelForSequenceClassification

from overopt.cli import main
from overopt.config import load_config

SMOKE = ["--preset", "smoke", "--rl.steps", "4", "--eval.every", "2"]


@pytest.fixture(scope="module", params=["math_format", "judge"])
def smoke_out(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param) / "out"
    main(["run", "--testbed", request.param, *SMOKE, "--methods", "none,kl,gr,bon", "--out", str(out)])
    return request.param, out


def test_smoke_run_writes_the_output_contract(smoke_out):
    testbed, out = smoke_out
    assert yaml.safe_load((out / "config.yaml").read_text())["testbed"] == testbed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["testbed"] == testbed and list(summary["methods"]) == ["none", "kl", "gr", "bon"]
    rows = [json.loads(line) for line in (out / "runs" / "none" / "seed0" / "metrics.jsonl").open()]
    assert [r["step"] for r in rows] == [0, 2, 4]
    for row in rows:
        assert 0.0 <= row["gold_reward"] <= 1.0  # gold = the answer is right
        assert {"gold/correct", "gold/strict_format", "gold/xmlcount", "gold/verified"} <= row.keys()
    # Best-of-n ranks by the proxy, a rule here: its expected best never falls as n grows.
    bon = [json.loads(line) for line in (out / "runs" / "bon" / "seed0" / "metrics.jsonl").open()]
    assert [r["n"] for r in bon][-1] == 16 and all(0.0 <= r["gold_reward"] <= 1.0 for r in bon)
    assert all(a["proxy_reward"] <= b["proxy_reward"] + 1e-12 for a, b in zip(bon, bon[1:]))
    assert (out / "report.html").exists()


def test_only_the_judge_testbed_learns_a_proxy(smoke_out):
    testbed, out = smoke_out
    stages = sorted(p.name for p in (out / "artifacts").iterdir() if not p.name.startswith("."))
    if testbed == "math_format":
        assert stages == ["sft"]  # the proxy is a rule: nothing to learn
        return
    assert stages == ["judge_data", "rm", "sft"]
    answers = load_from_disk(str(out / "artifacts" / "judge_data" / "data"))
    labels = set(answers["train"]["label"])
    assert labels == {0.0, 1.0}
    judge = AutoModelForSequenceClassification.from_pretrained(out / "artifacts" / "rm")
    assert judge.config.num_labels == 1
    metrics = json.loads((out / "artifacts" / "rm" / "stage.json").read_text())["metrics"]
    assert 0.0 <= metrics["heldout_accuracy"] <= 1.0


@pytest.mark.parametrize(
    ("testbed", "method", "message"),
    [
        ("math_format", "signcert", "needs a learned reward model"),
        ("math_format", "ensemble_mean", "needs a learned reward model"),
        ("math_format", "ocrm+kl", "needs a learned reward model"),
        ("judge", "ocrm", "preference pairs"),
    ],
)
def test_methods_that_need_what_the_proxy_lacks_are_refused(tmp_path, capsys, testbed, method, message):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:  # in-process: tests/test_pipeline.py runs `python -m overopt`
        main(["run", "--testbed", testbed, "--preset", "smoke", "--methods", method, "--out", str(out)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and message in err
    assert not out.exists()  # refused before anything was written


def test_testbed_presets_exist_and_select_their_testbed():
    for testbed in ("summarize", "math_format", "judge"):
        for preset in ("smoke", "default"):
            assert load_config(preset, testbed=testbed).testbed == testbed
    with pytest.raises(ValueError, match="unknown testbed"):
        load_config("smoke", testbed="chess")
    with pytest.raises(ValueError, match="is for testbed 'hf', not 'judge'"):
        load_config("ocrm-tldr", testbed="judge")  # a named preset carries its own testbed


def test_a_rule_reward_run_does_not_depend_on_unused_sections(smoke_out):
    """math_format trains no RM: changing pairs.* or rm.* must neither rebuild nor refuse its runs."""
    testbed, out = smoke_out
    if testbed != "math_format":
        pytest.skip("the judge and preference testbeds do read their data and model sections")
    metrics = (out / "runs" / "none" / "seed0" / "metrics.jsonl").read_text()
    main(["run", "--testbed", testbed, *SMOKE, "--methods", "none", "--out", str(out),
          "--pairs.n-prompts", "17", "--rm.epochs", "9"])  # fmt: skip
    assert (out / "runs" / "none" / "seed0" / "metrics.jsonl").read_text() == metrics
