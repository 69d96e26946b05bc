"""Side-by-side benchmark: our :class:`DecodingEngine` vs HF ``generate`` for trie-constrained beam search.

Both decode the same random-init LLaMA over the same left-padded prompts and the same catalogue trie.

* **ours**: ``DecodingEngine.generate(..., DecodingConfig("beam", K, constrained=True))`` over the whole
  batch (``--batch`` users at once): prompt prefilled once per user, beams as extra cache columns.
* **HF**: ``model.generate(num_beams=K, num_return_sequences=K, max_new_tokens=L, min_new_tokens=L,
  do_sample=False, length_penalty=0.0, early_stopping=True, prefix_allowed_tokens_fn=...)`` on the first
  ``--hf-users`` users of the *same* left-padded tensor (``attention_mask`` marks the padding), in
  chunks of ``--hf-chunk`` users (default: all of them in one batch). HF is slow, so it runs on a subset
  and both are reported as users/s.

The prefix function is a dict lookup (generated prefix tuple → precomputed ``LongTensor`` of allowed
token ids, built once from the catalogue), so a slow Python trie is not billed to HF. Its own cost, and
the cost of HF's ``PrefixConstrainedLogitsProcessor`` around it (a Python loop over batch × beams that
writes a mask row per beam), are timed separately and printed.

Agreement: on the first ``--check-users`` users, HF's top-K (with ``output_scores``) is compared with
ours: share of (user, rank) slots with the same item, share of the same item sets, max score gap.

    python -m benchmarks.decoding                 # defaults; writes benchmarks/results/decoding_cpu.txt on CPU
    python -m benchmarks.decoding --quick         # tiny smoke run (tests)
    python -m benchmarks.decoding --profile       # + torch.profiler table of one run of ours
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from adagrpo.datamodules.semantic_ids import SidVocab  # noqa: E402
from adagrpo.datamodules.trie import CatalogTrie  # noqa: E402
from adagrpo.lightning_modules.decoding import DecodingConfig, DecodingEngine  # noqa: E402
from adagrpo.lightning_modules.policy import LlamaPolicy  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "decoding_cpu.txt"
QUICK = dict(batch=8, beam=5, history=4, hidden=32, layers=1, heads=2, items=300, codebook=16,
             hf_users=4, check_users=4, repeats=1, hf_repeats=1)


# ------------------------------------------------------------------------------------------ setup
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=256, help="users decoded at once by ours")
    p.add_argument("--beam", type=int, default=20, help="beam width = candidates returned")
    p.add_argument("--history", type=int, default=20, help="items in a full history (prompt = 3*history + bos)")
    p.add_argument("--short-frac", type=float, default=0.25, help="share of users with a shorter history")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--items", type=int, default=12000, help="catalogue size (random distinct SIDs)")
    p.add_argument("--codebook", type=int, default=256, help="codes per level (3 levels)")
    p.add_argument("--hf-users", type=int, default=64, help="users decoded by HF (a subset: HF is slow)")
    p.add_argument("--hf-chunk", type=int, default=0, help="HF users per generate call (0 = all hf-users at once)")
    p.add_argument("--check-users", type=int, default=8, help="users compared item by item")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of ours (median reported)")
    p.add_argument("--hf-repeats", type=int, default=1, help="timed runs of HF (median reported)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", action="store_true", help="print a torch.profiler table of one run of ours")
    p.add_argument("--out", default=None, help="write the table here (default: results file for a default CPU run)")
    p.add_argument("--quick", action="store_true", help="tiny smoke run (overrides the sizes above)")
    args = p.parse_args(argv)
    defaults = vars(p.parse_args([]))
    args.is_default = all(getattr(args, k) == v for k, v in defaults.items() if k not in ("profile", "out"))
    if args.quick:
        for k, v in QUICK.items():
            setattr(args, k, v)
    return args


def make_catalogue(n: int, codebook: int, gen: torch.Generator) -> torch.Tensor:
    """``[n, 3]`` random distinct code tuples."""
    if n > codebook**3:
        raise ValueError(f"{n} items do not fit in {codebook}^3 SIDs")
    flat = torch.randperm(codebook**3, generator=gen)[:n] if codebook**3 <= 1 << 24 else None
    if flat is None:  # huge code space: sample with rejection
        seen: set[int] = set()
        while len(seen) < n:
            seen.update(torch.randint(0, codebook**3, (n,), generator=gen).tolist())
        flat = torch.tensor(sorted(seen)[:n])
    return torch.stack([flat // codebook**2, (flat // codebook) % codebook, flat % codebook], 1)


def make_prompts(codes: torch.Tensor, vocab: SidVocab, batch: int, history: int, short_frac: float,
                 gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-padded prompts ``<bos>`` + SIDs of ``history`` random items (shorter for some users)."""
    depth = codes.shape[1]
    p = 1 + depth * history
    tokens = vocab.encode(codes)  # [N, L]
    lengths = torch.full((batch,), history)
    short = torch.rand(batch, generator=gen) < short_frac
    lengths[short] = torch.randint(1, max(history, 2), (int(short.sum()),), generator=gen).clamp_max(history)
    ids = torch.full((batch, p), vocab.pad_id, dtype=torch.long)
    mask = torch.zeros(batch, p, dtype=torch.long)
    for u in range(batch):
        h = int(lengths[u])
        items = torch.randint(0, len(codes), (h,), generator=gen)
        row = torch.cat([torch.tensor([vocab.bos_id]), tokens[items].flatten()])
        ids[u, p - len(row):] = row
        mask[u, p - len(row):] = 1
    pos = (mask.cumsum(1) - 1).clamp_min(0)
    return ids, mask, pos


