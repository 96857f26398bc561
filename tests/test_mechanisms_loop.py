"""overopt.mechanisms on constructed cases with known answers: proxy == gold, proxy == −gold, and an
ensemble whose disagreement is exactly its error."""

from __future__ import annotations

import torch

from overopt.mechanisms import evaluation_figures, sft_reference, training_figures
from overopt.mitigations.protocols import RewardScores
from overopt.sampling import Rollout
from overopt.stages.evaluate import EvalSamples


class GoldIs:
    """A stand-in testbed whose gold reward of row i is gold[i]."""

    def __init__(self, gold: torch.Tensor):
        self.gold = gold

    def gold_components(self, prompt_ids, completion_ids, completion_mask):
        return {"gold": self.gold}

    def gold_from_components(self, components):
        return components["gold"]


def _rollout(b: int) -> Rollout:
    ids = torch.arange(b).unsqueeze(1)
    return Rollout(ids, torch.ones_like(ids), ids, torch.ones_like(ids))


def test_training_flips_are_zero_for_a_perfect_proxy_and_total_for_an_inverted_one():
    gen = torch.Generator().manual_seed(0)
    gold = torch.randn(16, generator=gen)
    hidden, head = torch.randn(16, 5, generator=gen), torch.randn(5, generator=gen)
    same = training_figures(GoldIs(gold), 4, _rollout(16), RewardScores(gold, hidden, head))
    assert same["mech/sign_flip_rate"] == 0.0 and same["mech/sign_flip_mass"] == 0.0
    assert "mech/radius_auroc" not in same  # no flips: the AUROC is undefined, so it is not logged
    inverted = training_figures(GoldIs(gold), 4, _rollout(16), RewardScores(-gold))
    assert inverted["mech/sign_flip_rate"] == 1.0 and "mech/radius_auroc" not in inverted  # no linear head
    # A proxy equal to gold except in one group, where it is inverted: flips only there; with the head
    # w = e1 and h = (proxy, noise...), the radius |A|/‖d‖ is small exactly where |A| is small.
    proxy = gold.clone()
    proxy[:4] = -gold[:4]
    mixed = training_figures(GoldIs(gold), 4, _rollout(16), RewardScores(proxy, hidden, head))
    assert mixed["mech/sign_flip_rate"] == 0.25 and 0 <= mixed["mech/radius_auroc"] <= 1


def _samples(proxy, gold, members=None):
    return EvalSamples([], torch.as_tensor(proxy).double(), torch.as_tensor(gold).double(), members)


def test_evaluation_accuracy_and_disagreement_error_correlation():
    gold = torch.tensor([0.0, 1.0, 2.0, 3.0, 1.0, 0.0, 3.0, 2.0])  # pairs (i, i + 4)
    assert evaluation_figures(_samples(gold, gold), None)["mech/proxy_accuracy"] == 1.0
    assert evaluation_figures(_samples(-gold, gold), None)["mech/proxy_accuracy"] == 0.0
    # Standardised on SFT samples (here: the same ones), the proxy's error |z(proxy) − z(gold)| is made
    # the members' std exactly, so the correlation is 1.
    proxy = gold + torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5])
    reference = sft_reference(_samples(proxy, gold))
    z_err = ((proxy - reference["proxy_mean"]) / reference["proxy_std"]) - (
        (gold - reference["gold_mean"]) / reference["gold_std"]
    )
    members = torch.stack([proxy - z_err.abs(), proxy + z_err.abs()]).double()  # population std = |error|
    figures = evaluation_figures(_samples(proxy, gold, members), reference)
    assert abs(figures["mech/disagreement_error_corr"] - 1.0) < 1e-12
    assert "mech/disagreement_error_corr" not in evaluation_figures(_samples(proxy, gold), reference)
