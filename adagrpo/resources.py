"""Where the shipped configs are, and how a ``configs/...`` path on the command line finds them.

The configs ship inside the package (``adagrpo.configs``), so ``adagrpo fit --config
configs/experiments/sft.yaml`` works from any directory and from a wheel: a path that does not exist
relative to the working directory but starts with ``configs/`` is read from the package. A file of the
same name in the working directory always wins, so a user's edited copy is used as given.

A config file may name a **base** config, applied before it (the same as giving the base as an earlier
``--config``), so a variant says only what differs::

    # configs/experiments/grpo_fixed_0.1.yaml
    base: rl_base.yaml           # relative to this file; or a configs/... path
    run_name: grpo_fixed_0.1
    model:
      init_args:
        balancer:
          init_args:
            rl_weight: 0.1

The CLI applies the chain (:func:`config_chain`) with jsonargparse's own merge of successive config files
(``adagrpo.lightning_cli.ConfigFileWithBase``); tools that read an experiment file's ``experiment``,
``run_name`` or ``data`` without the CLI use :func:`read_config`.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any

CONFIG_FLAGS = ("--config", "-c", "--data", "--sft_config", "--rl_config")
#: the key by which a config file names the config it overlays
BASE_KEY = "base"


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


def _load_yaml(path: Path) -> Any:
    import yaml

    from adagrpo.errors import ConfigError

    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(BASE_KEY, f"{path} is not valid YAML: {err}") from None


def config_base(path: str | Path) -> Path | None:
    """The config that ``path`` names as its ``base:`` (resolved relative to ``path``'s folder; a ``configs/...``
    path not found there as on the command line), or None."""
    from adagrpo.errors import ConfigError

    path = Path(path)
    top = _load_yaml(path)
    value = top.get(BASE_KEY) if isinstance(top, dict) else None
    if value is None:
        return None
    if not isinstance(value, str) or not value.endswith((".yaml", ".yml")):
        raise ConfigError(BASE_KEY, f"{path}: must name one YAML file, got {value!r}")
    candidate = path.parent / value
    if candidate.is_file():
        return candidate
    shipped = Path(resolve_config(value))
    if shipped.is_file():
        return shipped
    raise ConfigError(BASE_KEY, f"{path}: base config {value!r} not found (looked for {candidate})")


def config_chain(path: str | Path) -> list[Path]:
    """``path`` and its bases, the deepest base first: the order in which they are applied."""
    from adagrpo.errors import ConfigError

    chain = [Path(path)]
    while (base := config_base(chain[-1])) is not None:
        if any(base.resolve() == p.resolve() for p in chain):
            names = " -> ".join(str(p) for p in [*chain, base])
            raise ConfigError(BASE_KEY, f"configs name each other as base in a cycle: {names}")
        chain.append(base)
    return chain[::-1]


def _absolute_paths(node: Any, folder: Path) -> Any:
    """Relative ``*.yaml`` values that name a file next to their config, as absolute paths (the meaning they have
    when the config is parsed from its own folder)."""
    if isinstance(node, dict):
        return {k: _absolute_paths(v, folder) for k, v in node.items()}
    if isinstance(node, list):
        return [_absolute_paths(v, folder) for v in node]
    if isinstance(node, str) and node.endswith((".yaml", ".yml")) and not Path(node).is_absolute():
        candidate = folder / node
        return str(candidate.resolve()) if candidate.is_file() else node
    return node


def _merge(base: Any, over: Any) -> Any:
    """``over`` on top of ``base``: mappings merge key by key; a ``class_path`` that changes, lists and scalars
    replace. (The CLI's merge also keeps the earlier ``init_args`` that a new class accepts; this reading is for
    the keys that name the run and its data.)"""
    if not (isinstance(base, dict) and isinstance(over, dict)):
        return over
    if "class_path" in over and over.get("class_path") != base.get("class_path"):
        return over
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(base[key], value) if key in base else value
    return out


def read_config(path: str | Path) -> Any:
    """A config file's YAML with its ``base:`` chain applied (see :func:`_merge`), without ``base:`` itself, and
    with relative ``*.yaml`` values made absolute; for tools that read an experiment's ``experiment``, ``run_name``
    or ``data`` without the CLI (``adagrpo predict``, ``calibrate``, ``analyze``)."""
    out: Any = None
    for layer in config_chain(path):
        top = _absolute_paths(_load_yaml(layer), layer.parent)
        top = {} if top is None else top
        if isinstance(top, dict):
            top.pop(BASE_KEY, None)
        out = top if out is None else _merge(out, top)
    return out
