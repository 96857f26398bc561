"""Tests for the `summarize` testbed: gold reward, prompts, tokenizer and SFT corpus.

The gold reward is checked against a per-example Python reimplementation of the module docstring's
formula; fact tokens are recognised there from their *strings* ("f00".."fNN"), not from the
testbed's internal id offset.
"""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from transformers import AutoTokenizer

from overopt.sampling import pad_left, pad_right
from overopt.testbeds.summarize import EOS, FILLER_WORDS, SEP, SummarizeSpec, SummarizeTestbed

ATOL = 1e-12  # float64 sums of <= 40 saliences: rounding is ~1e-15

# A second world with different knobs, so a test passing by luck on the defaults (e.g. a
# hard-coded budget or penalty) would fail here. The budget of 3 makes the length term bite often.
SMALL_SPEC = SummarizeSpec(
    n_fact_types=12,
    doc_facts=4,
    length_budget=3,
    max_completion_tokens=10,
    hallucination_penalty=0.5,
    repetition_penalty=0.3,
    length_penalty=0.1,
    world_seed=7,
)


@pytest.fixture(scope="module", params=["default", "small"])
def testbed(request):
    return SummarizeTestbed() if request.param == "default" else SummarizeTestbed(SMALL_SPEC)


@pytest.fixture(scope="module")
def default_testbed():
    return SummarizeTestbed()


# -- an independent reference for r* -----------------------------------------------------------------
def _fact_index(tb: SummarizeTestbed, token_id: int) -> int | None:
    """Fact type of a token id via its string "fNN", else None."""
    s = tb.tokenizer.convert_ids_to_tokens(int(token_id))
    if len(s) == 3 and s[0] == "f" and s[1:].isdigit() and int(s[1:]) < tb.spec.n_fact_types:
        return int(s[1:])
    return None


def ref_components(tb, prompt: list[int], completion: list[int], mask: list[int]) -> dict[str, float]:
    eos = tb.tokenizer.convert_tokens_to_ids(EOS)
    sal = tb.salience.tolist()
    doc = {f for f in (_fact_index(tb, t) for t in prompt) if f is not None}
    summary = [t for t, m in zip(completion, mask) if m and t != eos]  # |y| without EOS
    counts = Counter(f for f in (_fact_index(tb, t) for t in summary) if f is not None)
    best_within_budget = math.fsum(sorted((sal[f] for f in doc), reverse=True)[: tb.spec.length_budget])
    coverage = min(1.0, math.fsum(sal[f] for f in doc if counts[f] > 0) / best_within_budget)
    hallucinated = sum(c for f, c in counts.items() if f not in doc)
    repeated = sum(max(0, counts[f] - 1) for f in doc)
    return {
        "coverage": coverage,
        "hallucinated": float(hallucinated),
        "repeated": float(repeated),
        "length": float(len(summary)),
        "excess_length": float(max(0, len(summary) - tb.spec.length_budget)),
    }


def ref_gold(tb, prompt, completion, mask) -> float:
    c, s = ref_components(tb, prompt, completion, mask), tb.spec
    return (
        c["coverage"]
        - s.hallucination_penalty * c["hallucinated"]
        - s.repetition_penalty * c["repeated"]
        - s.length_penalty * c["excess_length"]
    )


def _check_against_reference(tb, prompts, completions, masks=None):
    """Batch the examples (prompts left-padded, completions right-padded) and compare per example."""
    tok = tb.tokenizer
    p_ids, _ = pad_left(prompts, tok.pad_token_id)
    width = max(1, max(len(c) for c in completions))
    c_ids, c_mask = pad_right(completions, tok.pad_token_id, width=width)
    if masks is not None:  # explicit masks (e.g. tokens after EOS masked out), padded with zeros
        c_mask = torch.tensor([m + [0] * (width - len(m)) for m in masks], dtype=torch.long)
    comps = tb.gold_components(p_ids, c_ids, c_mask)
    gold = tb.gold_reward(p_ids, c_ids, c_mask)
    assert gold.shape == (len(prompts),) and gold.dtype == torch.float64
    assert set(comps) == {"coverage", "hallucinated", "repeated", "length", "excess_length"}
    for i in range(len(prompts)):
        mask_i = c_mask[i].tolist()
        ref = ref_components(tb, prompts[i], c_ids[i].tolist(), mask_i)
        for name, value in ref.items():
            assert comps[name][i].item() == pytest.approx(value, abs=ATOL), (i, name)
        assert gold[i].item() == pytest.approx(ref_gold(tb, prompts[i], c_ids[i].tolist(), mask_i), abs=ATOL), i
    return gold, comps


def _ids(tb, words: str) -> list[int]:
    return tb.tokenizer.convert_tokens_to_ids(words.split())


