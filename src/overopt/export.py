"""The lab's gold-labelled data in TRL's dataset formats (https://huggingface.co/docs/trl/dataset_formats).

`overopt export OUT --to DIR` writes, from a finished (or partly finished) run directory, JSON Lines files that
`datasets.load_dataset("json", data_files=...)` reads and TRL's trainers take as they are:

- preference/{train,test}.jsonl — standard preference with an explicit prompt: `prompt`, `chosen`, `rejected`
  (text), plus the gold rewards `gold_chosen`, `gold_rejected`; for RewardTrainer and DPOTrainer;
- prompt_only/{train,test}.jsonl — `prompt`: the prompts those pairs were sampled for (GRPO, RLOO);
- stepwise/{train,test}.jsonl — stepwise supervision: `prompt`, `completions` (one text per step) and
  `labels` (the gold verdict of each step, bool), for PRM training, from the `process` testbed's PRM data.

Texts come from the run's policy tokenizer. A completion's text is what decoding the prompt and completion
together adds to the prompt's own decoding (so a tokenizer that needs a space between them gets it): TRL
joins prompt + completion and tokenizes the result, which gives back the lab's token ids exactly when the
tokenizer round-trips decode and encode (the lab's own tokenizers do), except that TRL appends EOS to a
completion that has none (one cut at the token budget). tests/test_export.py trains TRL's RewardTrainer and
DPOTrainer on the export and checks RewardTrainer's token ids. TRL 1.16 has no PRM trainer left; the stepwise
files follow its documented stepwise-supervision format (tokens after the last step end are not in them).
"""

from __future__ import annotations

import json
from pathlib import Path

from datasets import DatasetDict, load_from_disk
from transformers import AutoTokenizer, PreTrainedTokenizerBase


def continuation_texts(tokenizer: PreTrainedTokenizerBase, prompt: list[int], pieces: list[list[int]]) -> list[str]:
    """The text each of `pieces` (consecutive token spans after `prompt`) adds to the decoded text before it."""
    texts, ids = [], list(prompt)
    before = tokenizer.decode(ids)
    for piece in pieces:
        ids += piece
        after = tokenizer.decode(ids)
        if not after.startswith(before):  # a tokenizer whose decoding of a prefix is not a prefix of the whole
            raise ValueError("export: the tokenizer's decoding of the prompt is not a prefix of prompt + completion")
        texts.append(after[len(before) :])
        before = after
    return texts


def preference_rows(pairs, tokenizer: PreTrainedTokenizerBase) -> dict[str, list]:
    rows: dict[str, list] = {k: [] for k in ("prompt", "chosen", "rejected", "gold_chosen", "gold_rejected")}
    for r in pairs:
        rows["prompt"].append(tokenizer.decode(r["prompt_ids"]))
        rows["chosen"].extend(continuation_texts(tokenizer, r["prompt_ids"], [r["chosen_ids"]]))
        rows["rejected"].extend(continuation_texts(tokenizer, r["prompt_ids"], [r["rejected_ids"]]))
        rows["gold_chosen"].append(r["gold_chosen"])
        rows["gold_rejected"].append(r["gold_rejected"])
    return rows


def stepwise_rows(answers, tokenizer: PreTrainedTokenizerBase) -> dict[str, list]:
    """One row per answer: its steps' texts (each up to and including the token that ends the step) and labels."""
    rows: dict[str, list] = {"prompt": [], "completions": [], "labels": []}
    for r in answers:
        ends = [int(p) + 1 for p in r["step_positions"]]
        pieces = [r["completion_ids"][start:end] for start, end in zip([0, *ends[:-1]], ends, strict=True)]
        rows["prompt"].append(tokenizer.decode(r["prompt_ids"]))
        rows["completions"].append(continuation_texts(tokenizer, r["prompt_ids"], pieces))
        rows["labels"].append([bool(x) for x in r["step_labels"]])
    return rows


def _tokenizer(out: Path) -> PreTrainedTokenizerBase:
    """The run's policy tokenizer: saved with the SFT policy, or (the hf testbed, which trains no SFT policy) that
    of the policy directory its SFT stage records."""
    sft = out / "artifacts" / "sft"
    if (sft / "tokenizer_config.json").exists():
        return AutoTokenizer.from_pretrained(sft)
    stage = json.loads((sft / "stage.json").read_text()) if (sft / "stage.json").exists() else {}
    for value in _strings(stage):
        if (Path(value) / "tokenizer_config.json").exists():
            return AutoTokenizer.from_pretrained(value)
    raise ValueError(f"export: no tokenizer in {sft}, nor a policy directory with one in its stage.json")


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, (dict, list)):
        for v in value.values() if isinstance(value, dict) else value:
            yield from _strings(v)


def _write(rows: dict[str, list], path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    n = len(next(iter(rows.values())))
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            f.write(json.dumps({k: v[i] for k, v in rows.items()}, ensure_ascii=False) + "\n")
    return n


def export_lab(out: Path, to: Path) -> dict[str, int]:
    """Write the TRL-format files of run directory `out` under `to`; returns {relative path: rows}."""
    out, to = Path(out), Path(to)
    artifacts = out / "artifacts"
    sources = {"pairs": "preference", "prm_data": "stepwise"}
    found = {name: artifacts / name / "data" for name in sources if (artifacts / name / "data").exists()}
    if not found:
        raise ValueError(
            f"export: {out} holds no gold-labelled data yet (OUT/artifacts/pairs or OUT/artifacts/prm_data): "
            "run `overopt run` there first; a judge or rule-reward testbed has no preference or step data"
        )
    tokenizer = _tokenizer(out)
    written: dict[str, int] = {}
    for name, data_dir in found.items():
        splits: DatasetDict = load_from_disk(str(data_dir))
        for split, data in splits.items():
            if name == "pairs":
                rows = preference_rows(data, tokenizer)
                written[f"preference/{split}.jsonl"] = _write(rows, to / "preference" / f"{split}.jsonl")
                prompts = {"prompt": list(dict.fromkeys(rows["prompt"]))}
                written[f"prompt_only/{split}.jsonl"] = _write(prompts, to / "prompt_only" / f"{split}.jsonl")
            else:
                rows = stepwise_rows(data, tokenizer)
                written[f"stepwise/{split}.jsonl"] = _write(rows, to / "stepwise" / f"{split}.jsonl")
    return written
