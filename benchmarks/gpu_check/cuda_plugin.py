"""GPU check: a pytest plugin (`-p cuda_plugin`) that records, per test, its outcome, wall time and the CUDA
memory it allocated in the pytest process (torch.cuda.max_memory_allocated over its call phase; tests that run
overopt in a subprocess show up in the probe's log instead). Writes the JSON list to $GPU_CHECK_PYTEST_JSON."""

from __future__ import annotations

import json
import os
import time

import pytest

_rows: dict[str, dict] = {}


def _cuda():
    try:
        import torch

        return torch if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001
        return None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    torch = _cuda()
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
        row.setdefault("outcome", report.outcome)
        if report.outcome == "failed":
            row["outcome"] = "failed"
            row["error"] = str(report.longrepr)[-1500:]
    row[f"{report.when}_s"] = round(report.duration, 2)


def pytest_sessionfinish(session, exitstatus):
    path = os.environ.get("GPU_CHECK_PYTEST_JSON")
    if path:
        with open(path, "w") as f:
            json.dump({"exitstatus": int(exitstatus), "tests": list(_rows.values())}, f, indent=1)
