"""Supervised fine-tuning of the generative recommender: next-item SID tokens, token-mean NLL."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from adagrpo.datamodules.sequence import TokenBatch
from adagrpo.lightning_modules.base import PolicyModule
from adagrpo.lightning_modules.decoding import additive_mask, model_dtype, prompt_attention


def sft_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Token-mean NLL of the labelled tokens: ``logits [B, T, V]`` predict ``labels [B, T]`` shifted by one
    (position t predicts token t+1); -100 marks tokens that are not targets."""
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(),  # [B*(T-1), V]
        labels[:, 1:].reshape(-1),  # [B*(T-1)]
        ignore_index=-100,
    )


class SFTModule(PolicyModule):
    """Trains the policy on history windows: every item after a window's first is a target, and the
    loss is the mean NLL over all their SID tokens. Evaluation (constrained beam search, plus
    unconstrained decoding for the hallucination rate) comes from :class:`PolicyModule`; arguments too."""

    #: SFT trains on history windows (``configs/data/<name>.yaml``)
    required_train_mode = "sft"

    def training_step(self, batch: TokenBatch, batch_idx: int) -> torch.Tensor | None:
        start = time.perf_counter()
        # The same NaN-safe causal mask as decoding (padding rows attend to themselves).
        mask = additive_mask(prompt_attention(batch.attention_mask.bool()), model_dtype(self.policy))
        out = self.policy(
            input_ids=batch.input_ids,
            attention_mask=mask,
            position_ids=batch.position_ids,
            use_cache=False,
        )
        loss = self.finite_loss(sft_loss(out.logits, batch.labels))
        if loss is None:  # NaN/inf: counted and skipped (Lightning runs no backward and changes no parameter)
            return None
        n_tokens = (batch.labels != -100).sum()
        self.log("loss/nll", loss, prog_bar=True, batch_size=len(batch))
        self.log("perf/tokens", n_tokens.float(), reduce_fx="sum", batch_size=len(batch))
        self.log("perf/step_s", time.perf_counter() - start, batch_size=len(batch))
        return loss
