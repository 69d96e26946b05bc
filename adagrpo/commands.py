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

from adagrpo.data_loading import load_datamodule  # noqa: F401 (re-exported: adagrpo.commands.load_datamodule)


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
    parser.add_argument("--quiet", action="store_true", help="no progress bars on stderr (reading files, text "
                        "embeddings, RQ-KMeans); they show only when stderr is a terminal anyway")
    args, overrides = parser.parse_known_args(argv)
    from adagrpo.errors import ConfigError, DataError
    from adagrpo.progress import set_quiet

    if args.quiet:
        set_quiet()

    start = time.perf_counter()
    try:
        dm = load_datamodule(args.config, overrides)
        report = dm.report()
    except (DataError, ConfigError) as err:
        print(f"adagrpo prepare: {err}", file=sys.stderr)
        return 2
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


def cmd_compare(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="adagrpo compare", description="Compare the runs of an MLflow experiment: "
                                     "table (best and final checkpoints), CSV, and the HR@10–hallucination frontier.")
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db")
    parser.add_argument("--out", default=None,
                        help="folder for compare.csv and frontier.png (default runs/<experiment>)")
    parser.add_argument("--metric", action="append", default=[], help="extra metric column (repeatable), e.g. "
                        "test/true/utility_10")
    parser.add_argument("--paired", default=None, metavar="VARIANT",
                        help="also print each variant's per-seed differences to this one (e.g. continue_sft, "
                        "or sft: a single run without seed pairs with every run)")
    parser.add_argument("--also-from", action="append", default=[], metavar="URI",
                        help="another MLflow store whose runs of the experiment join the table (repeatable; e.g. "
                        "studies run in parallel into separate SQLite files); the comparison is logged to the first")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log the outputs as an MLflow run")
    args = parser.parse_args(argv)
    from adagrpo.compare import run_compare

    # A CompareError (no store, experiment, runs or metric; an unknown --paired variant) ends the command in
    # adagrpo.cli.main: one line, exit code 2.
    table, csv_paths, png = run_compare(args.experiment, args.tracking_uri, args.out, args.metric,
                                       log_to_mlflow=not args.no_mlflow, paired_with=args.paired,
                                       also_from=args.also_from)
    print(table)
    print("")
    for path in csv_paths:
        print(f"{'plot:  ' if path.suffix == '.png' else 'csv:   '}{path}")
    print(f"plot:  {png}")
    return 0


