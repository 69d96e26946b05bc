"""Build the catalogue trie for a large random catalogue and report time and memory.

    python benchmarks/trie.py                  # 1,000,000 items, 4 levels x 256 codes
    python benchmarks/trie.py --items 100000 --levels 3

Target (issue 2): a 1,000,000-item catalogue builds in under 60 s and under 1 GB. Memory is reported
three ways: the trie's own tensors (``CatalogTrie.nbytes``), the peak resident-set growth of the process
while building (which includes the temporary sort buffers), and the code table it was built from.
"""

from __future__ import annotations

import argparse
import time

import psutil
import torch

from adagrpo.datamodules.trie import CatalogTrie


def random_distinct_codes(n: int, levels: int, codebook: int, seed: int) -> torch.Tensor:
    """``n`` distinct random code tuples ``[n, levels]`` (drawn as distinct integers in the code space)."""
    gen = torch.Generator().manual_seed(seed)
    space = codebook**levels
    if n > space:
        raise SystemExit(f"{n} items do not fit in {codebook}^{levels} = {space} SIDs")
    ids = torch.unique(torch.randint(space, (int(n * 1.1) + 16,), generator=gen))
    while len(ids) < n:
        ids = torch.unique(torch.cat([ids, torch.randint(space, (n,), generator=gen)]))
    ids = ids[torch.randperm(len(ids), generator=gen)[:n]]
    codes = torch.empty(n, levels, dtype=torch.long)
    for level in range(levels - 1, -1, -1):
        codes[:, level] = ids % codebook
        ids = ids // codebook
    return codes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--levels", type=int, default=4)
    parser.add_argument("--codebook", type=int, default=256)
    parser.add_argument("--queries", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    codes = random_distinct_codes(args.items, args.levels, args.codebook, args.seed)
    proc = psutil.Process()
    rss0 = proc.memory_info().rss
    peak = [rss0]

    def sample() -> None:
        peak[0] = max(peak[0], proc.memory_info().rss)

    import threading

    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            sample()
            time.sleep(0.01)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    start = time.perf_counter()
    trie = CatalogTrie(codes, [args.codebook] * args.levels)
    build_s = time.perf_counter() - start
    done.set()
    watcher.join()
    sample()

    gen = torch.Generator().manual_seed(args.seed + 1)
    rows = torch.randint(args.items, (args.queries,), generator=gen)
    valid = codes[rows]
    invalid = torch.randint(args.codebook, (args.queries, args.levels), generator=gen)
    start = time.perf_counter()
    items = trie.lookup(valid)
    lookup_s = time.perf_counter() - start
    assert torch.equal(items, rows), "lookup of valid SIDs must return their items"
    invalid_rate = float((trie.lookup(invalid) < 0).float().mean())
    state = trie.walk(valid[:, : args.levels - 1])
    start = time.perf_counter()
    mask = trie.allowed(state, args.levels - 1)
    allowed_s = time.perf_counter() - start
    assert bool(mask[torch.arange(args.queries), valid[:, -1]].all()), "each SID's last code must be allowed"

    gb = 1024**3
    print(f"catalogue        {args.items:,} items, {args.levels} levels x {args.codebook} codes")
    print(f"build            {build_s:.2f} s   (target < 60 s)")
    print(f"trie tensors     {trie.nbytes() / gb:.3f} GB   (target < 1 GB)")
    print(f"peak RSS growth  {(peak[0] - rss0) / gb:.3f} GB while building (includes temporary sort buffers)")
    print(f"code table       {codes.numel() * codes.element_size() / gb:.3f} GB (input, not part of the trie)")
    print(f"lookup           {args.queries:,} full SIDs in {lookup_s * 1e3:.1f} ms; "
          f"{invalid_rate:.4f} of random SIDs are invalid")
    print(f"allowed mask     {args.queries:,} prefixes -> [{args.queries:,} x {args.codebook}] "
          f"in {allowed_s * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
