"""Policies: from-scratch specs, export to a save_pretrained folder, and loading it back as PretrainedPolicy."""

from __future__ import annotations

import json

import pytest
import torch

from adagrpo.datamodules.errors import ConfigError
from adagrpo.datamodules.semantic_ids import SidVocab
from adagrpo.lightning_modules.policy import (
    LlamaPolicy,
    PretrainedPolicy,
    Qwen2Policy,
    export_checkpoint,
    spec_from_description,
)

SIZES = [6, 5, 4]


def tiny_checkpoint(tmp_path, spec=None):  # noqa: ANN001, ANN201
    spec = spec or LlamaPolicy(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
    vocab = SidVocab(SIZES)
    model, _ = spec.build(vocab)
    path = tmp_path / "policy.ckpt"
    torch.save({"state_dict": {f"policy.{k}": v for k, v in model.state_dict().items()},
                "adagrpo": {"sid_fingerprint": "f00", "codebook_sizes": SIZES, "num_items": 10,
                            "vocab_size": vocab.vocab_size, "dataset": "toy", "policy": spec.describe()}}, path)
    return path, model, vocab


@pytest.mark.parametrize("cls", [LlamaPolicy, Qwen2Policy])
def test_scratch_policies_use_the_sid_vocabulary(cls):
    vocab = SidVocab(SIZES)
    model, model_vocab = cls(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64).build(vocab)
    assert model_vocab is vocab
    assert model.config.vocab_size == vocab.vocab_size == 3 + sum(SIZES)
    assert model.config.pad_token_id == vocab.pad_id and model.config.bos_token_id == vocab.bos_id


def test_spec_round_trips_through_its_description():
    spec = LlamaPolicy(hidden_size=48, num_layers=3, num_heads=4, num_kv_heads=2, intermediate_size=96)
    again = spec_from_description(spec.describe())
    assert type(again) is LlamaPolicy and again.describe() == spec.describe()
    with pytest.raises(ConfigError, match="unknown policy class"):
        spec_from_description({"class": "Nope"})


def test_bad_policy_shapes_name_the_key():
    with pytest.raises(ConfigError, match="policy.hidden_size"):
        LlamaPolicy(hidden_size=30, num_heads=4)
    with pytest.raises(ConfigError, match="policy.num_kv_heads"):
        LlamaPolicy(hidden_size=32, num_heads=4, num_kv_heads=3)


def test_export_then_load_as_pretrained_gives_the_same_logits(tmp_path):
    path, model, vocab = tiny_checkpoint(tmp_path)
    out = tmp_path / "exported"
    record = export_checkpoint(str(path), str(out))
    assert record["codebook_sizes"] == SIZES
    assert json.loads((out / "adagrpo_sids.json").read_text())["sid_fingerprint"] == "f00"
    loaded, loaded_vocab = PretrainedPolicy(str(out)).build(vocab)
    # The exported tokenizer already holds every SID token, at the same ids as the compact vocabulary.
    assert loaded_vocab.vocab_size == vocab.vocab_size
    assert all(torch.equal(a, b) for a, b in zip(loaded_vocab.token_of, vocab.token_of))
    ids = torch.tensor([[1, 3, 9, 14, 4, 10]])
    model.eval()
    loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5, rtol=1e-5)


def test_pretrained_policy_refuses_non_local_paths_and_cpu_quantisation(tmp_path):
    with pytest.raises(ConfigError, match="not a local model folder"):
        PretrainedPolicy("some-org/some-model").build(SidVocab(SIZES))
    if not torch.cuda.is_available():
        path, _, vocab = tiny_checkpoint(tmp_path)
        export_checkpoint(str(path), str(tmp_path / "exp"))
        with pytest.raises(ConfigError, match="needs a CUDA device"):
            PretrainedPolicy(str(tmp_path / "exp"), quantization="8bit").build(vocab)


def test_export_refuses_a_non_policy_checkpoint(tmp_path):
    path = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(ConfigError, match="not an adagrpo policy checkpoint"):
        export_checkpoint(str(path), str(tmp_path / "out"))
