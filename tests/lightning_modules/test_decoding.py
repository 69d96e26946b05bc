"""The decoding engine on a tiny random LLaMA: validity, parity with HF ``generate``, training-time scoring,
sampling and unconstrained decoding."""

from __future__ import annotations

import math

import pytest
import torch

from adagrpo.datamodules.semantic_ids import SidVocab
from adagrpo.datamodules.trie import CatalogTrie
from adagrpo.lightning_modules.decoding import (
    Candidates,
    DecodingConfig,
    DecodingEngine,
    candidate_logits,
    token_logprobs,
)
from adagrpo.lightning_modules.policy import LlamaPolicy

SIZES = [6, 5, 4]


def make_model(vocab: SidVocab, seed: int = 0):
    torch.manual_seed(seed)
    model, _ = LlamaPolicy(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64).build(vocab)
    # Default init (std 0.02) gives near-uniform logits and near-tied beams; spread them so rankings are stable.
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim > 1:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.25)
    return model.eval()


def make_catalogue(n: int, level0: int, seed: int) -> torch.Tensor:
    """Up to ``n`` distinct code tuples over SIZES, first-level codes restricted to ``range(level0)``."""
    gen = torch.Generator().manual_seed(seed)
    cols = [torch.randint(level0, (3 * n,), generator=gen)] + [
        torch.randint(s, (3 * n,), generator=gen) for s in SIZES[1:]
    ]
    codes = torch.unique(torch.stack(cols, 1), dim=0)
    return codes[torch.randperm(len(codes), generator=gen)[:n]]


class World:
    def __init__(self, codes: torch.Tensor, seed: int = 0) -> None:
        self.codes = codes
        self.vocab = SidVocab(SIZES)
        self.trie = CatalogTrie(codes, SIZES)
        self.engine = DecodingEngine(self.trie, self.vocab)
        self.model = make_model(self.vocab, seed)
        self.item_tokens = self.vocab.encode(codes)  # [N, L]
        self.sid_to_item = {tuple(t): i for i, t in enumerate(self.item_tokens.tolist())}

    def next_tokens(self, prefix: list[int]) -> list[int]:
        """Token ids that continue the token prefix towards a catalogue SID (plain Python)."""
        n = len(prefix)
        return sorted({t[n] for t in self.sid_to_item if list(t[:n]) == prefix})


def make_prompts(vocab: SidVocab, pads: list[int], length: int, seed: int = 1):
    """Left-padded prompts ``[B, length]``: <bos> then random SID tokens, ``pads[b]`` pad slots first."""
    gen = torch.Generator().manual_seed(seed)
    b = len(pads)
    ids = torch.randint(3, vocab.vocab_size, (b, length), generator=gen)
    mask = torch.ones(b, length, dtype=torch.long)
    for r, pad in enumerate(pads):
        mask[r, :pad] = 0
        ids[r, :pad] = vocab.pad_id
        ids[r, pad] = vocab.bos_id
    positions = (mask.cumsum(1) - 1).clamp_min(0)
    return ids, mask, positions


@pytest.fixture(scope="module")
def world() -> World:
    return World(make_catalogue(60, level0=6, seed=0))


@pytest.fixture(scope="module")
def narrow() -> World:
    """Only two first-level codes: fewer than the beam width."""
    return World(make_catalogue(30, level0=2, seed=1), seed=1)


def check_candidates(w: World, out: Candidates, b: int, k: int) -> None:
    assert out.tokens.shape == (b, k, 3) and out.items.shape == (b, k) and out.scores.shape == (b, k)
    assert out.logprobs.shape == (b, k, 3)
    for r in range(b):
        for j in range(k):
            sid = tuple(out.tokens[r, j].tolist())
            item = w.sid_to_item.get(sid, -1)
            assert int(out.items[r, j]) == item
            assert bool(out.valid[r, j]) == (item >= 0)


# ------------------------------------------------------------------------------------------------ (a) validity


