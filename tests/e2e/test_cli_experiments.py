"""Every shipped experiment config, end to end through the real `adagrpo` CLI on a tiny setup.

A session fixture runs, in a temporary working directory with its own MLflow store and run records:
SFT → reward model → each GRPO/AdaGRPO variant (`fit`, `test`, `test --checkpoint last`), all in-process
through `adagrpo.cli.main` (a subprocess per command would re-import Lightning every time). The tests then
check each run's outcome: exit code, the checkpoint record, the MLflow metrics, and `adagrpo compare`.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from adagrpo.cli import main

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
EXPERIMENT = "synthetic"

# Every shipped RL experiment config: a new file under configs/experiments/ is covered without editing this list.
NOT_RL = ("sft", "reward", "beauty_sft")
RL_CONFIGS = sorted(p.stem for p in (CONFIGS / "experiments").glob("*.yaml") if p.stem not in NOT_RL)
ISSUE_CONFIGS = [  # the ones the GRPO issue asks for; the glob above must keep finding them
    "grpo", "grpo_fixed_0.1", "grpo_fixed_0.3", "grpo_fixed_1.0", "pure_grpo",
    "adagrpo", "adagrpo_difficulty_only", "adagrpo_discriminability_only",
]
GATES = {  # config → the gates it must log an open rate for
    "adagrpo": ["difficulty", "discriminability"],
    "adagrpo_admitted": ["difficulty", "discriminability"],
    "adagrpo_inject_gt": ["difficulty", "discriminability"],
    "adagrpo_difficulty_only": ["difficulty"],
    "adagrpo_discriminability_only": ["discriminability"],
    "adagrpo_relative": ["difficulty", "discriminability"],
    "adagrpo_band": ["difficulty", "discriminability"],
    "adagrpo_spread": ["difficulty", "discriminability"],
    "adagrpo_heldout": ["difficulty", "discriminability"],
    "adagrpo_oracle": ["oracle"],
}

TINY_SOURCE = ["--data.init_args.source.init_args.num_users", "150",
               "--data.init_args.source.init_args.num_items", "100"]
EVAL_CAPS = ["--data.init_args.max_eval_samples", "40", "--data.init_args.max_test_samples", "40"]
# The shipped trainers log every 5-20 steps; these runs take 2, so they log every step.
LOG_EVERY_STEP = ["--trainer.log_every_n_steps", "1"]
SFT_ARGS = ["--model.init_args.policy", str(CONFIGS / "model" / "policy_tiny.yaml"), *TINY_SOURCE,
            "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", *EVAL_CAPS, *LOG_EVERY_STEP]
REWARD_ARGS = [*TINY_SOURCE, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
               "--trainer.limit_val_batches", "2", "--data.init_args.max_eval_samples", "200",
               "--data.init_args.max_test_samples", "200", *LOG_EVERY_STEP]
RL_ARGS = [*TINY_SOURCE, *EVAL_CAPS, "--trainer.max_steps", "2", "--trainer.val_check_interval", "2",
           "--model.init_args.num_generations", "4", "--data.init_args.batch_size", "4", *LOG_EVERY_STEP]

TRAIN_METRICS = [
    "loss/total", "loss/nll", "loss/grpo", "reward/mean", "reward/std", "reward/gt", "adv/zero_std_frac", "kl",
    "clip_frac", "entropy", "gate/open_rate", "rollout/invalid_rate", "rollout/gt_in_group_rate",
    "rollout/unique_rate", "perf/rollout_s", "perf/step_s", "perf/samples_per_s",
]


@dataclass
class Outcome:
    rc: int
    error: str = ""
    seconds: float = 0.0

    def __str__(self) -> str:
        return f"exit {self.rc} after {self.seconds:.1f} s\n{self.error}"


@dataclass
class World:
    root: Path
    tracking_uri: str
    runs: Path
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)


def run_cli(argv: list[str]) -> Outcome:
    """``adagrpo <argv>`` in-process: its exit code, or 1 with the traceback when it raises."""
    start = time.perf_counter()
    try:
        rc = main(argv)
        err = ""
    except SystemExit as exit_:
        rc = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        err = "" if rc == 0 else f"SystemExit({exit_.code!r})"
    except Exception:  # noqa: BLE001 — recorded, asserted by the test of that run
        rc, err = 1, traceback.format_exc()
    return Outcome(int(rc or 0), err, time.perf_counter() - start)


@pytest.fixture(scope="session")
def cli_world(tmp_path_factory) -> World:
    """Runs every stage once; each run's outcome is recorded, not raised, so one broken config fails only its
    own tests."""
    root = tmp_path_factory.mktemp("cli_experiments")
    runs = root / "runs"
    world = World(root=root, tracking_uri=f"sqlite:///{root / 'mlflow.db'}", runs=runs)
    world.env = {
        "MLFLOW_TRACKING_URI": world.tracking_uri,
        "ADAGRPO_RUNS": str(runs),
        "ADAGRPO_SFT_CKPT": str(runs / EXPERIMENT / "sft" / "best.ckpt"),
        "ADAGRPO_REWARD_CKPT": str(runs / EXPERIMENT / "reward" / "best.ckpt"),
    }
    cwd = os.getcwd()
    # The CLI also sets ADAGRPO_EXPERIMENT / ADAGRPO_RECORD_DIR; restore them all before other tests run.
    with pytest.MonkeyPatch.context() as mp:
        for key, value in world.env.items():
            mp.setenv(key, value)
        mp.setenv("ADAGRPO_EXPERIMENT", "")
        mp.setenv("ADAGRPO_RECORD_DIR", "")
        mp.chdir(root)
        try:
            world.outcomes["sft"] = run_cli(["fit", "--config", str(CONFIGS / "experiments" / "sft.yaml"), *SFT_ARGS])
            world.outcomes["sft:test"] = run_cli(
                ["test", "--config", str(CONFIGS / "experiments" / "sft.yaml"), *SFT_ARGS])
            world.outcomes["reward"] = run_cli(
                ["fit", "--config", str(CONFIGS / "experiments" / "reward.yaml"), *REWARD_ARGS])
            for name in RL_CONFIGS:
                config = str(CONFIGS / "experiments" / f"{name}.yaml")
                world.outcomes[name] = run_cli(["fit", "--config", config, *RL_ARGS])
                if world.outcomes[name].rc == 0:
                    world.outcomes[f"{name}:test"] = run_cli(["test", "--config", config, *RL_ARGS])
                    world.outcomes[f"{name}:test_last"] = run_cli(
                        ["test", "--config", config, *RL_ARGS, "--checkpoint", "last"])
        finally:
            os.chdir(cwd)
    timings = {k: round(o.seconds, 1) for k, o in world.outcomes.items()}
    print(f"\nCLI stage timings (s): {timings}")
    return world


def mlflow_run(world: World, run_name: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=world.tracking_uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    assert exp is not None, f"no MLflow experiment {EXPERIMENT!r}"
    found = client.search_runs([exp.experiment_id], filter_string=f"tags.`mlflow.runName` = '{run_name}'")
    assert len(found) == 1, f"{len(found)} MLflow runs named {run_name!r}"
    return client, found[0]


def check_record(world: World, run_name: str) -> dict:
    record_path = world.runs / EXPERIMENT / run_name / "latest.json"
    assert record_path.is_file(), f"no {record_path}"
    record = json.loads(record_path.read_text())
    for key in ("best", "last"):
        assert record.get(key) and Path(record[key]).is_file(), (key, record)
        assert Path(record[f"{key}_copy"]) == (world.runs / EXPERIMENT / run_name / f"{key}.ckpt").resolve()
        assert Path(record[f"{key}_copy"]).is_file()
    return record


# ------------------------------------------------------------------------------------------ upstream stages
def test_sft_stage(cli_world):
    assert cli_world.outcomes["sft"].rc == 0, cli_world.outcomes["sft"]
    record = check_record(cli_world, "sft")
    assert record["monitor"] == "val/hr_10"
    assert cli_world.outcomes["sft:test"].rc == 0, cli_world.outcomes["sft:test"]
    client, run = mlflow_run(cli_world, "sft")
    assert run.info.run_id == record["mlflow_run_id"]
    for key in ("loss/nll", "val/hr_10", "test/hr_10"):
        assert key in run.data.metrics, (key, sorted(run.data.metrics))
    assert run.data.tags.get("adagrpo.module") == "SFTModule"


def test_reward_stage(cli_world):
    assert cli_world.outcomes["reward"].rc == 0, cli_world.outcomes["reward"]
    record = check_record(cli_world, "reward")
    assert record["monitor"] == "val/auc"
    _, run = mlflow_run(cli_world, "reward")
    assert "val/auc" in run.data.metrics and "loss/bce" in run.data.metrics


# ------------------------------------------------------------------------------------------ every RL config
def test_every_issue_config_is_shipped():
    assert not set(ISSUE_CONFIGS) - set(RL_CONFIGS), sorted(set(ISSUE_CONFIGS) - set(RL_CONFIGS))
    assert set(GATES) <= set(RL_CONFIGS), sorted(set(GATES) - set(RL_CONFIGS))


@pytest.mark.parametrize("name", RL_CONFIGS)
def test_rl_config_end_to_end(cli_world, name):
    fit = cli_world.outcomes[name]
    assert fit.rc == 0, fit
    record = check_record(cli_world, name)
    assert record["global_step"] == 2 and record["monitor"] == "val/hr_10"
    for stage in ("test", "test_last"):
        outcome = cli_world.outcomes.get(f"{name}:{stage}")
        assert outcome is not None and outcome.rc == 0, outcome
    client, run = mlflow_run(cli_world, name)
    assert run.info.run_id == record["mlflow_run_id"]  # fit, test and test --checkpoint last share one run
    metrics = run.data.metrics
    expected = TRAIN_METRICS + ["val/hr_10"] + [f"gate/{g}/open_rate" for g in GATES.get(name, [])]
    missing = [m for m in expected if m not in metrics]
    assert not missing, f"{name}: missing {missing}; have {sorted(metrics)}"
    for m in expected:
        assert math.isfinite(metrics[m]), (m, metrics[m])
    assert metrics["rollout/invalid_rate"] == 0.0  # constrained rollouts
    # The variants do what their names say.
    label = run.data.tags.get("adagrpo.label", "")
    if name == "continue_sft":
        assert metrics["gate/rl_weight"] == 0.0 and label.startswith("fixed(nll=1,rl=0)"), (metrics, label)
    if name == "adagrpo_admitted":
        assert label.startswith("gated(admitted)"), label
    if name == "adagrpo":
        assert label.startswith("gated(batch)"), label
    if name == "adagrpo_inject_gt":
        assert metrics["rollout/gt_in_group_rate"] == 1.0
    for prefix in ("test", "test_last"):
        assert f"{prefix}/hr_10" in metrics, (prefix, sorted(metrics))
        assert 0.0 <= metrics[f"{prefix}/hr_10"] <= 1.0
        assert metrics.get(f"{prefix}/hallucination") is not None
    # The checkpoints were trained from the tiny SFT checkpoint the environment named.
    from adagrpo.lightning_modules.checkpoint_io import load_checkpoint

    ckpt = load_checkpoint(record["last_copy"])
    assert Path(ckpt["adagrpo"]["init_from"]) == Path(cli_world.env["ADAGRPO_SFT_CKPT"])
    assert run.data.tags.get("adagrpo.module") == "GRPOModule"
    if name in GATES:
        assert not [g for g in ("difficulty", "discriminability") if g not in GATES[name]
                    and f"gate/{g}/open_rate" in metrics], "a gate that is not configured logged an open rate"
    config_artifacts = [a.path for a in client.list_artifacts(run.info.run_id)]
    assert "config_fit.yaml" in config_artifacts and "config_test.yaml" in config_artifacts, config_artifacts


# ------------------------------------------------------------------------------------------ compare
def compare(world: World, monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.chdir(world.root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", world.tracking_uri)
    monkeypatch.setenv("ADAGRPO_RUNS", str(world.runs))
    outcome = run_cli(["compare", *args])
    captured = capsys.readouterr()
    return outcome.rc, captured.out, captured.err + outcome.error


def test_compare_table_csv_and_plot(cli_world, monkeypatch, capsys):
    rc, out, err = compare(cli_world, monkeypatch, capsys, "--experiment", EXPERIMENT)
    assert rc == 0, err
    table_rows = {line.split()[0] for line in out.splitlines() if line.strip()}
    for name in ["sft", *RL_CONFIGS]:
        assert name in table_rows, f"{name} not in the table:\n{out}"
    assert "reward" not in table_rows  # the reward model is not a policy run
    csv_path = Path(re.search(r"^csv:\s+(\S+)", out, re.M).group(1))
    png_path = Path(re.search(r"^plot:\s+(\S+)", out, re.M).group(1))
    if not csv_path.is_absolute():
        csv_path, png_path = cli_world.root / csv_path, cli_world.root / png_path
    assert csv_path.name == "compare.csv" and csv_path.is_file()
    assert png_path.name == "frontier.png" and png_path.is_file() and png_path.stat().st_size > 1000
    rows = csv_path.read_text().splitlines()
    header = rows[0].split(",")
    assert header[:3] == ["variant", "label", "runs"] and "test/hr_10" in header and "test_last/hr_10" in header
    assert {r.split(",")[0] for r in rows[1:]} == {"sft", *RL_CONFIGS}


def test_compare_unknown_experiment(cli_world, monkeypatch, capsys):
    rc, out, err = compare(cli_world, monkeypatch, capsys, "--experiment", "nope", "--no-mlflow")
    assert rc == 2  # the project's own error: one line, exit code 2
    assert "no MLflow experiment named 'nope'" in err, err


def test_compare_unknown_metric(cli_world, monkeypatch, capsys):
    rc, out, err = compare(cli_world, monkeypatch, capsys, "--experiment", EXPERIMENT, "--metric", "not/a/metric",
                           "--no-mlflow")
    assert rc == 2
    assert "not/a/metric" in err, err


def test_analyze_strata_table_and_heatmap(cli_world, monkeypatch, capsys):
    monkeypatch.chdir(cli_world.root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", cli_world.tracking_uri)
    runs = cli_world.runs / EXPERIMENT
    out_dir = cli_world.root / "strata"
    data_cfg = tmp_data_config(cli_world)
    outcome = run_cli(["analyze", "--data", str(data_cfg), "--sft", str(runs / "sft" / "best.ckpt"),
                       "--reward", str(runs / "reward" / "best.ckpt"),
                       "--policy", f"adagrpo={runs / 'adagrpo' / 'best.ckpt'}", "--group", "4", "--max-users", "40",
                       "--train-prompts", "2", "--post-hoc", "--out", str(out_dir), "--experiment", EXPERIMENT])
    out = capsys.readouterr().out
    assert outcome.rc == 0, outcome
    full = json.loads((out_dir / "strata_full.json").read_text())
    keys = [f["key"] for f in full["families"]]
    assert keys == ["gate_share", "gate_cell_last", "history_popularity", "history_length", "truth_concordance",
                    "post_hoc_cell"]
    assert [f["pre_outcome"] for f in full["families"]] == [True] * 5 + [False]
    for key in keys:  # every user in exactly one stratum (or 'undefined') of every family
        assert sum(r["users"] for r in full["rows"] if r["family"] == key) == 40, key
    assert full["rows"][-1]["stratum"] == "all" and full["rows"][-1]["users"] == 40
    flat = json.loads((out_dir / "strata.json").read_text())  # what benchmarks/strata_paired.py reads
    assert all(set(r) == {"stratum", "users", "sft", "adagrpo"} for r in flat)
    assert all(0.0 <= r["sft"] <= 1.0 for r in flat if r["users"])
    assert any("post-hoc (defined by the test item)" in r["stratum"] for r in flat)
    assert (out_dir / "strata.png").stat().st_size > 1000
    assert "adagrpo − sft" in out and "[pre-outcome]" in out and "true HR@10" in out


def test_analyze_refuses_a_checkpoint_from_other_data(cli_world, monkeypatch, capsys):
    monkeypatch.chdir(cli_world.root)
    other = cli_world.root / "other_data.yaml"
    other.write_text(tmp_data_config(cli_world).read_text().replace("seed: 0", "seed: 7"))
    runs = cli_world.runs / EXPERIMENT
    outcome = run_cli(["analyze", "--data", str(other), "--sft", str(runs / "sft" / "best.ckpt"),
                       "--reward", str(runs / "reward" / "best.ckpt"), "--max-users", "10"])
    err = capsys.readouterr().err
    assert outcome.rc == 2 and "different semantic IDs" in err, (outcome, err)


def tmp_data_config(world: World) -> Path:
    """The synthetic RL data config at the tiny size the session's checkpoints were trained on."""
    path = world.root / "tiny_rl.yaml"
    if not path.exists():
        path.write_text(
            "class_path: adagrpo.datamodules.SeqRecDataModule\n"
            "init_args:\n"
            "  source:\n"
            "    class_path: adagrpo.datamodules.SyntheticSource\n"
            "    init_args: {num_users: 150, num_items: 100, seed: 0}\n"
            f"  sids: {CONFIGS / 'data' / 'sids' / 'text_small.yaml'}\n"
            "  train_mode: prompts\n"
        )
    return path


