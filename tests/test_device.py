"""Config `device` (issue 28): where the lab's models train and run. This machine has no GPU, so a GPU is
pretended (torch.cuda.is_available patched) wherever only the choice is under test, never a CUDA kernel; code that
must keep tensors on one device is run on the meta device, which refuses a CPU tensor beside it as CUDA does."""

from __future__ import annotations

import pytest
import torch

from overopt import distributed
from overopt.cli import main
from overopt.config import ExperimentConfig
from overopt.testbeds import make_testbed


@pytest.fixture
def gpu_present(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


def test_auto_is_the_cpu_without_a_gpu_and_cuda_refuses():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert distributed.lab_device("auto") == torch.device("cpu")
    assert distributed.lab_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="device cuda: torch sees no GPU"):
        distributed.lab_device("cuda")
    with pytest.raises(ValueError, match="auto, cpu or cuda"):
        distributed.lab_device("tpu")


def test_auto_and_cuda_take_the_gpu_when_there_is_one(gpu_present, monkeypatch):
    assert distributed.lab_device("auto").type == "cuda"
    assert distributed.lab_device("cuda").type == "cuda"
    assert distributed.lab_device("cpu").type == "cpu"
    monkeypatch.setenv("WORLD_SIZE", "2")  # accelerate launch: its processes reduce over NCCL on the GPUs
    with pytest.raises(ValueError, match="multi-process launch on a GPU machine"):
        distributed.lab_device("cpu")


def test_cli_refuses_cuda_without_a_gpu_in_one_line(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--preset", "smoke", "--device", "cuda", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and "device cuda: torch sees no GPU" in err[0], err
    assert not (tmp_path / "out" / "artifacts").exists()  # refused before any stage


@pytest.mark.parametrize("testbed", ["summarize", "math_format", "judge", "process"])
def test_built_in_testbeds_run_where_device_says(gpu_present, testbed):
    assert make_testbed(ExperimentConfig(testbed=testbed)).device == torch.device("cuda")
    assert make_testbed(ExperimentConfig(testbed=testbed, device="cpu")).device == torch.device("cpu")


def test_a_testbed_that_chooses_its_device_keeps_it(gpu_present, monkeypatch):
    from overopt.testbeds import TESTBEDS, TestbedEntry, _summarize
    from overopt.testbeds.summarize import SummarizeTestbed

    class OnItsOwn(SummarizeTestbed):
        device = torch.device("cpu")  # a class of its own sets it: the lab leaves it

    class InItsInstance(SummarizeTestbed):
        def __init__(self, spec):
            super().__init__(spec)
            self.device = torch.device("cpu")

    for cls in (OnItsOwn, InItsInstance):
        entry = TestbedEntry(cls.__name__, lambda cfg, cls=cls: cls(_summarize(cfg).spec), section="summarize")
        monkeypatch.setitem(TESTBEDS._resolved, cls.__name__, entry)
        assert make_testbed(ExperimentConfig(testbed=cls.__name__)).device == torch.device("cpu")


def test_fingerprints_on_the_cpu_are_those_from_before_the_knob(gpu_present):
    """On the CPU nothing enters the fingerprints (OUTs built before `device` existed stay valid); on a GPU the
    stages, and the runs built on them, are other ones."""
    from overopt.pipeline import _run_fingerprint, resolve_plans, stage_fingerprints

    cfg = ExperimentConfig(preset="smoke")
    on_cpu = stage_fingerprints(cfg, "preference", "cpu")
    assert on_cpu == stage_fingerprints(cfg.model_copy(update={"device": "cpu"}), "preference")
    on_gpu = stage_fingerprints(cfg, "preference")  # auto, with a GPU present
    assert on_gpu == stage_fingerprints(cfg, "preference", torch.device("cuda", 0))
    assert all(on_cpu[name] != on_gpu[name] for name in on_cpu)
    plan, variant = resolve_plans(cfg)["none"]
    assert _run_fingerprint(on_cpu["rm"], plan, variant, 0) != _run_fingerprint(on_gpu["rm"], plan, variant, 0)


def test_sft_loss_keeps_its_targets_on_the_logits_device(monkeypatch):
    """The SFT stage on a GPU: the targets built on the CPU go to the logits' device (meta stands in for CUDA)."""
    from overopt.stages import sft
    from overopt.testbeds.summarize import SummarizeSpec, SummarizeTestbed

    testbed = SummarizeTestbed(SummarizeSpec())
    corpus = testbed.sft_corpus(4, seed=0)
    vocab = len(testbed.tokenizer)

    def logits_on_meta(model, input_ids, attention_mask, prompt_len):
        return torch.zeros(input_ids.shape[0], input_ids.shape[1] - prompt_len, vocab, device="meta")

    monkeypatch.setattr(sft, "completion_logits", logits_on_meta)
    total, tokens = sft._batch_nll(None, corpus, testbed.tokenizer.pad_token_id)
    assert total.device.type == "meta" and tokens.device.type == "meta"
