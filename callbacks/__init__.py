"""Callbacks: gates (the plugin point of AdaGRPO), run recording and reporting."""

from __future__ import annotations

import importlib

_EXPORTS = {
    "RunRecorder": "callbacks.run_recorder",
    "StepMetricsRecorder": "callbacks.metrics_recorder",
    "Gate": "callbacks.gates",
    "ThresholdGate": "callbacks.gates",
    "PolicyDifficultyGate": "callbacks.gates",
    "RewardDiscriminabilityGate": "callbacks.gates",
    "PluginGate": "callbacks.gates",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'callbacks' has no attribute {name!r}")
