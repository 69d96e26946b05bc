"""The synthetic world as an instrument (issue 11): the world's knobs, where reward noise lives, the oracle gate,
the derived diagnostics and the calibration report.

Knob tests check direction (a stronger imitation deficit lowers the ideal imitator's true HR@10; more reward noise
lowers the reward's concordance with the truth; noise on a segment is larger there) on tiny worlds.
"""

from __future__ import annotations

import hashlib
import math

import pytest
import torch

from adagrpo.callbacks.gates import OracleGate, PolicyDifficultyGate, RewardDiscriminabilityGate
from adagrpo.datamodules.errors import ConfigError
from adagrpo.datamodules.synthetic import SyntheticWorld
from adagrpo.lightning_modules.calibration import calibrate, format_calibration
from adagrpo.lightning_modules.diagnostics import Diagnostics, concordance
from adagrpo.lightning_modules.policy import LlamaPolicy
from adagrpo.lightning_modules.reward import NoisyReward, OracleReward

NAN = math.nan


# ------------------------------------------------------------------------------------------------ world knobs
def test_default_knobs_leave_todays_world_unchanged():
    # Checksums of this world as generated before the knobs existed (commit c803bf1): old studies reproduce.
    w = SyntheticWorld(num_users=500, num_items=300, seed=3)
    assert hashlib.sha1(str(w.sequences).encode()).hexdigest() == "0315ee28a5df36dad9b68f90d22e7b0eac4f200a"
    assert not w.logging_corrupted
    assert w.impressions.satisfaction is None and w.user_features is None
    assert not w.logging_corrupted and w.impressions.satisfaction is None and w.user_features is None


def _imitator_true_hr(world: SyntheticWorld, users: int = 200, k: int = 10) -> float:
    u = torch.arange(users)
    seqs = [world.sequences[i] for i in range(users)]
    last = torch.tensor([s[-2] for s in seqs])
    seen = torch.zeros(users, world.num_items, dtype=torch.bool)
    for r, s in enumerate(seqs):
        seen[r, torch.tensor(s[:-1])] = True
    probs = world.click_probabilities(u, last, seen, samples=64)
    best = world.utility(u, last).masked_fill(seen, -math.inf).argmax(1)
    return float((probs.masked_fill(seen, -1).topk(k, 1).indices == best[:, None]).any(1).float().mean())


def test_imitation_deficit_knobs_lower_the_ideal_imitator():
    base = dict(num_users=300, num_items=400, seed=1, max_length=12)
    honest = _imitator_true_hr(SyntheticWorld(**base))
    biased = _imitator_true_hr(SyntheticWorld(**base, retriever_share=0.3, temperature=0.2, logging_seq_strength=1.0,
                                              logging_appeal_weight=3.0, logging_item_noise=0.3))
    assert honest > 0.9
    assert biased < honest - 0.1, (honest, biased)


def test_corrupted_logging_changes_what_is_shown_not_the_truth():
    a = SyntheticWorld(num_users=100, num_items=200, seed=2)
    b = SyntheticWorld(num_users=100, num_items=200, seed=2, logging_seq_strength=1.0, logging_appeal_weight=2.0)
    users, last = torch.arange(5), torch.tensor([3, 4, 5, 6, 7])
    torch.testing.assert_close(a.utility(users, last), b.utility(users, last))  # same truth
    assert not torch.allclose(b.logging_utility(users, last), b.utility(users, last))
    assert a.sequences != b.sequences  # different logs


def test_reward_side_information_is_simulated_on_request():
    w = SyntheticWorld(num_users=100, num_items=150, seed=0, satisfaction_noise=0.05, user_feature_noise=0.2)
    log = w.impressions
    assert log.satisfaction is not None and log.satisfaction.shape == log.clicked.shape
    assert w.user_features.shape == w.user_factors.shape
    # features are informative: closer to the user's own taste than to another user's
    own = (w.user_features * w.user_factors).sum(1)
    other = (w.user_features * w.user_factors.roll(1, 0)).sum(1)
    assert (own > other).float().mean() > 0.9
    with pytest.raises(ConfigError, match="logging_seq_strength"):
        SyntheticWorld(num_users=10, num_items=30, logging_seq_strength=1.5)


# ------------------------------------------------------------------------------------------- where noise lives
@pytest.fixture(scope="module")
def dm(tiny_world_dm):
    return tiny_world_dm


def _concordance_with_truth(reward, dm, users: int = 64) -> torch.Tensor:
    reward.attach(dm)
    targets = dm.split.test[:users]
    batch = dm.prompt_batch(targets)
    items = torch.arange(dm.data.num_items).expand(len(batch), -1)
    truth = OracleReward()
    truth.attach(dm)
    t = truth.score(batch.history, items, batch.user)
    r = reward.score(batch.history, items, batch.user)
    return concordance(r, t, torch.ones_like(r, dtype=torch.bool))  # [B]


def test_more_reward_noise_lowers_concordance_with_the_truth(dm):
    small = _concordance_with_truth(NoisyReward(noise=0.05, noise_on="uniform"), dm).mean()
    large = _concordance_with_truth(NoisyReward(noise=0.5, noise_on="uniform"), dm).mean()
    exact = _concordance_with_truth(NoisyReward(noise=0.0, noise_on="uniform"), dm).mean()
    assert exact == 1.0 and exact > small > large


