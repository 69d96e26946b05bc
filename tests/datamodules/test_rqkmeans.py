from __future__ import annotations

import math

import pytest
import torch

from adagrpo.datamodules.rqkmeans import (
    balanced_assign,
    code_report,
    effective_codebook_sizes,
    kmeans,
    reconstruct,
    rq_kmeans,
)


def blobs(n_per: int, k: int, dim: int = 8, spread: float = 0.05, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``k`` tight Gaussian blobs around far-apart centres; returns (points [n_per*k, dim], labels)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, dim, generator=g) * 10  # [k, dim]
    labels = torch.arange(k).repeat_interleave(n_per)  # [N]
    x = centres[labels] + spread * torch.randn(len(labels), dim, generator=g)  # [N, dim]
    perm = torch.randperm(len(labels), generator=g)
    return x[perm], labels[perm]


def same_partition(a: torch.Tensor, b: torch.Tensor) -> bool:
    """True when labelings ``a`` and ``b`` agree up to a permutation of the label names."""
    pairs = torch.unique(torch.stack([a, b], dim=1), dim=0)
    return len(pairs) == len(torch.unique(a)) == len(torch.unique(b))


@pytest.mark.parametrize("balanced", [False, True])
def test_kmeans_recovers_separated_blobs(balanced: bool) -> None:
    x, labels = blobs(n_per=40, k=6)
    centroids, assign = kmeans(x, 6, seed=3, balanced=balanced)
    assert centroids.shape == (6, 8) and assign.shape == (240,) and assign.dtype == torch.long
    assert same_partition(assign, labels)
    # Each centroid sits on the mean of its blob.
    for c in range(6):
        assert torch.allclose(centroids[c], x[assign == c].mean(dim=0), atol=1e-4)


def test_kmeans_is_deterministic_by_seed() -> None:
    x = torch.randn(500, 4, generator=torch.Generator().manual_seed(1))
    c1, a1 = kmeans(x, 16, seed=7)
    c2, a2 = kmeans(x, 16, seed=7)
    assert torch.equal(c1, c2) and torch.equal(a1, a2)
    c3, _ = kmeans(x, 16, seed=8)
    assert not torch.equal(c1, c3)


def test_kmeans_fills_every_cluster_even_with_duplicate_points() -> None:
    # 3 distinct points, 30 copies each, 5 clusters: seeding must fall back, no NaN, no crash.
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]).repeat(30, 1)
    centroids, assign = kmeans(x, 5, seed=0)
    assert torch.isfinite(centroids).all()
    assert len(torch.unique(assign)) >= 3


def test_kmeans_rejects_bad_k() -> None:
    with pytest.raises(ValueError, match="k <= N"):
        kmeans(torch.randn(3, 2), 4)


def test_balanced_mode_respects_capacity() -> None:
    # One huge blob and one small one: plain k-means would be very unequal.
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(900, 3, generator=g), torch.randn(101, 3, generator=g) + 20])  # [1001, 3]
    k = 8
    cap = math.ceil(1001 / k)
    _, plain = kmeans(x, k, seed=0)
    _, assign = kmeans(x, k, seed=0, balanced=True)
    assert torch.bincount(plain, minlength=k).max() > cap
    counts = torch.bincount(assign, minlength=k)
    assert counts.max() <= cap and counts.sum() == 1001


def test_balanced_assign_prefers_closest_points() -> None:
    x = torch.tensor([[0.0], [0.1], [0.2], [10.0]])
    centroids = torch.tensor([[0.0], [10.0]])
    assign, dist = balanced_assign(x, centroids, capacity=2)
    # Centroid 0 keeps its two closest proposers; the farthest of the three goes to centroid 1.
    assert assign.tolist() == [0, 0, 1, 1]
    assert torch.allclose(dist, torch.tensor([0.0, 0.01, 9.8**2, 0.0]), atol=1e-4)