def cmd_analyze(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="adagrpo analyze",
        description="Stratified analysis: group the test users by what is known before their test item — AdaGRPO's "
        "gates on their training prompts (SFT policy + reward model), history popularity and length, and on the "
        "synthetic world whether the reward model orders their rollout groups more like the truth than the policy "
        "— and compare HR@K (seen-filtered and true metrics where available) per stratum between SFT and RL "
        "policies. --post-hoc adds the old strata defined by the test item itself, labelled as such.")
    parser.add_argument("--data", required=True, help="data config, e.g. configs/data/synthetic_rl.yaml")
    parser.add_argument("--sft", required=True, help="SFT checkpoint (its diagnostics define the gate strata)")
    parser.add_argument("--reward", required=True, action="append", metavar="CKPT",
                        help="reward-model checkpoint (its diagnostics define the gate strata); give it once per fold "
                        "(in fold order) for a cross-fitted reward (CrossFitReward)")
    parser.add_argument("--crossfit-seed", type=int, default=0,
                        help="with several --reward: the reward data's crossfit_seed (which user is in which fold)")
    parser.add_argument("--heldout-only", action="store_true",
                        help="analyse only the held-out users of a data config with rl_users: heldout (their training "
                        "prompts trained neither SFT nor the reward model)")
    parser.add_argument("--policy", action="append", default=[], metavar="NAME=CKPT",
                        help="an RL checkpoint to compare (repeatable), e.g. grpo=runs/x/grpo/best.ckpt")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--group", type=int, default=16, help="rollout group size for the diagnostics")
    parser.add_argument("--difficulty-rank", type=float, default=2.0,
                        help="the difficulty gate admits when y*'s rank in the SFT group is >= this (2 = not top-1)")
    parser.add_argument("--auc-threshold", type=float, default=0.8,
                        help="the discriminability gate admits when the reward model's AUC of y* vs negatives >= this")
    parser.add_argument("--train-prompts", type=int, default=5,
                        help="the gates are run on each user's last N training prompts")
    parser.add_argument("--post-hoc", action="store_true",
                        help="also the strata defined by the test item (the 2x2 cell of the test prompt), labelled "
                        "post-hoc: no gate can select them before the outcome")
    parser.add_argument("--max-users", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--out", default="runs/analysis")
    parser.add_argument("--experiment", default=None, help="also log the tables and the plot to this MLflow experiment")
    args = parser.parse_args(argv)
    import json as _json

    from adagrpo.datamodules.errors import missing_file
    from adagrpo.lightning_modules.analysis import format_strata, load_policy, plot_strata, stratified_analysis
    from adagrpo.lightning_modules.crossfit import CrossFitReward
    from adagrpo.lightning_modules.reward import TrainedReward

    for flag, value in (("--train-prompts", args.train_prompts), ("--group", args.group), ("--k", args.k),
                        ("--batch-size", args.batch_size)):
        if value < 1:
            print(f"adagrpo analyze: {flag} must be >= 1, got {value}", file=sys.stderr)
            return 2
    try:
        dm = load_datamodule(args.data)
        dm.prepare()
        policies = {"sft": load_policy(args.sft, dm)}
        for spec in args.policy:
            name, _, path = spec.partition("=")
            if not path:
                print(f"adagrpo analyze: --policy expects NAME=CKPT, got {spec!r}", file=sys.stderr)
                return 2
            policies[name] = load_policy(path, dm)
        reward = (TrainedReward(args.reward[0]) if len(args.reward) == 1
                  else CrossFitReward(args.reward, seed=args.crossfit_seed))
        result = stratified_analysis(dm, policies["sft"], policies, reward, k=args.k,
                                     group=args.group, difficulty_rank=args.difficulty_rank,
                                     auc_threshold=args.auc_threshold, train_prompts=args.train_prompts,
                                     post_hoc=args.post_hoc, max_users=args.max_users, batch_size=args.batch_size,
                                     heldout_only=args.heldout_only)
    except FileNotFoundError as err:  # the project's own errors (data, config, checkpoint) end in adagrpo.cli.main
        raise missing_file(err.filename or str(err)) from err
    result.settings.update({"sft": args.sft, "reward": args.reward, "data": args.data})
    table = format_strata(result)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    files = {"strata.json": _json.dumps(result.table(), indent=2),  # flat: stratum, users, HR@K per policy
             "strata_full.json": _json.dumps(result.to_json(), indent=2),  # every metric, family and definition
             "strata.txt": table + "\n"}
    for name, text in files.items():
        (out / name).write_text(text)
    png = plot_strata(result, out / "strata.png", f"HR@{args.k} by stratum ({dm.data.name}, {len(result.targets)} "
                      "test users)")
    if args.experiment:
        import mlflow

        from adagrpo.compare import tracking_uri_default

        mlflow.set_tracking_uri(tracking_uri_default())
        mlflow.set_experiment(args.experiment)
        with mlflow.start_run(run_name="stratified-analysis"):
            for f in (*files, "strata.png"):
                mlflow.log_artifact(str(out / f))
            mlflow.set_tag("adagrpo.kind", "analysis")
    print(table)
    print(f"\nstrata marked [pre-outcome] are defined without the test item (gates on the last {args.train_prompts} "
          f"training prompts: difficulty rank >= {args.difficulty_rank:g} AND reward AUC >= {args.auc_threshold:g}, "
          f"group {args.group})" + ("; the post-hoc strata are defined by it" if args.post_hoc else ""))
    print(f"wrote {out / 'strata.json'}, {out / 'strata_full.json'}, {out / 'strata.txt'}, {png}")
    return 0


def cmd_ablate(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="adagrpo ablate",
        description="Run a grid of experiment configs × seeds, each an ordinary `adagrpo fit` + `test` "
        "(best and last), then `adagrpo compare`. --print only lists the commands (e.g. for a cluster scheduler).")
    parser.add_argument("--config", action="append", required=True, help="experiment config (repeatable)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--print", dest="print_only", action="store_true",
                        help="print the grid as shell lines instead of running it (e.g. for a cluster scheduler): "
                        "each line names an MLflow parent run created now (status SCHEDULED) and its store, so the "
                        "runs nest under it; the last line ends it")
    args, overrides = parser.parse_known_args(argv)
    from adagrpo.experiments import Stage, ablation_run, run_pipeline

    stages = []
    for cfg in args.config:
        name = Path(cfg).stem
        for seed in args.seeds:
            seeded = ["--seed_everything", str(seed), "--data.init_args.seed", str(seed)]  # init and data order
            stages.append(Stage(f"{name}-s{seed}", Path(cfg).resolve(), [*seeded, *overrides], test_last=True))
    if args.print_only:
        from adagrpo.experiments import ablation_script

        print("\n".join(ablation_script(args.experiment, stages, args.config, args.seeds, overrides)))
        return 0
    with ablation_run(args.experiment, args.config, args.seeds, overrides) as parent:
        print(f"MLflow parent run {parent} (experiment {args.experiment}): every run of this ablation nests under it",
              flush=True)
        run_pipeline(args.experiment, stages, force=args.force)
        return cmd_compare(["--experiment", args.experiment])


def cmd_quickstart(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="adagrpo quickstart",
        description="The paper's question on the built-in synthetic world, end to end: a world where imitating the "
        "logs falls short of the truth, a reward that knows the truth but is noisy on half of the users; prepare → "
        "SFT → calibration (does the world express the premise?) → continue-SFT control, GRPO (fixed λ = 1), "
        "AdaGRPO and the oracle gate → paired comparison. Finished stages are reused unless --force.")
    parser.add_argument("--experiment", default="quickstart")
    parser.add_argument("--force", action="store_true", help="rerun every stage")
    parser.add_argument("--fast", action="store_true", help="a much shorter run (smoke test)")
    args = parser.parse_args(argv)
    import json as _json

    from adagrpo.calibrate import cmd_calibrate
    from adagrpo.experiments import QUICKSTART_REWARD, quickstart_stages, run_pipeline
    from adagrpo.resources import config_root

    start = time.perf_counter()
    reward = f"{QUICKSTART_REWARD['class_path'].rsplit('.', 1)[-1]}{QUICKSTART_REWARD['init_args']}"
    print("World: configs/data/sources/synthetic_biased.yaml: the logging policy's retriever over-weights the last "
          "item and generic appeal, so a policy that imitates the clicks inherits its bias.\n"
          f"Reward: {reward}: the true utility plus noise that is large on a fixed half of the users (informative, "
          "noisy on an identifiable part).\n"
          "Question: does admitting GRPO per sample (AdaGRPO) beat the control and a fixed mixture here?", flush=True)
    print("\n== 1/5 prepare the synthetic world ==", flush=True)
    code = cmd_prepare(["--config", str(config_root() / "data" / "synthetic_biased.yaml")])
    if code:
        return code
    stages = quickstart_stages(args.experiment, Path("runs"), fast=args.fast)
    titles = {"sft": "2/5 supervised fine-tuning",
              "continue_sft": "4/5 RL from the SFT checkpoint: continue-SFT control (λ = 0)",
              "grpo": "4/5 GRPO, fixed λ = 1", "adagrpo": "4/5 AdaGRPO",
              "adagrpo_oracle": "4/5 oracle gate (reads the truth: the ceiling of any gate)"}

    def calibrate() -> None:
        print("\n== 3/5 calibration: does this world express the premise? ==", flush=True)
        code = cmd_calibrate(["--data", str(config_root() / "data" / "synthetic_biased_rl.yaml"),
                              "--sft", str(Path("runs") / args.experiment / "sft" / "best.ckpt"),
                              "--reward", _json.dumps(QUICKSTART_REWARD), "--users", "200" if args.fast else "500",
                              "--json", str(Path("runs") / args.experiment / "calibration.json")])
        if code:
            raise SystemExit(code)

    run_pipeline(args.experiment, stages, force=args.force, titles=titles, after={"sft": calibrate})
    print("\n== 5/5 comparison (one seed; paired with the continue-SFT control) ==", flush=True)
    code = cmd_compare(["--experiment", args.experiment, "--paired", "continue_sft"])
    print("Reading it: true HR@10 = the user's best unseen item (by the world's ground truth) is in the top 10; "
          "'filtered' excludes the user's history from the list. A method answers the question when it beats both "
          "the control and GRPO λ = 1; the oracle gate shows what any gate could gain. One seed only: "
          "benchmarks/results/noise_map.md has the 3-seed map with intervals.")
    print(f"quickstart finished in {time.perf_counter() - start:.0f} s; browse every run with: "
          "mlflow ui --backend-store-uri sqlite:///mlflow.db")
    return code


def cmd_export(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="adagrpo export",
        description="Write a trained policy (SFT or GRPO checkpoint) as a transformers `save_pretrained` folder with "
        "its SID tokenizer; it then loads with AutoModelForCausalLM, or as "
        "`adagrpo.lightning_modules.PretrainedPolicy` (e.g. an 8-bit GRPO reference on GPU).")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    from adagrpo.errors import ConfigError
    from adagrpo.lightning_modules.checkpoint_io import IncompatibleCheckpoint
    from adagrpo.lightning_modules.policy import export_checkpoint

    if not Path(args.checkpoint).exists():
        print(f"adagrpo export: checkpoint not found: {args.checkpoint}", file=sys.stderr)
        return 2
    try:
        record = export_checkpoint(args.checkpoint, args.out)
    except (ConfigError, IncompatibleCheckpoint) as err:
        print(f"adagrpo export: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} ({record['dataset']}, {record['num_items']} items, SIDs {record['sid_fingerprint']})")
    return 0


COMMANDS: dict[str, tuple[str, Callable[[list[str]], int]]] = {
    "prepare": ("validate a dataset, build semantic IDs and the trie, print statistics", cmd_prepare),
    "quickstart": ("the paper's question on the synthetic world: SFT, calibration, control vs GRPO vs AdaGRPO vs "
                   "oracle gate (~12 min on 2 cores)",
                   cmd_quickstart),
    "compare": ("compare the runs of an MLflow experiment (table, CSV, HR@10–hallucination frontier)", cmd_compare),
    "analyze": ("stratified analysis: HR@K per stratum of pre-outcome user strata (gates on training prompts, "
                "history popularity/length, truth)", cmd_analyze),
    "ablate": ("run a grid of experiment configs × seeds, then compare", cmd_ablate),
    "calibrate": ("does a synthetic world express the premise? information gap, reward vs policy, gate rates",
                  lambda argv: __import__("adagrpo.calibrate", fromlist=["cmd_calibrate"]).cmd_calibrate(argv)),
    "export": ("write a trained policy as a transformers save_pretrained folder", cmd_export),
}
