"""Runs trained together (overopt.batching): the stacked policy equals transformers, a run's samples do not depend
on the runs beside it, and batched runs agree with unbatched ones (first update) and with any other grouping."""

from __future__ import annotations

import json
import shutil
from functools import partial

import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

from overopt import sampling
from overopt.batching import RunGroup
from overopt.cli import main
from overopt.models.policy import position_ids_from_mask
from overopt.models.stack import PolicyStack

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB, PAD, EOS = 23, 0, 1


def _llama(seed: int, tied: bool = True, kv_heads: int = 2) -> LlamaForCausalLM:
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=40, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=64,
                         pad_token_id=PAD, eos_token_id=EOS, tie_word_embeddings=tied)  # fmt: skip
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def _prompts(seed: int, rows: int = 6, width: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompts of different lengths (one row of full width, one of a single token)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, VOCAB, (rows, width), generator=g)
    lengths = torch.randint(1, width + 1, (rows,), generator=g)
    lengths[0], lengths[-1] = width, 1
    mask = (torch.arange(width) >= width - lengths[:, None]).long()
    return ids.masked_fill(mask == 0, PAD), mask


@pytest.mark.parametrize(("tied", "kv_heads"), [(True, 2), (False, 4)], ids=["tied-gqa", "untied-mha"])
def test_the_stack_computes_each_runs_transformers_logits(tied, kv_heads):
    models = [_llama(seed, tied, kv_heads) for seed in (0, 1, 2)]
    stack = PolicyStack(models[0], len(models))
    for slot, model in enumerate(models):
        stack.load(slot, model)
    batches = [_prompts(seed) for seed in (3, 4, 5)]
    ids, mask = torch.stack([b[0] for b in batches]), torch.stack([b[1] for b in batches])
    with torch.no_grad():
        stacked = stack(ids, mask)
        for slot, model in enumerate(models):
            alone = model(input_ids=ids[slot], attention_mask=mask[slot],
                          position_ids=position_ids_from_mask(mask[slot])).logits  # fmt: skip
            real = mask[slot].bool()  # padding positions are never read
            torch.testing.assert_close(stacked[slot][real], alone[real], atol=2e-5, rtol=1e-5)


def test_the_stacks_decoder_continues_each_prompt_as_a_full_forward_does():
    models = [_llama(seed) for seed in (0, 1)]
    stack = PolicyStack(models[0], 2)
    for slot, model in enumerate(models):
        stack.load(slot, model)
    distinct = [_prompts(seed, rows=3) for seed in (6, 7)]
    copies = torch.tensor([[0, 0, 1, 2, 2, 1], [2, 1, 0, 0, 1, 2]])  # each row continues one distinct prompt
    d_ids, d_mask = torch.stack([d[0] for d in distinct]), torch.stack([d[1] for d in distinct])
    logits, step = stack.decoder(d_ids, d_mask, copies, max_new_tokens=4)
    g = torch.Generator().manual_seed(8)
    ids = torch.stack([d_ids[k][copies[k]] for k in range(2)])
    mask = torch.stack([d_mask[k][copies[k]] for k in range(2)])
    for t in range(4):
        for k, model in enumerate(models):
            with torch.no_grad():
                full = model(input_ids=ids[k], attention_mask=mask[k], position_ids=position_ids_from_mask(mask[k]))
            torch.testing.assert_close(logits[k], full.logits[:, -1], atol=2e-5, rtol=1e-5, msg=f"token {t}")
        tokens = torch.randint(2, VOCAB, (2, 6), generator=g)
        ids, mask = torch.cat([ids, tokens[..., None]], -1), torch.cat([mask, torch.ones_like(tokens)[..., None]], -1)
        logits = step(tokens)


def _sampler_job(model, prompts, seed, results, name):
    """A run in miniature: seeds its own RNG, samples twice (two hub rounds), keeps what it drew."""
    torch.manual_seed(seed)
    draws = []
    for _ in range(2):
        rollout, lp = sampling.sample_completions(model, *prompts, max_new_tokens=5, temperature=1.0, eos_id=EOS,
                                                  pad_id=PAD, with_logprobs=True)  # fmt: skip
        draws.append((rollout.completion_ids, rollout.completion_mask, lp.logprobs, lp.entropy))
    results[name] = draws


def test_a_runs_samples_do_not_depend_on_the_runs_beside_it_and_equal_its_own_sampling():
    prompts = _prompts(9, rows=8)
    prompts = (prompts[0].repeat_interleave(2, 0), prompts[1].repeat_interleave(2, 0))  # groups of 2 copies
    runs = {"a": (_llama(0), 11), "b": (_llama(1), 12), "c": (_llama(2), 13)}
    seen = {}
    for grouping in (["a"], ["a", "b"], ["c", "b", "a"]):
        results, rng = {}, torch.get_rng_state()
        RunGroup().run([partial(_sampler_job, runs[n][0], prompts, runs[n][1], results, n) for n in grouping])
        assert torch.equal(torch.get_rng_state(), rng)  # the caller's RNG is its own too
        for name, draws in results.items():
            if name in seen:  # bit for bit, whatever shares its batch
                for got, first in zip(draws, seen[name], strict=True):
                    assert all(torch.equal(x, y) for x, y in zip(got, first, strict=True)), (grouping, name)
            seen[name] = draws
    alone = {}
    for name, (model, seed) in runs.items():  # no group: transformers' own decoding
        _sampler_job(model, prompts, seed, alone, name)
        for (ids, mask, lp, ent), (ids0, mask0, lp0, ent0) in zip(seen[name], alone[name], strict=True):
            assert torch.equal(ids, ids0) and torch.equal(mask, mask0)  # the same draws (same noise)
            torch.testing.assert_close(lp, lp0, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(ent, ent0, atol=1e-5, rtol=1e-5)


def _run(tmp_path, uninterrupted, name, *extra):
    out = tmp_path / name
    shutil.copytree(uninterrupted / "artifacts", out / "artifacts")  # the shared stages: only the runs differ
    main(["run", "--preset", "smoke", "--threads", "1", "--out", str(out), *extra])
    return out


def _rows(out, method="none"):
    lines = (out / "runs" / method / "seed0" / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if "wall" not in k} for line in lines]


@pytest.mark.usefixtures("no_report")
def test_batched_and_unbatched_runs_agree_on_the_first_update(uninterrupted, tmp_path):
    outs = {on: _run(tmp_path, uninterrupted, f"batch_{on}", "--rl.steps", "1", "--batch_runs", str(on))
            for on in (True, False)}  # fmt: skip
    for method in ("none", "kl"):
        a, b = (load_file(outs[on] / "runs" / method / "seed0" / "policy.safetensors") for on in (True, False))
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-5, msg=f"{method} {key}")
        for x, y in zip(_rows(outs[True], method), _rows(outs[False], method), strict=True):
            assert x.keys() == y.keys()
            for key, value in x.items():
                if isinstance(value, float):
                    assert value == pytest.approx(y[key], rel=1e-4, abs=1e-5), (method, key)


@pytest.mark.usefixtures("no_report")
def test_the_same_command_gives_the_same_numbers_whatever_the_grouping(uninterrupted, tmp_path):
    # --jobs 2: each run alone in its own process; the reference `uninterrupted`: both runs in one group.
    out = _run(tmp_path, uninterrupted, "two_processes", "--jobs", "2", "--checkpoint_every_s", "0")
    for method in ("none", "kl"):
        assert _rows(out, method) == _rows(uninterrupted, method)
