"""overopt.models.head: the LM head in float32 under bfloat16 autocast."""

import copy

import pytest
import torch
import torch.nn.functional as F

from overopt.models.head import fp32_lm_head
from overopt.models.policy import random_llama


def _model(seed: int = 0):
    return random_llama(vocab_size=97, hidden_size=32, num_layers=2, num_heads=4, max_positions=32, seed=seed).eval()


def _ids():
    return torch.randint(3, 97, (3, 9), generator=torch.Generator().manual_seed(1))


def _autocast():
    return torch.autocast(device_type="cpu", dtype=torch.bfloat16, cache_enabled=False)


def _logits_and_reference(model):
    """Logits under bf16 autocast, and the head applied in float64 to the same final hidden states."""
    with torch.no_grad(), _autocast():
        out = model(_ids(), output_hidden_states=True)
    head = model.get_output_embeddings()
    reference = F.linear(out.hidden_states[-1].double(), head.weight.double())
    return out.logits, reference


def test_fp32_head_gives_float32_logits_of_the_float64_head_under_autocast():
    logits, reference = _logits_and_reference(fp32_lm_head(_model()))
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits.double(), reference, rtol=1e-5, atol=1e-5)


def test_without_it_autocast_rounds_the_logits_to_bfloat16():
    # What the patch is for: the same check fails on the plain model (its logits are bfloat16-rounded).
    logits, reference = _logits_and_reference(_model())
    assert logits.dtype == torch.bfloat16
    assert (logits.double() - reference).abs().max() > 1e-3


def test_identity_without_autocast_and_state_dict_unchanged():
    plain, patched = _model(), fp32_lm_head(_model())
    with torch.no_grad():
        assert torch.equal(plain(_ids()).logits, patched(_ids()).logits)
    assert list(plain.state_dict()) == list(patched.state_dict())


def test_a_deep_copy_computes_with_its_own_weights():
    original = fp32_lm_head(_model())
    trained = copy.deepcopy(original)  # a run's trainable copy of the SFT policy
    with torch.no_grad():
        trained.get_output_embeddings().weight.mul_(2.0)
        with _autocast():
            a, b = original(_ids()).logits, trained(_ids()).logits
    assert a.dtype == b.dtype == torch.float32
    assert not torch.allclose(a, b)
    logits, reference = _logits_and_reference(trained)
    torch.testing.assert_close(logits.double(), reference, rtol=1e-5, atol=1e-5)


def test_gradients_reach_the_head_in_float32():
    model = fp32_lm_head(_model())
    with _autocast():
        loss = model(_ids()).logits.float().logsumexp(-1).mean()
    loss.backward()
    grad = model.get_output_embeddings().weight.grad
    assert grad is not None and grad.dtype == torch.float32 and torch.isfinite(grad).all()


def test_a_model_without_a_linear_head_is_refused():
    model = _model()
    model.lm_head = torch.nn.Identity()
    with pytest.raises(ValueError, match="not a Linear"):
        fp32_lm_head(model)
