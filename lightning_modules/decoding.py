"""The decoding engine: batched beam search and sampling over semantic IDs, trie-constrained or not.

One engine serves evaluation (beam search, top-K items) and GRPO rollouts (beam or sampling, G per
prompt). It works with any transformers causal LM that accepts a 4-D attention mask and explicit
``position_ids`` (LLaMA, Qwen2, Mistral, …).

**Shared-prefix ("tree") attention.** The prompt is prefilled once per user; the K beams of a user
are *not* copies of it. Each step appends the K new tokens of a user to that user's one cache row,
and a 4-D mask lets every beam token see the prompt plus its own ancestors only. Nothing is
expanded K times and the cache is never reordered: a beam's ancestry is a small index tensor.
The same layout scores G candidates in training (:func:`candidate_logits`): the prompt's keys and
values are computed once, with gradients, and shared by the group.

All generation settings are explicit arguments (:class:`DecodingConfig`); nothing is read from a
model's ``generation_config``.

**Prompt groups (no wasted padding).** Prompts arrive left-padded to the data's full history width, most of it
padding when histories are short. :func:`prompt_groups` sorts a batch's rows by real prompt length and splits
them into a few groups, each encoded in its own model call with the columns that are padding in all its rows cut;
the split minimises the tokens encoded plus a per-call cost (:data:`SPLIT_CALL_COST`), so a batch of similar
lengths stays one call. :meth:`DecodingEngine.generate` and :func:`candidate_logits` do this by default and return
rows in the batch's order; a row's result does not depend on the group it lands in (beyond float rounding).
A sharded (FSDP2) model is never split (every rank must make the same calls): only all-padding columns are cut.

**Seen-item exclusion.** ``generate(..., exclude=history)`` never returns an item listed in a row's
``exclude`` (e.g. the user's history ``[B, H]``, -1 padded). It is exact and has no dead ends: a
prefix stays allowed only while at least one catalogue item below it is not excluded, so a beam never
walks into a subtree whose every item is excluded (:class:`ExclusionMask`; per row and level it
compares the excluded items' ancestors with the subtree sizes, ``[B, H]`` work, then ``[B, K, H]``
per step — never a catalogue-sized tensor per row). Beam scores stay the sequence's full-vocabulary
log-prob, so filtered beam search ranks the remaining items exactly as unfiltered search does, minus
the excluded ones; per-token ``logprobs`` are renormalised over what stays allowed. A row whose
remaining items are fewer than the beams returns dead beams (item -1, ``valid`` False, score -inf),
as a small catalogue does. ``exclude [B, S, H]`` decodes ``S`` variants (e.g. unfiltered and
filtered) from one prefill of the prompt: ``S`` groups of ``K`` beams share the user's cache row.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from adagrpo.datamodules.semantic_ids import SidVocab
from adagrpo.datamodules.trie import CatalogTrie
from adagrpo.lightning_modules.sharding import is_sharded


@dataclass
class DecodingConfig:
    """Every generation setting, explicit.

    Args:
        mode: ``beam`` (distinct candidates, highest score first) or ``sample``.
        num_candidates: beam width (= candidates returned) or samples per prompt (G).
        constrained: restrict every step to codes that continue a catalogue SID (trie).
        temperature: sampling temperature (``sample`` only).
        top_k: sample only among the top-k tokens of each step (``sample`` only; None = all).
    """

    mode: Literal["beam", "sample"] = "beam"
    num_candidates: int = 20
    constrained: bool = True
    temperature: float = 1.0
    top_k: int | None = None

    def __post_init__(self) -> None:
        from adagrpo.errors import ConfigError

        if self.mode not in ("beam", "sample"):
            raise ConfigError("decoding.mode", f"must be beam or sample, got {self.mode!r}")
        if self.num_candidates < 1:
            raise ConfigError("decoding.num_candidates", f"must be >= 1, got {self.num_candidates}")
        if self.temperature <= 0:
            raise ConfigError("decoding.temperature", f"must be > 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ConfigError("decoding.top_k", f"must be >= 1 or null, got {self.top_k}")


@dataclass
class Candidates:
    """Decoded candidates for ``B`` prompts, ``K`` each, SIDs of ``L`` tokens.

    ``tokens``: ``[B, K, L]`` token ids; ``items``: ``[B, K]`` catalogue item (-1 if the SID names none);
    ``valid``: ``[B, K]``; ``scores``: ``[B, K]`` sum of the chosen tokens' full-vocabulary log-probs
    (the beam-search ranking score, as HF ``generate`` computes it; -inf for impossible beams);
    ``logprobs``: ``[B, K, L]`` per-token log-probs on the support decoded from (renormalised over
    the trie's allowed codes when constrained, and without excluded items), at temperature 1.
    With ``exclude [B, S, H]`` every field gains a variant dimension after ``B``: ``[B, S, K, ...]``.
    """

    tokens: torch.Tensor
    items: torch.Tensor
    valid: torch.Tensor
    scores: torch.Tensor
    logprobs: torch.Tensor


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Bool ``[B, Q, K]`` (True = may attend) → additive float mask ``[B, 1, Q, K]``."""
    neg = torch.finfo(dtype).min
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed, neg)[:, None]


