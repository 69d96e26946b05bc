"""Policy models: transformers causal LMs over semantic-ID tokens, built from a config or a local path.

A :class:`PolicySpec` is the YAML-facing description; :meth:`PolicySpec.build` makes the model once
the data's SID vocabulary is known (so the vocabulary size is never typed by hand). Nothing is
downloaded: from-scratch models are built from a config, pretrained ones load from a local folder.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch
from torch import nn

from adagrpo.datamodules.semantic_ids import SPECIAL_TOKENS, SidVocab
from adagrpo.errors import ConfigError

log = logging.getLogger(__name__)


class PolicySpec(ABC):
    """Describes a causal LM; :meth:`build` returns ``(model, vocab)`` where ``vocab`` maps SID codes to
    the model's token ids (the data's compact vocabulary for from-scratch models)."""

    @abstractmethod
    def build(self, vocab: SidVocab) -> tuple[nn.Module, SidVocab]:
        """Build the model for ``vocab``."""

    def describe(self) -> dict:
        return {"class": type(self).__name__, **{k: v for k, v in vars(self).items() if not k.startswith("_")}}


class _ScratchPolicy(PolicySpec):
    """Shared arguments of from-scratch decoder-only models.

    Args:
        hidden_size: model width.
        num_layers: decoder layers.
        num_heads: attention heads (``hidden_size`` must divide by it).
        num_kv_heads: key/value heads (grouped-query attention); default = ``num_heads``.
        intermediate_size: MLP width; default ``round(8/3 * hidden_size)`` rounded up to a multiple of 64.
        max_positions: longest sequence (prompt + generated SID tokens + GRPO candidates).
        rope_theta: rotary base.
        dropout: attention dropout.
        tie_embeddings: share input and output embeddings.
        attn_implementation: ``sdpa`` (default) or ``eager``.
        gradient_checkpointing: recompute activations in backward (saves memory).
    """

    family: str = ""

    def __init__(
        self,
        hidden_size: int = 256,
        num_layers: int = 4,
        num_heads: int = 4,
        num_kv_heads: int | None = None,
        intermediate_size: int | None = None,
        max_positions: int = 1024,
        rope_theta: float = 10000.0,
        dropout: float = 0.0,
        tie_embeddings: bool = True,
        attn_implementation: Literal["sdpa", "eager"] = "sdpa",
        gradient_checkpointing: bool = False,
    ) -> None:
        if hidden_size % num_heads:
            raise ConfigError("policy.hidden_size", f"{hidden_size} is not divisible by num_heads={num_heads}")
        kv = num_kv_heads or num_heads
        if num_heads % kv:
            raise ConfigError("policy.num_kv_heads", f"num_heads={num_heads} is not divisible by {kv}")
        if num_layers < 1:
            raise ConfigError("policy.num_layers", f"must be >= 1, got {num_layers}")
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.num_kv_heads = kv
        self.intermediate_size = intermediate_size or 64 * -(-(8 * hidden_size // 3) // 64)
        self.max_positions = max_positions
        self.rope_theta = rope_theta
        self.dropout = dropout
        self.tie_embeddings = tie_embeddings
        self.attn_implementation = attn_implementation
        self.gradient_checkpointing = gradient_checkpointing

    def _config_kwargs(self, vocab: SidVocab) -> dict:
        return dict(
            vocab_size=vocab.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_kv_heads,
            max_position_embeddings=self.max_positions,
            rope_theta=self.rope_theta,
            attention_dropout=self.dropout,
            tie_word_embeddings=self.tie_embeddings,
            pad_token_id=vocab.pad_id,
            bos_token_id=vocab.bos_id,
            eos_token_id=vocab.eos_id,
        )

    @abstractmethod
    def _make(self, vocab: SidVocab) -> nn.Module: ...

    def build(self, vocab: SidVocab) -> tuple[nn.Module, SidVocab]:
        model = self._make(vocab)
        _finish(model, self.gradient_checkpointing)
        return model, vocab


class LlamaPolicy(_ScratchPolicy):
    """A LLaMA-architecture model built from scratch (arguments: see :class:`_ScratchPolicy`)."""

    def _make(self, vocab: SidVocab) -> nn.Module:
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(**self._config_kwargs(vocab))
        config._attn_implementation = self.attn_implementation
        return LlamaForCausalLM(config)


class Qwen2Policy(_ScratchPolicy):
    """A Qwen2-architecture model built from scratch (arguments: see :class:`_ScratchPolicy`)."""

    def _make(self, vocab: SidVocab) -> nn.Module:
        from transformers import Qwen2Config, Qwen2ForCausalLM

        config = Qwen2Config(**self._config_kwargs(vocab), use_sliding_window=False)
        config._attn_implementation = self.attn_implementation
        return Qwen2ForCausalLM(config)


class PretrainedPolicy(PolicySpec):
    """A causal LM loaded from a local folder (``save_pretrained`` layout), with the SID tokens added
    to its tokenizer and its embeddings resized.

    Args:
        path: local model folder (never a hub id: nothing is downloaded; ``local_files_only``).
        dtype: ``float32``, ``bfloat16`` or ``float16``.
        quantization: ``none``, ``8bit`` or ``4bit`` (bitsandbytes; for frozen reference/reward models on GPU).
        attn_implementation: passed to ``from_pretrained``.
        gradient_checkpointing: recompute activations in backward.
    """

    def __init__(
        self,
        path: str,
        dtype: Literal["float32", "bfloat16", "float16"] = "float32",
        quantization: Literal["none", "8bit", "4bit"] = "none",
        attn_implementation: Literal["sdpa", "eager"] = "sdpa",
        gradient_checkpointing: bool = False,
    ) -> None:
        self.path = path
        self.dtype = dtype
        self.quantization = quantization
        self.attn_implementation = attn_implementation
        self.gradient_checkpointing = gradient_checkpointing

    def build(self, vocab: SidVocab) -> tuple[nn.Module, SidVocab]:
        from pathlib import Path

        from transformers import AutoModelForCausalLM, AutoTokenizer

        if not Path(self.path).is_dir():
            raise ConfigError("policy.path", f"{self.path!r} is not a local model folder (nothing is downloaded)")
        tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        new_tokens = [t for t in vocab.token_strings() if t not in tokenizer.get_vocab()]
        tokenizer.add_tokens(new_tokens, special_tokens=False)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        kwargs: dict = {"local_files_only": True, "attn_implementation": self.attn_implementation,
                        "dtype": getattr(torch, self.dtype)}
        if self.quantization != "none":
            from transformers import BitsAndBytesConfig

            if not torch.cuda.is_available():
                raise ConfigError("policy.quantization", "8bit/4bit loading needs a CUDA device (bitsandbytes)")
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_8bit=self.quantization == "8bit", load_in_4bit=self.quantization == "4bit")
        model = AutoModelForCausalLM.from_pretrained(self.path, **kwargs)
        model.resize_token_embeddings(len(tokenizer))
        ids = tokenizer.convert_tokens_to_ids(vocab.token_strings())
        token_of, start = [], 0
        for size in vocab.codebook_sizes:
            token_of.append(torch.tensor(ids[start:start + size], dtype=torch.long))
            start += size
        bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.pad_token_id
        eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.pad_token_id
        model_vocab = SidVocab.from_token_ids(vocab.codebook_sizes, token_of, len(tokenizer),
                                              pad_id=tokenizer.pad_token_id, bos_id=bos, eos_id=eos)
        _finish(model, self.gradient_checkpointing)
        return model, model_vocab


def _finish(model: nn.Module, gradient_checkpointing: bool) -> None:
    # Generation settings are always passed explicitly by our decoding engine; clearing the model's
    # generation defaults makes any accidental reliance on them visible.
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.do_sample = False
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False


#: the attention implementation :func:`float32_attention` switches a model to (registered on first use)
FP32_SDPA = "adagrpo_sdpa_fp32"


def _sdpa_fp32(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               attention_mask: torch.Tensor | None, **kwargs):  # noqa: ANN003, ANN202
    """transformers' SDPA attention, computed in float32 under CPU autocast (or with reduced-precision inputs).

    On the CPU the bfloat16 flash-attention backward is several times slower than the float32 one (measured
    with ``benchmarks/sft_step.py``), while the projections around it gain most from bfloat16; so under CPU
    autocast the attention itself runs in float32 and returns float32 (the output projection's autocast casts
    it). Elsewhere (float32 without autocast, CUDA) it is exactly transformers' ``sdpa``."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    reduced = any(t.dtype != torch.float32 for t in (query, key, value))
    if query.device.type != "cpu" or not (reduced or torch.is_autocast_enabled("cpu")):
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    # Under autocast the rotary embedding has already promoted query and key to float32 while value is
    # bfloat16, and autocast would run SDPA in bfloat16: everything goes to float32 with autocast off instead.
    if attention_mask is not None and attention_mask.is_floating_point():
        attention_mask = attention_mask.float()
    with torch.autocast("cpu", enabled=False):
        return sdpa_attention_forward(module, query.float(), key.float(), value.float(), attention_mask, **kwargs)


