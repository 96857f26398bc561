"""Bad command lines and config files end with one line on stderr and exit status 2, never a traceback
(property-based: 100 command lines + 250 YAML files)."""

from __future__ import annotations

import types
import typing

import annotated_types
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from overopt.cli import main
from overopt.config import ExperimentConfig


def _leaf_fields(model: type[BaseModel] = ExperimentConfig, prefix: str = ""):
    for name, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            yield from _leaf_fields(field.annotation, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", field


def _bad_values(field) -> list[str]:
    """Values that must be refused for this field: wrong type, out of range, not a choice."""
    ann = field.annotation
    bad: list[str] = []
    optional = typing.get_origin(ann) in (typing.Union, types.UnionType) and type(None) in typing.get_args(ann)
    if optional:  # `float | None`: the same bad values, except "" (which may mean None)
        ann = next(a for a in typing.get_args(ann) if a is not type(None))
    if ann in (int, float):
        bad += ["abc", "1.5.2"] + ([] if optional else [""])
        for rule in field.metadata:
            if isinstance(rule, annotated_types.Gt):
                bad.append(str(rule.gt - 1))
            if isinstance(rule, annotated_types.Ge):
                bad.append(str(rule.ge - 1))
            if isinstance(rule, annotated_types.Lt):
                bad.append(str(rule.lt + 1))
            if isinstance(rule, annotated_types.Le):
                bad.append(str(rule.le + 1))
        if ann is int:
            bad.append("2.5")
    if ann is str and any(isinstance(rule, annotated_types.MinLen) for rule in field.metadata):
        bad.append("")
    if typing.get_origin(ann) is typing.Literal:
        bad += ["not-a-choice", "RLOO ", "0"]
    return bad


BAD_METHODS = ["bogus", "kl+bogus", "none+kl", "kl+kl", "ocrm+ensemble_wco"]
BAD_SWEEPS = ["x", "gr.gamma", "model.hidden_size=8", "gr.nope=1", "gr.gamma=-1"]
BAD_TESTBEDS = ["nope", "nope:X", "os:path", "overopt.methods:Part", "overopt.testbeds:nope", "math_format:"]
BAD_OVERRIDES = [(name, value) for name, field in _leaf_fields() for value in _bad_values(field)]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    case=st.one_of(
        st.sampled_from(BAD_OVERRIDES).map(lambda nv: [f"--{nv[0]}", nv[1]]),
        st.from_regex(r"[a-z][a-z_]{2,12}(\.[a-z_]{2,8})?", fullmatch=True).map(lambda n: [f"--{n}zz", "1"]),
        st.sampled_from(BAD_METHODS).map(lambda m: ["--methods", m]),
        st.sampled_from(BAD_SWEEPS).map(lambda s: ["--sweep", s]),
        st.sampled_from(BAD_TESTBEDS).map(lambda t: ["--testbed", t]),
    ),
    preset=st.sampled_from([["--preset", "smoke"], []]),
)
def test_bad_command_lines_fail_in_one_line(case, preset, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["run", *preset, "--out", str(tmp_path / "never"), *case])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, (case, err)
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("overopt: error: "), (case, err)
    assert not (tmp_path / "never").exists()  # nothing was written


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--methods", ""], "name at least one method"),
        (["--methods", " , "], "name at least one method"),
        (["--out", "/dev/null/x"], "--out /dev/null/x: cannot create the output directory (Not a directory)"),
        (["--out", "FILE"], "cannot create the output directory (a file is in the way)"),
    ],
)
def test_empty_methods_and_an_impossible_out_are_refused_before_any_work(argv, message, capsys, tmp_path):
    """Both used to fail late: `--methods ''` after training SFT, pairs and the RM; `--out` under a file
    with a raw `[Errno 20]` that did not name the option."""
    (tmp_path / "FILE").write_text("")
    argv = [str(tmp_path / "FILE") if a == "FILE" else a for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--preset", "smoke", *(["--out", str(tmp_path / "never")] if "--out" not in argv else []), *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "never").exists() and not list(tmp_path.glob("*/sft"))


def test_the_bad_value_table_covers_every_constrained_field():
    constrained = {name for name, field in _leaf_fields() if field.metadata or typing.get_origin(field.annotation)}
    covered = {name for name, _ in BAD_OVERRIDES}
    # testbed: BAD_TESTBEDS; a plugin's knobs are checked by its own model (tests/test_plugins.py)
    assert constrained - covered <= {"config", "gr.exclude", "rl.no_eos_penalty", "testbed_args", "method_args"}


def _nested(name: str, value) -> dict:
    """'rl.kl.coef', 3 -> {'rl': {'kl': {'coef': 3}}}"""
    for key in reversed(name.split(".")):
        value = {key: value}
    return value


def _typed(value: str):
    """A command-line value as YAML would type it ('2.5' -> 2.5, '' -> None)."""
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return value


def _not_a_valid_config(text: str) -> bool:
    """Keep generated YAML text that is malformed, or a document that is not a non-empty mapping."""
    try:
        return yaml.safe_load(text) not in (None, {})
    except yaml.YAMLError:
        return True


BAD_YAML_FILES = st.one_of(
    st.sampled_from(BAD_OVERRIDES).map(lambda nv: yaml.safe_dump(_nested(nv[0], _typed(nv[1])))),
    st.from_regex(r"[a-z][a-z_]{2,12}(\.[a-z_]{2,8})?", fullmatch=True).map(lambda n: f"{n}zz: 1\n"),
    st.text(alphabet="{}[]:,'\"-#&*!|>% \n\tab1", min_size=1, max_size=40).filter(_not_a_valid_config),
    st.lists(st.integers(), min_size=1, max_size=3).map(yaml.safe_dump),  # a list, not a mapping
    st.sampled_from(["rl: 5\n", "methods: [kl]\n", "seeds: -1\n", "!!python/object/apply:os.system [id]\n"]),
    st.binary(min_size=1, max_size=8).map(lambda b: b"\xff" + b),  # not UTF-8 text
)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=BAD_YAML_FILES)
def test_bad_config_files_fail_in_one_line_naming_the_file(content, capsys, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--preset", "smoke", "--config", str(path), "--out", str(tmp_path / "never")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, (content, err)
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"overopt: error: {path}: "), (content, err)
    assert not (tmp_path / "never").exists()
    assert path.read_bytes() == (content if isinstance(content, bytes) else content.encode())  # never rewritten
