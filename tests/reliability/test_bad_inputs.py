"""A matrix of bad inputs, replayed through the real `adagrpo` CLI as a new user would meet them (data, config,
checkpoint, plugin, numeric): each command fails with a message naming the file, key or value at fault, without
a traceback, and leaves `runs/` and `mlflow.db` exactly as they were (checksums before and after)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from reliability_helpers import tree_digest
from test_safe_loading import Payload

from adagrpo.cli import main

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
EXP = CONFIGS / "experiments"
TINY_SOURCE = ["--data.init_args.source.init_args.num_users", "150",
               "--data.init_args.source.init_args.num_items", "100",
               "--data.init_args.max_eval_samples", "40", "--data.init_args.max_test_samples", "40"]
SFT = ["--config", str(EXP / "sft.yaml"), "--model.init_args.policy", str(CONFIGS / "model" / "policy_tiny.yaml"),
       *TINY_SOURCE, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
       "--trainer.enable_progress_bar", "false"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A working directory with one recorded SFT fit (runs/ and mlflow.db) and some broken files."""
    root = tmp_path_factory.mktemp("bad_inputs")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.setenv("ADAGRPO_RUNS", str(root / "runs"))
        for key in ("ADAGRPO_EXPERIMENT", "ADAGRPO_RECORD_DIR", "ADAGRPO_DEBUG"):
            mp.setenv(key, "")
        try:
            main(["fit", *SFT])
        except SystemExit as exit_:
            assert not exit_.code, exit_.code
    sft = root / "runs" / "synthetic" / "sft" / "best.ckpt"
    assert sft.is_file()
    files = root / "files"
    files.mkdir()
    torch.save({"adagrpo": {"module": "RewardModelModule", "x": Payload(files / "payload_ran")}, "state_dict": {}},
               files / "crafted.ckpt")
    torch.save(Payload(files / "payload_ran"), files / "pickled_reward.pt")
    (files / "truncated.ckpt").write_bytes(sft.read_bytes()[:4096])
    (files / "empty.ckpt").write_bytes(b"")
    (files / "notes.txt").write_text("not a checkpoint\n")
    foreign = torch.load(sft, map_location="cpu", weights_only=True)
    foreign["adagrpo"]["num_items"] = 999
    torch.save(foreign, files / "foreign.ckpt")
    (files / "empty_data").mkdir()
    return root


def rl(*extra: str) -> list[str]:
    """A GRPO fit on the tiny world from the recorded SFT fit, with ``extra`` overrides."""
    return ["fit", "--config", str(EXP / "grpo.yaml"), *TINY_SOURCE, "--run_name", "grpo_bad",
            "--model.init_args.init_from", "runs/synthetic/sft/best.ckpt",
            "--model.init_args.reward.init_args.checkpoint", "runs/synthetic/sft/best.ckpt", *extra]