@pytest.mark.parametrize("which", ["world", "narrow"])
def test_constrained_beam_returns_only_catalogue_items(which, request):
    w: World = request.getfixturevalue(which)
    k = 8
    ids, mask, pos = make_prompts(w.vocab, [0, 3, 6, 1], 9)
    out = w.engine.generate(w.model, ids, mask, pos, DecodingConfig("beam", k, constrained=True))
    check_candidates(w, out, 4, k)
    assert out.valid.all()  # invalid rate exactly 0
    assert float((~out.valid).float().mean()) == 0.0
    for r in range(4):
        assert len(set(out.items[r].tolist())) == k  # distinct candidates
        assert (out.scores[r, :-1] >= out.scores[r, 1:]).all()  # best first
    # Scores are sums of full-vocabulary log-probs; per-token support log-probs are ≤ 0 and finite.
    assert torch.isfinite(out.scores).all() and (out.scores < 0).all()
    assert torch.isfinite(out.logprobs).all() and (out.logprobs <= 1e-6).all()
    if which == "narrow":
        assert len(set(w.codes[:, 0].tolist())) < k


def test_catalogue_smaller_than_beam_pads_with_dead_beams():
    w = World(torch.tensor([[0, 1, 2], [0, 1, 3], [2, 0, 0]]))
    ids, mask, pos = make_prompts(w.vocab, [0, 2], 6)
    out = w.engine.generate(w.model, ids, mask, pos, DecodingConfig("beam", 5, constrained=True))
    for r in range(2):
        assert sorted(out.items[r, :3].tolist()) == [0, 1, 2]  # the whole catalogue, first
        assert out.valid[r].tolist() == [True, True, True, False, False]
        assert out.items[r, 3:].tolist() == [-1, -1]
        assert torch.isneginf(out.scores[r, 3:]).all()


# ------------------------------------------------------------------------------------------------ (b) HF parity


@pytest.mark.parametrize("which", ["world", "narrow"])
def test_beam_search_matches_hf_generate(which, request):
    from transformers import GenerationConfig

    w: World = request.getfixturevalue(which)
    k, depth = 6, 3
    pads = [0, 4, 2, 7]
    ids, mask, pos = make_prompts(w.vocab, pads, 11, seed=5)
    ours = w.engine.generate(w.model, ids, mask, pos, DecodingConfig("beam", k, constrained=True))
    for r in range(len(pads)):
        prompt = ids[r, mask[r].bool()][None]  # unpadded
        n = prompt.shape[1]

        def allowed(batch_id, input_ids, n=n):
            gen = input_ids[n:].tolist()
            return w.next_tokens(gen) if len(gen) < depth else [w.vocab.pad_id]

        config = GenerationConfig(
            num_beams=k, num_return_sequences=k, max_new_tokens=depth, do_sample=False, length_penalty=0.0,
            early_stopping=True, output_scores=True, return_dict_in_generate=True,
            pad_token_id=w.vocab.pad_id, eos_token_id=w.vocab.eos_id, bos_token_id=w.vocab.bos_id,
        )
        with torch.no_grad():
            ref = w.model.generate(prompt, attention_mask=torch.ones_like(prompt), generation_config=config,
                                   prefix_allowed_tokens_fn=allowed)
        assert ref.sequences[:, n:].tolist() == ours.tokens[r].tolist(), f"prompt {r} (left pad {pads[r]})"
        torch.testing.assert_close(ours.scores[r], ref.sequences_scores.float(), atol=1e-4, rtol=0)


# ------------------------------------------------------------------------------------------------ (c) scoring


def reference_logprobs(w: World, ids, mask, cands: torch.Tensor, constrained: bool) -> torch.Tensor:
    """Per-candidate plain forward passes on the unpadded prompt + candidate: ``[B, G, L]`` log-probs."""
    b, g, depth = cands.shape
    out = torch.empty(b, g, depth)
    for r in range(b):
        prompt = ids[r, mask[r].bool()]
        n = len(prompt)
        for j in range(g):
            seq = torch.cat([prompt, cands[r, j]])[None]
            with torch.no_grad():
                logits = w.model(seq).logits[0, n - 1: n - 1 + depth].float()  # [L, V]
            for lv in range(depth):
                tok = int(cands[r, j, lv])
                if not constrained:
                    out[r, j, lv] = torch.log_softmax(logits[lv], -1)[tok]
                    continue
                allowed = w.next_tokens(cands[r, j, :lv].tolist())
                if tok not in allowed:
                    out[r, j, lv] = -math.inf
                    continue
                sub = torch.log_softmax(logits[lv, allowed], -1)
                out[r, j, lv] = sub[allowed.index(tok)]
    return out


