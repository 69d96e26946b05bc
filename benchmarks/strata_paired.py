"""Per-seed paired differences per stratum, from one or more ``strata.json`` files of ``adagrpo analyze``.

Policies named ``<variant>-s<seed>`` (as ``adagrpo ablate`` names runs) are grouped by variant, and each
variant's HR@K in every stratum is compared with a baseline variant seed by seed (mean ± std over the seeds both
have), exactly as ``adagrpo compare --paired`` does for whole runs. Every file must come from the same SFT
checkpoint, reward model and users (same strata); the ``sft`` column pairs with every seed.

    python benchmarks/strata_paired.py runs/synthetic-study/strata_final_a/strata.json \\
        runs/synthetic-study/strata_final_b/strata.json --paired continue_sft
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from adagrpo.compare import CompareError, RunRow, format_table, paired

NON_POLICY = ("stratum", "users")


def load_rows(paths: list[Path]) -> tuple[list[RunRow], list[tuple[str, int]]]:
    """One :class:`RunRow` per policy column (values: stratum → HR@K) and the strata with their user counts."""
    strata: list[tuple[str, int]] | None = None
    columns: dict[str, dict[str, float]] = {}
    for path in paths:
        try:
            table = json.loads(path.read_text())
        except ValueError as err:
            raise CompareError(f"{path}: not JSON ({err})") from None
        if not isinstance(table, list) or not table or not all(isinstance(r, dict) and "stratum" in r for r in table):
            raise CompareError(f"{path}: not a strata table of `adagrpo analyze` (a list of rows with 'stratum')")
        these = [(r["stratum"], int(r["users"])) for r in table]
        if strata is not None and these != strata:
            raise CompareError(f"{path}: strata {these} differ from the first file's {strata} "
                               "(another SFT checkpoint, reward model or user set)")
        strata = these
        for name in (k for k in table[0] if k not in NON_POLICY):
            values = {r["stratum"]: float(r[name]) for r in table}
            if name in columns and columns[name] != values:
                raise CompareError(f"{path}: policy {name!r} also appears in an earlier file with other values")
            columns[name] = values
    rows = [RunRow.named(name, label=name, values=values) for name, values in columns.items()]
    return rows, strata or []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("strata", nargs="+", type=Path, help="strata.json files of `adagrpo analyze`")
    parser.add_argument("--paired", action="append", default=[], metavar="VARIANT",
                        help="baseline variant (repeatable; default: sft)")
    args = parser.parse_args(argv)
    try:
        rows, strata = load_rows(args.strata)
        keys = [(f"{name} ({users})", name) for name, users in strata]
        for baseline in args.paired or ["sft"]:
            diffs = [e for e in paired(rows, baseline, [k for _, k in keys]) if e["runs"] > 0]
            print(f"HR per stratum, per-seed differences (variant − {baseline}), mean ± std over seeds")
            print(format_table(diffs, keys, signed=True) + "\n")
    except (CompareError, OSError, ValueError, KeyError) as err:
        print(f"strata_paired: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
