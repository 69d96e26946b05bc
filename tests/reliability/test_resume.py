"""Resume that works: the training loader keeps the plain DataLoader's order, and a fit resumed from a mid-epoch
periodic checkpoint ends with exactly the parameters of an uninterrupted fit (SFT and GRPO)."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from reliability_helpers import TINY
from tiny_world import quiet_trainer

from adagrpo.callbacks.run_recorder import RESUME_CKPT, RunRecorder
from adagrpo.datamodules.resumable import ResumableLoader
from adagrpo.lightning_modules.grpo import GRPOModule
from adagrpo.lightning_modules.policy import LlamaPolicy
from adagrpo.lightning_modules.reward import OracleReward
from adagrpo.lightning_modules.sft import SFTModule


class Crash(L.Callback):
    """Raises at the end of global step ``at`` (a stand-in for a killed process: nothing runs after it)."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.at:
            raise KeyboardInterrupt  # Lightning stops the fit; on_fit_end does not run


def _params(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.policy.state_dict().items()}


def _fit_sft(dm, tmp_path, steps, crash=None, ckpt_path=None, record="rec", **trainer_kwargs):
    L.seed_everything(0)
    module = SFTModule(policy=LlamaPolicy(**TINY), optimizer=lambda p: torch.optim.AdamW(p, lr=3e-3))
    callbacks = [RunRecorder(record_dir=str(tmp_path / record), every_n_train_steps=3)]
    if crash is not None:
        callbacks.append(Crash(crash))
    trainer = quiet_trainer(max_steps=steps, callbacks=callbacks, **trainer_kwargs)
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    return module, trainer


def test_training_loader_is_resumable_and_keeps_the_plain_order(tiny_world_dm, tmp_path, monkeypatch):
    trainer = quiet_trainer(max_steps=1)
    tiny_world_dm.trainer = trainer
    assert isinstance(tiny_world_dm.train_dataloader(), ResumableLoader)
    tiny_world_dm.trainer = None
    resumable, _ = _fit_sft(tiny_world_dm, tmp_path, 14, limit_train_batches=5)  # 3 epochs, partial
    monkeypatch.setattr(type(tiny_world_dm), "_resumable", lambda self: False)
    plain, _ = _fit_sft(tiny_world_dm, tmp_path, 14, limit_train_batches=5, record="rec2")
    a, b = _params(resumable), _params(plain)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("limit", [5, 1.0])
def test_sft_resumed_mid_epoch_equals_uninterrupted(tiny_world_dm, tmp_path, limit):
    steps = 14 if limit == 5 else len(tiny_world_dm.train_dataloader()) + 4  # into the second epoch
    full, _ = _fit_sft(tiny_world_dm, tmp_path / "full", steps, limit_train_batches=limit)
    crash_at = 7 if limit == 5 else steps - 2
    with pytest.raises(SystemExit):  # Lightning turns the interrupt into SystemExit
        _fit_sft(tiny_world_dm, tmp_path / "killed", steps, crash=crash_at, limit_train_batches=limit)
    ckpt = tmp_path / "killed" / "rec" / RESUME_CKPT
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    # limit 5: saved at step 6, one batch into the second epoch; full epochs: saved after the first epoch's last batch
    assert saved["global_step"] == crash_at // 3 * 3
    resumed, trainer = _fit_sft(tiny_world_dm, tmp_path / "killed", steps, ckpt_path=str(ckpt),
                                limit_train_batches=limit)
    assert trainer.global_step == steps
    a, b = _params(full), _params(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed parameters differ from the uninterrupted fit"


@pytest.mark.parametrize("mode", ["beam", "sample"])
def test_grpo_resumed_mid_epoch_equals_uninterrupted(rl_dm, sft_ckpt, tmp_path, mode):
    # Sampled rollouts draw from the module's own generator, saved in the checkpoint: the resumed fit samples what
    # the uninterrupted one did, though its DataLoader iterators drew from the global RNG at other moments.
    def fit(folder, crash=None, ckpt_path=None):
        L.seed_everything(0)
        g = GRPOModule(init_from=sft_ckpt, reward=OracleReward(), num_generations=4, rollout_mode=mode,
                       optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3))
        callbacks = [RunRecorder(record_dir=str(folder), every_n_train_steps=3)]
        if crash is not None:
            callbacks.append(Crash(crash))
        trainer = quiet_trainer(max_steps=8, limit_train_batches=5, callbacks=callbacks)
        trainer.fit(g, datamodule=rl_dm, ckpt_path=ckpt_path)
        return g

    full = fit(tmp_path / "full")
    with pytest.raises(SystemExit):
        fit(tmp_path / "killed", crash=7)
    saved = torch.load(tmp_path / "killed" / RESUME_CKPT, map_location="cpu", weights_only=True)
    assert ("rollout_rng" in saved["adagrpo"]) == (mode == "sample")
    resumed = fit(tmp_path / "killed", ckpt_path=str(tmp_path / "killed" / RESUME_CKPT))
    a, b = _params(full), _params(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed GRPO policy differs from the uninterrupted fit"
