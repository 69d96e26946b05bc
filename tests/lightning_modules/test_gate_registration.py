"""Gates live in lightning_modules/gating.py, beside GRPOModule; one way to register them (model.init_args.gates),
one saved state. A gate listed under trainer.callbacks is moved into the module at setup (its state is then saved
only in the module's checkpoint); under a module that takes no gates it is refused naming the key to change.
The old import paths (adagrpo.callbacks, adagrpo.callbacks.gates) give the same classes."""

from __future__ import annotations

import lightning as L
import pytest
import yaml
from grpo_helpers import TINY, quiet_trainer
from jsonargparse import ArgumentParser

from adagrpo.errors import ConfigError
from adagrpo.lightning_modules import gating
from adagrpo.lightning_modules.base import CKPT_KEY
from adagrpo.lightning_modules.checkpoint_io import load_checkpoint
from adagrpo.lightning_modules.grpo import GRPOModule
from adagrpo.lightning_modules.policy import LlamaPolicy
from adagrpo.lightning_modules.reward import OracleReward
from adagrpo.lightning_modules.sft import SFTModule


def quantile_gate(name: str) -> gating.PolicyDifficultyGate:
    # a running-quantile gate: its state (the window of seen signals) grows with every rollout
    return gating.PolicyDifficultyGate(signal="gt_rank", quantile=0.5, warmup=1, name=name)


def test_old_import_paths_give_the_same_classes():
    import adagrpo.callbacks as cb
    import adagrpo.callbacks.gates as old
    import adagrpo.lightning_modules as lm

    for name in ("Gate", "ThresholdGate", "PolicyDifficultyGate", "RewardDiscriminabilityGate", "OracleGate",
                 "PluginGate"):
        assert getattr(cb, name) is getattr(old, name) is getattr(lm, name) is getattr(gating, name), name
    assert old.combine_gates is gating.combine_gates and old.ENTRY_POINT_GROUP == gating.ENTRY_POINT_GROUP
    # a YAML class_path of the old place still builds the gate
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--gate", type=gating.Gate)
    for path in ("adagrpo.callbacks.gates.PolicyDifficultyGate", "adagrpo.callbacks.PolicyDifficultyGate",
                 "adagrpo.lightning_modules.PolicyDifficultyGate"):
        cfg = parser.parse_string(yaml.safe_dump({"gate": {"class_path": path, "init_args": {"threshold": 3}}}))
        gate = parser.instantiate_classes(cfg).gate
        assert type(gate) is gating.PolicyDifficultyGate and gate.fixed_threshold == 3.0


def test_trainer_callback_gate_is_moved_into_the_module_and_saved_once(rl_dm, sft_ckpt, tmp_path):
    L.seed_everything(0)
    module_gate, listed_gate = quantile_gate("difficulty"), quantile_gate("difficulty")
    g = GRPOModule(init_from=sft_ckpt, reward=OracleReward(), num_generations=4, gates=[module_gate])
    trainer = quiet_trainer(max_steps=2, callbacks=[listed_gate])
    trainer.fit(g, datamodule=rl_dm)
    assert not any(isinstance(cb, gating.Gate) for cb in trainer.callbacks)  # no second, callback-held state
    assert g.module_gates == [module_gate, listed_gate]
    assert listed_gate.name == "difficulty2"  # renamed: separate state and open rate
    assert "gate/difficulty2/open_rate" in trainer.callback_metrics
    assert len(listed_gate.history) == 2 * len(next(iter(rl_dm.train_dataloader())))  # it observed both rollouts
    path = tmp_path / "grpo.ckpt"
    trainer.save_checkpoint(path)
    ckpt = load_checkpoint(path)  # weights_only: the gates' state is plain values
    saved = ckpt[CKPT_KEY]["gates"]
    assert set(saved) == {module_gate.state_key, listed_gate.state_key}
    assert saved[listed_gate.state_key]["history"] == list(listed_gate.history)
    assert not any("Gate[" in key for key in ckpt.get("callbacks", {}))
    # restored from the module's checkpoint into a module configured the documented way
    fresh = [quantile_gate("difficulty"), quantile_gate("difficulty2")]
    h = GRPOModule(init_from=sft_ckpt, reward=OracleReward(), num_generations=4, gates=fresh)
    h.on_load_checkpoint(ckpt)
    assert [list(x.history) for x in fresh] == [list(module_gate.history), list(listed_gate.history)]


def test_checkpoint_with_a_callback_held_gate_state_still_restores(sft_ckpt):
    # Checkpoints written before the move kept a trainer-callback gate's state under checkpoint["callbacks"].
    gate = quantile_gate("cb")
    g = GRPOModule(init_from=sft_ckpt, reward=OracleReward(), num_generations=4, gates=[gate])
    g.on_load_checkpoint({CKPT_KEY: {"gates": {}}, "callbacks": {gate.state_key: {"history": [1.0, 3.0]}}})
    assert list(gate.history) == [1.0, 3.0]


def test_gate_under_trainer_callbacks_of_a_module_without_gates_is_refused(tiny_world_dm):
    module = SFTModule(policy=LlamaPolicy(**TINY))
    trainer = quiet_trainer(max_steps=1, callbacks=[gating.PolicyDifficultyGate()])
    with pytest.raises(ConfigError, match="trainer.callbacks") as err:
        trainer.fit(module, datamodule=tiny_world_dm)
    assert "model.init_args.gates" in str(err.value) and "SFTModule" in str(err.value)


def test_module_refuses_a_non_gate(sft_ckpt):
    with pytest.raises(ConfigError, match="model.gates"):
        GRPOModule(init_from=sft_ckpt, reward=OracleReward(), gates=[object()])
