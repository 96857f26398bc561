"""overopt export: the lab's gold-labelled data in TRL's formats, trained on by TRL's own trainers as it is."""

from __future__ import annotations

import json

import pytest
import torch
from datasets import Dataset, load_dataset

from overopt.cli import main
from overopt.export import export_lab, stepwise_rows
from overopt.stages.pairs import sample_and_label_pairs
from overopt.stages.prm import STEP_COLUMNS

trl = pytest.importorskip("trl")


class _Quiet:
    def start(self, total):
        pass

    def advance(self, n):
        pass


@pytest.fixture(scope="module")
def lab_out(tiny_world, tmp_path_factory, one_thread):
    """A run directory as `overopt run` leaves it: gold-labelled pairs and the SFT policy's tokenizer."""
    testbed = tiny_world["testbed"]
    torch.manual_seed(0)
    prompts = testbed.prompts("train", 24, seed=0)
    pairs, _ = sample_and_label_pairs(
        tiny_world["policy"], testbed, prompts, labeling="argmax", bt_temperature=1.0, label_noise=0.0,
        drop_ties=True, seed=0, batch_size=8, progress=_Quiet(),
    )  # fmt: skip
    out = tmp_path_factory.mktemp("lab") / "out"
    pairs.train_test_split(test_size=0.25, seed=0).save_to_disk(str(out / "artifacts" / "pairs" / "data"))
    testbed.tokenizer.save_pretrained(out / "artifacts" / "sft")
    return out, pairs


def test_export_writes_preference_and_prompt_only_files(lab_out, tmp_path):
    out, pairs = lab_out
    main(["export", str(out), "--to", str(tmp_path)])
    names = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.jsonl")}
    assert names == {f"{kind}/{split}.jsonl" for kind in ("preference", "prompt_only") for split in ("train", "test")}
    rows = [json.loads(x) for x in (tmp_path / "preference" / "train.jsonl").read_text().splitlines()]
    rows += [json.loads(x) for x in (tmp_path / "preference" / "test.jsonl").read_text().splitlines()]
    assert len(rows) == len(pairs)
    assert sorted(r["gold_chosen"] for r in rows) == sorted(pairs["gold_chosen"])
    assert all(r["gold_chosen"] >= r["gold_rejected"] for r in rows)  # argmax labels, ties dropped
    assert set(rows[0]) == {"prompt", "chosen", "rejected", "gold_chosen", "gold_rejected"}


def test_a_dir_without_labelled_data_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["export", str(tmp_path), "--to", str(tmp_path / "x")])
    assert exit_.value.code == 2
    assert "holds no gold-labelled data" in capsys.readouterr().err


def test_trl_reward_trainer_reads_back_the_lab_token_ids_and_trains(lab_out, tiny_world, tmp_path):
    """TRL joins prompt + chosen and tokenizes it: the lab's own ids come back, then RewardTrainer trains."""
    from overopt.models.reward import reward_model_from_backbone

    out, pairs = lab_out
    export_lab(out, tmp_path / "trl")
    data = load_dataset("json", data_files=str(tmp_path / "trl" / "preference" / "train.jsonl"))["train"]
    tok = tiny_world["testbed"].tokenizer
    config = trl.RewardConfig(output_dir=str(tmp_path / "rt"), max_steps=2, per_device_train_batch_size=4,
                              use_cpu=True, report_to=[], save_strategy="no", logging_steps=1,
                              learning_rate=1e-3, max_length=None)  # fmt: skip
    model = reward_model_from_backbone(tiny_world["path"], seed=0)
    trainer = trl.RewardTrainer(model=model, args=config, train_dataset=data, processing_class=tok)
    # Each row comes back as the lab's ids; a completion cut at the token budget (no EOS) gets TRL's EOS appended.
    eos = tok.eos_token_id
    lab = set()
    for p, c in zip(pairs["prompt_ids"], pairs["chosen_ids"], strict=True):
        lab.add(tuple(p + c) if c[-1] == eos else tuple(p + c + [eos]))
    theirs = {tuple(ids) for ids in trainer.train_dataset["chosen_ids"]}
    assert theirs and theirs <= lab
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses and all(torch.isfinite(torch.tensor(losses)))


def test_trl_dpo_trainer_takes_the_export(lab_out, tiny_world, tmp_path):
    out, _ = lab_out
    export_lab(out, tmp_path / "trl")
    data = load_dataset("json", data_files=str(tmp_path / "trl" / "preference" / "train.jsonl"))["train"]
    config = trl.DPOConfig(output_dir=str(tmp_path / "dpo"), max_steps=1, per_device_train_batch_size=4,
                           use_cpu=True, report_to=[], save_strategy="no", logging_steps=1)  # fmt: skip
    from transformers import AutoModelForCausalLM

    policy = AutoModelForCausalLM.from_pretrained(tiny_world["path"])
    trainer = trl.DPOTrainer(model=policy, args=config, train_dataset=data,
                             processing_class=tiny_world["testbed"].tokenizer)  # fmt: skip
    trainer.train()
    assert any("loss" in h for h in trainer.state.log_history)


def test_stepwise_rows_split_a_completion_at_its_step_ends(tiny_world):
    """TRL's stepwise-supervision format: one text per step, each ending with its step's last token."""
    tok = tiny_world["testbed"].tokenizer
    prompt = tok("<bos> f00 f01 <tldr>", add_special_tokens=False)["input_ids"]
    completion = tok("f01 the f00 also f02 <eos>", add_special_tokens=False)["input_ids"]
    data = Dataset.from_dict(dict(zip(STEP_COLUMNS, ([prompt], [completion], [[1, 3]], [[1.0, 0.0]]), strict=True)))
    rows = stepwise_rows(data, tok)
    assert rows["prompt"] == ["<bos> f00 f01 <tldr>"]
    assert rows["completions"] == [[" f01 the", " f00 also"]]
    assert rows["labels"] == [[True, False]]
