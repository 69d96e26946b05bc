"""FSDP2 sharding of policies (Lightning's ``ModelParallelStrategy``) and gathering them for generation.

``shard_model`` applies ``fully_shard`` to every decoder layer and then to the root, the layout FSDP2
is designed for. Decoding calls the model once per SID token; with parameters resharded after every
forward that would all-gather the full weights each token, so :func:`gathered` unshards once for a
whole rollout or evaluation batch and reshards at the end.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks of a transformers causal LM (``model.model.layers`` for LLaMA/Qwen2/Mistral)."""
    base = model.get_decoder() if hasattr(model, "get_decoder") else getattr(model, "model", model)
    layers = getattr(base, "layers", None)
    if layers is None:
        raise ValueError(f"cannot find the decoder layers of {type(model).__name__} to shard")
    return list(layers)


def _fsdp():
    try:
        from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
    except ImportError:  # torch < 2.6
        from torch.distributed._composable.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
    return FSDPModule, MixedPrecisionPolicy, fully_shard


def shard_model(model: nn.Module, mesh, reshard_after_forward: bool = True, param_dtype=None) -> nn.Module:  # noqa: ANN001
    """``fully_shard`` each decoder layer, then the root, over ``mesh`` (in place; returns ``model``).
    Without a mesh (``None``: no ``ModelParallelStrategy``) the model is returned unchanged."""
    if mesh is None:
        return model
    _, MixedPrecisionPolicy, fully_shard = _fsdp()
    kwargs = {"mesh": mesh, "reshard_after_forward": reshard_after_forward}
    if param_dtype is not None:
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=param_dtype)
    for layer in decoder_layers(model):
        fully_shard(layer, **kwargs)
    fully_shard(model, **kwargs)
    return model


def is_sharded(model: nn.Module) -> bool:
    FSDPModule, _, _ = _fsdp()
    return any(isinstance(m, FSDPModule) for m in model.modules())


@contextmanager
def gathered(model: nn.Module) -> Iterator[nn.Module]:
    """Keep an FSDP2 model's full parameters gathered for the duration (one all-gather per layer, not one per
    forward call). A no-op for unsharded models."""
    FSDPModule, _, _ = _fsdp()
    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    if not units:
        yield model
        return
    for m in units:
        m.set_reshard_after_forward(False, recurse=False)
        m.unshard()
    try:
        yield model
    finally:
        for m in units:
            m.reshard()
            m.set_reshard_after_forward(True, recurse=False)
