"""The ``adagrpo`` command: LightningCLI's fit/validate/test/predict plus the project's own subcommands.

Imports are lazy so ``adagrpo --help`` answers at once; Lightning, transformers and MLflow load only
for the subcommand that needs them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")


def _extra_commands() -> dict[str, tuple[str, Callable[[list[str]], int]]]:
    from adagrpo import commands

    return commands.COMMANDS


USAGE = """usage: adagrpo <command> [options]

Training and evaluation (LightningCLI; see `adagrpo fit --help`):
  fit        train a stage (SFT, reward model, GRPO/AdaGRPO) from YAML configs
  validate   run validation of a checkpoint
  test       evaluate a checkpoint (HR@K, NDCG@K, hallucination, baselines)

Recommendations (see `adagrpo predict --help`):
  predict    each user's top-K catalogue items from an SFT or GRPO checkpoint (constrained beam search;
             --k, --exclude-seen, --history full|train) to a file: TSV, one line per item (user_id, rank,
             item_id, sid, score), or JSONL, one object per user (--out x.jsonl)

Project commands (see `adagrpo <command> --help`):
{extra}

Configs live in configs/ (data/, model/, trainer/, experiments/). An experiment names its data and
model fragments by path; trainer/*.yaml are overlays added with a second --config. An RL variant
(experiments/grpo*.yaml, adagrpo*.yaml, ...) names its `base:` (rl_base.yaml), applied first; see it
composed with `adagrpo fit --config <variant> --print_config`. Paths in data configs resolve under
$ADAGRPO_DATA_ROOT (default: data/).
"""


#: exit code of a command ended by one of the project's own errors (bad data, config, checkpoint, run record)
USER_ERROR = 2


def user_error_types() -> tuple[type[BaseException], ...]:
    """The project's own error types: their message names the file, line, key or value at fault."""
    from adagrpo.datamodules.errors import ConfigError, DataError

    types: list[type[BaseException]] = [ConfigError, DataError]
    # Only those whose modules are loaded can have been raised (and importing them would load torch).
    for module, names in (("adagrpo.lightning_modules.checkpoint_io", ("IncompatibleCheckpoint",)),
                          ("adagrpo.lightning_modules.finite", ("NonFiniteTraining",)),
                          ("adagrpo.lightning_cli", ("RunConflict",)),
                          ("adagrpo.compare", ("CompareError",))):
        if module in sys.modules:
            types += [getattr(sys.modules[module], n) for n in names if hasattr(sys.modules[module], n)]
    return tuple(types)


def find_user_error(err: BaseException) -> BaseException | None:
    """The first of :func:`user_error_types` in ``err``'s chain (jsonargparse wraps an error raised while it
    instantiates a class in its own "Does not validate against any of the Union subtypes")."""
    types = user_error_types()
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, types):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def tag_failed_run(message: str) -> None:
    """Tag the failed MLflow run of the running fit/test (if one was started) with the error message."""
    cli = getattr(sys.modules.get("adagrpo.lightning_cli"), "CURRENT", None)
    trainer = getattr(cli, "trainer", None)
    if trainer is None:
        return
    from lightning.pytorch.loggers import MLFlowLogger

    from adagrpo.mlflow_store import mark_run

    for lg in trainer.loggers:
        run_id = getattr(lg, "_run_id", None)
        if isinstance(lg, MLFlowLogger) and run_id:
            mark_run(lg._tracking_uri, run_id, "FAILED", {"adagrpo.error": message})


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        from adagrpo import commands

        extra = "\n".join(f"  {name:<10} {desc}" for name, (desc, _) in commands.COMMANDS.items())
        print(USAGE.format(extra=extra))
        return 0
    if argv[0] in ("-V", "--version"):
        from adagrpo import __version__

        print(f"adagrpo {__version__}")
        return 0
    try:
        from adagrpo.resources import resolve_config_args

        argv = [argv[0], *resolve_config_args(argv[1:])]
        if argv[0] in LIGHTNING_SUBCOMMANDS:
            from adagrpo.lightning_cli import run_lightning_cli

            run_lightning_cli(argv)
            return 0
        commands = _extra_commands()
        if argv[0] in commands:
            code = commands[argv[0]][1](argv[1:])
            if code:
                sys.exit(code)
            return 0
    except Exception as err:  # noqa: BLE001 — the project's own errors end with one line; anything else re-raises
        found = find_user_error(err)
        if os.environ.get("ADAGRPO_DEBUG") or found is None:
            raise
        message = f"{type(found).__name__}: {found}"
        print(f"adagrpo {argv[0]}: {message}", file=sys.stderr)
        print("(set ADAGRPO_DEBUG=1 to see the traceback)", file=sys.stderr)
        if argv[0] in LIGHTNING_SUBCOMMANDS:  # a project command has no MLflow run of its own to mark
            tag_failed_run(message)
        sys.exit(USER_ERROR)
    print(f"adagrpo: unknown command {argv[0]!r}; run `adagrpo --help`", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    main()
