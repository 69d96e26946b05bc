"""MLflow runs that the UI can filter: the flattened configuration as params, variant/seed/stage tags, the
ablation's parent run with its runs nested under it, and the comparison as its own kind of run."""

from __future__ import annotations

import os

import pytest

from adagrpo.cli import main
from adagrpo.run_config import PARENT_RUN_ENV, flatten_config, run_params, run_tags

GRPO_CFG = {
    "seed_everything": 2,
    "run_name": "adagrpo-s2",
    "model": {"class_path": "adagrpo.lightning_modules.GRPOModule", "init_args": {
        "beta": 0.001, "num_generations": 16, "ks": [1, 10],
        "balancer": {"class_path": "adagrpo.lightning_modules.GatedBalance", "init_args": {"rl_weight": 0.3}},
        "gates": [{"class_path": "adagrpo.callbacks.PolicyDifficultyGate", "init_args": {"threshold": 2.0}}],
        "reference": None}},
    "data": {"class_path": "adagrpo.datamodules.SeqRecDataModule", "init_args": {"seed": 2}},
    "trainer": {"max_steps": 150, "default_root_dir": "runs/x/y",
                "logger": {"class_path": "lightning.pytorch.loggers.MLFlowLogger", "init_args": {"run_name": "y"}}},
    "ckpt_path": None,
}


def test_flattened_params_name_what_the_ui_sorts_by():
    params = run_params(GRPO_CFG)
    assert params["model"] == "GRPOModule"
    assert params["model.beta"] == "0.001" and params["model.num_generations"] == "16"  # β, G
    assert params["model.balancer"] == "GatedBalance" and params["model.balancer.rl_weight"] == "0.3"  # λ
    assert params["model.gates.0"] == "PolicyDifficultyGate" and params["model.gates.0.threshold"] == "2.0"
    assert params["seed_everything"] == "2" and params["data.seed"] == "2"
    assert params["model.ks"] == "[1, 10]" and params["model.reference"] == "null"
    assert not [k for k in params if k.startswith(("trainer.logger", "trainer.default_root_dir", "ckpt_path"))]
    long = flatten_config({"x": "a" * 2000})
    assert len(run_params({"x": "a" * 2000})["x"]) == 500 and len(long["x"]) == 2000


def test_tags_variant_seed_stage():
    assert run_tags(GRPO_CFG, "adagrpo-s2") == {"variant": "adagrpo", "seed": "2", "stage": "rl",
                                                "adagrpo.kind": "train"}
    sft = {"model": {"class_path": "adagrpo.lightning_modules.SFTModule"}, "seed_everything": True}
    assert run_tags(sft, "sft-s4") == {"variant": "sft", "seed": "4", "stage": "sft", "adagrpo.kind": "train"}
    assert "seed" not in run_tags({"model": {}}, "reward")


@pytest.fixture
def store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)
    for key, value in {"MLFLOW_TRACKING_URI": uri, "ADAGRPO_RUNS": str(tmp_path / "runs"),
                       "ADAGRPO_EXPERIMENT": "", "ADAGRPO_RECORD_DIR": ""}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv(PARENT_RUN_ENV, raising=False)
    return uri


TINY = ["--model.init_args.policy", "configs/model/policy_tiny.yaml",
        "--data.init_args.source.init_args.num_users", "120", "--data.init_args.source.init_args.num_items", "80",
        "--data.init_args.max_eval_samples", "20", "--data.init_args.max_test_samples", "20",
        "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1", "--trainer.enable_progress_bar", "false",
        "--experiment", "tags", "--run_name", "sft-s5", "--seed_everything", "5"]


def test_a_fit_logs_params_and_tags_nested_under_the_ablation(store):
    from mlflow.tracking import MlflowClient

    from adagrpo.experiments import ablation_run

    with ablation_run("tags", ["configs/experiments/sft.yaml"], [5], [], tracking_uri=store) as parent:
        assert os.environ[PARENT_RUN_ENV] == parent
        assert main(["fit", "--config", "configs/experiments/sft.yaml", *TINY]) == 0
        assert main(["test", "--config", "configs/experiments/sft.yaml", *TINY]) == 0  # same run, params kept
    assert PARENT_RUN_ENV not in os.environ
    client = MlflowClient(tracking_uri=store)
    exp = client.get_experiment_by_name("tags")
    (run,) = client.search_runs([exp.experiment_id], filter_string="tags.variant = 'sft' and tags.seed = '5'")
    assert run.data.tags["stage"] == "sft" and run.data.tags["adagrpo.kind"] == "train"
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert "test/hr_10" in run.data.metrics  # the test logged into the fit's run
    params = run.data.params
    assert params["model"] == "SFTModule" and params["seed_everything"] == "5"
    assert params["model.policy.hidden_size"] == "32" and params["data.source.num_users"] == "120"
    ablation = client.get_run(parent)
    assert ablation.info.status == "FINISHED" and ablation.data.tags["adagrpo.kind"] == "ablation"
    assert ablation.data.params["seeds"] == "[5]"


def test_a_failed_ablation_ends_its_run_failed(store):
    from mlflow.tracking import MlflowClient

    from adagrpo.experiments import ablation_run

    with pytest.raises(RuntimeError, match="stage failed"):
        with ablation_run("tags", ["a.yaml"], [0], [], tracking_uri=store) as parent:
            raise RuntimeError("stage failed")
    assert MlflowClient(tracking_uri=store).get_run(parent).info.status == "FAILED"
    assert PARENT_RUN_ENV not in os.environ


def test_comparison_run_is_its_own_kind_nested_under_the_ablation(store, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from adagrpo.compare import run_compare

    client = MlflowClient(tracking_uri=store)
    exp_id = client.create_experiment("cmp")
    for name, hr in (("sft", 0.3), ("ada-s0", 0.4)):
        run = client.create_run(exp_id, run_name=name)
        client.log_metric(run.info.run_id, "test/hr_10", hr)
    parent = client.create_run(exp_id, run_name="ablation", tags={"adagrpo.kind": "ablation"}).info.run_id
    monkeypatch.setenv(PARENT_RUN_ENV, parent)
    run_compare("cmp", store, str(tmp_path / "out"))
    (report,) = client.search_runs([exp_id], filter_string="tags.`adagrpo.kind` = 'comparison'")
    assert report.data.tags["mlflow.parentRunId"] == parent
    table, _, _ = run_compare("cmp", store, str(tmp_path / "out"), log_to_mlflow=False)
    assert "compare" not in table and "ablation" not in table  # report runs are not rows