F = "files/"
CASES = {  # name → (argv, substrings the message must contain)
    # ------------------------------------------------------------------ config
    "unknown key": (["fit", *SFT, "--model.init_args.no_such_key", "1"], ["no_such_key"]),
    "mistyped value": (["fit", *SFT, "--trainer.max_epochs", "three"], ["max_epochs", "three"]),
    "missing config file": (["fit", "--config", "configs/experiments/nope.yaml"], ["nope.yaml"]),
    "beam width above catalogue": (["fit", *SFT, "--run_name", "b", "--model.init_args.beam_width", "500"],
                                   ["beam_width", "500", "100 items"]),
    "dedup true": (["fit", *SFT, "--run_name", "d", "--data.init_args.sids.init_args.dedup", "true"], ["dedup"]),
    "checkpoint best|last": (["test", *SFT, "--checkpoint", "middle"], ["--checkpoint", "middle"]),
    "test without a fit": (["test", *SFT, "--run_name", "never_fitted"], ["never_fitted", "no recorded fit"]),
    "rerun a recorded fit": (["fit", *SFT], ["synthetic/sft", "already has a recorded fit", "--force"]),
    "resume with nothing to resume": (["fit", *SFT, "--run_name", "r", "--resume"], ["cannot resume", "synthetic/r"]),
    # ------------------------------------------------------------------ data
    "data root without the dataset": (["prepare", "--config", str(CONFIGS / "data" / "beauty.yaml")],
                                      ["empty_data", "file not found"]),
    "unknown train_mode for SFT": (["fit", *SFT, "--run_name", "t",
                                    "--data", str(CONFIGS / "data" / "synthetic_rl.yaml"),
                                    *TINY_SOURCE], ["train_mode"]),
    # ------------------------------------------------------------------ checkpoints
    "ckpt_path crafted pickle": (["fit", *SFT, "--run_name", "c1", "--ckpt_path", F + "crafted.ckpt"],
                                 ["crafted.ckpt", "refused"]),
    "ckpt_path truncated": (["fit", *SFT, "--run_name", "c2", "--ckpt_path", F + "truncated.ckpt"],
                            ["truncated.ckpt", "not a readable checkpoint"]),
    "ckpt_path empty": (["fit", *SFT, "--run_name", "c3", "--ckpt_path", F + "empty.ckpt"], ["empty.ckpt", "empty"]),
    "ckpt_path text file": (["fit", *SFT, "--run_name", "c4", "--ckpt_path", F + "notes.txt"], ["notes.txt"]),
    "ckpt_path directory": (["fit", *SFT, "--run_name", "c5", "--ckpt_path", "files"], ["files", "directory"]),
    "ckpt_path other data": (["fit", *SFT, "--run_name", "c6", "--ckpt_path", F + "foreign.ckpt"],
                             ["foreign.ckpt", "num_items", "999"]),
    "test ckpt_path crafted": (["test", *SFT, "--ckpt_path", F + "crafted.ckpt"], ["crafted.ckpt", "refused"]),
    "init_from missing": (rl("--model.init_args.init_from", F + "none.ckpt"), ["none.ckpt", "init_from", "not found"]),
    "init_from crafted": (rl("--model.init_args.init_from", F + "crafted.ckpt"), ["crafted.ckpt", "refused"]),
    "init_from truncated": (rl("--model.init_args.init_from", F + "truncated.ckpt"), ["truncated.ckpt", "init_from"]),
    "init_from other data": (rl("--model.init_args.init_from", F + "foreign.ckpt"), ["foreign.ckpt", "999"]),
    "reward missing": (rl("--model.init_args.reward.init_args.checkpoint", F + "none.ckpt"), ["none.ckpt", "reward"]),
    "reward crafted": (rl("--model.init_args.reward.init_args.checkpoint", F + "crafted.ckpt"),
                       ["crafted.ckpt", "refused"]),
    "reward is an SFT checkpoint": (rl(), ["best.ckpt", "not a reward-model checkpoint"]),
    "reward truncated": (rl("--model.init_args.reward.init_args.checkpoint", F + "truncated.ckpt"),
                         ["truncated.ckpt", "reward"]),
    "export crafted": (["export", "--checkpoint", F + "crafted.ckpt", "--out", "exported"],
                       ["crafted.ckpt", "refused"]),
    "export truncated": (["export", "--checkpoint", F + "truncated.ckpt", "--out", "exported"], ["truncated.ckpt"]),
    "export missing": (["export", "--checkpoint", F + "none.ckpt", "--out", "exported"], ["none.ckpt", "not found"]),
    # ------------------------------------------------------------------ plugins
    "unknown balancer class": (rl("--model.init_args.balancer", "adagrpo.lightning_modules.NoSuchBalancer"),
                               ["NoSuchBalancer"]),
    "pickled reward module, untrusted": (rl("--model.init_args.reward", "adagrpo.lightning_modules.TorchReward",
                                            "--model.init_args.reward.init_args.path", F + "pickled_reward.pt"),
                                         ["pickled_reward.pt", "trust_pickle"]),
    # ------------------------------------------------------------------ numeric
    "negative rl_weight": (rl("--model.init_args.balancer.init_args.rl_weight", "-1"), ["rl", "-1"]),
    "num_generations 1": (rl("--model.init_args.num_generations", "1"), ["num_generations", "1"]),
    "epsilon_low 1.5": (rl("--model.init_args.epsilon_low", "1.5"), ["epsilon_low", "1.5"]),
    "negative beta": (rl("--model.init_args.beta", "-0.1"), ["beta", "-0.1"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_named_and_changes_nothing(world, case, capsys, monkeypatch):
    argv, expected = CASES[case]
    monkeypatch.chdir(world)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{world / 'mlflow.db'}")
    monkeypatch.setenv("ADAGRPO_RUNS", str(world / "runs"))
    monkeypatch.setenv("ADAGRPO_DATA_ROOT", str(world / "files" / "empty_data"))
    for key in ("ADAGRPO_EXPERIMENT", "ADAGRPO_RECORD_DIR", "ADAGRPO_DEBUG"):
        monkeypatch.setenv(key, "")
    before = tree_digest(world / "runs", world / "mlflow.db")
    try:
        rc = main(argv)
    except SystemExit as exit_:
        rc = exit_.code
    err = capsys.readouterr().err
    assert rc not in (0, None), f"{case}: succeeded\n{err[-2000:]}"
    assert rc == 2 or (isinstance(rc, str) and rc.startswith("adagrpo")), (case, rc, err[-2000:])
    message = err if rc == 2 else rc
    missing = [s for s in expected if s not in message]
    assert not missing, f"{case}: message lacks {missing}:\n{message[-3000:]}"
    assert "Traceback" not in message
    assert tree_digest(world / "runs", world / "mlflow.db") == before, f"{case}: runs/ or mlflow.db changed"
    assert not (world / "files" / "payload_ran").exists(), f"{case}: a pickled payload ran"
    assert not (world / "exported").exists()
