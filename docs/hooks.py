"""mkdocs hooks: pages include what the code and the benchmark scripts write, so nothing is copied twice.

Directives, each alone on a line of a page:

- ``<!-- results: NAME -->``: the section of benchmarks/RESULTS.md between ``<!-- NAME:start -->`` and
  ``<!-- NAME:end -->`` (the markers the benchmark scripts write);
- ``<!-- results-heading: PREFIX -->``: the section of RESULTS.md whose ``## `` heading starts with PREFIX,
  up to the next ``## `` heading or marker;
- ``<!-- results-all -->``: all of RESULTS.md but its title;
- ``<!-- config-table: PREFIX ... -->``: ``overopt.config.markdown_table(PREFIX, ...)``, the configuration
  fields whose dotted names start with one of the prefixes (e.g. ``gr.``).

The one image RESULTS.md keeps beside itself, benchmarks/scaling.png, is served as img/scaling.png.
"""

from __future__ import annotations

import posixpath
import re
import sys
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
DIRECTIVE = re.compile(r"^<!-- (results|results-heading|results-all|config-table)(?::\s*(.*?))?\s*-->$", re.M)


def _results_text() -> str:
    return RESULTS.read_text(encoding="utf-8")


def _marked(name: str) -> str:
    text = _results_text()
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    if start not in text or end not in text:
        raise ValueError(f"benchmarks/RESULTS.md has no section {name!r}")
    return text.split(start, 1)[1].split(end, 1)[0].strip()


def _by_heading(prefix: str) -> str:
    lines = _results_text().splitlines()
    for i, line in enumerate(lines):
        if line.startswith("## " + prefix):
            out = [line]
            for nxt in lines[i + 1 :]:
                if nxt.startswith("## ") or (nxt.startswith("<!-- ") and nxt.endswith(":start -->")):
                    break
                out.append(nxt)
            return "\n".join(out).strip()
    raise ValueError(f"benchmarks/RESULTS.md has no heading starting with {prefix!r}")


def _all() -> str:
    text = re.sub(r"^# .*\n", "", _results_text(), count=1)
    return re.sub(r"^<!-- .*:(start|end) -->\n", "", text, flags=re.M).strip()


def _config_table(prefixes: str) -> str:
    sys.path.insert(0, str(ROOT / "src"))
    from overopt.config import markdown_table

    return markdown_table(*prefixes.split())


def _fix_images(text: str, page: str) -> str:
    """RESULTS.md's image links are relative to benchmarks/: point them at the docs' img/."""
    up = posixpath.relpath("img", posixpath.dirname(page) or ".")
    text = re.sub(r"\]\(\.\./docs/img/", f"]({up}/", text)
    return re.sub(r"\]\(scaling\.png\)", f"]({up}/scaling.png)", text)


def on_page_markdown(markdown: str, page, config, files) -> str:
    def expand(m: re.Match) -> str:
        kind, arg = m.group(1), (m.group(2) or "").strip()
        if kind == "config-table":
            return _config_table(arg)
        text = {"results": _marked, "results-heading": _by_heading}.get(kind, lambda _: _all())(arg)
        return _fix_images(text, page.file.src_uri)

    return DIRECTIVE.sub(expand, markdown)


def on_files(files, config):
    files.append(File.generated(config, "img/scaling.png", abs_src_path=str(ROOT / "benchmarks" / "scaling.png")))
    return files
