"""overopt.results: the RESULTS.md sections the benchmark and experiment scripts write."""

from __future__ import annotations

import datetime

from overopt.results import machine, markdown_table, section_head, write_section


def test_a_section_is_written_between_its_markers_and_replaced_in_place(tmp_path):
    path = tmp_path / "RESULTS.md"
    write_section("a", "first", path)
    write_section("b", "other", path)
    write_section("a", "second", path)
    text = path.read_text()
    assert text.count("<!-- a:start -->") == 1 and "second" in text and "first" not in text
    assert text.index("<!-- a:start -->") < text.index("<!-- b:start -->")  # replaced where it was


def test_section_head_and_table_lines():
    head = section_head("Title", "overopt run", " (runs `x`)")
    assert head == ["## Title", "", "Command: `overopt run` (runs `x`)  ",
                    f"Date: {datetime.date.today().isoformat()}  ", f"Machine: {machine()}", ""]  # fmt: skip
    assert markdown_table(["a", "b"], ["| 1 | 2 |"]) == ["| a | b |", "|---|---|", "| 1 | 2 |"]
