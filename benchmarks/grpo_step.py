"""Side-by-side benchmark of one GRPO training step: our :class:`GRPOModule` vs TRL's ``GRPOTrainer``.

One step = rollout (G completions per prompt) + rewards + reference log-probs + loss forward + backward +
gradient clipping + AdamW step. Both engines train the same random-init LLaMA (same weights at the
start) on the same prompts, with the same per-item reward, on the CPU with float32 weights; TRL and our
default rows compute in float32, our ``bf16`` rows with ``train_dtype: bfloat16`` (rollout, reference pass and
policy forward/backward under bfloat16 autocast, float32 attention, logits and losses).

* **ours**: the real ``GRPOModule.rollout`` (our decoding engine: prompt prefilled once per user, the G
  candidates as extra cache columns; trie-constrained beam search by default, and sampling), then
  ``reference_logprobs`` and ``losses`` (one tree-attention forward for the G candidates + the ground
  truth, the prompt encoded once with gradients), the module's default balancer (NLL of the ground truth +
  GRPO; TRL has no NLL term), backward, clipping, AdamW. This is ``GRPOModule.training_step`` with μ = 1,
  minus Lightning's bookkeeping and logging. The rollout, reference and policy passes split the batch by prompt
  length (``decoding.prompt_groups``: no call encodes columns that are padding in all its rows). With
  ``--bf16 yes`` (default ``auto``: where the CPU has native bfloat16 matmuls) each mode also runs with
  ``train_dtype: bfloat16`` ("ours beam bf16", "ours sample bf16"), interleaved with the others.
* **TRL**: ``GRPOTrainer`` on a model folder written with ``save_pretrained`` (policy and, because β > 0,
  the reference are loaded from that path) with a ``tokenizers`` WordLevel tokenizer over the SID
  vocabulary. TRL 1.16 refuses ``prefix_allowed_tokens_fn`` in ``generation_kwargs``, so the trainer's
  model gets a ``generate`` wrapper that passes a trie-based ``prefix_allowed_tokens_fn`` (our
  ``CatalogTrie``, memoised per generated prefix) — as MIMIGenRec does. One optimizer step processes
  the whole group batch: ``per_device_train_batch_size = generation_batch_size = B·G``,
  ``gradient_accumulation_steps = 1``, ``num_generations = G``. Its step is timed from the trainer's
  ``on_step_begin`` to ``on_step_end`` (generation happens inside; logging after ``on_step_end`` is
  not billed).

Measurements interleave (TRL step i, then each of our engines' step i, TRL step i+1, …: our steps run
inside TRL's ``on_step_end`` callback) so that other jobs on a shared machine slow both alike; the first
step of each is a warm-up; medians are reported.

    python -m benchmarks.grpo_step                # defaults; writes benchmarks/results/grpo_step_cpu.txt
    python -m benchmarks.grpo_step --quick        # tiny smoke run (tests)
    python -m benchmarks.grpo_step --mode beam    # ours with beam search only
    python -m benchmarks.grpo_step --bf16 yes     # also ours with train_dtype bfloat16 (default: if native)
"""

from __future__ import annotations

import argparse
import copy
import datetime
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from adagrpo.datamodules.semantic_ids import SPECIAL_TOKENS, SidVocab  # noqa: E402
from adagrpo.datamodules.sequence import PromptBatch  # noqa: E402
from adagrpo.datamodules.trie import CatalogTrie  # noqa: E402
from adagrpo.lightning_modules.base import bf16_native_cpu  # noqa: E402
from adagrpo.lightning_modules.decoding import DecodingEngine  # noqa: E402
from adagrpo.lightning_modules.gating import combine_gates  # noqa: E402
from adagrpo.lightning_modules.grpo import GRPOModule  # noqa: E402
from adagrpo.lightning_modules.policy import LlamaPolicy  # noqa: E402
from adagrpo.lightning_modules.reward import RewardModel  # noqa: E402
from benchmarks.decoding import ProcessorTimer, make_catalogue  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "grpo_step_cpu.txt"
QUICK = dict(batch=4, group=4, history=4, hidden=32, layers=1, heads=2, items=300, codebook=16, steps=2, threads=1)
PHASES = ("rollout", "reference", "forward", "backward", "step")


