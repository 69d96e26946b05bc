"""One prepared GPU check: throughput, memory and the real-data SFT number, in a few minutes.

Sections (each guarded; a failure is reported and the next section runs):

1. ``env``      — torch / transformers / lightning versions, the GPU.
2. ``sft_base`` — SFT steps of the ~115M-parameter policy (configs/model/policy_base.yaml) in bf16 under
   FSDP2 (Lightning ``ModelParallelStrategy``) on one GPU: tokens/s, an MFU estimate
   (6 · parameters · tokens/s over the GPU's dense bf16 peak), peak memory.
3. ``grpo_base`` — GRPO steps of the same policy (B = 64 prompts, G = 16 constrained beams, β > 0 with a
   reference): step time, rollout time, prompts/s, peak memory.
4. ``bnb``      — bitsandbytes: 8-bit AdamW steps (single device), the clear early error for 8-bit AdamW
   under FSDP2, and a reference loaded in 8-bit from a local ``save_pretrained`` folder with its KL to
   the bf16 policy at step 0.
5. ``decoding`` — our engine vs HF ``generate`` on the GPU (benchmarks/decoding.py).
6. ``beauty``   — SFT on Amazon Beauty (leave-one-out, full catalogue) for a fixed time budget, then test
   HR@5/10, NDCG@5/10 with constrained beam 20 and the unconstrained hallucination rate.

    python benchmarks/gpu_check.py --out results_dir [--data-root DIR] [--beauty-minutes 4]
    python benchmarks/gpu_check.py --smoke      # tiny CPU run of every section (used by the tests)

``benchmarks/gpu_check.sh`` wraps it for the lent machine.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: dense bf16 peak of an H100/H200 SXM by the vendor's datasheet (FLOP/s)
H200_BF16_PEAK = 989e12


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------------------------------- helpers
def synthetic_dm(args: argparse.Namespace, train_mode: str, batch_size: int):  # noqa: ANN201
    from adagrpo.datamodules.semantic_ids import RQKMeansSids
    from adagrpo.datamodules.sequence import SeqRecDataModule
    from adagrpo.datamodules.synthetic import SyntheticSource

    users, items = (200, 120) if args.smoke else (5000, 2000)
    dm = SeqRecDataModule(source=SyntheticSource(num_users=users, num_items=items), sids=RQKMeansSids(),
                          train_mode=train_mode, batch_size=batch_size, eval_batch_size=256,
                          max_eval_samples=64 if args.smoke else 512, max_test_samples=64 if args.smoke else 2000)
    dm.prepare()
    return dm


def policy_spec(args: argparse.Namespace, size: str):  # noqa: ANN201
    import yaml

    from adagrpo.lightning_modules.policy import LlamaPolicy

    if args.smoke:
        size = "tiny"
    cfg = yaml.safe_load((ROOT / "configs" / "model" / f"policy_{size}.yaml").read_text())
    return LlamaPolicy(**cfg["init_args"])


def trainer_kwargs(args: argparse.Namespace, fsdp: bool) -> dict:
    import lightning as L  # noqa: F401
    from lightning.pytorch.strategies import ModelParallelStrategy

    kw: dict = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                    num_sanity_val_steps=0, limit_val_batches=0)
    if args.smoke:
        kw.update(accelerator="cpu", devices=1, precision="32-true")
    else:
        kw.update(accelerator="gpu", devices=1, precision="bf16-mixed")
    if fsdp and not args.smoke:
        kw["strategy"] = ModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=1,
                                               save_distributed_checkpoint=False)
    return kw


class StepTimer:
    """A callback recording wall time and tokens of every training step after ``skip`` warm-up steps."""

    def __new__(cls, skip: int = 3):  # noqa: ANN204
        from lightning.pytorch.callbacks import Callback

        class _Timer(Callback):
            def __init__(self) -> None:
                self.skip, self.times, self.tokens, self._t = skip, [], [], 0.0

            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                self._t = time.perf_counter()

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                if batch_idx >= self.skip:
                    self.times.append(time.perf_counter() - self._t)
                    n = getattr(batch, "attention_mask", None)
                    self.tokens.append(int(n.sum()) if n is not None else len(batch))

        return _Timer()


def peak_gb() -> float:
    return torch.cuda.max_memory_allocated() / 1024**3 if torch.cuda.is_available() else math.nan


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


# ------------------------------------------------------------------------------------------- sections
def section_env(args: argparse.Namespace) -> dict:
    import lightning
    import transformers

    out = {"torch": torch.__version__, "transformers": transformers.__version__, "lightning": lightning.__version__,
           "python": sys.version.split()[0], "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        out.update(gpu=torch.cuda.get_device_name(0), capability=list(torch.cuda.get_device_capability(0)),
                   memory_gb=round(torch.cuda.get_device_properties(0).total_memory / 1024**3, 1))
    return out


def section_sft_base(args: argparse.Namespace) -> dict:
    import lightning as L

    from adagrpo.lightning_modules.policy import count_parameters
    from adagrpo.lightning_modules.sft import SFTModule

    dm = synthetic_dm(args, "sft", batch_size=32 if args.smoke else 128)
    module = SFTModule(policy=policy_spec(args, "base"))
    timer = StepTimer(skip=2 if args.smoke else 5)
    steps = 6 if args.smoke else 40
    reset_peak()
    trainer = L.Trainer(max_steps=steps, callbacks=[timer], **trainer_kwargs(args, fsdp=True))
    trainer.fit(module, datamodule=dm)
    params = count_parameters(module.policy)
    tok_s = sum(timer.tokens) / sum(timer.times)
    return {"strategy": type(trainer.strategy).__name__, "precision": str(trainer.precision),
            "parameters_m": round(params / 1e6, 1), "steps_timed": len(timer.times),
            "tokens_per_s": round(tok_s), "step_s": round(sum(timer.times) / len(timer.times), 4),
            "mfu_vs_989tflops": round(6 * params * tok_s / H200_BF16_PEAK, 4), "peak_memory_gb": round(peak_gb(), 2)}


def section_grpo_base(args: argparse.Namespace) -> dict:
    import lightning as L

    from adagrpo.lightning_modules.balancers import GatedBalance
    from adagrpo.lightning_modules.gating import PolicyDifficultyGate, RewardDiscriminabilityGate
    from adagrpo.lightning_modules.grpo import GRPOModule
    from adagrpo.lightning_modules.reward import NoisyReward
    from adagrpo.lightning_modules.sft import SFTModule

    dm = synthetic_dm(args, "prompts", batch_size=8 if args.smoke else 64)
    with tempfile.TemporaryDirectory() as tmp:
        sft = SFTModule(policy=policy_spec(args, "base"))
        sft.attach(dm)
        sft.configure_model()
        ckpt = Path(tmp) / "sft.ckpt"
        torch.save({"state_dict": {f"policy.{k}": v for k, v in sft.policy.state_dict().items()},
                    "adagrpo": {**sft.sid_signature(), "policy": sft.policy_spec.describe()}}, ckpt)
        module = GRPOModule(init_from=str(ckpt), reward=NoisyReward(noise=0.3), balancer=GatedBalance(),
                            gates=[PolicyDifficultyGate(), RewardDiscriminabilityGate()],
                            num_generations=4 if args.smoke else 16, beta=1e-3)
        timer = StepTimer(skip=1 if args.smoke else 3)
        steps = 4 if args.smoke else 15
        reset_peak()
        trainer = L.Trainer(max_steps=steps, callbacks=[timer], **trainer_kwargs(args, fsdp=True))
        trainer.fit(module, datamodule=dm)
        m = trainer.logged_metrics
        step = sum(timer.times) / len(timer.times)
        b = 8 if args.smoke else 64
        return {"strategy": type(trainer.strategy).__name__, "prompts": b, "group": module.num_generations,
                "step_s": round(step, 4), "prompts_per_s": round(b / step, 1),
                "rollout_s": round(float(m.get("perf/rollout_s", math.nan)), 4),
                "kl_last": round(float(m.get("kl", math.nan)), 6), "peak_memory_gb": round(peak_gb(), 2)}


def section_bnb(args: argparse.Namespace) -> dict:
    out: dict = {}
    try:
        import bitsandbytes as bnb
    except Exception as err:  # noqa: BLE001
        return {"skipped": f"bitsandbytes not importable: {err}"}
    from adagrpo.lightning_modules.decoding import candidate_logits, token_logprobs
    from adagrpo.lightning_modules.grpo_loss import k3_kl
    from adagrpo.lightning_modules.optim import check_optimizer_strategy
    from adagrpo.lightning_modules.policy import LlamaPolicy, PretrainedPolicy, save_sid_tokenizer

    dm = synthetic_dm(args, "prompts", batch_size=16)
    model, vocab = LlamaPolicy(hidden_size=256, num_layers=4, num_heads=4).build(dm.vocab)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(dev)
    opt = bnb.optim.AdamW8bit(model.parameters(), lr=1e-3)
    batch = next(iter(dm.train_dataloader()))
    losses = []
    for _ in range(5):
        logits = model(input_ids=batch.prompt_ids.to(dev)).logits
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(),
                                                 batch.prompt_ids[:, 1:].flatten().to(dev))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(round(float(loss), 4))
    out["adamw8bit_losses"] = losses
    try:
        check_optimizer_strategy(opt, "ModelParallelStrategy")
        out["fsdp2_8bit_error"] = "no error (unexpected)"
    except Exception as err:  # noqa: BLE001
        out["fsdp2_8bit_error"] = str(err)[:200]
    if torch.cuda.is_available():
        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp)
            save_sid_tokenizer(tmp, dm.vocab)
            ref, ref_vocab = PretrainedPolicy(tmp, dtype="bfloat16", quantization="8bit").build(dm.vocab)
            ref.eval()
            b = batch
            tokens = b.target_tokens[:, None].to(dev)
            args_ = (b.prompt_ids.to(dev), b.prompt_mask.to(dev), b.position_ids.to(dev), tokens)
            with torch.no_grad():
                lp = token_logprobs(candidate_logits(model.eval(), *args_), tokens)
                lq = token_logprobs(candidate_logits(ref, *args_), tokens)
            out["kl_step0_8bit_reference"] = float(k3_kl(lp, lq).mean())
    return out


def section_decoding(args: argparse.Namespace) -> dict:
    from benchmarks import decoding

    argv = ["--quick"] if args.smoke else ["--device", "cuda", "--dtype", "bfloat16", "--repeats", "5",
                                           "--hf-users", "64", "--out", str(Path(args.out) / "decoding_gpu.txt")]
    return decoding.main(argv)


def section_beauty(args: argparse.Namespace) -> dict:
    import lightning as L

    from adagrpo.datamodules.embeddings import TextEmbeddings
    from adagrpo.datamodules.readers import ItemFile, SasRecText
    from adagrpo.datamodules.semantic_ids import RQKMeansSids
    from adagrpo.datamodules.sequence import SeqRecDataModule
    from adagrpo.lightning_modules.policy import LlamaPolicy
    from adagrpo.lightning_modules.sft import SFTModule

    root = Path(args.data_root) / "amazon_beauty_2014"
    if not (root / "user_sequences.txt").exists():
        return {"skipped": f"no Beauty data under {root}"}
    source = SasRecText(path=str(root / "user_sequences.txt"), layout="lines",
                        items=ItemFile(path=str(root / "items.jsonl"), id_field="asin", keep_fields=["item_id"]),
                        name="beauty")
    sids = RQKMeansSids(embeddings=TextEmbeddings(dim=64), levels=3, codebook_size=256, cap_small_catalogue=False)
    dm = SeqRecDataModule(source=source, sids=sids, batch_size=256, eval_batch_size=512,
                          max_eval_samples=2000, max_test_samples=300 if args.smoke else None)
    dm.prepare()
    policy = LlamaPolicy(hidden_size=32, num_layers=1, num_heads=2) if args.smoke else LlamaPolicy(
        hidden_size=384, num_layers=6, num_heads=6, intermediate_size=1024, dropout=0.1)
    module = SFTModule(policy=policy, beam_width=20)
    minutes = 0.2 if args.smoke else args.beauty_minutes
    kw = trainer_kwargs(args, fsdp=False)
    kw.update(limit_val_batches=1.0, check_val_every_n_epoch=2)
    from lightning.pytorch.callbacks import ModelCheckpoint

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = ModelCheckpoint(dirpath=tmp, monitor="val/hr_10", mode="max", save_top_k=1)
        kw["enable_checkpointing"] = True
        trainer = L.Trainer(max_epochs=200, max_time={"minutes": minutes}, callbacks=[ckpt],
                            gradient_clip_val=1.0, **kw)
        module.optimizer_factory = lambda params: torch.optim.AdamW(params, lr=1e-3, weight_decay=0.05)
        start = time.perf_counter()
        trainer.fit(module, datamodule=dm)
        train_s = time.perf_counter() - start
        start = time.perf_counter()
        result = trainer.test(module, datamodule=dm, ckpt_path=ckpt.best_model_path or None, verbose=False)[0]
        test_s = time.perf_counter() - start
    keep = ["test/hr_5", "test/hr_10", "test/ndcg_5", "test/ndcg_10", "test/hallucination", "test/invalid_rate",
            "test/unconstrained/hr_10", "test/mostpop/hr_10", "test/coverage_10"]
    return {"epochs": trainer.current_epoch, "train_s": round(train_s, 1), "test_s": round(test_s, 1),
            "test_users": int(len(dm.test_targets)), "best_val_hr_10": float(ckpt.best_model_score or math.nan),
            **{k: round(float(result[k]), 5) for k in keep if k in result}}


SECTIONS = {"env": section_env, "sft_base": section_sft_base, "grpo_base": section_grpo_base, "bnb": section_bnb,
            "decoding": section_decoding, "beauty": section_beauty}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="gpu_check_out")
    parser.add_argument("--data-root",
                        default=os.environ.get("ADAGRPO_DATA_ROOT", str(ROOT.parent / "shared" / "data")))
    parser.add_argument("--beauty-minutes", type=float, default=4.0)
    parser.add_argument("--only", nargs="*", default=None, help=f"run only these sections ({', '.join(SECTIONS)})")
    parser.add_argument("--smoke", action="store_true", help="tiny CPU run of every section")
    args = parser.parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("ADAGRPO_CACHE", str(Path(args.out) / "cache"))
    results: dict = {}
    for name, fn in SECTIONS.items():
        if args.only and name not in args.only:
            continue
        log(f"section {name} ...")
        start = time.perf_counter()
        try:
            results[name] = fn(args)
        except Exception as err:  # noqa: BLE001
            results[name] = {"error": f"{type(err).__name__}: {err}"[:500]}
            traceback.print_exc()
        results[name]["seconds"] = round(time.perf_counter() - start, 1)
        log(f"section {name}: {json.dumps(results[name])}")
        (Path(args.out) / "gpu_check.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
