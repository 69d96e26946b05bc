"""Gates: the plugin point of AdaGRPO. A gate maps rollout diagnostics to a per-sample admission of the
GRPO term (1 = admit, 0 = NLL only; soft gates give values in between). :class:`~adagrpo.lightning_modules.grpo.
GRPOModule` multiplies (ANDs) the admissions of its gates (:func:`combine_gates`).

**Registering a gate** — one way: list it under ``model.init_args.gates`` (by ``class_path``, or by name through
the ``adagrpo.gates`` entry-point group with :class:`PluginGate`). Its running state (quantile thresholds) is
saved in the module's checkpoint. A gate listed under ``trainer.callbacks`` instead is handed to the module when
the fit starts (a warning says to move it) and is saved there too — one state, never a second copy among the
trainer's callback states; under a module that takes no gates it is refused with a message naming the key.

Gates stay Lightning ``Callback`` subclasses only so that such a ``trainer.callbacks`` entry is accepted and
delegated. They live here, beside the module that calls them; ``adagrpo.callbacks`` and
``adagrpo.callbacks.gates`` re-export every name for existing configs and plugins.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from typing import Any, Literal

import torch
from lightning.pytorch.callbacks import Callback

from adagrpo.errors import ConfigError
from adagrpo.lightning_modules.diagnostics import Diagnostics

ENTRY_POINT_GROUP = "adagrpo.gates"


class Gate(Callback, ABC):
    """Base class. Subclasses implement :meth:`admit`.

    Args:
        name: labels the gate's logged open rate and its saved state (default: the class name).
    """

    def __init__(self, name: str | None = None) -> None:
        super().__init__()
        self.name = name or type(self).__name__

    @abstractmethod
    def admit(self, diagnostics: Diagnostics) -> torch.Tensor:
        """Admission per sample ``[B]`` in [0, 1]."""

    def observe(self, diagnostics: Diagnostics) -> None:
        """Called once per training rollout after :meth:`admit` (update running statistics here)."""

    @property
    def state_key(self) -> str:
        return f"{type(self).__name__}[{self.name}]"

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        """Lightning hook, reached only by a gate listed under ``trainer.callbacks``: a module that takes gates
        adopts it in its own ``setup`` (right after this hook); any other module cannot use it."""
        if not hasattr(pl_module, "adopt_gates"):
            raise ConfigError("trainer.callbacks", f"gate {self.name!r} ({type(self).__name__}) is listed, but "
                                                   f"{type(pl_module).__name__} takes no gates; remove it (gates "
                                                   "belong under model.init_args.gates of a GRPOModule)")


class ThresholdGate(Gate):
    """A gate on one diagnostic compared with a threshold that is fixed or a running quantile.

    Args:
        signal: which diagnostic (subclasses define the allowed names and directions).
        threshold: the fixed threshold (ignored when ``quantile`` is set).
        quantile: if set, the threshold is this quantile of the signal over the last ``window`` training
            samples (kept in checkpoints); until ``warmup`` samples are seen, ``threshold`` is used.
        window: samples in the running window.
        warmup: samples needed before the running quantile replaces the fixed threshold.
        soft_temperature: if set, the gate is soft: ``sigmoid(±(signal - threshold) / temperature)``.
        name: label for logging.
    """

    #: signal name → +1 if large values pass ("admit when signal >= threshold"), -1 if small values pass.
    SIGNALS: dict[str, tuple[str, int]] = {}

    def __init__(
        self,
        signal: str,
        threshold: float,
        quantile: float | None = None,
        window: int = 4096,
        warmup: int = 256,
        soft_temperature: float | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name)
        if signal not in self.SIGNALS:
            raise ConfigError(f"{type(self).__name__}.signal", f"{signal!r} is not one of {sorted(self.SIGNALS)}")
        if quantile is not None and not 0 < quantile < 1:
            raise ConfigError(f"{type(self).__name__}.quantile", f"must be in (0, 1), got {quantile}")
        if soft_temperature is not None and soft_temperature <= 0:
            raise ConfigError(f"{type(self).__name__}.soft_temperature", f"must be > 0, got {soft_temperature}")
        self.signal = signal
        self.field, self.direction = self.SIGNALS[signal]
        self.fixed_threshold = float(threshold)
        self.quantile = quantile
        self.window = window
        self.warmup = warmup
        self.soft_temperature = soft_temperature
        self.history: deque[float] = deque(maxlen=window)

    def threshold(self) -> float:
        if self.quantile is None or len(self.history) < self.warmup:
            return self.fixed_threshold
        values = torch.tensor(list(self.history), dtype=torch.float64)
        return float(torch.quantile(values, self.quantile))

    def admit(self, diagnostics: Diagnostics) -> torch.Tensor:
        x = diagnostics.get(self.field).float()
        thr = self.threshold()
        finite = torch.isfinite(x)
        if self.soft_temperature is not None:
            gate = torch.sigmoid(self.direction * (x - thr) / self.soft_temperature)
        else:
            gate = ((x >= thr) if self.direction > 0 else (x <= thr)).float()
        return torch.where(finite, gate, torch.zeros_like(gate))  # an undefined signal never admits

    def observe(self, diagnostics: Diagnostics) -> None:
        if self.quantile is not None:
            x = diagnostics.get(self.field).detach().float().cpu()
            self.history.extend(x[torch.isfinite(x)].tolist())

    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history), "threshold": self.threshold()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = deque(state_dict.get("history", []), maxlen=self.window)


class PolicyDifficultyGate(ThresholdGate):
    """Admits samples where the policy is uncertain about the ground truth.

    Signals: ``gt_rank`` (admit when y*'s rank in the group ≥ threshold; default 2 = "y* is not the
    policy's top-1"), ``gt_prob`` (admit when π(y*|x) ≤ threshold), ``entropy`` (admit when the group's
    entropy ≥ threshold), ``band`` (threshold 1: admit when y* is in the group but not the policy's top-1 —
    uncertain, yet close enough that the group's comparison is about y*). See :class:`ThresholdGate` for the
    other arguments.
    """

    SIGNALS = {"gt_rank": ("gt_rank", +1), "gt_prob": ("gt_prob", -1), "entropy": ("entropy", +1),
               "band": ("gt_band", +1)}

    def __init__(self, signal: Literal["gt_rank", "gt_prob", "entropy", "band"] = "gt_rank", threshold: float = 2.0,
                 quantile: float | None = None, window: int = 4096, warmup: int = 256,
                 soft_temperature: float | None = None, name: str | None = "difficulty") -> None:
        super().__init__(signal, threshold, quantile, window, warmup, soft_temperature, name)


class RewardDiscriminabilityGate(ThresholdGate):
    """Admits samples where the reward model tells the ground truth from the rollout's negatives.

    Signals: ``auc`` (admit when the share of negatives scored below r* ≥ threshold; default 0.8),
    ``margin`` (admit when r* − best negative ≥ threshold), ``rank`` (admit when r*'s rank among the
    negatives ≤ threshold), ``relative`` (admit when the policy's rank of y* minus the reward model's rank of
    y* ≥ threshold; threshold 1 = "the reward model puts y* higher than the policy does"). See
    :class:`ThresholdGate` for the other arguments.
    """

    SIGNALS = {"auc": ("rm_auc", +1), "margin": ("rm_margin", +1), "rank": ("rm_rank", -1),
               "relative": ("rm_gain", +1)}

    def __init__(self, signal: Literal["auc", "margin", "rank", "relative"] = "auc", threshold: float = 0.8,
                 quantile: float | None = None, window: int = 4096, warmup: int = 256,
                 soft_temperature: float | None = None, name: str | None = "discriminability") -> None:
        super().__init__(signal, threshold, quantile, window, warmup, soft_temperature, name)


class OracleGate(Gate):
    """The ceiling of any diagnostic gate, for the synthetic world only: admits a sample exactly when the reward
    model orders its rollout group more like the true utility than the policy does (``rm_concordance >
    policy_concordance + margin``; see :func:`~adagrpo.lightning_modules.diagnostics.concordance`). It reads the
    truth, so no real system can run it; it bounds what a gate that reads only rollout diagnostics can gain.

    Args:
        margin: how much better than the policy the reward model must order the group.
        name: label for logging.
    """

    def __init__(self, margin: float = 0.0, name: str | None = "oracle") -> None:
        super().__init__(name)
        self.margin = float(margin)

    def admit(self, diagnostics: Diagnostics) -> torch.Tensor:
        rm, pol = diagnostics.rm_concordance.float(), diagnostics.policy_concordance.float()
        if not torch.isfinite(rm).any() and not torch.isfinite(pol).any():
            raise ConfigError("OracleGate", "the diagnostics carry no truth: the oracle gate needs the synthetic "
                                            "world as data.source")
        ok = torch.isfinite(rm) & torch.isfinite(pol)
        return (ok & (rm > pol + self.margin)).float()


class PluginGate(Gate):
    """A gate found by name in the ``adagrpo.gates`` entry-point group (installed by another package).

    Args:
        entry_point: the entry point's name.
        init_args: keyword arguments for the gate class.
        name: label for logging (default: the entry point's name).
    """

    def __init__(self, entry_point: str, init_args: dict[str, Any] | None = None, name: str | None = None) -> None:
        super().__init__(name or entry_point)
        cls = load_gate_class(entry_point)
        self.inner = cls(**(init_args or {}))
        if not isinstance(self.inner, Gate):
            raise ConfigError("PluginGate.entry_point", f"{entry_point!r} loads {cls!r}, which is not a Gate")

    def admit(self, diagnostics: Diagnostics) -> torch.Tensor:
        return self.inner.admit(diagnostics)

    def observe(self, diagnostics: Diagnostics) -> None:
        self.inner.observe(diagnostics)

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.inner.load_state_dict(state_dict)


def available_gates() -> dict[str, str]:
    """Entry points in the ``adagrpo.gates`` group: name → ``module:attr``."""
    from importlib.metadata import entry_points

    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def load_gate_class(name: str) -> type:
    from importlib.metadata import entry_points

    matches = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    if not matches:
        raise ConfigError("PluginGate.entry_point", f"no gate named {name!r} in entry-point group "
                                                    f"{ENTRY_POINT_GROUP!r} (installed: {sorted(available_gates())})")
    return matches[0].load()


def combine_gates(gates: list[Gate], diagnostics: Diagnostics) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """AND (multiply) the admissions of ``gates``; returns ``(admission [B], per-gate admissions)``."""
    b = len(diagnostics)
    admission = torch.ones(b, device=diagnostics.gt_rank.device)
    each = {}
    for gate in gates:
        a = gate.admit(diagnostics).to(admission.device).float()
        if a.shape != (b,):
            raise ValueError(f"gate {gate.name!r} returned shape {tuple(a.shape)}, expected ({b},)")
        each[gate.name] = a
        admission = admission * a
    return admission, each