def _register_fp32_sdpa() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, sdpa_mask

    if FP32_SDPA not in ALL_MASK_ATTENTION_FUNCTIONS:
        AttentionInterface.register(FP32_SDPA, _sdpa_fp32)
        AttentionMaskInterface.register(FP32_SDPA, sdpa_mask)  # the same masks as ``sdpa``


@contextmanager
def float32_attention(model: nn.Module) -> Iterator[None]:
    """Within: a model configured with ``sdpa`` attention computes its attention in float32 under CPU autocast
    (see :func:`_sdpa_fp32`). Models with another attention implementation are left as they are. The switch is
    the model config's ``_attn_implementation``, which transformers reads at every forward call and never saves."""
    config = getattr(model, "config", None)
    previous = getattr(config, "_attn_implementation", None)
    if previous != "sdpa":
        yield
        return
    _register_fp32_sdpa()
    config._attn_implementation = FP32_SDPA
    try:
        yield
    finally:
        config._attn_implementation = previous


@contextmanager
def float32_output_layer(model: nn.Module) -> Iterator[None]:
    """Within: the model's output layer (``get_output_embeddings()``, a ``Linear``) computes in float32 with autocast
    off, so that under bfloat16 autocast the logits — and every log-prob, ratio and KL read from them — are not
    rounded to bfloat16 (the layer is a small part of a forward that keeps only a few positions' logits). Models
    without a plain ``Linear`` output layer are left as they are."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(head, nn.Linear):
        yield
        return
    previous = head.__dict__.get("forward")  # an instance-level forward (e.g. a hook wrapper) is kept and restored
    inner = previous or type(head).forward.__get__(head)

    def forward(x: torch.Tensor) -> torch.Tensor:
        if not torch.is_autocast_enabled(x.device.type):
            return inner(x)
        with torch.autocast(x.device.type, enabled=False):
            bias = None if head.bias is None else head.bias.float()
            return torch.nn.functional.linear(x.float(), head.weight.float(), bias)

    head.forward = forward
    try:
        yield
    finally:
        if previous is None:
            del head.forward
        else:
            head.forward = previous


def save_sid_tokenizer(folder: str, vocab: SidVocab) -> None:
    """Write a word-level tokenizer over ``<pad> <bos> <eos>`` + the SID tokens (the compact layout of a
    from-scratch policy), so an exported policy loads like any pretrained model (:class:`PretrainedPolicy`)."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tokens = list(SPECIAL_TOKENS) + vocab.token_strings()
    if len(tokens) != vocab.vocab_size:
        raise ValueError("save_sid_tokenizer needs the compact vocabulary of a from-scratch policy")
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(tokens)}, unk_token="<pad>"))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>")
    fast.save_pretrained(folder)


