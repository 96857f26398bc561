"""TRL's preference format read into (prompt, chosen, rejected) triples: pairs a user brings for the proxy RM.

A preference dataset in TRL's formats (its documentation, "Dataset formats") holds per row a `chosen` and a
`rejected` completion of one prompt, either as text (standard) or as lists of {"role", "content"} messages
(conversational). The prompt is its own `prompt` column (explicit), or the shared beginning of both completions
(implicit): every message but the last of a conversation, or the longest common prefix of two texts (as TRL's
`extract_prompt` splits them, the space before the split going to the completions).
"""

from __future__ import annotations

from datasets import Dataset

Text = str | list[dict]
Triple = tuple[Text, Text, Text]


def is_conversation(value) -> bool:
    """A non-empty list of {"role": str, "content": str} messages (TRL's conversational format)."""
    return (
        isinstance(value, list)
        and bool(value)
        and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value
        )
    )


def _common_prefix(a: str, b: str) -> int:
    n = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    return n - 1 if n > 0 and a[n - 1] == " " else n


def _split_implicit(chosen: Text, rejected: Text) -> Triple | str:
    """(prompt, chosen, rejected) of an implicit-prompt row, or what is wrong with it."""
    if isinstance(chosen, list):
        if len(chosen) < 2 or len(rejected) < 2 or chosen[:-1] != rejected[:-1]:
            return "its chosen and rejected conversations do not share every message but the last"
        return chosen[:-1], chosen[-1:], rejected[-1:]
    cut = _common_prefix(chosen, rejected)
    if not chosen[:cut].strip():
        return "its chosen and rejected texts share no beginning to take as the prompt"
    return chosen[:cut], chosen[cut:], rejected[cut:]


def preference_triples(rows: Dataset, where: str) -> list[Triple]:
    """Every row of `rows` as (prompt, chosen, rejected), texts or conversations; one-line ValueError naming
    `where`, the row and the fix for anything that is not TRL's preference format."""
    columns = rows.column_names
    missing = [c for c in ("chosen", "rejected") if c not in columns]
    if missing:
        raise ValueError(
            f"{where} has no {missing[0]!r} column (columns: {', '.join(columns)}); TRL's preference format has "
            "chosen, rejected and an optional prompt"
        )
    if len(rows) == 0:
        raise ValueError(f"{where} has no rows; add preference pairs, one per row")
    explicit = "prompt" in columns
    triples = []
    for index, row in enumerate(rows):
        values = [row["prompt"]] if explicit else []
        values += [row["chosen"], row["rejected"]]
        here = f"{where}: row {index} (counting from 0)"
        kinds = {"conversational" if is_conversation(v) else "standard" if isinstance(v, str) else "other"
                 for v in values}  # fmt: skip
        if "other" in kinds or len(kinds) > 1:
            raise ValueError(
                f"{here} is neither all text nor all lists of {{'role', 'content'}} messages in "
                f"{', '.join(['prompt'] * explicit + ['chosen', 'rejected'])}; fix or drop the row"
            )
        if explicit:
            triple = tuple(values)
        else:
            triple = _split_implicit(*values)
            if isinstance(triple, str):
                raise ValueError(f"{here}: {triple}; give the prompt in a 'prompt' column")
        if any(isinstance(v, str) and not v.strip() for v in triple):
            name = ("prompt", "chosen", "rejected")[next(i for i, v in enumerate(triple) if isinstance(v, str)
                                                         and not v.strip())]  # fmt: skip
            raise ValueError(f"{here} has an empty {name}; write it or drop the row")
        triples.append(triple)
    return triples