def test_tail_noise_lives_on_the_tail_and_segment_noise_on_the_segment(dm):
    tail = NoisyReward(noise=0.4, noise_on="tail", head_share=0.2, clean_factor=0.1)
    tail.attach(dm)
    is_tail = tail.is_tail(dm.train_popularity())
    assert is_tail.float().mean() == pytest.approx(0.8, abs=0.01)
    torch.testing.assert_close(tail.sigma[is_tail], torch.full((int(is_tail.sum()),), 0.4))
    torch.testing.assert_close(tail.sigma[~is_tail], torch.full((int((~is_tail).sum()),), 0.04))
    seg = NoisyReward(noise=0.4, noise_on="segment", segment_share=0.5, clean_factor=0.0, seed=3)
    seg.attach(dm)
    users = torch.arange(200)
    inside = seg.in_segment(users)
    assert 0.35 < inside.float().mean() < 0.65
    conc = _concordance_with_truth(seg, dm, users=64)
    seg_users = seg.in_segment(torch.as_tensor(dm.split.test[:64, 0]))
    assert (conc[~seg_users] == 1.0).all()  # clean_factor 0: the oracle exactly
    assert conc[seg_users].mean() < 0.95
    with pytest.raises(ConfigError, match="noise_on"):
        NoisyReward(noise_on="everywhere")


# ------------------------------------------------------------------------------------ diagnostics and gates
def _diag(**over) -> Diagnostics:
    base = dict(gt_rank=[1.0, 3.0, 2.0, 5.0], gt_prob=[0.5] * 4, entropy=[1.0] * 4,
                gt_in_group=[True, True, False, True], rm_rank=[1.0, 1.0, 1.0, 6.0], rm_margin=[0.1] * 4,
                rm_auc=[1.0] * 4, num_negatives=[4.0] * 4)
    base.update(over)
    return Diagnostics(**{k: torch.tensor(v) for k, v in base.items()})


def test_derived_diagnostics_and_their_gates():
    d = _diag()
    # band: in the group and not first
    assert d.gt_band.tolist() == [0.0, 1.0, 0.0, 1.0]
    assert PolicyDifficultyGate("band", 1.0).admit(d).tolist() == [0.0, 1.0, 0.0, 1.0]
    # relative discriminability: policy rank - reward rank
    assert d.rm_gain.tolist() == [0.0, 2.0, 1.0, -1.0]
    assert RewardDiscriminabilityGate("relative", 1.0).admit(d).tolist() == [0.0, 1.0, 1.0, 0.0]


def test_oracle_gate_admits_exactly_where_the_reward_orders_the_group_better():
    # Hand-built groups of 3 candidates with known truth: the reward is right on rows 0 and 2, the policy on 1.
    truth = torch.tensor([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0], [1.0, 2.0, 3.0], [1.0, 1.0, 1.0]])
    reward = torch.tensor([[9.0, 5.0, 1.0], [1.0, 5.0, 9.0], [0.0, 1.0, 2.0], [1.0, 2.0, 3.0]])
    policy = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0], [0.0, 2.0, 1.0], [3.0, 2.0, 1.0]])
    mask = torch.ones(4, 3, dtype=torch.bool)
    rc, pc = concordance(reward, truth, mask), concordance(policy, truth, mask)
    torch.testing.assert_close(rc[:3], torch.tensor([1.0, 0.0, 1.0]))
    torch.testing.assert_close(pc[:3], torch.tensor([0.0, 1.0, 2 / 3]))
    assert math.isnan(rc[3]) and math.isnan(pc[3])  # no pair with different truth: undefined, never admitted
    d = _diag().with_truth(rc, pc)
    assert OracleGate().admit(d).tolist() == [1.0, 0.0, 1.0, 0.0]
    assert OracleGate(margin=0.5).admit(d).tolist() == [1.0, 0.0, 0.0, 0.0]
    with pytest.raises(ConfigError, match="synthetic world"):
        OracleGate().admit(_diag())


def test_concordance_ignores_masked_candidates_and_counts_score_ties_half():
    truth = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
    scores = torch.tensor([[1.0, 1.0, 0.0, 99.0]])
    mask = torch.tensor([[True, True, True, False]])
    # pairs (0,1) tie -> 0.5, (0,2) right, (1,2) right: 2.5 / 3
    torch.testing.assert_close(concordance(scores, truth, mask), torch.tensor([2.5 / 3]))


# ---------------------------------------------------------------------------------------- calibration report
def test_calibration_report_on_a_tiny_world(dm):
    torch.manual_seed(0)
    policy, _ = LlamaPolicy(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64).build(dm.vocab)
    exact = calibrate(dm, policy.eval(), NoisyReward(noise=0.0, noise_on="uniform"), max_users=48, group=8,
                      imitator_samples=16, batch_size=24)
    s = exact.summary
    assert s["users"] == 48 and s["reward_true_hr"] == 1.0  # the exact oracle is a perfect recommender
    assert s["reward_concordance"] == 1.0 and 0.0 <= s["policy_concordance"] <= 1.0
    assert s["oracle_auc_pass"] == s["reward_auc_pass"]  # the reward is the oracle
    assert 0 <= s["imitator_true_hr"] <= 1 and 0 <= s["sft_true_hr"] <= 1
    assert {r["family"] for r in exact.strata} == {"history length", "history popularity"}
    noisy = calibrate(dm, policy.eval(), NoisyReward(noise=1.0, noise_on="uniform"), max_users=48, group=8,
                      imitator_samples=16, batch_size=24)
    assert noisy.summary["reward_concordance"] < exact.summary["reward_concordance"]
    assert noisy.summary["reward_true_hr"] < 1.0
    assert noisy.summary["policy_concordance"] == exact.summary["policy_concordance"]  # same policy, same beams
    text = format_calibration(noisy, "tiny")
    assert "ideal imitator" in text and "oracle gate admits" in text


def test_calibration_needs_a_ground_truth(dm):
    class NoWorld:
        world = None

    import copy

    clone = copy.copy(dm)
    clone.source = NoWorld()
    with pytest.raises(ConfigError, match="ground truth"):
        calibrate(clone, None, None)
