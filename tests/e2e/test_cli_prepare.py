"""The `adagrpo` command: a fast, Lightning-free --help, and `adagrpo prepare` on synthetic and real data.

`prepare` runs in-process through `adagrpo.cli.main` (the console script's function) in a temporary working
directory: a subprocess per run would re-import Lightning each time. `--help` runs as a real subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from adagrpo.cli import main

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"


def subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.update(extra)
    return env


def run_main(argv: list[str]) -> int:
    """``main(argv)``'s exit code (it returns 0 or raises SystemExit with the code)."""
    try:
        return main(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)


# ------------------------------------------------------------------------------------------------ --help


def test_help_lists_prepare_without_importing_the_training_stack(tmp_path):
    # `adagrpo --help` stays fast by importing none of torch, lightning, mlflow or transformers (checked with
    # -X importtime, which lists every module the interpreter imported, instead of timing the call)
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "adagrpo", "--help"], capture_output=True,
                          text=True, cwd=tmp_path, env=subprocess_env(), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "prepare" in proc.stdout and "fit" in proc.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "adagrpo" in imported  # the listing is real
    heavy = sorted(m for m in imported if m.split(".")[0] in {"torch", "lightning", "mlflow", "transformers"})
    assert not heavy, f"`adagrpo --help` imported {heavy[:5]}"


def test_help_does_not_import_heavy_packages(tmp_path):
    code = (
        "import sys; from adagrpo.cli import main; rc = main(['--help']); "
        "heavy = sorted(m for m in ('lightning', 'transformers', 'mlflow', 'torch') if m in sys.modules); "
        "print('HEAVY', heavy); assert rc == 0"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          env=subprocess_env(), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout, proc.stdout


def test_unknown_command_exits_2(capsys):
    assert run_main(["frobnicate"]) == 2
    assert "frobnicate" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ prepare


def test_prepare_synthetic(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ADAGRPO_CACHE", str(tmp_path / "cache"))
    code = run_main([
        "prepare", "--config", str(CONFIGS / "data" / "synthetic.yaml"),
        "--data.init_args.source.init_args.num_users", "300",
        "--data.init_args.source.init_args.num_items", "150",
    ])
    out = capsys.readouterr().out
    assert code == 0, out
    lines = {ln.split()[0]: ln.split()[1:] for ln in out.splitlines() if ln.strip() and not ln.startswith(" ")}
    assert lines["users"] == ["300"]
    assert lines["items"] == ["150"]
    assert int(lines["interactions"][0]) >= 300 * 5  # every synthetic user has at least min_length=5 clicks
    table = tmp_path / "runs" / "prepared" / "synthetic" / "sid_table.tsv"
    assert table.is_file()
    rows = table.read_text().splitlines()
    assert rows[0].startswith("item_index\titem_id\tsid")
    assert len(rows) == 1 + 150
    assert len({r.split("\t")[2] for r in rows[1:]}) == 150  # every item has its own SID
    index = json.loads((tmp_path / "runs" / "prepared" / "synthetic" / "synthetic.index.json").read_text())
    assert len(index) == 150
    assert list((tmp_path / "cache").glob("sids-*.pt"))  # the cache went where ADAGRPO_CACHE says


def test_prepare_json_and_out(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = run_main([
        "prepare", "--config", str(CONFIGS / "data" / "synthetic.yaml"), "--json", "--out", str(tmp_path / "o"),
        "--data.init_args.source.init_args.num_users", "120",
        "--data.init_args.source.init_args.num_items", "80",
    ])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["stats"]["users"] == 120 and report["stats"]["items"] == 80
    assert report["val_targets"] == 120 and report["test_targets"] == 120
    assert Path(report["outputs"]["sid_table"]) == tmp_path / "o" / "sid_table.tsv"
    assert (tmp_path / "o" / "sid_table.tsv").is_file()


@pytest.mark.realdata
def test_prepare_beauty(data_root, beauty_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ADAGRPO_DATA_ROOT", str(data_root))
    # The shipped collision-free index instead of building RQ-KMeans SIDs keeps this test to a few seconds;
    # the dataset part of beauty.yaml (what the numbers check) is unchanged.
    code = run_main([
        "prepare", "--config", str(CONFIGS / "data" / "beauty.yaml"), "--json",
        "--data.init_args.sids", str(CONFIGS / "data" / "sids" / "beauty_rkmeans_zcr.yaml"),
    ])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(captured.out)
    assert report["dataset"] == "beauty"
    assert (report["stats"]["users"], report["stats"]["items"], report["stats"]["interactions"]) == (
        22363, 12101, 198502)
    assert report["sids"]["collision_rate"] == 0.0 and report["sid_depth"] == 4
    assert (tmp_path / "runs" / "prepared" / "beauty" / "sid_table.tsv").is_file()


@pytest.mark.realdata
@pytest.mark.slow
def test_prepare_beauty_default_config(data_root, beauty_dir, tmp_path, monkeypatch, capsys):
    """beauty.yaml as shipped: RQ-KMeans over 64-d text embeddings, 3 × 256 codes (about 9 s)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ADAGRPO_DATA_ROOT", str(data_root))
    code = run_main(["prepare", "--config", str(CONFIGS / "data" / "beauty.yaml"), "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(captured.out)
    stats = report["stats"]
    assert (stats["users"], stats["items"], stats["interactions"]) == (22363, 12101, 198502)
    assert report["codebook_sizes"][:3] == [256, 256, 256]
    assert report["sids"]["method"] == "rq-kmeans" and report["sids"]["embedding_dim"] == 64
    table = tmp_path / "runs" / "prepared" / "beauty" / "sid_table.tsv"
    rows = table.read_text().splitlines()
    assert len(rows) == 1 + 12101
    assert len({r.split("\t")[2] for r in rows[1:]}) == 12101  # bijective after dedup


def test_prepare_bad_data_path_exits_2_naming_the_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    empty_root = tmp_path / "no_data_here"
    monkeypatch.setenv("ADAGRPO_DATA_ROOT", str(empty_root))
    code = run_main(["prepare", "--config", str(CONFIGS / "data" / "beauty.yaml")])
    err = capsys.readouterr().err
    assert code == 2  # the project's own errors end a command with exit code 2 and one message
    assert str(empty_root / "amazon_beauty_2014") in err
    assert "not found" in err
    assert not (tmp_path / "runs").exists()  # nothing written


def test_prepare_missing_config_fails(tmp_path, monkeypatch, capsys):
    # the project's error exit (2) with one line naming the file, as for every other bad input
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(["prepare", "--config", str(tmp_path / "nope.yaml")])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("adagrpo prepare: ") and str(tmp_path / "nope.yaml") in err[0]
    assert "config file not found" in err[0]
