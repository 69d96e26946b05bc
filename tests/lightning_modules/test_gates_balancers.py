"""Gates, diagnostics and balancers (DESIGN.md §4 steps 6–8) on hand-made numbers, and the two ways a gate
plugs in from outside the project: a ``class_path`` to any importable Gate, and the ``adagrpo.gates``
entry-point group."""

from __future__ import annotations

import math
import sys

import pytest
import torch

from adagrpo.callbacks.gates import (
    ENTRY_POINT_GROUP,
    Gate,
    PluginGate,
    PolicyDifficultyGate,
    RewardDiscriminabilityGate,
    available_gates,
    combine_gates,
)
from adagrpo.datamodules.errors import ConfigError
from adagrpo.lightning_modules.balancers import FixedWeight, GatedBalance, MarginWeighted
from adagrpo.lightning_modules.diagnostics import Diagnostics, compute_diagnostics

T, F = True, False
NAN = math.nan


def diag(**fields) -> Diagnostics:
    """Diagnostics of ``B`` samples: given fields, the rest zeros (B from the first given field)."""
    b = len(next(iter(fields.values())))
    names = ["gt_rank", "gt_prob", "entropy", "gt_in_group", "rm_rank", "rm_margin", "rm_auc", "num_negatives"]
    out = {n: torch.zeros(b) for n in names}
    out.update({k: torch.as_tensor(v, dtype=torch.float32) for k, v in fields.items()})
    return Diagnostics(**out)


def close(actual: torch.Tensor, expected, atol: float = 1e-6) -> None:
    torch.testing.assert_close(actual.float(), torch.as_tensor(expected, dtype=torch.float32), atol=atol, rtol=0)


# ============================================================================================ gates
def test_difficulty_gt_rank_admits_when_not_top1():
    # default threshold 2: admit rank >= 2 (y* is not the policy's top choice); NaN never admits.
    g = PolicyDifficultyGate()
    assert g.name == "difficulty"
    close(g.admit(diag(gt_rank=[1, 2, 5, NAN])), [0, 1, 1, 0])


def test_difficulty_gt_prob_admits_small_probabilities():
    g = PolicyDifficultyGate(signal="gt_prob", threshold=0.3)
    close(g.admit(diag(gt_prob=[0.1, 0.3, 0.9, NAN])), [1, 1, 0, 0])


def test_difficulty_entropy_admits_high_entropy():
    g = PolicyDifficultyGate(signal="entropy", threshold=1.0)
    close(g.admit(diag(entropy=[0.5, 1.0, 2.0, NAN])), [0, 1, 1, 0])


def test_discriminability_auc_margin_rank():
    d = diag(rm_auc=[0.5, 0.8, 1.0, NAN], rm_margin=[-0.1, 0.0, 0.3, NAN], rm_rank=[1, 2, 3, 1])
    g_auc = RewardDiscriminabilityGate()  # auc >= 0.8
    assert g_auc.name == "discriminability"
    close(g_auc.admit(d), [0, 1, 1, 0])
    close(RewardDiscriminabilityGate(signal="margin", threshold=0.0).admit(d), [0, 1, 1, 0])
    close(RewardDiscriminabilityGate(signal="rank", threshold=1).admit(d), [1, 0, 0, 1])  # rank <= 1
    close(RewardDiscriminabilityGate(signal="rank", threshold=2).admit(d), [1, 1, 0, 1])


def test_nan_never_admits_even_when_soft_or_with_inf_threshold():
    d = diag(rm_auc=[NAN, NAN], rm_margin=[NAN, NAN])
    assert (RewardDiscriminabilityGate(threshold=-math.inf).admit(d) == 0).all()
    assert (RewardDiscriminabilityGate(signal="margin", threshold=-1e9, soft_temperature=1.0).admit(d) == 0).all()


def test_bad_gate_config():
    with pytest.raises(ConfigError, match="signal"):
        PolicyDifficultyGate(signal="auc")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="quantile"):
        PolicyDifficultyGate(quantile=1.5)
    with pytest.raises(ConfigError, match="soft_temperature"):
        RewardDiscriminabilityGate(soft_temperature=0.0)


