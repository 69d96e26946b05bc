"""benchmarks/strata_paired.py: per-seed paired differences per stratum from `adagrpo analyze` outputs."""

from __future__ import annotations

import json

import pytest

from benchmarks.strata_paired import main


def write(path, policies: dict[str, list[float]], users=(10, 30)):
    rows = [{"stratum": s, "users": u, **{name: hrs[i] for name, hrs in policies.items()}}
            for i, (s, u) in enumerate(zip(("noisy", "discriminative"), users))]
    path.write_text(json.dumps(rows))
    return str(path)


def test_pairs_seeds_across_files(tmp_path, capsys):
    a = write(tmp_path / "a.json", {"sft": [0.5, 0.5], "base-s0": [0.4, 0.6], "base-s1": [0.5, 0.7]})
    b = write(tmp_path / "b.json", {"sft": [0.5, 0.5], "ada-s0": [0.4, 0.8], "ada-s1": [0.6, 0.8]})
    assert main([a, b, "--paired", "base"]) == 0
    out = capsys.readouterr().out
    ada = next(line for line in out.splitlines() if line.startswith("ada"))
    # noisy: 0.0 and +0.1 → +0.05 ± 0.0707; discriminative: +0.2 and +0.1 → +0.15 ± 0.0707
    assert ada.split()[1:] == ["2", "+0.050±0.071", "+0.150±0.071"], ada  # spreads to 2 significant figures
    assert "noisy (10)" in out and "discriminative (30)" in out


def test_files_with_other_strata_are_refused(tmp_path, capsys):
    a = write(tmp_path / "a.json", {"sft": [0.5, 0.5], "x-s0": [0.4, 0.6]})
    b = write(tmp_path / "b.json", {"sft": [0.5, 0.5], "y-s0": [0.4, 0.6]}, users=(11, 29))
    assert main([a, b]) == 1
    assert f"{b}: strata" in capsys.readouterr().err


def test_a_policy_with_conflicting_values_is_refused(tmp_path, capsys):
    a = write(tmp_path / "a.json", {"sft": [0.5, 0.5]})
    b = write(tmp_path / "b.json", {"sft": [0.5, 0.4]})
    assert main([a, b]) == 1
    assert "'sft' also appears" in capsys.readouterr().err


@pytest.mark.parametrize("content", ["[]", "{not json"])
def test_bad_files_fail_cleanly(tmp_path, capsys, content):
    path = tmp_path / "bad.json"
    path.write_text(content)
    assert main([str(path)]) == 1
    assert f"strata_paired: {path}: not" in capsys.readouterr().err
