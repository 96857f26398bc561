"""Build the tiny local Hugging Face world of tests/test_hf_testbed.py (policy, gold RM, prompt files), no network.

    python tools/gpu_check/make_tiny_hf.py DIR      # writes DIR/world.json (the paths) and prints it

It calls the test module's own `hf_world` fixture function (so it builds exactly what the tests build),
with a stand-in for pytest's tmp_path_factory that makes folders under DIR.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


class _TmpPathFactory:
    """What hf_world uses of pytest's tmp_path_factory: mktemp(name) -> a new folder."""

    def __init__(self, root: Path):
        self.root = root

    def mktemp(self, name: str, numbered: bool = True) -> Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path


def build(root: Path) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(ROOT / "tests"))
    import test_hf_testbed

    fixture = test_hf_testbed.hf_world
    fn = getattr(fixture, "__wrapped__", None)
    if fn is None and hasattr(fixture, "_get_wrapped_function"):
        fn = fixture._get_wrapped_function()
    world = (fn or fixture)(_TmpPathFactory(root))
    return {k: str(v) for k, v in world.items()}


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/gpucheck-tiny-hf").resolve()
    out.mkdir(parents=True, exist_ok=True)
    world = build(out)
    (out / "world.json").write_text(json.dumps(world, indent=1))
    print(json.dumps(world))