def test_soft_gate_values_and_monotone():
    # entropy (large passes), threshold 1, T = 0.5: sigmoid((x - 1) / 0.5) at x = 0, 1, 2
    # = sigmoid(-2), sigmoid(0), sigmoid(2) = 0.119203, 0.5, 0.880797.
    g = PolicyDifficultyGate(signal="entropy", threshold=1.0, soft_temperature=0.5)
    close(g.admit(diag(entropy=[0.0, 1.0, 2.0])), [0.119203, 0.5, 0.880797])
    x = torch.linspace(-3, 5, 50)
    a = g.admit(diag(entropy=x))
    assert ((a > 0) & (a < 1)).all()
    assert (a.diff() > 0).all()  # increasing in entropy
    # gt_prob (small passes), threshold 0.3, T = 0.1: sigmoid(-(x - 0.3) / 0.1) at x = 0.2, 0.3, 0.4
    # = sigmoid(1), sigmoid(0), sigmoid(-1) = 0.731059, 0.5, 0.268941; decreasing in π(y*).
    gp = PolicyDifficultyGate(signal="gt_prob", threshold=0.3, soft_temperature=0.1)
    close(gp.admit(diag(gt_prob=[0.2, 0.3, 0.4])), [0.731059, 0.5, 0.268941])
    p = torch.linspace(0.0, 1.0, 50)
    ap = gp.admit(diag(gt_prob=p))
    assert ((ap > 0) & (ap < 1)).all() and (ap.diff() < 0).all()
    # rank (small passes) on the reward side: also decreasing.
    gr = RewardDiscriminabilityGate(signal="rank", threshold=2, soft_temperature=1.0)
    ar = gr.admit(diag(rm_rank=[1, 2, 3, 4]))
    close(ar[1], 0.5)
    assert (ar.diff() < 0).all() and ((ar > 0) & (ar < 1)).all()


def test_running_quantile_warmup_window_and_state():
    g = PolicyDifficultyGate(signal="entropy", threshold=2.0, quantile=0.5, window=6, warmup=4)
    assert g.threshold() == 2.0
    g.observe(diag(entropy=[1.0, 3.0, NAN]))  # NaN is not observed: history [1, 3]
    assert list(g.history) == [1.0, 3.0]
    assert g.threshold() == 2.0  # 2 < warmup: still the fixed threshold
    close(g.admit(diag(entropy=[1.9, 2.0])), [0, 1])
    g.admit(diag(entropy=[100.0]))  # admit() does not observe
    assert len(g.history) == 2
    g.observe(diag(entropy=[5.0, 7.0]))  # history [1, 3, 5, 7]: warm; median (3 + 5) / 2 = 4
    assert g.threshold() == pytest.approx(4.0)
    close(g.admit(diag(entropy=[3.9, 4.0, 4.1])), [0, 1, 1])
    g.observe(diag(entropy=[9.0, 11.0, 13.0]))  # window 6 keeps [3, 5, 7, 9, 11, 13]: median (7 + 9) / 2 = 8
    assert list(g.history) == [3.0, 5.0, 7.0, 9.0, 11.0, 13.0]
    assert g.threshold() == pytest.approx(8.0)
    # Round trip through state_dict into a fresh gate (as a checkpoint restores it).
    state = g.state_dict()
    assert state["threshold"] == pytest.approx(8.0)
    fresh = PolicyDifficultyGate(signal="entropy", threshold=2.0, quantile=0.5, window=6, warmup=4)
    assert fresh.threshold() == 2.0
    fresh.load_state_dict(state)
    assert list(fresh.history) == list(g.history)
    assert fresh.threshold() == pytest.approx(8.0)
    fresh.observe(diag(entropy=[15.0]))  # the restored window still has maxlen 6: [5, 7, 9, 11, 13, 15] → 10
    assert fresh.threshold() == pytest.approx(10.0)


def test_running_quantile_other_level():
    # quantile 0.25 of [3, 5, 7, 9, 11, 13] (linear): position 0.25 · 5 = 1.25 → 5 + 0.25 · 2 = 5.5.
    g = RewardDiscriminabilityGate(signal="margin", threshold=0.0, quantile=0.25, window=100, warmup=1)
    g.observe(diag(rm_margin=[3.0, 5.0, 7.0, 9.0, 11.0, 13.0]))
    assert g.threshold() == pytest.approx(5.5)
    close(g.admit(diag(rm_margin=[5.4, 5.5])), [0, 1])


def test_fixed_gate_observe_keeps_no_history():
    g = PolicyDifficultyGate()
    g.observe(diag(gt_rank=[1, 2, 3]))
    assert len(g.history) == 0 and g.threshold() == 2.0


