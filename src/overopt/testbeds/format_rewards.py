"""The rule rewards of RLVR math (GSM8K-style answer format), as used in the RLVR and LLM-as-judge
experiments of Ackermann et al. (gradient regularization, arXiv 2602.18037). They take the
published definitions (Will Brown's GRPO demo, also Open-R1's) on the completion's text:

    xmlcount       0.125 for each of "<reasoning>\\n", "\\n</reasoning>\\n", "\\n<answer>\\n", "\\n</answer>"
                   appearing exactly once, minus 0.001 per character after the final "\\n</answer>"
    soft_format    1 if the text is <reasoning>…</reasoning>…<answer>…</answer>
    strict_format  1 if the text is "<reasoning>\\n…\\n</reasoning>\\n<answer>\\n…</answer>"
    int_answer     0.5 if the text inside the last <answer> … </answer> is an integer
    correct        2.0 if it equals the true answer (the gold; in RLVR also part of the proxy)

Each function maps a list of texts to a list of floats, one per completion.
"""

from __future__ import annotations

import re

_STRICT = re.compile(r"^<reasoning>\n[\s\S]*?\n</reasoning>\n<answer>\n[\s\S]*?</answer>$")
_SOFT = re.compile(r"^<reasoning>[\s\S]*?</reasoning>[\s\S]*?<answer>[\s\S]*?</answer>$")


def extract_answer(text: str) -> str:
    """The text between the last <answer> and the following </answer> (the whole text without tags)."""
    return text.split("<answer>")[-1].split("</answer>")[0].strip()


def xmlcount(texts: list[str]) -> list[float]:
    def count(text: str) -> float:
        score = 0.0
        score += 0.125 * (text.count("<reasoning>\n") == 1)
        score += 0.125 * (text.count("\n</reasoning>\n") == 1)
        score += 0.125 * (text.count("\n<answer>\n") == 1)
        if text.count("\n</answer>") == 1:
            score += 0.125 - (len(text.split("\n</answer>")[-1]) - 1) * 0.001
        return score

    return [count(t) for t in texts]


def soft_format(texts: list[str]) -> list[float]:
    return [1.0 if _SOFT.match(t.strip()) else 0.0 for t in texts]


def strict_format(texts: list[str]) -> list[float]:
    return [1.0 if _STRICT.match(t.strip()) else 0.0 for t in texts]


def int_answer(texts: list[str]) -> list[float]:
    return [0.5 if extract_answer(t).isdigit() else 0.0 for t in texts]


def correct(texts: list[str], answers: list[int]) -> list[float]:
    return [2.0 if extract_answer(t) == str(a) else 0.0 for t, a in zip(texts, answers, strict=True)]


# The format terms of the proxy, in the order of the published reward list.
FORMAT_REWARDS = {
    "xmlcount": xmlcount,
    "soft_format": soft_format,
    "strict_format": strict_format,
    "int_answer": int_answer,
}