def test_rq_kmeans_residual_norm_decreases_by_level() -> None:
    x = torch.randn(2000, 16, generator=torch.Generator().manual_seed(2))
    result = rq_kmeans(x, [16, 16, 16], seed=0)
    assert result.codes.shape == (2000, 3) and result.codes.dtype == torch.long
    assert [c.shape for c in result.centroids] == [(16, 16)] * 3
    first = float(x.norm(dim=1).mean())
    norms = [first, *result.residual_norms]
    assert all(a > b for a, b in zip(norms[:-1], norms[1:], strict=True))
    # residual_norms are exactly what is left after reconstructing from the codes.
    left = (x - reconstruct(result.codes, result.centroids)).norm(dim=1).mean()
    assert float(left) == pytest.approx(result.residual_norms[-1], rel=1e-4)
    again = rq_kmeans(x, [16, 16, 16], seed=0)
    assert torch.equal(result.codes, again.codes)


def test_rq_kmeans_codes_stay_in_range() -> None:
    x = torch.randn(300, 4, generator=torch.Generator().manual_seed(0))
    codes = rq_kmeans(x, [8, 5, 3], balanced=True).codes
    for level, size in enumerate([8, 5, 3]):
        assert codes[:, level].min() >= 0 and codes[:, level].max() < size


@pytest.mark.parametrize(
    ("num_items", "levels", "size", "cap", "expected"),
    [
        (2000, 3, 256, True, [51] * 3),  # 4 * 2000 ** (1/3) = 50.4
        (1000, 3, 256, True, [40] * 3),  # exact cube: 4 * 10, not 41
        (10**6, 3, 256, True, [256] * 3),  # 400, capped by codebook_size
        (10**4, 2, 256, True, [256] * 2),  # 400 again
        (10**7, 2, 256, True, [256] * 2),  # capped by codebook_size
        (1, 4, 256, True, [1] * 4),  # at least 4 codes, but never more than the items
        (3, 2, 256, True, [3] * 2),
        (16, 2, 256, True, [16] * 2),
        (2000, 3, 256, False, [256] * 3),
        (100, 3, 256, False, [100] * 3),
    ],
)
def test_effective_codebook_sizes(num_items: int, levels: int, size: int, cap: bool, expected: list[int]) -> None:
    assert effective_codebook_sizes(num_items, levels, size, cap=cap) == expected


def test_code_report_by_hand() -> None:
    codes = torch.tensor([[0, 1], [0, 1], [0, 2], [1, 0], [1, 0], [2, 3]])
    report = code_report(codes, [4, 4])
    # Level 0 uses codes {0, 1, 2} with counts 3, 2, 1; level 1 uses {0, 1, 2, 3} with counts 2, 2, 1, 1.
    assert report["utilisation"] == pytest.approx([3 / 4, 4 / 4])
    h0 = -(3 / 6 * math.log(3 / 6) + 2 / 6 * math.log(2 / 6) + 1 / 6 * math.log(1 / 6))
    h1 = -(2 * (2 / 6) * math.log(2 / 6) + 2 * (1 / 6) * math.log(1 / 6))
    assert report["perplexity"] == pytest.approx([math.exp(h0), math.exp(h1)])
    # Tuples: (0,1)×2, (0,2), (1,0)×2, (2,3) → 4 distinct of 6.
    assert report["unique_tuples"] == 4
    assert report["collision_rate"] == pytest.approx(1 - 4 / 6)
    assert report["max_items_per_tuple"] == 2


def test_code_report_uniform_codes_have_full_perplexity() -> None:
    codes = torch.stack([torch.arange(8), torch.arange(8) % 2], dim=1)
    report = code_report(codes, [8, 2])
    assert report["perplexity"] == pytest.approx([8.0, 2.0])
    assert report["utilisation"] == [1.0, 1.0]
    assert report["collision_rate"] == 0.0 and report["max_items_per_tuple"] == 1
