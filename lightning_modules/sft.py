"""Supervised fine-tuning of the generative recommender: next-item SID tokens, token-mean NLL.

A training step (:meth:`SFTModule.training_step`) spends its time on the tokens it is given, so it first drops
what carries no signal: the batch's real tokens are moved to the front of each row in order (:func:`compact`)
and the columns no row uses are cut, which leaves plain causal attention (no mask to build or apply), and the
output layer runs only on the positions that predict a labelled token. With ``train_dtype: bfloat16`` the
decoder runs under autocast (bfloat16 matmuls; float32 master weights, attention, output layer and loss).
``benchmarks/sft_step.py`` measures the step against a plain transformers loop on the same batches.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from adagrpo.datamodules.sequence import TokenBatch
from adagrpo.lightning_modules.base import TRAIN_DTYPES, PolicyModule  # noqa: F401 (TRAIN_DTYPES: re-exported)
from adagrpo.lightning_modules.policy import float32_attention
from adagrpo.lightning_modules.sharding import is_sharded

log = logging.getLogger(__name__)


def sft_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Token-mean NLL of the labelled tokens: ``logits [B, T, V]`` predict ``labels [B, T]`` shifted by one
    (position t predicts token t+1); -100 marks tokens that are not targets."""
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(),  # [B*(T-1), V]
        labels[:, 1:].reshape(-1),  # [B*(T-1)]
        ignore_index=-100,
    )


def compact(batch: TokenBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The batch's real tokens moved, in order, to the front of each row, and the columns no row uses cut.

    Returns ``(input_ids, position_ids, labels)``, each ``[B, T']`` with ``T'`` the longest row's real tokens.
    A row's real tokens attend to all earlier real tokens (the masked attention of the padded batch), so plain
    causal attention over the compacted rows computes the same thing for them; the padding now sits at the end
    of the rows, where causality keeps it out of every real token's view, and its labels are -100.
    """
    real = batch.attention_mask.bool()  # [B, T]
    order = torch.argsort((~real).to(torch.int8), dim=1, stable=True)  # [B, T] real positions first, in order
    width = max(int(real.sum(1).max()), 2)
    order = order[:, :width]  # [B, T']
    kept = real.gather(1, order)  # [B, T']
    labels = torch.where(kept, batch.labels.gather(1, order), -100)
    return batch.input_ids.gather(1, order), batch.position_ids.gather(1, order), labels


def _decoder_and_head(policy: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """The decoder (hidden states) and the output layer of a transformers causal LM, when it has both."""
    get_decoder = getattr(policy, "get_decoder", None)
    head = policy.get_output_embeddings() if hasattr(policy, "get_output_embeddings") else None
    decoder = get_decoder() if callable(get_decoder) else None
    if decoder is None or decoder is policy or not isinstance(head, nn.Linear):
        return None
    return decoder, head


class SFTModule(PolicyModule):
    """Trains the policy on history windows: every item after a window's first is a target, and the
    loss is the mean NLL over all their SID tokens. Evaluation (constrained beam search, plus
    unconstrained decoding for the hallucination rate) comes from :class:`PolicyModule`.

    Args:
        train_dtype: ``float32``, or ``bfloat16`` to run the decoder's training forward and backward under
            autocast (its matmuls in bfloat16; master weights, optimizer state, attention, the output layer and
            the loss stay float32 — except under FSDP2 sharding, where the whole forward runs under autocast;
            evaluation is float32). bfloat16 pays on CPUs with native bfloat16 matmuls
            (AVX512-BF16 / AMX) and on GPUs; the loss and gradients then differ from float32 by bfloat16
            rounding (relative gradient error about 5e-3 on policy_mini). The trainer's ``precision``
            is independent of it (``configs/trainer/gpu.yaml``'s ``bf16-mixed`` autocasts every stage). ``auto``:
            bfloat16 where it is native on the training device, float32 elsewhere.
        **kwargs: :class:`PolicyModule`'s arguments (policy, optimizer, scheduler, beam width, metrics, filters,
            ``max_skipped_steps``).
    """

    #: SFT trains on history windows (``configs/data/<name>.yaml``)
    required_train_mode = "sft"

    def __init__(self, train_dtype: Literal["float32", "bfloat16", "auto"] = "float32", **kwargs: Any) -> None:
        super().__init__(train_dtype=train_dtype, **kwargs)  # checked (and the autocast made) by PolicyModule

    def _autocast(self, device: torch.device):  # noqa: ANN202
        return self.train_autocast(device)

    def sft_forward(self, batch: TokenBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss, labelled tokens)`` of one SFT batch (the training step's computation, without logging)."""
        input_ids, position_ids, labels = compact(batch)
        parts = None if is_sharded(self.policy) else _decoder_and_head(self.policy)
        with self._autocast(input_ids.device), float32_attention(self.policy):
            if parts is not None:
                hidden = parts[0](input_ids=input_ids, position_ids=position_ids, use_cache=False).last_hidden_state
            else:  # a sharded policy (its root forward gathers the parameters) or one without a plain head
                logits = self.policy(input_ids=input_ids, position_ids=position_ids, use_cache=False).logits
        targets = labels[:, 1:] != -100  # [B, T'-1] positions that predict a labelled token
        if parts is None:
            return sft_loss(logits, labels), targets.sum()
        head = parts[1]
        with torch.autocast(input_ids.device.type, enabled=False):  # output layer and loss in float32
            picked = hidden[:, :-1][targets].float()  # [N, H]
            logits = F.linear(picked, head.weight.float(), None if head.bias is None else head.bias.float())  # [N, V]
            loss = F.cross_entropy(logits, labels[:, 1:][targets])
        return loss, targets.sum()

    def training_step(self, batch: TokenBatch, batch_idx: int) -> torch.Tensor | None:
        start = time.perf_counter()
        loss, n_tokens = self.sft_forward(batch)
        loss = self.finite_loss(loss)
        if loss is None:  # NaN/inf: counted and skipped (Lightning runs no backward and changes no parameter)
            return None
        self.log("loss/nll", loss, prog_bar=True, batch_size=len(batch))
        self.log("perf/tokens", n_tokens.float(), reduce_fx="sum", batch_size=len(batch))
        self.log("perf/step_s", time.perf_counter() - start, batch_size=len(batch))
        return loss
