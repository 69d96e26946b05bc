"""A Markdown table of the calibration reports in benchmarks/results/calibration/*.json (``bash
benchmarks/calibration.sh`` writes them): ``python -m benchmarks.calibration_table``."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

FOLDER = Path(__file__).resolve().parent / "results" / "calibration"
COLUMNS = [("imitator_true_hr", "ideal imitator"), ("sft_true_hr", "SFT"), ("reward_true_hr", "reward as rec."),
           ("policy_concordance", "policy conc."), ("reward_concordance", "reward conc."),
           ("concordance_gap", "reward − policy"), ("oracle_gate_rate", "oracle gate admits"),
           ("reward_both_pass", "AdaGRPO gates pass")]


def best_stratum(strata: list[dict]) -> str:
    """The pre-outcome stratum where the reward beats the policy by the most (its gap and interval)."""
    rows = [r for r in strata if math.isfinite(r.get("gap", math.nan))]
    if not rows:
        return "–"
    r = max(rows, key=lambda r: r["gap"])
    return f"{r['family']}: {r['stratum']} ({r['gap']:+.3f} ± {r['gap_ci']:.3f}, {r['users']} users)"


def table(folder: Path = FOLDER) -> str:
    lines = ["| setting | " + " | ".join(c for _, c in COLUMNS) + " | best pre-outcome stratum for the reward |",
             "|---" * (len(COLUMNS) + 2) + "|"]
    for path in sorted(folder.glob("*.json")):
        rep = json.loads(path.read_text())
        s = rep["summary"]
        cells = []
        for key, _ in COLUMNS:
            v = s.get(key, math.nan)
            cell = f"{v:+.3f}" if key == "concordance_gap" else f"{v:.3f}"
            if key == "concordance_gap" and math.isfinite(s.get("concordance_gap_ci", math.nan)):
                cell += f" ± {s['concordance_gap_ci']:.3f}"
            cells.append(cell if math.isfinite(v) else "–")
        lines.append(f"| {path.stem} | " + " | ".join(cells) + f" | {best_stratum(rep.get('strata', []))} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(Path(sys.argv[1]) if len(sys.argv) > 1 else FOLDER))
