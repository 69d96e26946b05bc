"""The reward model: AUC, RewardNet, training on exposure logs, exposure logs themselves, the RewardModel
interface GRPO calls (trained / user module / oracle / noisy), checkpoint compatibility and the bias report."""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn

from adagrpo import datamodules
from adagrpo.datamodules.catalog import Catalog, Interactions
from adagrpo.datamodules.exposure import ExposureLog, SimulatedExposure, WorldExposure, split_by_position
from adagrpo.datamodules.reward_data import RewardDataModule
from adagrpo.lightning_modules.base import IncompatibleCheckpoint
from adagrpo.lightning_modules.bias_report import bias_report, plot_report
from adagrpo.lightning_modules.reward import (
    NoisyReward,
    OracleReward,
    RewardModelModule,
    RewardNet,
    TorchReward,
    TrainedReward,
    auc,
)

STEPS = 120  # enough for a clear fall in BCE and a val AUC well above 0.5 (~0.63) in about a second


def make_dm(seed: int = 0, num_items: int = 120, num_users: int = 200) -> RewardDataModule:
    dm = RewardDataModule(
        source=datamodules.SyntheticSource(num_users=num_users, num_items=num_items, max_length=20, seed=seed),
        sids=datamodules.RQKMeansSids(embeddings=datamodules.TextEmbeddings(dim=16), levels=3, codebook_size=8,
                                      iters=20),
        exposure=WorldExposure(),
        max_history=5,
        batch_size=32,
        eval_batch_size=256,
        use_cache=False,
    )
    dm.prepare()
    return dm


class LossRecorder(L.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        self.losses.append(float(outputs["loss"]))


def quiet_trainer(**kwargs) -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, **kwargs)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny reward model trained on the tiny world's logs, its checkpoint, and the per-step losses."""
    L.seed_everything(0, verbose=False)
    dm = make_dm()
    module = RewardModelModule(dim=32, num_layers=1, num_heads=2, dropout=0.0, report_users=100,
                               optimizer=partial(torch.optim.AdamW, lr=5e-3))
    recorder = LossRecorder()
    trainer = quiet_trainer(max_steps=STEPS, check_val_every_n_epoch=1000, callbacks=[recorder])
    trainer.fit(module, dm)
    val = trainer.validate(module, dm, verbose=False)[0]
    ckpt = tmp_path_factory.mktemp("reward") / "reward.ckpt"
    trainer.save_checkpoint(ckpt)
    module.net.eval()
    return {"dm": dm, "module": module, "losses": recorder.losses, "val": val, "ckpt": ckpt, "trainer": trainer}


# ============================================================================================ auc
def brute_auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    pos = scores[labels == 1].tolist()
    neg = scores[labels == 0].tolist()
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_pairwise_count_with_ties(seed):
    gen = torch.Generator().manual_seed(seed)
    n = 60 + 17 * seed
    scores = torch.randint(0, 6, (n,), generator=gen).float()  # few distinct values: many ties
    labels = (torch.rand(n, generator=gen) < 0.3).float()
    labels[0], labels[1] = 1, 0
    assert auc(scores, labels) == pytest.approx(brute_auc(scores, labels), abs=1e-12)
    cont = torch.randn(n, generator=gen)
    assert auc(cont, labels) == pytest.approx(brute_auc(cont, labels), abs=1e-12)


def test_auc_extremes_and_shapes():
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert auc(torch.tensor([[2.0, 1.0], [0.0, 3.0]]), labels) == 1.0
    assert auc(torch.tensor([[0.0, 1.0], [2.0, -1.0]]), labels) == 0.0
    assert auc(torch.zeros(2, 2), labels) == 0.5


def test_auc_nan_when_a_class_is_missing():
    assert math.isnan(auc(torch.randn(5), torch.ones(5)))
    assert math.isnan(auc(torch.randn(5), torch.zeros(5)))
    assert math.isnan(auc(torch.randn(0), torch.zeros(0)))


