"""Runs through the real `adagrpo` CLI on a tiny SFT: a rerun never silently replaces a recorded fit (refused with
exit code 2 and nothing changed; --force replaces), a fit that fails on the project's own error exits 2 with one
line and tags its FAILED MLflow run, and a fit killed with SIGKILL after its second periodic checkpoint resumes
with the documented command to the uninterrupted run's final numbers, in one MLflow run (SFT, and AdaGRPO from the
SFT checkpoint)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from reliability_helpers import CONFIGS, EXPERIMENT, SFT, kill_after, mlflow_runs, run, subprocess_fit, tree_digest

from adagrpo.cli import main


def test_rerun_refused_force_replaces_and_errors_tag_the_run(world, capsys):
    rc, err = run(["fit", *SFT], capsys)
    assert rc == 0, err
    folder = world / "runs" / EXPERIMENT / "sft"  # sft.yaml names the run
    first = json.loads((folder / "latest.json").read_text())
    assert (folder / "best.ckpt").is_file() and not (folder / "running.json").exists()
    assert not (folder / "resume").exists()  # removed once the fit completed

    before = tree_digest(world / "runs", world / "mlflow.db")
    rc, err = run(["fit", *SFT], capsys)
    assert rc == 2, err
    assert "synthetic/sft already has a recorded fit" in err and "--force" in err and "Traceback" not in err
    assert tree_digest(world / "runs", world / "mlflow.db") == before  # nothing written, no MLflow run
    rc, err = run(["fit", *SFT, "--resume"], capsys)
    assert rc == 2 and "cannot resume synthetic/sft" in err, err
    assert tree_digest(world / "runs", world / "mlflow.db") == before

    rc, err = run(["fit", *SFT, "--force"], capsys)
    assert rc == 0, err
    forced = json.loads((folder / "latest.json").read_text())["mlflow_run_id"]
    assert forced != first["mlflow_run_id"]
    # A project command that fails after a fit in the same process leaves that fit's MLflow run as it was.
    rc, err = run(["compare", "--experiment", "nope", "--no-mlflow"], capsys)
    assert rc == 2 and "CompareError: no MLflow experiment named 'nope'" in err, err
    run_ = next(r for r in mlflow_runs(world, "sft") if r.info.run_id == forced)
    assert run_.info.status == "FINISHED" and "adagrpo.error" not in run_.data.tags

    # A fit that diverges: every step NaN/inf → stopped with one line, exit 2, its MLflow run FAILED with the reason;
    # the recorded fit of another run name is untouched.
    before = tree_digest(folder)
    rc, err = run(["fit", *SFT, "--run_name", "diverges", "--model.init_args.optimizer", "torch.optim.SGD",
                   "--model.init_args.optimizer.init_args.lr", "1e30", "--model.init_args.scheduler", "null",
                   "--trainer.max_epochs", "8"], capsys)  # 2 batches an epoch
    assert rc == 2, err
    assert "adagrpo fit: NonFiniteTraining:" in err and "Traceback" not in err, err
    failed = mlflow_runs(world, "diverges")
    assert len(failed) == 1 and failed[0].info.status == "FAILED"
    assert failed[0].data.tags["adagrpo.error"].startswith("NonFiniteTraining")
    assert not (world / "runs" / EXPERIMENT / "diverges" / "latest.json").exists()
    assert tree_digest(folder) == before


def test_debug_env_shows_the_traceback(world, capsys, monkeypatch):
    monkeypatch.setenv("ADAGRPO_DEBUG", "1")
    from adagrpo.datamodules.errors import ConfigError

    with pytest.raises(ConfigError, match="beam_width"):
        main(["fit", *SFT, "--model.init_args.beam_width", "1000"])


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted(world, capsys, monkeypatch):
    # 4 batches an epoch, 12 steps; periodic checkpoints at steps 3 and 6 (two batches into the second epoch)
    args = [*SFT, "--trainer.max_epochs", "3", "--trainer.limit_train_batches", "4", "--data.init_args.batch_size", "8"]
    # The uninterrupted fit and the resumed one run in this process (no second start-up of Lightning); the fit that
    # is killed runs in a process of its own.
    monkeypatch.setenv("ADAGRPO_RESUME_EVERY", "3")
    rc, err = run(["fit", *args, "--run_name", "full"], capsys)
    assert rc == 0, err
    killed = subprocess_fit(world, [*args, "--run_name", "sft", kill_after(6)])
    assert killed.returncode == -9, killed.stderr[-3000:]  # SIGKILL: no hook ran after the second save
    folder = world / "runs" / EXPERIMENT / "sft"
    running = json.loads((folder / "running.json").read_text())
    assert running["global_step"] == 6 and Path(running["checkpoint"]).is_file()
    assert not (folder / "latest.json").exists()
    rc, err = run(["fit", *args, "--run_name", "sft", "--resume"], capsys)  # the documented command
    assert rc == 0, err

    rec_full = json.loads((world / "runs" / EXPERIMENT / "full" / "latest.json").read_text())
    rec = json.loads((folder / "latest.json").read_text())
    assert rec["global_step"] == rec_full["global_step"] == 12
    a = torch.load(rec_full["last_copy"], map_location="cpu", weights_only=True)["state_dict"]
    b = torch.load(rec["last_copy"], map_location="cpu", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed parameters differ from the uninterrupted fit"
    assert rec["best_score"] == rec_full["best_score"]
    runs = mlflow_runs(world, "sft")
    assert len(runs) == 1 and runs[0].info.run_id == running["mlflow_run_id"] == rec["mlflow_run_id"]
    assert runs[0].info.status == "FINISHED"
    ref = mlflow_runs(world, "full")[0]
    for key in ("val/hr_10", "loss/nll"):
        assert runs[0].data.metrics[key] == ref.data.metrics[key], key


# AdaGRPO (two gates with running state) from a tiny SFT checkpoint, with a reward that needs no training and
# sampled rollouts (their generator's state must resume too): 4 prompts a batch, 4 batches an epoch, 10 steps,
# validation every 3 steps on 40 users.
GRPO = ["--config", str(CONFIGS / "experiments" / "adagrpo.yaml"),
        "--model.init_args.reward", '{"class_path": "adagrpo.lightning_modules.NoisyReward", '
                                    '"init_args": {"noise": 0.3, "noise_on": "tail"}}',
        "--model.init_args.rollout_mode", "sample", "--model.init_args.num_generations", "4",
        "--model.init_args.optimizer.init_args.lr", "1e-3",
        "--data.init_args.source.init_args.num_users", "150", "--data.init_args.source.init_args.num_items", "100",
        "--data.init_args.max_eval_samples", "40", "--data.init_args.batch_size", "4",
        "--trainer.max_steps", "10", "--trainer.limit_train_batches", "4", "--trainer.val_check_interval", "3",
        "--trainer.log_every_n_steps", "1", "--trainer.enable_progress_bar", "false"]


@pytest.mark.slow
def test_grpo_sigkill_then_resume_equals_uninterrupted(world, capsys, monkeypatch):
    rc, err = run(["fit", *SFT, "--model.init_args.train_dtype", "float32"], capsys)  # the SFT start
    assert rc == 0, err
    args = [*GRPO, "--model.init_args.init_from", str(world / "runs" / EXPERIMENT / "sft" / "best.ckpt")]
    # The uninterrupted fit and the resumed one run in this process (no second start-up of Lightning); the fit that
    # is killed runs in a process of its own.
    monkeypatch.setenv("ADAGRPO_RESUME_EVERY", "3")
    rc, err = run(["fit", *args, "--run_name", "full"], capsys)
    assert rc == 0, err
    # Periodic checkpoints fall due at steps 3, 6 and 9, where a validation follows: each is written one step later,
    # after it. Killed once the second (step 7) is written: the validation of step 6 ran, that of step 9 did not.
    killed = subprocess_fit(world, [*args, "--run_name", "ada", kill_after(7)])
    assert killed.returncode == -9, killed.stderr[-3000:]
    folder = world / "runs" / EXPERIMENT / "ada"
    running = json.loads((folder / "running.json").read_text())
    assert running["global_step"] == 7 and Path(running["checkpoint"]).is_file()
    assert not (folder / "latest.json").exists()
    rc, err = run(["fit", *args, "--run_name", "ada", "--resume"], capsys)  # the documented command
    assert rc == 0, err

    rec_full = json.loads((world / "runs" / EXPERIMENT / "full" / "latest.json").read_text())
    rec = json.loads((folder / "latest.json").read_text())
    assert rec["global_step"] == rec_full["global_step"] == 10
    for key in ("last_copy", "best_copy"):
        a = torch.load(rec_full[key], map_location="cpu", weights_only=True)
        b = torch.load(rec[key], map_location="cpu", weights_only=True)
        assert a["global_step"] == b["global_step"], key
        assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"]), key
        assert a["adagrpo"]["gates"].keys() == b["adagrpo"]["gates"].keys() and a["adagrpo"]["gates"]
        for name, state in a["adagrpo"]["gates"].items():
            assert state == b["adagrpo"]["gates"][name], (key, name)
    assert rec["best_score"] == rec_full["best_score"]

    runs = mlflow_runs(world, "ada")
    assert len(runs) == 1 and runs[0].info.run_id == running["mlflow_run_id"] == rec["mlflow_run_id"]
    assert runs[0].info.status == "FINISHED"
    ref = mlflow_runs(world, "full")[0]
    timings = [k for k in ref.data.metrics if k.startswith("perf/")]
    assert {k: v for k, v in runs[0].data.metrics.items() if k not in timings} == \
        {k: v for k, v in ref.data.metrics.items() if k not in timings}
    assert "gate/difficulty/open_rate" in ref.data.metrics and "val/hr_10" in ref.data.metrics
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{world / 'mlflow.db'}")
    for key in ("val/hr_10", "loss/total", "reward/mean", "gate/open_rate"):
        got = {(m.step, m.value) for m in client.get_metric_history(runs[0].info.run_id, key)}
        want = {(m.step, m.value) for m in client.get_metric_history(ref.info.run_id, key)}
        assert got <= want, (key, sorted(got - want))  # nothing the uninterrupted fit did not log
        # Lightning logs a step's training metrics after on_train_batch_end, where the kill followed the checkpoint:
        # only step 7's (logged at index 6) can be missing. Every validation is there.
        assert {s for s, _ in want - got} <= ({6} if key != "val/hr_10" else set()), (key, sorted(want - got))
    assert len(client.get_metric_history(ref.info.run_id, "val/hr_10")) == 3  # steps 3, 6 and 9
