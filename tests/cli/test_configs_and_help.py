"""The CLI documents itself and every shipped YAML parses.

* every argument of every configurable class has its own help line (``adagrpo fit --model.help …``);
* every shipped YAML parses against its class signature, without instantiating anything: experiments as
  whole ``fit`` configs, trainer overlays on top of the experiment their header names, and fragments
  (data, SIDs, sources, policies, optimizers) by their own ``class_path``;
* every experiment variant (a file naming a ``base:``) composes with its base chain exactly as LightningCLI's
  repeated ``--config`` does, and means what its name says;
* ``--print_config`` prints the configuration that runs (MLflow experiment and run names filled in).
"""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import Strategy

from adagrpo.cli import main
from adagrpo.resources import BASE_KEY, config_chain, config_root, read_config

ROOT = config_root()
SHIPPED = sorted(p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*.yaml"))
CLI_KEYS = {"trainer", "model", "data", "seed_everything", "experiment", "run_name", "ckpt_path", "optimizer",
            "lr_scheduler", "checkpoint", "allow_untrained", BASE_KEY}


def configurable_classes() -> list[type]:
    """The classes a user configures by ``class_path`` (modules, data, callbacks and everything they take),
    not the data containers they pass around."""
    from adagrpo import callbacks, datamodules, lightning_modules
    from adagrpo.datamodules.embeddings import ItemEmbeddings
    from adagrpo.datamodules.exposure import ExposureSpec
    from adagrpo.datamodules.semantic_ids import SidBuilder
    from adagrpo.datamodules.sources import DataSource
    from adagrpo.lightning_modules.balancers import Balancer
    from adagrpo.lightning_modules.decoding import DecodingConfig
    from adagrpo.lightning_modules.policy import PolicySpec
    from adagrpo.lightning_modules.reward import RewardModel
    from adagrpo.lightning_modules.schedules import WarmupCosine
    from adagrpo.lightning_modules.strategies import FSDP2Strategy

    bases = (L.LightningModule, L.LightningDataModule, Callback, Strategy, PolicySpec, RewardModel, Balancer,
             DataSource, SidBuilder, ItemEmbeddings, ExposureSpec, WarmupCosine, DecodingConfig)
    found = {FSDP2Strategy}
    for pkg in (lightning_modules, callbacks, datamodules):
        for name in pkg.__all__:
            obj = getattr(pkg, name)
            if inspect.isclass(obj) and issubclass(obj, bases):
                found.add(obj)
    return sorted(found, key=lambda c: f"{c.__module__}.{c.__name__}")


@pytest.mark.parametrize("cls", configurable_classes(), ids=lambda c: c.__name__)
def test_every_argument_has_its_own_help(cls):
    from jsonargparse._parameter_resolvers import get_signature_parameters

    assert inspect.getdoc(cls), f"{cls.__qualname__} has no class docstring (is it placed after an attribute?)"
    params = get_signature_parameters(cls)
    undocumented = [p.name for p in params if not (p.doc or "").strip()]
    assert not undocumented, f"{cls.__module__}.{cls.__qualname__}: no help for {undocumented}"


def test_model_help_shows_each_argument(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--model.help", "adagrpo.lightning_modules.GRPOModule"])
    assert exit_info.value.code == 0
    out = re.sub(r"\s+", " ", capsys.readouterr().out)
    for fragment in ("--model.init_from INIT_FROM the SFT checkpoint",  # the class docstring is found
                     "--model.temperature TEMPERATURE sampling temperature",  # split from "temperature, top_k"
                     "--model.top_k TOP_K sample among the k most likely",
                     "--model.epsilon_high EPSILON_HIGH upper PPO clip",
                     "--model.beam_width BEAM_WIDTH candidates decoded per user"):
        assert fragment in out, f"missing help: {fragment!r}"


def test_usage_says_what_predict_writes(capsys):
    """`adagrpo --help` describes `predict` by what it does: its output formats and columns, and only options that
    `adagrpo predict` accepts; every listed command answers its own --help."""
    from adagrpo import commands
    from adagrpo.predict import FORMATS, TSV_HEADER

    assert main(["--help"]) == 0
    usage = capsys.readouterr().out
    block = re.sub(r"\s+", " ", usage[usage.index("  predict "):usage.index("Project commands")])
    assert all(fmt.upper() in block for fmt in FORMATS), block
    assert ", ".join(TSV_HEADER.split("\t")) in block, block
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--help"])
    assert exit_info.value.code == 0
    predict_help = capsys.readouterr().out
    named = re.findall(r"--[\w-]+", block)
    assert named and all(flag in predict_help for flag in named), (named, predict_help)
    for name in commands.COMMANDS:
        assert f"  {name} " in usage
        with pytest.raises(SystemExit) as exit_info:
            main([name, "--help"])
        assert exit_info.value.code == 0, name
    capsys.readouterr()


def kind(rel: str) -> str:
    text = yaml.safe_load((ROOT / rel).read_text()) or {}
    if "class_path" in text:
        return "fragment"
    if set(text) <= CLI_KEYS:
        if BASE_KEY in text:
            return "variant"
        return "experiment" if "model" in text and "class_path" in (text["model"] or {}) else "overlay"
    return "unknown"


def test_every_shipped_yaml_is_covered():
    assert len(SHIPPED) > 40
    unknown = [rel for rel in SHIPPED if kind(rel) == "unknown"]
    assert not unknown, f"shipped YAMLs that are neither a fit config, an overlay nor a class_path fragment: {unknown}"
    rl = [r for r in SHIPPED if r.startswith("experiments/") and (kind(r) == "variant" or "rl_base" in r)]
    # the RL experiments are one base and overlays on it (directly or through adagrpo.yaml)
    assert len(rl) >= 16 and all(config_chain(ROOT / r)[0].name == "rl_base.yaml" for r in rl), rl


def print_config(args: list[str], capsys) -> dict:  # noqa: ANN001
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *args, "--print_config"])
    captured = capsys.readouterr()
    assert exit_info.value.code in (0, None), captured.err[-2000:]
    return yaml.safe_load(captured.out)


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """An empty working directory; the CLI's record-folder variables restored afterwards."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ADAGRPO_EXPERIMENT", "")
    monkeypatch.setenv("ADAGRPO_RECORD_DIR", "")
    monkeypatch.delenv("ADAGRPO_RUNS", raising=False)
    return tmp_path


def overlay_base(rel: str) -> str:
    """The experiment an overlay's header applies it to (``--config configs/experiments/X.yaml``), else SFT."""
    m = re.search(r"--config\s+(configs/experiments/[\w.\-]+\.yaml)", (ROOT / rel).read_text())
    return m.group(1) if m else "configs/experiments/sft.yaml"


