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


def test_repeat_plan_adds_only_overrides_to_the_lambda1_runs_and_goes_seed_by_seed(tmp_path):
    stages = nm.plan_repeat([0, 1], steps=10, test_users=50, cells=["uniform-large", "trained"], runs=tmp_path)
    by_name = {st.name: st for st in stages}
    names = [st.name for st in stages]
    assert len(names) == len(set(names)) and len({st.key() for st in stages}) == len(stages)
    # the SFT and reward stages are the map's own (same keys: reused when finished)
    mapped = {st.name: st.key() for st in nm.plan([0, 1], 10, 50, ["uniform-large", "trained"], tmp_path)}
    for st in stages:
        if st.kind in ("sft", "reward"):
            assert mapped[st.name] == st.key()
    # seed 0 complete (SFT, reproduction, both cells with their reward model) before seed 1 starts; optional arms last
    assert names[:7] == ["sft-biased-s0", "repro-continue_sft-s0", "uniform-large-lambda1_rp0-s0",
                         "uniform-large-lambda1_noseen-s0", "reward-biased-s0", "trained-lambda1_rp0-s0",
                         "trained-lambda1_noseen-s0"]
    assert names.index("sft-biased-s1") == 7 and "repro-continue_sft-s1" not in names
    assert all(n.startswith(("uniform-large-adagrpo_rp0", "trained-adagrpo_rp0")) for n in names[-4:])
    assert len(nm.plan_repeat([0], 10, 50, ["trained"], tmp_path, optional=False)) == 5  # SFT, repro, reward, 2 arms
    # each new arm is the map's λ = 1 (or AdaGRPO) run of the same seed and cell plus exactly its override
    for cell in ("uniform-large", "trained"):
        for arm, base_arm in (("lambda1_rp0", "grpo_fixed_1.0"), ("lambda1_noseen", "grpo_fixed_1.0"),
                              ("adagrpo_rp0", "adagrpo")):
            new, old = by_name[f"{cell}-{arm}-s1"], nm.rl_stage(1, cell, base_arm, 10, 50, tmp_path)
            rename = lambda args: [f"{cell}-{arm}-s1" if a == old.name else a for a in args]  # noqa: E731,B023
            override = nm.VARIANTS[arm][1]
            i = new.fit.index(override[0])
            assert new.fit[:i] + new.fit[i + 2:] == rename(old.fit)
            j = new.test.index(override[0])
            assert new.test[:j] + new.test[j + 2:] == rename(old.test)
            assert new.info == {**old.info, "arm": arm} and new.depends == old.depends
    assert by_name["trained-lambda1_noseen-s0"].fit[
        by_name["trained-lambda1_noseen-s0"].fit.index("--model.init_args.exclude_seen") + 1] == "true"
    # the rerun control differs from the committed control only by its name
    repro, control = by_name["repro-continue_sft-s0"], nm.rl_stage(0, "clean", "continue_sft", 10, 50, tmp_path)
    assert [a if a != repro.name else control.name for a in repro.fit] == control.fit
    assert repro.info["arm"] == "repro-continue_sft" and repro.info["cell"] == "repro"
    # the new arms are not fixed mixtures: the map's "best fixed mixture" of a cell is unchanged by them
    assert not any(a.startswith("grpo_fixed") for a in nm.VARIANTS)


def test_repeat_verdict_follows_the_preregistered_reading():
    l1 = (0.04, 0.03, 0.05)
    assert nm.repeat_verdict((0.01, 0.0, 0.02), l1, (-0.03, -0.04, -0.02), 3) == "keeps little of λ = 1's gain"
    assert nm.repeat_verdict((0.035, 0.02, 0.05), l1, (-0.005, -0.02, +0.01), 3) == "keeps the gain"
    assert nm.repeat_verdict((0.06, 0.05, 0.07), l1, (0.02, 0.01, 0.03), 3) == "keeps the gain (above λ = 1)"
    assert nm.repeat_verdict((0.015, -0.01, 0.04), l1, (-0.025, -0.06, +0.01), 3) == "partial"
    assert nm.repeat_verdict((0.0, 0.0, 0.0), l1, (-0.04, -0.05, -0.03), 2).startswith("undecided")


