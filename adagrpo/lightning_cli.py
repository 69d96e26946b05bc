"""The LightningCLI behind ``adagrpo fit/validate/test/predict``.

* omegaconf parser mode, so configs can use ``${oc.env:ADAGRPO_DATA_ROOT,data}``;
* model and data are chosen by ``class_path`` (any LightningModule / our DataModule);
* the resolved config is saved as an artifact of the run's MLflow run (LightningCLI's own config
  file writer clashes with MLflow loggers, which have no local log_dir);
* ``test``/``validate`` without ``--ckpt_path`` use the best checkpoint of the latest ``fit`` of the
  same experiment (recorded in ``runs/<experiment>/latest.json``).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

log = logging.getLogger("adagrpo")


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else ``sqlite:///mlflow.db`` in the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")


class MLflowSaveConfig(SaveConfigCallback):
    """Logs the resolved config as ``config.yaml`` in every MLflow run of the trainer; writes it to
    the trainer's log_dir only when no MLflow logger is attached."""

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        from lightning.pytorch.loggers import MLFlowLogger

        text = self.parser.dump(self.config, skip_none=False)
        mlflow_loggers = [lg for lg in trainer.loggers if isinstance(lg, MLFlowLogger)]
        for lg in mlflow_loggers:
            lg.experiment.log_text(lg.run_id, text, f"config_{stage}.yaml")
        if not mlflow_loggers and trainer.log_dir:
            path = Path(trainer.log_dir) / "config.yaml"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)


class AdaGRPOCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:  # noqa: ANN001
        parser.add_argument(
            "--experiment",
            type=str,
            default="default",
            help="Experiment name: MLflow experiment and runs/<experiment>/ folder.",
        )

    def before_instantiate_classes(self) -> None:
        sub = self.config.get(self.subcommand)
        if sub is None:
            return
        experiment = sub.get("experiment") or "default"
        os.environ.setdefault("ADAGRPO_EXPERIMENT", experiment)
        trainer_cfg = sub.get("trainer")
        if trainer_cfg is not None and trainer_cfg.get("default_root_dir") in (None, "", "."):
            trainer_cfg["default_root_dir"] = str(Path("runs") / experiment)
        # MLflow runs are grouped by experiment; the logger config need not repeat the name.
        loggers = trainer_cfg.get("logger") if trainer_cfg is not None else None
        for lg in loggers if isinstance(loggers, list) else [loggers]:
            if lg is not None and not isinstance(lg, bool) and str(lg.get("class_path", "")).endswith("MLFlowLogger"):
                init = lg.get("init_args")
                if init.get("experiment_name") in (None, "lightning_logs"):
                    init["experiment_name"] = experiment
                if not init.get("run_name"):
                    init["run_name"] = f"{experiment}-{self.subcommand}-{time.strftime('%Y%m%d-%H%M%S')}"
        if self.subcommand in ("test", "validate") and not sub.get("ckpt_path"):
            ckpt = latest_checkpoint(experiment)
            if ckpt:
                log.warning("no --ckpt_path given: using %s (best checkpoint of the latest fit of %r)",
                            ckpt, experiment)
                sub["ckpt_path"] = ckpt


def latest_checkpoint(experiment: str) -> str | None:
    """The best (else last) checkpoint recorded by the latest ``fit`` of ``experiment``."""
    record = Path("runs") / experiment / "latest.json"
    if not record.exists():
        return None
    info = json.loads(record.read_text())
    for key in ("best", "last"):
        if info.get(key) and Path(info[key]).exists():
            return info[key]
    return None


def run_lightning_cli(argv: list[str]) -> AdaGRPOCLI:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return AdaGRPOCLI(
        model_class=L.LightningModule,
        datamodule_class=L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        parser_kwargs={"parser_mode": "omegaconf"},
        save_config_callback=MLflowSaveConfig,
        save_config_kwargs={"overwrite": True, "save_to_log_dir": False},
        args=None if argv == sys.argv[1:] else argv,
        auto_configure_optimizers=True,
    )