def mixed_candidates(w: World, b: int, g: int, seed: int) -> torch.Tensor:
    """``[B, G, L]``: catalogue SIDs, plus (in the last slot) a random token triple of the right levels."""
    gen = torch.Generator().manual_seed(seed)
    pick = torch.randint(len(w.item_tokens), (b, g), generator=gen)
    cands = w.item_tokens[pick].clone()
    for lv, ids in enumerate(w.vocab.token_of):
        cands[:, -1, lv] = ids[torch.randint(len(ids), (b,), generator=gen)]
    return cands


def test_candidate_logits_match_plain_forward(world):
    w = world
    ids, mask, pos = make_prompts(w.vocab, [0, 5, 2], 10, seed=7)
    cands = mixed_candidates(w, 3, 4, seed=3)
    logits = candidate_logits(w.model, ids, mask, pos, cands)
    assert logits.shape == (3, 4, 3, w.vocab.vocab_size)
    lp = token_logprobs(logits, cands)
    torch.testing.assert_close(lp, reference_logprobs(w, ids, mask, cands, constrained=False), atol=1e-5, rtol=0)


def test_constrained_token_logprobs_match_renormalised_reference(world):
    w = world
    ids, mask, pos = make_prompts(w.vocab, [0, 5, 2], 10, seed=7)
    cands = w.item_tokens[torch.tensor([[0, 5, 9, 13], [1, 2, 3, 4], [59, 30, 20, 10]])]  # valid SIDs
    logits = candidate_logits(w.model, ids, mask, pos, cands)
    lp = token_logprobs(logits, cands, w.engine, constrained=True)
    ref = reference_logprobs(w, ids, mask, cands, constrained=True)
    torch.testing.assert_close(lp, ref, atol=1e-5, rtol=0)
    # A constrained log-prob is at least the full-vocabulary one (renormalised over fewer tokens).
    assert (lp >= token_logprobs(logits, cands) - 1e-6).all()


def test_constrained_logprobs_of_an_invalid_first_token_is_minus_inf(narrow):
    w = narrow
    ids, mask, pos = make_prompts(w.vocab, [0, 3], 8, seed=2)
    cands = w.item_tokens[:2].clone()[:, None]  # [2, 1, L]
    cands[:, 0, 0] = w.vocab.token_of[0][5]  # the narrow catalogue only uses first-level codes 0 and 1
    lp = token_logprobs(candidate_logits(w.model, ids, mask, pos, cands), cands, w.engine, constrained=True)
    assert torch.isneginf(lp[..., 0]).all()


def dead_after_first_level(w: World) -> torch.Tensor:
    """A token triple whose first code is in the catalogue but whose first two codes are not."""
    prefixes = {tuple(c[:2]) for c in w.codes.tolist()}
    a, b = next((a, b) for a in range(SIZES[0]) for b in range(SIZES[1])
                if (a,) in {(c[0],) for c in w.codes.tolist()} and (a, b) not in prefixes)
    return torch.stack([w.vocab.token_of[0][a], w.vocab.token_of[1][b], w.vocab.token_of[2][0]])


def test_constrained_logprobs_after_a_dead_prefix_are_minus_inf_not_nan(world):
    w = world
    ids, mask, pos = make_prompts(w.vocab, [0, 3], 8, seed=2)
    cands = torch.stack([w.item_tokens[0], dead_after_first_level(w)])[None].expand(2, 2, 3).contiguous()
    lp = token_logprobs(candidate_logits(w.model, ids, mask, pos, cands), cands, w.engine, constrained=True)
    assert torch.isfinite(lp[:, 0]).all() and torch.isfinite(lp[:, 1, 0]).all()
    assert torch.isneginf(lp[:, 1, 1]).all()
    assert torch.isneginf(lp[:, 1, 2]).all()  # was NaN: log-softmax over an all -inf row


