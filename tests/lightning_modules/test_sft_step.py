"""The SFT training step's computation (compacted rows, plain causal attention, output layer on the labelled
positions, optional bfloat16 autocast) against the padded-batch reference it replaces."""

from __future__ import annotations

import pytest
import torch

from adagrpo.lightning_modules.decoding import additive_mask, prompt_attention
from adagrpo.lightning_modules.policy import FP32_SDPA, LlamaPolicy, float32_attention
from adagrpo.lightning_modules.sft import SFTModule, compact, sft_loss

TINY = dict(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_positions=128)


def module_for(dm, train_dtype: str = "float32", **policy) -> SFTModule:
    torch.manual_seed(0)
    module = SFTModule(policy=LlamaPolicy(**TINY, **policy), train_dtype=train_dtype)
    module.attach(dm)
    module.configure_model()
    return module


def mixed_batch(dm):
    """Windows of every length in one batch (the bucketed loader would group them; this one must not care)."""
    lengths = (dm.sft_windows >= 0).sum(1)
    rows = [int(next(i for i, n in enumerate(lengths) if n == k)) for k in sorted(set(lengths.tolist()))]
    return dm.sft_batch(rows * 3)


def padded_reference(policy, batch):
    """The padded batch as it comes from the loader: NaN-safe masked attention, logits everywhere, sft_loss."""
    mask = additive_mask(prompt_attention(batch.attention_mask.bool()), torch.float32)
    out = policy(input_ids=batch.input_ids, attention_mask=mask, position_ids=batch.position_ids, use_cache=False)
    return sft_loss(out.logits, batch.labels)


def grads(module):
    return torch.cat([p.grad.flatten() for p in module.policy.parameters()])


def test_compact_moves_real_tokens_first_in_order_and_cuts_unused_columns(tiny_world_dm):
    batch = mixed_batch(tiny_world_dm)
    ids, positions, labels = compact(batch)
    real = batch.attention_mask.bool()
    n = real.sum(1)
    assert ids.shape == positions.shape == labels.shape == (len(batch), int(n.max()))
    assert int(n.max()) < batch.input_ids.shape[1]  # this batch has unused columns
    for r in range(len(batch)):
        k = int(n[r])
        assert torch.equal(ids[r, :k], batch.input_ids[r][real[r]])
        assert torch.equal(positions[r, :k], batch.position_ids[r][real[r]])
        assert torch.equal(labels[r, :k], batch.labels[r][real[r]])
        assert (labels[r, k:] == -100).all()
    assert int((labels != -100).sum()) == int((batch.labels != -100).sum())


def test_float32_step_equals_the_padded_batch_loss_and_gradients(tiny_world_dm):
    module = module_for(tiny_world_dm)
    batch = mixed_batch(tiny_world_dm)
    reference = padded_reference(module.policy, batch)
    reference.backward()
    expected = grads(module)
    module.policy.zero_grad()
    loss, n_tokens = module.sft_forward(batch)
    loss.backward()
    assert int(n_tokens) == int((batch.labels != -100).sum())
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads(module), expected, rtol=1e-4, atol=1e-6)


def test_bfloat16_step_is_close_to_float32_and_keeps_float32_master_weights(tiny_world_dm):
    fp32, bf16 = module_for(tiny_world_dm), module_for(tiny_world_dm, "bfloat16")
    batch = mixed_batch(tiny_world_dm)
    loss32, _ = fp32.sft_forward(batch)
    loss16, _ = bf16.sft_forward(batch)
    loss32.backward()
    loss16.backward()
    assert loss16.dtype == torch.float32
    assert abs(loss16.item() - loss32.item()) < 1e-2 * loss32.item()
    g32, g16 = grads(fp32), grads(bf16)
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in bf16.policy.parameters())
    assert float((g16 - g32).norm() / g32.norm()) < 5e-2  # bfloat16 rounding, not a different gradient
    assert not torch.equal(g16, g32)  # the autocast really ran


def test_sharded_or_headless_fallback_gives_the_same_loss(tiny_world_dm, monkeypatch):
    module = module_for(tiny_world_dm)
    batch = mixed_batch(tiny_world_dm)
    fused, _ = module.sft_forward(batch)
    monkeypatch.setattr("adagrpo.lightning_modules.sft._decoder_and_head", lambda policy: None)
    full, _ = module.sft_forward(batch)
    torch.testing.assert_close(full, fused, rtol=1e-5, atol=1e-6)


def test_float32_attention_switches_only_inside_and_only_sdpa_models():
    from adagrpo.datamodules.semantic_ids import SidVocab

    model, _ = LlamaPolicy(**TINY).build(SidVocab([8, 8, 8]))
    eager, _ = LlamaPolicy(**TINY, attn_implementation="eager").build(SidVocab([8, 8, 8]))
    ids = torch.randint(3, 27, (2, 7))
    with float32_attention(model), float32_attention(eager):
        assert model.config._attn_implementation == FP32_SDPA
        assert eager.config._attn_implementation == "eager"
        inside = model(input_ids=ids).logits
    assert model.config._attn_implementation == "sdpa"
    torch.testing.assert_close(inside, model(input_ids=ids).logits)  # float32 inputs: exactly sdpa
    with pytest.raises(RuntimeError), float32_attention(model):
        raise RuntimeError("the switch is undone on errors too")
    assert model.config._attn_implementation == "sdpa"


def test_attention_runs_in_float32_under_cpu_autocast(monkeypatch):
    from adagrpo.datamodules.semantic_ids import SidVocab

    model, _ = LlamaPolicy(**TINY).build(SidVocab([8, 8, 8]))
    seen = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        seen.append((q.dtype, k.dtype, v.dtype, torch.is_autocast_enabled("cpu")))
        return sdpa(q, k, v, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    ids = torch.randint(3, 27, (2, 7))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(input_ids=ids)
        assert seen and all(autocast for *_, autocast in seen)  # plain sdpa: autocast runs it in bfloat16
        seen.clear()
        with float32_attention(model):
            model(input_ids=ids)
    assert seen and all(dt == (torch.float32,) * 3 + (False,) for dt in seen)


def test_train_dtype_is_checked():
    from adagrpo.errors import ConfigError

    with pytest.raises(ConfigError, match="train_dtype"):
        SFTModule(train_dtype="float16")