def prompt_attention(real: torch.Tensor) -> torch.Tensor:
    """Causal attention over left-padded prompts ``real [B, P]`` → bool ``[B, P, P]``.

    Padding rows attend to themselves so no row is fully masked (a fully masked row gives NaN that
    would leak through the padding's keys and values into later layers).
    """
    p = real.shape[1]
    causal = torch.ones(p, p, dtype=torch.bool, device=real.device).tril_()
    eye = torch.eye(p, dtype=torch.bool, device=real.device)
    return (causal[None] & real[:, None, :]) | eye[None]


_CACHE_ARG: dict[type, str] = {}


def cache_argument(model: nn.Module) -> str:
    """The forward argument (and output field) holding the KV cache: ``cache`` in recent transformers,
    ``past_key_values`` before."""
    cls = type(model)
    if cls not in _CACHE_ARG:
        params = inspect.signature(cls.forward).parameters
        _CACHE_ARG[cls] = "cache" if "cache" in params else "past_key_values"
    return _CACHE_ARG[cls]


def model_dtype(model: nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


#: what one more model call costs, in prompt tokens encoded, when :func:`prompt_groups` splits a batch: on the CPU
#: a forward (+ backward) of a 4-layer, 256-wide policy costs about as much per call as 50-80 tokens (measured at
#: one thread); devices not listed are never split (on a GPU a call costs more than a batch's padding).
SPLIT_CALL_COST: dict[str, float] = {"cpu": 64.0}


@dataclass
class PromptGroups:
    """A batch's rows in groups encoded one model call each: ``rows[i]`` (row indices, ascending; None = every row)
    with the prompt columns before ``start[i]`` cut (padding in every row of the group)."""

    rows: list[torch.Tensor | None]
    start: list[int]

    def select(self, i: int, x: torch.Tensor, columns: bool = False) -> torch.Tensor:
        """Group ``i``'s rows of ``x`` (``[B, ...]``); with ``columns``, also its prompt columns (``x [B, P]``)."""
        rows = self.rows[i]
        out = x if rows is None else x[rows.to(x.device)]
        return out[:, self.start[i]:] if columns else out

    def restore(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """The groups' results (``parts[i]``: ``[len(rows[i]), ...]``) in the batch's row order."""
        if len(parts) == 1 and self.rows[0] is None:
            return parts[0]
        order = torch.cat(list(self.rows)).to(parts[0].device)  # [B]
        return torch.cat(parts)[torch.argsort(order)]


def prompt_groups(prompt_mask: torch.Tensor, extra: int = 0, calls: int = 1, split: bool = True,
                  call_cost: float | None = None) -> PromptGroups:
    """Group the rows of a prompt batch ``prompt_mask [B, P]`` by prompt length.

    A row needs its columns from its first real token on (left padding before it is cut). Rows sorted by that width
    are split into contiguous groups minimising ``Σ_groups rows × (width + extra) + groups × calls × call_cost``:
    ``extra`` tokens per row follow the prompt in each call (e.g. the candidates of :func:`candidate_logits`),
    ``calls`` model calls run per group, ``call_cost`` defaults to :data:`SPLIT_CALL_COST` of the mask's device
    (no split where it has none, nor with ``split`` False: then only the columns padded in every row are cut).
    """
    b, p = prompt_mask.shape
    real = prompt_mask.bool()
    first = torch.where(real.any(1), real.to(torch.int8).argmax(1), torch.full((b,), p - 1, device=real.device))
    width = (p - first).cpu()  # [B] columns each row needs (at least 1)
    if call_cost is None:
        call_cost = SPLIT_CALL_COST.get(prompt_mask.device.type)
    if not split or call_cost is None or b < 2:
        return PromptGroups([None], [p - int(width.max())] if b else [0])
    values, counts = torch.unique(width, return_counts=True)  # ascending distinct widths
    values, cum = values.tolist(), [0] + counts.cumsum(0).tolist()
    d, penalty = len(values), calls * call_cost
    best, cut = [0.0] + [math.inf] * d, [0] * (d + 1)
    for j in range(1, d + 1):  # best[j]: the first j distinct widths grouped; a group = distinct widths (i, j]
        for i in range(j):
            cost = best[i] + (cum[j] - cum[i]) * (values[j - 1] + extra) + penalty
            if cost < best[j]:
                best[j], cut[j] = cost, i
    bounds, j = [], d
    while j > 0:
        bounds.append((cut[j], j))
        j = cut[j]
    if len(bounds) == 1:
        return PromptGroups([None], [p - values[-1]])
    rows, start = [], []
    for i, j in reversed(bounds):
        rows.append(torch.nonzero((width > (values[i - 1] if i else 0)) & (width <= values[j - 1])).flatten())
        start.append(p - values[j - 1])
    return PromptGroups(rows, start)


@dataclass
class ExclusionMask:
    """Excluded items of ``R`` rows, as the trie nodes to block at each level.

    ``parent[l]``/``code[l]``: ``[R, H]``; entry ``h`` says "below the node ``parent`` (depth ``l-1``;
    the root is 0) do not take ``code``", because every catalogue item below that child is excluded.
    ``parent`` is -2 where nothing is blocked (a state is never below -1, so it never matches).
    """

    parent: list[torch.Tensor]
    code: list[torch.Tensor]

    def blocked(self, state: torch.Tensor, level: int, width: int, columns: torch.Tensor | None = None) -> torch.Tensor:
        """Bool ``[R, K, width]``: columns blocked after the prefixes ``state [R, K]`` (True = excluded).

        ``columns`` maps a code of ``level`` to its column (the vocabulary's token ids, for unconstrained
        decoding); by default the column is the code itself.
        """
        r, k = state.shape
        match = self.parent[level][:, None, :] == state[:, :, None]  # [R, K, H]
        code = self.code[level] if columns is None else columns[self.code[level]]  # [R, H]
        idx = torch.where(match, code[:, None, :], torch.full_like(match, width, dtype=torch.long))  # [R, K, H]
        mask = torch.zeros(r, k, width + 1, dtype=torch.bool, device=state.device)
        return mask.scatter_(2, idx, True)[..., :width]


class DecodingEngine:
    """Beam search / sampling over a catalogue trie. ``trie`` and ``vocab`` come from the DataModule."""

    def __init__(self, trie: CatalogTrie, vocab: SidVocab) -> None:
        if trie.depth != vocab.depth:
            raise ValueError(f"trie has {trie.depth} levels but the vocabulary {vocab.depth}")
        self.trie = trie
        self.vocab = vocab
        self.depth = trie.depth
        self._device = torch.device("cpu")
        self.token_of = [t.clone() for t in vocab.token_of]
        self.level_of = vocab.level_of.clone()
        self.code_of = vocab.code_of.clone()
        self._subtree: tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]] | None = None

    def to(self, device: torch.device | str) -> DecodingEngine:
        device = torch.device(device)
        if device != self._device:
            self.trie.to(device)
            self.token_of = [t.to(device) for t in self.token_of]
            self.level_of = self.level_of.to(device)
            self.code_of = self.code_of.to(device)
            if self._subtree is not None:
                self._subtree = tuple([t.to(device) for t in part] for part in self._subtree)
            self._device = device
        return self

    # -------------------------------------------------------------------------------- helpers
    def token_code(self, tokens: torch.Tensor, level: int) -> torch.Tensor:
        """Code of each token at ``level``; -1 for tokens that are not codes of that level."""
        t = tokens.clamp(0, len(self.level_of) - 1)
        ok = (tokens >= 0) & (tokens < len(self.level_of)) & (self.level_of[t] == level)
        return torch.where(ok, self.code_of[t], torch.full_like(t, -1))

    def items_of(self, tokens: torch.Tensor) -> torch.Tensor:
        """Catalogue item of each full SID ``tokens [..., L]``; -1 if it names none."""
        codes = torch.stack([self.token_code(tokens[..., level], level) for level in range(self.depth)], -1)
        return self.trie.lookup(codes)

    def subtree_tables(self) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """Per depth ``l``: each item's node ``[N]``, each node's parent (depth ``l-1``; root 0) and its
        number of catalogue items. Built once, on first use (``depth × N`` int64)."""
        if self._subtree is None:
            trie = self.trie
            dev = trie.keys[0].device
            parent = [keys // trie.radix for keys in trie.keys]  # keys are parent * radix + code
            size = [torch.ones(len(trie.keys[-1]), dtype=torch.long, device=dev)]
            for level in range(self.depth - 1, 0, -1):
                size.insert(0, torch.zeros(len(trie.keys[level - 1]), dtype=torch.long, device=dev)
                            .index_add_(0, parent[level], size[0]))
            leaf = torch.empty(trie.num_items, dtype=torch.long, device=dev)
            leaf[trie.leaf_item] = torch.arange(trie.num_items, device=dev)
            node = [leaf]
            for level in range(self.depth - 1, 0, -1):
                node.insert(0, parent[level][node[0]])
            self._subtree = (node, parent, size)
        return self._subtree

    def exclusion(self, exclude: torch.Tensor) -> ExclusionMask:
        """:class:`ExclusionMask` of ``exclude [R, H]`` item ids (negative or out-of-range entries are padding;
        repeats count once). A node is blocked once every catalogue item below it is excluded, so decoding
        never enters a prefix with nothing left to return."""
        node_of, parent_of, size_of = self.subtree_tables()
        n = self.trie.num_items
        x = exclude.long()
        x = torch.where((x >= 0) & (x < n), x, torch.full_like(x, -1)).sort(1).values  # [R, H]
        ok = x >= 0
        ok[:, 1:] &= x[:, 1:] != x[:, :-1]  # distinct excluded items
        x = x.clamp_min(0)
        parents, codes = [], []
        for level in range(self.depth):
            node = node_of[level][x]  # [R, H] each excluded item's node at this depth
            same = (node[:, :, None] == node[:, None, :]) & ok[:, None, :]  # [R, H, H]
            full = ok & (same.sum(-1) == size_of[level][node])  # every item below the node is excluded
            parents.append(torch.where(full, parent_of[level][node], torch.full_like(node, -2)))
            codes.append(self.trie.node_code[level][node])
        return ExclusionMask(parents, codes)

    def _step_scores(
        self, logits: torch.Tensor, state: torch.Tensor, level: int, constrained: bool,
        exclusion: ExclusionMask | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-candidate scores for one step (``logits [R, K, V]``, ``state [R, K]``).

        Returns ``(full_lp, support_lp, ids)``: log-probs ``[R, K, C]`` under the full vocabulary
        (-inf where disallowed or excluded) and under the decoding support (renormalised when
        constrained or excluding), and the token id of each column ``[C]``.
        """
        full = torch.log_softmax(logits.float(), dim=-1)  # [..., V]
        if not constrained:
            ids = torch.arange(full.shape[-1], device=full.device)
            if exclusion is None:
                return full, full, ids
            allowed = ~exclusion.blocked(state, level, full.shape[-1], self.token_of[level])  # [R, K, V]
            lp = full.masked_fill(~allowed, -math.inf)
        else:
            ids = self.token_of[level]  # [C]
            allowed = self.trie.allowed(state, level)  # [..., C]
            if exclusion is not None:
                allowed &= ~exclusion.blocked(state, level, allowed.shape[-1])
            lp = full[..., ids].masked_fill(~allowed, -math.inf)  # [..., C]
        norm = torch.logsumexp(lp, dim=-1, keepdim=True)
        support = torch.where(allowed, lp - norm, torch.full_like(lp, -math.inf))
        return lp, support, ids

    def _advance(self, state: torch.Tensor, tokens: torch.Tensor, level: int) -> torch.Tensor:
        return self.trie.step(state, self.token_code(tokens, level), level)

    # -------------------------------------------------------------------------------- generation
    @torch.no_grad()
    def generate(
        self,
        model: nn.Module,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        position_ids: torch.Tensor,
        config: DecodingConfig,
        generator: torch.Generator | None = None,
        exclude: torch.Tensor | None = None,
        groups: PromptGroups | None = None,
    ) -> Candidates:
        """Decode ``config.num_candidates`` SIDs for each of ``B`` left-padded prompts ``[B, P]``.

        ``exclude``: item ids never to return, ``[B, H]`` (e.g. ``batch.history``; -1 = padding), or
        ``[B, S, H]`` for ``S`` variants decoded from one prefill (an all -1 row = unfiltered); the
        candidates then have shape ``[B, S, K, ...]``. Works in every mode, constrained or not.
        ``groups``: how the rows are split by prompt length (default :func:`prompt_groups`; sampled groups draw
        from ``generator`` one after another).
        """
        if groups is None:
            groups = prompt_groups(prompt_mask, calls=self.depth, split=not is_sharded(model))
        parts = [self._generate(model, groups.select(i, prompt_ids, True), groups.select(i, prompt_mask, True),
                                groups.select(i, position_ids, True), config, generator,
                                None if exclude is None else groups.select(i, exclude))
                 for i in range(len(groups.rows))]
        return Candidates(*(groups.restore([getattr(c, f) for c in parts])
                            for f in ("tokens", "items", "valid", "scores", "logprobs")))

    def _generate(
        self,
        model: nn.Module,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        position_ids: torch.Tensor,
        config: DecodingConfig,
        generator: torch.Generator | None,
        exclude: torch.Tensor | None,
    ) -> Candidates:
        self.to(prompt_ids.device)
        b, p = prompt_ids.shape
        k, depth = config.num_candidates, self.depth
        dev = prompt_ids.device
        dtype = model_dtype(model)
        real = prompt_mask.bool()
        n_real = real.long().sum(1)  # [B]
        beam = config.mode == "beam"
        variants = exclude is not None and exclude.dim() == 3
        s = exclude.shape[1] if variants else 1  # S groups of K beams per prompt, one cache row per prompt
        r, sk = b * s, s * k  # selection rows (prompt × variant); beams per cache row
        exclusion = None if exclude is None else self.exclusion(exclude.reshape(r, -1).to(dev))

        out = model(
            input_ids=prompt_ids,
            attention_mask=additive_mask(prompt_attention(real), dtype),
            position_ids=position_ids,
            use_cache=True,
            logits_to_keep=1,
        )
        cache_arg = cache_argument(model)
        cache = getattr(out, cache_arg)
        logits = out.logits[:, -1]  # [B, V]

        tokens = torch.zeros(r, k, depth, dtype=torch.long, device=dev)
        logprobs = torch.zeros(r, k, depth, device=dev)
        scores = torch.zeros(r, k, device=dev)
        state = self.trie.root(r)[:, None].expand(r, k).contiguous()  # [R, K]
        ancestors = torch.zeros(r, k, 0, dtype=torch.long, device=dev)  # cache columns of each beam's tokens
        rows = torch.arange(r, device=dev)[:, None]

        for level in range(depth):
            if level > 0:
                cols = p + (level - 1) * sk + torch.arange(sk, device=dev)  # [S*K] columns of the fed tokens
                width = p + level * sk
                see = torch.zeros(b, sk, width, dtype=torch.bool, device=dev)
                see[:, :, :p] = real[:, None, :]
                own = torch.cat([ancestors.reshape(b, sk, level - 1), cols.expand(b, sk)[..., None]], dim=-1)
                see.scatter_(2, own, True)  # [B, S*K, width]
                out = model(
                    input_ids=tokens[:, :, level - 1].reshape(b, sk),
                    attention_mask=additive_mask(see, dtype),
                    position_ids=(n_real[:, None] + level - 1).expand(b, sk),
                    use_cache=True,
                    **{cache_arg: cache},
                )
                cache = getattr(out, cache_arg)
                logits = out.logits.reshape(r, k, -1)  # [R, K, V]
                ancestors = own.reshape(r, k, level)
                step_state = state
            else:
                # one shared distribution before the first token: [R, 1, V]
                logits = logits[:, None] if s == 1 else logits[:, None].expand(b, s, -1).reshape(r, 1, -1)
                step_state = state[:, :1]
            full_lp, support_lp, ids = self._step_scores(logits, step_state, level, config.constrained, exclusion)
            c = full_lp.shape[-1]
            if beam:
                total = scores[:, : full_lp.shape[1], None] + full_lp  # [R, K or 1, C]
                total = total.reshape(r, -1)
                if total.shape[1] < k:  # fewer continuations than beams (tiny catalogue): pad dead beams
                    total = torch.cat([total, total.new_full((r, k - total.shape[1]), -math.inf)], 1)
                top, flat = torch.topk(total, k, dim=1)  # [R, K]
                flat = flat.clamp_max(full_lp.shape[1] * c - 1)
                parent, col = flat // c, flat % c
                scores = top
            else:
                exact = config.constrained or exclusion is not None
                logits_t = full_lp if exact else torch.log_softmax(logits.float(), -1)
                draw = _sample(logits_t / config.temperature, k if level == 0 else 1, config.top_k, generator)
                col = draw.reshape(r, k)  # [R, K]
                parent = torch.arange(k, device=dev).expand(r, k) if level > 0 else torch.zeros_like(col)
                scores = scores.gather(1, parent) + full_lp.reshape(r, -1, c)[rows, parent, col]
            # Re-index every per-beam record by parent, then append this step's choice.
            tokens = tokens[rows, parent]
            logprobs = logprobs[rows, parent]
            state = state[rows, parent]
            ancestors = ancestors[rows, parent]
            tokens[:, :, level] = ids[col]
            logprobs[:, :, level] = support_lp.reshape(r, -1, c)[rows, parent, col]
            state = self._advance(state, tokens[:, :, level], level)
            # A padded (impossible) beam may point at a real code: it stays dead, never an item.
            state = torch.where(torch.isfinite(scores), state, torch.full_like(state, -1))

        items = torch.where(state >= 0, self.trie.leaf_item[state.clamp_min(0)], torch.full_like(state, -1))
        valid = (items >= 0) & torch.isfinite(scores)
        items = torch.where(valid, items, torch.full_like(items, -1))
        if variants:
            tokens, logprobs = tokens.reshape(b, s, k, depth), logprobs.reshape(b, s, k, depth)
            items, valid, scores = items.reshape(b, s, k), valid.reshape(b, s, k), scores.reshape(b, s, k)
        return Candidates(tokens=tokens, items=items, valid=valid, scores=scores, logprobs=logprobs)


def _sample(logits: torch.Tensor, n: int, top_k: int | None, generator: torch.Generator | None) -> torch.Tensor:
    """Draw ``n`` indices per row of ``logits [B, R, C]`` (``n`` > 1 only when ``R`` == 1) → ``[B, R*n]``."""
    b, r, c = logits.shape
    flat = logits.reshape(b * r, c)
    if top_k is not None and top_k < c:
        kth = torch.topk(flat, top_k, dim=-1).values[:, -1:]
        flat = flat.masked_fill(flat < kth, -math.inf)
    probs = torch.softmax(flat, dim=-1)
    dead = ~torch.isfinite(flat).any(-1)  # rows with no allowed token: draw index 0, scored -inf later
    probs = torch.where(dead[:, None], torch.ones_like(probs) / c, probs)
    draw = torch.multinomial(probs, n, replacement=True, generator=generator)  # [B*R, n]
    return draw.reshape(b, r * n)


# ------------------------------------------------------------------------------------ training-time scoring
def candidate_logits(
    model: nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    position_ids: torch.Tensor,
    candidates: torch.Tensor,
    groups: PromptGroups | None = None,
) -> torch.Tensor:
    """Logits that predict each token of ``G`` candidate SIDs per prompt, in one forward pass per prompt group.

    The prompt ``[B, P]`` is encoded once and shared by its candidates (tree attention): the input
    is the prompt followed by every candidate's first ``L-1`` tokens, and candidate ``g``'s tokens see
    the prompt and their own earlier tokens only. Works with gradients.

    Args:
        candidates: ``[B, G, L]`` token ids.
        groups: how the rows are split by prompt length (default :func:`prompt_groups` with the candidates'
            ``G·(L-1)`` tokens per row); pass the same groups to calls whose results should match bit for bit.
    Returns:
        ``[B, G, L, V]`` logits; ``[..., l, :]`` is the distribution of token ``l`` given the prompt and
        tokens ``< l`` of the same candidate.
    """
    if groups is None:
        _, g, depth = candidates.shape
        groups = prompt_groups(prompt_mask, extra=g * (depth - 1), split=not is_sharded(model))
    return groups.restore([_candidate_logits(model, groups.select(i, prompt_ids, True),
                                             groups.select(i, prompt_mask, True),
                                             groups.select(i, position_ids, True), groups.select(i, candidates))
                           for i in range(len(groups.rows))])


def _candidate_logits(model: nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                      position_ids: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    b, p = prompt_ids.shape
    _, g, depth = candidates.shape
    dev = prompt_ids.device
    real = prompt_mask.bool()
    n_real = real.long().sum(1)  # [B]
    body = candidates[:, :, : depth - 1]  # [B, G, L-1]: the last token is never an input
    m = g * (depth - 1)
    t = p + m
    see = torch.zeros(b, t, t, dtype=torch.bool, device=dev)
    see[:, :p, :p] = prompt_attention(real)
    if m:
        see[:, p:, :p] = real[:, None, :]
        # Candidate token (g, l) sees (g, 0..l): a block-diagonal lower-triangular pattern.
        idx = torch.arange(m, device=dev)
        same_cand = (idx[:, None] // (depth - 1)) == (idx[None, :] // (depth - 1))
        see[:, p:, p:] = (same_cand & (idx[None, :] <= idx[:, None]))[None]
    inputs = torch.cat([prompt_ids, body.reshape(b, m)], dim=1)  # [B, P + G(L-1)]
    level = torch.arange(depth - 1, device=dev).repeat(g)  # [G(L-1)] level of each candidate input
    positions = torch.cat([position_ids, n_real[:, None] + level[None, :]], dim=1)  # [B, T]
    keep = torch.cat([torch.tensor([p - 1], device=dev), p + torch.arange(m, device=dev)])  # [1 + m]
    out = model(
        input_ids=inputs,
        attention_mask=additive_mask(see, model_dtype(model)),
        position_ids=positions,
        use_cache=False,
        logits_to_keep=keep,
    )
    logits = out.logits  # [B, 1 + m, V]
    first = logits[:, :1].expand(b, g, -1)[:, :, None]  # [B, G, 1, V]
    rest = logits[:, 1:].reshape(b, g, depth - 1, -1)  # [B, G, L-1, V]
    return torch.cat([first, rest], dim=2)  # [B, G, L, V]


def token_logprobs(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    engine: DecodingEngine | None = None,
    constrained: bool = False,
    exclude: torch.Tensor | None = None,
) -> torch.Tensor:
    """Log-prob of each token ``[B, G, L]`` under ``logits [B, G, L, V]``.

    With ``constrained`` the distribution at each step is renormalised over the codes the trie
    allows after the candidate's prefix (the support constrained decoding samples from). Tokens
    outside that support get -inf. With ``exclude [B, H]`` (constrained only) the support also
    drops the excluded items, as ``engine.generate(..., exclude=...)`` samples from.
    """
    logits = logits.float()
    if not constrained:
        return torch.log_softmax(logits, -1).gather(-1, tokens[..., None]).squeeze(-1)
    assert engine is not None, "constrained log-probs need the decoding engine's trie"
    engine.to(tokens.device)
    exclusion = None if exclude is None else engine.exclusion(exclude.to(tokens.device))
    out = []
    state = engine.trie.root(tokens[..., 0].numel()).reshape(tokens.shape[:-1])  # [B, G]
    for level in range(tokens.shape[-1]):
        ids = engine.token_of[level]  # [C]
        allowed = engine.trie.allowed(state, level)  # [B, G, C]
        if exclusion is not None:
            allowed &= ~exclusion.blocked(state, level, allowed.shape[-1])
        lv = logits[..., level, :][..., ids].masked_fill(~allowed, -math.inf)  # [B, G, C]
        lp = lv - torch.logsumexp(lv, -1, keepdim=True)
        code = engine.token_code(tokens[..., level], level)  # [B, G]
        ok = (code >= 0) & (state >= 0)  # a wrong-level token or a dead prefix: -inf, never NaN
        picked = lp.gather(-1, code.clamp_min(0)[..., None]).squeeze(-1)
        if exclusion is not None:  # an excluded token (or a prefix with nothing left): -inf, never NaN
            ok &= allowed.gather(-1, code.clamp_min(0)[..., None]).squeeze(-1)
        out.append(torch.where(ok, picked, torch.full_like(picked, -math.inf)))
        state = engine.trie.step(state, code, level)
    return torch.stack(out, -1)  # [B, G, L]