def _doc_words(tb, prompt: list[int]) -> list[str]:
    return tb.tokenizer.convert_ids_to_tokens(prompt[1:-1])


# -- gold reward vs the reference ------------------------------------------------------------------------
def test_gold_matches_reference_on_sft_corpus(testbed):
    corpus = testbed.sft_corpus(300, seed=0)
    gold, comps = _check_against_reference(testbed, [e.prompt_ids for e in corpus], [e.completion_ids for e in corpus])
    # The corpus exercises the terms (otherwise the comparison above says little about them).
    assert (comps["hallucinated"] > 0).any() and (comps["repeated"] > 0).any()
    assert gold.max() - gold.min() > 0.5


def _adversarial(tb, prompt: list[int]) -> list[tuple[str, list[int], list[int] | None]]:
    """(name, completion, mask or None for 'all real tokens') built from the prompt's document."""
    doc = _doc_words(tb, prompt)
    outside = [f for f in tb.fact_tokens if f not in doc]
    eos, pad = EOS, tb.tokenizer.pad_token
    cases = [
        ("all facts once", f"{' '.join(doc)} {eos}", None),
        ("one fact thrice", f"{doc[0]} {doc[0]} {doc[0]} {eos}", None),
        ("every fact twice", f"{' '.join(doc + doc)} {eos}", None),
        ("hallucinations", f"{outside[0]} {doc[1]} {outside[1]} {eos}", None),
        ("repeated hallucination", f"{outside[2]} {outside[2]} {outside[2]} {eos}", None),
        ("fillers only", f"{' '.join(FILLER_WORDS)} {eos}", None),
        ("facts and fillers", f"the {doc[2]} and {doc[3]} so very {doc[2]} {eos}", None),
        ("special tokens inside", f"<bos> {doc[0]} {SEP} {pad} {eos}", None),
        ("empty: just EOS", eos, None),
        ("nothing at all", "", None),
    ]
    out = [(name, _ids(tb, words), mask) for name, words, mask in cases]
    # No EOS: the whole (long) row is the summary, mask all ones.
    ramble = _ids(tb, " ".join((doc * 4)[: tb.spec.max_completion_tokens]))
    out.append(("no EOS, mask all ones", ramble, [1] * len(ramble)))
    # Tokens after the EOS, masked out: they must not count (they would add coverage/penalties).
    after = _ids(tb, f"{doc[0]} {eos} {' '.join(doc)} {outside[0]} {outside[0]}")
    out.append(("masked after EOS", after, [1, 1] + [0] * (len(after) - 2)))
    return out


def test_gold_matches_reference_on_adversarial_summaries(testbed):
    prompts = testbed.prompts("train", 3, seed=5) + testbed.prompts("eval", 2, seed=5)
    rows = [(p, name, c, m) for p in prompts for name, c, m in _adversarial(testbed, p)]
    masks = [m if m is not None else [1] * len(c) for _, _, c, m in rows]
    gold, comps = _check_against_reference(testbed, [r[0] for r in rows], [r[2] for r in rows], masks)
    by_name = {}
    for i, (_, name, _, _) in enumerate(rows):
        by_name.setdefault(name, []).append(i)
    # A few hand-computed values, independent of the reference function.
    s = testbed.spec
    for i in by_name["empty: just EOS"] + by_name["nothing at all"]:
        assert gold[i].item() == 0.0 and comps["length"][i].item() == 0.0
    for i in by_name["repeated hallucination"]:
        assert comps["hallucinated"][i].item() == 3.0 and comps["repeated"][i].item() == 0.0
    for i in by_name["masked after EOS"]:
        assert comps["length"][i].item() == 1.0 and comps["hallucinated"][i].item() == 0.0
    for i in by_name["no EOS, mask all ones"]:
        n = s.max_completion_tokens
        assert comps["length"][i].item() == n and comps["excess_length"][i].item() == n - s.length_budget
        assert comps["repeated"][i].item() == n - s.doc_facts  # every doc fact appears, the rest repeat
    for i in by_name["special tokens inside"]:
        assert comps["length"][i].item() == 4.0  # <bos> fact <tldr> <pad>: non-EOS tokens all count


def test_gold_matches_reference_on_random_token_soup(testbed):
    """Random completions over the whole vocabulary (biased towards the document's facts) with
    random masks: catches whatever the hand-built cases miss."""
    gen = torch.Generator().manual_seed(11)
    prompts = testbed.prompts("train", 60, seed=1)
    vocab = len(testbed.tokenizer)
    completions, masks = [], []
    for p in prompts:
        n = int(torch.randint(0, 20, (1,), generator=gen))
        toks = torch.randint(0, vocab, (n,), generator=gen).tolist()
        from_doc = torch.rand(n, generator=gen) < 0.5
        doc = p[1:-1]
        toks = [doc[int(torch.randint(0, len(doc), (1,), generator=gen))] if d else t for t, d in zip(toks, from_doc)]
        completions.append(toks)
        masks.append((torch.rand(n, generator=gen) < 0.8).long().tolist())
    _check_against_reference(testbed, prompts, completions, masks)


