"""ValidateAtEnd: a step-counted fit validates its final weights when it ends between two validation steps."""

from __future__ import annotations

import lightning as L
import pytest

from adagrpo.callbacks import ValidateAtEnd
from adagrpo.lightning_modules.policy import LlamaPolicy
from adagrpo.lightning_modules.sft import SFTModule

TINY = dict(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, max_positions=64)


class ValidationSteps(L.Callback):
    def __init__(self) -> None:
        self.steps: list[int] = []

    def on_validation_end(self, trainer, pl_module) -> None:  # noqa: ANN001
        self.steps.append(trainer.global_step)


def fit(dm, end: bool, **trainer_kwargs) -> tuple[list[int], L.Trainer]:
    L.seed_everything(0)
    seen = ValidationSteps()
    callbacks = [seen] + ([ValidateAtEnd()] if end else [])
    trainer = L.Trainer(logger=False, enable_checkpointing=False, accelerator="cpu", enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=1,
                        check_val_every_n_epoch=None, callbacks=callbacks, **trainer_kwargs)
    module = SFTModule(policy=LlamaPolicy(**TINY), beam_width=10, ks=(1, 10), test_unconstrained=False)
    trainer.fit(module, datamodule=dm)
    return seen.steps, trainer


@pytest.mark.parametrize("end", [False, True])
def test_epoch_cap_before_the_first_validation_step(tiny_world_dm, end):
    # the e2e tests' override of a step-counted config: one epoch of two batches, validation every 50 steps
    steps, trainer = fit(tiny_world_dm, end, max_steps=300, val_check_interval=50, max_epochs=1,
                         limit_train_batches=2)
    assert trainer.global_step == 2
    assert steps == ([2] if end else [])
    assert ("val/hr_10" in trainer.callback_metrics) == end


def test_max_steps_between_validation_steps(tiny_world_dm):
    steps, trainer = fit(tiny_world_dm, True, max_steps=5, val_check_interval=2, max_epochs=-1)
    assert trainer.global_step == 5
    assert steps == [2, 4, 5]


def test_no_extra_validation_when_the_last_step_is_a_validation_step(tiny_world_dm):
    steps, _ = fit(tiny_world_dm, True, max_steps=4, val_check_interval=2, max_epochs=-1)
    assert steps == [2, 4]
