"""`hf`: the lab protocol on real models — a Hugging Face policy, a prompt dataset and a gold RM.

The setting of OCRM (arXiv 2507.15507) and GR (arXiv 2602.18037): the given causal LM is already the
SFT policy (there is no SFT stage); pairs of its completions are labelled by a **gold** reward model
(e.g. Skywork-Reward-Llama-3.1-8B-v0.2), a Bradley-Terry proxy RM on the policy's backbone learns
from them, RL optimises the proxy, and evaluation scores with the gold RM.

Gold reward: r*(x, y) = the gold RM's score of the conversation [user: x, assistant: y], rendered by
the gold tokenizer's chat template when it has one (as OCRM's gold labelling does), else of the text
x + y. x is the dataset's prompt text (before the policy's own chat template, if any), y the decoded
completion without special tokens.

Everything is checked when the testbed is built — required fields, model configs, tokenizers, the
dataset's splits and column, the gold RM's head — cheapest first and before any weights load, so a
mistake ends with one line naming the field instead of a traceback after hours of sampling.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from datasets import DatasetDict, load_dataset
from datasets.exceptions import DatasetsError
from datasets.utils import logging as datasets_logging
from huggingface_hub import is_offline_mode
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedTokenizerBase,
)
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
)

from overopt.models.attention import use_pad_safe_sdpa
from overopt.models.head import fp32_lm_head
from overopt.models.policy import SAFE_LOADING, with_lora
from overopt.models.reward import score_texts
from overopt.static_sampling import use_static_cache
from overopt.testbeds.base import SFTExample, TestbedDefaults
from overopt.testbeds.process import Steps
from overopt.testbeds.trl_formats import Text, is_conversation, preference_triples, stepwise_rows

if TYPE_CHECKING:  # annotations only: the configuration validates testbed knobs through overopt.testbeds
    from overopt.config import HFConfig

_LOCAL_FORMATS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}
_HOLDOUT_SEED = 1234  # the held-out share of train is the same for every experiment seed
_SPLIT_CODES = {"train": 0, "eval": 1}
_ADD_ROWS = {
    "dataset": "add prompts, one per row",
    "preference_dataset": "add preference pairs, one per row",
    "stepwise_dataset": "add step-labelled solutions, one per row",
}


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def _json_error(path: str) -> str | None:
    """Where a JSON Lines file (or one JSON document) stops parsing: 'line N (...)', or None if it parses."""
    first = None
    with open(path, encoding="utf-8", errors="replace") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as err:
                if first is not None:  # earlier lines parsed on their own: JSON Lines with one broken line
                    return f"line {number} ({err.msg}, column {err.colno})"
                break
            first = first or number
        else:
            return None
    try:  # the first line is no JSON value on its own: one document over several lines, or a broken line 1
        with open(path, encoding="utf-8", errors="replace") as document:
            json.load(document)
    except json.JSONDecodeError as err:
        return f"line {err.lineno} ({err.msg}, column {err.colno})"
    return None


def _parquet_rows(path: str) -> int | None:
    """The row count in a parquet file's footer (None when it is unreadable: load_dataset then says why)."""
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path).metadata.num_rows
    except (OSError, ValueError):  # pyarrow's errors derive from these
        return None


@contextlib.contextmanager
def _datasets_logging_silenced():
    verbosity = datasets_logging.get_verbosity()
    datasets_logging.set_verbosity(datasets_logging.CRITICAL)
    try:
        yield
    finally:
        datasets_logging.set_verbosity(verbosity)


def _unavailable(field: str, path: str, err: BaseException) -> ValueError:
    """A one-line error for a model path or id that from_pretrained could not use."""
    if os.path.isdir(path):
        return ValueError(f"hf.{field}: {path} cannot be loaded as a transformers model: {_first_line(err)}")
    if os.path.exists(path):
        return ValueError(f"hf.{field}: {path} is a file; expected a model directory or a Hub id")
    where = "offline mode (HF_HUB_OFFLINE=1), not in the local cache" if is_offline_mode() else _first_line(err)
    return ValueError(f"hf.{field}: {path!r} is neither a local directory nor an available Hub id ({where})")


