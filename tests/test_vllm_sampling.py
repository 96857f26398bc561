"""rl.generation=vllm (overopt.vllm_sampling) against a stand-in `vllm` module: vLLM's wheels need CUDA, so what
is tested here is overopt's side of the calls — the requests and their per-row seeds, reading tokens and
log-probs back, EOS and padding, when weights are pushed, and a run end to end with the sampler correction.
The stand-in draws with the lab's own sampler from a copy of the model built from the directory or id the
engine is given, and implements only what vllm_sampling calls (LLM, SamplingParams, the model runner's
load_weights, reset_prefix_cache, RequestOutput's fields)."""

from __future__ import annotations

import copy
import json
import sys
import types
from types import SimpleNamespace
from typing import NamedTuple

import pytest
import torch
from transformers import AutoModelForCausalLM

import overopt.distributed
from overopt.models.policy import completion_logprobs
from overopt.sampling import pad_left, sample_completions


class Logprob(NamedTuple):
    logprob: float
    rank: int


class SamplingParams:
    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)


class LLM:
    """vllm.LLM as far as overopt.vllm_sampling uses it."""

    drop_stop_token = False  # as an engine that leaves the stop token out of its output
    last = None

    def __init__(self, model: str, **kwargs):
        self.kwargs = kwargs
        self.model = AutoModelForCausalLM.from_pretrained(model).eval()
        runner = SimpleNamespace(model=SimpleNamespace(load_weights=self._load_weights))
        self.llm_engine = SimpleNamespace(
            model_executor=SimpleNamespace(driver_worker=SimpleNamespace(model_runner=runner))
        )
        self.loads, self.prefix_resets, self.requests = 0, 0, []
        LLM.last = self

    def _load_weights(self, weights) -> None:
        missing, unexpected = self.model.load_state_dict(dict(weights), strict=False)
        assert not unexpected and set(missing) <= {"lm_head.weight"}  # tied to the embeddings
        self.loads += 1

    def reset_prefix_cache(self) -> None:
        self.prefix_resets += 1

    def generate(self, prompts, sampling_params, use_tqdm=True):
        outputs = []
        for prompt, sp in zip(prompts, sampling_params, strict=True):
            self.requests.append(sp)
            ids = torch.tensor([prompt["prompt_token_ids"]])
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(sp.seed)
                roll, drawn = sample_completions(self.model, ids, torch.ones_like(ids), sp.max_tokens, sp.temperature,
                                                 sp.stop_token_ids[0], 0, with_logprobs=True)  # fmt: skip
            n = int(roll.completion_mask[0].sum())
            tokens, scores = roll.completion_ids[0, :n].tolist(), drawn.logprobs[0, :n].tolist()
            finish = "stop" if tokens[-1] == sp.stop_token_ids[0] else "length"
            if finish == "stop" and self.drop_stop_token:
                tokens, scores = tokens[:-1], scores[:-1]
            logprobs = [{t: Logprob(v, 1)} for t, v in zip(tokens, scores)] if sp.logprobs is not None else None
            sample = SimpleNamespace(token_ids=tokens, logprobs=logprobs, finish_reason=finish)
            outputs.append(SimpleNamespace(prompt_token_ids=prompt["prompt_token_ids"], outputs=[sample]))
        return outputs


@pytest.fixture
def fake_vllm(monkeypatch):
    module = types.ModuleType("vllm")
    module.LLM, module.SamplingParams = LLM, SamplingParams
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setattr(LLM, "drop_stop_token", False)
    return module


def _batch(world, rows: int = 6):
    tok = world["testbed"].tokenizer
    prompts = world["testbed"].prompts("train", rows, 0)
    return (*pad_left(prompts, tok.pad_token_id), world["testbed"].max_completion_tokens, 1.0, tok.eos_token_id,
            tok.pad_token_id)  # fmt: skip


def _sampler(world, tmp_path):
    from overopt.vllm_sampling import VLLMSampler

    policy = copy.deepcopy(world["policy"])
    return policy, VLLMSampler(policy, tmp_path / "engine", 0.3, seed=0)


def test_completions_and_logprobs_come_back_as_the_labs_sampler_gives_them(tiny_world, tmp_path, fake_vllm):
    policy, sampler = _sampler(tiny_world, tmp_path)
    torch.manual_seed(0)
    rollout, sampled = sampler(policy, *_batch(tiny_world), with_logprobs=True)
    engine = LLM.last
    assert engine.kwargs["skip_tokenizer_init"] and engine.kwargs["logprobs_mode"] == "processed_logprobs"
    assert engine.kwargs["max_model_len"] == policy.config.max_position_embeddings
    assert all(sp.logprobs == 0 and sp.detokenize is False and sp.n == 1 for sp in engine.requests)
    eos = tiny_world["testbed"].tokenizer.eos_token_id
    for ids, mask in zip(rollout.completion_ids, rollout.completion_mask, strict=True):
        n = int(mask.sum())
        assert n >= 1 and (ids[: n - 1] != eos).all() and (n == len(ids) or ids[n - 1] == eos)
    trainer, _ = completion_logprobs(policy, rollout.input_ids, rollout.attention_mask, rollout.prompt_len)
    torch.testing.assert_close(sampled.logprobs, trainer * rollout.completion_mask, rtol=0, atol=1e-5)
    assert torch.isnan(sampled.entropy).all()  # vLLM reports no entropy


