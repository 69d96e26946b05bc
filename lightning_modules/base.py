"""What every policy-training LightningModule shares: attaching to the data's SID vocabulary, building
the policy in ``configure_model``, evaluation, optimizers, and the checkpoint's SID fingerprint.

A checkpoint records the fingerprint of the semantic-ID map it was trained on; loading it against
data whose SIDs differ fails at once with a message that names both, before any training or decoding.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from adagrpo.datamodules.errors import ConfigError
from adagrpo.datamodules.sequence import PromptBatch, SeqRecDataModule
from adagrpo.lightning_modules.checkpoint_io import IncompatibleCheckpoint, load_checkpoint
from adagrpo.lightning_modules.decoding import DecodingEngine
from adagrpo.lightning_modules.evaluation import Evaluator
from adagrpo.lightning_modules.finite import FiniteSteps, NonFiniteTraining, nonfinite_parameters
from adagrpo.lightning_modules.optim import build_optimizers
from adagrpo.lightning_modules.policy import LlamaPolicy, PolicySpec, float32_attention, float32_output_layer
from adagrpo.lightning_modules.sharding import gathered, is_sharded, shard_model

log = logging.getLogger(__name__)

CKPT_KEY = "adagrpo"
#: the values of ``train_dtype``
TRAIN_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
#: the non-finite counters (:class:`~adagrpo.lightning_modules.finite.FiniteGuard`) in a checkpoint
FINITE_KEY = "adagrpo_nonfinite"

__all__ = ["CKPT_KEY", "TRAIN_DTYPES", "IncompatibleCheckpoint", "PolicyModule", "bf16_native_cpu", "check_signature"]


class PolicyModule(FiniteSteps, L.LightningModule):
    """Base for modules that train a causal-LM policy over semantic IDs.

    Args:
        policy: the model description (``class_path`` of a :class:`~adagrpo.lightning_modules.policy.PolicySpec`);
            built in ``configure_model`` once the data's vocabulary is known.
        optimizer: e.g. ``torch.optim.AdamW`` with its ``init_args`` (default AdamW, lr 1e-3, wd 0.01).
        scheduler: e.g. :class:`~adagrpo.lightning_modules.schedules.WarmupCosine`, stepped every optimizer step.
        beam_width: candidates decoded per user in evaluation.
        ks: HR/NDCG cut-offs.
        val_unconstrained: also evaluate unconstrained decoding (hallucination rate) in validation.
        test_unconstrained: also evaluate unconstrained decoding (hallucination rate) in test.
        test_prefix: metric prefix of ``test`` (``adagrpo test --checkpoint last`` sets ``test_last``).
        val_filter_seen: in validation, also rank with each user's history excluded from decoding and log
            ``val/filtered/…`` beside the unfiltered metrics (the two share one prefill).
        test_filter_seen: in test, also rank with each user's history excluded from decoding and log
            ``<test_prefix>/filtered/…`` beside the unfiltered metrics (the two share one prefill).
        train_dtype: ``float32``, or ``bfloat16`` to run the policy's training computation under autocast
            (bfloat16 matmuls; float32 master weights, optimizer state, attention and losses; evaluation is
            float32). What it covers is the subclass's to say (SFT: the training forward and backward; GRPO: the
            rollouts, the reference pass and the policy forward and backward). It pays on CPUs with native
            bfloat16 matmuls (AVX512-BF16 / AMX) and on GPUs; elsewhere a warning says it will be slower. ``auto``:
            bfloat16 where it is native on the training device, float32 elsewhere (the shipped SFT default).
        max_skipped_steps: optimizer steps in a row skipped for a NaN/inf loss or gradient norm after which the fit
            stops with ``NonFiniteTraining`` (each skip is counted and logged as ``nonfinite/skipped_steps``).
    """

    def __init__(
        self,
        policy: PolicySpec | None = None,
        optimizer: OptimizerCallable | None = None,
        scheduler: LRSchedulerCallable | None = None,
        beam_width: int = 20,
        ks: tuple[int, ...] = (1, 5, 10, 20),
        val_unconstrained: bool = False,
        test_unconstrained: bool = True,
        test_prefix: str = "test",
        val_filter_seen: bool = True,
        test_filter_seen: bool = True,
        train_dtype: Literal["float32", "bfloat16", "auto"] = "float32",
        max_skipped_steps: int = 10,
    ) -> None:
        super().__init__()
        if train_dtype not in (*TRAIN_DTYPES, "auto"):
            raise ConfigError("model.init_args.train_dtype",
                              f"must be float32, bfloat16 or auto, got {train_dtype!r}")
        if isinstance(max_skipped_steps, bool) or not isinstance(max_skipped_steps, int) or max_skipped_steps < 1:
            raise ConfigError("model.init_args.max_skipped_steps",
                              f"must be an integer >= 1, got {max_skipped_steps!r}")
        self.train_dtype = train_dtype
        self.max_skipped_steps = max_skipped_steps  # read by FiniteSteps.finite_guard
        self._warned_bf16 = False
        self.test_prefix = test_prefix
        self.policy_spec = policy or LlamaPolicy()
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.beam_width = beam_width
        self.ks = tuple(ks)
        self.val_unconstrained = val_unconstrained
        self.test_unconstrained = test_unconstrained
        self.val_filter_seen = val_filter_seen
        self.test_filter_seen = test_filter_seen
        self.policy: nn.Module | None = None
        self.data: SeqRecDataModule | None = None

    # ---------------------------------------------------------------------------- precision
    def resolved_train_dtype(self, device: torch.device) -> str:
        """``train_dtype`` on ``device``: ``auto`` is ``bfloat16`` where its matmuls are native (a CPU with
        AVX512-BF16/AMX, a CUDA device that supports bfloat16) and ``float32`` elsewhere."""
        if self.train_dtype != "auto":
            return self.train_dtype
        if device.type == "cuda":
            return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
        return "bfloat16" if device.type == "cpu" and bf16_native_cpu() else "float32"

    def train_autocast(self, device: torch.device):  # noqa: ANN201
        """Autocast to ``train_dtype`` on ``device`` (a no-op context for float32). Warns once when bfloat16 is asked
        for on a CPU without native bfloat16 matmuls."""
        dtype = TRAIN_DTYPES[self.resolved_train_dtype(device)]
        enabled = dtype != torch.float32
        if enabled and device.type == "cpu" and not self._warned_bf16:
            self._warned_bf16 = True
            if not bf16_native_cpu():
                log.warning("train_dtype bfloat16 on a CPU without native bfloat16 matmuls (no AVX512-BF16/AMX): "
                            "expect it to be slower than float32")
        return torch.autocast(device.type, dtype=dtype, enabled=enabled)

    @contextmanager
    def training_precision(self, model: nn.Module) -> Iterator[None]:
        """Within: whole-model calls of ``model`` (decoding, tree-attention scoring) run at ``train_dtype`` —
        bfloat16 autocast with the attention (:func:`~adagrpo.lightning_modules.policy.float32_attention`) and, for
        an unsharded model, the output layer (:func:`~adagrpo.lightning_modules.policy.float32_output_layer`) in
        float32, so logits are float32. Nothing changes for float32."""
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        if self.resolved_train_dtype(device) == "float32":
            yield
            return
        with ExitStack() as stack:
            stack.enter_context(self.train_autocast(device))
            stack.enter_context(float32_attention(model))
            if not is_sharded(model):  # under FSDP2 the whole forward runs under autocast (as in SFT)
                stack.enter_context(float32_output_layer(model))
            yield

    # ---------------------------------------------------------------------------- data & model
    def attach(self, data: SeqRecDataModule) -> None:
        """Take the vocabulary, trie and popularity from the DataModule (idempotent)."""
        if self.data is data:
            return
        data.prepare()
        if self.beam_width > data.num_items:  # top-k over the catalogue (beams, the most-popular baseline) fails
            raise ConfigError("model.init_args.beam_width",
                              f"{self.beam_width} is larger than the catalogue ({data.num_items} items); "
                              f"use at most {data.num_items}")
        self.data = data
        pending = getattr(self, "_pending_signature", None)
        if pending is not None:
            check_signature(pending[0], self.sid_signature(), pending[1])
            self._pending_signature = None
        self.engine = DecodingEngine(data.trie, data.vocab)
        self.register_buffer("popularity", data.train_popularity(), persistent=False)
        self.val_eval = Evaluator(data.num_items, self.ks, self.beam_width, self.val_unconstrained, mostpop=True,
                                  filter_seen=self.val_filter_seen)
        self.test_eval = Evaluator(data.num_items, self.ks, self.beam_width, self.test_unconstrained, mostpop=True,
                                   filter_seen=self.test_filter_seen)

    #: the DataModule's ``train_mode`` this module trains on (None: any)
    required_train_mode: str | None = None

    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule if self._trainer is not None else None
        if not isinstance(dm, SeqRecDataModule):
            raise TypeError(f"{type(self).__name__} needs a SeqRecDataModule (got {type(dm).__name__})")
        if stage == "fit":
            self.check_train_mode(dm)
        self.attach(dm)

    def check_train_mode(self, dm: SeqRecDataModule) -> None:
        """Raise :class:`ConfigError` if ``dm`` gives other training batches than this module trains on."""
        if self.required_train_mode and dm.train_mode != self.required_train_mode:
            hint = "configs/data/*_rl.yaml" if self.required_train_mode == "prompts" else "configs/data/<name>.yaml"
            raise ConfigError("data.init_args.train_mode",
                              f"{type(self).__name__} trains on {self.required_train_mode!r} batches but the data "
                              f"gives {dm.train_mode!r} (use a {hint} data config)")

    def configure_model(self) -> None:
        if self.policy is not None:
            return
        if self.data is None:
            raise RuntimeError("attach() the DataModule before building the model")
        self.policy, model_vocab = self.policy_spec.build(self.data.vocab)
        if model_vocab is not self.data.vocab:  # a pretrained tokenizer placed the SID tokens elsewhere
            self.engine = DecodingEngine(self.data.trie, model_vocab)
            self.data.set_vocab(model_vocab)
        self.on_policy_built()
        mesh = self.data_parallel_mesh()
        if mesh is not None:  # ModelParallelStrategy (FSDP2): shard decoder layers, then the root
            shard_model(self.policy, mesh)
            self.on_policy_sharded(mesh)

    def on_policy_built(self) -> None:
        """Hook: the policy exists, unsharded, with its initial weights (subclasses load checkpoints here)."""

    def on_policy_sharded(self, mesh) -> None:  # noqa: ANN001
        """Hook: the policy was just sharded over ``mesh``."""

    def data_parallel_mesh(self):  # noqa: ANN201
        """The data-parallel device mesh under ``ModelParallelStrategy``; ``None`` otherwise."""
        try:
            mesh = self.device_mesh
        except (AttributeError, RuntimeError):
            return None
        if mesh is None:
            return None
        names = getattr(mesh, "mesh_dim_names", None) or ()
        return mesh["data_parallel"] if "data_parallel" in names else mesh

    def run_label(self) -> str:
        """How ``adagrpo compare`` labels this run."""
        return "SFT"

    def on_train_start(self) -> None:
        from adagrpo.datamodules.resumable import restore_loader_position

        restore_loader_position(self.trainer)  # a resumed fit continues mid-epoch where it stopped

    def on_fit_start(self) -> None:
        from lightning.pytorch.loggers import MLFlowLogger

        for lg in self.trainer.loggers:
            if isinstance(lg, MLFlowLogger):
                lg.experiment.set_tag(lg.run_id, "adagrpo.label", self.run_label())
                lg.experiment.set_tag(lg.run_id, "adagrpo.module", type(self).__name__)

    # ---------------------------------------------------------------------------- checkpoints
    def sid_signature(self) -> dict[str, Any]:
        sids = self.data.sids
        return {
            "sid_fingerprint": sids.fingerprint(),
            "codebook_sizes": list(sids.codebook_sizes),
            "num_items": sids.num_items,
            "vocab_size": self.data.vocab.vocab_size,
            "dataset": self.data.data.name,
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        bad = nonfinite_parameters(self.policy) if self.policy is not None else []
        if bad:  # never write (and so never record as best) a NaN/inf policy
            raise NonFiniteTraining(
                f"refusing to save a checkpoint at global step {self.global_step}: {len(bad)} policy tensors hold "
                f"NaN/inf values (e.g. {', '.join(bad[:3])})")
        checkpoint[CKPT_KEY] = {**self.sid_signature(), "policy": self.policy_spec.describe(),
                                "module": type(self).__name__}
        checkpoint[FINITE_KEY] = self.finite_guard.state_dict()

    def check_checkpoint_file(self, path: str, data: SeqRecDataModule) -> None:
        """Raise :class:`IncompatibleCheckpoint` if the checkpoint file at ``path`` was trained on other semantic IDs
        than ``data``'s. The CLI calls this before the trainer starts: under FSDP2 (``ModelParallelStrategy``)
        Lightning loads a checkpoint's weights before :meth:`on_load_checkpoint`, so a vocabulary change would
        otherwise surface as a bare tensor-size error on every rank."""
        checkpoint = load_checkpoint(path, what="checkpoint (--ckpt_path)", mmap=True)  # the weights are not read
        self.attach(data)
        check_signature(checkpoint.get(CKPT_KEY), self.sid_signature(), str(path))

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.finite_guard.load_state_dict(checkpoint.get(FINITE_KEY) or {})
        path = getattr(self._trainer, "ckpt_path", None) if self._trainer is not None else None
        if self.data is None:  # loaded outside a Trainer: checked when a DataModule is attached
            self._pending_signature = (checkpoint.get(CKPT_KEY), path or "<checkpoint>")
            return
        check_signature(checkpoint.get(CKPT_KEY), self.sid_signature(), path or "<checkpoint>")

    # ---------------------------------------------------------------------------- evaluation
    def oracle(self, batch: PromptBatch) -> torch.Tensor | None:
        return self.data.oracle_utility(batch) if self.data is not None else None

    def validation_step(self, batch: PromptBatch, batch_idx: int) -> None:
        self.policy.eval()
        with gathered(self.policy):
            self.val_eval.update(self.policy, self.engine, batch, self.popularity, self.oracle(batch))

    def on_validation_epoch_end(self) -> None:
        metrics = self.val_eval.compute("val")
        self.log_dict(metrics, sync_dist=True)  # already reduced by torchmetrics; keeps Lightning quiet
        self.val_eval.reset()

    def test_step(self, batch: PromptBatch, batch_idx: int) -> None:
        self.policy.eval()
        with gathered(self.policy):
            self.test_eval.update(self.policy, self.engine, batch, self.popularity, self.oracle(batch))

    def on_test_epoch_end(self) -> None:
        metrics = self.test_eval.compute(self.test_prefix)
        self.log_dict(metrics, sync_dist=True)  # already reduced by torchmetrics; keeps Lightning quiet
        self.test_eval.reset()

    # ---------------------------------------------------------------------------- optimisation
    def configure_optimizers(self) -> Any:
        return build_optimizers(self, self.optimizer_factory, self.scheduler_factory)


def bf16_native_cpu() -> bool:
    """Whether this CPU multiplies bfloat16 matrices natively (AVX512-BF16 or AMX, as oneDNN reports it)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def check_signature(saved: dict | None, current: dict, where: str) -> None:
    """Raise :class:`IncompatibleCheckpoint` unless a checkpoint's SID signature matches the data's."""
    if saved is None:
        raise IncompatibleCheckpoint(f"{where}: not an adagrpo checkpoint (no '{CKPT_KEY}' record of its semantic IDs)")
    # The SID map identifies the data (a pretrained policy's tokenizer size is the model's business).
    diffs = [f"{k}: checkpoint {saved.get(k)!r} vs data {current[k]!r}"
             for k in ("dataset", "num_items", "codebook_sizes", "sid_fingerprint")
             if k in current and saved.get(k) != current[k]]
    if diffs:
        raise IncompatibleCheckpoint(
            f"{where} was trained on different semantic IDs than the configured data ("
            + "; ".join(diffs)
            + "). Use the data config (and SID settings) the checkpoint was trained with."
        )
