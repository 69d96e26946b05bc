"""``adagrpo calibrate``: does a synthetic world express AdaGRPO's premise? (see
:mod:`adagrpo.lightning_modules.calibration`)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def reward_from_spec(spec: str):  # noqa: ANN201
    """A :class:`~adagrpo.lightning_modules.reward.RewardModel` from a ``.ckpt`` path (a trained reward model), a
    YAML file, or an inline YAML mapping with ``class_path``/``init_args`` (e.g. a ``NoisyReward``)."""
    import yaml
    from jsonargparse import ArgumentParser

    from adagrpo.errors import ConfigError
    from adagrpo.lightning_modules.reward import RewardModel, TrainedReward

    if spec.endswith(".ckpt"):
        return TrainedReward(checkpoint=spec)
    path = Path(spec)
    text = path.read_text() if path.suffix in (".yaml", ".yml") and path.is_file() else spec
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError("--reward", f"not a checkpoint, YAML file or YAML mapping: {err}") from None
    if not isinstance(value, dict) or "class_path" not in value:
        raise ConfigError("--reward", f"expected a .ckpt, or a mapping with class_path, got {spec!r}")
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(RewardModel, "reward", required=True)
    try:
        cfg = parser.parse_object({"reward": value})
    except Exception as err:  # jsonargparse names the key at fault
        raise ConfigError("--reward", str(err).splitlines()[0]) from None
    return parser.instantiate_classes(cfg).reward


def cmd_calibrate(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="adagrpo calibrate",
        description="Measure whether a synthetic world expresses AdaGRPO's premise before spending RL compute on it: "
        "the information gap (oracle, ideal imitator, SFT, reward as recommender), reward-vs-policy concordance with "
        "the truth inside the policy's beams by pre-outcome stratum, and gate pass rates with the oracle reward.")
    parser.add_argument("--data", required=True, help="a synthetic data config, e.g. configs/data/synthetic_rl.yaml")
    parser.add_argument("--sft", default=None, help="SFT (or any policy) checkpoint: beams, SFT true HR@10")
    parser.add_argument("--reward", default=None, help="reward: a reward-model .ckpt, or a YAML mapping/file with "
                        "class_path, e.g. \"{class_path: adagrpo.lightning_modules.NoisyReward, init_args: "
                        "{noise: 0.1, noise_on: tail}}\"")
    parser.add_argument("--users", type=int, default=1000, help="test events measured (seeded subset)")
    parser.add_argument("--group", type=int, default=16, help="beams per prompt (G)")
    parser.add_argument("--imitator-samples", type=int, default=128, help="Monte Carlo slates per event")
    parser.add_argument("--auc-threshold", type=float, default=0.8)
    parser.add_argument("--difficulty-rank", type=float, default=2.0)
    parser.add_argument("--json", default=None, help="also write the report as JSON here")
    args, overrides = parser.parse_known_args(argv)
    import torch

    from adagrpo.data_loading import load_datamodule
    from adagrpo.errors import ConfigError, DataError
    from adagrpo.lightning_modules.analysis import load_policy
    from adagrpo.lightning_modules.base import IncompatibleCheckpoint
    from adagrpo.lightning_modules.calibration import calibrate, format_calibration

    torch.set_grad_enabled(False)
    start = time.perf_counter()
    try:
        dm = load_datamodule(args.data, overrides)
        dm.prepare()
        sft = load_policy(args.sft, dm) if args.sft else None
        reward = reward_from_spec(args.reward) if args.reward else None
        report = calibrate(dm, sft, reward, max_users=args.users, group=args.group,
                           imitator_samples=args.imitator_samples, auc_threshold=args.auc_threshold,
                           difficulty_rank=args.difficulty_rank)
    except (ConfigError, DataError, IncompatibleCheckpoint) as err:
        print(f"adagrpo calibrate: {err}", file=sys.stderr)
        return 2
    report.settings.update({"data": args.data, "sft": args.sft, "reward": args.reward,
                            "seconds": round(time.perf_counter() - start, 1)})
    print(format_calibration(report, f"{args.data}" + (f" + {args.reward}" if args.reward else "")))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report.to_json(), indent=2))
    return 0