def test_repeat_report_pairs_with_the_control_and_lambda1_and_checks_the_rerun_control():
    m = "test_last/true/utility_10"
    row = lambda stage, cell, arm, s, v: {"stage": stage, "cell": cell, "arm": arm, "seed": s,  # noqa: E731
                                         "metrics": {m: v}}
    rows = [row(f"continue_sft-s{s}", "-", "continue_sft", s, 0.44 + 0.01 * s) for s in range(3)]
    rows += [row(f"c-grpo_fixed_1.0-s{s}", "c", "grpo_fixed_1.0", s, 0.48 + 0.01 * s + 0.001 * s * s)
             for s in range(3)]
    rows += [row(f"c-lambda1_rp0-s{s}", "c", "lambda1_rp0", s, 0.44 + 0.01 * s + 0.001 * s) for s in range(3)]
    rows.append(row("repro-continue_sft-s0", "repro", "repro-continue_sft", 0, 0.44))
    text = nm.repeat_report(rows, ["c"], [0, 1, 2])
    assert "repro-continue_sft-s0 vs continue_sft-s0: 1 metrics, largest |difference| 0.00e+00" in text
    assert "REPRODUCES" in text and "pairing with the committed" in text
    # λ = 1 − control: 0.04, 0.041, 0.044; rp0 − control: 0, 0.001, 0.002; rp0 − λ = 1: −0.04, −0.04, −0.042
    assert "| c | lambda1_rp0 | 3 | 0.4510 | +0.0010 [" in text
    mean, lo, hi = nm.t_interval([-0.04, -0.04, -0.042])
    assert f"{mean:+.4f} [{lo:+.4f}, {hi:+.4f}]" in text
    assert "- c / lambda1_rp0 (seeds [0, 1, 2]): keeps little of λ = 1's gain" in text
    rows[-1]["metrics"][m] = 0.45
    assert "DOES NOT REPRODUCE" in nm.repeat_report(rows, ["c"], [0, 1, 2])


def test_repeat_plan_with_reruns_reruns_the_control_and_lambda1_of_every_seed_before_the_new_arms(tmp_path):
    plain = {st.name: st.key() for st in nm.plan_repeat([0, 1], 10, 50, ["uniform-large", "trained"], tmp_path)}
    stages = nm.plan_repeat([0, 1], 10, 50, ["uniform-large", "trained"], tmp_path, optional=False, rerun=True)
    names = [st.name for st in stages]
    assert all(plain[st.name] == st.key() for st in stages if st.name in plain)  # finished stages stay reusable
    for s in (0, 1):
        assert f"repro-continue_sft-s{s}" in names
        for cell in ("uniform-large", "trained"):
            rerun = stages[names.index(f"{cell}-lambda1_rerun-s{s}")]
            assert names.index(rerun.name) < names.index(f"{cell}-lambda1_rp0-s{s}")
            old = nm.rl_stage(s, cell, "grpo_fixed_1.0", 10, 50, tmp_path)
            assert [old.name if a == rerun.name else a for a in rerun.fit] == old.fit
    assert names.index("trained-lambda1_noseen-s0") < names.index("sft-biased-s1")


def test_repeat_report_pairs_with_the_reruns_when_the_control_does_not_reproduce():
    m = "test_last/true/utility_10"
    row = lambda stage, cell, arm, s, v: {"stage": stage, "cell": cell, "arm": arm, "seed": s,  # noqa: E731
                                         "metrics": {m: v}}
    rows = [row(f"continue_sft-s{s}", "-", "continue_sft", s, 0.40) for s in range(3)]
    rows += [row(f"c-grpo_fixed_1.0-s{s}", "c", "grpo_fixed_1.0", s, 0.50) for s in range(3)]
    rows += [row(f"repro-continue_sft-s{s}", "repro", "repro-continue_sft", s, 0.45 + 0.001 * s) for s in range(3)]
    rows += [row(f"c-lambda1_rerun-s{s}", "c", "lambda1_rerun", s, 0.47 + 0.002 * s) for s in range(3)]
    rows += [row(f"c-lambda1_rp0-s{s}", "c", "lambda1_rp0", s, 0.46 + 0.001 * s * s) for s in range(3)]
    rows += [row(f"c-adagrpo-s{s}", "c", "adagrpo", s, 0.42) for s in range(3)]
    text = nm.repeat_report(rows, ["c"], [0, 1, 2])
    assert text.count("DOES NOT REPRODUCE") == 6  # three controls and three λ = 1 reruns
    assert "pairing with the reruns control and λ = 1" in text
    mean, lo, hi = nm.t_interval([0.01, 0.01, 0.012])  # rp0 − rerun control
    assert f"| c | lambda1_rp0 | 3 | {(0.46 * 3 + 0.005) / 3:.4f} | {mean:+.4f} [{lo:+.4f}, {hi:+.4f}] |" in text
    assert "| c | adagrpo |" not in text  # the map's AdaGRPO started from the committed SFT: not paired with reruns
    assert "pairing with the committed" in nm.repeat_report(rows, ["c"], [0, 1, 2], pair_with="committed")
