"""Models and training logic: policy specs, the decoding engine, SFT, reward models, GRPO/AdaGRPO,
balancers, gates and metrics. Classes are importable from the package root for short ``class_path``s."""

from __future__ import annotations

import importlib

_EXPORTS = {
    "PolicySpec": "adagrpo.lightning_modules.policy",
    "LlamaPolicy": "adagrpo.lightning_modules.policy",
    "Qwen2Policy": "adagrpo.lightning_modules.policy",
    "PretrainedPolicy": "adagrpo.lightning_modules.policy",
    "DecodingConfig": "adagrpo.lightning_modules.decoding",
    "DecodingEngine": "adagrpo.lightning_modules.decoding",
    "Candidates": "adagrpo.lightning_modules.decoding",
    "SFTModule": "adagrpo.lightning_modules.sft",
    "WarmupCosine": "adagrpo.lightning_modules.schedules",
    "RankingMetrics": "adagrpo.lightning_modules.metrics",
    "RewardModelModule": "adagrpo.lightning_modules.reward",
    "RewardNet": "adagrpo.lightning_modules.reward",
    "RewardModel": "adagrpo.lightning_modules.reward",
    "TrainedReward": "adagrpo.lightning_modules.reward",
    "TorchReward": "adagrpo.lightning_modules.reward",
    "OracleReward": "adagrpo.lightning_modules.reward",
    "NoisyReward": "adagrpo.lightning_modules.reward",
    "GRPOModule": "adagrpo.lightning_modules.grpo",
    "Balancer": "adagrpo.lightning_modules.balancers",
    "FixedWeight": "adagrpo.lightning_modules.balancers",
    "GatedBalance": "adagrpo.lightning_modules.balancers",
    "MarginWeighted": "adagrpo.lightning_modules.balancers",
    "HallucinationRate": "adagrpo.lightning_modules.metrics",
    "Gate": "adagrpo.lightning_modules.gating",
    "ThresholdGate": "adagrpo.lightning_modules.gating",
    "PolicyDifficultyGate": "adagrpo.lightning_modules.gating",
    "RewardDiscriminabilityGate": "adagrpo.lightning_modules.gating",
    "OracleGate": "adagrpo.lightning_modules.gating",
    "PluginGate": "adagrpo.lightning_modules.gating",
    "combine_gates": "adagrpo.lightning_modules.gating",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lightning_modules' has no attribute {name!r}")