def test_ablate_print_lists_ordinary_commands(capsys):
    rc = main(["ablate", "--config", str(CONFIGS / "experiments" / "adagrpo.yaml"), "--config",
               str(CONFIGS / "experiments" / "grpo_fixed_0.1.yaml"), "--seeds", "0", "1", "--experiment", "grid",
               "--print", "--trainer.max_steps", "7"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert rc == 0
    fits = [ln for ln in lines if " fit " in f" {ln} "]
    assert len(fits) == 4 and len([ln for ln in lines if "--checkpoint last" in ln]) == 4
    assert any("--run_name adagrpo-s1" in ln and "--seed_everything 1" in ln and "--data.init_args.seed 1" in ln
               and "--trainer.max_steps 7" in ln for ln in fits)
    assert lines[-2].endswith("compare --experiment grid")  # then the line that ends the MLflow parent run
    assert "set_terminated" in lines[-1] and all("ADAGRPO_PARENT_RUN_ID=" in ln for ln in fits)


def test_export_cli_writes_a_pretrained_folder(cli_world, tmp_path, capsys):
    ckpt = cli_world.runs / EXPERIMENT / "sft" / "best.ckpt"
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "config.json").exists() and (tmp_path / "hf" / "tokenizer.json").exists()
    with pytest.raises(SystemExit) as exit_:
        main(["export", "--checkpoint", str(tmp_path / "missing.ckpt"), "--out", str(tmp_path / "x")])
    assert exit_.value.code == 2 and "checkpoint not found" in capsys.readouterr().err
