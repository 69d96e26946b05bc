"""The noise-map runner's plan and its paired statistics (hand-computed), without running any stage."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks import noise_map as nm


def test_plan_varies_sft_and_reward_seeds_and_orders_main_cells_first(tmp_path):
    stages = nm.plan([0, 1], steps=10, test_users=50, cells=["clean", "segment-moderate", "tail-moderate"],
                     runs=tmp_path)
    names = [s.name for s in stages]
    assert names[:2] == ["sft-biased-s0", "sft-biased-s1"]
    # every RL stage of seed s starts from seed s's SFT and draws reward noise with seed s
    for st in stages[2:]:
        s = st.info["seed"]
        assert st.depends[0] == f"sft-biased-s{s}"
        assert str(tmp_path / "noise-map" / f"sft-biased-s{s}" / "best.ckpt") in st.fit
        reward = json.loads(st.fit[st.fit.index("--model.init_args.reward") + 1])
        assert reward["init_args"]["seed"] == s
        assert st.test[:1] == ["test"] and st.test[-2:] == ["--checkpoint", "last"]
    extra = [i for i, n in enumerate(names) if n.startswith("tail-")]
    main = [i for i, n in enumerate(names) if n.startswith(("clean-", "segment-"))]
    assert min(extra) > max(main)  # the extra cell runs after every seed's main cells
    assert sum(n.startswith("continue_sft") for n in names) == 2  # one control per seed, shared by the cells
    assert len({s.key() for s in stages}) == len(stages)


def test_t_interval_hand_computed():
    mean, lo, hi = nm.t_interval([0.01, 0.02, 0.03])
    half = 4.302652729911275 * 0.01 / math.sqrt(3)  # t(0.975, 2) · sd / sqrt(n)
    assert mean == pytest.approx(0.02) and lo == pytest.approx(0.02 - half) and hi == pytest.approx(0.02 + half)
    assert math.isnan(nm.t_interval([0.5])[1])


def test_paired_table_pairs_by_seed_against_control_and_the_best_fixed_mixture():
    m = "test_last/true/hr_10"
    rows = [{"arm": "continue_sft", "cell": "-", "seed": s, "metrics": {m: v}} for s, v in ((0, 0.50), (1, 0.60))]
    rows += [{"arm": "grpo_fixed_0.1", "cell": "c", "seed": s, "metrics": {m: v}} for s, v in ((0, 0.52), (1, 0.61))]
    rows += [{"arm": "grpo_fixed_1.0", "cell": "c", "seed": s, "metrics": {m: v}} for s, v in ((0, 0.55), (1, 0.62))]
    rows += [{"arm": "adagrpo", "cell": "c", "seed": s, "metrics": {m: v}} for s, v in ((0, 0.56), (1, 0.65))]
    table = nm.paired_table(rows, m)
    ada = table[("c", "adagrpo")]
    assert ada["best_fixed"] == "grpo_fixed_1.0"
    assert ada["vs_control"][0] == pytest.approx((0.06 + 0.05) / 2)
    assert ada["vs_best_fixed"][0] == pytest.approx((0.01 + 0.03) / 2)
    assert "vs_best_fixed" not in table[("c", "grpo_fixed_1.0")]  # not compared with itself


def test_results_file_latest_line_of_a_stage_wins(tmp_path):
    path = Path(tmp_path) / "results.jsonl"
    path.write_text(json.dumps({"stage": "a", "v": 1}) + "\n" + json.dumps({"stage": "a", "v": 2}) + "\n")
    assert nm.load_results(path) == [{"stage": "a", "v": 2}]


def test_a_new_checkout_resumes_from_the_committed_results(tmp_path):
    runs = tmp_path / "runs"
    stages = nm.plan([0], steps=10, test_users=50, cells=["clean"], runs=runs)
    sft, rl = stages[0], stages[1]
    committed = tmp_path / "results.jsonl"
    committed.write_text("\n".join(json.dumps({"stage": st.name, "key": st.key(), "arm": "x"}) for st in (sft, rl)))
    folder = lambda st: runs / "noise-map" / st.name  # noqa: E731
    assert nm._done(folder(rl), rl, committed) is not None  # an RL result needs nothing on disk
    assert nm._done(folder(sft), sft, committed) is None  # an SFT stage needs its checkpoint for what follows
    folder(sft).mkdir(parents=True)
    (folder(sft) / "best.ckpt").write_bytes(b"x")
    assert nm._done(folder(sft), sft, committed) is not None
    other = nm.plan([0], steps=11, test_users=50, cells=["clean"], runs=runs)[1]  # other arguments, other key
    assert nm._done(folder(other), other, committed) is None
