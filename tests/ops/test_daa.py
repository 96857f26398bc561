"""Tests for overopt.ops.daa against Python-loop references, identities and TRL."""

from __future__ import annotations

import math
import types
from collections import defaultdict

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from overopt.ops import (
    DAA_LOSSES,
    DAALoss,
    daa_loss,
    dpo_loss,
    dpo_nll_loss,
    hinge_loss,
    ipo_loss,
    rpo_loss,
    simpo_loss,
)

B = 9
BETA = 0.7
GAMMA = 0.4
ETA = 0.3
ALPHA = 0.6


def _batch(gen):
    """Float64 sequence log-probs (sums over 1..12 tokens) and int64 lengths; margins of both signs."""
    chosen_lengths = torch.randint(1, 13, (B,), generator=gen)
    rejected_lengths = torch.randint(1, 13, (B,), generator=gen)
    per_token = lambda lengths: -(0.2 + 1.5 * torch.rand(B, generator=gen, dtype=torch.float64)) * lengths
    chosen, rejected = per_token(chosen_lengths), per_token(rejected_lengths)
    ref_chosen = chosen + torch.randn(B, generator=gen, dtype=torch.float64)
    ref_rejected = rejected + torch.randn(B, generator=gen, dtype=torch.float64)
    return {
        "chosen_logps": chosen,
        "rejected_logps": rejected,
        "ref_chosen_logps": ref_chosen,
        "ref_rejected_logps": ref_rejected,
        "chosen_lengths": chosen_lengths,
        "rejected_lengths": rejected_lengths,
    }


# --- naive per-example references (Python floats, math only) -------------------------------------


def _neg_log_sigmoid(x: float) -> float:
    """-log σ(x) = log(1 + e^{-x}), by hand in the form that never overflows."""
    return math.log1p(math.exp(-x)) if x >= 0 else -x + math.log1p(math.exp(x))


def _rows(batch):
    keys = ("chosen_logps", "rejected_logps", "ref_chosen_logps", "ref_rejected_logps")
    keys += ("chosen_lengths", "rejected_lengths")
    return zip(*(batch[k].tolist() for k in keys))


def ref_daa(name, batch, beta, gamma=0.0, eta=0.0, ipo_length_normalized=False, alpha=0.0):
    """Per-pair (losses, chosen_rewards, rejected_rewards) lists, one example at a time."""
    losses, chosen_rewards, rejected_rewards = [], [], []
    for c, r, rc, rr, lc, lr in _rows(batch):
        if name == "simpo":
            rew_c, rew_r = beta * c / lc, beta * r / lr
            loss = _neg_log_sigmoid(rew_c - rew_r - gamma)
        else:
            rew_c, rew_r = beta * (c - rc), beta * (r - rr)
            delta = (c - rc) - (r - rr)
            if name == "dpo":
                loss = _neg_log_sigmoid(beta * delta)
            elif name == "rpo":
                # Liu et al.'s code (alignment-handbook rpo_trainer.py): the DPO loss, then
                # losses -= policy_chosen_logps * beta * eta, with the chosen log-prob summed.
                loss = _neg_log_sigmoid(beta * delta) - c * beta * eta
            elif name == "dpo_nll":
                loss = _neg_log_sigmoid(beta * delta) + alpha * (-c / lc)
            elif name == "hinge":
                loss = max(0.0, 1.0 - beta * delta)
            elif name == "ipo":
                if ipo_length_normalized:
                    delta = (c - rc) / lc - (r - rr) / lr
                loss = (delta - 1.0 / (2.0 * beta)) ** 2
            else:
                raise AssertionError(name)
        losses.append(loss)
        chosen_rewards.append(rew_c)
        rejected_rewards.append(rew_r)
    return losses, chosen_rewards, rejected_rewards


