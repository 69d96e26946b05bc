"""A catalogue trie over semantic IDs as flat tensors: next-code masks, validity and SID→item lookup.

Memory grows with the number of items, never with the code space: per depth we keep one sorted
int64 key per distinct prefix (``parent_node * C + code``) and the CSR range of each node's children.
Nothing loops in Python over items, prefixes or beams; every query is a gather, a scatter or a
``searchsorted``.

Nodes are numbered per depth. The root is node 0 of depth "-1"; a state of ``-1`` means "not in the
catalogue" (a dead prefix), which lets unconstrained decoding be checked with the same calls.
"""

from __future__ import annotations

import torch

from adagrpo.datamodules.rqkmeans import as_code_table


class CatalogTrie:
    """Trie of ``codes [N, L]`` (item ``i`` has code tuple ``codes[i]``; tuples must be distinct).

    ``codebook_sizes[l]`` is the number of codes at level ``l``; codes at level ``l`` lie in
    ``[0, codebook_sizes[l])``.
    """

    def __init__(self, codes: torch.Tensor, codebook_sizes: list[int]) -> None:
        codes = as_code_table(codes, codebook_sizes)
        n, depth = codes.shape
        sizes = torch.tensor(codebook_sizes, dtype=torch.long)
        if (codes < 0).any() or (codes >= sizes).any():
            raise ValueError("codes out of range of codebook_sizes")
        self.num_items = n
        self.depth = depth
        self.codebook_sizes = [int(c) for c in codebook_sizes]
        self.radix = int(sizes.max())

        # Lexicographic order of the code tuples: stable sorts from the last level to the first.
        order = torch.arange(n)
        for level in range(depth - 1, -1, -1):
            order = order[torch.sort(codes[order, level], stable=True).indices]
        sorted_codes = codes[order]

        self.keys: list[torch.Tensor] = []  # per depth: sorted keys parent*radix+code of its nodes
        self.child_start: list[torch.Tensor] = []  # per depth (parents at depth-1): first child index
        self.child_count: list[torch.Tensor] = []
        self.node_code: list[torch.Tensor] = []  # per depth: code of each node
        self.max_branch: list[int] = []
        parent = torch.zeros(n, dtype=torch.long)  # node id at previous depth of each sorted row
        num_parents = 1
        for level in range(depth):
            key = parent * self.radix + sorted_codes[:, level]  # [N], non-decreasing
            is_new = torch.ones(n, dtype=torch.bool)
            is_new[1:] = key[1:] != key[:-1]
            node = torch.cumsum(is_new.long(), 0) - 1  # [N] node id at this depth
            level_keys = key[is_new]  # [nodes]
            level_parent = parent[is_new]
            counts = torch.bincount(level_parent, minlength=num_parents)  # [parents]
            starts = torch.cumsum(counts, 0) - counts
            self.keys.append(level_keys)
            self.node_code.append(sorted_codes[is_new, level])
            self.child_start.append(starts)
            self.child_count.append(counts)
            self.max_branch.append(int(counts.max()))
            parent = node
            num_parents = len(level_keys)
        if num_parents != n:
            raise ValueError(f"SIDs are not distinct: {n} items but {num_parents} distinct code tuples")
        self.leaf_item = torch.empty(n, dtype=torch.long)
        self.leaf_item[parent] = order  # leaf node id -> item index
        self.device = torch.device("cpu")

    # ------------------------------------------------------------------ device / size
    def to(self, device: torch.device | str) -> CatalogTrie:
        """Move the trie's tensors to ``device`` (in place; returns self)."""
        device = torch.device(device)
        for name in ("keys", "child_start", "child_count", "node_code"):
            setattr(self, name, [t.to(device) for t in getattr(self, name)])
        self.leaf_item = self.leaf_item.to(device)
        self.device = device
        return self

    def nbytes(self) -> int:
        tensors = [*self.keys, *self.child_start, *self.child_count, *self.node_code, self.leaf_item]
        return sum(t.numel() * t.element_size() for t in tensors)

    # ------------------------------------------------------------------ queries
    def root(self, batch: int) -> torch.Tensor:
        """Start states ``[batch]`` (all at the root)."""
        return torch.zeros(batch, dtype=torch.long, device=self.device)

    def allowed(self, state: torch.Tensor, level: int) -> torch.Tensor:
        """Mask ``[*, codebook_sizes[level]]`` of codes allowed after prefixes in ``state`` (``[*]``).

        ``state`` holds node ids at depth ``level - 1`` (the root, 0, for ``level == 0``); dead
        states (-1) allow nothing.
        """
        shape = state.shape
        state = state.reshape(-1)
        alive = state >= 0
        s = state.clamp_min(0)
        start = self.child_start[level][s]  # [M]
        count = torch.where(alive, self.child_count[level][s], torch.zeros_like(s))  # [M]
        offs = torch.arange(self.max_branch[level], device=state.device)  # [K]
        present = offs[None, :] < count[:, None]  # [M, K]
        idx = (start[:, None] + offs[None, :]).clamp_max(len(self.node_code[level]) - 1)
        width = self.codebook_sizes[level]
        code = torch.where(present, self.node_code[level][idx], width)  # [M, K]; absent -> spare column
        mask = torch.zeros(len(s), width + 1, dtype=torch.bool, device=state.device)
        mask.scatter_(1, code, True)
        return mask[:, :width].reshape(*shape, width)

    def step(self, state: torch.Tensor, code: torch.Tensor, level: int) -> torch.Tensor:
        """Next states after appending ``code`` at ``level``; -1 where the prefix leaves the catalogue.

        ``code`` may contain values outside the level's range (e.g. a token of another level
        produced by unconstrained decoding): they give -1.
        """
        keys = self.keys[level]
        valid = (state >= 0) & (code >= 0) & (code < self.codebook_sizes[level])
        key = state.clamp_min(0) * self.radix + code.clamp(0, self.radix - 1)
        pos = torch.searchsorted(keys, key).clamp_max(len(keys) - 1)
        found = valid & (keys[pos] == key)
        return torch.where(found, pos, torch.full_like(pos, -1))

    def walk(self, codes: torch.Tensor) -> torch.Tensor:
        """States after consuming each full prefix ``codes [*, l]`` (``l <= depth``); -1 if dead."""
        state = self.root(codes[..., 0].numel()).reshape(codes.shape[:-1])
        for level in range(codes.shape[-1]):
            state = self.step(state, codes[..., level], level)
        return state

    def is_prefix(self, codes: torch.Tensor) -> torch.Tensor:
        """Whether each ``codes [*, l]`` is a prefix of some catalogue SID."""
        return self.walk(codes) >= 0

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """Item index of each full SID ``codes [*, depth]``; -1 where it names no item."""
        if codes.shape[-1] != self.depth:
            raise ValueError(f"lookup needs full SIDs of {self.depth} codes, got {codes.shape[-1]}")
        leaf = self.walk(codes)
        return torch.where(leaf >= 0, self.leaf_item[leaf.clamp_min(0)], torch.full_like(leaf, -1))

    def is_valid(self, codes: torch.Tensor) -> torch.Tensor:
        return self.lookup(codes) >= 0
