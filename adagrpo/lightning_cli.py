"""The LightningCLI behind ``adagrpo fit/validate/test/predict``.

* omegaconf parser mode, so configs can use ``${oc.env:ADAGRPO_DATA_ROOT,data}``;
* model and data are chosen by ``class_path`` (any LightningModule / DataModule);
* every run has an ``experiment`` (the MLflow experiment; runs in one experiment are compared by
  ``adagrpo compare``) and a ``run_name`` (the stage or variant, e.g. ``sft``, ``adagrpo``). A fit
  records its checkpoints in ``runs/<experiment>/<run_name>/`` (``latest.json``, ``best.ckpt``,
  ``last.ckpt``);
* ``test``/``validate`` without ``--ckpt_path`` evaluate that record's ``--checkpoint best`` (default)
  or ``last``, and log into the same MLflow run as the fit (metrics ``test/…`` for the best checkpoint,
  ``test_last/…`` for the last);
* the resolved config is saved as an artifact of the MLflow run (LightningCLI's own config file writer
  clashes with MLflow loggers, which have no local log_dir);
* a config file may name a ``base:`` config that is applied before it, as an earlier ``--config`` would be
  (:class:`ConfigFileWithBase`; ``configs/experiments/rl_base.yaml`` and its variants).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

import lightning as L
from jsonargparse import ActionConfigFile
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from adagrpo.run_config import PARENT_RUN_ENV

log = logging.getLogger("adagrpo")


#: the CLI of the command that is running (``adagrpo.cli`` tags its failed MLflow run with the error)
CURRENT: AdaGRPOCLI | None = None


class RunConflict(RuntimeError):
    """A fit would replace a recorded run's results, or there is nothing to resume."""


def record_dir(experiment: str, run_name: str) -> Path:
    """Where a fit records its checkpoints: ``$ADAGRPO_RUNS`` (default ``runs``)/experiment/run_name."""
    return Path(os.environ.get("ADAGRPO_RUNS", "runs")) / experiment / run_name


def read_record(experiment: str, run_name: str) -> dict | None:
    path = record_dir(experiment, run_name) / "latest.json"
    return json.loads(path.read_text()) if path.exists() else None


class MLflowSaveConfig(SaveConfigCallback):
    """Logs the resolved config as ``config_<stage>.yaml`` in every MLflow run of the trainer; writes it to
    the trainer's log_dir only when no MLflow logger is attached."""

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        from lightning.pytorch.loggers import MLFlowLogger

        text = self.parser.dump(self.config, skip_none=False)
        mlflow_loggers = [lg for lg in trainer.loggers if isinstance(lg, MLFlowLogger)]
        for lg in mlflow_loggers:
            lg.experiment.log_text(lg.run_id, text, f"config_{getattr(stage, 'value', stage)}.yaml")
            log_config_params(lg, text, str(getattr(stage, "value", stage)))
        log_dir = None if mlflow_loggers else _local_log_dir(trainer)
        if log_dir:
            path = Path(log_dir) / "config.yaml"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)


def log_config_params(logger, config_text: str, stage: str) -> None:  # noqa: ANN001
    """The run's flattened configuration as MLflow params, and its variant/seed/stage tags
    (:mod:`adagrpo.run_config`), so the MLflow UI can filter and sort runs."""
    import yaml

    from adagrpo.run_config import log_run_config

    cfg = yaml.safe_load(config_text) or {}
    differs = log_run_config(logger.experiment, logger.run_id, cfg, cfg.get("run_name") or stage)
    if differs:
        log.info("MLflow run %s keeps its logged params %s (this %s's values differ)", logger.run_id,
                 ", ".join(differs[:8]) + (" …" if len(differs) > 8 else ""), stage)


def _local_log_dir(trainer: L.Trainer) -> str | None:
    """``trainer.log_dir`` without its broadcast: ``save_config`` runs on rank 0 only, and a collective there
    deadlocks multi-process runs (rank 0 waits in the broadcast, the other ranks in the next barrier)."""
    if trainer.loggers:
        logger = trainer.loggers[0]
        return getattr(logger, "log_dir", None) or logger.save_dir
    return trainer.default_root_dir


class ConfigFileWithBase(ActionConfigFile):
    """``--config FILE``, where FILE may name a ``base:`` config (relative to FILE; see
    :func:`adagrpo.resources.config_base`): the chain is applied deepest base first, each file by jsonargparse's
    own config-file merge, exactly as ``--config BASE --config FILE`` would be; ``base`` itself is not a config
    key and is dropped. A YAML string instead of a file is applied as it is."""

    def __call__(self, parser, cfg, values, option_string=None) -> None:  # noqa: ANN001
        from adagrpo.resources import BASE_KEY, config_chain

        if not (isinstance(values, (str, os.PathLike)) and Path(values).is_file()):
            self.apply_config(parser, cfg, self.dest, values)
            return
        for layer in config_chain(values):
            self.apply_config(parser, cfg, self.dest, str(layer))
            if BASE_KEY in cfg:
                del cfg[BASE_KEY]