# ============================================================================================ RewardNet
CODES = torch.tensor([[0, 0, 0], [0, 0, 1], [0, 1, 0], [1, 2, 0], [1, 2, 1], [2, 0, 0]])  # [6, 3]


def small_net(**kwargs) -> RewardNet:
    torch.manual_seed(0)
    return RewardNet(CODES, [3, 3, 2], dim=8, num_layers=1, num_heads=2, max_history=4, **kwargs)


@pytest.mark.parametrize("scorer", ["dot", "mlp"])
@pytest.mark.parametrize("train", [True, False])
def test_rewardnet_shapes_padding_and_empty_histories(scorer, train):
    net = small_net(scorer=scorer, item_id_embedding=True).train(train)
    history = torch.tensor([[-1, -1, -1, -1], [-1, -1, 0, 3], [1, 2, 3, 4], [-1, -1, -1, 5], [5, 4, 3, 2]])
    items = torch.tensor([[0, 1, 2], [3, -1, 4], [-1, -1, -1], [5, 0, -1], [1, 1, 1]])
    with torch.set_grad_enabled(train):
        scores = net(history, items)
    assert scores.shape == (5, 3)
    assert torch.isfinite(scores).all()
    # Longer histories than max_history are cut to the most recent items.
    long = torch.tensor([[0, 1, 2, 3, 4, 5]])
    assert net(long, items[:1]).shape == (1, 3)
    assert net.user_state(history).shape == (5, 8)


def test_rewardnet_invalid_items_get_zero_vectors():
    net = small_net()
    vec = net.item_vectors(torch.tensor([[-1, 2], [0, -1]]))
    assert vec.shape == (2, 2, 8)
    assert (vec[0, 0] == 0).all() and (vec[1, 1] == 0).all()
    assert (vec[0, 1] != 0).any()


def test_rewardnet_items_sharing_prefixes_share_level_embeddings():
    net = small_net()
    a, b, c = torch.tensor([0, 1, 3])  # a, b share levels 0 and 1; c shares nothing with them
    before = net.item_vectors(torch.stack([a, b, c])).detach().clone()
    with torch.no_grad():
        net.level_emb[0].weight[0] += 1.0  # level-0 code 0: both a and b
    after = net.item_vectors(torch.stack([a, b, c])).detach()
    torch.testing.assert_close(after[:2] - before[:2], torch.ones(2, 8))
    torch.testing.assert_close(after[2], before[2])
    with torch.no_grad():
        net.level_emb[1].weight[0] -= 2.0  # level-1 code 0: a and b again
    again = net.item_vectors(torch.stack([a, b, c])).detach()
    torch.testing.assert_close(again[:2] - after[:2], torch.full((2, 8), -2.0))
    with torch.no_grad():
        net.level_emb[2].weight[1] += 3.0  # last level, code 1: only b (and c's level-2 code is 0)
    last = net.item_vectors(torch.stack([a, b, c])).detach()
    torch.testing.assert_close(last[0], again[0])
    torch.testing.assert_close(last[1] - again[1], torch.full((8,), 3.0))


# ============================================================================================ training
def test_training_lowers_bce_and_beats_chance(trained):
    losses = trained["losses"]
    assert len(losses) == STEPS
    first, last = np.mean(losses[:15]), np.mean(losses[-15:])
    assert last < first - 0.01, (first, last)
    assert trained["val"]["val/auc"] > 0.55