def _call(name, batch, beta=BETA, gamma=GAMMA, eta=ETA, alpha=ALPHA):
    """The public per-loss function (not the dispatcher), with only the arguments it takes."""
    pol = (batch["chosen_logps"], batch["rejected_logps"])
    ref = (batch["ref_chosen_logps"], batch["ref_rejected_logps"])
    if name == "dpo":
        return dpo_loss(*pol, *ref, beta)
    if name == "ipo":
        return ipo_loss(*pol, *ref, beta)
    if name == "simpo":
        return simpo_loss(*pol, batch["chosen_lengths"], batch["rejected_lengths"], beta, gamma)
    if name == "rpo":
        return rpo_loss(*pol, *ref, beta, eta)
    if name == "dpo_nll":
        return dpo_nll_loss(*pol, *ref, batch["chosen_lengths"], beta, alpha)
    return hinge_loss(*pol, *ref, beta)


# --- against the references -----------------------------------------------------------------------


@pytest.mark.parametrize("name", DAA_LOSSES)
def test_losses_match_loop(gen, assert_close, name):
    batch = _batch(gen)
    expected = ref_daa(name, batch, BETA, GAMMA, ETA, alpha=ALPHA)
    for out in (_call(name, batch), daa_loss(name, **batch, beta=BETA, gamma=GAMMA, eta=ETA, alpha=ALPHA)):
        assert isinstance(out, DAALoss)
        assert_close(out.losses, expected[0], rtol=0, atol=1e-12)
        assert_close(out.chosen_rewards, expected[1], rtol=0, atol=1e-12)
        assert_close(out.rejected_rewards, expected[2], rtol=0, atol=1e-12)


def test_ipo_length_normalized_matches_loop(gen, assert_close, assert_far):
    batch = _batch(gen)
    out = ipo_loss(
        batch["chosen_logps"],
        batch["rejected_logps"],
        batch["ref_chosen_logps"],
        batch["ref_rejected_logps"],
        BETA,
        chosen_lengths=batch["chosen_lengths"],
        rejected_lengths=batch["rejected_lengths"],
        length_normalized=True,
    )
    losses, chosen_rewards, rejected_rewards = ref_daa("ipo", batch, BETA, ipo_length_normalized=True)
    assert_close(out.losses, losses, rtol=0, atol=1e-12)
    # The rewards stay the unnormalised β·log-ratios (as TRL logs them).
    assert_close(out.chosen_rewards, chosen_rewards, rtol=0, atol=1e-12)
    assert_close(out.rejected_rewards, rejected_rewards, rtol=0, atol=1e-12)
    assert_far(out.losses, ref_daa("ipo", batch, BETA)[0])  # the summed (paper) form differs


def test_losses_mutations(gen, assert_far):
    batch = _batch(gen)
    swapped = dict(batch)
    for a, b in (("chosen_logps", "rejected_logps"), ("ref_chosen_logps", "ref_rejected_logps")):
        swapped[a], swapped[b] = batch[b], batch[a]
    swapped["chosen_lengths"], swapped["rejected_lengths"] = batch["rejected_lengths"], batch["chosen_lengths"]
    unit_lengths = dict(batch, chosen_lengths=torch.ones(B), rejected_lengths=torch.ones(B))
    for name in DAA_LOSSES:
        out = _call(name, batch).losses
        assert_far(out, ref_daa(name, swapped, BETA, GAMMA, ETA, alpha=ALPHA)[0])  # chosen / rejected swapped
    # IPO on h instead of Δ; SimPO without γ or without the length normalisation; DPO+NLL's NLL summed.
    assert_far(_call("ipo", batch).losses, [(BETA * d - 0.5 / BETA) ** 2 for d in _deltas(batch)])
    assert_far(_call("simpo", batch).losses, ref_daa("simpo", batch, BETA, 0.0)[0])
    assert_far(_call("simpo", batch).losses, ref_daa("simpo", unit_lengths, BETA, GAMMA)[0])
    assert_far(_call("dpo_nll", batch).losses, ref_daa("dpo_nll", unit_lengths, BETA, alpha=ALPHA)[0])
    # RPO is not the per-token NLL form (the reading of RPO this lab had before): summed, and scaled by β.
    assert_far(_call("rpo", batch).losses, ref_daa("dpo_nll", batch, BETA, alpha=ETA)[0])
    unscaled = [_neg_log_sigmoid(BETA * d) - row[0] * ETA for d, row in zip(_deltas(batch), _rows(batch))]
    assert_far(_call("rpo", batch).losses, unscaled)
    # The reference is used: dropping it changes DPO.
    no_ref = dict(batch, ref_chosen_logps=torch.zeros(B).double(), ref_rejected_logps=torch.zeros(B).double())
    assert_far(_call("dpo", batch).losses, ref_daa("dpo", no_ref, BETA)[0])


