"""Callbacks: run recording, per-step metric records and a validation after the last step. The gates
(AdaGRPO's plugin point) live in :mod:`adagrpo.lightning_modules.gating` and are re-exported here, so
``adagrpo.callbacks.PolicyDifficultyGate`` and ``from adagrpo.callbacks import Gate`` keep working."""

from __future__ import annotations

import importlib

_EXPORTS = {
    "RunRecorder": "adagrpo.callbacks.run_recorder",
    "StepMetricsRecorder": "adagrpo.callbacks.metrics_recorder",
    "ValidateAtEnd": "adagrpo.callbacks.final_validation",
    "Gate": "adagrpo.lightning_modules.gating",
    "ThresholdGate": "adagrpo.lightning_modules.gating",
    "PolicyDifficultyGate": "adagrpo.lightning_modules.gating",
    "RewardDiscriminabilityGate": "adagrpo.lightning_modules.gating",
    "PluginGate": "adagrpo.lightning_modules.gating",
    "OracleGate": "adagrpo.lightning_modules.gating",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'callbacks' has no attribute {name!r}")