def test_top_salient_facts_score_one_and_listing_everything_pays_for_length(default_testbed):
    """The best summary names the L most salient document facts; naming all of them costs λ_len per extra token."""
    tb = default_testbed
    sal = tb.salience.tolist()
    budget, n_doc = tb.spec.length_budget, tb.spec.doc_facts
    assert n_doc > budget  # precondition: the document does not fit in the budget
    for prompt in tb.prompts("train", 20, seed=2):
        doc = _doc_words(tb, prompt)
        best = sorted(doc, key=lambda w: -sal[int(w[1:])])[:budget]
        p, _ = pad_left([prompt], 0)
        for order in (best, best[::-1]):
            c, m = pad_right([_ids(tb, " ".join([*order, EOS]))], 0)
            assert tb.gold_reward(p, c, m).item() == pytest.approx(1.0, abs=ATOL)
        c, m = pad_right([_ids(tb, " ".join([*doc, EOS]))], 0)
        expected = 1.0 - tb.spec.length_penalty * (n_doc - budget)
        assert tb.gold_reward(p, c, m).item() == pytest.approx(expected, abs=ATOL)
        # Any proper subset of the best facts scores strictly less than 1.
        c, m = pad_right([_ids(tb, " ".join([*best[:-1], EOS]))], 0)
        assert tb.gold_reward(p, c, m).item() < 1.0


def test_repeating_a_fact_three_times_costs_two_repetition_penalties(testbed):
    tb = testbed
    assert 3 <= tb.spec.length_budget  # three mentions stay within budget: only repetition changes
    prompts = tb.prompts("train", 10, seed=3)
    once, thrice = [], []
    for prompt in prompts:
        f = _doc_words(tb, prompt)[1]
        once.append(_ids(tb, f"{f} {EOS}"))
        thrice.append(_ids(tb, f"{f} {f} {f} {EOS}"))
    p, _ = pad_left(prompts, 0)
    g1 = tb.gold_reward(p, *pad_right(once, 0))
    g3 = tb.gold_reward(p, *pad_right(thrice, 0))
    torch.testing.assert_close(g1 - g3, torch.full_like(g1, 2 * tb.spec.repetition_penalty), rtol=0, atol=ATOL)
    assert (g1 > 0).all()  # a covered fact earns something


def test_gold_is_invariant_to_padding_width_and_mask_dtype(default_testbed):
    tb = default_testbed
    corpus = tb.sft_corpus(20, seed=4)
    p, _ = pad_left([e.prompt_ids for e in corpus], 0)
    c, m = pad_right([e.completion_ids for e in corpus], 0)
    c_wide, m_wide = pad_right([e.completion_ids for e in corpus], 0, width=c.shape[1] + 5)
    p_wide = torch.cat([torch.zeros(len(corpus), 3, dtype=torch.long), p], 1)
    torch.testing.assert_close(tb.gold_reward(p, c, m), tb.gold_reward(p_wide, c_wide, m_wide), rtol=0, atol=0)
    # A bool mask means the same as a 0/1 long mask.
    torch.testing.assert_close(tb.gold_reward(p, c, m), tb.gold_reward(p, c, m.bool()), rtol=0, atol=0)


# -- prompts ----------------------------------------------------------------------------------------
def _doc_set(prompts):
    return {tuple(sorted(p[1:-1])) for p in prompts}


def test_prompts_have_the_expected_shape(testbed):
    tok = testbed.tokenizer
    fact_ids = set(tok.convert_tokens_to_ids(testbed.fact_tokens))
    for split in ("train", "eval"):
        for p in testbed.prompts(split, 50, seed=0):
            assert len(p) == testbed.spec.doc_facts + 2
            assert p[0] == tok.bos_token_id and p[-1] == tok.convert_tokens_to_ids(SEP)
            doc = p[1:-1]
            assert set(doc) <= fact_ids and len(set(doc)) == len(doc)  # distinct facts


def test_train_and_eval_splits_are_disjoint_and_deterministic(testbed):
    train = {s: testbed.prompts("train", 300, seed=s) for s in (0, 1)}
    evals = {s: testbed.prompts("eval", 100, seed=s) for s in (0, 1)}
    for s1 in (0, 1):
        for s2 in (0, 1):
            assert not _doc_set(train[s1]) & _doc_set(evals[s2])
    # The SFT corpus is written on train documents only.
    assert not _doc_set([e.prompt_ids for e in testbed.sft_corpus(300, seed=0)]) & _doc_set(evals[0] + evals[1])
    # Same seed, same prompts (also from a fresh testbed object); another seed, other prompts.
    fresh = SummarizeTestbed(testbed.spec)
    assert fresh.prompts("train", 300, seed=0) == train[0]
    assert fresh.prompts("eval", 100, seed=0) == evals[0]
    assert train[0] != train[1] and evals[0] != evals[1]


