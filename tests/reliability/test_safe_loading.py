"""Loading files runs no pickled code: a crafted pickle given as the SFT start (``init_from``), the reward
checkpoint, ``--ckpt_path``, ``adagrpo export --checkpoint``, ``adagrpo analyze``, or dropped into the cache is
refused (or rebuilt) with a message naming the file, and its payload never runs. A truncated checkpoint's error
names the file. Nothing in the repository unpickles without ``weights_only`` outside the documented allow-list."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

from adagrpo import datamodules
from adagrpo.cli import main
from adagrpo.datamodules.cache import key_hash
from adagrpo.lightning_modules.analysis import load_policy
from adagrpo.lightning_modules.checkpoint_io import IncompatibleCheckpoint, load_checkpoint
from adagrpo.lightning_modules.grpo import GRPOModule
from adagrpo.lightning_modules.reward import OracleReward, TorchReward, TrainedReward
from adagrpo.lightning_modules.sft import SFTModule

REPO = Path(__file__).resolve().parents[2]


class Payload:
    """Unpickling this runs ``open(marker, 'w').write('ran')``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


@pytest.fixture
def crafted(tmp_path) -> tuple[Path, Path]:
    """A file that looks like an adagrpo checkpoint (a dict with the 'adagrpo' record) and carries a payload."""
    marker = tmp_path / "payload_ran"
    path = tmp_path / "crafted.ckpt"
    torch.save({"adagrpo": {"module": "RewardModelModule", "policy": {"class": "LlamaPolicy"}, "x": Payload(marker)},
                "state_dict": {}}, path)
    return path, marker


def _refused(err: BaseException, path: Path) -> None:
    assert str(path) in str(err), err
    assert "refused" in str(err) and "pickled" in str(err), err


def test_loader_refuses_payload(crafted):
    path, marker = crafted
    with pytest.raises(IncompatibleCheckpoint) as err:
        load_checkpoint(path)
    _refused(err.value, path)
    assert not marker.exists()


def test_init_from_runs_no_payload(rl_dm, crafted):
    path, marker = crafted
    module = GRPOModule(init_from=str(path), reward=OracleReward(), num_generations=4)
    module.attach(rl_dm)
    with pytest.raises(IncompatibleCheckpoint) as err:
        module.configure_model()
    _refused(err.value, path)
    assert "init_from" in str(err.value)
    assert not marker.exists()


def test_reward_checkpoint_runs_no_payload(rl_dm, crafted):
    path, marker = crafted
    with pytest.raises(IncompatibleCheckpoint) as err:
        TrainedReward(str(path)).attach(rl_dm)
    _refused(err.value, path)
    assert not marker.exists()


def test_pickled_reward_module_needs_trust(rl_dm, tmp_path):
    marker = tmp_path / "payload_ran"
    path = tmp_path / "reward.pt"
    torch.save(Payload(marker), path)
    with pytest.raises(IncompatibleCheckpoint, match="trust_pickle") as err:
        TorchReward(path=str(path)).attach(rl_dm)
    assert str(path) in str(err.value)
    assert not marker.exists()


def test_ckpt_path_check_runs_no_payload(tiny_world_dm, crafted):
    path, marker = crafted
    with pytest.raises(IncompatibleCheckpoint) as err:
        SFTModule().check_checkpoint_file(str(path), tiny_world_dm)
    _refused(err.value, path)
    assert "--ckpt_path" in str(err.value)
    assert not marker.exists()


def test_analyze_policy_runs_no_payload(tiny_world_dm, crafted):
    path, marker = crafted
    with pytest.raises(IncompatibleCheckpoint) as err:
        load_policy(str(path), tiny_world_dm)
    _refused(err.value, path)
    assert not marker.exists()