def _deltas(batch):
    return [(c - rc) - (r - rr) for c, r, rc, rr, _, _ in _rows(batch)]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(-200.0, 0.0), min_size=4, max_size=4),
    st.integers(1, 64),
    st.integers(1, 64),
    st.floats(0.01, 5.0),
    st.floats(-2.0, 2.0),
    st.floats(0.0, 2.0),
    st.sampled_from(DAA_LOSSES),
)
def test_losses_match_loop_property(logps, chosen_len, rejected_len, beta, gamma, eta, name):
    # eta serves as RPO's η and DPO+NLL's α.
    batch = {k: torch.tensor([v], dtype=torch.float64) for k, v in zip(("chosen_logps", "rejected_logps"), logps)}
    batch["ref_chosen_logps"] = torch.tensor([logps[2]], dtype=torch.float64)
    batch["ref_rejected_logps"] = torch.tensor([logps[3]], dtype=torch.float64)
    batch["chosen_lengths"] = torch.tensor([chosen_len])
    batch["rejected_lengths"] = torch.tensor([rejected_len])
    out = daa_loss(name, **batch, beta=beta, gamma=gamma, eta=eta, alpha=eta)
    expected = ref_daa(name, batch, beta, gamma, eta, alpha=eta)[0][0]
    assert math.isfinite(out.losses.item()) and out.losses.item() >= 0.0
    assert abs(out.losses.item() - expected) <= 1e-12 * max(1.0, abs(expected))


# --- identities -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["rpo", "dpo_nll"])
def test_sft_weight_zero_is_dpo_exactly(gen, name):
    batch = _batch(gen)
    regularised = _call(name, batch, eta=0.0, alpha=0.0)
    dpo = _call("dpo", batch)
    for a, b in zip(regularised, dpo):
        assert torch.equal(a, b)


def test_rpo_gradient_is_dpo_plus_beta_eta_per_chosen_logp(gen, assert_close):
    # d/d log π(y_c) of the SFT term is −β·η for every pair, whatever its length (a sum, not a token mean).
    batch = _batch(gen)
    grads = []
    for eta in (ETA, 0.0):
        chosen = batch["chosen_logps"].clone().requires_grad_(True)
        rpo_loss(chosen, batch["rejected_logps"], batch["ref_chosen_logps"], batch["ref_rejected_logps"], BETA,
                 eta).losses.sum().backward()  # fmt: skip
        grads.append(chosen.grad)
    assert_close(grads[0] - grads[1], torch.full((B,), -BETA * ETA, dtype=torch.float64))


def test_dpo_gradient_at_zero_margin(assert_close):
    # Equal log-ratios: h = 0, where d(-log σ(h))/dh = -1/2, so d loss/d log π_θ(y_c) = -β/2, d/d log π_θ(y_r) = +β/2.
    chosen = torch.tensor([-3.0, -10.0, -0.5], dtype=torch.float64, requires_grad=True)
    rejected = torch.tensor([-4.0, -2.0, -7.5], dtype=torch.float64, requires_grad=True)
    ref_chosen = chosen.detach() + torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64)
    ref_rejected = rejected.detach() + torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64)
    out = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, BETA)
    assert_close(out.losses, [math.log(2.0)] * 3)
    out.losses.sum().backward()
    assert_close(chosen.grad, [-BETA / 2] * 3)
    assert_close(rejected.grad, [BETA / 2] * 3)


