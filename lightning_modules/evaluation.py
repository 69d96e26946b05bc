"""Evaluation shared by every stage: beam search → HR@K, NDCG@K, hallucination, coverage, popularity,
a most-popular baseline in the same pass, and the true utility where the data has a ground truth."""

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
        k: cut-off for coverage, mean popularity and true utility.
    """

    def __init__(
        self,
        num_items: int,
        ks: tuple[int, ...] = (1, 5, 10, 20),
        beam_width: int = 20,
        unconstrained: bool = True,
        mostpop: bool = True,
        k: int = 10,
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
        cands = engine.generate(*args, DecodingConfig("beam", self.beam_width, constrained=True))
        ranked = cands.items  # [B, W]
        self.rank.update(ranked, batch.target)
        self.invalid.update(cands.valid)
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
        in_history = (top[:, :, None] == batch.history[:, None, :]).any(-1) & (top >= 0)  # [B, k]
        self.repeats.update(in_history.float().mean(1))
        if oracle is not None:
            util = oracle.gather(1, top.clamp_min(0))  # [B, k]; -inf for items the user already has
            # An item the user already has is worth the least any item is worth to them; an invalid slot is skipped.
            floor = oracle.masked_fill(~torch.isfinite(oracle), float("inf")).min(1, keepdim=True).values  # [B, 1]
            util = torch.where(torch.isfinite(util), util, floor.expand_as(util))
            util = util.masked_fill(top < 0, float("nan"))
            self.true_utility.update(util.nanmean(1))
            best = oracle.argmax(1)  # [B] the user's best unseen item
            self.true_hit.update((top == best[:, None]).any(1).float())
        return ranked

    def compute(self, stage: str) -> dict[str, torch.Tensor]:
        out = {f"{stage}/{name}": v for name, v in self.rank.compute().items()}
        out[f"{stage}/invalid_rate"] = self.invalid.compute()
        out[f"{stage}/coverage_{self.k}"] = self.coverage.compute()
        out[f"{stage}/mean_pop_{self.k}"] = self.popularity.compute()
        out[f"{stage}/repeat_rate_{self.k}"] = self.repeats.compute()  # top-k items already in the (visible) history
        if self.unconstrained:
            out.update({f"{stage}/unconstrained/{n}": v for n, v in self.u_rank.compute().items()})
            out[f"{stage}/hallucination"] = self.u_invalid.compute()
        if self.mostpop:
            out.update({f"{stage}/mostpop/{n}": v for n, v in self.p_rank.compute().items()})
        if self.true_utility.count > 0:
            out[f"{stage}/true/utility_{self.k}"] = self.true_utility.compute()
            out[f"{stage}/true/hr_{self.k}"] = self.true_hit.compute()
        return out

    def reset(self) -> None:
        for m in self.modules():
            if m is not self and hasattr(m, "reset"):
                m.reset()