def test_export_cli_runs_no_payload(crafted, tmp_path, capsys):
    path, marker = crafted
    with pytest.raises(SystemExit) as exit_:
        main(["export", "--checkpoint", str(path), "--out", str(tmp_path / "out")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert str(path) in err and "refused" in err, err
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_cache_entry_with_payload_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("ADAGRPO_CACHE", str(tmp_path / "cache"))

    def dm():
        return datamodules.SeqRecDataModule(
            source=datamodules.SyntheticSource(num_users=60, num_items=40, max_length=12, seed=3),
            sids=datamodules.RQKMeansSids(embeddings=datamodules.TextEmbeddings(dim=8), levels=2, codebook_size=8,
                                          iters=5),
            max_history=4, use_cache=True)

    first = dm()
    first.prepare()
    entry = Path(first.sids.report["cache"])
    assert entry.is_file() and not first.sids.report["cache_hit"]
    marker = tmp_path / "payload_ran"
    torch.save({"codes": Payload(marker), "sizes": [1], "report": {}}, entry)  # same name: a planted entry
    again = dm()
    again.prepare()
    assert not marker.exists()
    assert not again.sids.report["cache_hit"]  # rebuilt, not trusted
    assert torch.equal(again.sids.codes, first.sids.codes)
    # An entry that loads but holds something else (no "report") is rebuilt too, not a KeyError.
    torch.save({"codes": first.sids.codes}, entry)
    third = dm()
    third.prepare()
    assert not third.sids.report["cache_hit"] and torch.equal(third.sids.codes, first.sids.codes)
    assert key_hash({"a": 1}) == key_hash({"a": 1})


def test_truncated_checkpoint_names_the_file(sft_ckpt, tmp_path):
    data = Path(sft_ckpt).read_bytes()
    for name, blob in (("truncated.ckpt", data[: len(data) // 2]), ("empty.ckpt", b""), ("text.ckpt", b"hello")):
        path = tmp_path / name
        path.write_bytes(blob)
        with pytest.raises(IncompatibleCheckpoint) as err:
            load_checkpoint(path, what="SFT checkpoint (model.init_args.init_from)")
        assert str(path) in str(err.value) and "init_from" in str(err.value), err.value
        assert "Traceback" not in str(err.value)


def test_project_checkpoints_load_weights_only(sft_ckpt):
    ckpt = load_checkpoint(sft_ckpt)
    assert ckpt["adagrpo"]["module"] == "SFTModule" and ckpt["state_dict"]


ALLOWED = {  # file → why it may unpickle arbitrary objects (its docstring is the documented allow-list)
    "lightning_modules/checkpoint_io.py": "load_trusted_pickle: TorchReward(trust_pickle=True), the user's own file",
}
UNSAFE = re.compile(r"weights_only\s*=\s*False")
SKIP_DIRS = {".git", ".venv", "venv", "runs", "mlruns", "node_modules", "__pycache__", ".adagrpo_cache",
             "build", "dist"}  # build/lib: setuptools copies of the project's own files


def unsafe_loads(root: Path) -> list[str]:
    """``path:line`` of every text file under ``root`` that names an unpickling load (what ``grep -rn`` finds),
    outside virtual environments, run outputs and caches."""
    hits = []
    for dirpath, dirnames, files in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS and not d.endswith(".egg-info")]
        for name in files:
            path = Path(dirpath) / name
            if path.suffix not in (".py", ".sh", ".md", ".yaml", ".yml", ".toml", ".txt", ".cfg", ".ipynb"):
                continue
            for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                if UNSAFE.search(line):
                    hits.append(f"{path.relative_to(root)}:{n}")
    return hits


def test_no_unpickling_load_outside_the_allow_list():
    hits = unsafe_loads(REPO)
    unexpected = [h for h in hits if h.split(":")[0] not in ALLOWED]
    assert not unexpected, f"unpickling loads outside the allow-list {sorted(ALLOWED)}: {unexpected}"
    # the allow-listed loader itself is found (the scan looks in the right place), and it is the documented one
    assert any(h.startswith("lightning_modules/checkpoint_io.py:") for h in hits)
    doc = (REPO / "lightning_modules" / "checkpoint_io.py").read_text()
    assert "Allow-list" in doc and "load_trusted_pickle" in doc


def test_the_scan_finds_an_unpickling_load_anywhere(tmp_path):
    (tmp_path / "tests").mkdir()
    # (the flag is split here so that this file itself holds no such load)
    (tmp_path / "tests" / "test_x.py").write_text("import torch\nx = torch.load('a.ckpt', weights_only = " + "False)\n")
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv" / "lib.py").write_text("torch.load(p, weights_only=" + "False)\n")  # not the project's
    assert unsafe_loads(tmp_path) == ["tests/test_x.py:2"]