class ConstGate(Gate):
    def __init__(self, values, name=None):
        super().__init__(name)
        self.values = torch.as_tensor(values, dtype=torch.float32)

    def admit(self, diagnostics):
        return self.values


def test_combine_gates_multiplies_and_reports_each():
    d = diag(gt_rank=[1, 1, 1, 1])
    a, each = combine_gates([ConstGate([1, 0, 1, 1], "hard"), ConstGate([0.5, 1, 0, 0.25], "soft")], d)
    # elementwise product: [0.5, 0, 0, 0.25]
    close(a, [0.5, 0.0, 0.0, 0.25])
    assert set(each) == {"hard", "soft"}
    close(each["hard"], [1, 0, 1, 1])
    close(each["soft"], [0.5, 1, 0, 0.25])


def test_combine_no_gates_admits_all_and_bad_shape_raises():
    d = diag(gt_rank=[1, 2, 3])
    a, each = combine_gates([], d)
    close(a, [1, 1, 1])
    assert each == {}
    with pytest.raises(ValueError, match="shape"):
        combine_gates([ConstGate([1, 1], "short")], d)


def test_combine_real_gates_is_and():
    d = diag(gt_rank=[1, 2, 3, 2], rm_auc=[0.9, 0.9, 0.5, NAN])
    a, each = combine_gates([PolicyDifficultyGate(), RewardDiscriminabilityGate()], d)
    # difficulty [0, 1, 1, 1] AND discriminability [1, 1, 0, 0] = [0, 1, 0, 0]
    close(each["difficulty"], [0, 1, 1, 1])
    close(each["discriminability"], [1, 1, 0, 0])
    close(a, [0, 1, 0, 0])


# ============================================================================================ diagnostics
def test_compute_diagnostics_by_hand():
    cand_items = torch.tensor([[3, 7, 3, 5], [4, -1, 6, 8], [2, 2, -1, -1]])  # [B=3, G=4]
    cand_valid = torch.tensor([[T, T, T, T], [T, F, T, T], [T, T, F, F]])
    cand_lp = torch.tensor([[-1.0, -2.0, -1.0, -3.0], [-0.5, -4.0, -2.5, -2.5], [-1.0, -1.0, -5.0, -6.0]])
    gt_item = torch.tensor([7, 9, 2])
    gt_lp = torch.tensor([-2.0, -3.0, -1.0])
    cand_r = torch.tensor([[0.2, 0.9, 0.2, 0.95], [0.4, -1.0, 0.6, 0.3], [0.7, 0.7, -1.0, -1.0]])
    gt_r = torch.tensor([0.9, 0.4, 0.7])
    d = compute_diagnostics(cand_items, cand_valid, cand_lp, gt_item, gt_lp, cand_r, gt_r)

    # Entropy over the pool {distinct others ∪ y*}: H = ln Z − Σ p_i·lp_i with Z = Σ e^{lp_i}, p_i = e^{lp_i}/Z.
    # Row 0: y* = 7 is candidate 1; item 3 appears twice (counted once). Distinct others: 3 (lp -1), 5 (lp -3).
    #   gt_rank = 1 + #{lp > -2} = 1 + 1 = 2.
    #   Pool {-1, -3, y*: -2}: Z = 0.367879 + 0.049787 + 0.135335 = 0.553002, ln Z = −0.592394;
    #   p = 0.665241, 0.090031, 0.244728; H = −0.592394 + (0.665241·1 + 0.090031·3 + 0.244728·2) = 0.832396.
    #   Reward: negatives 3 (0.2), 5 (0.95) → n = 2; r* = 0.9: one above → rm_rank 2; AUC = 1/2;
    #   margin = 0.9 − 0.95 = −0.05.
    # Row 1: y* = 9 not in the group; distinct valid others (an invalid SID names no item, so it is left out
    #   on both sides): lp -0.5, -2.5, -2.5 vs -3 → 3 above → gt_rank 4.
    #   Pool {-0.5, -2.5, -2.5, -3}: Z = 0.606531 + 2·0.082085 + 0.049787 = 0.820488, ln Z = −0.197857;
    #   p = 0.739232, 0.100044 (×2), 0.060680;
    #   H = −0.197857 + (0.739232·0.5 + 2·0.100044·2.5 + 0.060680·3) = −0.197857 + 1.051876 = 0.854019.
    #   Reward: valid negatives 4 (0.4, a tie with r* = 0.4), 6 (0.6, above), 8 (0.3, below) → n = 3;
    #   rm_rank = 1 + 1 = 2 (a tie is not above); AUC = (1 + ½·1) / 3 = 0.5; margin = 0.4 − 0.6 = −0.2.
    # Row 2: y* = 2 fills both valid slots, the rest invalid → no valid negative: rank, margin, AUC all NaN.
    #   Policy side: no valid other item → gt_rank 1; the pool is {y*} alone → H = 0.
    close(d.gt_rank, [2, 4, 1])
    close(d.gt_prob, [math.exp(-2), math.exp(-3), math.exp(-1)])
    close(d.entropy, [0.832396, 0.854019, 0.0], atol=2e-6)
    assert d.gt_in_group.tolist() == [True, False, True]
    close(d.num_negatives, [2, 3, 0])
    close(d.rm_rank[:2], [2, 2])
    assert math.isnan(d.rm_rank[2])  # no negative: a rank threshold must not pass either
    close(d.rm_auc[:2], [0.5, 0.5])
    close(d.rm_margin[:2], [-0.05, -0.2])
    assert math.isnan(d.rm_auc[2]) and math.isnan(d.rm_margin[2])
    # The gates read these: AUC 0.5 fails the default 0.8; NaN never passes.
    close(RewardDiscriminabilityGate().admit(d), [0, 0, 0])
    close(PolicyDifficultyGate().admit(d), [1, 1, 0])


