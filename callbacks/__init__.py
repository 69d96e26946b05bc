"""Callbacks: gates (the plugin point of AdaGRPO), run recording and reporting."""

from __future__ import annotations

import importlib

_EXPORTS = {
    "RunRecorder": "adagrpo.callbacks.run_recorder",
    "StepMetricsRecorder": "adagrpo.callbacks.metrics_recorder",
    "Gate": "adagrpo.callbacks.gates",
    "ThresholdGate": "adagrpo.callbacks.gates",
    "PolicyDifficultyGate": "adagrpo.callbacks.gates",
    "RewardDiscriminabilityGate": "adagrpo.callbacks.gates",
    "PluginGate": "adagrpo.callbacks.gates",
    "OracleGate": "adagrpo.callbacks.gates",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'callbacks' has no attribute {name!r}")
