"""`adagrpo predict`: top-K recommendations per user to TSV/JSONL, from a checkpoint and a data config.

A tiny synthetic world and an untrained tiny policy saved as an SFT checkpoint (no training: the format, the
constraints and the seen-item filter do not depend on how good the policy is).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from adagrpo.cli import main
from adagrpo.predict import TSV_HEADER, _prompt, read_tsv, user_histories

DATA_YAML = """\
class_path: adagrpo.datamodules.SeqRecDataModule
init_args:
  source:
    class_path: adagrpo.datamodules.SyntheticSource
    init_args: {num_users: 60, num_items: 50, max_length: 12, seed: 3}
  sids:
    class_path: adagrpo.datamodules.RQKMeansSids
    init_args:
      embeddings: {class_path: adagrpo.datamodules.TextEmbeddings, init_args: {dim: 8}}
      levels: 2
      codebook_size: 8
      iters: 10
  max_history: 6
  use_cache: false
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from adagrpo.commands import load_datamodule
    from adagrpo.lightning_modules import LlamaPolicy, SFTModule

    root = tmp_path_factory.mktemp("predict")
    config = root / "data.yaml"
    config.write_text(DATA_YAML)
    dm = load_datamodule(str(config))
    dm.prepare()
    torch.manual_seed(0)
    module = SFTModule(policy=LlamaPolicy(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32,
                                          max_positions=64), beam_width=5)
    module.attach(dm)
    module.configure_model()
    ckpt = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(ckpt)
    path = root / "sft.ckpt"
    torch.save(ckpt, path)
    return root, config, path, dm


def predict(*args: str) -> int:
    try:
        return main(["predict", *args])
    except SystemExit as exit_:
        return int(exit_.code or 0)


def by_user(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(r["user_id"], []).append(r)
    return out


def test_tsv_top_k_constrained_ranked(setup, capsys):
    root, config, ckpt, dm = setup
    out = root / "recs.tsv"
    assert predict("--config", str(config), "--checkpoint", str(ckpt), "--k", "5", "--out", str(out),
                   "--device", "cpu") == 0
    assert "for 60 users" in capsys.readouterr().out
    assert out.read_text().splitlines()[0] == TSV_HEADER
    users = by_user(read_tsv(out))
    assert list(users) == [str(u) for u in dm.data.user_ids]  # every user, in dataset order
    sid_of = {str(dm.sids.item_ids[i]): dm.sids.sid_string(i) for i in range(dm.data.num_items)}
    for rows in users.values():
        assert [r["rank"] for r in rows] == [1, 2, 3, 4, 5]
        assert len({r["item_id"] for r in rows}) == 5  # distinct catalogue items
        assert all(sid_of[r["item_id"]] == r["sid"] for r in rows)  # constrained: each SID names its item
        scores = [r["score"] for r in rows]
        assert scores == sorted(scores, reverse=True) and all(s <= 0 for s in scores)  # log-probs, best first


def test_exclude_seen_never_recommends_the_history(setup):
    root, config, ckpt, dm = setup
    plain, filtered = root / "plain.tsv", root / "filtered.tsv"
    assert predict("--config", str(config), "--checkpoint", str(ckpt), "--k", "8", "--out", str(plain)) == 0
    assert predict("--config", str(config), "--checkpoint", str(ckpt), "--k", "8", "--out", str(filtered),
                   "--exclude-seen") == 0
    seen = {str(dm.data.user_ids[u]): {str(dm.sids.item_ids[i]) for i in dm.data.sequence(u)}
            for u in range(dm.data.num_users)}
    plain_rows, filtered_rows = by_user(read_tsv(plain)), by_user(read_tsv(filtered))
    assert any(r["item_id"] in seen[u] for u, rows in plain_rows.items() for r in rows)  # the filter has work
    for user, rows in filtered_rows.items():
        assert not {r["item_id"] for r in rows} & seen[user], user
        assert len(rows) == min(8, dm.data.num_items - len(seen[user]))


def test_prompt_is_the_evaluation_prompt(setup):
    _, _, _, dm = setup
    train = user_histories(dm, "train")
    targets = np.array([[u, int(dm.split.train_end[u])] for u in range(5)])  # the validation position
    batch = dm.prompt_batch(targets)
    tokens, mask, positions = _prompt(dm, [train[u] for u in range(5)])
    assert torch.equal(tokens, batch.prompt_ids)
    assert torch.equal(mask, batch.prompt_mask)
    assert torch.equal(positions, batch.position_ids)


def test_jsonl_and_max_users(setup):
    root, config, ckpt, dm = setup
    out = root / "recs.jsonl"
    assert predict("--config", str(config), "--checkpoint", str(ckpt), "--k", "3", "--max-users", "4",
                   "--history", "train", "--out", str(out)) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [obj["user_id"] for obj in lines] == [str(u) for u in dm.data.user_ids[:4]]
    assert all([r["rank"] for r in obj["recommendations"]] == [1, 2, 3] for obj in lines)


def test_errors_name_what_is_wrong(setup, capsys):
    root, config, ckpt, _ = setup
    assert predict("--config", str(config), "--checkpoint", str(root / "missing.ckpt"),
                   "--out", str(root / "x.tsv")) == 2
    assert "missing.ckpt" in capsys.readouterr().err
    assert predict("--config", str(config)) == 2
    assert "no --checkpoint given" in capsys.readouterr().err
    assert predict("--config", str(config), "--checkpoint", str(ckpt), "--k", "0") == 2
    assert "--k must be >= 1, got 0" in capsys.readouterr().err
    torch.save({"state_dict": {}, "adagrpo": None}, root / "foreign.ckpt")
    assert predict("--config", str(config), "--checkpoint", str(root / "foreign.ckpt")) == 2
    assert "foreign.ckpt" in capsys.readouterr().err