def test_compute_diagnostics_perfect_discrimination():
    # y* outside the group, all three negatives scored below r* → AUC 1, rank 1, margin 0.5 − 0.3 = 0.2.
    d = compute_diagnostics(torch.tensor([[1, 2, 3]]), torch.ones(1, 3, dtype=torch.bool),
                            torch.tensor([[-1.0, -2.0, -3.0]]), torch.tensor([9]), torch.tensor([-0.5]),
                            torch.tensor([[0.1, 0.3, 0.2]]), torch.tensor([0.5]))
    close(d.rm_auc, [1.0])
    close(d.rm_rank, [1])
    close(d.rm_margin, [0.2])
    close(d.gt_rank, [1])  # -0.5 beats every candidate
    assert d.get("rm_auc") is d.rm_auc
    with pytest.raises(KeyError, match="no diagnostic"):
        d.get("nope")


# ============================================================================================ balancers
NLL = torch.tensor([1.0, 2.0, 3.0, 4.0])
GRPO = torch.tensor([10.0, 20.0, 30.0, 40.0])
D4 = diag(rm_margin=[0.0, 0.1, -0.1, NAN])


def test_fixed_weight():
    ones, zeros = torch.ones(4), torch.zeros(4)
    # rl 0: NLL only → mean(1, 2, 3, 4) = 2.5
    loss, w = FixedWeight(1.0, 0.0).combine(NLL, GRPO, ones, D4)
    close(loss, 2.5)
    close(w, [0, 0, 0, 0])
    # nll 0: GRPO only → mean(10, 20, 30, 40) = 25
    loss, w = FixedWeight(0.0, 1.0).combine(NLL, GRPO, ones, D4)
    close(loss, 25.0)
    close(w, [1, 1, 1, 1])
    # 1 · NLL + 0.1 · GRPO = 2.5 + 2.5 = 5; and it ignores the admission
    for adm in (ones, zeros):
        loss, w = FixedWeight(1.0, 0.1).combine(NLL, GRPO, adm, D4)
        close(loss, 5.0)
    assert FixedWeight.uses_gates is False
    for bad in ((0.0, 0.0), (-1.0, 1.0), (1.0, -0.5)):
        with pytest.raises(ConfigError, match="balancer"):
            FixedWeight(*bad)


