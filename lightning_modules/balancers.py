"""Loss balancers: combine the per-sample NLL of the ground truth, the per-sample GRPO loss and the
gates' admission into the scalar that is optimised (DESIGN.md §4 step 8). Selected by ``class_path``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Literal

import torch

from adagrpo.errors import ConfigError
from adagrpo.lightning_modules.diagnostics import Diagnostics


class Balancer(ABC):
    """``combine(nll [B], grpo [B], admission [B], diagnostics) -> (loss, weights)`` where ``weights
    [B]`` is the effective GRPO weight of each sample (for logging)."""

    #: whether the balancer uses the gates' admission (the module warns when gates are attached but ignored)
    uses_gates: bool = True

    @abstractmethod
    def combine(self, nll: torch.Tensor, grpo: torch.Tensor, admission: torch.Tensor,
                diagnostics: Diagnostics) -> tuple[torch.Tensor, torch.Tensor]:
        """The scalar loss and the per-sample GRPO weights."""

    def describe(self) -> str:
        return type(self).__name__


class FixedWeight(Balancer):
    """``mean_b(nll_weight · NLL_b + rl_weight · GRPO_b)``; ignores the gates.

    ``rl_weight = 0`` is continued SFT; ``nll_weight = 0`` is pure GRPO.

    Args:
        nll_weight: weight of the ground truth's NLL (the SFT anchor), >= 0.
        rl_weight: weight of the GRPO term on every sample, >= 0 (λ; not both weights 0).
    """

    uses_gates = False

    def __init__(self, nll_weight: float = 1.0, rl_weight: float = 1.0) -> None:
        if nll_weight < 0 or rl_weight < 0 or nll_weight + rl_weight == 0:
            raise ConfigError("balancer", f"weights must be >= 0 and not both 0, got nll={nll_weight}, rl={rl_weight}")
        self.nll_weight = nll_weight
        self.rl_weight = rl_weight

    def combine(self, nll, grpo, admission, diagnostics):  # noqa: ANN001, ANN201
        weights = torch.full_like(grpo, self.rl_weight)  # [B]
        loss = (self.nll_weight * nll + weights * grpo).mean()
        return loss, weights

    def describe(self) -> str:
        return f"fixed(nll={self.nll_weight:g},rl={self.rl_weight:g})"


class GatedBalance(Balancer):
    """AdaGRPO: NLL on every sample, GRPO only where admitted.

    ``loss = mean_b(nll_weight · NLL_b) + rl_weight · Σ_b a_b GRPO_b / Z`` with ``Z = B`` (``normalize:
    batch``, default: a batch with few admitted samples takes a small RL step) or ``Z = Σ_b a_b``
    (``normalize: admitted``: every admitted sample counts as in pure GRPO).

    Args:
        normalize: divide the admitted GRPO sum by the batch size (``batch``) or by the admitted mass
            (``admitted``).
        nll_weight: weight of the ground truth's NLL, applied to every sample.
        rl_weight: weight of the GRPO term on admitted samples.
    """

    def __init__(self, normalize: Literal["batch", "admitted"] = "batch", nll_weight: float = 1.0,
                 rl_weight: float = 1.0) -> None:
        if normalize not in ("batch", "admitted"):
            raise ConfigError("balancer.normalize", f"must be batch or admitted, got {normalize!r}")
        _check_weights(nll_weight=nll_weight, rl_weight=rl_weight)
        self.normalize = normalize
        self.nll_weight = nll_weight
        self.rl_weight = rl_weight

    def combine(self, nll, grpo, admission, diagnostics):  # noqa: ANN001, ANN201
        b = grpo.shape[0]
        z = admission.sum().clamp_min(1e-8) if self.normalize == "admitted" else torch.tensor(float(b))
        weights = self.rl_weight * admission * (b / z)  # [B], so that mean(weights * grpo) is the RL term
        loss = self.nll_weight * nll.mean() + (weights * grpo).mean()
        return loss, weights

    def describe(self) -> str:
        return f"gated({self.normalize})"


class MarginWeighted(Balancer):
    """A soft alternative: NLL on every sample, GRPO weighted by how clearly the reward model prefers
    the ground truth, ``w_b = a_b · sigmoid((rm_margin_b − center) / temperature)`` (``a_b`` = the gates'
    admission, 1 without gates; NaN margins weigh 0).

    Args:
        center: margin at which the weight is one half.
        temperature: softness (reward units).
        rl_weight: overall scale of the GRPO term.
    """

    def __init__(self, center: float = 0.0, temperature: float = 0.1, rl_weight: float = 1.0) -> None:
        if temperature <= 0:
            raise ConfigError("balancer.temperature", f"must be > 0, got {temperature}")
        _check_weights(rl_weight=rl_weight)
        self.center = center
        self.temperature = temperature
        self.rl_weight = rl_weight

    def combine(self, nll, grpo, admission, diagnostics):  # noqa: ANN001, ANN201
        margin = diagnostics.rm_margin.to(grpo.device)
        soft = torch.sigmoid((margin - self.center) / self.temperature)
        soft = torch.where(torch.isfinite(margin), soft, torch.zeros_like(soft))
        weights = self.rl_weight * admission * soft  # [B]
        return nll.mean() + (weights * grpo).mean(), weights

    def describe(self) -> str:
        return f"margin(c={self.center:g},t={self.temperature:g})"


def _check_weights(**weights: float) -> None:
    """A negative weight would train against the term (e.g. push the ground truth's likelihood down)."""
    for key, value in weights.items():
        if not value >= 0:  # also refuses NaN
            raise ConfigError(f"balancer.{key}", f"must be >= 0, got {value}")