class PrefixFn:
    """HF ``prefix_allowed_tokens_fn``: generated-prefix tuple → precomputed ``LongTensor`` of allowed ids.

    All the trie work happens once here; a call is one ``tolist`` and one dict lookup. ``seconds``
    accumulates the time spent inside calls.
    """

    def __init__(self, codes: torch.Tensor, vocab: SidVocab, prompt_len: int, device: torch.device) -> None:
        tokens = vocab.encode(codes).tolist()
        allowed: dict[tuple[int, ...], set[int]] = {}
        for sid in tokens:
            for level in range(len(sid)):
                allowed.setdefault(tuple(sid[:level]), set()).add(sid[level])
        self.table = {k: torch.tensor(sorted(v), dtype=torch.long, device=device) for k, v in allowed.items()}
        self.fallback = torch.tensor([vocab.eos_id], device=device)  # past the SID or a dead prefix
        self.prompt_len = prompt_len
        self.calls = 0
        self.seconds = 0.0

    def __call__(self, batch_id: int, input_ids: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        out = self.table.get(tuple(input_ids[self.prompt_len:].tolist()), self.fallback)
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        return out


class ProcessorTimer:
    """Times HF's ``PrefixConstrainedLogitsProcessor.__call__`` (its Python loop + our function)."""

    def __init__(self) -> None:
        from transformers.generation import logits_process

        self.cls = logits_process.PrefixConstrainedLogitsProcessor
        self.orig = self.cls.__call__
        self.seconds = 0.0

    def __enter__(self) -> ProcessorTimer:
        orig, timer = self.orig, self

        def timed(proc, input_ids, scores):  # noqa: ANN001, ANN202
            t0 = time.perf_counter()
            try:
                return orig(proc, input_ids, scores)
            finally:
                timer.seconds += time.perf_counter() - t0

        self.cls.__call__ = timed
        return self

    def __exit__(self, *exc) -> None:  # noqa: ANN002
        self.cls.__call__ = self.orig


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_runs(fn: Callable[[], object], repeats: int, device: torch.device, desc: str,
               warmup: bool = True) -> tuple[list[float], list[float], object]:
    """A warm-up call, then ``repeats`` timed calls (tqdm bar).

    Returns wall-clock seconds and process CPU seconds (all threads) of each call, and the last result.
    CPU seconds are less sensitive than wall time to other processes sharing the machine.
    """
    from tqdm.auto import tqdm

    out = None
    if warmup:
        out = fn()
        sync(device)
    wall, cpu = [], []
    for _ in tqdm(range(repeats), desc=desc, unit="run", file=sys.stderr):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        sync(device)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return wall, cpu, out


# ------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> dict:
    import transformers
    from transformers import GenerationConfig

    args = parse_args(argv)
    load_start = os.getloadavg()[0]
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    gen = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)

    sizes = [args.codebook] * 3
    codes = make_catalogue(args.items, args.codebook, gen)
    trie, vocab = CatalogTrie(codes, sizes), SidVocab(sizes)
    model, _ = LlamaPolicy(hidden_size=args.hidden, num_layers=args.layers, num_heads=args.heads).build(vocab)
    model = model.to(device=device, dtype=dtype).eval()
    n_params = sum(p.numel() for p in model.parameters())
    ids, mask, pos = (t.to(device) for t in make_prompts(codes, vocab, args.batch, args.history, args.short_frac, gen))
    p = ids.shape[1]
    n_short = int((mask.sum(1) < p).sum())
    engine = DecodingEngine(trie, vocab).to(device)
    config = DecodingConfig("beam", args.beam, constrained=True)

    # ---- ours
    def ours() -> object:
        return engine.generate(model, ids, mask, pos, config)

    t_ours, c_ours, cand = timed_runs(ours, args.repeats, device, "ours")
    med_ours = statistics.median(t_ours)
    cpu_ours = statistics.median(c_ours) / args.batch
    ups_ours = args.batch / med_ours

    # ---- HF
    hf_users = min(args.hf_users, args.batch)
    chunk = args.hf_chunk or hf_users
    prefix_fn = PrefixFn(codes, vocab, p, device)
    gcfg = dict(num_beams=args.beam, num_return_sequences=args.beam, max_new_tokens=3, min_new_tokens=3,
                do_sample=False, length_penalty=0.0, early_stopping=True, pad_token_id=vocab.pad_id,
                eos_token_id=None, bos_token_id=vocab.bos_id, use_cache=True)

    def hf(users: slice | torch.Tensor, **extra) -> object:  # noqa: ANN003
        return model.generate(ids[users], attention_mask=mask[users], prefix_allowed_tokens_fn=prefix_fn,
                              generation_config=GenerationConfig(**gcfg, **extra))

    def hf_all() -> None:
        for s in range(0, hf_users, chunk):
            hf(slice(s, min(s + chunk, hf_users)))

    # Warm up on a few users (HF's full subset is slow), then time the subset.
    hf(slice(0, min(hf_users, 4)))
    sync(device)
    prefix_fn.seconds, prefix_fn.calls = 0.0, 0
    with ProcessorTimer() as proc_timer:
        t_hf, c_hf, _ = timed_runs(hf_all, args.hf_repeats, device, "HF", warmup=False)
    fn_seconds, fn_calls = prefix_fn.seconds, prefix_fn.calls
    med_hf = statistics.median(t_hf)
    ups_hf = hf_users / med_hf
    cpu_hf = statistics.median(c_hf) / hf_users
    fn_share = fn_seconds / sum(t_hf)
    proc_share = proc_timer.seconds / sum(t_hf)

    # ---- agreement on a few users (HF with scores), half of them with a shorter (left-padded) history
    n_check = min(args.check_users, args.batch)
    is_short = mask.sum(1) < p
    short_u, full_u = is_short.nonzero()[:, 0], (~is_short).nonzero()[:, 0]
    n_sh = min(len(short_u), n_check // 2)
    users = torch.cat([short_u[:n_sh], full_u[: n_check - n_sh]]).sort().values
    n_check = len(users)
    r = hf(users, output_scores=True, return_dict_in_generate=True)
    hf_tokens = r.sequences[:, p:].reshape(n_check, args.beam, -1)
    hf_items = engine.items_of(hf_tokens)
    hf_scores = r.sequences_scores.reshape(n_check, args.beam).float()
    our_items, our_scores = cand.items[users], cand.scores[users]
    rank_agree = (hf_items == our_items).float().mean().item()
    set_agree = sum(set(a.tolist()) == set(b.tolist()) for a, b in zip(hf_items, our_items)) / n_check
    # Score gap per item present in both lists (independent of order among near-ties).
    gaps = []
    for u in range(n_check):
        ours_by_item = dict(zip(our_items[u].tolist(), our_scores[u].tolist()))
        for item, s in zip(hf_items[u].tolist(), hf_scores[u].tolist()):
            if item in ours_by_item:
                gaps.append(abs(ours_by_item[item] - s))
    max_gap = max(gaps) if gaps else float("nan")
    all_valid = bool(cand.valid.all())

    # ---- report
    lines = [
        f"decoding benchmark  {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"torch {torch.__version__}, transformers {transformers.__version__}, python {platform.python_version()}, "
        f"device {args.device}, dtype {args.dtype}, threads {torch.get_num_threads()}"
        + (f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""),
        f"model: LLaMA hidden {args.hidden}, {args.layers} layers, {args.heads} heads, {n_params / 1e6:.2f}M params "
        f"(random init, eval); vocab {vocab.vocab_size}",
        f"catalogue: {args.items} random distinct SIDs, 3 x {args.codebook} codes; beam {args.beam}, constrained",
        f"prompts: <bos> + {args.history} items = {p} tokens, {n_short}/{args.batch} users shorter (left-padded); "
        f"HF gets the same left-padded rows + attention_mask, {hf_users} users in batches of {chunk}",
        "",
        f"{'engine':<8}{'users':>7}{'runs':>6}{'median s':>11}{'users/s':>10}{'CPU ms/user':>13}",
        f"{'ours':<8}{args.batch:>7}{args.repeats:>6}{med_ours:>11.3f}{ups_ours:>10.1f}{1e3 * cpu_ours:>13.1f}",
        f"{'HF':<8}{hf_users:>7}{args.hf_repeats:>6}{med_hf:>11.3f}{ups_hf:>10.2f}{1e3 * cpu_hf:>13.1f}",
        "",
        f"speed-up ours/HF: {ups_ours / ups_hf:.1f}x in users/s (wall clock), "
        f"{cpu_hf / cpu_ours:.1f}x in CPU time per user",
        f"HF constraint cost: prefix fn {fn_seconds / max(args.hf_repeats, 1):.3f}s/run "
        f"({fn_calls // max(args.hf_repeats, 1)} calls, {100 * fn_share:.1f}%), "
        f"whole PrefixConstrainedLogitsProcessor {proc_timer.seconds / max(args.hf_repeats, 1):.3f}s/run "
        f"({100 * proc_share:.1f}%); HF without it: {hf_users / (med_hf * (1 - proc_share)):.2f} users/s",
        f"agreement on {n_check} users ({n_sh} shorter; top-{args.beam}): "
        f"same item at same rank {100 * rank_agree:.1f}%, "
        f"same item set {100 * set_agree:.1f}%, max |score diff| {max_gap:.2e}; ours all valid: {all_valid}",
        f"times ours: {', '.join(f'{t:.3f}' for t in t_ours)} s; HF: {', '.join(f'{t:.3f}' for t in t_hf)} s",
        f"1-min load average: {load_start:.2f} at start, {os.getloadavg()[0]:.2f} at end "
        f"(> {torch.get_num_threads()} threads means other processes shared the CPU: timings are inflated)",
    ]
    table = "\n".join(lines)
    print(table)
    out = args.out or (RESULTS if args.is_default and args.device == "cpu" and not args.quick else None)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(table + "\n")
        print(f"written to {out}")

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=acts) as prof:
            ours()
            sync(device)
        sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(prof.key_averages(group_by_input_shape=True).table(sort_by=sort, row_limit=25))

    return dict(ours_users_per_s=ups_ours, hf_users_per_s=ups_hf, ratio=ups_ours / ups_hf,
                cpu_ratio=cpu_hf / cpu_ours, rank_agreement=rank_agree,
                set_agreement=set_agree, max_score_diff=max_gap, all_valid=all_valid)


if __name__ == "__main__":
    main()