def test_ipo_minimum_at_half(assert_close):
    # The minimum of (Δ - 1/(2β))² is at Δ = 1/(2β), i.e. h = 1/2: zero loss, zero derivative, larger both sides.
    offsets = torch.tensor([-0.3, -1e-3, 0.0, 1e-3, 0.3], dtype=torch.float64)
    chosen = (1.0 / (2.0 * BETA) + offsets - 5.0).requires_grad_(True)
    rejected = torch.full((5,), -5.0, dtype=torch.float64)
    zeros = torch.zeros(5, dtype=torch.float64)
    out = ipo_loss(chosen, rejected, zeros, zeros, BETA)
    assert_close(out.chosen_rewards[2] - out.rejected_rewards[2], 0.5)
    assert out.losses[2].item() < 1e-24
    assert (out.losses[[0, 1, 3, 4]] > out.losses[2]).all()
    out.losses.sum().backward()
    assert abs(chosen.grad[2].item()) < 1e-12
    assert chosen.grad[1] < 0 < chosen.grad[3]
    assert_close(chosen.grad, 2.0 * offsets)


def test_simpo_gamma_zero_is_reference_free_dpo(gen, assert_close):
    # Equal lengths L: β·log π/L differences = (β/L)·Δ with π_ref := 1, so SimPO(γ = 0) = DPO(β/L, ref = 0).
    batch = _batch(gen)
    length = 7
    lengths = torch.full((B,), length)
    zeros = torch.zeros(B, dtype=torch.float64)
    simpo = simpo_loss(batch["chosen_logps"], batch["rejected_logps"], lengths, lengths, BETA, 0.0)
    dpo = dpo_loss(batch["chosen_logps"], batch["rejected_logps"], zeros, zeros, BETA / length)
    for a, b in zip(simpo, dpo):
        assert_close(a, b)


def test_hinge_is_zero_beyond_unit_margin(assert_close):
    # h = β·Δ in {1, 1.5, 40}: zero loss and zero gradient; h = 0.5 still pays 1/2.
    deltas = torch.tensor([1.0, 1.5, 40.0, 0.5], dtype=torch.float64) / BETA
    chosen = (deltas - 2.0).requires_grad_(True)
    rejected = torch.full((4,), -2.0, dtype=torch.float64)
    zeros = torch.zeros(4, dtype=torch.float64)
    out = hinge_loss(chosen, rejected, zeros, zeros, BETA)
    assert_close(out.losses, [0.0, 0.0, 0.0, 0.5])
    out.losses.sum().backward()
    assert_close(chosen.grad, [0.0, 0.0, 0.0, -BETA])


def test_dpo_reward_margin_is_h(gen, assert_close):
    batch = _batch(gen)
    out = _call("dpo", batch)
    h = BETA * torch.tensor(_deltas(batch), dtype=torch.float64)
    assert_close(out.chosen_rewards - out.rejected_rewards, h)
    assert_close(out.losses, -torch.nn.functional.logsigmoid(h))


@pytest.mark.parametrize("name", DAA_LOSSES)
def test_gradcheck_and_detached_outputs(gen, name):
    batch = _batch(gen)
    batch = {k: v[:4] for k, v in batch.items()}

    def fn(c, r):
        return daa_loss(name, **dict(batch, chosen_logps=c, rejected_logps=r), beta=BETA, gamma=GAMMA, eta=ETA,
                        alpha=ALPHA).losses  # fmt: skip

    args = (batch["chosen_logps"].clone().requires_grad_(True), batch["rejected_logps"].clone().requires_grad_(True))
    assert torch.autograd.gradcheck(fn, args)
    ref = {k: batch[k].clone().requires_grad_(True) for k in ("ref_chosen_logps", "ref_rejected_logps")}
    out = daa_loss(name, **dict(batch, chosen_logps=args[0], rejected_logps=args[1], **ref), beta=BETA, eta=ETA)
    assert not out.chosen_rewards.requires_grad and not out.rejected_rewards.requires_grad
    out.losses.sum().backward()
    assert all(v.grad is None for v in ref.values())  # the reference is a constant


