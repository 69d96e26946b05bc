"""``adagrpo predict``: top-K recommendations per user from a trained policy (SFT or GRPO checkpoint).

Each user's prompt is their history (the whole sequence, or only the training prefix with ``history="train"``,
so the recommendations can be checked against the held-out validation and test items); constrained beam search
over the catalogue trie returns K distinct catalogue items, best first. With ``exclude_seen`` the items of that
history are never recommended (exact: the beams search among the unseen items only).

Output formats (chosen by the file's suffix):

* ``.tsv`` (default) — a header line, then one line per recommendation::

      user_id<TAB>rank<TAB>item_id<TAB>sid<TAB>score

  ``user_id`` and ``item_id`` are the dataset's own ids, ``rank`` starts at 1, ``sid`` is the item's semantic ID
  (``<a_3><b_17><c_0>``) and ``score`` the beam's log-probability under the policy (sum of its SID tokens'
  full-vocabulary log-probs; higher is better). Users' blocks follow the dataset's user order.
* ``.jsonl`` — one JSON object per user: ``{"user_id": …, "recommendations": [{"rank", "item_id", "sid",
  "score"}, …]}``.

A user can get fewer than K lines when fewer than K catalogue items remain (a tiny catalogue, or with
``exclude_seen``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

FORMATS = ("tsv", "jsonl")
TSV_HEADER = "user_id\trank\titem_id\tsid\tscore"


@dataclass
class UserRecommendations:
    """The top items of one user (internal indices), best first, with their beam scores."""

    user: int
    items: list[int]
    scores: list[float]


def load_policy(checkpoint: str | Path, dm) -> tuple[nn.Module, object]:  # noqa: ANN001
    """The policy of an SFT or GRPO checkpoint (eval mode) and the decoding engine for it, after checking that the
    checkpoint was trained on ``dm``'s semantic IDs. A pretrained policy whose tokenizer places the SID tokens at
    other ids switches ``dm`` to those ids, as training does."""
    from adagrpo.lightning_modules.base import CKPT_KEY, check_signature
    from adagrpo.lightning_modules.checkpoint_io import IncompatibleCheckpoint, load_checkpoint
    from adagrpo.lightning_modules.decoding import DecodingEngine
    from adagrpo.lightning_modules.policy import spec_from_description

    dm.prepare()
    ckpt = load_checkpoint(checkpoint)
    info = ckpt.get(CKPT_KEY)
    sids = dm.sids
    check_signature(info, {"sid_fingerprint": sids.fingerprint(), "codebook_sizes": list(sids.codebook_sizes),
                           "num_items": sids.num_items, "dataset": dm.data.name}, str(checkpoint))
    state = {k.removeprefix("policy."): v for k, v in ckpt.get("state_dict", {}).items() if k.startswith("policy.")}
    if not info.get("policy") or not state:
        raise IncompatibleCheckpoint(f"{checkpoint} holds no policy (module {info.get('module')!r}); predict needs "
                                     "an SFT or GRPO checkpoint")
    policy, vocab = spec_from_description(info["policy"]).build(dm.vocab)
    if vocab is not dm.vocab:
        dm.set_vocab(vocab)
    try:
        policy.load_state_dict(state)
    except RuntimeError as err:
        raise IncompatibleCheckpoint(f"{checkpoint}: its policy weights do not fit {info['policy']}: "
                                     f"{str(err).splitlines()[0]}") from None
    return policy.eval(), DecodingEngine(dm.trie, dm.vocab)


def user_histories(dm, history: Literal["full", "train"] = "full") -> list[np.ndarray]:  # noqa: ANN001
    """Every user's prompt items: the whole sequence (``full``) or the training prefix (``train``)."""
    data, split = dm.data, dm.split
    if history not in ("full", "train"):
        from adagrpo.errors import ConfigError

        raise ConfigError("history", f"must be full or train, got {history!r}")
    return [data.sequence(u) if history == "full" else data.sequence(u)[: int(split.train_end[u])]
            for u in range(data.num_users)]


