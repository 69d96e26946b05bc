"""Side-by-side benchmark of one SFT training step: this project's SFT step vs the loop a researcher would write.

One step = forward + loss + backward + gradient clipping (norm 1.0) + AdamW step, on one length-bucketed batch
of the project's data loader (``SeqRecDataModule.train_dataloader``: windows of similar length grouped, each
batch left-padded to the loader's full window width). Every engine trains its own copy of the same
randomly initialised transformers LLaMA (``configs/model/policy_<size>.yaml``) on the same batches, in the
same order, with the same AdamW settings as ``configs/experiments/sft.yaml``.

* **plain**: what a researcher writes with transformers — float32,
  ``model(input_ids, attention_mask, position_ids, labels=labels).loss`` on the batch as the loader gives it,
  ``loss.backward()``, ``clip_grad_norm_``, ``AdamW.step()``; no compile.
* **project**: :meth:`SFTModule.sft_forward` — the computation of the project's ``training_step`` (without
  Lightning's bookkeeping and logging) — with the shipped ``train_dtype`` (bfloat16 where the CPU has native
  bfloat16 matmuls, and on CUDA): real tokens compacted to the front of each row and unused columns cut (plain
  causal attention, no mask), the output layer only on the positions that predict a labelled token, the
  decoder under bfloat16 autocast with float32 attention, output layer, loss and master weights.
* **project fp32**: the same step with ``train_dtype: float32`` (what compaction alone gives).

Target tokens are the labelled SID tokens (the same count for every engine). Steps interleave (plain,
project, project fp32 on batch i; the order rotates with i) so other jobs on a shared machine slow all alike;
two warm-up steps each are not timed. On the CPU both wall-clock and process CPU time are reported (on a
loaded machine CPU time is the steadier measure); on CUDA also the model FLOP utilisation.

    python -m benchmarks.sft_step       # synthetic world, policy_mini; writes benchmarks/results/sft_step_cpu.txt
    python -m benchmarks.sft_step --data beauty        # Amazon Beauty from $ADAGRPO_DATA_ROOT (default ../shared/data)
    python -m benchmarks.sft_step --quick --out -      # tiny smoke run (tests), printed only
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results"
DATA_CONFIGS = {"synthetic": ROOT / "configs" / "data" / "synthetic.yaml",
                "beauty": ROOT / "configs" / "data" / "beauty.yaml"}
#: dense bfloat16 peak TFLOP/s of GPUs this benchmark knows (for the model FLOP utilisation); else --peak-tflops
GPU_PEAK_BF16 = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "L4": 121.0,
                 "RTX 4090": 165.0, "RTX 3090": 71.0}
ENGINES = ("plain", "project", "project fp32")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="synthetic", choices=sorted(DATA_CONFIGS), help="data config")
    p.add_argument("--model", default="mini", help="configs/model/policy_<model>.yaml")
    p.add_argument("--batch", type=int, default=None, help="batch size (default: the data config's)")
    p.add_argument("--steps", type=int, default=12, help="timed steps of each engine (after 2 warm-up steps)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--train-dtype", default=None, choices=["float32", "bfloat16"],
                   help="the project engine's train_dtype (default: configs/experiments/sft.yaml's, float32 on a CPU "
                        "without native bfloat16 matmuls)")
    p.add_argument("--peak-tflops", type=float, default=None, help="GPU bf16 peak for the FLOP utilisation")
    p.add_argument("--quick", action="store_true", help="tiny world, tiny model, 2 steps (smoke test)")
    p.add_argument("--out", default=None, help="results file ('-': print only); default "
                                              "benchmarks/results/sft_step_<device>[_<data>].txt")
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------ setup
def load_yaml(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text()) or {}


def shipped_sft() -> dict:
    """``configs/experiments/sft.yaml``'s model arguments (optimizer, train_dtype) and trainer's clip value."""
    cfg = load_yaml(ROOT / "configs" / "experiments" / "sft.yaml")
    init = cfg["model"]["init_args"]
    return {"optimizer": init["optimizer"]["init_args"], "train_dtype": init.get("train_dtype", "float32"),
            "clip": float(cfg["trainer"].get("gradient_clip_val") or 0.0)}


def datamodule(args: argparse.Namespace):  # noqa: ANN201
    from adagrpo import datamodules

    if args.quick:
        return datamodules.SeqRecDataModule(
            source=datamodules.SyntheticSource(num_users=200, num_items=120, max_length=20, seed=0),
            sids=datamodules.RQKMeansSids(embeddings=datamodules.TextEmbeddings(dim=16), levels=3, codebook_size=8,
                                          iters=20),
            max_history=5, batch_size=args.batch or 32, use_cache=False)
    os.environ.setdefault("ADAGRPO_DATA_ROOT", str((ROOT.parent / "shared" / "data").resolve()))
    from adagrpo.data_loading import load_datamodule

    overrides = ["--data.init_args.batch_size", str(args.batch)] if args.batch else []
    return load_datamodule(str(DATA_CONFIGS[args.data]), overrides)


def policy_spec(args: argparse.Namespace):  # noqa: ANN201
    from adagrpo.lightning_modules.policy import LlamaPolicy

    if args.quick:
        return LlamaPolicy(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_positions=128)
    cfg = load_yaml(ROOT / "configs" / "model" / f"policy_{args.model}.yaml")
    return LlamaPolicy(**cfg["init_args"])


def matmul_params(model: torch.nn.Module) -> int:
    """Parameters that take part in a matmul per token: everything but the input embedding (the output layer
    counts, tied or not)."""
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    n = sum(p.numel() for p in model.parameters() if p is not emb)
    return n + (head.numel() if head is emb else 0)


def step_flops(model: torch.nn.Module, batch) -> float:  # noqa: ANN001
    """Model FLOPs of one training step on the batch's real tokens (6 per matmul parameter per token, plus causal
    attention: 6 · layers · hidden · n² per row of n real tokens)."""
    n = batch.attention_mask.sum(1).double()
    cfg = model.config
    return float(6 * matmul_params(model) * n.sum() + 6 * cfg.num_hidden_layers * cfg.hidden_size * (n ** 2).sum())


# ------------------------------------------------------------------------------------------ engines
class Engine:
    def __init__(self, name: str, model: torch.nn.Module, optimizer_args: dict, clip: float) -> None:
        self.name, self.model, self.clip = name, model, clip
        self.optimizer = torch.optim.AdamW(model.parameters(), **optimizer_args)
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self.tokens: list[int] = []
        self.losses: list[float] = []

    def loss(self, batch) -> tuple[torch.Tensor, int]:  # noqa: ANN001
        raise NotImplementedError

    def step(self, batch, sync, timed: bool) -> None:  # noqa: ANN001
        sync()
        wall, cpu = time.perf_counter(), time.process_time()
        loss, n_tokens = self.loss(batch)
        loss.backward()
        if self.clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        sync()
        if timed:
            self.wall.append(time.perf_counter() - wall)
            self.cpu.append(time.process_time() - cpu)
            self.tokens.append(int(n_tokens))
            self.losses.append(loss.item())


class Plain(Engine):
    """The researcher's loop: the padded batch straight into the transformers model, its own loss."""

    def loss(self, batch):  # noqa: ANN001, ANN201
        out = self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                         position_ids=batch.position_ids, labels=batch.labels, use_cache=False)
        return out.loss, int((batch.labels[:, 1:] != -100).sum())


