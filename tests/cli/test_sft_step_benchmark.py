"""benchmarks/sft_step.py's smoke mode: every engine trains from the same weights on the same batches, the
report has a row per engine with its ratio to the plain loop, and the losses agree (float32 engines exactly)."""

from __future__ import annotations

import re

from benchmarks import sft_step


def test_quick_run_reports_every_engine_against_the_plain_loop(capsys):
    text = sft_step.main(["--quick", "--out", "-", "--threads", "1"])
    assert "same initial weights for every engine: True" in text
    rows = {m.group(1): m.groups()[1:] for m in re.finditer(
        r"^(plain|project fp32|project)\s+(\d+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)x\s+([\d.]+)x", text, re.M)}
    assert set(rows) == set(sft_step.ENGINES)
    assert rows["plain"][3:] == ("1.00", "1.00")
    assert all(float(r[0]) > 0 and float(r[3]) > 0 for r in rows.values())
    losses = dict(re.findall(r"(plain|project fp32|project) [\d.]+ → ([\d.]+)", text))
    assert losses["project fp32"] == losses["plain"]  # compaction changes nothing in float32
    assert "1-min load average" in text
