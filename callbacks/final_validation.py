"""Validate after the fit's last training step, so a step-counted fit always ends with a validation.

With training length in optimizer steps (``trainer.max_steps``) and validation every ``val_check_interval`` steps
(``check_val_every_n_epoch: null``), a fit that ends between two validation steps — a ``max_steps`` that is not a
multiple of the interval, or ``--trainer.max_epochs`` / ``--trainer.limit_train_batches`` ending it first —
would finish without validating its final weights: ``ModelCheckpoint(monitor=...)`` would not consider them and,
if no validation ran at all, would save no checkpoint. :class:`ValidateAtEnd` asks Lightning to stop after the
last step (``trainer.should_stop``), which makes its training loop run validation at that step (once, also when
the step was a validation step anyway).
"""

from __future__ import annotations

import lightning as L


class ValidateAtEnd(L.Callback):
    """Run validation after the fit's last training step (see the module docstring)."""

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,  # noqa: ANN001
                           batch_idx: int) -> None:
        if is_last_training_step(trainer, batch_idx):
            trainer.should_stop = True


def is_last_training_step(trainer: L.Trainer, batch_idx: int) -> bool:
    """Whether the step that just ran on ``batch_idx`` is the fit's last (``max_steps`` reached, or the last batch
    of the last epoch ``max_epochs`` allows)."""
    if trainer.max_steps is not None and trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps:
        return True
    max_epochs = trainer.max_epochs
    if max_epochs is None or max_epochs < 0 or trainer.current_epoch + 1 < max_epochs:
        return False
    return batch_idx + 1 >= trainer.num_training_batches
