"""GPU check: a pytest plugin (`-p cuda_plugin`) that records, per test, its outcome, wall time and the CUDA
memory it allocated in its pytest process (torch.cuda.max_memory_allocated over its call phase; a test that
runs overopt in a subprocess shows up in the probe's log instead).

Every process (the main one and each pytest-xdist worker) rewrites its own JSON after every test, so a run
stopped by a timeout still leaves what it did: $GPU_CHECK_PYTEST_JSON with `.json` replaced by `.<worker>.json`
(`main` for the main process); summarize.py merges them by test id.
"""

from __future__ import annotations

import json
import os
import time

import pytest

_rows: dict[str, dict] = {}
_status: dict = {"exitstatus": None}


def _cuda():
    try:
        import torch

        return torch if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001
        return None


def _write() -> None:
    path = os.environ.get("GPU_CHECK_PYTEST_JSON")
    if not path:
        return
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    target = path[: -len(".json")] if path.endswith(".json") else path
    with open(f"{target}.{worker}.json", "w") as f:
        json.dump({"worker": worker, **_status, "tests": list(_rows.values())}, f, indent=1)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    torch = _cuda()
    base = 0
    if torch is not None:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    row = _rows.setdefault(item.nodeid, {"test": item.nodeid})
    row["start"] = time.time()
    yield
    row["end"] = time.time()
    if torch is not None:
        torch.cuda.synchronize()
        row["cuda_peak_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 3)
        row["cuda_in_use_before_mib"] = round(base / 2**20, 3)


def pytest_runtest_logreport(report):
    row = _rows.setdefault(report.nodeid, {"test": report.nodeid})
    if report.when == "call" or report.outcome != "passed":
        if row.get("outcome") != "failed":
            row["outcome"] = report.outcome
        if report.outcome == "failed":
            row["error"] = str(report.longrepr)[-1500:]
    row[f"{report.when}_s"] = round(report.duration, 2)
    if report.when == "teardown":
        _write()


def pytest_sessionfinish(session, exitstatus):
    _status["exitstatus"] = int(exitstatus)
    _write()
