"""Shared fixtures: a tiny summarize world (testbed, random policy, reward model) built once per session."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# trackio reads its directory once, when first imported (by TRL's trainers too): a temporary one, not the HF cache.
if not os.environ.get("TRACKIO_DIR"):
    os.environ["TRACKIO_DIR"] = tempfile.mkdtemp(prefix="overopt-trackio-")
    atexit.register(shutil.rmtree, os.environ["TRACKIO_DIR"], True)
# As the CLI does (overopt.cli.main), before torch loads: idle OpenMP threads sleep instead of spinning, so
# that the test processes sharing the cores (pytest -n 2, the tests' own workers) do not slow each other down.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture(autouse=True)
def ieee_subnormals():
    """Every test starts with subnormal floats on: building a lab flushes them to zero for its whole process
    (overopt.pipeline, for speed), and a test that ran after one in the same worker then saw a flushed FPU
    (hypothesis refuses to draw floats there: tests/ops/test_daa.py failed in whichever worker that was)."""
    import torch

    torch.set_flush_denormal(False)
    yield


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core box the thread pool makes
    each small matmul orders of magnitude slower: run the module single-threaded, then restore."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """A small summarize testbed with an untrained tiny policy saved to disk and an RM built from it."""
    import torch  # noqa: F401  (imported lazily so ops-only test runs stay light)

    from overopt.models.policy import tiny_llama
    from overopt.models.reward import reward_model_from_backbone
    from overopt.testbeds.summarize import SummarizeSpec, SummarizeTestbed

    testbed = SummarizeTestbed(SummarizeSpec(n_fact_types=12, doc_facts=3, length_budget=4, max_completion_tokens=6))
    policy = tiny_llama(testbed.tokenizer, hidden_size=16, num_layers=1, num_heads=2, max_positions=32, seed=0)
    path = tmp_path_factory.mktemp("tiny_policy")
    policy.save_pretrained(path)
    testbed.tokenizer.save_pretrained(path)
    reward_model = reward_model_from_backbone(path, seed=0).eval()
    return {"testbed": testbed, "policy": policy.eval(), "path": path, "reward_model": reward_model}


@pytest.fixture(scope="session")
def uninterrupted(tmp_path_factory):
    """An undisturbed `overopt run` of the smoke preset (test_resume.SMOKE): the reference that the crash,
    preemption and lock tests compare against (test_resume.assert_same_results). Trained once per session."""
    import torch

    from overopt.cli import main

    out = tmp_path_factory.mktemp("uninterrupted") / "out"
    before = torch.get_num_threads()
    try:
        main(["run", "--preset", "smoke", "--threads", "1", "--checkpoint_every_s", "0", "--out", str(out)])
    finally:
        torch.set_num_threads(before)
    return out


@pytest.fixture
def no_report(monkeypatch):
    """Skip the report at the end of a run: it reads the runs' outputs and adds nothing that the crash,
    preemption and lock tests compare, yet it is most of a smoke run's time (forked children inherit it)."""
    import overopt.report

    monkeypatch.setattr(overopt.report, "build_report", lambda out, console=None: {})
