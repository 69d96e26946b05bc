"""Evaluation shared by every stage: beam search → HR@K, NDCG@K, hallucination, coverage, popularity,
the repeat rate, a most-popular baseline in the same pass, and the true utility where the data has a
ground truth — each ranking metric also with the user's seen items filtered out (``…/filtered/…``)."""

from __future__ import annotations

import torch
from torch import nn

from adagrpo.datamodules.sequence import PromptBatch
from adagrpo.lightning_modules.decoding import DecodingConfig, DecodingEngine
from adagrpo.lightning_modules.metrics import Coverage, HallucinationRate, MeanPopularity, MeanValue, RankingMetrics


class Evaluator(nn.Module):
    """Metric state for one stage (validation or test).

    Args:
        num_items: catalogue size (coverage).
        ks: cut-offs for HR/NDCG; the beam width is at least ``max(ks)``.
        beam_width: candidates decoded per user.
        unconstrained: also decode without the trie (hallucination rate, unconstrained HR/NDCG).
        mostpop: score the most-popular baseline on the same users.
        k: cut-off for coverage, mean popularity, the repeat rate and true utility.
        filter_seen: also rank with every item the user had before the target excluded from decoding
            (``<stage>/filtered/…``; the whole prefix, also beyond the prompt's ``max_history``): the unfiltered
            and the filtered beams come from one prefill of the prompt.
    """

    def __init__(
        self,
        num_items: int,
        ks: tuple[int, ...] = (1, 5, 10, 20),
        beam_width: int = 20,
        unconstrained: bool = True,
        mostpop: bool = True,
        k: int = 10,
        filter_seen: bool = True,
    ) -> None:
        super().__init__()
        self.ks = tuple(ks)
        self.beam_width = max(beam_width, max(ks))
        self.k = k
        self.rank = RankingMetrics(ks)
        self.invalid = HallucinationRate()
        self.coverage = Coverage(num_items, k)
        self.popularity = MeanPopularity(k)
        self.unconstrained = unconstrained
        if unconstrained:
            self.u_rank = RankingMetrics(ks)
            self.u_invalid = HallucinationRate()
        self.mostpop = mostpop
        if mostpop:
            self.p_rank = RankingMetrics(ks)
        self.true_utility = MeanValue()
        self.true_hit = MeanValue()
        self.repeats = MeanValue()
        self.filter_seen = filter_seen
        if filter_seen:
            self.f_rank = RankingMetrics(ks)
            self.f_true_utility = MeanValue()
            self.f_true_hit = MeanValue()
            self.target_seen = MeanValue()

    @torch.no_grad()
    def update(
        self,
        model: nn.Module,
        engine: DecodingEngine,
        batch: PromptBatch,
        popularity: torch.Tensor,
        oracle: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Decode and update every metric; returns the constrained top items ``[B, W]``.

        ``oracle``: optional true utility ``[B, N]`` (-inf on items the user already has).
        """
        args = (model, batch.prompt_ids, batch.prompt_mask, batch.position_ids)
        config = DecodingConfig("beam", self.beam_width, constrained=True)
        seen = batch.seen_items  # [B, S] the whole prefix before the target
        if self.filter_seen:  # [B, 2, W]: unfiltered, then without the seen items, from one prefill
            both = engine.generate(*args, config, exclude=torch.stack([torch.full_like(seen, -1), seen], 1))
            ranked, valid, filtered = both.items[:, 0], both.valid[:, 0], both.items[:, 1]
        else:
            cands = engine.generate(*args, config)
            ranked, valid = cands.items, cands.valid  # [B, W]
        self.rank.update(ranked, batch.target)
        self.invalid.update(valid)
        self.coverage.update(ranked)
        self.popularity.update(ranked, popularity)
        if self.unconstrained:
            free = engine.generate(*args, DecodingConfig("beam", self.beam_width, constrained=False))
            self.u_rank.update(free.items, batch.target)
            self.u_invalid.update(free.valid)
        if self.mostpop:
            top = torch.topk(popularity.float(), self.beam_width).indices  # [W]
            self.p_rank.update(top.expand(len(batch), -1), batch.target)
        top = ranked[:, : self.k]
        self.repeats.update(seen_share(top, seen))
        if oracle is not None:
            utility, hit = true_value(top, oracle)
            self.true_utility.update(utility)
            self.true_hit.update(hit)
        if self.filter_seen:
            self.f_rank.update(filtered, batch.target)
            self.target_seen.update((batch.target[:, None] == seen).any(1).float())
            if oracle is not None:
                utility, hit = true_value(filtered[:, : self.k], oracle)
                self.f_true_utility.update(utility)
                self.f_true_hit.update(hit)
        return ranked

    def compute(self, stage: str) -> dict[str, torch.Tensor]:
        out = {f"{stage}/{name}": v for name, v in self.rank.compute().items()}
        out[f"{stage}/invalid_rate"] = self.invalid.compute()
        out[f"{stage}/coverage_{self.k}"] = self.coverage.compute()
        out[f"{stage}/mean_pop_{self.k}"] = self.popularity.compute()
        out[f"{stage}/repeat_rate_{self.k}"] = self.repeats.compute()  # top-k items the user already had
        if self.unconstrained:
            out.update({f"{stage}/unconstrained/{n}": v for n, v in self.u_rank.compute().items()})
            out[f"{stage}/hallucination"] = self.u_invalid.compute()
        if self.mostpop:
            out.update({f"{stage}/mostpop/{n}": v for n, v in self.p_rank.compute().items()})
        if self.true_utility.count > 0:
            out[f"{stage}/true/utility_{self.k}"] = self.true_utility.compute()
            out[f"{stage}/true/hr_{self.k}"] = self.true_hit.compute()
        if self.filter_seen:  # the same lists with the seen items excluded from decoding
            out.update({f"{stage}/filtered/{n}": v for n, v in self.f_rank.compute().items()})
            out[f"{stage}/target_seen_rate"] = self.target_seen.compute()  # targets a filtered list cannot hit
            if self.f_true_utility.count > 0:
                out[f"{stage}/filtered/true/utility_{self.k}"] = self.f_true_utility.compute()
                out[f"{stage}/filtered/true/hr_{self.k}"] = self.f_true_hit.compute()
        return out

    def reset(self) -> None:
        for m in self.modules():
            if m is not self and hasattr(m, "reset"):
                m.reset()


def seen_share(top: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
    """Share ``[B]`` of the ``top [B, k]`` slots that hold an item of ``history [B, H]`` (-1 padded); an
    empty slot (-1) counts as not seen."""
    return ((top[:, :, None] == history[:, None, :]).any(-1) & (top >= 0)).float().mean(1)


def true_value(top: torch.Tensor, oracle: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean true utility ``[B]`` of the valid items in ``top [B, k]`` and whether the user's best unseen item is
    among them ``[B]``, under ``oracle [B, N]`` (-inf on items the user already has)."""
    util = oracle.gather(1, top.clamp_min(0))  # [B, k]; -inf for items the user already has
    # An item the user already has is worth the least any item is worth to them; an invalid slot is skipped.
    floor = oracle.masked_fill(~torch.isfinite(oracle), float("inf")).min(1, keepdim=True).values  # [B, 1]
    util = torch.where(torch.isfinite(util), util, floor.expand_as(util))
    util = util.masked_fill(top < 0, float("nan"))
    best = oracle.argmax(1)  # [B] the user's best unseen item
    return util.nanmean(1), (top == best[:, None]).any(1).float()
