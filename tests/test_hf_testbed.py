"""The `hf` testbed end to end on tiny models, tokenizers and datasets built here and saved locally.

They load through the same AutoConfig / AutoTokenizer / from_pretrained / load_dataset calls a GPU
run of `--preset ocrm-tldr` takes, with the Hub switched off (HF_HUB_OFFLINE=1): a GPT-NeoX policy
(Pythia's architecture) with a byte-level BPE tokenizer, and a Llama sequence-classification gold RM
with its own tokenizer and chat template (Skywork's architecture).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForSequenceClassification,
    PreTrainedTokenizerFast,
)

from overopt.cli import main
from overopt.config import HFConfig, load_config

WORDS = "the a cat dog sat ran on under mat log red big small quick slow fox jumped over lazy home".split()
CHAT_TEMPLATE = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"


def _bpe(corpus: list[str], special: list[str]) -> Tokenizer:
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    core.train_from_iterator(corpus, trainer)
    return core


def _prompt(i: int) -> str:
    g = torch.Generator().manual_seed(i)
    words = [WORDS[j] for j in torch.randint(len(WORDS), (int(torch.randint(4, 10, (1,), generator=g)),), generator=g)]
    return "Story: " + " ".join(words) + "\nTL;DR:"


@pytest.fixture(scope="session")
def hf_world(tmp_path_factory):
    """Policy, gold RM (and two wrong gold RMs) and prompt files, saved like Hub downloads."""
    root = tmp_path_factory.mktemp("hf_world")
    prompts = [_prompt(i) for i in range(40)]
    # Policy: GPT-NeoX with a byte-level BPE tokenizer and no pad token, like Pythia.
    tok = PreTrainedTokenizerFast(
        tokenizer_object=_bpe(prompts + WORDS, ["<|endoftext|>"]), eos_token="<|endoftext|>", bos_token="<|endoftext|>"
    )
    eos = tok.eos_token_id
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        policy = GPTNeoXForCausalLM(
            GPTNeoXConfig(
                vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                intermediate_size=64, max_position_embeddings=256, bos_token_id=eos, eos_token_id=eos,
            )
        )  # fmt: skip
    policy.save_pretrained(root / "policy")
    tok.save_pretrained(root / "policy")
    # Gold RM: Llama sequence classifier, one label, its own tokenizer with a chat template.
    specials = ["<pad>", "<|user|>", "<|assistant|>", "<|end|>"]
    gold_tok = PreTrainedTokenizerFast(
        tokenizer_object=_bpe(prompts + WORDS, specials), pad_token="<pad>", eos_token="<|end|>"
    )
    gold_tok.chat_template = CHAT_TEMPLATE
    gold_config = dict(
        vocab_size=len(gold_tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=512, pad_token_id=gold_tok.pad_token_id,
    )  # fmt: skip
    for name, labels in (("gold", 1), ("gold_two_labels", 2)):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1)
            gold = LlamaForSequenceClassification(LlamaConfig(num_labels=labels, **gold_config))
        gold.save_pretrained(root / name)
        gold_tok.save_pretrained(root / name)
    # Prompts: a .jsonl file and the same rows as .parquet.
    jsonl = root / "prompts.jsonl"
    jsonl.write_text("".join(json.dumps({"prompt": p, "id": i}) + "\n" for i, p in enumerate(prompts)))
    from datasets import Dataset

    Dataset.from_dict({"text": prompts}).to_parquet(str(root / "prompts.parquet"))
    return {
        "root": root, "policy": str(root / "policy"), "gold": str(root / "gold"), "jsonl": str(jsonl),
        "parquet": str(root / "prompts.parquet"), "gold_two_labels": str(root / "gold_two_labels"),
    }  # fmt: skip


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _args(world, out, *extra):
    return [
        "run", "--testbed", "hf", "--preset", "smoke", "--out", str(out), "--hf.policy", world["policy"],
        "--hf.dataset", world["jsonl"], "--hf.gold-rm", world["gold"], *extra,
    ]  # fmt: skip


def _testbed(world, **fields):
    from overopt.testbeds.hf import HFTestbed

    return HFTestbed(HFConfig(policy=world["policy"], dataset=world["jsonl"], gold_rm=world["gold"], **fields))


def test_smoke_runs_end_to_end_on_local_models(hf_world, tmp_path):
    out = tmp_path / "out"
    main(_args(hf_world, out, "--methods", "none,kl,bon"))
    for method in ("none", "kl"):
        rows = [json.loads(line) for line in (out / "runs" / method / "seed0" / "metrics.jsonl").open()]
        assert [r["step"] for r in rows] == [0, 1, 2]
        for row in rows:
            assert {"proxy_reward", "gold_reward", "kl_sft", "gold/gold_rm", "gold/length"} <= row.keys()
            assert math.isfinite(row["gold_reward"]) and row["gold_reward"] == pytest.approx(row["gold/gold_rm"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["testbed"] == "hf" and list(summary["methods"]) == ["none", "kl", "bon"]
    # Best-of-n from the given policy, scored by the proxy RM and the gold RM (smoke: N = 16).
    bon = [json.loads(line) for line in (out / "runs" / "bon" / "seed0" / "metrics.jsonl").open()]
    assert [r["n"] for r in bon] == [1, 2, 3, 4, 6, 8, 11, 16]
    assert all(math.isfinite(r["gold_reward"]) and r["gold_reward"] == pytest.approx(r["gold/gold_rm"]) for r in bon)
    assert list((out / "artifacts" / "rm").glob("*.safetensors"))
    # The given policy is the SFT policy: recorded, not copied.
    sft = out / "artifacts" / "sft"
    assert json.loads((sft / "stage.json").read_text())["metrics"] == {"policy": hf_world["policy"]}
    assert not list(sft.glob("*.safetensors"))
    assert json.loads((out / "artifacts" / "pairs" / "stage.json").read_text())["metrics"]["n_pairs"] > 0


@pytest.mark.parametrize(
    "extra, names",
    [
        (["--hf.policy", "/nonexistent/pythia"], ["hf.policy", "neither a local directory nor an available Hub id"]),
        (["--hf.prompt-column", "query"], ["hf.prompt_column", "'query'", "columns: prompt, id"]),
        ("causal-gold", ["hf.gold_rm", "GPTNeoXForCausalLM", "num_labels=1"]),
    ],
    ids=["bad-model-path", "missing-column", "gold-with-lm-head"],
)
def test_bad_input_is_one_line_naming_the_problem(hf_world, tmp_path, extra, names, capsys):
    if extra == "causal-gold":
        extra = ["--hf.gold-rm", hf_world["policy"]]
    out = tmp_path / "never"
    with pytest.raises(SystemExit) as exit_info:  # in-process (the entry point's own test: test_pipeline.py)
        main(_args(hf_world, out, *extra))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("overopt: error: "), err
    assert all(name in lines[0] for name in names), lines[0]
    assert not out.exists()  # nothing was written


def _jsonl(*rows) -> str:
    return "".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows)


def _header_only_csv(path):
    path.write_text("prompt,id\n")


def _zero_row_parquet(path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"prompt": pa.array([], pa.string())}), str(path))


GOOD = [{"prompt": f"Story: the cat sat {i}\nTL;DR:"} for i in range(3)]


@pytest.mark.parametrize(
    "name, content, names",
    [
        ("p.jsonl", _jsonl(*GOOD, {"id": 7}, *GOOD), ["row 3 ", "split 'train'", "no 'prompt' value (null)"]),
        ("p.jsonl", _jsonl(*GOOD, *GOOD, {"prompt": None}), ["row 6 ", "no 'prompt' value (null)", "drop the row"]),
        ("p.jsonl", _jsonl(*GOOD, {"prompt": 42}), ["row 3 ", "holds int in 'prompt', not text"]),
        ("p.jsonl", _jsonl(GOOD[0], {"prompt": " \n "}, *GOOD), ["row 1 ", "empty 'prompt' (only whitespace)"]),
        ("p.jsonl", _jsonl(GOOD[0], {"prompt": ""}), ["row 1 ", "empty 'prompt'"]),
        ("p.jsonl", _jsonl(*GOOD[:2], '{"prompt": "cut off', *GOOD), ["not valid JSON at line 3"]),
        ("p.jsonl", _jsonl({"prompt": 1}, {"prompt": 2}), ["hf.prompt_column", "holds int values, not text"]),
        ("p.jsonl", "", ["empty file", "no rows"]),
        ("p.jsonl", "\n  \n\n", ["has no rows"]),
        ("p.csv", _header_only_csv, ["has no rows"]),
        ("p.parquet", _zero_row_parquet, ["has no rows"]),
    ],
    ids=[
        "missing-key", "null", "int", "whitespace", "empty-string", "broken-line", "int-column", "empty-file",
        "blank-lines", "header-only-csv", "zero-row-parquet",
    ],
)  # fmt: skip
def test_malformed_dataset_is_one_line_naming_file_and_row(hf_world, tmp_path, capsys, name, content, names):
    path = tmp_path / name
    content(path) if callable(content) else path.write_text(content)
    out = tmp_path / "never"
    with pytest.raises(SystemExit) as exit_:
        main(_args(hf_world, out, "--hf.dataset", str(path)))
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("overopt: error: hf.") and str(path) in lines[0], err
    assert all(n in lines[0] for n in names), lines[0]
    assert not out.exists()


def test_other_bad_inputs_name_their_field(hf_world):
    with pytest.raises(ValueError, match=r"^testbed hf needs hf.gold_rm"):
        _testbed(hf_world | {"gold": ""})
    with pytest.raises(ValueError, match=r"hf.gold_rm: .* with 2 labels"):
        _testbed(hf_world | {"gold": hf_world["gold_two_labels"]})
    with pytest.raises(ValueError, match=r"hf.train_split: 'nope' is not a split .*splits: train"):
        _testbed(hf_world, train_split="nope")
    with pytest.raises(ValueError, match=r"hf.prompt_chat_template: .* has no chat template"):
        _testbed(hf_world, prompt_chat_template=True)
    with pytest.raises(ValueError, match=r"hf.dataset: no such file"):
        _testbed(hf_world | {"jsonl": str(hf_world["root"] / "missing.jsonl")})
    with pytest.raises(ValueError, match=r"hf.lora_target_modules: 'nope' is not a linear module .*query_key_value"):
        _testbed(hf_world, lora_r=4, lora_target_modules="nope")


def test_gold_reward_scores_the_gold_chat_template(hf_world):
    from overopt.sampling import pad_left, pad_right

    testbed = _testbed(hf_world, gold_batch_size=4)
    tok, gold_tok = testbed.tokenizer, testbed.gold_tokenizer
    prompts = testbed.prompts("eval", 2, seed=0)
    prompt_texts = [tok.decode(p) for p in prompts]
    assert all(t in testbed._texts["eval"] for t in prompt_texts)
    completions = [" the cat sat on the mat", " a dog ran", " red fox"]
    rows = [(p, c) for p in range(2) for c in completions]  # 6 rows of different lengths, 2 gold batches
    prompt_ids, _ = pad_left([prompts[p] for p, _ in rows], tok.pad_token_id)
    completion_ids, mask = pad_right([tok(c)["input_ids"] + [tok.eos_token_id] for _, c in rows], tok.pad_token_id)
    scores = testbed.gold_reward(prompt_ids, completion_ids, mask)
    assert scores.dtype == torch.float64 and scores.shape == (6,)
    by_hand = []
    for p, c in rows:
        text = f"<|user|>{prompt_texts[p]}<|end|><|assistant|>{c}<|end|>"  # CHAT_TEMPLATE written out
        ids = gold_tok(text, add_special_tokens=False, return_tensors="pt").to(testbed.gold_model.device)
        with torch.no_grad():
            by_hand.append(testbed.gold_model(**ids).logits[0, 0].double().item())
    # On a GPU the gold RM runs in bfloat16 (hf.dtype auto), where padding changes the last bits.
    tol = 1e-5 if testbed.gold_model.dtype == torch.float32 else 2e-2
    torch.testing.assert_close(scores, torch.tensor(by_hand, dtype=torch.float64), rtol=tol, atol=tol)
    components = testbed.gold_components(prompt_ids, completion_ids, mask)
    assert torch.equal(components["gold_rm"], scores)
    assert components["length"].tolist() == mask.sum(1).double().tolist()
    gold_tok.chat_template = None  # without a template the gold RM reads prompt + completion as they are
    assert not torch.allclose(testbed.score_texts(prompt_texts[:1], completions[:1]), scores[:1])


def test_parquet_prompts_hold_out_a_share_of_train(hf_world):
    testbed = _testbed(hf_world | {"jsonl": hf_world["parquet"]}, prompt_column="text", eval_fraction=0.25)
    train, held_out = testbed._texts["train"], testbed._texts["eval"]
    assert len(held_out) == 10 and len(train) == 30 and not set(train) & set(held_out)
    tok = testbed.tokenizer
    assert tok.padding_side == "left" and tok.pad_token_id == tok.eos_token_id
    prompts = testbed.prompts("train", 70, seed=3)  # more than the split: shuffled passes over it
    assert len(prompts) == 70 and {tok.decode(p) for p in prompts} == set(train)
    assert prompts == testbed.prompts("train", 70, seed=3) and prompts != testbed.prompts("train", 70, seed=4)
    limit = sorted(len(p) for p in prompts)[35]
    short = _testbed(hf_world, max_prompt_tokens=limit).prompts("train", 50, seed=0)
    assert len(short) == 50 and max(len(p) for p in short) <= limit


def test_device_cpu_keeps_the_models_on_the_cpu_beside_a_gpu(hf_world, monkeypatch):
    """Config `device` reaches the hf testbed: cpu on a GPU machine (one pretended here) loads nothing onto it."""
    from overopt.config import ExperimentConfig
    from overopt.testbeds import make_testbed

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    fields = {"policy": hf_world["policy"], "dataset": hf_world["jsonl"], "gold_rm": hf_world["gold"]}
    testbed = make_testbed(ExperimentConfig(testbed="hf", device="cpu", hf=HFConfig(**fields)))
    assert testbed.device == torch.device("cpu") and testbed.autocast_dtype is None  # float32 on the CPU
    assert next(testbed.gold_model.parameters()).device == torch.device("cpu")


def test_named_presets_are_hf_and_validate():
    ocrm, gr = load_config("ocrm-tldr"), load_config("gr-alpaca")
    assert ocrm.testbed == gr.testbed == "hf"
    assert (ocrm.hf.max_completion_tokens, ocrm.rl.algo, ocrm.rl.kl.coef, ocrm.ocrm.beta_w) == (53, "ppo", 0.05, 0.001)
    assert ocrm.hf.gold_rm == gr.hf.gold_rm == "Skywork/Skywork-Reward-Llama-3.1-8B-v0.2"
    assert (gr.hf.max_completion_tokens, gr.rl.group_size, gr.rl.lr) == (106, 8, 5e-6)
    assert (gr.gr.gamma, gr.gr.eps, gr.rl.kl.coef) == (1e-2, 1e-3, 0.1)
    assert "gr" in gr.method_list and "ocrm+kl" in ocrm.method_list


def test_lora_policy_trains_only_adapters_and_resets_through_merged_weights(hf_world):
    pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    from overopt.mitigations.reference import ReferenceReset
    from overopt.models.policy import with_lora

    base = AutoModelForCausalLM.from_pretrained(hf_world["policy"])
    policy = with_lora(AutoModelForCausalLM.from_pretrained(hf_world["policy"]), 4, 8, 0.0, "all-linear", seed=0)
    trainable = [n for n, p in policy.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.fill_(0.01)
    ReferenceReset(every=1, alpha=1.0)(1, policy, base)
    ids = torch.tensor([[1, 2, 3, 4]])
    torch.testing.assert_close(base(ids).logits, policy(ids).logits)


def test_lora_smoke_with_bfloat16_autocast(hf_world, tmp_path):
    pytest.importorskip("peft")
    out = tmp_path / "out"
    extra = ["--hf.lora-r", "4", "--hf.dtype", "bfloat16", "--methods", "ref_reset", "--ref-reset.every", "1"]
    main(_args(hf_world, out, *extra))
    rows = [json.loads(line) for line in (out / "runs" / "ref_reset" / "seed0" / "metrics.jsonl").open()]
    assert [r["step"] for r in rows] == [0, 1, 2] and all(math.isfinite(r["gold_reward"]) for r in rows)
    assert rows[-1]["ref_reset/count"] == 2
    # kl_sft is a sampled k1 estimate, of either sign; it is exactly 0 when the forward passes miss the
    # adapters' updates (a stale autocast weight cache).
    assert rows[1]["kl_sft"] != 0


def test_bfloat16_precision_sees_in_place_weight_updates(hf_world):
    testbed = _testbed(hf_world, dtype="bfloat16")
    layer, x = torch.nn.Linear(4, 4).to(testbed.device), torch.randn(2, 4, device=testbed.device)  # autocast's device
    with testbed.precision():
        before = layer(x)
        assert before.dtype == torch.bfloat16
        with torch.no_grad():
            layer.weight.add_(1.0)  # an optimizer step, a reference reset, a checkpoint load
        assert not torch.equal(layer(x), before)


@pytest.mark.parametrize(("fields", "dtype"), [({"dtype": "bfloat16"}, torch.float32),
                                              ({"dtype": "bfloat16", "lm_head_fp32": False}, torch.bfloat16),
                                              ({"dtype": "float32"}, torch.float32)])  # fmt: skip
def test_loaded_policy_computes_its_head_in_float32_under_bfloat16(hf_world, fields, dtype):
    from transformers import AutoModelForCausalLM

    testbed = _testbed(hf_world, **fields)
    policy = testbed.loaded_policy(AutoModelForCausalLM.from_pretrained(hf_world["policy"]).to(testbed.device))
    ids = torch.tensor([[5, 6, 7, 8]], device=testbed.device)
    with torch.no_grad(), testbed.precision():
        assert policy(ids).logits.dtype == dtype


def test_prompt_chat_template_wraps_prompts_but_the_gold_reads_the_raw_prompt(hf_world, tmp_path):
    import shutil

    from overopt.sampling import pad_left, pad_right

    policy_dir = tmp_path / "chat_policy"
    shutil.copytree(hf_world["policy"], policy_dir)
    config = json.loads((policy_dir / "tokenizer_config.json").read_text())
    config["chat_template"] = "{% for m in messages %}USER: {{ m['content'] }}\n{% endfor %}ASSISTANT:"
    (policy_dir / "tokenizer_config.json").write_text(json.dumps(config))
    testbed = _testbed(hf_world | {"policy": str(policy_dir)}, prompt_chat_template=True)
    tok = testbed.tokenizer
    prompts = testbed.prompts("eval", 2, seed=0)
    texts = [tok.decode(p) for p in prompts]
    assert all(t.startswith("USER: Story: ") and t.endswith("\nASSISTANT:") for t in texts)
    raw = [t.removeprefix("USER: ").removesuffix("\nASSISTANT:") for t in texts]
    completion_ids, mask = pad_right([tok(" a dog ran")["input_ids"] + [tok.eos_token_id]] * 2, tok.pad_token_id)
    scores = testbed.gold_reward(pad_left(prompts, tok.pad_token_id)[0], completion_ids, mask)
    torch.testing.assert_close(scores, testbed.score_texts(raw, [" a dog ran"] * 2))


def test_conversational_prompts_render_with_the_chat_template_and_reach_the_gold_as_turns(hf_world, tmp_path):
    """TRL's conversational prompt-only format: a column of message lists, rendered by the policy's chat template;
    the gold RM reads the conversation with those turns and the completion as the assistant's."""
    import shutil

    from overopt.sampling import pad_left, pad_right

    policy_dir = tmp_path / "chat_policy"
    shutil.copytree(hf_world["policy"], policy_dir)
    config = json.loads((policy_dir / "tokenizer_config.json").read_text())
    config["chat_template"] = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"
    (policy_dir / "tokenizer_config.json").write_text(json.dumps(config))
    data = tmp_path / "conversations.jsonl"
    turns = [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"Story {i}: a dog ran"}]
             for i in range(12)]  # fmt: skip
    data.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in turns))
    testbed = _testbed(hf_world | {"policy": str(policy_dir), "jsonl": str(data)})
    tok = testbed.tokenizer
    prompts = testbed.prompts("train", 3, seed=0)
    texts = [tok.decode(p) for p in prompts]
    assert all(t.startswith("system: Be brief.\nuser: Story ") and t.endswith("\nassistant:") for t in texts)
    completion_ids, mask = pad_right([tok(" it sat")["input_ids"] + [tok.eos_token_id]] * 3, tok.pad_token_id)
    scores = testbed.gold_reward(pad_left(prompts, tok.pad_token_id)[0], completion_ids, mask)
    story = [int(t.split("Story ")[1].split(":")[0]) for t in texts]
    torch.testing.assert_close(scores, testbed.score_texts([turns[i] for i in story], [" it sat"] * 3))
    # Without a chat template the conversations cannot be rendered: one line naming the column.
    with pytest.raises(ValueError, match="holds conversations .* has no chat template"):
        _testbed(hf_world | {"jsonl": str(data)})


