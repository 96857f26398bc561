"""overopt.testbeds.trl_formats: TRL's preference format (explicit and implicit, standard and conversational) and
stepwise supervision."""

import pytest
from datasets import Dataset

from overopt.testbeds.trl_formats import preference_triples, stepwise_rows


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


def test_stepwise_rows_are_taken_as_they_are():
    rows = Dataset.from_list([{"prompt": "2 + 3 + 1", "completions": ["2 + 3 = 5", "5 + 1 = 7"],
                               "labels": [True, False]}])  # fmt: skip
    assert stepwise_rows(rows, "data") == [("2 + 3 + 1", ["2 + 3 = 5", "5 + 1 = 7"], [True, False])]


@pytest.mark.parametrize(
    "row, words",
    [
        ({"prompt": "p", "completions": ["a"]}, ["no 'labels' column", "stepwise supervision"]),
        ({"prompt": "p", "completions": ["a", "b"], "labels": [True]}, ["row 0", "2 steps and 1 labels"]),
        ({"prompt": "p", "completions": [], "labels": []}, ["row 0", "not a non-empty list of step texts"]),
        ({"prompt": " ", "completions": ["a"], "labels": [True]}, ["row 0", "no prompt text"]),
    ],
    ids=["missing-column", "label-count", "no-steps", "empty-prompt"],
)
def test_what_is_not_stepwise_supervision_is_one_line_naming_row_and_fix(row, words):
    with pytest.raises(ValueError) as err:
        stepwise_rows(Dataset.from_list([row]), "data")
    message = str(err.value)
    assert len(message.splitlines()) == 1 and all(w in message for w in words), message
