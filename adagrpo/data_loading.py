"""Instantiate a DataModule from a data config or an experiment config's ``data:`` entry (used by every command
that reads data outside LightningCLI: prepare, calibrate, predict, analyze)."""

from __future__ import annotations

import contextlib
from pathlib import Path


def load_datamodule(config: str, overrides: list[str] | None = None):
    """Instantiate the DataModule described by a data config (``configs/data/*.yaml``) or by the
    ``data:`` entry of an experiment config."""
    import yaml
    from jsonargparse import ArgumentParser

    from adagrpo.datamodules.errors import missing_file
    from adagrpo.datamodules.sequence import SeqRecDataModule
    from adagrpo.errors import DataError
    from adagrpo.resources import read_config

    path = Path(config)
    if not path.is_file():
        raise missing_file(path, "config file not found")
    top = read_config(path) or {}  # an experiment variant's data: may come from its base: config
    parser = ArgumentParser(parser_mode="omegaconf", exit_on_error=False)
    parser.add_subclass_arguments(SeqRecDataModule, "data", required=True)
    if isinstance(top, dict) and "class_path" in top:
        args = ["--data", str(path)]
    elif isinstance(top, dict) and "data" in top:
        data = top["data"]
        if isinstance(data, str):
            args = ["--data", str((path.parent / data).resolve())]
        else:  # an inline block: its nested config paths are relative to the experiment file, as in LightningCLI
            with contextlib.chdir(path.parent):
                cfg = parser.parse_string(yaml.safe_dump({"data": data}))
            if overrides:
                cfg = parser.parse_args(list(overrides), namespace=cfg)
            return parser.instantiate_classes(cfg).data
    else:
        raise DataError("neither a data config (class_path: …) nor an experiment config with a `data:` entry",
                        file=path)
    cfg = parser.parse_args(args + list(overrides or []))
    return parser.instantiate_classes(cfg).data