def test_extreme_margins_stay_finite(assert_close):
    chosen = torch.tensor([0.0, -2000.0], dtype=torch.float64, requires_grad=True)
    rejected = torch.tensor([-2000.0, 0.0], dtype=torch.float64)
    zeros = torch.zeros(2, dtype=torch.float64)
    out = dpo_loss(chosen, rejected, zeros, zeros, 1.0)
    assert_close(out.losses, [0.0, 2000.0])
    out.losses.sum().backward()
    assert_close(chosen.grad, [0.0, -1.0])
    lengths = torch.ones(2, dtype=torch.long)
    assert torch.isfinite(simpo_loss(chosen, rejected, lengths, lengths, 1.0, 0.5).losses).all()


def test_dtype_follows_the_logps(gen):
    batch = _batch(gen)
    batch32 = {k: v.float() if v.is_floating_point() else v for k, v in batch.items()}
    for name in DAA_LOSSES:
        out = daa_loss(name, **batch32, beta=BETA, gamma=GAMMA, eta=ETA, alpha=ALPHA)
        assert all(t.dtype == torch.float32 and t.shape == (B,) for t in out)
        ref = daa_loss(name, **batch, beta=BETA, gamma=GAMMA, eta=ETA, alpha=ALPHA)
        torch.testing.assert_close(out.losses.double(), ref.losses, rtol=1e-5, atol=1e-5)


# --- validation -----------------------------------------------------------------------------------


def test_validation(gen):
    batch = _batch(gen)
    with pytest.raises(ValueError, match="unknown DAA loss 'kto'"):
        daa_loss("kto", **batch, beta=BETA)
    for beta in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="beta must be > 0"):
            daa_loss("dpo", **batch, beta=beta)
        with pytest.raises(ValueError, match="beta must be > 0"):
            _call("simpo", batch, beta=beta)
    for name in ("dpo", "ipo", "rpo", "dpo_nll", "hinge"):
        with pytest.raises(ValueError, match="needs ref_chosen_logps"):
            daa_loss(name, **dict(batch, ref_rejected_logps=None), beta=BETA)
    no_ref = dict(batch, ref_chosen_logps=None, ref_rejected_logps=None)
    daa_loss("simpo", **no_ref, beta=BETA)  # reference-free
    bad_lengths = batch["chosen_lengths"].clone()
    bad_lengths[3] = 0
    with pytest.raises(ValueError, match="chosen_lengths must be >= 1"):
        daa_loss("dpo", **dict(batch, chosen_lengths=bad_lengths), beta=BETA)
    with pytest.raises(ValueError, match="rejected_lengths must be >= 1"):
        _call("simpo", dict(batch, rejected_lengths=bad_lengths))
    for key in batch:
        with pytest.raises(ValueError, match="same shape"):
            daa_loss("rpo", **dict(batch, **{key: batch[key][:-1]}), beta=BETA)
    with pytest.raises(ValueError, match=r"\(B,\)"):
        daa_loss("dpo", **{k: v.unsqueeze(1) for k, v in batch.items()}, beta=BETA)
    with pytest.raises(ValueError, match="at least one"):
        daa_loss("dpo", **{k: v[:0] for k, v in batch.items()}, beta=BETA)
    with pytest.raises(ValueError, match="needs chosen_lengths and rejected_lengths"):
        ipo_loss(*(batch[k] for k in list(batch)[:4]), BETA, length_normalized=True)
    with pytest.raises(ValueError, match="eta must be >= 0"):
        _call("rpo", batch, eta=-0.1)
    with pytest.raises(ValueError, match="alpha must be >= 0"):
        _call("dpo_nll", batch, alpha=float("inf"))
    with pytest.raises(ValueError, match="gamma must be finite"):
        _call("simpo", batch, gamma=float("nan"))


