"""The package as users install it: one ``adagrpo`` namespace, configs shipped inside it.

* a project with its own ``callbacks/`` / ``datamodules/`` packages first on ``sys.path`` (common in
  Lightning projects) still runs the CLI;
* a wheel (not an editable install) carries only ``adagrpo`` plus its configs, and runs ``prepare`` and a
  config check from an empty directory.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update({"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}, **extra)
    return env


def _foreign_project(root: Path) -> None:
    for name in ("callbacks", "datamodules", "lightning_modules"):
        (root / name).mkdir()
        (root / name / "__init__.py").write_text(f"raise ImportError('the user project\\'s own {name} package')\n")


def test_foreign_packages_first_on_path_do_not_shadow_ours(tmp_path):
    _foreign_project(tmp_path)
    # `python -m` puts the working directory first on sys.path: the user's packages shadow any top-level ones.
    proc = subprocess.run([sys.executable, "-m", "adagrpo", "fit", "--config", "configs/experiments/adagrpo.yaml",
                           "--print_config"], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "class_path: adagrpo.callbacks.RunRecorder" in proc.stdout
    assert "class_path: adagrpo.lightning_modules.PolicyDifficultyGate" in proc.stdout
    code = "from adagrpo.callbacks import Gate; import adagrpo.callbacks as c; print(c.__file__)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()).resolve() == (REPO / "callbacks" / "__init__.py").resolve()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(out), str(REPO)], capture_output=True, text=True, timeout=600, env=_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    (whl,) = out.glob("adagrpo-*.whl")
    return whl


def test_wheel_holds_one_namespace_and_the_configs(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert tops == {"adagrpo"}, tops
    for must in ("adagrpo/callbacks/gates.py", "adagrpo/lightning_modules/grpo.py", "adagrpo/datamodules/synthetic.py",
                 "adagrpo/configs/experiments/adagrpo.yaml", "adagrpo/configs/data/sources/synthetic.yaml",
                 "adagrpo/configs/trainer/fsdp.yaml"):
        assert must in names, must
    shipped = {n.removeprefix("adagrpo/") for n in names if n.endswith(".yaml")}
    in_repo = {str(p.relative_to(REPO)) for p in (REPO / "configs").rglob("*.yaml")}
    assert shipped == in_repo


@pytest.mark.slow
def test_wheel_install_runs_prepare_and_config_check_from_an_empty_directory(wheel, tmp_path):
    site = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site),
                           str(wheel)], capture_output=True, text=True, timeout=600, env=_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    work = tmp_path / "empty"
    work.mkdir()
    _foreign_project(work)
    env = _env(PYTHONPATH=str(site), ADAGRPO_CACHE=str(tmp_path / "cache"))
    where = subprocess.run([sys.executable, "-c", "import adagrpo.callbacks as c, adagrpo.resources as r; "
                            "print(c.__file__); print(r.config_root())"], cwd=work, env=env, capture_output=True,
                           text=True)
    assert where.returncode == 0, where.stderr
    assert all(line.startswith(str(site)) for line in where.stdout.split()), where.stdout
    proc = subprocess.run([sys.executable, "-m", "adagrpo", "prepare", "--config", "configs/data/synthetic.yaml",
                           "--data.init_args.source.init_args.num_users", "300",
                           "--data.init_args.source.init_args.num_items", "150"],
                          cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "users          300" in proc.stdout
    assert (work / "runs" / "prepared" / "synthetic" / "sid_table.tsv").is_file()
    proc = subprocess.run([sys.executable, "-m", "adagrpo", "fit", "--config", "configs/experiments/sft.yaml",
                           "--print_config"], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "adagrpo.lightning_modules.SFTModule" in proc.stdout
