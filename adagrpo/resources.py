"""Where the shipped configs are, and how a ``configs/...`` path on the command line finds them.

The configs ship inside the package (``adagrpo.configs``), so ``adagrpo fit --config
configs/experiments/sft.yaml`` works from any directory and from a wheel: a path that does not exist
relative to the working directory but starts with ``configs/`` is read from the package. A file of the
same name in the working directory always wins, so a user's edited copy is used as given.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

CONFIG_FLAGS = ("--config", "-c", "--data", "--sft_config", "--rl_config")


def config_root() -> Path:
    """The folder of the shipped configs (the repository's ``configs/`` in an editable install)."""
    return Path(str(files("adagrpo.configs")))


def resolve_config(path: str | Path) -> str:
    """``path`` itself if it exists; else, for ``configs/...``, the shipped file of that name."""
    p = Path(path)
    if p.exists() or p.is_absolute():
        return str(path)
    parts = p.parts
    if parts and parts[0] == "configs":
        shipped = config_root().joinpath(*parts[1:])
        if shipped.exists():
            return str(shipped)
    return str(path)


def resolve_config_args(argv: list[str], flags: tuple[str, ...] = CONFIG_FLAGS) -> list[str]:
    """Rewrite the values of config-file flags in ``argv`` with :func:`resolve_config`, and the value of any other
    option that names a shipped YAML by a ``configs/…`` path (e.g. ``--model.init_args.optimizer
    configs/model/optimizer_adamw8bit.yaml``)."""

    def shipped_yaml(value: str) -> bool:
        return value.endswith((".yaml", ".yml")) and Path(value).parts[:1] == ("configs",)

    out: list[str] = []
    take = False
    for arg in argv:
        if take:
            out.append(resolve_config(arg))
            take = False
            continue
        name, eq, value = arg.partition("=")
        if name.startswith("-") and eq and value.endswith((".yaml", ".yml")) and (name in flags or shipped_yaml(value)):
            out.append(f"{name}={resolve_config(value)}")
            continue
        out.append(arg)
        take = arg in flags
    # an option followed by a configs/... YAML as its own word
    return [resolve_config(a) if i and out[i - 1].startswith("--") and "=" not in out[i - 1] and shipped_yaml(a)
            else a for i, a in enumerate(out)]