def test_scoring_matches_beam_search_and_gradients_flow(world):
    w = world
    ids, mask, pos = make_prompts(w.vocab, [4, 0], 9, seed=4)
    out = w.engine.generate(w.model, ids, mask, pos, DecodingConfig("beam", 5, constrained=True))
    w.model.zero_grad(set_to_none=True)
    logits = candidate_logits(w.model, ids, mask, pos, out.tokens)
    full = token_logprobs(logits, out.tokens)
    support = token_logprobs(logits, out.tokens, w.engine, constrained=True)
    # The rollout's scores are sums of full-vocabulary log-probs; its logprobs are the constrained support's.
    torch.testing.assert_close(full.sum(-1).detach(), out.scores, atol=1e-4, rtol=0)
    torch.testing.assert_close(support.detach(), out.logprobs, atol=1e-5, rtol=0)
    (support.sum() + full.sum()).backward()
    grads = [p.grad for p in w.model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert w.model.get_input_embeddings().weight.grad.abs().sum() > 0
    assert w.model.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
    w.model.zero_grad(set_to_none=True)


# ------------------------------------------------------------------------------------------------ (d) sampling


def test_constrained_sampling(world):
    w = world
    ids, mask, pos = make_prompts(w.vocab, [0, 2, 5], 9, seed=8)
    config = DecodingConfig("sample", 16, constrained=True, temperature=1.5)
    a = w.engine.generate(w.model, ids, mask, pos, config, generator=torch.Generator().manual_seed(123))
    b = w.engine.generate(w.model, ids, mask, pos, config, generator=torch.Generator().manual_seed(123))
    c = w.engine.generate(w.model, ids, mask, pos, config, generator=torch.Generator().manual_seed(124))
    check_candidates(w, a, 3, 16)
    assert a.valid.all()
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.scores, b.scores)
    assert not torch.equal(a.tokens, c.tokens)
    assert len(set(a.items.flatten().tolist())) > 3  # a real spread at temperature 1.5
    # Per-token logprobs are those of the constrained support at temperature 1, the scores full-vocabulary sums.
    logits = candidate_logits(w.model, ids, mask, pos, a.tokens)
    torch.testing.assert_close(a.logprobs, token_logprobs(logits, a.tokens, w.engine, True).detach(),
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(a.scores, token_logprobs(logits, a.tokens).sum(-1).detach(), atol=1e-4, rtol=0)


def test_low_temperature_sampling_is_greedy(world):
    w = world
    ids, mask, pos = make_prompts(w.vocab, [0, 2, 5], 9, seed=9)
    greedy = w.engine.generate(w.model, ids, mask, pos, DecodingConfig("beam", 1, constrained=True))
    cold = w.engine.generate(w.model, ids, mask, pos, DecodingConfig("sample", 12, constrained=True,
                                                                     temperature=1e-4),
                             generator=torch.Generator().manual_seed(0))
    assert (cold.tokens == greedy.tokens).all()  # [B, 12, L] vs [B, 1, L], broadcast
    # Greedy by hand: the argmax allowed token at each step.
    prompt = ids[0, mask[0].bool()]
    seq = prompt.tolist()
    with torch.no_grad():
        for _ in range(3):
            logits = w.model(torch.tensor([seq])).logits[0, -1]
            allowed = w.next_tokens(seq[len(prompt):])
            seq.append(allowed[int(torch.argmax(logits[allowed]))])
    assert greedy.tokens[0, 0].tolist() == seq[len(prompt):]


def test_top_k_1_sampling_is_greedy(world):
    w = world
    ids, mask, pos = make_prompts(w.vocab, [1, 0], 8, seed=10)
    greedy = w.engine.generate(w.model, ids, mask, pos, DecodingConfig("beam", 1, constrained=True))
    top1 = w.engine.generate(w.model, ids, mask, pos, DecodingConfig("sample", 4, constrained=True, top_k=1),
                             generator=torch.Generator().manual_seed(0))
    assert (top1.tokens == greedy.tokens).all()


# ------------------------------------------------------------------------------------------------ (e) unconstrained


@pytest.mark.parametrize("mode", ["beam", "sample"])
def test_unconstrained_decoding_marks_invalid_sids(world, mode):
    w = world
    ids, mask, pos = make_prompts(w.vocab, [0, 3, 1, 6], 9, seed=12)
    out = w.engine.generate(w.model, ids, mask, pos, DecodingConfig(mode, 10, constrained=False),
                            generator=torch.Generator().manual_seed(0))
    check_candidates(w, out, 4, 10)  # items / valid agree with a plain dictionary lookup
    assert (~out.valid).any()  # 60 items in a 120-tuple code space and a 21-token vocabulary: invalid SIDs happen
    assert (out.items[~out.valid] == -1).all()
    assert torch.isfinite(out.scores).all()
    # Unconstrained per-token log-probs are full-vocabulary ones.
    logits = candidate_logits(w.model, ids, mask, pos, out.tokens)
    torch.testing.assert_close(out.logprobs, token_logprobs(logits, out.tokens).detach(), atol=1e-5, rtol=0)
    if mode == "beam":
        for r in range(4):
            assert len({tuple(t) for t in out.tokens[r].tolist()}) == 10  # distinct beams


# ---------------------------------------------------------------------------------------- (e) seen-item exclusion


def seen_sets(w: World, ids, mask, pos, h: int = 16, seed: int = 3) -> torch.Tensor:
    """``[B, H]`` exclusion lists that bite: each row's unfiltered top-4 items, every item of one first-level
    subtree (a dead end the search must avoid), a repeat and -1 padding."""
    top = w.engine.generate(w.model, ids, mask, pos, DecodingConfig("beam", 4, constrained=True)).items  # [B, 4]
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for r in range(len(ids)):
        code0 = int(w.codes[int(top[r, 0]), 0])
        subtree = [i for i in range(len(w.codes)) if int(w.codes[i, 0]) == code0]
        extra = torch.randint(len(w.codes), (3,), generator=gen).tolist()
        row = list(dict.fromkeys(top[r].tolist() + subtree + extra))[: h - 2] + [int(top[r, 0])]  # a repeat
        rows.append(row + [-1] * (h - len(row)))
    return torch.tensor(rows)


def brute_force_top(w: World, ids, mask, pos, exclude: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` items by full-vocabulary sequence log-prob among every catalogue item not in ``exclude``."""
    b, n = len(ids), len(w.item_tokens)
    every = w.item_tokens[None].expand(b, n, -1)  # [B, N, L]
    with torch.no_grad():
        seq = token_logprobs(candidate_logits(w.model, ids, mask, pos, every), every).sum(-1)  # [B, N]
    seen = torch.zeros(b, n, dtype=torch.bool)
    for r in range(b):
        seen[r, [i for i in exclude[r].tolist() if i >= 0]] = True
    top = seq.masked_fill(seen, -math.inf).topk(k, dim=1)
    return top.indices, top.values


def test_filtered_beam_search_matches_brute_force(world):
    w = world
    ids, mask, pos = make_prompts(w.vocab, [0, 3, 5], 9, seed=7)
    exclude = seen_sets(w, ids, mask, pos)
    n = len(w.item_tokens)
    # A beam as wide as the catalogue keeps every prefix at every level: the search is exact.
    out = w.engine.generate(w.model, ids, mask, pos, DecodingConfig("beam", n, constrained=True), exclude=exclude)
    for r in range(len(ids)):
        kept = {i for i in range(n)} - set(exclude[r].tolist())
        assert sorted(out.items[r][out.valid[r]].tolist()) == sorted(kept)  # every other item, each once
        assert (out.items[r, len(kept):] == -1).all() and torch.isneginf(out.scores[r, len(kept):]).all()
    ref_items, ref_scores = brute_force_top(w, ids, mask, pos, exclude, 10)
    assert out.items[:, :10].tolist() == ref_items.tolist()
    torch.testing.assert_close(out.scores[:, :10], ref_scores, atol=1e-4, rtol=0)


@pytest.mark.parametrize("mode", ["beam", "sample"])
@pytest.mark.parametrize("constrained", [True, False])
def test_filter_never_returns_a_seen_item(world, mode, constrained):
    w = world
    ids, mask, pos = make_prompts(w.vocab, [0, 3, 5, 1], 9, seed=8)
    exclude = seen_sets(w, ids, mask, pos)
    config = DecodingConfig(mode, 12, constrained=constrained, temperature=2.0)
    gen = torch.Generator().manual_seed(0)
    out = w.engine.generate(w.model, ids, mask, pos, config, generator=gen, exclude=exclude)
    check_candidates(w, out, 4, 12)
    hits = (out.items[:, :, None] == exclude[:, None, :]) & (out.items[:, :, None] >= 0)
    assert not hits.any()
    if constrained:  # no dead ends: every beam / sample ends on an unseen catalogue item
        assert out.valid.all() and torch.isfinite(out.scores).all() and torch.isfinite(out.logprobs).all()
    if mode == "beam" and constrained:
        for r in range(4):
            assert len(set(out.items[r].tolist())) == 12
    if mode == "sample" and constrained:  # the per-token log-probs are those of the filtered support
        logits = candidate_logits(w.model, ids, mask, pos, out.tokens)
        lp = token_logprobs(logits, out.tokens, w.engine, constrained=True, exclude=exclude)
        torch.testing.assert_close(out.logprobs, lp, atol=1e-4, rtol=0)


def test_exclusion_leaves_fewer_items_than_beams():
    w = World(torch.tensor([[0, 1, 2], [0, 1, 3], [2, 0, 0], [2, 0, 1], [3, 3, 3]]))
    ids, mask, pos = make_prompts(w.vocab, [0, 2, 1, 0], 6)
    exclude = torch.tensor([[0, 2, 3, -1], [0, 1, 2, 4], [4, 1, 2, 0], [0, 1, 2, 3]])
    left = [{1, 4}, {3}, {3}, {4}]  # row 1: items 2 and 3 share the prefix (2, 0); 2 is seen, 3 is not
    for mode in ("beam", "sample"):
        out = w.engine.generate(w.model, ids, mask, pos, DecodingConfig(mode, 3, constrained=True), exclude=exclude)
        for r in range(4):
            got = out.items[r][out.valid[r]].tolist()
            assert got and set(got) <= left[r]
            if mode == "beam":  # each remaining item once, then dead beams
                assert sorted(got) == sorted(left[r])
                assert torch.isneginf(out.scores[r, len(got):]).all() and (out.items[r, len(got):] == -1).all()
            else:  # samples never run into a dead end
                assert out.valid[r].all()
    everything = torch.arange(5)[None].expand(4, 5)
    out = w.engine.generate(w.model, ids, mask, pos, DecodingConfig("beam", 3, constrained=True), exclude=everything)
    assert not out.valid.any() and (out.items == -1).all()


def test_variants_share_one_prefill_and_match_separate_calls(world):
    w = world
    ids, mask, pos = make_prompts(w.vocab, [0, 3, 5], 9, seed=9)
    exclude = seen_sets(w, ids, mask, pos)
    config = DecodingConfig("beam", 8, constrained=True)
    both = w.engine.generate(w.model, ids, mask, pos, config,
                             exclude=torch.stack([torch.full_like(exclude, -1), exclude], 1))  # [B, 2, H]
    plain = w.engine.generate(w.model, ids, mask, pos, config)
    filtered = w.engine.generate(w.model, ids, mask, pos, config, exclude=exclude)
    assert both.items.shape == (3, 2, 8) and both.tokens.shape == (3, 2, 8, 3)
    for s, ref in enumerate([plain, filtered]):
        assert both.items[:, s].tolist() == ref.items.tolist()
        torch.testing.assert_close(both.scores[:, s], ref.scores, atol=1e-4, rtol=0)
        torch.testing.assert_close(both.logprobs[:, s], ref.logprobs, atol=1e-4, rtol=0)
    assert both.items[:, 0].tolist() != both.items[:, 1].tolist()  # the filter changed the lists