def test_gated_balance_batch_vs_admitted():
    adm = torch.tensor([1.0, 0.0, 1.0, 0.0])
    # batch: 2.5 + (10 + 30) / 4 = 12.5; weights = admission
    loss, w = GatedBalance("batch").combine(NLL, GRPO, adm, D4)
    close(loss, 12.5)
    close(w, [1, 0, 1, 0])
    # admitted: 2.5 + (10 + 30) / 2 = 22.5; weights = a · B / Σa = a · 2
    loss, w = GatedBalance("admitted").combine(NLL, GRPO, adm, D4)
    close(loss, 22.5)
    close(w, [2, 0, 2, 0])
    # soft admission, admitted: Σa = 0.5 → 2.5 + 0.5 · 10 / 0.5 = 12.5
    loss, _ = GatedBalance("admitted").combine(NLL, GRPO, torch.tensor([0.5, 0, 0, 0]), D4)
    close(loss, 12.5)
    # weights: nll 2, rl 0.5, batch: 2 · 2.5 + 0.5 · 40 / 4 = 10
    loss, _ = GatedBalance("batch", nll_weight=2.0, rl_weight=0.5).combine(NLL, GRPO, adm, D4)
    close(loss, 10.0)
    with pytest.raises(ConfigError, match="normalize"):
        GatedBalance("mean")  # type: ignore[arg-type]


@pytest.mark.parametrize("normalize", ["batch", "admitted"])
def test_gated_balance_nothing_admitted_is_nll_mean(normalize):
    nll = NLL.clone().requires_grad_(True)
    grpo = GRPO.clone().requires_grad_(True)
    loss, w = GatedBalance(normalize).combine(nll, grpo, torch.zeros(4), D4)
    assert torch.isfinite(loss)
    close(loss, 2.5)
    close(w, [0, 0, 0, 0])
    loss.backward()
    close(nll.grad, [0.25] * 4)
    close(grpo.grad, [0.0] * 4)


def test_margin_weighted():
    # center 0, T 0.1: w = σ(margin / 0.1) = σ(0), σ(1), σ(−1), NaN → 0 = 0.5, 0.731059, 0.268941, 0.
    # loss = mean(nll) + mean(w · grpo) with nll = 1 and grpo = 4: 1 + 4 · (0.5 + 0.731059 + 0.268941) / 4 = 2.5
    ones = torch.ones(4)
    loss, w = MarginWeighted(0.0, 0.1).combine(ones, 4 * ones, ones, D4)
    close(w, [0.5, 0.731059, 0.268941, 0.0])
    close(loss, 2.5)
    # The gates' admission multiplies: [1, 0, 1, 1] → w = [0.5, 0, 0.268941, 0]; loss = 1 + (2 + 1.075766)/4
    loss, w = MarginWeighted(0.0, 0.1).combine(ones, 4 * ones, torch.tensor([1.0, 0, 1, 1]), D4)
    close(w, [0.5, 0.0, 0.268941, 0.0])
    close(loss, 1.768941)
    # center 0.1: σ((0.1 − 0.1) / 0.1) = 0.5 for the second sample
    _, w = MarginWeighted(0.1, 0.1).combine(ones, ones, ones, D4)
    close(w[1], 0.5)
    with pytest.raises(ConfigError, match="temperature"):
        MarginWeighted(temperature=0.0)


# ============================================================================================ plugin gates
class RankAtLeastGate(Gate):
    """A third-party gate defined outside the project's packages: admit when gt_rank >= ``min_rank``."""

    def __init__(self, min_rank: int = 3, name: str | None = "rank_at_least") -> None:
        super().__init__(name)
        self.min_rank = min_rank

    def admit(self, diagnostics: Diagnostics) -> torch.Tensor:
        return (diagnostics.gt_rank >= self.min_rank).float()


CLASS_PATH = f"{RankAtLeastGate.__module__}.{RankAtLeastGate.__qualname__}"


def test_plugin_gate_by_class_path_argument():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--gate", type=Gate)
    cfg = parser.parse_args(["--gate", f'{{"class_path": "{CLASS_PATH}", "init_args": {{"min_rank": 4}}}}'])
    gate = parser.instantiate_classes(cfg).gate
    assert type(gate).__name__ == "RankAtLeastGate" and isinstance(gate, Gate)
    close(gate.admit(diag(gt_rank=[1, 3, 4, 9])), [0, 0, 1, 1])


