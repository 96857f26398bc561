"""GPU check: which Python packages are there, which must come from wheels/, and the versions to report.

python deps.py missing            # what to install from wheels/: packages that are not importable (pip
                                  # names), and `name>=min` for those older than the project needs
python deps.py closure WHEELDIR   # the wheel files in WHEELDIR whose distribution is not installed
python deps.py report OUT_JSON    # versions, the project's requirements against them, CUDA, pip check
"""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# pip name -> import name: the project's runtime and test needs, TRL for the throughput comparison.
NEEDED = {
    "tyro": "tyro", "pydantic": "pydantic", "datasets": "datasets", "trl": "trl", "hypothesis": "hypothesis",
    "peft": "peft", "pyyaml": "yaml", "filelock": "filelock", "greenlet": "greenlet",
}  # fmt: skip
# Present but possibly too old in the GPU image (pyproject: filelock>=4.3): upgraded from wheels/ when below.
MINIMUM = {"filelock": "4.3"}
REPORTED = [
    "torch", "transformers", "trl", "accelerate", "peft", "datasets", "tokenizers", "safetensors", "huggingface_hub",
    "pydantic", "tyro", "numpy", "pyarrow", "pandas", "rich", "matplotlib", "pytest", "hypothesis", "setuptools",
    "filelock", "typing_extensions", "fsspec",
]  # fmt: skip


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def missing() -> list[str]:
    out = [pip for pip, mod in NEEDED.items() if importlib.util.find_spec(mod) is None]
    try:
        from packaging.version import Version

        for pip, least in MINIMUM.items():
            have = installed(pip)
            if pip not in out and have is not None and Version(have) < Version(least):
                out.append(f"{pip}>={least}")
    except ImportError:
        pass
    return out


def closure(wheels: Path) -> list[str]:
    """The wheels to install without dependency resolution: those not installed, and those of `missing()`'s
    too-old packages."""
    upgrade = {_norm(m.split(">=")[0]) for m in missing() if ">=" in m}
    out = []
    for whl in sorted(wheels.glob("*.whl")):
        dist = whl.name.split("-")[0]
        if (installed(dist) is None and installed(_norm(dist)) is None) or _norm(dist) in upgrade:
            out.append(str(whl))
    return out


def report(path: Path) -> None:
    from packaging.requirements import Requirement

    data: dict = {"python": sys.version.split()[0], "executable": sys.executable,
                  "versions": {name: installed(name) for name in REPORTED}}  # fmt: skip
    try:
        import tomllib

        project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
        reqs = list(project["dependencies"])
        for extra in ("test", "bench", "lora"):
            reqs += project.get("optional-dependencies", {}).get(extra, [])
        checks = []
        for line in reqs:
            req = Requirement(line)
            have = installed(req.name)
            ok = have is not None and (not req.specifier or req.specifier.contains(have, prereleases=True))
            checks.append({"requirement": line, "installed": have, "ok": ok})
        data["requirements"] = checks
    except Exception as err:  # noqa: BLE001
        data["requirements_error"] = repr(err)
    try:
        import torch

        data["torch_cuda"] = torch.version.cuda
        data["cuda_available"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            data["device_name"] = torch.cuda.get_device_name(0)
            data["device_capability"] = list(torch.cuda.get_device_capability(0))
            data["bf16_supported"] = torch.cuda.is_bf16_supported()
            data["device_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    except Exception as err:  # noqa: BLE001
        data["torch_error"] = repr(err)
    check = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    data["pip_check"] = (check.stdout + check.stderr).strip().splitlines()[:40]
    path.write_text(json.dumps(data, indent=1))
    brief = {k: v for k, v in data.items() if k != "requirements"}
    brief["requirements_not_met"] = [c for c in data.get("requirements", []) if not c["ok"]]
    print(json.dumps(brief, indent=1))


if __name__ == "__main__":
    what = sys.argv[1]
    if what == "missing":
        print(" ".join(missing()))
    elif what == "closure":
        print(" ".join(closure(Path(sys.argv[2]))))
    elif what == "report":
        report(Path(sys.argv[2]))
    else:
        raise SystemExit(f"unknown command {what!r}")
