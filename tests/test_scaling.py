"""`overopt scaling --quick` and its parts: the RM's own backbone size, the grid, stage reuse across cells, trends."""

from __future__ import annotations

import json

import pytest

from overopt.cli import main
from overopt.config import load_config
from overopt.report.scaling import log_linear_trend
from overopt.scaling import cells, load_grid


@pytest.fixture(scope="module")
def scaling_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("scaling") / "out"
    main(["scaling", "--preset", "smoke", "--quick", "--seeds", "1", "--out", str(out)])
    return out


def test_quick_scaling_writes_every_cell_with_its_fits(scaling_out):
    result = json.loads((scaling_out / "scaling.json").read_text())
    names = [c["cell"] for c in result["cells"]]
    assert names == ["base", "rm_16x1x2", "pairs_150", "policy_16x1x2"]
    by_name = {c["cell"]: c for c in result["cells"]}
    for cell in result["cells"]:
        assert set(cell["methods"]) == {"bon", "none"}
        assert cell["methods"]["bon"]["fit"]["form"] == "bon" and cell["methods"]["none"]["fit"]["form"] == "rl"
        assert 0 <= cell["rm_accuracy"] <= 1 and cell["rm_params"] > 0 and cell["policy_params"] > 0
    base, small_rm, small_policy = by_name["base"], by_name["rm_16x1x2"], by_name["policy_16x1x2"]
    assert small_rm["rm_params"] < base["rm_params"] and small_rm["policy_params"] == base["policy_params"]
    assert small_policy["policy_params"] < base["policy_params"]
    assert small_policy["rm_params"] == base["rm_params"]  # the RM keeps the preset's size on the policy axis
    assert by_name["pairs_150"]["pairs"] == 150 and base["pairs"] == 300
    for axis in ("rm_size", "pairs", "policy_size"):
        assert set(result["trends"][axis]) == {"bon", "none"}
    assert (scaling_out / "scaling.html").is_file()
    assert {p.name for p in (scaling_out / "plots").glob("*.png")} == {"scaling_coefficients.png", "scaling_curves.png"}


def test_cells_reuse_stages_built_from_the_same_configuration(scaling_out):
    """The preset's SFT policy is trained once: the RM cell and the data cell link it, and the policy cell's RM
    backbone is that same model (same fingerprint under another stage name)."""
    cells_dir = scaling_out / "cells"
    sft = cells_dir / "base" / "artifacts" / "sft" / "model.safetensors"
    for other in ("rm_16x1x2/artifacts/sft", "pairs_150/artifacts/sft", "policy_16x1x2/artifacts/rm_backbone"):
        assert (cells_dir / other / "model.safetensors").stat().st_ino == sft.stat().st_ino, other
    rm_config = json.loads((cells_dir / "rm_16x1x2" / "artifacts" / "rm" / "config.json").read_text())
    assert rm_config["hidden_size"] == 16 and rm_config["num_hidden_layers"] == 1
    policy_config = json.loads((cells_dir / "policy_16x1x2" / "artifacts" / "sft" / "config.json").read_text())
    assert policy_config["hidden_size"] == 16


def test_default_grid_spans_the_sizes_the_issue_asks_for():
    grid = load_grid(None, quick=False)
    assert len(grid["rm_size"]) >= 4
    assert len(grid["pairs"]) >= 4 and max(grid["pairs"]) / min(grid["pairs"]) >= 16
    assert len(grid["policy_size"]) >= 3
    grid_cells = cells(load_config("default"), grid)
    assert grid_cells["rm_128x2x4"][2].rm_backbone.hidden_size == 128
    assert grid_cells["policy_32x1x2"][2].rm_backbone == load_config("default").model


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("quick: {rm_sizes: [[16, 1]], pairs: [300], policy_sizes: [[32, 1, 2]]}", r"\[hidden_size, num_layers"),
        ("quick: {rm_sizes: [[32, 1, 2]], pairs: [0], policy_sizes: [[32, 1, 2]]}", "positive integers"),
        ("quick: {rm_sizes: [[16, 1, 2]], pairs: [300], policy_sizes: [[32, 1, 2]]}", "must contain the preset's"),
    ],
)
def test_bad_grids_are_one_line_errors(tmp_path, capsys, yaml_text, message):
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml_text)
    with pytest.raises(SystemExit):
        main(["scaling", "--preset", "smoke", "--quick", "--grid", str(grid), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert err.startswith("overopt: error: ") and len(err.splitlines()) == 1
    assert __import__("re").search(message, err), err


def test_rm_size_knobs_are_refused_where_the_lab_has_no_rm_of_its_own(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["run", "--preset", "smoke", "--testbed", "judge", "--rm.hidden_size", "16", "--out", str(tmp_path)])
    assert "size the lab's own Bradley-Terry RM" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["run", "--preset", "smoke", "--rm.hidden_size", "18", "--rm.num_heads", "4", "--out", str(tmp_path)])
    assert "4 heads must divide the RM backbone's width 18" in capsys.readouterr().err


def test_log_linear_trend_recovers_a_line_in_log10_x():
    xs = [10, 100, 1000, 10000]
    trend = log_linear_trend(xs, [1.0 + 0.5 * k for k in range(1, 5)])
    assert trend["slope"] == pytest.approx(0.5) and trend["intercept"] == pytest.approx(1.0)
    assert trend["r2"] == pytest.approx(1.0) and trend["n"] == 4
    assert log_linear_trend([10, 100], [1.0, 2.0])["r2"] is None  # two points say nothing about the fit
    assert log_linear_trend([10], [1.0]) is None and log_linear_trend([10, 10], [1.0, 2.0]) is None