CONFIG_HELP = ("Path to a configuration file in json or yaml format; repeatable, later files override earlier "
               "ones. A file may name a `base:` config (a path relative to it) that is applied first, so a variant "
               "says only what differs from its base.")


class AdaGRPOCLI(LightningCLI):
    def init_parser(self, **kwargs) -> LightningArgumentParser:  # noqa: ANN003
        """As LightningCLI's, with ``--config`` accepting files that name a ``base:`` (:class:`ConfigFileWithBase`)."""
        import lightning.pytorch as pl

        kwargs.setdefault("dump_header", [f"lightning.pytorch=={pl.__version__}"])
        parser = self.parser_class(**kwargs)
        parser.add_argument("-c", "--config", action=ConfigFileWithBase, help=CONFIG_HELP)
        return parser

    def add_arguments_to_parser(self, parser) -> None:  # noqa: ANN001
        parser.add_argument("--experiment", type=str, default="default",
                            help="MLflow experiment; runs in one experiment are compared by `adagrpo compare`.")
        parser.add_argument("--run_name", type=str, default=None,
                            help="The run's name within the experiment (stage or variant); default: the subcommand.")
        parser.add_argument("--checkpoint", type=str, default="best",
                            help="test/validate without --ckpt_path: the fit's `best` or `last` checkpoint.")
        parser.add_argument("--allow_untrained", type=bool, default=False,
                            help="test/validate without any checkpoint (an untrained model; a baseline check).")
        from jsonargparse import ActionYesNo

        parser.add_argument("--force", action=ActionYesNo, default=False,
                            help="fit: replace the recorded results of this run name (runs/<experiment>/<run_name>); "
                            "without it a fit into a recorded or interrupted run name is refused.")
        parser.add_argument("--resume", action=ActionYesNo, default=False,
                            help="fit: continue the interrupted fit of this run name from its last periodic "
                            "checkpoint (runs/<experiment>/<run_name>/resume/last.ckpt), in the same MLflow run. "
                            "`--ckpt_path last` does the same.")

    def _parse_ckpt_path(self) -> None:
        """LightningCLI reads ``--ckpt_path``'s hyperparameters before anything else; a file that is not a readable,
        pickle-free checkpoint fails here with a message naming it (and nothing else runs)."""
        from adagrpo.lightning_modules.checkpoint_io import load_checkpoint

        subcommand = self.config.get("subcommand")
        ckpt = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt and Path(str(ckpt)).exists():
            load_checkpoint(str(ckpt), what="checkpoint (--ckpt_path)", mmap=True)
        super()._parse_ckpt_path()

    def check_checkpoint(self) -> None:
        """Before fit/validate/test/predict with ``--ckpt_path FILE``: fail at once, in one process, if the checkpoint
        was trained on other semantic IDs than the configured data (see ``PolicyModule.check_checkpoint_file``)."""
        from adagrpo.datamodules.sequence import SeqRecDataModule
        from adagrpo.lightning_modules.base import PolicyModule

        ckpt = (self.config_init.get(self.subcommand) or {}).get("ckpt_path")
        if not (isinstance(self.model, PolicyModule) and isinstance(self.datamodule, SeqRecDataModule)):
            return
        if ckpt and Path(str(ckpt)).exists():
            self.model.check_checkpoint_file(str(ckpt), self.datamodule)
        self.preflight_fit()

    def preflight_fit(self) -> None:
        """Before a fit starts (and so before its MLflow run exists): read the data, check the model's settings
        against it, and load the SFT start and the reward model, so that a bad data file, setting or checkpoint
        fails here, leaving no run behind."""
        from adagrpo.lightning_modules.base import CKPT_KEY, check_signature
        from adagrpo.lightning_modules.checkpoint_io import load_checkpoint

        self.model.attach(self.datamodule)  # data, SIDs, beam width
        if self.subcommand != "fit":
            return
        self.model.check_train_mode(self.datamodule)
        init_from = getattr(self.model, "init_from", None)
        if init_from:
            what = "SFT checkpoint (model.init_args.init_from)"
            start = load_checkpoint(init_from, what=what, mmap=True)  # the weights are not read
            check_signature(start.get(CKPT_KEY), self.model.sid_signature(), str(init_from))
        reward = getattr(self.model, "reward_model", None)
        if reward is not None and hasattr(reward, "attach"):
            reward.attach(self.datamodule)

    before_fit = before_validate = before_test = before_predict = check_checkpoint

    def parse_arguments(self, parser, args) -> None:  # noqa: ANN001
        """As LightningCLI's, except that ``--print_config`` prints the configuration that runs: the one
        :meth:`before_instantiate_classes` completes (MLflow experiment and run names, the record folder as
        ``default_root_dir``, the recorded checkpoint of ``test``/``validate``), not the parser's raw defaults."""
        argv = sys.argv[1:] if args is None else args
        if not isinstance(argv, list):
            super().parse_arguments(parser, args)
            return
        if not any(a.split("=", 1)[0] == "--print_config" for a in argv):
            # ``adagrpo`` passes the command line itself (config paths resolved): no "args and sys.argv" warning
            self.config = parser.parse_args(argv)
            return
        rest, flags, i = [], set(), 0
        while i < len(argv):
            name, eq, value = argv[i].partition("=")
            if name != "--print_config":
                rest.append(argv[i])
            elif eq:
                flags.update(f for f in value.split(",") if f)
            elif i + 1 < len(argv) and set(argv[i + 1].split(",")) <= {"comments", "skip_null", "skip_default"}:
                flags.update(argv[i + 1].split(","))
                i += 1
            i += 1
        unknown = flags - {"comments", "skip_null", "skip_default"}
        if unknown:
            raise SystemExit("adagrpo: --print_config accepts comments, skip_null, skip_default; "
                             f"got {sorted(unknown)}")
        self.config = parser.parse_args(rest)
        subcommand = self.config["subcommand"]
        sub_parser = self._subcommand_parsers[subcommand]
        sub_cfg = self.config[subcommand]
        self.complete_run_config(subcommand, sub_cfg)
        print(sub_parser.dump(sub_cfg, skip_none="skip_null" in flags, skip_default="skip_default" in flags,
                              yaml_comments="comments" in flags), end="")
        sys.exit(0)

    def before_instantiate_classes(self) -> None:
        sub = self.config.get(self.subcommand)
        if sub is None:
            return
        self.complete_run_config(self.subcommand, sub)
        if self.subcommand == "fit":
            self.check_fit_target(sub)
        self.prepare_mlflow_stores(sub)

    def instantiate_classes(self) -> None:
        global CURRENT
        CURRENT = self
        super().instantiate_classes()

    def check_fit_target(self, sub) -> None:  # noqa: ANN001
        """Refuse a fit that would replace a recorded run's results unless ``--force``; with ``--resume`` (or
        ``--ckpt_path last``) continue the interrupted fit of the run name from its periodic checkpoint, in its
        MLflow run. Runs before anything is created, so a refused fit changes no file and no MLflow record."""
        from adagrpo.callbacks.run_recorder import RUNNING

        experiment = sub.get("experiment") or "default"
        run_name = sub.get("run_name") or "fit"
        folder = record_dir(experiment, run_name)
        done, running_path = folder / "latest.json", folder / RUNNING
        running = json.loads(running_path.read_text()) if running_path.is_file() else None
        resume = bool(sub.get("resume")) or str(sub.get("ckpt_path") or "") == "last"
        if resume:
            ckpt = (running or {}).get("checkpoint")
            if not ckpt or not Path(ckpt).exists():
                why = (f"{running_path} names no checkpoint yet (killed before its first periodic save?)" if running
                       else f"no interrupted fit recorded ({running_path} does not exist)")
                raise RunConflict(f"cannot resume {experiment}/{run_name}: {why}; start it again with --force")
            log.warning("resuming %s/%s from %s (step %s)", experiment, run_name, ckpt, running.get("global_step"))
            sub["ckpt_path"] = ckpt
            self._continue_mlflow_run(sub, running.get("mlflow_run_id"))
            return
        if sub.get("force"):
            if running and running.get("mlflow_run_id") and running.get("tracking_uri"):
                from adagrpo.mlflow_store import mark_run

                mark_run(running["tracking_uri"], running["mlflow_run_id"], "KILLED",
                         {"adagrpo.note": "interrupted; replaced by a later fit with --force"})
            return
        if running is not None:
            raise RunConflict(
                f"{experiment}/{run_name} has an interrupted fit ({running_path}, step {running.get('global_step')}); "
                "continue it with --resume, replace it with --force, or choose another --run_name")
        if done.is_file():
            finished = json.loads(done.read_text()).get("finished", "?")
            raise RunConflict(
                f"{experiment}/{run_name} already has a recorded fit ({done}, finished {finished}); a new fit would "
                "replace its best.ckpt/last.ckpt. Pass --force to replace it, or choose another --run_name")

    @staticmethod
    def _mlflow_logger_configs(sub) -> list:  # noqa: ANN001
        trainer_cfg = sub.get("trainer")
        loggers = trainer_cfg.get("logger") if trainer_cfg is not None else None
        return [lg for lg in (loggers if isinstance(loggers, list) else [loggers])
                if lg is not None and not isinstance(lg, bool)
                and str(lg.get("class_path", "")).endswith("MLFlowLogger")]

    def _continue_mlflow_run(self, sub, run_id: str | None) -> None:  # noqa: ANN001
        for lg in self._mlflow_logger_configs(sub):
            if run_id and not lg.get("init_args").get("run_id"):
                lg.get("init_args")["run_id"] = run_id

    def prepare_mlflow_stores(self, sub) -> None:  # noqa: ANN001
        """Create each SQLite MLflow store and the experiment once, under a file lock, before the loggers exist
        (concurrent fits on a fresh store would otherwise race to create its schema)."""
        from adagrpo.mlflow_store import ensure_store

        for lg in self._mlflow_logger_configs(sub):
            init = lg.get("init_args")
            uri = init.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI")
            if uri:
                ensure_store(str(uri), init.get("experiment_name"), init.get("artifact_location"))

    def complete_run_config(self, subcommand: str, sub) -> None:  # noqa: ANN001
        """Fill in what the command line leaves to the CLI (in place): the record folder as the trainer's
        ``default_root_dir``, the recorded checkpoint of ``test``/``validate`` without ``--ckpt_path``, the
        ``test_last`` metric prefix, and the MLflow loggers' experiment, run name and (evaluation) run id."""
        experiment = sub.get("experiment") or "default"
        run_name = sub.get("run_name") or subcommand
        folder = record_dir(experiment, run_name)
        os.environ["ADAGRPO_EXPERIMENT"] = experiment
        os.environ["ADAGRPO_RECORD_DIR"] = str(folder)
        trainer_cfg = sub.get("trainer")
        if trainer_cfg is not None and trainer_cfg.get("default_root_dir") in (None, "", "."):
            trainer_cfg["default_root_dir"] = str(folder)
        record = read_record(experiment, run_name) if subcommand in ("test", "validate") else None
        which = sub.get("checkpoint") or "best"
        if which not in ("best", "last"):
            raise SystemExit(f"adagrpo: --checkpoint must be best or last, got {which!r}")
        if subcommand in ("test", "validate") and not sub.get("ckpt_path"):
            ckpt = (record or {}).get(f"{which}_copy") or (record or {}).get(which)
            if ckpt and Path(ckpt).exists():
                log.warning("no --ckpt_path given: evaluating the %s checkpoint of the latest fit of %s/%s: %s",
                            which, experiment, run_name, ckpt)
                sub["ckpt_path"] = ckpt
            elif not sub.get("allow_untrained"):
                raise SystemExit(f"adagrpo {subcommand}: no --ckpt_path given and no recorded fit of "
                                 f"{experiment}/{run_name} in {folder}; fit it first, pass --ckpt_path, or "
                                 "--allow_untrained true to evaluate an untrained model")
        if subcommand == "test" and which == "last":
            model_args = sub.get("model", {}).get("init_args")
            if model_args is not None and "test_prefix" in model_args:
                model_args["test_prefix"] = "test_last"
        # MLflow: experiment and run names from the CLI; evaluation logs into the fit's run.
        loggers = trainer_cfg.get("logger") if trainer_cfg is not None else None
        for lg in loggers if isinstance(loggers, list) else [loggers]:
            if lg is None or isinstance(lg, bool) or not str(lg.get("class_path", "")).endswith("MLFlowLogger"):
                continue
            init = lg.get("init_args")
            if init.get("experiment_name") in (None, "lightning_logs"):
                init["experiment_name"] = experiment
            if not init.get("run_name"):
                init["run_name"] = run_name
            if record and record.get("mlflow_run_id") and not init.get("run_id"):
                init["run_id"] = record["mlflow_run_id"]
            parent = os.environ.get(PARENT_RUN_ENV)
            if parent and not init.get("run_id"):  # a new run of an `adagrpo ablate`: nest it under the ablation
                init["tags"] = {**(init.get("tags") or {}), "mlflow.parentRunId": parent}


def run_lightning_cli(argv: list[str]) -> AdaGRPOCLI | None:
    global CURRENT
    CURRENT = None  # set once this command's trainer exists (an earlier in-process command's is not ours)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if argv[0] == "predict":  # recommendations to a file (adagrpo.predict), not Trainer.predict
        from adagrpo.predict import cmd_predict

        code = cmd_predict(argv[1:])
        if code:
            sys.exit(code)
        return None
    start = time.perf_counter()
    cli = AdaGRPOCLI(
        model_class=L.LightningModule,
        datamodule_class=L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        parser_kwargs={"parser_mode": "omegaconf"},
        save_config_callback=MLflowSaveConfig,
        save_config_kwargs={"overwrite": True, "save_to_log_dir": False},
        args=None if argv == sys.argv[1:] else argv,
        auto_configure_optimizers=False,
    )
    log.info("adagrpo %s finished in %.1f s", argv[0], time.perf_counter() - start)
    return cli