# --- cross-check against TRL ----------------------------------------------------------------------
#
# Written against TRL 1.16.0. There, DPOTrainer has no ``dpo_loss`` method and no ``rpo_alpha``: the
# loss is computed inline in ``DPOTrainer._compute_loss(model, inputs, return_outputs)`` for each entry
# of ``loss_types`` ("sigmoid", "hinge", "ipo", "sft", ...) weighted by ``loss_weights`` and averaged
# over pairs; DPO+NLL is ``loss_types=["sigmoid", "sft"]``, ``loss_weights=[1, α]`` (TRL has no loss of
# Liu et al.'s RPO, which is tested against its authors' code above). We run that method on
# ``object.__new__(DPOTrainer)`` with exactly the attributes it reads (precomputed reference log-probs,
# no ld_alpha / weighting / aux loss, reverse-KL f-divergence) and a stub model whose output carries the
# per-token log-probs (zero off the completion, as TRL's fused LM head returns them), entropy,
# mean_logits and is_top1. SimPO is ``CPOTrainer.cpo_loss`` (trl.experimental.cpo, loss_type "simpo",
# alpha 0, label_smoothing 0), which takes the length-AVERAGED log-probs that its
# ``get_batch_logps(average_log_prob=True)`` produces; it reads beta, loss_type, simpo_gamma,
# label_smoothing, alpha and accelerator.device.

TRL_T = 10  # completion tokens per row (right-padded)


@pytest.fixture(scope="module")
def trl_trainers():
    pytest.importorskip("trl")
    from trl import DPOTrainer
    from trl.experimental.cpo import CPOTrainer

    return DPOTrainer, CPOTrainer


class _Accelerator:
    device = torch.device("cpu")

    def gather(self, x):
        return x

    gather_for_metrics = gather


def _trl_batch(gen, equal_chosen_lengths=False):
    """Per-token policy log-probs (2B, T) with zeros off the completion, lengths, and per-pair reference sums."""
    lengths = torch.randint(1, TRL_T + 1, (2 * B,), generator=gen)
    if equal_chosen_lengths:
        lengths[:B] = 6
    mask = (torch.arange(TRL_T).unsqueeze(0) < lengths.unsqueeze(1)).long()
    token_logps = -2.0 * torch.rand(2 * B, TRL_T, generator=gen, dtype=torch.float64) * mask
    sums = token_logps.sum(dim=1)
    ref = sums + torch.randn(2 * B, generator=gen, dtype=torch.float64)
    ours = {
        "chosen_logps": sums[:B],
        "rejected_logps": sums[B:],
        "ref_chosen_logps": ref[:B],
        "ref_rejected_logps": ref[B:],
        "chosen_lengths": lengths[:B],
        "rejected_lengths": lengths[B:],
    }
    return token_logps, mask, ours


def _trl_dpo(dpo_trainer_cls, token_logps, mask, ours, loss_types, loss_weights, beta):
    """TRL 1.16.0 DPOTrainer._compute_loss on a stub trainer/model; returns (loss, logged metrics)."""
    n, t = token_logps.shape

    class Model:
        training = True

        def __call__(self, **kwargs):
            return types.SimpleNamespace(
                log_probs=token_logps,
                entropy=torch.zeros_like(token_logps),
                mean_logits=torch.zeros_like(token_logps),
                is_top1=torch.zeros(n, t, dtype=torch.bool),
            )

    trainer = object.__new__(dpo_trainer_cls)
    model = Model()
    trainer.__dict__.update(
        model=model,
        accelerator=_Accelerator(),
        beta=beta,
        loss_types=loss_types,
        loss_weights=loss_weights,
        label_smoothing=0.0,
        f_divergence_type="reverse_kl",
        ld_alpha=None,
        precompute_ref_logps=True,
        use_weighting=False,
        aux_loss_enabled=False,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
    )
    # Column 0 is the last prompt token: TRL shifts the completion mask by one for the log-probs
    # (and IPO counts tokens on the unshifted mask, which is the same count here).
    completion_mask = torch.cat([torch.zeros(n, 1, dtype=torch.long), mask], dim=1)
    inputs = {
        "input_ids": torch.zeros(n, t + 1, dtype=torch.long),
        "attention_mask": torch.ones(n, t + 1, dtype=torch.long),
        "completion_mask": completion_mask,
        "ref_chosen_logps": ours["ref_chosen_logps"],
        "ref_rejected_logps": ours["ref_rejected_logps"],
    }
    loss = trainer._compute_loss(model, inputs, return_outputs=False)
    return loss, trainer._metrics["train"]