# ============================================================================================ ExposureBatch
def test_exposure_batch_history_excludes_scored_items_and_labels_mark_click(trained):
    dm = trained["dm"]
    checked_positive = 0
    for log in (dm.logs.train, dm.logs.val, dm.logs.test):
        rows = np.arange(min(len(log), 300))
        batch = dm.exposure_batch(log, rows)
        assert batch.history.shape == (len(rows), dm.max_history)
        assert batch.items.shape == batch.labels.shape
        for r in range(len(rows)):
            u, p = int(batch.user[r]), int(batch.position[r])
            hist = batch.history[r][batch.history[r] >= 0]
            shown = batch.items[r][batch.items[r] >= 0]
            assert not torch.isin(hist, shown).any()
            seq = dm.data.sequence(u)
            # The history is the most recent part of seq[:p] with the shown items removed.
            expected = [i for i in seq[:p] if i not in set(shown.tolist())][-dm.max_history:]
            assert hist.tolist() == expected
            clicked = int(seq[p])
            is_click = batch.items[r] == clicked
            assert is_click.sum() == 1
            assert torch.equal(batch.labels[r] == 1, is_click)
            assert torch.equal(batch.labels[r] == -1, batch.items[r] < 0)
            checked_positive += 1
    assert checked_positive > 0