@pytest.mark.slow
def test_lora_run_killed_mid_rl_resumes_bit_for_bit(hf_world, tmp_path):
    """A SIGKILL inside an RL run under LoRA and bfloat16 autocast (after step 1's checkpoint, in step 2)
    resumes into the same OUT and reproduces the uninterrupted run: metrics, samples and the final
    adapters, bit for bit. ref_reset moves the reference to the merged weights every step."""
    pytest.importorskip("peft")
    from safetensors.torch import load_file

    lora = ["--hf.lora-r", "4", "--hf.dtype", "bfloat16", "--methods", "ref_reset+kl", "--ref-reset.every", "1"]

    started = []

    def overopt(out, kill_at=None):
        env = {k: v for k, v in os.environ.items() if k != "OVEROPT_KILL_AT"} | {"HF_HUB_OFFLINE": "1"}
        if kill_at:
            env["OVEROPT_KILL_AT"] = kill_at
        argv = _args(hf_world, out, *lora, "--threads", "1", "--checkpoint_every_s", "0")
        log = open(tmp_path / f"stderr{len(started)}.txt", "w+")  # a file: a full pipe would block the run
        started.append(
            (subprocess.Popen([sys.executable, "-m", "overopt", *argv], env=env, stderr=log, stdout=log), log)
        )
        return started[-1]

    def finish(run):
        proc, log = run
        code = proc.wait(timeout=300)
        log.seek(0)
        return code, log.read()[-2000:]

    expected, got = tmp_path / "uninterrupted", tmp_path / "resumed"
    try:
        reference = overopt(expected)  # alongside the killed run: each takes one thread
        code, err = finish(overopt(got, kill_at="rl ref_reset+kl seed0:2"))
        assert code == -9, err
        assert [p.name for p in got.glob("checkpoints/runs/ref_reset+kl/seed0/step-*")] == ["step-000000001"]
        resumed = overopt(got)
        for run in (reference, resumed):
            code, err = finish(run)
            assert code == 0, err
    finally:
        for proc, log in started:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()

    def metrics(out, run):
        return [{k: v for k, v in json.loads(line).items() if "wall" not in k} for line in (out / run).open()]

    runs = sorted(p.relative_to(expected) for p in expected.glob("runs/*/seed*"))
    assert [str(r) for r in runs] == ["runs/ref_reset+kl/seed0"]
    for run in runs:
        assert metrics(expected, run / "metrics.jsonl") == metrics(got, run / "metrics.jsonl"), run
        assert (expected / run / "samples.jsonl").read_text() == (got / run / "samples.jsonl").read_text(), run
        a, b = load_file(expected / run / "policy.safetensors"), load_file(got / run / "policy.safetensors")
        assert a and a.keys() == b.keys() and all("lora_" in k for k in a), run
        assert any(a[k].any() for k in a if "lora_B" in k)  # the adapters trained (B starts at zero)
        assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    assert not (got / "checkpoints").exists()