class HFTestbed(TestbedDefaults):
    """Any Hugging Face causal LM, prompt dataset and gold RM (see the module docstring)."""

    name = "hf"
    proxy = "preference"

    def __init__(self, cfg: HFConfig, device: torch.device | str | None = None):
        """`device`: where the models go (the lab passes config `device`); None: the GPU when there is one."""
        self.cfg = cfg
        for field, what in (
            ("policy", "a model id or local path"),
            ("dataset", "a datasets id or a local .json/.jsonl/.parquet/.csv file"),
            ("gold_rm", "a sequence-classification model id or local path"),
        ):
            if not getattr(cfg, field).strip():
                raise ValueError(f"testbed hf needs hf.{field} ({what})")
        trust = cfg.trust_remote_code
        # 1. Configs only (no weights): the policy, its LoRA targets, the gold RM's head.
        policy_config = self._config("policy", cfg.policy)
        self._check_policy(policy_config)
        if cfg.lora_r:
            self._check_lora(policy_config)
        gold_config = self._config("gold_rm", cfg.gold_rm)
        self._check_gold_head(gold_config)
        # 2. Tokenizers: the policy's pads on the left with EOS when it has no pad token.
        self.tokenizer = self._tokenizer("policy", cfg.policy)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.eos_token_id is None:
            raise ValueError(f"hf.policy: the tokenizer of {cfg.policy} has no EOS token to end completions")
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if cfg.prompt_chat_template and not self.tokenizer.chat_template:
            raise ValueError(f"hf.prompt_chat_template: the tokenizer of {cfg.policy} has no chat template")
        self.gold_tokenizer = self._tokenizer("gold_rm", cfg.gold_rm)
        self.gold_tokenizer.padding_side = "right"
        if self.gold_tokenizer.pad_token_id is None:
            self.gold_tokenizer.pad_token = self.gold_tokenizer.eos_token or self.gold_tokenizer.unk_token
        # 3. Prompt texts of both splits.
        self._texts = self._prompt_texts()
        self._encoded: dict[str, dict[int, list[int] | None]] = {"train": {}, "eval": {}}
        self._prompt_of: dict[tuple[int, ...], str | list[dict]] = {}  # the gold RM reads these
        if cfg.preference_dataset and cfg.stepwise_dataset:
            raise ValueError("hf.preference_dataset and hf.stepwise_dataset: the proxy learns from one of them; "
                             "leave the other ''")  # fmt: skip
        self._preferences = self._preference_triples() if cfg.preference_dataset else None
        self._stepwise = self._stepwise_rows() if cfg.stepwise_dataset else None
        self._ends_step: dict[int, bool] = {}  # token id -> its text holds hf.step_separator
        if self._stepwise is not None:
            self.proxy = "process"  # a PRM on the user's step labels, read at every step end (Testbed.steps)
        # 4. Placement: bfloat16 autocast on a GPU (trained weights stay float32), the gold RM in bfloat16. Left
        # padding's pad queries attend to every key (overopt.models.attention): with transformers' own masks they
        # see none, and CUDA's bfloat16 attention backward then gives NaN gradients (benchmarks/RESULTS.md).
        use_pad_safe_sdpa()
        use_static_cache({"kv": None, "static": False, "static_compiled": True}[cfg.sampler])
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.device.type == "cuda":
            # SDPA's cuDNN kernel made the bf16 RL step of a 100M Llama 3x slower on an H200 (19 vs 58 completions/s,
            # its first run slowest; RESULTS.md, GPU check 2026-12-04): here shapes change every step (prompt
            # widths, rows leaving the batch at EOS). The memory-efficient and flash kernels remain.
            torch.backends.cuda.enable_cudnn_sdp(False)
        dtype = cfg.dtype if cfg.dtype != "auto" else ("bfloat16" if self.device.type == "cuda" else "float32")
        self.autocast_dtype = torch.bfloat16 if dtype == "bfloat16" else None
        self.load_kwargs = {"dtype": torch.float32, "trust_remote_code": trust}
        self.policy_path = cfg.policy
        self.max_completion_tokens = cfg.max_completion_tokens
        # 5. The gold RM's weights, last.
        self.gold_model = (
            AutoModelForSequenceClassification.from_pretrained(
                cfg.gold_rm, **{**SAFE_LOADING, "trust_remote_code": trust, "dtype": getattr(torch, dtype)}
            )
            .to(self.device)
            .eval()
        )
        if self.gold_model.config.pad_token_id is None:  # batched scoring finds each sequence's end by it
            self.gold_model.config.pad_token_id = self.gold_tokenizer.pad_token_id

    # -- checks ------------------------------------------------------------------------------
    def _config(self, field: str, path: str) -> PretrainedConfig:
        try:
            return AutoConfig.from_pretrained(path, trust_remote_code=self.cfg.trust_remote_code)
        except (OSError, ValueError) as err:
            raise _unavailable(field, path, err) from None

    def _tokenizer(self, field: str, path: str) -> PreTrainedTokenizerBase:
        try:
            return AutoTokenizer.from_pretrained(path, trust_remote_code=self.cfg.trust_remote_code)
        except (OSError, ValueError, TypeError) as err:
            raise ValueError(f"hf.{field}: no usable tokenizer in {path}: {_first_line(err)}") from None

    def _check_policy(self, config: PretrainedConfig) -> None:
        if self.cfg.trust_remote_code:
            return  # remote code brings its own classes
        kind = config.model_type
        if kind not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
            raise ValueError(f"hf.policy: {self.cfg.policy} is a {kind!r} model, which has no causal-LM class")
        if kind not in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES:
            raise ValueError(
                f"hf.policy: the proxy RM is built on the policy's backbone, and a {kind!r} model has no "
                "sequence-classification class in transformers"
            )

    def _check_lora(self, config: PretrainedConfig) -> None:
        if importlib.util.find_spec("peft") is None:
            raise ValueError("hf.lora_r > 0 needs peft: pip install 'overopt[lora]'")
        targets = [t.strip() for t in self.cfg.lora_target_modules.split(",") if t.strip()]
        if not targets:
            raise ValueError("hf.lora_target_modules: name 'all-linear' or at least one module")
        if targets == ["all-linear"]:
            return
        with torch.device("meta"):  # the module tree without allocating weights
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=self.cfg.trust_remote_code)
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        missing = [t for t in targets if t not in linear]
        if missing:
            raise ValueError(
                f"hf.lora_target_modules: {missing[0]!r} is not a linear module of {self.cfg.policy} "
                f"(linear modules: {', '.join(linear)})"
            )

    def _check_gold_head(self, config: PretrainedConfig) -> None:
        architectures = list(config.architectures or [])
        head = architectures[0] if architectures else f"{config.model_type!r} model with no declared architecture"
        if not any(a.endswith("ForSequenceClassification") for a in architectures):
            raise ValueError(
                f"hf.gold_rm: {self.cfg.gold_rm} is a {head}, not a reward model; the gold RM must be a "
                "*ForSequenceClassification model with num_labels=1"
            )
        if config.num_labels != 1:
            raise ValueError(
                f"hf.gold_rm: {self.cfg.gold_rm} is a {head} with {config.num_labels} labels; a reward model "
                "gives one score (num_labels=1)"
            )

    # -- prompts -----------------------------------------------------------------------------
    def _load_dataset(self, field: str, config_name: str) -> DatasetDict:
        """hf.<field>'s local file or Hub dataset; one line naming the field for whatever is wrong with it."""
        source, add_rows = getattr(self.cfg, field), _ADD_ROWS[field]
        suffix = Path(source).suffix.lower()
        if os.path.isfile(source) and suffix not in _LOCAL_FORMATS:
            raise ValueError(f"hf.{field}: {source} is not a .json, .jsonl, .parquet or .csv file")
        if not os.path.exists(source) and (suffix in _LOCAL_FORMATS or source.startswith(("/", ".", "~"))):
            raise ValueError(f"hf.{field}: no such file or directory: {source}")
        if os.path.isfile(source) and os.path.getsize(source) == 0:
            raise ValueError(f"hf.{field}: {source} is an empty file, so it has no rows; {add_rows}")
        if os.path.isfile(source) and suffix == ".parquet" and _parquet_rows(source) == 0:
            raise ValueError(f"hf.{field}: {source} has no rows; {add_rows}")  # datasets fails on it obscurely
        try:
            with _datasets_logging_silenced():  # its readers log a parse error before raising it; we report it
                if os.path.isfile(source):
                    return load_dataset(_LOCAL_FORMATS[suffix], data_files=source)
                return load_dataset(source, config_name or None)
        except (OSError, ValueError, DatasetsError) as err:
            cause = err.__cause__ or err  # datasets wraps a parse error in a generation error
            if "corresponds to no data" in str(cause):  # datasets' words for a split of 0 rows
                raise ValueError(f"hf.{field}: {source} has no rows; {add_rows}") from None
            where = _json_error(source) if os.path.isfile(source) and _LOCAL_FORMATS[suffix] == "json" else None
            if where:
                raise ValueError(f"hf.{field}: {source} is not valid JSON at {where}; fix or drop that line") from None
            raise ValueError(f"hf.{field}: cannot read {source}: {_first_line(cause)}") from None

    def _column(self, data: DatasetDict, split_field: str) -> list[str]:
        source, split, column = self.cfg.dataset, getattr(self.cfg, split_field), self.cfg.prompt_column
        if split not in data:
            raise ValueError(f"hf.{split_field}: {split!r} is not a split of {source} (splits: {', '.join(data)})")
        rows = data[split]
        if column not in rows.column_names:
            raise ValueError(
                f"hf.prompt_column: {column!r} is not a column of {source} (columns: {', '.join(rows.column_names)})"
            )
        if len(rows) == 0:
            raise ValueError(f"hf.dataset: split {split!r} of {source} has no rows; {_ADD_ROWS['dataset']}")
        texts = list(rows[column])
        if any(is_conversation(t) for t in texts):  # TRL's conversational prompt-only format
            return self._conversations(texts, split, source, column)
        if not any(isinstance(t, str) for t in texts) and any(t is not None for t in texts):
            kind = type(next(t for t in texts if t is not None)).__name__
            raise ValueError(
                f"hf.prompt_column: {column!r} of {source} holds {kind} values, not text; name the column that "
                f"holds the prompts (columns: {', '.join(rows.column_names)})"
            )
        for index, text in enumerate(texts):
            if isinstance(text, str) and text.strip():
                continue
            if text is None:
                problem, fix = f"has no {column!r} value (null)", "fill it or drop the row"
            elif not isinstance(text, str):
                problem = f"holds {type(text).__name__} in {column!r}, not text"
                fix = "make it a string or drop the row"
            else:
                problem = f"has an empty {column!r}" + (" (only whitespace)" if text else "")
                fix = "write the prompt or drop the row"
            raise ValueError(
                f"hf.dataset: row {index} (counting from 0) of split {split!r} of {source} {problem}; {fix}"
            )
        return texts

    def _conversations(self, rows: list, split: str, source: str, column: str) -> list[list[dict]]:
        """A column of conversations (lists of {"role", "content"} messages, TRL's conversational format):
        rendered by the policy tokenizer's chat template, with the generation prompt."""
        if not self.tokenizer.chat_template:
            raise ValueError(
                f"hf.prompt_column: {column!r} of {source} holds conversations (lists of messages), and the "
                f"tokenizer of {self.cfg.policy} has no chat template to render them"
            )
        for index, messages in enumerate(rows):
            if not is_conversation(messages) or not messages:
                raise ValueError(
                    f"hf.dataset: row {index} (counting from 0) of split {split!r} of {source} is not a list of "
                    f"{{'role', 'content'}} messages in {column!r}, as the other rows are; fix or drop the row"
                )
        return rows

    def _prompt_texts(self) -> dict[str, list[str]]:
        data = self._load_dataset("dataset", self.cfg.dataset_config)
        train = self._column(data, "train_split")
        if self.cfg.eval_split:
            return {"train": train, "eval": self._column(data, "eval_split")}
        order = np.random.default_rng(_HOLDOUT_SEED).permutation(len(train))
        n_eval = max(1, round(self.cfg.eval_fraction * len(train)))
        if n_eval >= len(train):
            raise ValueError(
                f"hf.dataset: {len(train)} prompts are too few to hold out hf.eval_fraction={self.cfg.eval_fraction}"
            )
        held_out = set(order[:n_eval].tolist())
        return {
            "train": [t for i, t in enumerate(train) if i not in held_out],
            "eval": [t for i, t in enumerate(train) if i in held_out],
        }

    def _prompt_ids(self, text: Text) -> list[int] | None:
        """Token ids of one prompt (None when longer than hf.max_prompt_tokens); the gold RM will read `text`."""
        tok = self.tokenizer
        if not isinstance(text, str):  # a conversation: its own turns, through the chat template
            rendered = tok.apply_chat_template(text, tokenize=False, add_generation_prompt=True)
            ids = tok(rendered, add_special_tokens=False)["input_ids"]
        elif self.cfg.prompt_chat_template:
            rendered = tok.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
            )
            ids = tok(rendered, add_special_tokens=False)["input_ids"]
        else:
            ids = tok(text)["input_ids"]
        if not 0 < len(ids) <= self.cfg.max_prompt_tokens:
            return None
        self._prompt_of[self._key(ids)] = text
        return ids

    def _encode(self, split: str, index: int) -> list[int] | None:
        """Token ids of one prompt of `split` (None when too long), cached."""
        cache = self._encoded[split]
        if index not in cache:
            cache[index] = self._prompt_ids(self._texts[split][index])
        return cache[index]

    def prompts(self, split: str, n: int, seed: int) -> list[list[int]]:
        """`n` prompts of `split`: shuffled passes over it (reshuffled each pass, so n may exceed its size)."""
        if split not in _SPLIT_CODES:
            raise ValueError(f"hf: unknown split {split!r} (expected 'train' or 'eval')")
        texts = self._texts[split]
        rng = np.random.default_rng([seed, _SPLIT_CODES[split]])
        out: list[list[int]] = []
        while len(out) < n:
            before = len(out)
            for index in rng.permutation(len(texts)).tolist():
                ids = self._encode(split, index)
                if ids is not None:
                    out.append(ids)
                    if len(out) == n:
                        break
            if len(out) == before:
                raise ValueError(
                    f"hf.max_prompt_tokens: every {split} prompt is longer than {self.cfg.max_prompt_tokens} tokens"
                )
        return out

    # -- the user's preference pairs (hf.preference_dataset) --------------------------------
    def _split_of(self, kind: str):
        """The split hf.<kind>_split of hf.<kind>_dataset, and how errors name it."""
        source, split = getattr(self.cfg, f"{kind}_dataset"), getattr(self.cfg, f"{kind}_split")
        data = self._load_dataset(f"{kind}_dataset", "")
        if split not in data:
            raise ValueError(f"hf.{kind}_split: {split!r} is not a split of {source} (splits: {', '.join(data)})")
        return data[split], f"hf.{kind}_dataset: split {split!r} of {source}"

    def _preference_triples(self) -> list:
        source = self.cfg.preference_dataset
        triples = preference_triples(*self._split_of("preference"))
        if not self.tokenizer.chat_template and any(isinstance(t[0], list) for t in triples):
            raise ValueError(
                f"hf.preference_dataset: {source} holds conversations, and the tokenizer of {self.cfg.policy} has "
                "no chat template to render them"
            )
        return triples

    def _completion_ids(self, prompt: Text, prompt_ids: list[int], completion: Text) -> list[int]:
        """A completion's token ids as the policy would have generated them after `prompt_ids`: a conversation's
        turns rendered after the prompt's by the chat template; a text's tokens and EOS. At most the generation
        budget (hf.max_completion_tokens), cut at its end as a sampled completion would be."""
        tok = self.tokenizer
        if isinstance(completion, list):
            rendered = tok.apply_chat_template(prompt + completion, tokenize=False)
            ids = tok(rendered, add_special_tokens=False)["input_ids"]
            if ids[: len(prompt_ids)] != prompt_ids:
                raise ValueError(
                    f"hf.preference_dataset: the chat template of {self.cfg.policy} does not render a prompt as "
                    "the beginning of prompt + answer, so the answer's tokens cannot be told apart"
                )
            ids = ids[len(prompt_ids) :]
        else:
            ids = [*tok(completion, add_special_tokens=False)["input_ids"], tok.eos_token_id]
        return ids[: self.max_completion_tokens]

    def preference_pairs(self) -> list[tuple[list[int], list[int], list[int]]] | None:
        """hf.preference_dataset's pairs as (prompt, chosen, rejected) token ids, the proxy RM's training data in
        place of the lab's gold-labelled samples; pairs whose prompt is longer than hf.max_prompt_tokens are
        left out. None without hf.preference_dataset."""
        if self._preferences is None:
            return None
        pairs = []
        for prompt, chosen, rejected in self._preferences:
            prompt_ids = self._prompt_ids(prompt)
            if prompt_ids is not None:
                pairs.append((prompt_ids, *(self._completion_ids(prompt, prompt_ids, c) for c in (chosen, rejected))))
        if not pairs:
            raise ValueError(
                f"hf.max_prompt_tokens: every prompt of hf.preference_dataset is longer than "
                f"{self.cfg.max_prompt_tokens} tokens"
            )
        return pairs

    # -- the user's step-labelled solutions (hf.stepwise_dataset): a PRM proxy -----------------
    def _stepwise_rows(self) -> list:
        return stepwise_rows(*self._split_of("stepwise"))

    def steps(self, prompt_ids: list[int], completion_ids: list[int]) -> Steps:
        """The step ends of a completion: every token whose text holds hf.step_separator, and the EOS, which ends
        the final step. There are no gold step labels on the policy's own samples (the gold is an outcome RM):
        the labels are NaN, and only the PRM's training data (hf.stepwise_dataset) carries labels."""
        positions = []
        for i, token in enumerate(completion_ids):
            if token == self.tokenizer.eos_token_id:
                positions.append(i)
                return Steps(positions, [math.nan] * len(positions), True)
            if token not in self._ends_step:
                self._ends_step[token] = self.cfg.step_separator in self.tokenizer.decode([token])
            if self._ends_step[token]:
                positions.append(i)
        return Steps(positions, [math.nan] * len(positions), False)

    def stepwise_examples(self) -> list[tuple[list[int], list[int], list[int], list[float]]] | None:
        """hf.stepwise_dataset's solutions as (prompt ids, completion ids, step-end positions, labels), the PRM's
        training data in place of the lab's gold-labelled samples. As TRL's PRM trainer builds them, each step is
        tokenized on its own and followed by the separator's tokens, except the last, which ends with EOS as a
        finished sample does; the step ends are where `steps` finds them on the policy's samples, cut at the
        generation budget. None without hf.stepwise_dataset."""
        if self._stepwise is None:
            return None
        tok, source = self.tokenizer, self.cfg.stepwise_dataset
        separator = tok(self.cfg.step_separator, add_special_tokens=False)["input_ids"]
        examples = []
        for index, (prompt, steps, labels) in enumerate(self._stepwise):
            prompt_ids = self._prompt_ids(prompt)
            if prompt_ids is None:
                continue
            ids = [t for step in steps[:-1] for t in tok(step, add_special_tokens=False)["input_ids"] + separator]
            ids += [*tok(steps[-1], add_special_tokens=False)["input_ids"], tok.eos_token_id]
            found = self.steps(prompt_ids, ids).positions
            if len(found) != len(steps):
                raise ValueError(
                    f"hf.stepwise_dataset: row {index} (counting from 0) of {source} has {len(steps)} steps, but "
                    f"{len(found)} step ends are found in its tokens (a step's text holds hf.step_separator "
                    f"{self.cfg.step_separator!r}, or the tokenizer merges it); fix the row or the separator"
                )
            ids = ids[: self.max_completion_tokens]
            kept = [p for p in found if p < len(ids)]
            if kept:
                examples.append((prompt_ids, ids, kept, [float(b) for b in labels[: len(kept)]]))
        if not examples:
            raise ValueError(
                f"hf.max_prompt_tokens: no solution of hf.stepwise_dataset has a prompt of at most "
                f"{self.cfg.max_prompt_tokens} tokens and a step end within hf.max_completion_tokens"
            )
        return examples

    def sft_corpus(self, n: int, seed: int) -> list[SFTExample]:
        raise ValueError("testbed hf: hf.policy is already the SFT policy; there is no SFT corpus")

    # -- gold reward -------------------------------------------------------------------------
    def _key(self, ids) -> tuple[int, ...]:
        """A prompt without its left padding."""
        ids, pad = list(ids), self.tokenizer.pad_token_id
        start = next((i for i, t in enumerate(ids) if t != pad), len(ids))
        return tuple(ids[start:])

    def score_texts(self, prompts: list[str], completions: list[str]) -> torch.Tensor:
        """Gold RM scores of (prompt, completion) texts: (B,) float64 on the CPU."""
        return score_texts(self.gold_model, self.gold_tokenizer, prompts, completions, self.cfg.gold_batch_size)

    def gold_reward(
        self, prompt_ids: torch.Tensor, completion_ids: torch.Tensor, completion_mask: torch.Tensor
    ) -> torch.Tensor:
        return self.gold_from_components(self.gold_components(prompt_ids, completion_ids, completion_mask))

    def gold_components(
        self, prompt_ids: torch.Tensor, completion_ids: torch.Tensor, completion_mask: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        tok = self.tokenizer
        prompts = []
        for row in prompt_ids.detach().cpu().tolist():
            key = self._key(row)
            prompts.append(self._prompt_of.get(key) or tok.decode(list(key), skip_special_tokens=True))
        ids, mask = completion_ids.detach().cpu(), completion_mask.detach().cpu()
        completions = tok.batch_decode(
            [row[m.bool()].tolist() for row, m in zip(ids, mask, strict=True)], skip_special_tokens=True
        )
        return {"gold_rm": self.score_texts(prompts, completions), "length": mask.sum(1).double()}

    def gold_from_components(self, components: dict[str, torch.Tensor]) -> torch.Tensor:
        return components["gold_rm"]

    # -- placement ---------------------------------------------------------------------------
    def precision(self) -> contextlib.AbstractContextManager:
        """bfloat16 autocast around the whole experiment when hf.dtype resolves to bfloat16.

        Without autocast's weight cache: it keeps the bfloat16 copy of every trainable weight from its first
        use until the outermost autocast region ends, which here is the end of the experiment, so forward
        passes would never see an optimizer step or a reference reset (and a resumed run, starting a new
        region, would see them: not the same run)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype, cache_enabled=False)

    def loaded_policy(self, policy: torch.nn.Module) -> torch.nn.Module:
        """Under bfloat16 autocast the LM head computes in float32 (hf.lm_head_fp32; overopt.models.head), the
        reference and every run's copy alike, so their log-ratios carry no 16-bit rounding."""
        if self.autocast_dtype is None or not self.cfg.lm_head_fp32:
            return policy
        return fp32_lm_head(policy)

    def trainable_policy(self, policy: torch.nn.Module, seed: int) -> torch.nn.Module:
        """hf.lora_r > 0: LoRA adapters on the policy, which alone train (the reference stays the SFT model)."""
        c = self.cfg
        if not c.lora_r:
            return policy
        return with_lora(policy, c.lora_r, c.lora_alpha, c.lora_dropout, c.lora_target_modules, seed)
