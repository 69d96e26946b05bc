"""What the MLflow UI filters and sorts runs by: the flattened configuration as params, and tags.

Params (one per leaf of the resolved ``fit`` config, ``class_path``/``init_args`` folded away)::

    model                         GRPOModule
    model.beta                    0.001
    model.num_generations         16
    model.balancer                FixedWeight
    model.balancer.rl_weight      0.1           (λ)
    model.gates.0                 PolicyDifficultyGate
    model.gates.0.threshold       ...
    seed_everything               1
    data.seed                     1

Tags (:data:`TAG_VARIANT`, :data:`TAG_SEED`, :data:`TAG_STAGE`, :data:`TAG_KIND`): ``variant`` (the run name
without its ``-s<seed>`` suffix), ``seed``, ``stage`` (``sft``, ``reward``, ``rl``) and ``adagrpo.kind``
(``train`` for fit/test runs; ``comparison``, ``analysis``, ``ablation`` for the runs of those commands). In the
UI: ``tags.variant = "adagrpo" and tags.seed = "1"``, ``params.`model.balancer.rl_weight` = "0.1"``.
"""

from __future__ import annotations

import json
import re
from typing import Any

TAG_VARIANT = "variant"
TAG_SEED = "seed"
TAG_STAGE = "stage"
TAG_KIND = "adagrpo.kind"
#: the run an ``adagrpo ablate`` opened; its fits, tests and comparison nest under it
PARENT_RUN_ENV = "ADAGRPO_PARENT_RUN_ID"
SEED_SUFFIX = re.compile(r"^(?P<variant>.+)-s(?P<seed>\d+)$")
STAGES = {"SFTModule": "sft", "RewardModelModule": "reward", "GRPOModule": "rl"}
#: MLflow keeps at least this many characters of a param value (longer values are cut, marked with "…")
MAX_PARAM_CHARS = 500
#: leaves that say where things are, not what was trained: not params
SKIP_PREFIXES = ("trainer.logger", "trainer.callbacks", "trainer.default_root_dir", "ckpt_path", "checkpoint",
                 "allow_untrained", "model.test_prefix", "config", "force", "resume")


def split_run_name(name: str) -> tuple[str, int | None]:
    """``("adagrpo", 3)`` for ``adagrpo-s3``; ``(name, None)`` for a name without a seed suffix."""
    m = SEED_SUFFIX.match(name)
    return (m.group("variant"), int(m.group("seed"))) if m else (name, None)


def _scalar(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    return str(value)


def flatten_config(cfg: Any, prefix: str = "") -> dict[str, str]:
    """Leaves of a config (a dict from the CLI's YAML dump) as ``dotted.key → str``. A ``{class_path, init_args}``
    node becomes ``key → ClassName`` plus its init_args under ``key.``; lists of scalars stay one value."""
    out: dict[str, str] = {}
    if isinstance(cfg, dict) and "class_path" in cfg:
        out[prefix] = str(cfg["class_path"]).rsplit(".", 1)[-1]
        for key, value in (cfg.get("init_args") or {}).items():
            out.update(flatten_config(value, f"{prefix}.{key}"))
        for key, value in cfg.items():  # e.g. dict_kwargs
            if key not in ("class_path", "init_args"):
                out.update(flatten_config(value, f"{prefix}.{key}"))
    elif isinstance(cfg, dict):
        for key, value in cfg.items():
            out.update(flatten_config(value, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(cfg, (list, tuple)):
        if all(not isinstance(v, (dict, list, tuple)) for v in cfg):
            out[prefix] = json.dumps(list(cfg))
        else:
            for i, value in enumerate(cfg):
                out.update(flatten_config(value, f"{prefix}.{i}"))
    else:
        out[prefix] = _scalar(cfg)
    return out


def run_params(cfg: dict) -> dict[str, str]:
    """The params a run logs: :func:`flatten_config` less where-things-are keys, values cut to
    :data:`MAX_PARAM_CHARS`."""
    flat = flatten_config(cfg)
    out = {}
    for key, value in flat.items():
        if any(key == p or key.startswith(p + ".") for p in SKIP_PREFIXES):
            continue
        out[key] = value if len(value) <= MAX_PARAM_CHARS else value[: MAX_PARAM_CHARS - 1] + "…"
    return out


def run_tags(cfg: dict, run_name: str) -> dict[str, str]:
    """``variant``, ``seed`` (``seed_everything``, else the run name's suffix), ``stage`` and the kind."""
    variant, name_seed = split_run_name(run_name)
    seed = cfg.get("seed_everything")
    seed = seed if isinstance(seed, int) and not isinstance(seed, bool) else name_seed
    model = cfg.get("model") or {}
    module = str(model.get("class_path", "")).rsplit(".", 1)[-1] if isinstance(model, dict) else ""
    tags = {TAG_VARIANT: variant, TAG_KIND: "train"}
    if seed is not None:
        tags[TAG_SEED] = str(seed)
    if module:
        tags[TAG_STAGE] = STAGES.get(module, module.lower())
    return tags


def log_run_config(client, run_id: str, cfg: dict, run_name: str) -> list[str]:  # noqa: ANN001
    """Log :func:`run_params` and :func:`run_tags` on ``run_id``. Params the run already holds are left as they
    are (MLflow params are immutable: a test of the fit's checkpoint, or a resumed fit, logs into the fit's run);
    returns the keys whose value differs from the one already logged."""
    from mlflow.entities import Param, RunTag

    existing = client.get_run(run_id).data.params
    params = run_params(cfg)
    new = [Param(k, v) for k, v in params.items() if k not in existing]
    differs = sorted(k for k, v in params.items() if k in existing and existing[k] != v)
    tags = [RunTag(k, v) for k, v in run_tags(cfg, run_name).items()]
    for i in range(0, max(len(new), 1), 100):  # MLflow takes at most 100 params per batch
        client.log_batch(run_id, params=new[i:i + 100], tags=tags if i == 0 else [])
    return differs
