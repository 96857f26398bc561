"""TRL's dataset formats read into what the lab trains its proxy on: a user's own data for the `hf` testbed.

Preference: a preference dataset in TRL's formats (its documentation, "Dataset formats") holds per row a `chosen` and a
`rejected` completion of one prompt, either as text (standard) or as lists of {"role", "content"} messages
(conversational). The prompt is its own `prompt` column (explicit), or the shared beginning of both completions
(implicit): every message but the last of a conversation, or the longest common prefix of two texts (as TRL's
`extract_prompt` splits them, the space before the split going to the completions).

Stepwise supervision: per row a `prompt` (text), `completions` (the solution's steps, one text each) and
`labels` (one bool per step: is the step right), the format of TRL's PRM training.
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


def _check_table(rows: Dataset, where: str, required: tuple[str, ...], the_format: str, what: str) -> None:
    """One line naming `where` for a missing column (with the format's columns) or no rows at all."""
    missing = [c for c in required if c not in rows.column_names]
    if missing:
        columns = ", ".join(rows.column_names)
        raise ValueError(f"{where} has no {missing[0]!r} column (columns: {columns}); {the_format}")
    if len(rows) == 0:
        raise ValueError(f"{where} has no rows; add {what}, one per row")


def preference_triples(rows: Dataset, where: str) -> list[Triple]:
    """Every row of `rows` as (prompt, chosen, rejected), texts or conversations; one-line ValueError naming
    `where`, the row and the fix for anything that is not TRL's preference format."""
    _check_table(rows, where, ("chosen", "rejected"), "TRL's preference format has chosen, rejected and an optional "
                 "prompt", "preference pairs")  # fmt: skip
    explicit = "prompt" in rows.column_names
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


def stepwise_rows(rows: Dataset, where: str) -> list[tuple[str, list[str], list[bool]]]:
    """Every row of `rows` as (prompt, steps, labels); one-line ValueError naming `where`, the row and the fix
    for anything that is not TRL's stepwise-supervision format."""
    _check_table(rows, where, ("prompt", "completions", "labels"), "TRL's stepwise supervision format has prompt, "
                 "completions (the steps) and labels (one bool per step)", "step-labelled solutions")  # fmt: skip
    out = []
    for index, row in enumerate(rows):
        prompt, steps, labels = row["prompt"], row["completions"], row["labels"]
        here = f"{where}: row {index} (counting from 0)"
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"{here} has no prompt text; write it or drop the row")
        if not isinstance(steps, list) or not steps or not all(isinstance(t, str) and t.strip() for t in steps):
            raise ValueError(f"{here}: completions is not a non-empty list of step texts; fix or drop the row")
        if not isinstance(labels, list) or not all(isinstance(b, bool) for b in labels):
            raise ValueError(f"{here}: labels is not a list of true/false, one per step; fix or drop the row")
        if len(labels) != len(steps):
            raise ValueError(f"{here} has {len(steps)} steps and {len(labels)} labels; give one label per step")
        out.append((prompt, steps, labels))
    return out
