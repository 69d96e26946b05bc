"""`adagrpo compare` and `adagrpo analyze` end on the project's own errors (no MLflow store, experiment or variant; an
unreadable or missing checkpoint; a missing data file) as fit/test do: one line naming the thing at fault, exit code
2, nothing written; ``ADAGRPO_DEBUG=1`` shows the traceback instead."""

from __future__ import annotations

from pathlib import Path

import pytest
from reliability_helpers import CONFIGS, run

from adagrpo.cli import main

HINT = "(set ADAGRPO_DEBUG=1 to see the traceback)"


def one_line(err: str, command: str) -> str:
    """The error line of ``err`` (the message and the hint, nothing else: no traceback, no log lines)."""
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 2 and lines[1] == HINT, err
    assert lines[0].startswith(f"adagrpo {command}: ") and "Traceback" not in err, err
    return lines[0]


def tiny_data(path: Path, source: str | None = None) -> Path:
    """A data config at ``path``: the synthetic world at the tiny size of the CLI tests, or ``source``."""
    path.write_text(
        "class_path: adagrpo.datamodules.SeqRecDataModule\n"
        "init_args:\n"
        + (source or "  source:\n"
                     "    class_path: adagrpo.datamodules.SyntheticSource\n"
                     "    init_args: {num_users: 150, num_items: 100, seed: 0}\n")
        + f"  sids: {CONFIGS / 'data' / 'sids' / 'text_small.yaml'}\n"
        "  train_mode: prompts\n")
    return path


def test_compare_errors_exit_2_with_one_line(world, capsys):
    out = world / "cmp"
    rc, err = run(["compare", "--experiment", "synthetic", "--tracking-uri", f"sqlite:///{world / 'none.db'}",
                   "--out", str(out), "--no-mlflow"], capsys)
    assert rc == 2
    none = f"sqlite:///{world / 'none.db'}"
    assert one_line(err, "compare") == f"adagrpo compare: CompareError: no MLflow store at {none} (no such file)"
    assert not out.exists()


def test_compare_error_with_debug_raises(world, monkeypatch):
    monkeypatch.setenv("ADAGRPO_DEBUG", "1")
    from adagrpo.compare import CompareError

    with pytest.raises(CompareError, match="no MLflow store"):
        main(["compare", "--experiment", "x", "--tracking-uri", f"sqlite:///{world / 'none.db'}", "--no-mlflow"])


def test_analyze_errors_exit_2_with_one_line(world, capsys, monkeypatch):
    data, out = tiny_data(world / "tiny_rl.yaml"), world / "strata"
    garbage = world / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    base = ["analyze", "--data", str(data), "--reward", str(world / "reward.ckpt"), "--out", str(out)]
    rc, err = run([*base, "--sft", str(garbage)], capsys)
    assert rc == 2
    line = one_line(err, "analyze")
    assert line.startswith("adagrpo analyze: IncompatibleCheckpoint: policy checkpoint") and str(garbage) in line
    rc, err = run([*base, "--sft", str(world / "missing.ckpt")], capsys)
    assert rc == 2 and f"not found: {world / 'missing.ckpt'}" in one_line(err, "analyze")
    missing = tiny_data(world / "missing.yaml", "  source:\n"
                               "    class_path: adagrpo.datamodules.SasRecText\n"
                               f"    init_args: {{path: {world / 'no_such.txt'}}}\n")
    rc, err = run(["analyze", "--data", str(missing), "--sft", str(garbage), "--reward", str(garbage),
                   "--out", str(out)], capsys)
    assert rc == 2
    line = one_line(err, "analyze")
    assert line.startswith("adagrpo analyze: DataError: ") and str(world / "no_such.txt") in line
    assert not out.exists()
    # the data config itself missing, or not a data config: the same one line naming the file, exit 2
    rc, err = run(["analyze", "--data", str(world / "no_such.yaml"), "--sft", str(garbage), "--reward", str(garbage),
                   "--out", str(out)], capsys)
    assert rc == 2
    line = one_line(err, "analyze")
    assert line.startswith("adagrpo analyze: DataError: ") and "config file not found" in line
    assert str(world / "no_such.yaml") in line
    (world / "not_data.yaml").write_text("trainer:\n  max_steps: 1\n")
    rc, err = run(["analyze", "--data", str(world / "not_data.yaml"), "--sft", str(garbage), "--reward",
                   str(garbage), "--out", str(out)], capsys)
    assert rc == 2 and str(world / "not_data.yaml") in one_line(err, "analyze") and not out.exists()

    monkeypatch.setenv("ADAGRPO_DEBUG", "1")
    from adagrpo.lightning_modules.checkpoint_io import IncompatibleCheckpoint

    with pytest.raises(IncompatibleCheckpoint, match="garbage.ckpt"):
        main(["analyze", "--data", str(data), "--sft", str(garbage), "--reward", str(garbage), "--out", str(out)])