# ============================================================================================ SimulatedExposure
def hand_made(num_users: int = 60, num_items: int = 40, seed: int = 0) -> Interactions:
    """Sequences drawn without replacement from a Zipf-like item distribution."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, num_items + 1) ** 1.2
    p /= p.sum()
    seqs = [rng.choice(num_items, size=int(rng.integers(5, 11)), replace=False, p=p).tolist()
            for _ in range(num_users)]
    catalog = Catalog(item_ids=[f"i{i}" for i in range(num_items)])
    return Interactions.from_lists("hand", catalog, [f"u{u}" for u in range(num_users)], seqs, ["<hand>"])


def test_simulated_exposure_slates_exclude_click_and_history():
    data = hand_made()
    train_end = data.lengths() - 2
    splits = SimulatedExposure(alpha=1.0, num_exposed=6, retriever_share=0.5, seed=1).build(data, train_end, None)
    log = ExposureLog(*(np.concatenate([getattr(s, f) for s in (splits.train, splits.val, splits.test)])
                        for f in ("user", "position", "items", "labels")))
    assert len(log) == int((data.lengths() - 1).sum())  # every position >= 1 is an event
    assert log.items.shape[1] == 7
    assert (log.labels[:, 0] == 1).all() and not (log.labels[:, 1:] == 1).any()
    assert np.array_equal(log.labels == -1, log.items < 0)
    for u, p, items in zip(log.user, log.position, log.items):
        seq = data.sequence(int(u))
        assert items[0] == seq[p]  # the clicked item leads the row
        slate = items[1:][items[1:] >= 0]
        assert seq[p] not in slate
        assert not np.isin(slate, seq[:p]).any()
        assert len(np.unique(slate)) == len(slate)  # no repeats within a slate
        assert (slate < data.num_items).all()


def test_simulated_exposure_alpha_concentrates_on_popular_items():
    data = hand_made(num_users=120)
    train_end = data.lengths() - 2
    pop = np.bincount(np.concatenate([data.sequence(u)[: train_end[u]] for u in range(data.num_users)]),
                      minlength=data.num_items)
    top = np.argsort(-pop)[:5]

    def top_share(alpha: float) -> float:
        s = SimulatedExposure(alpha=alpha, num_exposed=8, retriever_share=0.0, seed=0).build(data, train_end, None)
        shown = s.train.items[:, 1:]
        shown = shown[shown >= 0]
        return float(np.isin(shown, top).mean())

    uniform, skewed = top_share(0.0), top_share(2.0)
    # α=0 is popularity-blind (≈ 5/40 before removing clicked/history items); α=2 piles onto the head.
    assert uniform < 0.2
    assert skewed > uniform + 0.15, (uniform, skewed)


def test_simulated_exposure_splits_by_position():
    data = hand_made()
    train_end = data.lengths() - 2
    s = SimulatedExposure(num_exposed=3, seed=0).build(data, train_end, None)
    assert (s.train.position < train_end[s.train.user]).all()
    assert (s.val.position == train_end[s.val.user]).all()
    assert (s.test.position > train_end[s.test.user]).all()
    assert len(s.val) == len(s.test) == data.num_users  # leave-one-out: one val and one test event per user
    assert (s.train.position >= 1).all()
    assert s.unbiased is None
    # split_by_position itself partitions any log.
    log = ExposureLog(np.array([0, 0, 0, 1]), np.array([1, 2, 3, 5]), np.zeros((4, 2), np.int64),
                      np.zeros((4, 2), np.float32))
    tr, va, te = split_by_position(log, np.array([2, 4]))
    assert tr.position.tolist() == [1] and va.position.tolist() == [2] and te.position.tolist() == [3, 5]


def test_simulated_exposure_retriever_fallback_is_uniform():
    # Every user: a, b, X, c with train_end = 3, so X (the last training item) is never followed in training and
    # the validation event (position 3, last item X) gets no co-occurrence neighbours.
    num_items, users = 200, 40
    seqs = [[u % 50, 50 + u % 50, 150, 100 + u % 50] for u in range(users)]
    data = Interactions.from_lists("fallback", Catalog([f"i{i}" for i in range(num_items)]),
                                   [f"u{u}" for u in range(users)], seqs, ["<hand>"])
    s = SimulatedExposure(alpha=0.0, num_exposed=6, retriever_share=1.0, neighbours=5, seed=0).build(
        data, np.full(users, 3), None)
    shown = s.val.items[:, 1:]
    shown = shown[shown >= 0]
    # 240 draws meant to be uniform over ~200 items cover far more than the 5 "neighbours" of the empty row.
    assert len(np.unique(shown)) > 50, np.unique(shown)


def test_simulated_exposure_is_seeded():
    data = hand_made()
    train_end = data.lengths() - 2
    a = SimulatedExposure(seed=3).build(data, train_end, None)
    b = SimulatedExposure(seed=3).build(data, train_end, None)
    c = SimulatedExposure(seed=4).build(data, train_end, None)
    assert np.array_equal(a.train.items, b.train.items)
    assert not np.array_equal(a.train.items, c.train.items)


# ============================================================================================ TrainedReward
def score_inputs(dm: RewardDataModule, n: int = 12):
    batch = dm.exposure_batch(dm.logs.test, np.arange(n))
    items = batch.items.clone()
    items[0, :3] = -1
    return batch, items


def test_trained_reward_scores(trained):
    dm = trained["dm"]
    reward = TrainedReward(str(trained["ckpt"]))
    reward.attach(dm)
    batch, items = score_inputs(dm)
    out = reward.score(batch.history, items)
    assert out.shape == items.shape
    assert out.device == items.device
    assert not out.requires_grad
    assert (out[items < 0] == 0).all()
    assert torch.isfinite(out).all()
    # Same numbers as the trained network itself.
    expected = trained["module"].net(batch.history, items).detach()
    torch.testing.assert_close(out[items >= 0], expected[items >= 0])
    # Gradient-free even when the caller has grad enabled, and the same on a second call.
    with torch.enable_grad():
        again = reward.score(batch.history, items)
    assert not again.requires_grad
    assert torch.equal(out, again)
    assert all(not p.requires_grad for p in reward.net.parameters())


def test_trained_reward_does_not_depend_on_padding_width(trained):
    dm = trained["dm"]
    reward = TrainedReward(str(trained["ckpt"]))
    reward.attach(dm)
    batch, items = score_inputs(dm)
    wider = torch.cat([torch.full((len(items), 3), -1), batch.history], 1)  # 3 more pad columns on the left
    narrow = reward.score(batch.history[:, -3:], items)  # the 3 most recent items, padded to width 3
    same_three = torch.cat([torch.full((len(items), dm.max_history - 3), -1), batch.history[:, -3:]], 1)
    torch.testing.assert_close(reward.score(wider, items), reward.score(batch.history, items))
    torch.testing.assert_close(narrow, reward.score(same_three, items))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_trained_reward_follows_items_device(trained):
    dm = trained["dm"]
    reward = TrainedReward(str(trained["ckpt"]))
    reward.attach(dm)
    batch, items = score_inputs(dm)
    out = reward.score(batch.history.cuda(), items.cuda())
    assert out.device.type == "cuda" and out.shape == items.shape
    torch.testing.assert_close(out.cpu(), reward.score(batch.history, items), rtol=1e-4, atol=1e-4)


def test_trained_reward_rejects_missing_and_foreign_checkpoints(trained, tmp_path):
    dm = trained["dm"]
    with pytest.raises(IncompatibleCheckpoint, match="not found"):
        TrainedReward(str(tmp_path / "nope.ckpt")).attach(dm)
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(IncompatibleCheckpoint, match="not a reward-model checkpoint"):
        TrainedReward(str(other)).attach(dm)


@pytest.mark.parametrize("change", [{"seed": 1}, {"num_items": 100}])
def test_reward_checkpoint_on_other_catalogue_is_rejected(trained, change):
    other = make_dm(**change)
    ckpt = str(trained["ckpt"])
    with pytest.raises(IncompatibleCheckpoint) as info:
        TrainedReward(ckpt).attach(other)
    msg = str(info.value)
    assert ckpt in msg
    assert "sid_fingerprint" in msg
    if "num_items" in change:
        assert "num_items: checkpoint 120 vs data 100" in msg
    # Resuming / validating the module from that checkpoint on the other data fails the same way.
    module = RewardModelModule(dim=32, num_layers=1, num_heads=2, dropout=0.0)
    with pytest.raises(IncompatibleCheckpoint) as info:
        quiet_trainer(max_steps=1).validate(module, other, ckpt_path=ckpt, verbose=False)
    assert ckpt in str(info.value) and "sid_fingerprint" in str(info.value)


# ============================================================================================ TorchReward
class DotHistoryReward(nn.Module):
    """A user's own reward: a learned item table, score = item · mean(history items)."""

    def __init__(self, num_items: int = 120, dim: int = 4) -> None:
        super().__init__()
        self.emb = nn.Embedding(num_items, dim)

    def forward(self, histories: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        real = (histories >= 0).float()[..., None]
        h = (self.emb(histories.clamp_min(0)) * real).sum(1) / real.sum(1).clamp_min(1)  # [B, D]
        return torch.einsum("bd,bnd->bn", h, self.emb(items))


class WrongShapeReward(nn.Module):
    def forward(self, histories: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return items.float().sum(1)  # [B] instead of [B, N]


def test_torch_reward_with_module(trained):
    dm = trained["dm"]
    torch.manual_seed(0)
    user_module = DotHistoryReward()
    reward = TorchReward(module=user_module)
    reward.attach(dm)
    batch, items = score_inputs(dm)
    out = reward.score(batch.history, items)
    assert out.shape == items.shape and out.device == items.device and not out.requires_grad
    assert (out[items < 0] == 0).all()
    expected = user_module(batch.history, items.clamp_min(0))
    torch.testing.assert_close(out[items >= 0], expected[items >= 0])


@pytest.mark.parametrize("kind", ["pickle", "torchscript"])
def test_torch_reward_from_saved_module(trained, tmp_path, kind):
    dm = trained["dm"]
    torch.manual_seed(0)
    user_module = DotHistoryReward()
    path = tmp_path / "reward.pt"
    if kind == "pickle":
        torch.save(user_module, path)
    else:
        torch.jit.script(user_module).save(str(path))
    reward = TorchReward(path=str(path), trust_pickle=kind == "pickle")
    reward.attach(dm)
    batch, items = score_inputs(dm)
    out = reward.score(batch.history, items)
    with torch.no_grad():
        expected = user_module(batch.history, items.clamp_min(0)).masked_fill(items < 0, 0.0)
    torch.testing.assert_close(out, expected)


def test_torch_reward_bad_inputs(trained, tmp_path):
    dm = trained["dm"]
    with pytest.raises(IncompatibleCheckpoint, match=r"shape \(1,\)"):
        TorchReward(module=WrongShapeReward()).attach(dm)
    with pytest.raises(IncompatibleCheckpoint, match="not found"):
        TorchReward(path=str(tmp_path / "missing.pt")).attach(dm)
    with pytest.raises(datamodules.ConfigError):
        TorchReward()
    with pytest.raises(datamodules.ConfigError):
        TorchReward(module=DotHistoryReward(), path="x.pt")


# ============================================================================================ Oracle / Noisy
def oracle_inputs(dm: RewardDataModule):
    """Every test user × every item (a few -1 slots), with their real histories."""
    targets = dm.split.test
    batch = dm.prompt_batch(targets)
    items = torch.arange(dm.num_items).expand(len(targets), -1).clone()  # [U, N]
    items[::7, :4] = -1
    return batch.history, items, batch.user


def test_oracle_reward_is_world_utility(trained):
    dm = trained["dm"]
    hist, items, users = oracle_inputs(dm)
    oracle = OracleReward()
    oracle.attach(dm)
    out = oracle.score(hist, items, users)
    truth = dm.source.world.utility(users, hist[:, -1], items)
    assert out.shape == items.shape and out.device == items.device
    torch.testing.assert_close(out[items >= 0], truth[items >= 0])
    assert (out[items < 0] == 0).all()
    scaled = OracleReward(scale=2.0)
    scaled.attach(dm)
    torch.testing.assert_close(scaled.score(hist, items, users), 2 * out)
    with pytest.raises(ValueError, match="users"):
        oracle.score(hist, items)


def test_oracle_reward_needs_the_world():
    class NoWorld:
        source = object()

    with pytest.raises(datamodules.ConfigError, match="synthetic"):
        OracleReward().attach(NoWorld())


def test_noisy_reward_zero_noise_is_the_oracle(trained):
    dm = trained["dm"]
    hist, items, users = oracle_inputs(dm)
    oracle, noisy = OracleReward(), NoisyReward(noise=0.0)
    oracle.attach(dm)
    noisy.attach(dm)
    assert torch.equal(noisy.score(hist, items, users), oracle.score(hist, items, users))


def deviation_std_by_popularity(dm: RewardDataModule, exponent: float) -> tuple[float, float]:
    hist, items, users = oracle_inputs(dm)
    items = torch.arange(dm.num_items).expand(len(users), -1)
    oracle, noisy = OracleReward(), NoisyReward(noise=0.5, popularity_exponent=exponent, seed=1)
    oracle.attach(dm)
    noisy.attach(dm)
    dev = noisy.score(hist, items, users) - oracle.score(hist, items, users)  # [U, N]
    order = torch.argsort(dm.train_popularity().double() + torch.linspace(0, 1e-6, dm.num_items,
                                                                            dtype=torch.float64))
    k = dm.num_items // 5
    tail, head = order[:k], order[-k:]
    return float(dev[:, tail].std()), float(dev[:, head].std())


def test_noisy_reward_noise_grows_towards_the_tail(trained):
    dm = trained["dm"]
    tail, head = deviation_std_by_popularity(dm, exponent=0.5)
    assert tail > 1.5 * head, (tail, head)
    tail0, head0 = deviation_std_by_popularity(dm, exponent=0.0)
    assert tail0 == pytest.approx(0.5, rel=0.1) and head0 == pytest.approx(0.5, rel=0.1)
    assert tail0 / head0 == pytest.approx(1.0, abs=0.15)


def test_noisy_reward_fixed_noise_is_deterministic_and_resample_is_not(trained):
    dm = trained["dm"]
    hist, items, users = oracle_inputs(dm)
    fixed = NoisyReward(noise=0.3, seed=5)
    fixed.attach(dm)
    a, b = fixed.score(hist, items, users), fixed.score(hist, items, users)
    assert torch.equal(a, b)
    assert (a[items < 0] == 0).all()
    # Fixed per (user, item): the same pair gets the same noise wherever it sits in the batch.
    perm = torch.randperm(items.shape[1], generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(fixed.score(hist, items[:, perm], users), a[:, perm])
    other_seed = NoisyReward(noise=0.3, seed=6)
    other_seed.attach(dm)
    assert not torch.equal(other_seed.score(hist, items, users), a)
    fresh = NoisyReward(noise=0.3, resample=True)
    fresh.attach(dm)
    c, d = fresh.score(hist, items, users), fresh.score(hist, items, users)
    valid = items >= 0
    assert not torch.equal(c[valid], d[valid])
    assert (c[~valid] == 0).all()
    with pytest.raises(datamodules.ConfigError):
        NoisyReward(noise=-1.0)


# ============================================================================================ bias report
def test_bias_report_keys_and_ranges(trained, tmp_path):
    dm, module = trained["dm"], trained["module"]
    report = bias_report(module.net, dm, negatives=10, buckets=5, max_users=100)
    for key in ("auc/biased", "auc/truth", "concordance/truth", "discr/uniform", "discr/popular",
                "discr_auc/uniform", "discr_auc/popular"):
        assert key in report
        assert 0.0 <= report[key] <= 1.0, (key, report[key])
    assert report["auc/biased"] > 0.5
    assert "auc/unbiased" not in report  # the synthetic world has no random-exposure log
    per_bucket = [f"{m}/bucket{b}" for m in ("auc/biased", "auc/truth", "discr/uniform", "discr/popular")
                  for b in range(5)]
    for key in per_bucket:
        v = report[key]
        assert math.isnan(v) or 0.0 <= v <= 1.0, (key, v)
    assert sum(report[f"discr_users/bucket{b}"] for b in range(5)) == report["users"] == 100
    assert len(report["bucket_max_popularity"]) == 5
    assert report["bucket_max_popularity"] == sorted(report["bucket_max_popularity"])
    png = plot_report(report, tmp_path / "plots" / "bias.png", title="tiny")
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_test_stage_writes_last_report(trained):
    module, dm = trained["module"], trained["dm"]
    quiet_trainer().test(module, dm, verbose=False)
    assert module.last_report is not None and "auc/truth" in module.last_report
    assert Path(trained["ckpt"]).exists()


def test_bias_report_counts_and_standard_errors(trained):
    from adagrpo.lightning_modules.bias_report import auc_standard_error

    dm, module = trained["dm"], trained["module"]
    report = bias_report(module.net, dm, negatives=10, buckets=5, max_users=100)
    impressions = sum(int((batch.labels >= 0).sum()) for batch in dm.test_dataloader())
    assert sum(report[f"auc/biased/bucket{b}/n"] for b in range(5)) == impressions
    assert sum(report[f"auc/truth/bucket{b}/n"] for b in range(5)) == report["users"] == 100
    for b in range(5):
        assert report[f"discr/uniform/bucket{b}/n"] == report[f"discr_users/bucket{b}"]
        for key in ("auc/biased", "auc/truth", "discr/uniform", "discr/popular"):
            n, se = report[f"{key}/bucket{b}/n"], report[f"{key}/bucket{b}/se"]
            assert math.isnan(se) or 0.0 <= se < 0.6, (key, b, se)
            if n >= 30 and 0 < report[f"{key}/bucket{b}"] < 1:
                assert se > 0, (key, b)
        p, n = report[f"discr/popular/bucket{b}"], report[f"discr/popular/bucket{b}/n"]
        if n > 1:
            assert report[f"discr/popular/bucket{b}/se"] == pytest.approx(math.sqrt(p * (1 - p) / n))
    # Hanley & McNeil by hand: A = 0.5, 10 + 10 → Q1 = Q2 = 1/3, var = (0.25 + 9/12 + 9/12) / 100
    assert auc_standard_error(0.5, 10, 10) == pytest.approx(math.sqrt(0.0175))
    assert math.isnan(auc_standard_error(0.7, 0, 10))
