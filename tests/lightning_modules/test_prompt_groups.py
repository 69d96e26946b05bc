"""Prompt groups (decoding.prompt_groups): a batch of left-padded prompts is split by prompt length so that no model
call encodes columns that are padding in all its rows; decoding and tree-attention scoring give every row the same
result as the unsplit batch, in the batch's row order."""

from __future__ import annotations

import torch
from test_decoding import World, make_catalogue, make_prompts

from adagrpo.lightning_modules.decoding import (
    DecodingConfig,
    PromptGroups,
    candidate_logits,
    prompt_groups,
    token_logprobs,
)

# Rows of very different prompt lengths (pads out of 16 columns), in no particular order.
PADS = [12, 0, 9, 1, 13, 0, 8, 2]


def whole(mask: torch.Tensor) -> PromptGroups:
    """One group of every row, nothing cut: the unsplit computation."""
    return PromptGroups([None], [0])


def test_groups_cover_every_row_once_and_cut_only_padding():
    _, mask, _ = make_prompts(World(make_catalogue(20, 6, 0)).vocab, PADS, 16)
    groups = prompt_groups(mask, extra=6, call_cost=0.0)  # free calls: one group per distinct length
    assert len(groups.rows) == len(set(PADS))
    rows = torch.cat(groups.rows)
    assert sorted(rows.tolist()) == list(range(len(PADS)))
    for r, start in zip(groups.rows, groups.start):
        assert not mask[r, :start].any()  # every cut column is padding in every row of the group
        assert mask[r, start:].sum(1).max() == 16 - start  # and the group's longest row keeps all its tokens
    # restore() puts per-group results back in the batch's order
    tagged = groups.restore([r.float() * 10 for r in groups.rows])
    assert tagged.tolist() == [10.0 * i for i in range(len(PADS))]
    one = PromptGroups([torch.tensor([2, 0, 1])], [0])  # a single group given in another order is put back too
    assert one.restore([torch.tensor([20.0, 0.0, 10.0])]).tolist() == [0.0, 10.0, 20.0]


def test_split_only_where_it_saves_more_than_the_calls_cost():
    _, mask, _ = make_prompts(World(make_catalogue(20, 6, 0)).vocab, PADS, 16)
    one = prompt_groups(mask, extra=6, call_cost=1e6)
    assert one.rows == [None] and one.start == [0]  # a row uses all 16 columns: nothing to cut
    shifted = torch.cat([torch.zeros_like(mask[:, 8:]), mask[:, 8:]], 1)  # each row's last 8 columns, 8 pads first
    assert prompt_groups(shifted, call_cost=1e6).start == [8]  # no split, but all-padding columns are cut
    assert prompt_groups(mask, split=False).rows == [None]
    # At the CPU's call cost, 8 rows of 16 columns are not worth a second call...
    assert len(prompt_groups(mask, extra=6).rows) == 1
    # ...but 64 such rows with half of them short are.
    many = mask.repeat(8, 1)
    groups = prompt_groups(many, extra=6)
    assert len(groups.rows) >= 2
    cost = sum(len(r) * (16 - s + 6) for r, s in zip(groups.rows, groups.start))
    assert cost + 64 * (len(groups.rows) - 1) < len(many) * (16 + 6)


def test_grouped_scoring_equals_the_unsplit_batch():
    w = World(make_catalogue(60, 6, 0))
    ids, mask, pos = make_prompts(w.vocab, PADS, 16, seed=3)
    gen = torch.Generator().manual_seed(0)
    cands = w.item_tokens[torch.randint(len(w.item_tokens), (len(PADS), 5), generator=gen)]  # [B, 5, L]
    groups = prompt_groups(mask, extra=10, call_cost=0.0)
    assert len(groups.rows) > 1
    split = candidate_logits(w.model, ids, mask, pos, cands, groups)
    ref = candidate_logits(w.model, ids, mask, pos, cands, whole(mask))
    assert split.shape == ref.shape == (len(PADS), 5, 3, w.vocab.vocab_size)
    torch.testing.assert_close(split, ref, atol=1e-5, rtol=1e-5)
    # gradients flow through every group
    w.model.zero_grad(set_to_none=True)
    token_logprobs(candidate_logits(w.model, ids, mask, pos, cands, groups), cands, w.engine, True).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in w.model.parameters() if p.requires_grad)


def test_grouped_decoding_equals_the_unsplit_batch():
    w = World(make_catalogue(60, 6, 0))
    ids, mask, pos = make_prompts(w.vocab, PADS, 16, seed=5)
    groups = prompt_groups(mask, calls=3, call_cost=0.0)
    assert len(groups.rows) > 1
    config = DecodingConfig("beam", 6, constrained=True)
    split = w.engine.generate(w.model, ids, mask, pos, config, groups=groups)
    ref = w.engine.generate(w.model, ids, mask, pos, config, groups=whole(mask))
    assert split.items.tolist() == ref.items.tolist()
    assert torch.equal(split.tokens, ref.tokens) and torch.equal(split.valid, ref.valid)
    torch.testing.assert_close(split.scores, ref.scores, atol=1e-5, rtol=0)
    torch.testing.assert_close(split.logprobs, ref.logprobs, atol=1e-5, rtol=0)
    # the default (no groups given) is what prompt_groups decides, with its row order restored
    default = w.engine.generate(w.model, ids, mask, pos, config)
    assert default.items.tolist() == ref.items.tolist()


def test_grouped_sampling_with_seen_item_variants_keeps_rows_in_order():
    w = World(make_catalogue(60, 6, 0))
    ids, mask, pos = make_prompts(w.vocab, PADS, 16, seed=6)
    seen = torch.randint(len(w.item_tokens), (len(PADS), 4), generator=torch.Generator().manual_seed(1))
    exclude = torch.stack([torch.full_like(seen, -1), seen], 1)  # [B, 2, H]: unfiltered and filtered
    groups = prompt_groups(mask, calls=3, call_cost=0.0)
    out = w.engine.generate(w.model, ids, mask, pos, DecodingConfig("sample", 5, constrained=True),
                            generator=torch.Generator().manual_seed(2), exclude=exclude, groups=groups)
    assert out.items.shape == (len(PADS), 2, 5)
    assert out.valid.all()
    for r in range(len(PADS)):  # each row's filtered variant avoids that row's own seen items
        assert not set(out.items[r, 1].tolist()) & set(seen[r].tolist())
    # the candidates are scored by the training-time forward exactly where the decoder put them
    logits = candidate_logits(w.model, ids, mask, pos, out.tokens[:, 1], groups)
    lp = token_logprobs(logits, out.tokens[:, 1], w.engine, constrained=True, exclude=seen)
    torch.testing.assert_close(lp, out.logprobs[:, 1], atol=1e-4, rtol=0)
