"""The project's own subcommands (everything that is not LightningCLI's fit/validate/test/predict).

Each entry maps a name to ``(one-line description, function(argv) -> exit code)``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path


def load_datamodule(config: str, overrides: list[str] | None = None):
    """Instantiate the DataModule described by a data config (``configs/data/*.yaml``) or by the
    ``data:`` entry of an experiment config."""
    import yaml
    from jsonargparse import ArgumentParser

    from datamodules.sequence import SeqRecDataModule

    path = Path(config)
    if not path.exists():
        raise SystemExit(f"adagrpo: config file not found: {config}")
    top = yaml.safe_load(path.read_text()) or {}
    parser = ArgumentParser(parser_mode="omegaconf", exit_on_error=False)
    parser.add_subclass_arguments(SeqRecDataModule, "data", required=True)
    if isinstance(top, dict) and "class_path" in top:
        args = ["--data", str(path)]
    elif isinstance(top, dict) and "data" in top:
        data = top["data"]
        if isinstance(data, str):
            args = ["--data", str((path.parent / data).resolve())]
        else:
            cfg = parser.parse_string(yaml.safe_dump({"data": data}))
            return parser.instantiate_classes(cfg).data
    else:
        raise SystemExit(f"adagrpo: {config} is neither a data config (class_path: …) nor has a `data:` entry")
    cfg = parser.parse_args(args + list(overrides or []))
    return parser.instantiate_classes(cfg).data


def cmd_prepare(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="adagrpo prepare",
        description="Read a dataset, validate it, build semantic IDs and the catalogue trie; print statistics "
        "and the SID report, and write the SID table.",
    )
    parser.add_argument("--config", required=True, help="a data config, e.g. configs/data/synthetic.yaml")
    parser.add_argument("--out", default=None, help="where to write sid_table.tsv and the index "
                        "(default: runs/prepared/<dataset>)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args, overrides = parser.parse_known_args(argv)
    from datamodules.errors import ConfigError, DataError

    start = time.perf_counter()
    try:
        dm = load_datamodule(args.config, overrides)
        report = dm.report()
    except (DataError, ConfigError) as err:
        print(f"adagrpo prepare: {err}", file=sys.stderr)
        return 1
    out = Path(args.out or Path("runs") / "prepared" / report["dataset"])
    paths = dm.write_outputs(out)
    report["outputs"] = {k: str(v) for k, v in paths.items()}
    report["seconds"] = round(time.perf_counter() - start, 2)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_prepare_report(report))
    return 0


def format_prepare_report(r: dict) -> str:
    s, sid = r["stats"], r["sids"]
    lines = [
        f"dataset        {r['dataset']}",
        f"users          {s['users']}",
        f"items          {s['items']}",
        f"interactions   {s['interactions']}",
        f"mean length    {s['mean_length']:.2f}  (min {s['min_length']}, max {s['max_length']})",
        f"density        {s['density']:.5f}",
        f"popularity Gini {s['popularity_gini']:.3f}",
        "",
        f"semantic IDs   {sid.get('method', '?')}"
        + (f" over {sid['embeddings']} ({sid['embedding_dim']}-d)" if "embeddings" in sid else "")
        + (f" from {sid['index']}" if "index" in sid else ""),
        f"  levels       {r['sid_depth']}  codebook sizes {r['codebook_sizes']}"
        + ("  (last = dedup level)" if sid.get("dedup_level_added") else ""),
        f"  collisions   rate {sid['collision_rate']:.4f} before dedup "
        f"({sid['distinct_sids']} distinct SIDs for {sid['items']} items, largest group {sid['max_collision']})",
        "  bijective    yes (every item has its own SID)",
    ]
    for level, lv in enumerate(sid["levels"]):
        lines.append(
            f"  level {level}      used {lv['used']}/{lv['codebook_size']} codes "
            f"(utilisation {lv['utilisation']:.3f}), perplexity {lv['perplexity']:.1f}"
        )
    lines += [
        f"  vocabulary   {r['vocab_size']} tokens; trie {r['trie_bytes'] / 1e6:.2f} MB",
        f"  cache        {'hit' if sid.get('cache_hit') else 'built'}: {sid.get('cache', '-')}",
        "",
        f"splits         {r['sft_windows']} SFT windows, {r['rl_prompts']} RL prompts, "
        f"{r['val_targets']} validation and {r['test_targets']} test targets",
    ]
    lines += [f"wrote          {k}: {v}" for k, v in r.get("outputs", {}).items()]
    lines.append(f"took           {r['seconds']} s")
    return "\n".join(lines)


COMMANDS: dict[str, tuple[str, Callable[[list[str]], int]]] = {
    "prepare": ("validate a dataset, build semantic IDs and the trie, print statistics", cmd_prepare),
}
