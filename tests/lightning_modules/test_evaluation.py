"""Evaluation with the seen-item filter: the metric names every policy module logs (unfiltered and filtered side
by side, the repeat rate, the true-utility metrics of the synthetic world), the switch that turns the filtered pass
off, and the helpers by hand."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch

from adagrpo.lightning_modules.evaluation import Evaluator, seen_share, true_value
from adagrpo.lightning_modules.policy import LlamaPolicy
from adagrpo.lightning_modules.sft import SFTModule

TINY = dict(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)


def fit_and_test(dm, **kwargs) -> dict[str, float]:
    L.seed_everything(0)
    module = SFTModule(policy=LlamaPolicy(**TINY), beam_width=10, ks=(1, 10), test_unconstrained=False, **kwargs)
    module.attach(dm)
    module.configure_model()
    trainer = L.Trainer(logger=False, enable_checkpointing=False, accelerator="cpu", enable_progress_bar=False,
                        enable_model_summary=False, max_steps=2, limit_train_batches=2, limit_val_batches=1,
                        limit_test_batches=2, num_sanity_val_steps=0, val_check_interval=2)
    trainer.fit(module, datamodule=dm)
    val = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    trainer.test(module, datamodule=dm, verbose=False)
    return {**val, **{k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}}


def test_sft_logs_filtered_metrics_beside_unfiltered(tiny_world_dm):
    m = fit_and_test(tiny_world_dm)
    for stage in ("val", "test"):
        for name in ("hr_10", "ndcg_10", "filtered/hr_10", "filtered/ndcg_10", "filtered/hr_1", "repeat_rate_10",
                     "target_seen_rate", "true/hr_10", "true/utility_10", "filtered/true/hr_10",
                     "filtered/true/utility_10"):
            key = f"{stage}/{name}"
            assert key in m, f"{key} missing (logged: {sorted(m)})"
            assert math.isfinite(m[key])
    for name in ("hr_10", "filtered/hr_10", "repeat_rate_10", "target_seen_rate", "true/hr_10", "filtered/true/hr_10"):
        assert 0.0 <= m[f"test/{name}"] <= 1.0
    # The synthetic world never repeats a consumed item, so a target is never in the history.
    assert m["test/target_seen_rate"] == 0.0


def test_filtered_pass_can_be_switched_off(tiny_world_dm):
    m = fit_and_test(tiny_world_dm, val_filter_seen=False, test_filter_seen=False)
    assert "test/hr_10" in m and "test/repeat_rate_10" in m and "val/repeat_rate_10" in m
    assert not [k for k in m if "filtered" in k or "target_seen" in k]


class FixedEngine:
    """Stands in for the decoding engine: returns set lists, ``[B, 2, W]`` when asked for two variants."""

    def __init__(self, plain: torch.Tensor, filtered: torch.Tensor) -> None:
        self.plain, self.filtered = plain, filtered

    def generate(self, model, prompt_ids, prompt_mask, position_ids, config, generator=None, exclude=None):
        from adagrpo.lightning_modules.decoding import Candidates

        assert exclude is not None and exclude.shape[1] == 2 and (exclude[:, 0] == -1).all()
        items = torch.stack([self.plain, self.filtered], 1)  # [B, 2, W]
        z = torch.zeros(*items.shape, 1)
        return Candidates(tokens=z.long(), items=items, valid=items >= 0, scores=z[..., 0], logprobs=z)


def test_evaluator_scores_both_lists_by_hand():
    from adagrpo.datamodules.sequence import PromptBatch

    history = torch.tensor([[-1, 3, 4], [0, 1, 2]])  # [B, H]
    plain = torch.tensor([[3, 5, 6], [1, 2, 7]])  # [B, W]: row 0 repeats 3, row 1 repeats 1 and 2
    filtered = torch.tensor([[5, 6, 7], [8, 7, -1]])
    target = torch.tensor([5, 7])
    z = torch.zeros(2, 1, dtype=torch.long)
    batch = PromptBatch(prompt_ids=z, prompt_mask=z + 1, position_ids=z, history=history, target=target,
                        target_tokens=z, user=z[:, 0], position=z[:, 0])
    oracle = torch.arange(10.0)[None].repeat(2, 1)  # [B, N] utility = item id; the best unseen item is 9
    oracle[0, [3, 4]] = -math.inf
    oracle[1, [0, 1, 2]] = -math.inf
    oracle[1, 8] = 20.0  # row 1's best unseen item is 8
    ev = Evaluator(num_items=10, ks=(1, 2), beam_width=3, unconstrained=False, mostpop=False, k=2)
    ev.update(None, FixedEngine(plain, filtered), batch, torch.ones(10), oracle)
    out = {k: float(v) for k, v in ev.compute("test").items()}
    assert out["test/hr_1"] == 0.0 and out["test/hr_2"] == 0.5  # 5 at rank 1 in row 0; 7 below the cut-off in row 1
    assert out["test/filtered/hr_1"] == 0.5 and out["test/filtered/hr_2"] == 1.0
    assert out["test/filtered/ndcg_2"] == pytest.approx((1.0 + 1 / math.log2(3)) / 2)
    assert out["test/repeat_rate_2"] == pytest.approx((0.5 + 1.0) / 2)
    assert out["test/target_seen_rate"] == 0.0
    # Repeats are worth the user's worst unseen item (row 0: 0; row 1: 3).
    assert out["test/true/utility_2"] == pytest.approx(((0 + 5) / 2 + (3 + 3) / 2) / 2)
    assert out["test/filtered/true/utility_2"] == pytest.approx(((5 + 6) / 2 + (20 + 7) / 2) / 2)
    assert out["test/true/hr_2"] == 0.0 and out["test/filtered/true/hr_2"] == 0.5


def test_helpers_by_hand():
    top = torch.tensor([[1, 2, -1], [4, 4, 5]])
    history = torch.tensor([[-1, -1, 2], [5, 4, -1]])
    torch.testing.assert_close(seen_share(top, history), torch.tensor([1 / 3, 1.0]))
    oracle = torch.tensor([[0.0, 1.0, -math.inf, 3.0, 4.0, 5.0], [9.0, 1.0, 2.0, 3.0, -math.inf, -math.inf]])
    utility, hit = true_value(top, oracle)
    torch.testing.assert_close(utility, torch.tensor([(1.0 + 0.0) / 2, 1.0]))  # -1 skipped; seen → the row's minimum
    torch.testing.assert_close(hit, torch.tensor([0.0, 0.0]))


def test_seen_items_beyond_the_prompt_window_count_as_seen():
    """The repeat rate, the target-seen rate and the filtered pass read the whole prefix (``seen``), not only the
    last ``max_history`` items the prompt shows."""
    from adagrpo.datamodules.sequence import PromptBatch

    history = torch.tensor([[3, 4], [1, 2]])  # [B, H] the prompt's window
    seen = torch.tensor([[-1, 9, 3, 4], [0, 7, 1, 2]])  # [B, S] the whole prefix: 9 and 0, 7 are outside the window
    plain = torch.tensor([[9, 5], [7, 8]])  # both rows' first slot is an item seen before the window
    filtered = torch.tensor([[5, 6], [8, 5]])
    z = torch.zeros(2, 1, dtype=torch.long)
    batch = PromptBatch(prompt_ids=z, prompt_mask=z + 1, position_ids=z, history=history,
                        target=torch.tensor([9, 5]), target_tokens=z, user=z[:, 0], position=z[:, 0], seen=seen)

    class Engine(FixedEngine):
        def generate(self, model, prompt_ids, prompt_mask, position_ids, config, generator=None, exclude=None):
            assert torch.equal(exclude[:, 1], seen)  # the filtered variant excludes the whole prefix
            return super().generate(model, prompt_ids, prompt_mask, position_ids, config, generator, exclude)

    ev = Evaluator(num_items=10, ks=(1, 2), beam_width=2, unconstrained=False, mostpop=False, k=2)
    ev.update(None, Engine(plain, filtered), batch, torch.ones(10))
    out = {k: float(v) for k, v in ev.compute("test").items()}
    assert out["test/repeat_rate_2"] == pytest.approx(0.5)  # one of two slots per row; 0 if only history counted
    assert out["test/target_seen_rate"] == pytest.approx(0.5)  # row 0's target 9 was seen before the window
    assert batch.seen_items is seen
    no_seen = PromptBatch(prompt_ids=z, prompt_mask=z + 1, position_ids=z, history=history, target=z[:, 0],
                          target_tokens=z, user=z[:, 0], position=z[:, 0])
    assert no_seen.seen_items is history