def export_checkpoint(checkpoint: str, out: str) -> dict:
    """Write a trained policy (SFT or GRPO checkpoint) as a ``save_pretrained`` folder with its SID tokenizer.

    The folder loads with ``transformers.AutoModelForCausalLM`` / ``AutoTokenizer`` and with
    :class:`PretrainedPolicy` (e.g. as an 8-bit frozen reference for GRPO on GPU).
    """
    import json
    from pathlib import Path

    from adagrpo.lightning_modules.checkpoint_io import load_checkpoint

    ckpt = load_checkpoint(checkpoint, what="checkpoint (--checkpoint)")
    info = ckpt.get("adagrpo")
    if not info or "policy" not in info:
        raise ConfigError("checkpoint", f"{checkpoint} is not an adagrpo policy checkpoint (SFT or GRPO)")
    vocab = SidVocab(info["codebook_sizes"])
    model, _ = spec_from_description(info["policy"]).build(vocab)
    model.load_state_dict({k.removeprefix("policy."): v for k, v in ckpt["state_dict"].items()
                           if k.startswith("policy.")})
    model.config.use_cache = True
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    save_sid_tokenizer(str(out_dir), vocab)
    record = {k: info[k] for k in ("sid_fingerprint", "codebook_sizes", "num_items", "vocab_size", "dataset")}
    (out_dir / "adagrpo_sids.json").write_text(json.dumps({**record, "source_checkpoint": str(checkpoint)}, indent=2))
    return record


def spec_from_description(desc: dict) -> PolicySpec:
    """Rebuild a :class:`PolicySpec` from :meth:`PolicySpec.describe` output (stored in checkpoints)."""
    import inspect

    classes = {c.__name__: c for c in (LlamaPolicy, Qwen2Policy, PretrainedPolicy)}
    name = desc.get("class")
    if name not in classes:
        raise ConfigError("model.policy", f"checkpoint describes an unknown policy class {name!r}; give model.policy")
    cls = classes[name]
    params = inspect.signature(cls.__init__).parameters
    return cls(**{k: v for k, v in desc.items() if k in params})


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
