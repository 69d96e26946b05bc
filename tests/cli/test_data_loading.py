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


def test_recipe_transfers_to_another_dataset_by_its_data_keys_alone():
    """The Beauty recipe with Industrial's source and SIDs (benchmarks/beauty_sft.py `industrial`): jsonargparse merges
    the init_args of a same-class override into the recipe's, so the Industrial SID configs set key_field explicitly
    (Beauty's index is keyed by a catalogue field, Industrial's by the raw item id)."""
    configs = Path(__file__).resolve().parents[2] / "configs"
    recipe = configs / "experiments" / "beauty_sft.yaml"
    assert load_datamodule(str(recipe)).sid_builder.key_field == "item_id"
    for sids in sorted((configs / "data" / "sids").glob("industrial_*.yaml")):
        source = configs / "data" / "sources" / "industrial.yaml"
        dm = load_datamodule(str(recipe), ["--data.init_args.sids", str(sids), "--data.init_args.source", str(source)])
        assert dm.sid_builder.key_field is None, sids.name
        assert type(dm.source).__name__ == "LCRecJson"


def test_missing_or_wrong_config_is_a_data_error_naming_the_file(tmp_path):
    from adagrpo.errors import DataError

    with pytest.raises(DataError, match="config file not found") as err:
        load_datamodule(str(tmp_path / "nope.yaml"))
    assert err.value.file == str(tmp_path / "nope.yaml")
    (tmp_path / "t.yaml").write_text("trainer:\n  max_steps: 1\n")
    with pytest.raises(DataError, match="neither a data config") as err:
        load_datamodule(str(tmp_path / "t.yaml"))
    assert err.value.file == str(tmp_path / "t.yaml")
