"""Checkpoints: state round trips exactly, writes are atomic, damage is reported in one line, no pickle."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from overopt.checkpoint import (
    Checkpointer,
    CheckpointError,
    load_optimizer_state,
    optimizer_state,
    rng_state,
    set_rng_state,
)
from overopt.errors import NumericalFault
from overopt.progress import StageProgress
from overopt.stages.supervised import fit_minibatches


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))


def test_state_tree_round_trips_exactly(tmp_path):
    state = {
        "step": 3, "kl": 0.1 + 0.2, "nan": float("nan"), "neg_zero": -0.0, "none": None, "flag": True, "name": "x",
        "nested": {"list": [1, [2.5, torch.arange(3)], {"t": torch.tensor(1.5, dtype=torch.float64)}]},
        "empty": torch.zeros(0, 4), "bytes": torch.tensor([0, 255], dtype=torch.uint8),
    }  # fmt: skip
    ckpt = Checkpointer(tmp_path, "fp", every_s=0)
    ckpt.save(3, state, {})
    back = ckpt.load()
    assert back is not None and back.step == 3
    s = back.state
    assert s["step"] == 3 and s["kl"] == 0.1 + 0.2 and math.isnan(s["nan"]) and math.copysign(1, s["neg_zero"]) < 0
    assert s["none"] is None and s["flag"] is True and s["name"] == "x"
    assert s["nested"]["list"][0] == 1 and s["nested"]["list"][1][0] == 2.5
    assert torch.equal(s["nested"]["list"][1][1], torch.arange(3))
    t = s["nested"]["list"][2]["t"]
    assert t.dtype == torch.float64 and t.shape == () and t.item() == 1.5
    assert s["empty"].shape == (0, 4) and torch.equal(s["bytes"], state["bytes"])


def test_rng_states_restore_every_generator():
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    np.random.normal()  # leaves a cached Gaussian in numpy's legacy state
    saved = rng_state()
    draws = (torch.rand(5), np.random.rand(5), np.random.normal(), [random.random() for _ in range(5)])
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    set_rng_state(saved)
    again = (torch.rand(5), np.random.rand(5), np.random.normal(), [random.random() for _ in range(5)])
    assert torch.equal(draws[0], again[0]) and np.array_equal(draws[1], again[1])
    assert draws[2] == again[2] and draws[3] == again[3]


def _train(model, optimizer, steps: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(16, 4, generator=g)
        loss = (model(x) - x.sum(1, keepdim=True)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_optimizer_state_through_a_checkpoint_continues_bit_for_bit(tmp_path):
    straight = _model()
    opt = torch.optim.AdamW(straight.parameters(), lr=1e-2)
    _train(straight, opt, 3, seed=0)
    ckpt = Checkpointer(tmp_path, "fp", every_s=0)
    ckpt.save(3, {"optimizer": optimizer_state(opt)}, {"model": straight})
    _train(straight, opt, 3, seed=1)

    resumed = _model(seed=7)  # other initial weights: everything must come from the checkpoint
    opt2 = torch.optim.AdamW(resumed.parameters(), lr=1e-2)
    back = ckpt.load()
    back.load_model("model", resumed)
    load_optimizer_state(opt2, back.state["optimizer"])
    _train(resumed, opt2, 3, seed=1)
    for a, b in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)


def test_only_the_newest_complete_checkpoint_is_kept_and_read(tmp_path):
    ckpt = Checkpointer(tmp_path, "fp", every_s=0)
    for step in (1, 2, 3):
        ckpt.save(step, {"step": step}, {"model": _model()})
    assert [p.name for p in tmp_path.iterdir()] == ["step-000000003"]
    # A checkpoint cut short by a crash stays in .partial, which is never read.
    (tmp_path / ".partial").mkdir()
    (tmp_path / ".partial" / "state.json").write_text("{ half written")
    assert ckpt.load().state == {"step": 3}
    ckpt.save(4, {"step": 4}, {})  # the next save replaces the leftover
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000000004"]


def test_a_checkpoint_of_another_configuration_is_ignored(tmp_path):
    Checkpointer(tmp_path, "old config", every_s=0).save(5, {"step": 5}, {})
    assert Checkpointer(tmp_path, "new config", every_s=0).load() is None


@pytest.mark.parametrize("damage", ["truncated_state", "truncated_model", "missing_model", "bad_json", "other_model"])
def test_a_damaged_checkpoint_is_named_with_the_fix(tmp_path, damage):
    root = tmp_path / "ckpt"
    ckpt = Checkpointer(root, "fp", every_s=0)
    ckpt.save(2, {"w": torch.ones(100)}, {"model": _model()})
    directory = root / "step-000000002"
    if damage == "truncated_state":
        (directory / "state.safetensors").write_bytes((directory / "state.safetensors").read_bytes()[:50])
    elif damage == "truncated_model":
        (directory / "model.safetensors").write_bytes((directory / "model.safetensors").read_bytes()[:-8])
    elif damage == "missing_model":
        (directory / "model.safetensors").unlink()
    elif damage == "bad_json":
        (directory / "state.json").write_text("not json")
    with pytest.raises(CheckpointError) as err:
        back = ckpt.load()
        back.load_model("model", torch.nn.Linear(3, 3) if damage == "other_model" else _model())
    message = str(err.value)
    assert message.startswith(f"{directory}: cannot read the checkpoint") and f"delete {root}" in message


def test_a_pickle_in_place_of_checkpoint_weights_is_never_unpickled(tmp_path):
    ckpt = Checkpointer(tmp_path / "ckpt", "fp", every_s=0)
    ckpt.save(1, {}, {"model": _model()})
    marker = tmp_path / "unpickled"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save(Payload(), tmp_path / "ckpt" / "step-000000001" / "model.safetensors")
    with pytest.raises(CheckpointError):
        ckpt.load().load_model("model", _model())
    assert not marker.exists()


def _fit(model, losses_seen: list, checkpoints=None, nan_at: int | None = None) -> float:
    data = torch.randn(40, 4, generator=torch.Generator().manual_seed(0))

    def batch_loss(module, rows):
        losses_seen.append(rows)
        loss = (module(data[rows]) - data[rows].sum(1, keepdim=True)).pow(2).sum()
        return loss * float("nan") if len(losses_seen) == nan_at else loss, torch.tensor(float(len(rows)))

    with StageProgress("fit") as progress:
        return fit_minibatches(
            model, 40, batch_loss, epochs=3, batch_size=16, lr=1e-2, seed=0, progress=progress, checkpoints=checkpoints
        )


class _Crash(Exception):
    pass


def test_supervised_loop_resumes_bit_for_bit_from_any_step(tmp_path):
    """3 epochs × 3 batches; interrupted after every possible step, resumed, it ends where the straight run ends."""
    straight = _model()
    _fit(straight, [])
    for stop_after in range(1, 9):
        ckpt = Checkpointer(tmp_path / f"stop{stop_after}", "fp", every_s=0)
        interrupted, seen = _model(), []
        original_save = ckpt.save

        def save_then_crash(step, state, models, stop_after=stop_after, original_save=original_save):
            original_save(step, state, models)
            if step == stop_after:
                raise _Crash

        ckpt.save = save_then_crash
        with pytest.raises(_Crash):
            _fit(interrupted, seen, ckpt)
        resumed = _model(seed=5)
        _fit(resumed, seen, Checkpointer(tmp_path / f"stop{stop_after}", "fp", every_s=0))
        assert len(seen) == 9  # every batch once: nothing repeated, nothing skipped
        for a, b in zip(straight.parameters(), resumed.parameters(), strict=True):
            assert torch.equal(a, b), f"resumed after step {stop_after}"


def test_a_nan_loss_stops_the_supervised_loop_before_the_step_with_the_last_checkpoint_intact(tmp_path):
    model, seen = _model(), []
    ckpt = Checkpointer(tmp_path, "fp", every_s=0)
    with pytest.raises(NumericalFault, match="fit step 4: non-finite loss; the update was not applied"):
        _fit(model, seen, ckpt, nan_at=4)
    assert ckpt.load().step == 3
    before = [p.detach().clone() for p in model.parameters()]
    assert all(torch.isfinite(p).all() for p in before)  # the NaN never reached the weights
