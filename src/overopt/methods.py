"""Methods as users type them (`--methods none,kl`): each resolves to the RL settings it runs with.

Mitigations plug in here through explicit settings of the RL stage, never through string checks
inside the training loop.
"""

from __future__ import annotations

from collections.abc import Callable

from overopt.config import RLConfig


def _none(rl: RLConfig) -> RLConfig:
    """Plain optimisation of the proxy reward: no KL regularisation at all."""
    return rl.model_copy(update={"kl": rl.kl.model_copy(update={"coef": 0.0})})


def _kl(rl: RLConfig) -> RLConfig:
    """KL penalty to the SFT policy with the configured coefficient, estimator and placement."""
    if rl.kl.coef <= 0:
        raise ValueError("method 'kl' needs rl.kl.coef > 0")
    return rl


METHODS: dict[str, Callable[[RLConfig], RLConfig]] = {"none": _none, "kl": _kl}


def resolve_method(name: str, rl: RLConfig) -> RLConfig:
    """The RL configuration that method `name` runs with; unknown names raise ValueError."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(METHODS)}")
    return METHODS[name](rl)