def test_unknown_split_is_rejected(default_testbed):
    with pytest.raises(ValueError, match="unknown split 'test'"):
        default_testbed.prompts("test", 1, seed=0)


def test_doc_facts_must_be_smaller_than_vocabulary():
    with pytest.raises(ValueError, match="doc_facts"):
        SummarizeTestbed(SummarizeSpec(n_fact_types=5, doc_facts=5))


# -- tokenizer -------------------------------------------------------------------------------------
def test_tokenizer_round_trip_and_special_ids(default_testbed, tmp_path):
    tok = default_testbed.tokenizer
    text = f"f03 the f17 and f03 really {EOS}"
    ids = tok.encode(text, add_special_tokens=False)
    assert len(ids) == len(text.split())
    assert tok.convert_ids_to_tokens(ids) == text.split()
    assert tok.decode(ids) == text
    special = {tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.convert_tokens_to_ids(SEP)}
    assert len(special) == 4
    assert tok.padding_side == "left"
    # Every word of the language has its own id.
    words = ["<pad>", "<bos>", EOS, SEP, "<unk>", *default_testbed.fact_tokens, *FILLER_WORDS]
    assert len(set(tok.convert_tokens_to_ids(words))) == len(words) == len(tok)
    # A word outside the language maps to <unk>, never silently to padding.
    assert tok.encode("f03 typo", add_special_tokens=False)[1] == tok.unk_token_id != tok.pad_token_id

    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert (loaded.pad_token_id, loaded.bos_token_id, loaded.eos_token_id) == (
        tok.pad_token_id,
        tok.bos_token_id,
        tok.eos_token_id,
    )
    assert loaded.get_vocab() == tok.get_vocab()
    sample = f"<bos> f00 f39 {SEP} the f12 so {EOS}"
    assert loaded.encode(sample, add_special_tokens=False) == tok.encode(sample, add_special_tokens=False)
    assert loaded.padding_side == "left"


# -- SFT corpus ------------------------------------------------------------------------------------
def _pearson(xs, ys) -> float:
    n = len(xs)
    mx, my = math.fsum(xs) / n, math.fsum(ys) / n
    cov = math.fsum((x - mx) * (y - my) for x, y in zip(xs, ys))
    return cov / math.sqrt(math.fsum((x - mx) ** 2 for x in xs) * math.fsum((y - my) ** 2 for y in ys))


def test_sft_corpus_shape_and_determinism(testbed):
    tok = testbed.tokenizer
    corpus = testbed.sft_corpus(400, seed=0)
    assert len(corpus) == 400
    for e in corpus:
        assert e.completion_ids[-1] == tok.eos_token_id
        assert e.completion_ids.count(tok.eos_token_id) == 1
        assert 2 <= len(e.completion_ids) <= testbed.max_completion_tokens  # >= 1 fact + EOS, fits
        assert tok.pad_token_id not in e.completion_ids
    assert testbed.sft_corpus(400, seed=0) == corpus
    assert testbed.sft_corpus(400, seed=1) != corpus


def test_sft_corpus_gold_tracks_distinct_facts_and_rarely_repeats(default_testbed):
    """The correlation the proxy RM is meant to learn ("more facts is better"), and the rarity of
    the failure modes RL later exploits (the module docstring's account of the hack)."""
    tb = default_testbed
    corpus = tb.sft_corpus(2000, seed=0)
    n_distinct, gold, repeats, over_budget = [], [], 0, 0
    for e in corpus:
        doc = {_fact_index(tb, t) for t in e.prompt_ids} - {None}
        said = [_fact_index(tb, t) for t in e.completion_ids]
        n_distinct.append(len(doc & set(said)))
        gold.append(ref_gold(tb, e.prompt_ids, e.completion_ids, [1] * len(e.completion_ids)))
        counts = Counter(f for f in said if f in doc)
        repeats += any(c > 1 for c in counts.values())
        over_budget += len(e.completion_ids) - 1 > tb.spec.length_budget
    assert _pearson(n_distinct, gold) > 0.5
    assert repeats / len(corpus) < 0.10  # sft_p_repeat = 0.05 of summaries get one repeat
    # Writers aim at the budget; going past it (an extra fact, a filler, a slip) is the exception.
    assert over_budget / len(corpus) < 0.3
    # And every count of facts is represented, so the correlation is not driven by two clusters.
    assert set(n_distinct) == set(range(1, tb.spec.length_budget + 2))
