"""``load_datamodule`` on an experiment config whose ``data:`` is an inline block: nested config paths resolve
relative to the experiment file (as LightningCLI resolves them) and command-line overrides apply."""

from __future__ import annotations

from pathlib import Path

import pytest

from adagrpo.data_loading import load_datamodule


@pytest.fixture()
def experiment(tmp_path: Path) -> Path:
    (tmp_path / "data" / "sources").mkdir(parents=True)
    (tmp_path / "data" / "sources" / "world.yaml").write_text(
        "class_path: adagrpo.datamodules.SyntheticSource\ninit_args:\n  num_users: 50\n  num_items: 40\n")
    (tmp_path / "experiments").mkdir()
    exp = tmp_path / "experiments" / "exp.yaml"
    exp.write_text("data:\n  class_path: adagrpo.datamodules.SeqRecDataModule\n  init_args:\n"
                   "    source: ../data/sources/world.yaml\n    max_history: 7\n    max_eval_samples: 11\n")
    return exp


def test_inline_data_block_resolves_paths_next_to_the_experiment(experiment, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path.parent)  # somewhere the relative path would not resolve
    dm = load_datamodule(str(experiment))
    assert type(dm.source).__name__ == "SyntheticSource" and dm.source.world_args["num_users"] == 50
    assert dm.max_history == 7 and dm.max_eval_samples == 11


def test_inline_data_block_takes_overrides(experiment):
    dm = load_datamodule(str(experiment), ["--data.init_args.max_eval_samples", "3"])
    assert dm.max_eval_samples == 3 and dm.max_history == 7