def test_left_padded_prompts_hand_attention_no_fully_masked_row(hf_world, monkeypatch):
    """The bfloat16 failure of the GPU check (benchmarks/RESULTS.md): with transformers' own masks a left-padded
    prompt's pad queries attend to no key, and on CUDA the bfloat16 attention backward through the prefix cache
    then gives NaN gradients. Every forward pass of the hf testbed's policy must hand SDPA no such row."""
    from transformers import AutoModelForCausalLM

    from overopt.models.attention import pad_safe_sdpa
    from overopt.models.policy import completion_logprobs

    fully_masked = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kwargs):
        if attn_mask is not None:
            fully_masked.append(bool((~attn_mask.any(-1)).any()))
        return sdpa(q, k, v, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    with pad_safe_sdpa(False):  # transformers' masks until the testbed is built; restored after the test
        testbed = _testbed(hf_world)
        policy = AutoModelForCausalLM.from_pretrained(hf_world["policy"])
        prompts = testbed.prompts("train", 6, seed=0)
        width = max(map(len, prompts))
        assert min(map(len, prompts)) < width  # left padding in the batch
        pad = testbed.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        g = torch.Generator().manual_seed(0)
        completion = torch.randint(0, len(testbed.tokenizer), (len(prompts), 5), generator=g)
        full, full_mask = torch.cat([ids, completion], 1), torch.cat([mask, torch.ones_like(completion)], 1)
        for share_prefix in (False, True):
            logprobs, _ = completion_logprobs(policy, full, full_mask, width, share_prefix=share_prefix)
            logprobs.sum().backward()
    assert fully_masked and not any(fully_masked)


def test_static_cache_sampler_runs_the_same_experiment(hf_world, tmp_path):
    """hf.sampler static: the same draws as the growing KV cache, so the same figures to float rounding."""
    figures = {}
    for sampler in ("kv", "static"):
        out = tmp_path / sampler
        main(_args(hf_world, out, "--methods", "none", "--hf.sampler", sampler))
        rows = [json.loads(line) for line in (out / "runs" / "none" / "seed0" / "metrics.jsonl").open()]
        figures[sampler] = [(r["step"], r["gold_reward"], r["proxy_reward"], r["kl_sft"]) for r in rows]
    assert len(figures["static"]) == 3
    for kv, static in zip(figures["kv"], figures["static"], strict=True):
        assert static == pytest.approx(kv, rel=1e-4, abs=1e-6)


def _tiny_qwen2(world, root):
    """A Qwen2 causal LM (gr-alpaca's policy architecture) at tiny size, with the world's policy tokenizer."""
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tok = AutoTokenizer.from_pretrained(world["policy"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(2)
        model = Qwen2ForCausalLM(Qwen2Config(
            vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
            num_key_value_heads=1, max_position_embeddings=256, bos_token_id=tok.eos_token_id,
            eos_token_id=tok.eos_token_id, tie_word_embeddings=True,
        ))  # fmt: skip
    model.save_pretrained(root)
    tok.save_pretrained(root)
    return str(root)


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["ocrm-tldr", "gr-alpaca"])
def test_paper_presets_run_end_to_end_on_tiny_models_of_their_architectures(hf_world, tmp_path, preset):
    """The named presets' whole protocol (OCRM: PPO with a value model, the RM refit between phases; GR: Dr.GRPO
    and gradient regularization), on local models of the published architectures (GPT-NeoX like Pythia, Qwen2
    like Qwen2.5, a Llama sequence classifier like Skywork) with every size cut down."""
    policy = hf_world["policy"] if preset == "ocrm-tldr" else _tiny_qwen2(hf_world, tmp_path / "qwen2")
    out = tmp_path / "out"
    main([
        "run", "--preset", preset, "--out", str(out), "--hf.policy", policy, "--hf.dataset", hf_world["jsonl"],
        "--hf.gold-rm", hf_world["gold"], "--hf.prompt-column", "prompt", "--hf.eval-split", "",
        "--hf.max-prompt-tokens", "64", "--hf.max-completion-tokens", "6", "--hf.gold-batch-size", "16",
        "--pairs.n-prompts", "32", "--rm.batch-size", "8", "--rl.steps", "2", "--rl.prompts-per-step", "2",
        "--eval.every", "1", "--eval.n-prompts", "4", "--threads", "1",
    ])  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    methods = {"ocrm-tldr": ["kl", "ocrm+kl"], "gr-alpaca": ["kl", "gr"]}[preset]
    assert list(summary["methods"]) == methods
    for method in methods:
        rows = [json.loads(line) for line in (out / "runs" / method / "seed0" / "metrics.jsonl").open()]
        assert rows[-1]["step"] == 2 and all(math.isfinite(r["gold_reward"]) for r in rows)


def _preference_file(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_preference_pairs_tokenize_as_the_policy_would_have_generated_them(hf_world, tmp_path):
    """hf.preference_dataset: a text prompt's completions are their tokens and EOS, cut at the generation
    budget; a conversation's are the chat template's rendering after the prompt's; the gold reads the prompt."""
    import shutil

    rows = [{"prompt": f"the cat {i}", "chosen": " sat on the mat", "rejected": " ran"} for i in range(3)]
    testbed = _testbed(hf_world, preference_dataset=_preference_file(tmp_path / "p.jsonl", rows),
                       max_completion_tokens=4)  # fmt: skip
    tok = testbed.tokenizer
    pairs = testbed.preference_pairs()
    assert [p for p, _, _ in pairs] == [tok(f"the cat {i}")["input_ids"] for i in range(3)]
    chosen = [*tok(" sat on the mat", add_special_tokens=False)["input_ids"], tok.eos_token_id]
    assert len(chosen) > 4 and all(c == chosen[:4] for _, c, _ in pairs)  # cut at the budget, as sampling is
    assert all(r == [*tok(" ran", add_special_tokens=False)["input_ids"], tok.eos_token_id] for _, _, r in pairs)
    assert _testbed(hf_world).preference_pairs() is None
    # Conversational: the answer's tokens are what the chat template renders after the prompt's.
    policy_dir = tmp_path / "chat_policy"
    shutil.copytree(hf_world["policy"], policy_dir)
    config = json.loads((policy_dir / "tokenizer_config.json").read_text())
    config["chat_template"] = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                               "{% if add_generation_prompt %}assistant:{% endif %}")  # fmt: skip
    (policy_dir / "tokenizer_config.json").write_text(json.dumps(config))
    turns = [{"chosen": [{"role": "user", "content": "a dog"}, {"role": "assistant", "content": "ran"}],
              "rejected": [{"role": "user", "content": "a dog"}, {"role": "assistant", "content": "sat"}]}]  # fmt: skip
    chat = _testbed(hf_world | {"policy": str(policy_dir)},
                    preference_dataset=_preference_file(tmp_path / "c.jsonl", turns))  # fmt: skip
    ((prompt, chosen, rejected),) = chat.preference_pairs()
    tok = chat.tokenizer
    assert tok.decode(prompt) == "user: a dog\nassistant:"
    assert tok.decode(chosen) == " ran\n" and tok.decode(rejected) == " sat\n"
    with pytest.raises(ValueError, match="hf.preference_split: 'test' is not a split"):
        _testbed(hf_world, preference_dataset=str(tmp_path / "p.jsonl"), preference_split="test")
    with pytest.raises(ValueError, match="hf.preference_dataset: .* has no 'chosen' column"):
        _testbed(hf_world, preference_dataset=hf_world["jsonl"])


def test_a_run_trains_its_proxy_on_the_given_preference_pairs(hf_world, tmp_path):
    """The proxy RM learns the dataset's pairs, gold-scored, their labels as given."""
    from datasets import load_from_disk

    rows = [{"prompt": f"the cat {i}", "chosen": " sat on the mat", "rejected": " ran under a log"} for i in range(40)]
    data = _preference_file(tmp_path / "prefs.jsonl", rows)
    out = tmp_path / "out"
    main(_args(hf_world, out, "--methods", "none", "--hf.preference-dataset", data))
    pairs = load_from_disk(str(out / "artifacts" / "pairs" / "data"))
    assert len(pairs["train"]) + len(pairs["test"]) == 40
    testbed = _testbed(hf_world)
    tok = testbed.tokenizer
    decoded = {tok.decode(row["chosen_ids"], skip_special_tokens=True) for row in pairs["train"]}
    assert decoded == {" sat on the mat"}
    by_hand = testbed.score_texts(["the cat 0"], [" sat on the mat"]).item()
    (gold,) = [row["gold_chosen"] for split in pairs.values() for row in split
               if tok.decode(row["prompt_ids"]) == "the cat 0"]  # fmt: skip
    assert gold == pytest.approx(by_hand, abs=1e-5)
    stats = json.loads((out / "artifacts" / "pairs" / "stage.json").read_text())["metrics"]
    assert stats["n_pairs"] == 40 and 0.0 <= stats["label_agrees_with_gold"] <= 1.0
    assert list((out / "artifacts" / "rm").glob("*.safetensors"))


def _stepwise_file(path, n=24):
    rows = [{"prompt": f"the cat {i}", "completions": ["a dog sat", "on the mat", "the end"],
             "labels": [i % 2 == 0, True, i % 3 == 0]} for i in range(n)]  # fmt: skip
    return _preference_file(path, rows)


def test_stepwise_examples_end_steps_where_the_policy_samples_are_split(hf_world, tmp_path):
    """hf.stepwise_dataset: steps tokenized one by one with the separator's tokens between them (TRL's PRM
    trainer) and EOS after the last; the step ends are where `steps` finds them on a sampled completion."""
    testbed = _testbed(hf_world, stepwise_dataset=_stepwise_file(tmp_path / "s.jsonl"))
    assert testbed.proxy == "process" and _testbed(hf_world).proxy == "preference"
    tok = testbed.tokenizer
    prompt, ids, positions, labels = testbed.stepwise_examples()[1]
    assert prompt == tok("the cat 1")["input_ids"] and labels == [0.0, 1.0, 0.0]
    assert tok.decode(ids) == "a dog sat\non the mat\nthe end" + tok.eos_token
    assert [tok.decode(ids[p]) for p in positions] == ["\n", "\n", tok.eos_token] and positions[-1] == len(ids) - 1
    steps = testbed.steps(prompt, ids)
    assert steps.positions == positions and steps.final and all(math.isnan(x) for x in steps.labels)
    unfinished = testbed.steps(prompt, ids[:-1])  # out of budget before its EOS: no final step
    assert unfinished.positions == positions[:-1] and not unfinished.final
    # Cut at the generation budget: the steps that end within it keep their labels.
    short = _testbed(hf_world, stepwise_dataset=str(tmp_path / "s.jsonl"), max_completion_tokens=positions[1] + 1)
    assert short.stepwise_examples()[1][2:] == (positions[:2], [0.0, 1.0])
    with pytest.raises(ValueError, match="learns from one of them"):
        _testbed(hf_world, stepwise_dataset=str(tmp_path / "s.jsonl"), preference_dataset=str(tmp_path / "s.jsonl"))
    bad = _preference_file(tmp_path / "bad.jsonl", [{"prompt": "p", "completions": ["a\nb", "c"], "labels": [1, 0]}])
    with pytest.raises(ValueError, match="labels is not a list of true/false"):
        _testbed(hf_world, stepwise_dataset=bad)
    merged = _preference_file(tmp_path / "merged.jsonl",
                              [{"prompt": "p", "completions": ["a\nb", "c"], "labels": [True, False]}])  # fmt: skip
    with pytest.raises(ValueError, match="row 0 .* has 2 steps, but 3 step ends"):
        _testbed(hf_world, stepwise_dataset=merged).stepwise_examples()


def test_a_run_trains_a_prm_on_the_given_steps_and_aggregates_its_step_rewards(hf_world, tmp_path):
    from datasets import load_from_disk

    out = tmp_path / "out"
    data = _stepwise_file(tmp_path / "s.jsonl", n=40)
    main(_args(hf_world, out, "--methods", "none", "--hf.stepwise-dataset", data, "--hf.max-completion-tokens", "32",
               "--sweep", "rl.aggregation=sum,min"))  # fmt: skip
    answers = load_from_disk(str(out / "artifacts" / "prm_data" / "data"))
    assert len(answers["train"]) + len(answers["test"]) == 40
    stats = json.loads((out / "artifacts" / "prm_data" / "stage.json").read_text())["metrics"]
    assert stats["n_steps"] == 120 and 0 < stats["right_fraction"] < 1
    assert list((out / "artifacts" / "rm").glob("*.safetensors"))
    for name in ("none@rl.aggregation=sum", "none@rl.aggregation=min"):
        rows = [json.loads(line) for line in (out / "runs" / name / "seed0" / "metrics.jsonl").open()]
        assert all(math.isfinite(r["proxy_reward"]) and math.isfinite(r["gold_reward"]) for r in rows)
