"""The ``adagrpo`` command: LightningCLI's fit/validate/test/predict plus the project's own subcommands.

Imports are lazy so ``adagrpo --help`` answers at once; Lightning, transformers and MLflow load only
for the subcommand that needs them.
"""

from __future__ import annotations

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
  predict    write recommendations

Project commands (see `adagrpo <command> --help`):
{extra}

Configs live in configs/ (data/, model/, trainer/, experiments/). An experiment names its data and
model fragments by path; trainer/*.yaml are overlays added with a second --config. Paths in data
configs resolve under $ADAGRPO_DATA_ROOT (default: data/).
"""


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
    print(f"adagrpo: unknown command {argv[0]!r}; run `adagrpo --help`", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    main()