# ------------------------------------------------------------------------------------------ setup
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=64, help="prompts per optimizer step (B)")
    p.add_argument("--group", type=int, default=16, help="generations per prompt (G)")
    p.add_argument("--history", type=int, default=20, help="items in a full history (prompt = 3*history + bos)")
    p.add_argument("--short-frac", type=float, default=0.25, help="share of users with a shorter history")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--items", type=int, default=12000, help="catalogue size (random distinct SIDs)")
    p.add_argument("--codebook", type=int, default=256, help="codes per level (3 levels)")
    p.add_argument("--steps", type=int, default=5, help="timed steps of each engine (after one warm-up step)")
    p.add_argument("--mode", default="both", choices=["beam", "sample", "both"], help="our rollout mode(s)")
    p.add_argument("--bf16", default="auto", choices=["auto", "yes", "no"],
                   help="also run each of our modes with train_dtype bfloat16 (auto: where the CPU multiplies "
                        "bfloat16 natively, AVX512-BF16/AMX)")
    p.add_argument("--beta", type=float, default=0.001, help="KL weight (> 0: both engines run a reference)")
    p.add_argument("--epsilon", type=float, default=0.2, help="PPO clip range (both sides)")
    p.add_argument("--lr", type=float, default=1e-5, help="AdamW learning rate (both; weight decay 0)")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the table here (default: results file for a default run)")
    p.add_argument("--quick", action="store_true", help="tiny smoke run (overrides the sizes above)")
    args = p.parse_args(argv)
    defaults = vars(p.parse_args([]))
    args.is_default = all(getattr(args, k) == v for k, v in defaults.items() if k != "out")
    if args.quick:
        for k, v in QUICK.items():
            setattr(args, k, v)
    return args


def make_batches(codes: torch.Tensor, vocab: SidVocab, n_batches: int, batch: int, history: int,
                 short_frac: float, gen: torch.Generator) -> list[PromptBatch]:
    """``n_batches`` PromptBatches of random users: ``<bos>`` + SIDs of up to ``history`` random items
    (left-padded), a random target item."""
    depth = codes.shape[1]
    p = 1 + depth * history
    tokens = vocab.encode(codes)  # [N, L]
    out = []
    for _ in range(n_batches):
        lengths = torch.full((batch,), history)
        short = torch.rand(batch, generator=gen) < short_frac
        lengths[short] = torch.randint(1, max(history, 2), (int(short.sum()),), generator=gen).clamp_max(history)
        ids = torch.full((batch, p), vocab.pad_id, dtype=torch.long)
        mask = torch.zeros(batch, p, dtype=torch.long)
        hist = torch.full((batch, history), -1, dtype=torch.long)
        for u in range(batch):
            h = int(lengths[u])
            items = torch.randint(0, len(codes), (h,), generator=gen)
            row = torch.cat([torch.tensor([vocab.bos_id]), tokens[items].flatten()])
            ids[u, p - len(row):] = row
            mask[u, p - len(row):] = 1
            hist[u, history - h:] = items
        pos = (mask.cumsum(1) - 1).clamp_min(0)
        target = torch.randint(0, len(codes), (batch,), generator=gen)
        out.append(PromptBatch(prompt_ids=ids, prompt_mask=mask, position_ids=pos, history=hist, target=target,
                               target_tokens=tokens[target], user=torch.arange(batch),
                               position=lengths.clone()))
    return out


class TableReward(RewardModel):
    """A fixed random score per item (the same table TRL's reward function reads)."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = table

    @torch.no_grad()
    def score(self, histories: torch.Tensor, items: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        return self.table.to(items.device)[items.clamp_min(0)].masked_fill(items < 0, 0.0)


def build_ours(model: torch.nn.Module, engine: DecodingEngine, table: torch.Tensor, mode: str, args: argparse.Namespace,
               train_dtype: str = "float32") -> tuple[GRPOModule, torch.optim.Optimizer]:
    """A GRPOModule wired by hand (no SFT checkpoint, no DataModule): its own copy of the initial policy,
    a frozen reference copy, the engine, the table reward; all other settings are the module's defaults."""
    m = GRPOModule(init_from="<benchmark: random init>", reward=TableReward(table), num_generations=args.group,
                   rollout_mode=mode, constrained=True, temperature=1.0, beta=args.beta,
                   epsilon_low=args.epsilon, epsilon_high=args.epsilon, mu=1, grad_clip=1.0, train_dtype=train_dtype)
    m.policy = copy.deepcopy(model)
    object.__setattr__(m, "reference", copy.deepcopy(model).eval().requires_grad_(False))
    m.engine = engine
    opt = torch.optim.AdamW(m.policy.parameters(), lr=args.lr, weight_decay=0.0)
    return m, opt


