"""RunRecorder: ``last.ckpt`` holds the final training state even when the monitored metric peaked earlier."""

from __future__ import annotations

import json
import os

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from adagrpo.callbacks import RunRecorder


class PeaksEarly(L.LightningModule):
    """A linear model whose logged validation score is highest at the first validation and falls after."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.log("val/hr_10", 1.0 / (1 + self.global_step))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loader():
    data = torch.utils.data.TensorDataset(torch.randn(16, 2))
    return torch.utils.data.DataLoader(data, batch_size=2)


def test_last_is_final_state_when_best_is_earlier(tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpts", monitor="val/hr_10", mode="max", save_last=True,
                           filename="best-{step}")
    trainer = L.Trainer(max_steps=6, val_check_interval=2, limit_val_batches=1, check_val_every_n_epoch=None,
                        callbacks=[ckpt, RunRecorder(record_dir=str(tmp_path / "record"))], logger=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(PeaksEarly(), _loader(), _loader())
    record = json.loads((tmp_path / "record" / "latest.json").read_text())
    best = torch.load(record["best_copy"], map_location="cpu", weights_only=True)
    last = torch.load(record["last_copy"], map_location="cpu", weights_only=True)
    assert best["global_step"] == 2  # the metric peaked at the first validation
    assert last["global_step"] == 6 == record["global_step"]
    assert not torch.equal(best["state_dict"]["layer.weight"], last["state_dict"]["layer.weight"])


def test_record_names_are_hard_links_not_copies(tmp_path):
    from adagrpo.callbacks.run_recorder import link_or_copy

    src = tmp_path / "lightning" / "best-step=10.ckpt"
    src.parent.mkdir()
    src.write_bytes(b"weights")
    dest = tmp_path / "best.ckpt"
    assert link_or_copy(src, dest) == "link"
    assert dest.read_bytes() == b"weights" and os.path.samefile(src, dest)
    src.unlink()  # Lightning deleting its older best keeps the recorded one
    assert dest.read_bytes() == b"weights"