def test_a_rows_sample_does_not_depend_on_the_rest_of_its_batch(tiny_world, tmp_path, fake_vllm):
    policy, sampler = _sampler(tiny_world, tmp_path)
    prompt_ids, prompt_mask, *rest = _batch(tiny_world)
    torch.manual_seed(3)
    whole = sampler(policy, prompt_ids, prompt_mask, *rest, total_rows=6)
    torch.manual_seed(3)
    tail = sampler(policy, prompt_ids[4:], prompt_mask[4:], *rest, row_offset=4, total_rows=6)
    for row in range(2):
        n = int(tail.completion_mask[row].sum())
        assert torch.equal(tail.completion_ids[row, :n], whole.completion_ids[4 + row, :n])
        assert int(whole.completion_mask[4 + row].sum()) == n


def test_weights_are_pushed_when_they_changed_and_only_then(tiny_world, tmp_path, fake_vllm):
    policy, sampler = _sampler(tiny_world, tmp_path)
    batch = _batch(tiny_world)
    sampler(policy, *batch)
    sampler(policy, *batch)
    engine = LLM.last
    assert sampler.pushes == engine.loads == engine.prefix_resets == 1
    with torch.no_grad():  # as the optimiser's step writes the parameters
        for p in policy.parameters():
            p.add_(0.01)
    sampler(policy, *batch)
    assert sampler.pushes == 2
    for (name, mine), theirs in zip(policy.state_dict().items(), engine.model.state_dict().values(), strict=True):
        assert torch.equal(mine, theirs), name


def test_a_stop_token_the_engine_leaves_out_is_put_back_unscored(tiny_world, tmp_path, fake_vllm, monkeypatch):
    policy, sampler = _sampler(tiny_world, tmp_path)
    torch.manual_seed(0)
    expected, _ = sampler(policy, *_batch(tiny_world), with_logprobs=True)
    monkeypatch.setattr(LLM, "drop_stop_token", True)
    torch.manual_seed(0)
    rollout, sampled = sampler(policy, *_batch(tiny_world), with_logprobs=True)
    assert torch.equal(rollout.completion_ids, expected.completion_ids)
    assert torch.equal(rollout.completion_mask, expected.completion_mask)
    eos = tiny_world["testbed"].tokenizer.eos_token_id
    stopped = (rollout.completion_ids == eos) & rollout.completion_mask.bool()
    assert stopped.any() and torch.isnan(sampled.logprobs[stopped]).all()


def test_lora_several_processes_and_no_vllm_fail_with_one_line_errors(tiny_world, tmp_path, fake_vllm, monkeypatch):
    from overopt.vllm_sampling import VLLMSampler

    with pytest.raises(ValueError, match="LoRA"):
        VLLMSampler(SimpleNamespace(peft_config={}), tmp_path, 0.3, 0)
    monkeypatch.setattr(overopt.distributed, "world", lambda: 2)
    with pytest.raises(ValueError, match="one process"):
        VLLMSampler(tiny_world["policy"], tmp_path, 0.3, 0)
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm raises ImportError
    with pytest.raises(ImportError, match="pip install vllm"):
        VLLMSampler(tiny_world["policy"], tmp_path, 0.3, 0)


@pytest.mark.usefixtures("one_thread")
def test_a_run_draws_its_rollouts_from_the_engine_and_corrects_for_it(tmp_path, fake_vllm):
    from overopt.cli import main

    out = tmp_path / "out"
    main(["run", "--preset", "smoke", "--methods", "none", "--seeds", "1", "--rl.generation", "vllm",
          "--threads", "1", "--out", str(out)])  # fmt: skip
    engine = LLM.last
    rows = [json.loads(line) for line in (out / "runs" / "none" / "seed0" / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in rows if "sampler/weight_mean" in r]
    assert len(trained) == len(rows) - 1, "an evaluation after updates without the sampler's importance weights"
    for r in trained:  # the stand-in samples the trainer's own weights in float32: weights 1 to rounding
        assert r["sampler/weight_mean"] == pytest.approx(1.0, abs=1e-4) and r["sampler/masked_frac"] == 0
    assert engine.loads == rows[-1]["step"]  # new weights before every update's rollouts, and only then