@pytest.mark.parametrize("rel", [r for r in SHIPPED if kind(r) in ("experiment", "overlay", "variant")])
def test_fit_configs_parse_and_print_what_runs(rel, isolated, capsys):
    if kind(rel) in ("experiment", "variant"):
        args, source = ["--config", f"configs/{rel}"], read_config(ROOT / rel)
    else:
        base = overlay_base(rel)
        args = ["--config", base, "--config", f"configs/{rel}"]
        source = read_config(ROOT / base.removeprefix("configs/"))
    cfg = print_config(args, capsys)
    experiment, run_name = cfg["experiment"], cfg["run_name"] or "fit"
    assert experiment == source.get("experiment", "default")
    assert cfg["trainer"]["default_root_dir"] == f"runs/{experiment}/{run_name}"
    loggers = cfg["trainer"]["logger"]
    for lg in loggers if isinstance(loggers, list) else [loggers]:
        if isinstance(lg, dict) and lg["class_path"].endswith("MLFlowLogger"):
            assert (lg["init_args"]["experiment_name"], lg["init_args"]["run_name"]) == (experiment, run_name)


def dotted(cfg: dict, key: str):  # noqa: ANN201
    for part in key.split("."):
        cfg = cfg[int(part)] if isinstance(cfg, list) else cfg[part]
    return cfg