def test_plugin_gate_in_grpo_module_config():
    import yaml
    from jsonargparse import ArgumentParser

    from adagrpo.lightning_modules.grpo import GRPOModule

    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(GRPOModule, "model")
    config = {"model": {
        "init_from": "does/not/matter.ckpt",
        "reward": {"class_path": "adagrpo.lightning_modules.OracleReward"},
        "balancer": {"class_path": "adagrpo.lightning_modules.GatedBalance", "init_args": {"normalize": "admitted"}},
        "gates": [
            {"class_path": CLASS_PATH, "init_args": {"min_rank": 2, "name": "mine"}},
            {"class_path": "adagrpo.callbacks.RewardDiscriminabilityGate", "init_args": {"threshold": 0.5}},
        ],
        "num_generations": 4,
    }}
    cfg = parser.parse_string(yaml.safe_dump(config))
    module = parser.instantiate_classes(cfg).model
    assert isinstance(module, GRPOModule)
    assert [type(g).__name__ for g in module.module_gates] == ["RankAtLeastGate", "RewardDiscriminabilityGate"]
    assert module.gates()[0].name == "mine"  # no trainer: the module's own gates
    a, each = combine_gates(module.gates(), diag(gt_rank=[1, 2, 2, 3], rm_auc=[0.9, 0.9, 0.1, NAN]))
    # mine [0, 1, 1, 1] AND discriminability (auc >= 0.5) [1, 1, 0, 0] = [0, 1, 0, 0]
    close(each["mine"], [0, 1, 1, 1])
    close(a, [0, 1, 0, 0])
    assert module.balancer.normalize == "admitted"


FAKE_MODULE = '''
import torch
from adagrpo.callbacks.gates import Gate


class MyGate(Gate):
    """Admit when the reward model's AUC is at least `min_auc` (an externally installed gate)."""

    def __init__(self, min_auc=0.5, name=None):
        super().__init__(name)
        self.min_auc = min_auc
        self.calls = 0

    def admit(self, diagnostics):
        return (diagnostics.rm_auc >= self.min_auc).float()

    def observe(self, diagnostics):
        self.calls += 1

    def state_dict(self):
        return {"calls": self.calls}

    def load_state_dict(self, state):
        self.calls = state["calls"]


class NotAGate:
    def __init__(self, **kwargs):
        pass
'''


@pytest.fixture
def fake_distribution(tmp_path, monkeypatch):
    """An installed distribution ``fakegate`` (a dist-info folder on sys.path) declaring two entry points in
    the ``adagrpo.gates`` group."""
    info = tmp_path / "fakegate-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakegate\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\nmy_gate = fakegate_mod:MyGate\nnot_a_gate = fakegate_mod:NotAGate\n")
    (tmp_path / "fakegate_mod.py").write_text(FAKE_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))  # also invalidates importlib's caches
    monkeypatch.delitem(sys.modules, "fakegate_mod", raising=False)
    yield tmp_path
    sys.modules.pop("fakegate_mod", None)


def test_entry_point_gate(fake_distribution):
    gates = available_gates()
    assert gates.get("my_gate") == "fakegate_mod:MyGate"
    g = PluginGate("my_gate", {"min_auc": 0.75})
    assert g.name == "my_gate" and type(g.inner).__name__ == "MyGate"
    close(g.admit(diag(rm_auc=[0.5, 0.75, 1.0, NAN])), [0, 1, 1, 0])
    g.observe(diag(rm_auc=[0.5]))
    g2 = PluginGate("my_gate", name="renamed")
    assert g2.name == "renamed"
    g2.load_state_dict(g.state_dict())
    assert g2.inner.calls == 1
    a, each = combine_gates([g, PolicyDifficultyGate()], diag(rm_auc=[0.9, 0.9], gt_rank=[1, 2]))
    close(a, [0, 1])
    assert set(each) == {"my_gate", "difficulty"}


def test_entry_point_gate_through_jsonargparse(fake_distribution):
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--gate", type=Gate)
    cfg = parser.parse_args(["--gate", '{"class_path": "adagrpo.callbacks.PluginGate", '
                                       '"init_args": {"entry_point": "my_gate", "init_args": {"min_auc": 0.6}}}'])
    gate = parser.instantiate_classes(cfg).gate
    assert isinstance(gate, PluginGate)
    close(gate.admit(diag(rm_auc=[0.59, 0.6])), [0, 1])


def test_unknown_entry_point_names_the_group(fake_distribution):
    with pytest.raises(ConfigError, match=r"adagrpo\.gates") as err:
        PluginGate("no_such_gate")
    assert "no_such_gate" in str(err.value) and "my_gate" in str(err.value)  # lists what is installed


def test_entry_point_that_is_not_a_gate(fake_distribution):
    with pytest.raises(ConfigError, match="not a Gate"):
        PluginGate("not_a_gate")
