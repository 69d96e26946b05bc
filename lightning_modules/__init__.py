"""Models and training logic: policy specs, the decoding engine, SFT, reward models, GRPO/AdaGRPO,
balancers and metrics. Classes are importable from the package root for short ``class_path``s."""

from __future__ import annotations

import importlib

_EXPORTS = {
    "PolicySpec": "lightning_modules.policy",
    "LlamaPolicy": "lightning_modules.policy",
    "Qwen2Policy": "lightning_modules.policy",
    "PretrainedPolicy": "lightning_modules.policy",
    "DecodingConfig": "lightning_modules.decoding",
    "DecodingEngine": "lightning_modules.decoding",
    "Candidates": "lightning_modules.decoding",
    "SFTModule": "lightning_modules.sft",
    "WarmupCosine": "lightning_modules.schedules",
    "RankingMetrics": "lightning_modules.metrics",
    "RewardModelModule": "lightning_modules.reward",
    "RewardNet": "lightning_modules.reward",
    "RewardModel": "lightning_modules.reward",
    "TrainedReward": "lightning_modules.reward",
    "TorchReward": "lightning_modules.reward",
    "OracleReward": "lightning_modules.reward",
    "NoisyReward": "lightning_modules.reward",
    "GRPOModule": "lightning_modules.grpo",
    "Balancer": "lightning_modules.balancers",
    "FixedWeight": "lightning_modules.balancers",
    "GatedBalance": "lightning_modules.balancers",
    "MarginWeighted": "lightning_modules.balancers",
    "HallucinationRate": "lightning_modules.metrics",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lightning_modules' has no attribute {name!r}")