GATED = "adagrpo.lightning_modules.GatedBalance"
FIXED = "adagrpo.lightning_modules.FixedWeight"
DIFFICULTY = "adagrpo.lightning_modules.PolicyDifficultyGate"
DISCRIMINABILITY = "adagrpo.lightning_modules.RewardDiscriminabilityGate"
#: what each RL variant's name promises, read from its composed configuration (model.init_args.X → M.X)
MEANING = {
    "rl_base": {"M.balancer.class_path": FIXED, "M.balancer.init_args.rl_weight": 1.0, "M.gates": None},
    "grpo": {"M.balancer.class_path": FIXED, "M.balancer.init_args.nll_weight": 1.0,
             "M.balancer.init_args.rl_weight": 1.0, "M.gates": None},
    "grpo_fixed_0.1": {"M.balancer.class_path": FIXED, "M.balancer.init_args.rl_weight": 0.1, "M.gates": None},
    "grpo_fixed_0.3": {"M.balancer.class_path": FIXED, "M.balancer.init_args.rl_weight": 0.3, "M.gates": None},
    "grpo_fixed_1.0": {"M.balancer.class_path": FIXED, "M.balancer.init_args.rl_weight": 1.0, "M.gates": None},
    "pure_grpo": {"M.balancer.init_args.nll_weight": 0.0, "M.balancer.init_args.rl_weight": 1.0},
    "continue_sft": {"M.balancer.init_args.nll_weight": 1.0, "M.balancer.init_args.rl_weight": 0.0},
    "adagrpo": {"M.balancer.class_path": GATED, "M.balancer.init_args.normalize": "batch",
                "M.gates.0.class_path": DIFFICULTY, "M.gates.0.init_args.signal": "gt_rank",
                "M.gates.0.init_args.threshold": 2.0, "M.gates.1.class_path": DISCRIMINABILITY,
                "M.gates.1.init_args.signal": "auc", "M.gates.1.init_args.threshold": 0.8,
                "M.scale_rewards": "group", "M.inject_gt": False, "data.init_args.rl_users": "all"},
    "adagrpo_admitted": {"M.balancer.init_args.normalize": "admitted"},
    "adagrpo_band": {"M.gates.0.init_args.signal": "band", "M.gates.0.init_args.threshold": 1.0,
                     "M.gates.1.init_args.signal": "auc", "len(M.gates)": 2},
    "adagrpo_difficulty_only": {"M.gates.0.class_path": DIFFICULTY, "len(M.gates)": 1},
    "adagrpo_discriminability_only": {"M.gates.0.class_path": DISCRIMINABILITY, "len(M.gates)": 1},
    "adagrpo_heldout": {"data.init_args.rl_users": "heldout"},
    "adagrpo_inject_gt": {"M.inject_gt": True, "M.balancer.class_path": GATED},
    "adagrpo_oracle": {"M.gates.0.class_path": "adagrpo.lightning_modules.OracleGate", "len(M.gates)": 1},
    "adagrpo_relative": {"M.gates.0.init_args.signal": "gt_rank", "M.gates.1.init_args.signal": "relative",
                         "M.gates.1.init_args.threshold": 1.0, "len(M.gates)": 2},
    "adagrpo_spread": {"M.scale_rewards": "spread"},
}
SHARED = ["experiment", "seed_everything", "trainer.max_steps", "trainer.val_check_interval", "M.init_from",
          "M.reward", "M.optimizer", "M.num_generations", "M.beta", "trainer.callbacks"]


def test_every_rl_variant_has_a_meaning():
    variants = {Path(r).stem for r in SHIPPED if kind(r) == "variant"} | {"rl_base"}
    assert variants == set(MEANING), variants ^ set(MEANING)


@pytest.mark.parametrize("rel", [r for r in SHIPPED if kind(r) == "variant"])
def test_variant_composes_with_its_base(rel, isolated, capsys):
    """``--config VARIANT`` equals LightningCLI's ``--config BASE … --config VARIANT`` of the same files without
    their ``base:`` key; the variant validates against the classes' signatures, keeps its own run name, shares the
    base's settings and means what its name says."""
    chain = config_chain(ROOT / rel)
    assert len(chain) >= 2 and kind(chain[0].relative_to(ROOT).as_posix()) == "experiment", chain
    layers = []
    (isolated / "data").symlink_to(ROOT / "data")  # the layers' relative data paths (../data/...) still resolve
    (isolated / "experiments").mkdir()
    for path in chain:
        text = yaml.safe_load(path.read_text())
        text.pop(BASE_KEY, None)
        layer = isolated / "experiments" / path.name
        layer.write_text(yaml.safe_dump(text, sort_keys=False))
        layers += ["--config", str(layer)]
    cfg = print_config(["--config", f"configs/{rel}"], capsys)
    assert cfg == print_config(layers, capsys)
    stem = Path(rel).stem
    assert cfg["run_name"] == stem and cfg["trainer"]["default_root_dir"] == f"runs/synthetic/{stem}"
    base = print_config(["--config", str(chain[0])], capsys)
    model = lambda key: key.replace("M.", "model.init_args.", 1)  # noqa: E731
    for key in SHARED:
        assert dotted(cfg, model(key)) == dotted(base, model(key)), key
    expect = MEANING[stem]
    if stem.startswith("adagrpo_"):  # AdaGRPO's promises hold unless the variant says otherwise (its own gates)
        own_gates = any("M.gates" in key for key in expect)
        expect = {**{k: v for k, v in MEANING["adagrpo"].items() if not (own_gates and "M.gates" in k)}, **expect}
    for key, value in expect.items():
        if key.startswith("len("):
            assert len(dotted(cfg, model(key[4:-1]))) == value, key
        else:
            assert dotted(cfg, model(key)) == value, (key, dotted(cfg, model(key)))