def _prompt(dm, histories: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # noqa: ANN001
    """Left-padded prompt tokens for item histories: the same layout as the DataModule's evaluation prompts (the
    last ``max_history`` items after a BOS slot)."""
    from adagrpo.datamodules.sequence import BOS_ITEM, PAD_ITEM

    h = dm.max_history
    slots = np.full((len(histories), h + 1), PAD_ITEM, dtype=np.int64)
    for r, seq in enumerate(histories):
        seq = seq[-h:]
        slots[r, h + 1 - len(seq) - 1] = BOS_ITEM
        if len(seq):
            slots[r, h + 1 - len(seq):] = seq
    tokens, mask, positions = dm.tokenizer(torch.from_numpy(slots))
    return tokens, mask.long(), positions


@torch.no_grad()
def recommend(policy: nn.Module, engine, dm, k: int = 10, history: Literal["full", "train"] = "full",  # noqa: ANN001
              exclude_seen: bool = False, users: list[int] | None = None, batch_size: int = 256,
              device: str | torch.device = "cpu") -> Iterator[UserRecommendations]:
    """Constrained beam search (width ``k``) for each user in ``users`` (default: all, in order)."""
    from adagrpo.errors import ConfigError
    from adagrpo.lightning_modules.decoding import DecodingConfig

    if k < 1:
        raise ConfigError("k", f"must be >= 1, got {k}")
    if batch_size < 1:
        raise ConfigError("batch_size", f"must be >= 1, got {batch_size}")
    histories = user_histories(dm, history)
    order = list(range(len(histories))) if users is None else list(users)
    device = torch.device(device)
    policy = policy.to(device)
    config = DecodingConfig("beam", k, constrained=True)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        hist = [histories[u] for u in chunk]
        tokens, mask, positions = (t.to(device) for t in _prompt(dm, hist))
        exclude = None
        if exclude_seen:  # every item of the prompt history, not only the last max_history
            width = max(1, max(len(x) for x in hist))
            exclude = torch.full((len(hist), width), -1, dtype=torch.long)
            for r, seq in enumerate(hist):
                exclude[r, : len(seq)] = torch.from_numpy(np.asarray(seq, dtype=np.int64))
            exclude = exclude.to(device)
        cands = engine.generate(policy, tokens, mask, positions, config, exclude=exclude)
        items, scores, valid = cands.items.cpu(), cands.scores.float().cpu(), cands.valid.cpu()
        for r, u in enumerate(chunk):
            keep = valid[r] & (items[r] >= 0)
            yield UserRecommendations(int(u), items[r][keep].tolist(), scores[r][keep].tolist())


def write_recommendations(recs: Iterator[UserRecommendations], dm, path: str | Path,  # noqa: ANN001
                          fmt: str | None = None) -> tuple[Path, int, int]:
    """Write ``recs`` to ``path`` in ``fmt`` (default: from the suffix, ``.jsonl`` → jsonl, else tsv); returns the
    path, the number of users and the number of recommendation lines."""
    from adagrpo.errors import ConfigError

    path = Path(path)
    fmt = fmt or ("jsonl" if path.suffix == ".jsonl" else "tsv")
    if fmt not in FORMATS:
        raise ConfigError("format", f"must be one of {FORMATS}, got {fmt!r}")
    data, sids = dm.data, dm.sids
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    n_users = n_lines = 0
    with tmp.open("w") as fh:
        if fmt == "tsv":
            fh.write(TSV_HEADER + "\n")
        for rec in recs:
            n_users += 1
            rows = [(rank, str(sids.item_ids[i]), sids.sid_string(i), score)
                    for rank, (i, score) in enumerate(zip(rec.items, rec.scores), start=1)]
            n_lines += len(rows)
            user_id = str(data.user_ids[rec.user])
            if fmt == "tsv":
                fh.writelines(f"{user_id}\t{rank}\t{item}\t{sid}\t{_num(score)}\n" for rank, item, sid, score in rows)
            else:
                fh.write(json.dumps({"user_id": user_id, "recommendations": [
                    {"rank": rank, "item_id": item, "sid": sid, "score": float(_num(score))}
                    for rank, item, sid, score in rows]}) + "\n")
    tmp.replace(path)
    return path, n_users, n_lines


def _num(score: float) -> str:
    return f"{score:.6g}" if math.isfinite(score) else str(score)


def read_tsv(path: str | Path) -> list[dict]:
    """The rows of a TSV written by :func:`write_recommendations` (``rank`` int, ``score`` float)."""
    lines = Path(path).read_text().splitlines()
    if not lines or lines[0] != TSV_HEADER:
        raise ValueError(f"{path}: not an adagrpo recommendations TSV (header {lines[:1]!r}, expected {TSV_HEADER!r})")
    out = []
    for line in lines[1:]:
        user, rank, item, sid, score = line.split("\t")
        out.append({"user_id": user, "rank": int(rank), "item_id": item, "sid": sid, "score": float(score)})
    return out


def cmd_predict(argv: list[str]) -> int:
    """``adagrpo predict``: see the module docstring."""
    import argparse
    import sys
    import time

    parser = argparse.ArgumentParser(
        prog="adagrpo predict",
        description="Write the top-K recommendations of every user (constrained beam search over the catalogue) "
        "from an SFT or GRPO checkpoint, as TSV (user_id, rank, item_id, sid, score; one line per recommendation) "
        "or JSONL (one object per user). Extra --data.init_args.* options override the data config.")
    parser.add_argument("--config", "--data", dest="config", required=True,
                        help="a data config (configs/data/*.yaml) or an experiment config (its data: entry; "
                        "its experiment and run_name locate the recorded checkpoint)")
    parser.add_argument("--checkpoint", "--ckpt_path", dest="checkpoint", default=None,
                        help="the .ckpt file (default: the recorded best/last checkpoint of --experiment/--run_name)")
    parser.add_argument("--experiment", default=None, help="with --run_name, where the fit's record is")
    parser.add_argument("--run_name", "--run-name", dest="run_name", default=None)
    parser.add_argument("--which", choices=("best", "last"), default="best", help="recorded checkpoint to use")
    parser.add_argument("--k", type=int, default=10, help="recommendations per user")
    parser.add_argument("--history", choices=("full", "train"), default="full",
                        help="prompt with each user's whole sequence (full) or training prefix only (train: "
                        "the held-out validation/test items are then what a good recommendation finds)")
    parser.add_argument("--exclude-seen", action="store_true",
                        help="never recommend an item of the user's prompt history")
    parser.add_argument("--max-users", type=int, default=None, help="only the first N users (dataset order)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--out", default=None,
                        help="output file; .jsonl → JSONL, else TSV (default: the run's record folder, or "
                        "runs/predict/, recommendations.tsv)")
    parser.add_argument("--format", choices=FORMATS, default=None, help="override the format chosen by --out's suffix")
    args, overrides = parser.parse_known_args(argv)
    from adagrpo.data_loading import load_datamodule
    from adagrpo.errors import ConfigError, DataError
    from adagrpo.lightning_modules.checkpoint_io import IncompatibleCheckpoint
    from adagrpo.records import read_record, record_dir
    from adagrpo.resources import read_config

    def fail(message: str) -> int:
        print(f"adagrpo predict: {message}", file=sys.stderr)
        return 2

    for flag, value in (("--k", args.k), ("--batch-size", args.batch_size), ("--max-users", args.max_users or 1)):
        if value < 1:
            return fail(f"{flag} must be >= 1, got {value}")
    bad = [o for o in overrides if o.startswith("-") and not o.startswith("--data.")]
    if bad:
        return fail(f"unrecognised option(s) {bad}; data overrides are --data.init_args.<name> VALUE")
    top = read_config(args.config) if Path(args.config).is_file() else None  # with its base: chain applied
    experiment = args.experiment or (top.get("experiment") if isinstance(top, dict) and "data" in top else None)
    run_name = args.run_name or (top.get("run_name") if isinstance(top, dict) and "data" in top else None)
    checkpoint = args.checkpoint
    if checkpoint is None:
        if not (experiment and run_name):
            return fail("no --checkpoint given, and no --experiment/--run_name (nor an experiment config naming "
                        "them) to find a recorded fit")
        record = read_record(experiment, run_name) or {}
        checkpoint = record.get(f"{args.which}_copy") or record.get(args.which)
        if not checkpoint:
            return fail(f"no --checkpoint given and no recorded fit of {experiment}/{run_name} in "
                        f"{record_dir(experiment, run_name)}; fit it first or pass --checkpoint")
    out = Path(args.out) if args.out else (record_dir(experiment, run_name) if experiment and run_name
                                           else Path("runs") / "predict") / "recommendations.tsv"
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    start = time.perf_counter()
    try:
        dm = load_datamodule(args.config, overrides)
        policy, engine = load_policy(checkpoint, dm)
        users = None if args.max_users is None else list(range(min(args.max_users, dm.data.num_users)))
        recs = recommend(policy, engine, dm, k=args.k, history=args.history, exclude_seen=args.exclude_seen,
                         users=users, batch_size=args.batch_size, device=device)
        path, n_users, n_lines = write_recommendations(recs, dm, out, args.format)
    except (ConfigError, DataError, IncompatibleCheckpoint) as err:
        return fail(str(err))
    print(f"wrote {path}: {n_lines} recommendations for {n_users} users (top {args.k}, history {args.history}"
          f"{', seen items excluded' if args.exclude_seen else ''}) from {checkpoint} "
          f"in {time.perf_counter() - start:.1f} s")
    return 0
