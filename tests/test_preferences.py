"""overopt.testbeds.preferences: TRL's preference format, explicit and implicit, standard and conversational."""

import pytest
from datasets import Dataset

from overopt.testbeds.preferences import preference_triples


def _user(text):
    return [{"role": "user", "content": text}]


def _assistant(text):
    return [{"role": "assistant", "content": text}]


def test_explicit_standard_rows_are_taken_as_they_are():
    rows = Dataset.from_list([{"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}])
    assert preference_triples(rows, "data") == [("The sky is", " blue.", " green.")]


def test_implicit_standard_rows_split_at_the_common_prefix_the_space_going_to_the_completions():
    # TRL's extract_prompt: "The sky is" / " blue." — the space before the first difference is the completion's.
    rows = Dataset.from_list([{"chosen": "The sky is blue.", "rejected": "The sky is green."}])
    assert preference_triples(rows, "data") == [("The sky is", " blue.", " green.")]


def test_conversational_rows_explicit_and_implicit():
    explicit = Dataset.from_list([{"prompt": _user("Sky?"), "chosen": _assistant("Blue."),
                                   "rejected": _assistant("Green.")}])  # fmt: skip
    implicit = Dataset.from_list([{"chosen": _user("Sky?") + _assistant("Blue."),
                                   "rejected": _user("Sky?") + _assistant("Green.")}])  # fmt: skip
    expected = [(_user("Sky?"), _assistant("Blue."), _assistant("Green."))]
    assert preference_triples(explicit, "data") == expected
    assert preference_triples(implicit, "data") == expected


@pytest.mark.parametrize(
    "rows, words",
    [
        ([{"prompt": "x", "chosen": "y"}], ["data has no 'rejected' column", "columns: prompt, chosen"]),
        ([{"prompt": "x", "chosen": " y", "rejected": _assistant("z")}], ["row 0", "neither all text"]),
        ([{"chosen": "blue", "rejected": "green"}], ["row 0", "share no beginning", "'prompt' column"]),
        ([{"chosen": _user("a") + _assistant("b"), "rejected": _user("c") + _assistant("d")}],
         ["row 0", "do not share every message but the last"]),
        ([{"prompt": "x", "chosen": " y", "rejected": " z"}, {"prompt": "x", "chosen": "  ", "rejected": " z"}],
         ["row 1", "empty chosen"]),
    ],
    ids=["missing-column", "mixed-kinds", "no-common-prefix", "conversations-differ-early", "empty-completion"],
)  # fmt: skip
def test_what_is_not_the_format_is_one_line_naming_row_and_fix(rows, words):
    with pytest.raises(ValueError) as err:
        preference_triples(Dataset.from_list(rows), "data")
    message = str(err.value)
    assert len(message.splitlines()) == 1 and all(w in message for w in words), message


def test_no_rows_is_refused():
    with pytest.raises(ValueError, match="has no rows"):
        preference_triples(Dataset.from_dict({"chosen": [], "rejected": []}), "data")
