"""Scale-out pieces in one process: sharding helpers without a mesh, gradient checkpointing, the 8-bit-AdamW
strategy check, FSDP2Strategy's sizes, and the GPU check script's CPU smoke mode."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from adagrpo.datamodules.semantic_ids import SidVocab
from adagrpo.lightning_modules.policy import LlamaPolicy
from adagrpo.lightning_modules.sft import sft_loss
from adagrpo.lightning_modules.sharding import gathered, is_sharded, shard_model

TINY = dict(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_positions=64)


def tiny_policy(**kwargs) -> nn.Module:
    torch.manual_seed(0)
    model, _ = LlamaPolicy(**TINY, **kwargs).build(SidVocab([8, 8, 8]))
    return model


# ------------------------------------------------------------------------------------------ sharding helpers
def test_shard_model_and_gathered_are_noops_without_a_mesh():
    model = tiny_policy()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert shard_model(model, None) is model
    assert not is_sharded(model)
    with gathered(model) as inner:
        assert inner is model
        ids = torch.randint(3, 27, (2, 5))
        out = model(input_ids=ids).logits
    assert out.shape == (2, 5, model.config.vocab_size)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(type(p) is nn.Parameter for p in model.parameters())  # plain tensors, not DTensors


def test_policy_module_without_a_mesh_is_not_sharded(tiny_world_dm):
    from adagrpo.lightning_modules.sft import SFTModule

    module = SFTModule(policy=LlamaPolicy(**TINY))
    module.attach(tiny_world_dm)
    assert module.data_parallel_mesh() is None
    module.configure_model()
    assert module.policy is not None and not is_sharded(module.policy)


# ------------------------------------------------------------------------------------------ gradient checkpointing
def test_gradient_checkpointing_same_loss_and_gradients():
    plain, ckpt = tiny_policy(), tiny_policy(gradient_checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    assert ckpt.is_gradient_checkpointing and not plain.is_gradient_checkpointing
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 27, (4, 12), generator=gen)
    labels = ids.clone()
    labels[:, :4] = -100
    calls = {"plain": 0, "ckpt": 0}
    results = {}
    for name, model in (("plain", plain), ("ckpt", ckpt)):
        model.train()
        # A pre-hook: torch's non-reentrant checkpoint stops the recomputation once the last saved tensor is
        # rebuilt, so the layer's post-forward hooks need not run again in backward.
        hook = model.model.layers[0].mlp.register_forward_pre_hook(
            lambda *_, name=name: calls.__setitem__(name, calls[name] + 1))
        loss = sft_loss(model(input_ids=ids, use_cache=False).logits, labels)
        loss.backward()
        hook.remove()
        results[name] = (loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    assert calls == {"plain": 1, "ckpt": 2}, calls  # the checkpointed layer is recomputed in backward
    torch.testing.assert_close(results["ckpt"][0], results["plain"][0], atol=1e-5, rtol=0)
    for name, grad in results["plain"][1].items():
        torch.testing.assert_close(results["ckpt"][1][name], grad, atol=1e-5, rtol=0, msg=name)


# ------------------------------------------------------------------------------------------ 8-bit AdamW vs FSDP2
def _bnb_optimizer():
    bnb = pytest.importorskip("bitsandbytes")
    return bnb.optim.AdamW8bit([nn.Parameter(torch.zeros(4096))], lr=1e-3)


def test_check_optimizer_strategy():
    from adagrpo.datamodules.errors import ConfigError
    from adagrpo.lightning_modules.optim import check_optimizer_strategy

    opt = _bnb_optimizer()
    with pytest.raises(ConfigError, match="model.init_args.optimizer"):
        check_optimizer_strategy(opt, "ModelParallelStrategy")
    check_optimizer_strategy(opt, "DDPStrategy")
    check_optimizer_strategy(opt, "SingleDeviceStrategy")
    plain = torch.optim.AdamW([nn.Parameter(torch.zeros(3))])
    check_optimizer_strategy(plain, "ModelParallelStrategy")


def test_build_optimizers_rejects_8bit_adamw_under_fsdp2_strategy():
    """configs/trainer/fsdp.yaml uses FSDP2Strategy, a ModelParallelStrategy subclass: the check must see through
    the subclass, or 8-bit AdamW would meet DTensor parameters mid-training instead of failing early."""
    bnb = pytest.importorskip("bitsandbytes")
    from adagrpo.datamodules.errors import ConfigError
    from adagrpo.lightning_modules.optim import build_optimizers
    from adagrpo.lightning_modules.strategies import FSDP2Strategy

    class Stub(nn.Module):
        def __init__(self, strategy) -> None:  # noqa: ANN001
            super().__init__()
            self.layer = nn.Linear(4, 4)
            self._trainer = SimpleNamespace(strategy=strategy)
            self.trainer = self._trainer

    def factory(params):  # noqa: ANN001, ANN202
        return bnb.optim.AdamW8bit(params, lr=1e-3)

    with pytest.raises(ConfigError, match="model.init_args.optimizer"):
        build_optimizers(Stub(FSDP2Strategy()), factory, None)
    from lightning.pytorch.strategies import DDPStrategy

    assert build_optimizers(Stub(DDPStrategy()), factory, None) is not None


# ------------------------------------------------------------------------------------------ FSDP2Strategy sizes
@pytest.mark.parametrize("nodes,devices", [(1, 1), (1, 2), (2, 8), (4, 3)])
def test_fsdp2_strategy_puts_every_process_in_one_data_parallel_group(monkeypatch, nodes, devices):
    from lightning.pytorch.strategies import ModelParallelStrategy

    from adagrpo.lightning_modules.strategies import FSDP2Strategy

    strategy = FSDP2Strategy()
    assert isinstance(strategy, ModelParallelStrategy)
    strategy.num_nodes = nodes
    strategy.parallel_devices = [torch.device("cpu")] * devices
    # The parent's setup_environment initialises the process group and the mesh; only our arithmetic is tested.
    monkeypatch.setattr(ModelParallelStrategy, "setup_environment", lambda self: None)
    strategy.setup_environment()
    assert strategy._data_parallel_size == nodes * devices
    assert strategy._tensor_parallel_size == 1


# ------------------------------------------------------------------------------------------ GPU check, CPU smoke
def _run_gpu_check(tmp_path, sections: list[str], extra: list[str] | None = None) -> dict:
    from benchmarks.gpu_check import main

    results = main(["--smoke", "--out", str(tmp_path / "gpu_check"), "--only", *sections, *(extra or [])])
    assert (tmp_path / "gpu_check" / "gpu_check.json").is_file()
    return results


def test_gpu_check_smoke_runs_every_section_on_cpu(tmp_path):
    sections = ["env", "sft_base", "grpo_base", "bnb", "decoding"]
    results = _run_gpu_check(tmp_path, sections)
    assert list(results) == sections
    for name in sections:
        assert "error" not in results[name], f"{name}: {json.dumps(results[name], indent=1)}"
    assert results["env"]["cuda"] in (True, False)
    assert results["sft_base"]["tokens_per_s"] > 0 and results["sft_base"]["steps_timed"] > 0
    assert results["grpo_base"]["step_s"] > 0
    for key in ("rollout_s", "kl_last"):
        value = results["grpo_base"][key]
        assert value == value, f"grpo_base.{key} is NaN: {results['grpo_base']}"  # the step's logged metrics
    bnb = results["bnb"]
    if "skipped" not in bnb:
        assert len(bnb["adamw8bit_losses"]) == 5, bnb
        assert "model.init_args.optimizer" in bnb["fsdp2_8bit_error"], bnb


@pytest.mark.slow
@pytest.mark.realdata
def test_gpu_check_smoke_beauty(tmp_path, data_root):
    if not (data_root / "amazon_beauty_2014" / "user_sequences.txt").is_file():
        pytest.skip("no Beauty data")
    results = _run_gpu_check(tmp_path, ["beauty"], ["--data-root", str(data_root)])
    beauty = results["beauty"]
    assert "error" not in beauty and "skipped" not in beauty, beauty
    assert 0.0 <= beauty["test/hr_10"] <= 1.0, beauty


# ------------------------------------------------------------------------------------------ ordered data-parallel data
@pytest.mark.parametrize("train_mode", ["sft", "prompts"])
def test_unshuffled_training_data_keeps_its_order_across_ranks(tiny_world_dm, train_mode):
    """``shuffle: false`` under a data-parallel strategy: rank r gets items r, r + W, ... in order (Lightning's own
    training sampler would shuffle whatever the DataLoader says)."""
    import copy

    from torch.utils.data.distributed import DistributedSampler

    def loader(rank: int | None, shuffle: bool = False):  # noqa: ANN202
        dm = copy.copy(tiny_world_dm)  # the session fixture stays untouched
        dm.train_mode, dm.shuffle, dm.bucket = train_mode, shuffle, False
        dm.trainer = None if rank is None else SimpleNamespace(
            strategy=SimpleNamespace(distributed_sampler_kwargs={"num_replicas": 2, "rank": rank}),
            _accelerator_connector=SimpleNamespace(use_distributed_sampler=True))
        return dm.train_dataloader()

    def first(batch):  # noqa: ANN001, ANN202
        return (batch.input_ids if train_mode == "sft" else batch.prompt_ids)[:, -4:]

    single = list(loader(None))
    assert not isinstance(loader(None).sampler, DistributedSampler)  # one process: Lightning decides
    assert not isinstance(loader(0, shuffle=True).sampler, DistributedSampler)  # shuffling: Lightning's sampler
    ranks = [list(loader(r)) for r in (0, 1)]
    for r, batches in enumerate(ranks):
        assert isinstance(loader(r).sampler, DistributedSampler) and not loader(r).sampler.shuffle
        if train_mode == "sft":  # whole batches are dataset items: batch i goes to rank i mod 2
            for i, batch in enumerate(batches[:3]):
                assert torch.equal(first(batch), first(single[2 * i + r]))
        else:  # rows are dataset items: row j goes to rank j mod 2
            rows = torch.cat([first(b) for b in single])
            assert torch.equal(first(batches[0]), rows[r::2][: len(batches[0])])
