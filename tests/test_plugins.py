"""Plugins: a testbed and a method part from outside overopt (examples/plugin), found by import path or
entry point, with their own knobs; the lab's checks of a testbed; stale stages after a plugin edit."""

from __future__ import annotations

import json
import shutil
import sys
import tomllib
from pathlib import Path

import pytest
import torch
import yaml

from overopt.cli import main
from overopt.config import RLConfig, load_config
from overopt.methods import PARTS, resolve_method
from overopt.testbeds import TESTBEDS, make_testbed
from overopt.testbeds.base import check_testbed

PLUGIN = Path(__file__).parents[1] / "examples" / "plugin"
TESTBED = "overopt_keyword.testbed:KeywordTestbed"
METHOD = "overopt_keyword.method:repetition_penalty"


@pytest.fixture
def plugin_on_path(monkeypatch):
    """The example plugin importable, as it is once `pip install examples/plugin` ran."""
    monkeypatch.syspath_prepend(str(PLUGIN))
    yield
    for name in [m for m in sys.modules if m.startswith("overopt_keyword")]:
        del sys.modules[name]
    TESTBEDS._resolved.clear()
    PARTS._resolved.clear()


def _fail(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1, err
    return err[0]


def test_a_plugin_testbed_and_method_run_the_smoke_pipeline(plugin_on_path, tmp_path, one_thread):
    out = tmp_path / "kw"
    main([
        "run", "--preset", "smoke", "--testbed", TESTBED, "--methods", f"none,{METHOD}+kl", "--threads", "1",
        "--out", str(out), "--testbed_args.budget", "3", "--method_args.repetition_penalty.alpha", "0.2",
    ])  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    assert summary["testbed"] == "keyword" and summary["testbed_spec"] == TESTBED  # the testbed that ran
    assert set(summary["methods"]) == {"none", f"{METHOD}+kl"}
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["testbed_args"]["budget"] == 3 and config["testbed_args"]["n_topics"] == 12  # defaults recorded
    assert config["method_args"] == {"repetition_penalty": {"alpha": 0.2}}
    assert config["eval"]["n_prompts"] == 48  # the plugin's own smoke preset
    rows = [json.loads(line) for line in (out / "runs" / f"{METHOD}+kl" / "seed0" / "metrics.jsonl").open()]
    assert len(rows) == 3 and all("repetition_penalty/mean" in r for r in rows[1:])
    # Prompts vary in length (1 to 3 topics): the SFT model has positions for the longest one.
    testbed = make_testbed(load_config("smoke", out / "config.yaml"))
    longest = max(len(p) for p in testbed.prompts("eval", 48, 0)) + testbed.max_completion_tokens
    assert json.loads((out / "artifacts" / "sft" / "config.json").read_text())["max_position_embeddings"] >= longest
    assert "keyword" in (out / "report.html").read_text()


def _dist_info(tmp_path: Path) -> Path:
    """An installed distribution's metadata with the entry points the plugin's pyproject declares (what
    `pip install examples/plugin` writes), so importlib.metadata finds them as it finds installed ones."""
    project = tomllib.loads((PLUGIN / "pyproject.toml").read_text())["project"]
    info = tmp_path / "site" / f"overopt_keyword-{project['version']}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    (info / "top_level.txt").write_text("overopt_keyword\n")
    groups = project["entry-points"]
    (info / "entry_points.txt").write_text(
        "".join(f"[{g}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) for g, eps in groups.items())
    )
    return info.parent


def test_entry_point_names_resolve_like_built_ins(plugin_on_path, monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(_dist_info(tmp_path)))
    entry = TESTBEDS.resolve("keyword")
    assert entry.args.__name__ == "KeywordArgs" and entry.version.startswith("0.1.0+")
    cfg = load_config("smoke", testbed="keyword")
    assert cfg.testbed_args["budget"] == 4 and make_testbed(cfg).name == "keyword"
    plan = resolve_method("repetition_penalty+kl", RLConfig())
    assert plan.uses_kl and plan.strength_key == "repetition_penalty/share"
    with pytest.raises(ValueError, match=r"unknown testbed 'kw'; .* installed plugins: keyword"):
        TESTBEDS.resolve("kw")


def test_plugin_knobs_are_validated_in_one_line(plugin_on_path, tmp_path, capsys):
    base = ["run", "--preset", "smoke", "--out", str(tmp_path / "never"), "--testbed", TESTBED]
    line = _fail([*base, "--testbed_args.budget", "0"], capsys)
    assert line == "overopt: error: testbed_args.budget: Input should be greater than 0"
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text(f"testbed: {TESTBED}\ntestbed_args: {{nope: 1}}\n")
    assert "testbed_args.nope: Extra inputs are not permitted" in _fail(["run", "--config", str(yaml_file)], capsys)
    yaml_file.write_text(f"testbed: {TESTBED}\nmethods: {METHOD}\nmethod_args: {{repetition_penalty: {{alpha: -1}}}}\n")
    line = _fail(["run", "--config", str(yaml_file)], capsys)
    assert "method_args.repetition_penalty.alpha: Input should be greater than or equal to 0" in line
    yaml_file.write_text("method_args: {gr: {gamma: 1}}\n")
    assert "method_args.gr: not a plugin part of --methods" in _fail(["run", "--config", str(yaml_file)], capsys)
    yaml_file.write_text("testbed_args: {budget: 3}\n")
    assert "testbed 'summarize' takes no testbed_args" in _fail(["run", "--config", str(yaml_file)], capsys)
    assert not (tmp_path / "never").exists()


def test_editing_a_plugin_makes_the_stages_it_built_stale(tmp_path, monkeypatch):
    from overopt.pipeline import stage_fingerprints

    shutil.copytree(PLUGIN / "overopt_keyword", tmp_path / "overopt_keyword")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        cfg = load_config("smoke", testbed=TESTBED)
        before = stage_fingerprints(cfg, "preference")
        assert stage_fingerprints(cfg, "preference") == before
        source = tmp_path / "overopt_keyword" / "testbed.py"
        source.write_text(source.read_text().replace("relevant[topics].sum(0)", "relevant[topics].sum(0) * 1"))
        TESTBEDS._resolved.clear()  # a new process: the plugin is imported again
        after = stage_fingerprints(cfg, "preference")
        assert all(after[stage] != before[stage] for stage in ("sft", "data", "rm"))
        builtin = load_config("smoke")
        assert stage_fingerprints(builtin, "preference") == stage_fingerprints(builtin, "preference")
    finally:
        for name in [m for m in sys.modules if m.startswith("overopt_keyword")]:
            del sys.modules[name]
        TESTBEDS._resolved.clear()


def test_the_lab_checks_a_testbed_and_fills_in_optional_members(tiny_world):
    class Partial:
        name, proxy, max_completion_tokens = "partial", "preference", 4
        tokenizer = tiny_world["testbed"].tokenizer

    with pytest.raises(ValueError, match=r"testbed 'x' lacks sft_corpus, prompts, gold_reward"):
        check_testbed(Partial(), "x")

    class Structural(Partial):  # implements the protocol without inheriting TestbedDefaults
        def sft_corpus(self, n, seed): ...
        def prompts(self, split, n, seed): ...
        def gold_reward(self, p, c, m): ...
        def gold_components(self, p, c, m): ...
        def gold_from_components(self, c): ...

    testbed = check_testbed(Structural(), "x")
    assert testbed.policy_path is None and testbed.load_kwargs == {} and testbed.device == "cpu"
    model = torch.nn.Linear(2, 2)
    assert testbed.trainable_policy(model, 0) is model
    with testbed.precision():
        pass
    Structural.proxy = "rule"
    with pytest.raises(ValueError, match=r"lacks rule_reward \(its proxy is 'rule'\)"):
        check_testbed(Structural(), "x")
    Structural.proxy = "vibes"
    with pytest.raises(ValueError, match="proxy must be one of preference, judge, process, rule"):
        check_testbed(Structural(), "x")


def test_repetition_penalty_against_a_naive_count(plugin_on_path):
    from overopt_keyword.method import RepetitionPenalty, repeated_tokens

    from overopt.mitigations.protocols import RewardScores
    from overopt.sampling import Rollout

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 8, (16, 9), generator=g)
    mask = (torch.arange(9) < torch.randint(1, 10, (16, 1), generator=g)).long()
    eos = 3
    naive = [
        sum(1 for t in range(9) if mask[b, t] and ids[b, t] != eos and any(
            mask[b, s] and ids[b, s] != eos and ids[b, s] == ids[b, t] for s in range(t)))
        for b in range(16)
    ]  # fmt: skip
    assert repeated_tokens(ids, mask, eos).tolist() == naive
    rewards = torch.randn(16, dtype=torch.float64, generator=g)
    prompts = torch.zeros(16, 2, dtype=torch.long)
    rollout = Rollout(prompts, torch.ones_like(prompts), ids, mask)
    off, _ = RepetitionPenalty(0.0, eos)(rewards, rollout, RewardScores(rewards))
    assert torch.equal(off, rewards)  # α = 0 is off
    on, figures = RepetitionPenalty(0.5, eos)(rewards, rollout, RewardScores(rewards))
    assert torch.allclose(on, rewards - 0.5 * torch.tensor(naive, dtype=torch.float64))
    assert figures["repetition_penalty/mean"] == pytest.approx(0.5 * sum(naive) / 16)