def ours_step(m: GRPOModule, opt: torch.optim.Optimizer, batch: PromptBatch) -> tuple[dict[str, float], dict]:
    """One step as ``GRPOModule.training_step`` does it (μ = 1); returns per-phase seconds and a few stats."""
    t = [time.perf_counter()]
    ro = m.rollout(batch)
    t.append(time.perf_counter())
    ref_logp = m.reference_logprobs(batch, ro)
    t.append(time.perf_counter())
    m.policy.train()
    out, _ = m.losses(batch, ro, None, ref_logp)
    admission, _ = combine_gates(m.module_gates, out.diagnostics)
    loss, _ = m.balancer.combine(out.nll, out.grpo, admission, out.diagnostics)
    t.append(time.perf_counter())
    opt.zero_grad()
    loss.backward()
    t.append(time.perf_counter())
    torch.nn.utils.clip_grad_norm_(m.policy.parameters(), m.grad_clip)
    opt.step()
    t.append(time.perf_counter())
    phases = {name: t[i + 1] - t[i] for i, name in enumerate(PHASES)}
    stats = {"valid": ro.valid.float().mean().item(), "reward": ro.rewards.mean().item(),
             "loss": loss.item(), "finite": bool(torch.isfinite(loss))}
    return phases, stats


# ------------------------------------------------------------------------------------------ TRL side
class TriePrefixFn:
    """HF ``prefix_allowed_tokens_fn`` backed by our :class:`CatalogTrie`: the allowed token ids after a
    generated prefix are looked up in the trie once per distinct prefix, then served from a dict.

    ``prompt_len`` is set by the ``generate`` wrapper (TRL left-pads the prompts to one length).
    """

    def __init__(self, engine: DecodingEngine, eos_id: int) -> None:
        self.engine = engine
        self.fallback = torch.tensor([eos_id])  # past the SID or a dead prefix
        self.memo: dict[tuple[int, ...], torch.Tensor] = {}
        self.prompt_len = 0
        self.calls = 0
        self.seconds = 0.0

    def _allowed(self, prefix: tuple[int, ...]) -> torch.Tensor:
        level = len(prefix)
        trie = self.engine.trie
        if level >= trie.depth:
            return self.fallback
        state = trie.root(1)
        for lv, tok in enumerate(prefix):
            state = trie.step(state, self.engine.token_code(torch.tensor([tok]), lv), lv)
        if int(state[0]) < 0:
            return self.fallback
        ids = self.engine.token_of[level][trie.allowed(state, level)[0]]
        return ids if len(ids) else self.fallback

    def __call__(self, batch_id: int, input_ids: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        key = tuple(input_ids[self.prompt_len:].tolist())
        out = self.memo.get(key)
        if out is None:
            out = self.memo[key] = self._allowed(key)
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        return out


def sid_tokenizer(vocab: SidVocab):  # noqa: ANN201
    """A ``PreTrainedTokenizerFast`` (WordLevel, whitespace-split) whose ids are exactly our token ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    strings = list(SPECIAL_TOKENS) + vocab.token_strings()
    assert len(strings) == vocab.vocab_size, "compact SidVocab layout expected"
    tok = Tokenizer(models.WordLevel(vocab={s: i for i, s in enumerate(strings)}, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.Metaspace()  # any decoder; completions are scored from their ids
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
                                   unk_token="<pad>", padding_side="left"), strings


def prompt_texts(batches: list[PromptBatch], strings: list[str]) -> list[str]:
    """The real (unpadded) prompt tokens of every row, as whitespace-separated token strings."""
    texts = []
    for b in batches:
        for ids, mask in zip(b.prompt_ids, b.prompt_mask):
            texts.append(" ".join(strings[i] for i in ids[mask.bool()].tolist()))
    return texts


def trl_config(config_cls, args: argparse.Namespace, output_dir: str, b: int, g: int, n_steps: int,  # noqa: ANN001
               depth: int):  # noqa: ANN201
    """TRL's GRPOConfig: one optimizer step = B prompts x G completions, no gradient accumulation; every
    generation setting explicit; TRL defaults that differ from ours (bf16, gradient checkpointing, the
    ``dapo`` loss, lr 1e-6) overridden."""
    return config_cls(
        output_dir=output_dir,
        use_cpu=True,
        bf16=False,
        fp16=False,
        per_device_train_batch_size=b * g,
        gradient_accumulation_steps=1,
        generation_batch_size=b * g,
        num_generations=g,
        max_steps=n_steps,
        learning_rate=args.lr,
        weight_decay=0.0,
        lr_scheduler_type="constant",
        warmup_steps=0,
        optim="adamw_torch",
        max_grad_norm=1.0,
        gradient_checkpointing=False,
        beta=args.beta,
        epsilon=args.epsilon,
        epsilon_high=args.epsilon,
        num_iterations=1,
        loss_type="grpo",  # per-sequence token mean, then mean: our default `aggregation: sequence`
        scale_rewards="group",
        mask_truncated_completions=False,
        disable_dropout=True,
        shuffle_dataset=False,  # step i sees prompts [B*i, B*(i+1)): the same as ours
        seed=args.seed,
        # generation: every flag explicit
        use_vllm=False,
        use_transformers_continuous_batching=False,
        max_completion_length=depth,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        min_p=None,
        repetition_penalty=1.0,
        cache_implementation=None,
        generation_kwargs={"num_beams": 1, "use_cache": True},
        # bookkeeping
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        eval_strategy="no",
        log_completions=False,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )


# ------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> dict:
    import transformers
    import trl
    from datasets import Dataset
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from trl import GRPOConfig, GRPOTrainer

    args = parse_args(argv)
    load_start = os.getloadavg()[0]
    if args.threads:
        torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    bf16_native = bf16_native_cpu()
    with_bf16 = args.bf16 == "yes" or (args.bf16 == "auto" and bf16_native)
    # our engines: "<mode>" (float32) and "<mode> bf16" (train_dtype bfloat16), run one after another per TRL step
    modes = [m + suffix for m in (["beam", "sample"] if args.mode == "both" else [args.mode])
             for suffix in ("", " bf16")[: 1 + with_bf16]]
    n_steps = args.steps + 1  # + warm-up
    b, g = args.batch, args.group

    sizes = [args.codebook] * 3
    codes = make_catalogue(args.items, args.codebook, gen)
    trie, vocab = CatalogTrie(codes, sizes), SidVocab(sizes)
    engine = DecodingEngine(trie, vocab)
    table = torch.rand(args.items, generator=gen)  # the reward: a fixed random score per item
    model, _ = LlamaPolicy(hidden_size=args.hidden, num_layers=args.layers, num_heads=args.heads).build(vocab)
    model = model.float()
    n_params = sum(p.numel() for p in model.parameters())
    batches = make_batches(codes, vocab, n_steps, b, args.history, args.short_frac, gen)
    p_len = batches[0].prompt_ids.shape[1]
    n_short = sum(int((bt.prompt_mask.sum(1) < p_len).sum()) for bt in batches)

    ours = {mode: build_ours(model, engine, table, mode.split()[0], args,
                             "bfloat16" if mode.endswith("bf16") else "float32") for mode in modes}
    ours_times: dict[str, list[float]] = {mode: [] for mode in modes}
    ours_cpu: dict[str, list[float]] = {mode: [] for mode in modes}
    ours_phases: dict[str, list[dict[str, float]]] = {mode: [] for mode in modes}
    ours_stats: dict[str, list[dict]] = {mode: [] for mode in modes}

    def run_ours(step: int) -> None:
        for mode in modes:
            m, opt = ours[mode]
            t0, c0 = time.perf_counter(), time.process_time()
            phases, stats = ours_step(m, opt, batches[step])
            ours_times[mode].append(time.perf_counter() - t0)
            ours_cpu[mode].append(time.process_time() - c0)
            ours_phases[mode].append(phases)
            ours_stats[mode].append(stats)

    # ---- TRL: model folder (policy + reference load from it), tokenizer, dataset, reward, constrained generate
    tokenizer, strings = sid_tokenizer(vocab)
    texts = prompt_texts(batches, strings)
    enc = tokenizer(texts)["input_ids"]
    real_rows = [ids[mask.bool()].tolist() for bt in batches for ids, mask in zip(bt.prompt_ids, bt.prompt_mask)]
    assert enc == real_rows, "the tokenizer does not map the prompt texts to our token ids"
    tmp = tempfile.TemporaryDirectory(prefix="grpo_step_bench_")
    model_dir = Path(tmp.name) / "model"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    dataset = Dataset.from_dict({"prompt": texts})
    invalid_reward = float(table.min()) - 1.0
    trl_seen: list[list[str]] = []  # prompts TRL scored, per step
    trl_valid: list[float] = []

    def item_reward(prompts: list[str], completions: list[str], completion_ids: list[list[int]],
                    **kwargs) -> list[float]:  # noqa: ANN003
        depth = engine.depth
        toks = torch.full((len(completion_ids), depth), -1, dtype=torch.long)
        for i, ids in enumerate(completion_ids):
            ids = ids[:depth]
            toks[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        items = engine.items_of(toks)
        trl_seen.append(list(prompts))
        trl_valid.append((items >= 0).float().mean().item())
        return torch.where(items >= 0, table[items.clamp_min(0)], torch.tensor(invalid_reward)).tolist()

    with warnings.catch_warnings():  # transformers 5 renames gradient_checkpointing (TRL defaults it to True)
        warnings.simplefilter("ignore", FutureWarning)
        config = trl_config(GRPOConfig, args, str(Path(tmp.name) / "out"), b, g, n_steps, engine.depth)

    class Interleave(TrainerCallback):
        """Times each TRL optimizer step, then runs our step(s) on the same prompts."""

        def __init__(self) -> None:
            self.wall: list[float] = []
            self.cpu: list[float] = []
            self.t0 = self.c0 = 0.0

        def on_step_begin(self, args_, state, control, **kw):  # noqa: ANN001, ANN003, ANN201
            self.t0, self.c0 = time.perf_counter(), time.process_time()

        def on_step_end(self, args_, state, control, **kw):  # noqa: ANN001, ANN003, ANN201
            self.wall.append(time.perf_counter() - self.t0)
            self.cpu.append(time.process_time() - self.c0)
            print(f"step {state.global_step}/{n_steps}: TRL {self.wall[-1]:.2f}s", file=sys.stderr, flush=True)
            run_ours(state.global_step - 1)
            print("    " + ", ".join(f"ours {m} {ours_times[m][-1]:.2f}s" for m in modes), file=sys.stderr, flush=True)

    logging.getLogger("transformers").setLevel(logging.ERROR)
    transformers.logging.set_verbosity_error()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        timer = Interleave()
        trainer = GRPOTrainer(model=str(model_dir), reward_funcs=item_reward, args=config, train_dataset=dataset,
                              callbacks=[timer])
    for cb in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(cb)
    ref_from_path = trainer.ref_model is not None and Path(trainer.ref_model.config._name_or_path) == model_dir
    checkpointing = bool(getattr(trainer.model, "is_gradient_checkpointing", False))
    same_init = all(torch.equal(a, bb) for a, bb in zip(trainer.model.state_dict().values(),
                                                          model.state_dict().values()))

    policy = trainer.model
    prefix_fn = TriePrefixFn(engine, vocab.eos_id)
    original_generate = policy.generate
    gen_wall: list[float] = []

    def constrained_generate(*a, **kw):  # noqa: ANN002, ANN003, ANN202
        input_ids = kw["input_ids"] if "input_ids" in kw else a[0]
        prefix_fn.prompt_len = input_ids.shape[1]
        t0 = time.perf_counter()
        out = original_generate(*a, prefix_allowed_tokens_fn=prefix_fn, **kw)
        gen_wall.append(time.perf_counter() - t0)
        return out

    policy.generate = constrained_generate
    score_wall: list[float] = []
    original_score = trainer._generate_and_score_completions

    def timed_score(*a, **kw):  # noqa: ANN002, ANN003, ANN202
        t0 = time.perf_counter()
        out = original_score(*a, **kw)
        score_wall.append(time.perf_counter() - t0)
        return out

    trainer._generate_and_score_completions = timed_score

    with ProcessorTimer() as proc_timer, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()
    tmp.cleanup()

    # ---- checks: TRL saw the same prompts as ours, every completion was a catalogue item
    same_prompts = len(trl_seen) == n_steps and all(
        seen == [t for t in texts[i * b:(i + 1) * b] for _ in range(g)] for i, seen in enumerate(trl_seen))

    # ---- report
    def med(xs: list[float]) -> float:
        return statistics.median(xs[1:]) if len(xs) > 1 else xs[0]

    trl_s, trl_cpu = med(timer.wall), med(timer.cpu)
    trl_gen, trl_score = med(gen_wall), med(score_wall)
    rows = {mode: (med(ours_times[mode]), med(ours_cpu[mode])) for mode in modes}
    result: dict = {"trl_prompts_per_s": b / trl_s, "same_prompts": same_prompts, "same_init": same_init,
                    "trl_ref_from_path": ref_from_path, "trl_checkpointing": checkpointing,
                    "trl_valid": min(trl_valid)}
    lines = [
        f"GRPO step benchmark  {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}, "
        f"python {platform.python_version()}, device cpu, float32 weights; compute float32 (TRL, ours)"
        + (", bfloat16 autocast (ours bf16)" if with_bf16 else "")
        + f"; CPU bfloat16 matmuls native: {bf16_native}; threads {torch.get_num_threads()}",
        f"model: LLaMA hidden {args.hidden}, {args.layers} layers, {args.heads} heads, {n_params / 1e6:.2f}M params "
        f"(random init, same weights for every engine); vocab {vocab.vocab_size}",
        f"catalogue: {args.items} random distinct SIDs, 3 x {args.codebook} codes; reward: fixed random score per item",
        f"step: B={b} prompts x G={g} completions, <bos> + {args.history} items = {p_len} tokens "
        f"({n_short}/{b * n_steps} users shorter, left-padded), beta={args.beta}, eps={args.epsilon}, mu=1, "
        f"AdamW lr {args.lr}, clip 1.0; {args.steps} timed steps after 1 warm-up, interleaved TRL/ours",
        "",
        f"{'engine':<32}{'med s/step':>10}{'prompts/s':>11}{'CPU s/step':>12}{'ours/TRL':>10}",
    ]
    for mode in modes:
        s, c = rows[mode]
        label = f"ours {mode.split()[0]} (constrained{', bf16' if mode.endswith('bf16') else ''})"
        lines.append(f"{label:<32}{s:>10.3f}{b / s:>11.2f}{c:>12.2f}{trl_s / s:>9.1f}x")
        key = mode.replace(" ", "_")
        result[f"ours_{key}_prompts_per_s"] = b / s
        result[f"ratio_{key}"] = trl_s / s
        result[f"cpu_ratio_{key}"] = trl_cpu / c
    lines.append(f"{'TRL GRPOTrainer (sample)':<32}{trl_s:>10.3f}{b / trl_s:>11.2f}{trl_cpu:>12.2f}{1:>9.1f}x")
    lines.append("")
    lines.append("ours, median seconds per phase: " + "; ".join(
        f"{mode}: " + ", ".join(f"{ph} {med([p[ph] for p in ours_phases[mode]]):.3f}" for ph in PHASES)
        for mode in modes))
    lines.append(
        f"TRL, median seconds: generate {trl_gen:.3f} (constraint: prefix fn "
        f"{prefix_fn.seconds / max(len(gen_wall), 1):.3f}/step, {prefix_fn.calls // max(len(gen_wall), 1)} calls, "
        f"{len(prefix_fn.memo)} distinct prefixes in all; PrefixConstrainedLogitsProcessor "
        f"{proc_timer.seconds / max(len(gen_wall), 1):.3f}/step), generate+reward+reference+advantages "
        f"{trl_score:.3f}, loss forward+backward+clip+step {trl_s - trl_score:.3f}")
    lines.append(
        "checks: TRL scored the same prompts as ours: "
        f"{same_prompts}; TRL policy starts from our weights: {same_init}; TRL reference loaded from the saved "
        f"path: {ref_from_path}; TRL gradient checkpointing: {checkpointing}; "
        f"valid completions TRL {100 * min(trl_valid):.1f}%, "
        + ", ".join(f"ours {m} {100 * min(s['valid'] for s in ours_stats[m]):.1f}%" for m in modes)
        + "; finite losses ours: " + str(all(s["finite"] for m in modes for s in ours_stats[m])))
    lines.append("times TRL: " + ", ".join(f"{t:.2f}" for t in timer.wall) + " s; " + "; ".join(
        f"ours {m}: " + ", ".join(f"{t:.2f}" for t in ours_times[m]) + " s" for m in modes) + " (first = warm-up)")
    load_end = os.getloadavg()[0]
    lines.append(f"1-min load average: {load_start:.2f} at start, {load_end:.2f} at end "
                 f"(> {torch.get_num_threads()} threads means other processes shared the CPU: timings are inflated)")
    table_txt = "\n".join(lines)
    print(table_txt)
    out = args.out or (RESULTS if args.is_default and not args.quick else None)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(table_txt + "\n")
        print(f"written to {out}")
    result.update(load_start=load_start, load_end=load_end, bf16_native=bf16_native,
                  ours_phases={m: {ph: med([p[ph] for p in ours_phases[m]]) for ph in PHASES} for m in modes})
    return result


if __name__ == "__main__":
    main()