def test_a_base_chain_is_checked(tmp_path, isolated, capsys):
    (tmp_path / "a.yaml").write_text("base: b.yaml\nrun_name: a\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    (tmp_path / "c.yaml").write_text("base: missing.yaml\n")
    for name, message in (("a", "cycle"), ("c", "missing.yaml")):
        with pytest.raises(SystemExit) as exit_info:
            main(["fit", "--config", str(tmp_path / f"{name}.yaml"), "--print_config"])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err, name


def test_a_users_variant_names_a_shipped_base(isolated, capsys):
    """A variant outside the package names its base by a ``configs/...`` path (found in the package, as on the
    command line); the composed config is the shipped variant's."""
    (isolated / "mine.yaml").write_text("base: configs/experiments/rl_base.yaml\nrun_name: grpo_fixed_0.1\n"
                                        "model: {init_args: {balancer: {init_args: {rl_weight: 0.1}}}}\n")
    assert print_config(["--config", "mine.yaml"], capsys) == print_config(
        ["--config", "configs/experiments/grpo_fixed_0.1.yaml"], capsys)
    assert read_config("mine.yaml")["data"] == str((ROOT / "data" / "synthetic_rl.yaml").resolve())


def test_print_config_shows_the_run_name_of_the_command_line(isolated, capsys):
    cfg = print_config(["--config", "configs/experiments/adagrpo.yaml", "--experiment", "study",
                        "--run_name", "adagrpo-s3"], capsys)
    logger = cfg["trainer"]["logger"]
    logger = logger[0] if isinstance(logger, list) else logger
    assert logger["init_args"]["experiment_name"] == "study"
    assert logger["init_args"]["run_name"] == "adagrpo-s3"
    assert cfg["trainer"]["default_root_dir"] == "runs/study/adagrpo-s3"


@pytest.mark.parametrize("rel", [r for r in SHIPPED if kind(r) == "fragment"])
def test_fragments_parse_against_their_class(rel, isolated, capsys):
    from jsonargparse import ArgumentParser

    class_path = yaml.safe_load((ROOT / rel).read_text())["class_path"]
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except ModuleNotFoundError as err:
        if err.name and not err.name.startswith("adagrpo"):
            pytest.skip(f"{class_path} needs {err.name}, not installed here")
        raise
    if issubclass(cls, torch.optim.Optimizer):  # a module's ``optimizer:`` (a callable of the parameters)
        cfg = print_config(["--config", "configs/experiments/sft.yaml", "--model.init_args.optimizer",
                            f"configs/{rel}"], capsys)  # from an empty folder: the shipped file is found
        assert cfg["model"]["init_args"]["optimizer"]["class_path"] == class_path
        return
    parser = ArgumentParser(parser_mode="omegaconf", exit_on_error=False)
    parser.add_subclass_arguments(cls, "fragment", required=True)
    cfg = parser.parse_args(["--fragment", str(ROOT / rel)])
    parsed_module, _, parsed_name = cfg.fragment.class_path.rpartition(".")
    assert getattr(importlib.import_module(parsed_module), parsed_name) is cls


TINY_SFT = ["--model.init_args.policy", "configs/model/policy_tiny.yaml",
            "--data.init_args.source.init_args.num_users", "120", "--data.init_args.source.init_args.num_items", "80",
            "--data.init_args.max_eval_samples", "20", "--data.init_args.max_test_samples", "20",
            "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1", "--trainer.enable_progress_bar", "false"]


def test_ablate_print_lines_nest_under_a_parent_run(isolated, monkeypatch, capsys):
    """`adagrpo ablate --print` prints lines that, run as printed (here from another directory), log their runs
    under the MLflow parent run it opened, into the same store, and end that run."""
    import os
    import shlex
    import subprocess
    import sys

    from mlflow.tracking import MlflowClient

    from adagrpo.run_config import PARENT_RUN_ENV

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the default store, sqlite:///mlflow.db, here
    monkeypatch.delenv(PARENT_RUN_ENV, raising=False)
    monkeypatch.setenv("ADAGRPO_RUNS", str(isolated / "runs"))
    assert main(["ablate", "--config", "configs/experiments/sft.yaml", "--seeds", "5", "--experiment", "grid",
                 "--print", *TINY_SFT]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("# MLflow parent run ") and lines[-1].endswith("# ends the parent run")
    commands = [shlex.split(ln, comments=True) for ln in lines[1:]]
    envs = [dict(w.split("=", 1) for w in c[:2]) for c in commands]
    assert all(e == envs[0] for e in envs) and set(envs[0]) == {"MLFLOW_TRACKING_URI", PARENT_RUN_ENV}
    uri, parent = envs[0]["MLFLOW_TRACKING_URI"], envs[0][PARENT_RUN_ENV]
    assert uri == f"sqlite:///{(isolated / 'mlflow.db').resolve()}"
    client = MlflowClient(tracking_uri=uri)
    scheduled = client.get_run(parent)
    assert scheduled.info.status == "SCHEDULED" and scheduled.data.tags["adagrpo.kind"] == "ablation"
    assert PARENT_RUN_ENV not in os.environ  # printing opened the run but set nothing here
    runs = [c[2:] for c in commands if c[2:5] == ["python", "-m", "adagrpo"]]
    assert [c[3] for c in runs] == ["fit", "test", "test", "compare"] and len(runs) == len(commands) - 1
    elsewhere = isolated / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    for key, value in envs[0].items():
        monkeypatch.setenv(key, value)
    for command in runs:
        assert main(command[3:]) in (0, None), command
    end = commands[-1][2:]
    assert end[:2] == ["python", "-c"]
    subprocess.run([sys.executable, *end[1:]], check=True, env={**os.environ})
    assert not (elsewhere / "mlflow.db").exists()
    exp = client.get_experiment_by_name("grid")
    (fit,) = client.search_runs([exp.experiment_id], filter_string="tags.variant = 'sft' and tags.seed = '5'")
    assert fit.data.tags["mlflow.parentRunId"] == parent and "test_last/hr_10" in fit.data.metrics
    (report,) = client.search_runs([exp.experiment_id], filter_string="tags.`adagrpo.kind` = 'comparison'")
    assert report.data.tags["mlflow.parentRunId"] == parent
    assert client.get_run(parent).info.status == "FINISHED"


def test_pipeline_runs_a_stage_once_keyed_by_its_config_chain(isolated, monkeypatch, capsys):
    """`quickstart`/`ablate` stages: a forced fit, a test and a test of the last checkpoint, each with its own log
    (run in-process here instead of as subprocesses); a rerun with the same inputs reuses the stage. The key
    covers a variant's base: chain."""
    from adagrpo import experiments
    from adagrpo.experiments import Stage, run_pipeline, stage_key

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{isolated / 'mlflow.db'}")
    exp_dir = ROOT / "experiments"
    variant = Stage("grpo_fixed_0.1", exp_dir / "grpo_fixed_0.1.yaml")
    assert (exp_dir / "rl_base.yaml").resolve() in variant.files()
    assert stage_key(variant, {}) != stage_key(Stage("grpo_fixed_0.3", exp_dir / "grpo_fixed_0.3.yaml"), {})
    ran = []

    def in_process(cmd: list[str], env: dict, log_path: Path, echo: bool = True) -> None:
        assert cmd[1:3] == ["-m", "adagrpo"]
        ran.append((cmd[3], log_path.name, "--force" in cmd, "last" in cmd))
        assert main(cmd[3:]) in (0, None), cmd

    monkeypatch.setattr(experiments, "run_command", in_process)
    stage = Stage("sft", exp_dir / "sft.yaml", [*TINY_SFT, "--seed_everything", "3"], test_last=True)
    first = run_pipeline("pipe", [stage], echo=False)["sft"]
    assert ran == [("fit", "fit.log", True, False), ("test", "test.log", False, False),
                   ("test", "test_last.log", False, True)]
    assert first["key"] == stage_key(stage, {}) and Path(first["best_copy"]).is_file()
    capsys.readouterr()
    assert run_pipeline("pipe", [stage], echo=False)["sft"]["key"] == first["key"] and len(ran) == 3
    assert "[sft] up to date" in capsys.readouterr().out
