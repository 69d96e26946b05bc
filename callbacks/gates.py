"""Gates moved to :mod:`adagrpo.lightning_modules.gating`, beside the module that calls them; every name is
re-exported here (the same objects) so ``class_path: adagrpo.callbacks.gates.<Gate>`` and
``from adagrpo.callbacks.gates import Gate`` in configs and plugins keep working."""

from __future__ import annotations

from adagrpo.lightning_modules.gating import (
    ENTRY_POINT_GROUP,
    Gate,
    OracleGate,
    PluginGate,
    PolicyDifficultyGate,
    RewardDiscriminabilityGate,
    ThresholdGate,
    available_gates,
    combine_gates,
    load_gate_class,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "Gate",
    "OracleGate",
    "PluginGate",
    "PolicyDifficultyGate",
    "RewardDiscriminabilityGate",
    "ThresholdGate",
    "available_gates",
    "combine_gates",
    "load_gate_class",
]