class Project(Engine):
    """The project's SFT step: :meth:`SFTModule.sft_forward`."""

    def __init__(self, name: str, module, optimizer_args: dict, clip: float) -> None:  # noqa: ANN001
        super().__init__(name, module.policy, optimizer_args, clip)
        self.module = module

    def loss(self, batch):  # noqa: ANN001, ANN201
        return self.module.sft_forward(batch)


# ------------------------------------------------------------------------------------------ run
def main(argv: list[str] | None = None) -> str:
    args = parse_args(argv)
    if args.quick:
        args.steps = min(args.steps, 2)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    load_start = os.getloadavg()[0]
    started = datetime.datetime.now().isoformat(timespec="seconds")

    from adagrpo.lightning_modules.policy import count_parameters
    from adagrpo.lightning_modules.sft import SFTModule

    shipped = shipped_sft()
    train_dtype = args.train_dtype or shipped["train_dtype"]
    bf16_native = device.type == "cuda" or bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if args.train_dtype is None and train_dtype == "bfloat16" and not bf16_native:
        train_dtype = "float32"

    dm = datamodule(args)
    dm.prepare()
    t0 = time.perf_counter()
    batches = []
    for batch in dm.train_dataloader():  # the loader's bucketed batches in its (seeded) shuffled order
        batches.append(batch)
        if len(batches) == args.steps + 2:
            break
    load_s = (time.perf_counter() - t0) / len(batches)
    batches = [type(b)(*(t.to(device) for t in (b.input_ids, b.attention_mask, b.position_ids, b.labels)))
               for b in batches]

    def module(dtype: str) -> SFTModule:
        torch.manual_seed(0)
        m = SFTModule(policy=policy_spec(args), train_dtype=dtype)
        m.attach(dm)
        m.configure_model()
        return m.to(device).train()

    project = module(train_dtype)
    project32 = module("float32")
    plain_model = copy.deepcopy(project32.policy)
    project32.policy.load_state_dict(project.policy.state_dict())
    same_start = all(torch.equal(a, b) for a, b in zip(project.policy.state_dict().values(),
                                                       plain_model.state_dict().values()))
    opt, clip = shipped["optimizer"], shipped["clip"]
    engines = [Plain("plain", plain_model, opt, clip),
               Project("project", project, opt, clip),
               Project("project fp32", project32, opt, clip)]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    for i, batch in enumerate(batches):
        timed = i >= 2
        for k in range(len(engines)):
            engines[(i + k) % len(engines)].step(batch, sync, timed)
    load_end = os.getloadavg()[0]

    # ---------------------------------------------------------------------------------- report
    plain = engines[0]
    n_params = count_parameters(plain_model)
    timed_batches = batches[2:]
    real = sum(int(b.attention_mask.sum()) for b in timed_batches)
    padded = sum(b.input_ids.numel() for b in timed_batches)
    needed = sum(int(b.attention_mask.sum(1).max()) * len(b) for b in timed_batches)
    flops = [step_flops(plain_model, b) for b in timed_batches]
    peak = args.peak_tflops
    if device.type == "cuda" and peak is None:
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in GPU_PEAK_BF16.items() if k in name), None)
    cfg = plain_model.config
    lines = [
        f"SFT step benchmark  {started}",
        f"torch {torch.__version__}, python {platform.python_version()}, device {device}"
        + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else
           f", threads {torch.get_num_threads()}, CPU bfloat16 matmuls native: {bf16_native}"),
        f"model: LLaMA (configs/model/policy_{'quick' if args.quick else args.model}.yaml) hidden {cfg.hidden_size}, "
        f"{cfg.num_hidden_layers} layers, {cfg.num_attention_heads} heads, {n_params / 1e6:.2f}M params, "
        f"vocab {cfg.vocab_size}; same initial weights for every engine: {same_start}",
        f"data: {'tiny synthetic world (--quick)' if args.quick else args.data} — {len(dm.sft_windows)} SFT windows, "
        f"batch {dm.batch_size}, length-bucketed loader batches {batches[0].input_ids.shape[1]} tokens wide; "
        f"the {len(timed_batches)} timed batches: {real / padded:.1%} of their tokens are real, "
        f"{needed / padded:.1%} if each were cut to its longest row",
        f"optimizer: AdamW {opt}, clip {clip}; project train_dtype {train_dtype}; "
        f"{args.steps} timed steps per engine after 2 warm-up, interleaved (order rotating)",
        f"loader: {load_s * 1e3:.1f} ms per batch (in-process, outside the timed step, the same for every engine)",
        "",
        f"{'engine':14s} {'tokens/s (wall)':>16s} {'tokens/CPU-s':>13s} {'median s/step':>14s} "
        f"{'vs plain (wall)':>16s} "
        f"{'vs plain (CPU)':>15s}" + ("  MFU" if device.type == "cuda" else ""),
    ]

    def rate(e: Engine, times: list[float]) -> float:
        return sum(e.tokens) / sum(times)

    for e in engines:
        wall, cpu = rate(e, e.wall), rate(e, e.cpu)
        mfu = ""
        if device.type == "cuda" and peak:
            mfu = f"  {sum(flops) / sum(e.wall) / (peak * 1e12):.1%}"
        lines.append(f"{e.name:14s} {wall:16.0f} {cpu:13.0f} {statistics.median(e.wall):14.3f} "
                     f"{wall / rate(plain, plain.wall):15.2f}x {cpu / rate(plain, plain.cpu):14.2f}x{mfu}")
    per_step = [p / q for p, q in zip(plain.wall, engines[1].wall)]
    lines += [
        "",
        f"project/plain per step (wall): median {statistics.median(per_step):.2f}x, "
        f"range {min(per_step):.2f}–{max(per_step):.2f}x",
        "losses over the timed steps (each engine trains its own copy on the same batches): "
        + "; ".join(f"{e.name} {e.losses[0]:.3f} → {e.losses[-1]:.3f}" for e in engines),
    ]
    if device.type == "cuda":
        lines.append(f"MFU: model FLOPs of the real tokens ({statistics.mean(flops) / 1e9:.1f} GFLOP/step) per second "
                     f"over a bf16 dense peak of {peak} TFLOP/s" if peak else "MFU: unknown GPU peak (--peak-tflops)")
    else:
        lines.append(f"1-min load average: {load_start:.2f} at start, {load_end:.2f} at end on {os.cpu_count()} "
                     "CPUs. The machine is shared with other jobs: a load above this run's "
                     f"{torch.get_num_threads()} thread(s) "
                     f"means other processes competed for the cores, so wall-clock rates are deflated and noisy "
                     f"(interleaving shares that between engines; CPU time is the steadier measure)")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    out = args.out
    if out is None and not args.quick:
        suffix = "" if args.data == "synthetic" else f"_{args.data}"
        out = str(RESULTS / f"sft_step_{device.type}{suffix}.txt")
    if out and out != "-":
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text)
    return text


if __name__ == "__main__":
    main()