@pytest.mark.parametrize(
    ("name", "loss_types", "loss_weights"),
    [
        ("dpo", ["sigmoid"], [1.0]),
        ("hinge", ["hinge"], [1.0]),
        ("ipo", ["ipo"], [1.0]),
        ("dpo_nll", ["sigmoid", "sft"], [1.0, ALPHA]),
    ],
)
def test_matches_trl_dpo_trainer(gen, assert_close, trl_trainers, name, loss_types, loss_weights):
    # DPO+NLL: TRL's "sft" term is a token mean over all chosen tokens of the batch, equal to the mean of our
    # per-pair length-normalised NLLs only when the chosen lengths are equal (the rejected ones vary).
    token_logps, mask, ours = _trl_batch(gen, equal_chosen_lengths=name == "dpo_nll")
    loss, metrics = _trl_dpo(trl_trainers[0], token_logps, mask, ours, loss_types, loss_weights, BETA)
    if name == "ipo":
        # TRL's IPO averages each log-ratio over its completion tokens: our length_normalized=True.
        out = ipo_loss(**ours, beta=BETA, length_normalized=True)
        summed = ipo_loss(**ours, beta=BETA).losses.mean()
        assert abs(summed.item() - loss.item()) > 1e-3  # the paper's summed form is not TRL's
    else:
        out = daa_loss(name, **ours, beta=BETA, alpha=ALPHA)
    assert_close(loss, out.losses.mean())
    assert_close(metrics["rewards/chosen"][0], out.chosen_rewards.mean())
    assert_close(metrics["rewards/rejected"][0], out.rejected_rewards.mean())
    assert_close(metrics["rewards/margins"][0], (out.chosen_rewards - out.rejected_rewards).mean())


def test_matches_trl_cpo_simpo(gen, assert_close, trl_trainers):
    cpo_trainer_cls = trl_trainers[1]
    # Build the averaged log-probs with TRL's own helper from logits, so its length convention is tested too.
    vocab = 11
    n = 2 * B
    lengths = torch.randint(1, TRL_T + 1, (n,), generator=gen)
    logits = 3.0 * torch.randn(n, TRL_T + 1, vocab, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, vocab, (n, TRL_T + 1), generator=gen)
    labels[:, 0] = -100  # prompt
    labels[torch.arange(TRL_T + 1).unsqueeze(0) > lengths.unsqueeze(1)] = -100  # padding
    avg = cpo_trainer_cls.get_batch_logps(logits, labels.clone(), average_log_prob=True)
    sums = cpo_trainer_cls.get_batch_logps(logits, labels.clone(), average_log_prob=False)

    trainer = object.__new__(cpo_trainer_cls)
    beta, gamma = 2.0, 1.2
    trainer.__dict__.update(
        beta=beta, loss_type="simpo", simpo_gamma=gamma, label_smoothing=0.0, alpha=0.0, accelerator=_Accelerator()
    )
    losses, chosen_rewards, rejected_rewards = trainer.cpo_loss(avg[:B], avg[B:])
    out = simpo_loss(sums[:B], sums[B:], lengths[:B], lengths[B:], beta, gamma)
    assert_close(out.losses, losses)
    assert_close(out.chosen_rewards, chosen_rewards)
    assert_close(out.rejected_rewards, rejected_rewards)
