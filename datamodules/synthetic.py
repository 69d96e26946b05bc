"""The built-in synthetic world: the default dataset a new user runs, with its ground truth kept.

Generative story (all in torch, vectorised over users, deterministic by seed):

* **Items** belong to a category and a sub-category; an item's latent factor ``v_i`` is its
  category centre + its sub-category offset + noise. Each item has an intrinsic appeal ``b_i``
  drawn as a Zipf-like log-popularity, and pseudo-text built from its category word, sub-category
  word and adjectives, so text-based semantic IDs recover the hierarchy.
* **Users** have a latent taste ``u`` mixing one to three favourite categories.
* **Sequential dynamics**: the state at step ``t`` is ``s_t = normalise((1-ρ) u + ρ v_{last})``.
  True utility of item ``i`` is ``U(s, i) = s·v_i + γ b_i``.
* **Logging policy**: each step exposes a slate of ``slate_size`` items, a mixture of items drawn
  ∝ ``popularity^α`` (``exposure_bias = α``; 0 = uniform exposure) and items from a noisy
  relevance retriever; the user clicks one slate item with probability ∝ ``exp(U / τ)``.
  Clicked items form the user's sequence; the slates are the impression logs.
* **Imitation deficit** (knobs; their defaults are today's world): the retriever ranks by a *corrupted*
  utility — its own sequential strength ``ρ_L`` and appeal weight ``γ_L`` (systematic: a policy imitating
  the clicks learns them), the user's taste seen through noise (``logging_taste_noise``: ``u_L =
  normalise(u + σ_L ε_u)``, fixed per user), fixed per-(user, item) noise (``logging_item_noise``) — and
  re-ranks with ``retriever_noise``. A policy that imitates the clicks learns what this retriever shows; only a reward
  that sees the true utility can correct it.
* **Reward-side information** the policy never sees: post-click satisfaction ``U(s, clicked) + N(0,
  σ_sat²)`` (``satisfaction_noise``; :attr:`ImpressionLog.satisfaction`) and noisy user features
  ``u + N(0, σ_f²)`` (``user_feature_noise``; :attr:`SyntheticWorld.user_features`).

Every knob draws from its own generator, so a knob left at 0 leaves the world bit-identical to the world
without it (old results stay reproducible; ``configs/data/sources/synthetic.yaml`` is today's world).

The world's parameters stay available (:meth:`SyntheticWorld.utility`) so evaluation can measure
the true utility of what a model recommends.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from adagrpo.datamodules.catalog import Catalog, Interactions
from adagrpo.datamodules.sources import DataSource
from adagrpo.errors import ConfigError

_SYLLABLES = ["ka", "lo", "mi", "ren", "su", "ta", "vi", "no", "pa", "xe", "dor", "bel", "qu", "fi", "zan",
              "mo", "ri", "tec", "ul", "gra", "ho", "ne", "sil", "ve", "jun", "cor", "am", "bri", "lux", "ost"]


def _words(count: int, gen: torch.Generator, syllables: int) -> list[str]:
    """``count`` distinct pseudo-words of ``syllables`` syllables."""
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < count:
        idx = torch.randint(len(_SYLLABLES), (syllables,), generator=gen).tolist()
        word = "".join(_SYLLABLES[i] for i in idx)
        if word not in seen:
            seen.add(word)
            out.append(word)
    return out


@dataclass
class ImpressionLog:
    """Slates shown by the logging policy: ``slates[k]`` (``[S]`` item indices) was shown to user
    ``user[k]`` at step ``step[k]`` (its sequence position), and ``clicked[k]`` is the item taken."""

    user: torch.Tensor  # [E]
    step: torch.Tensor  # [E]
    slates: torch.Tensor  # [E, S]
    clicked: torch.Tensor  # [E]
    satisfaction: torch.Tensor | None = None  # [E] post-click satisfaction (reward-side signal), if simulated


class SyntheticWorld:
    """A generated recommendation world; see the module docstring for the story.

    Args:
        num_users: number of users (default 5,000).
        num_items: number of items (default 2,000).
        num_categories: top-level item categories.
        subcategories: sub-categories per category.
        dim: latent dimension.
        popularity_skew: Zipf exponent of item appeal (higher = more head-heavy).
        exposure_bias: α, the logging policy's popularity exponent (0 = popularity-blind exposure).
        retriever_share: share of each slate filled by the relevance retriever (the rest by popularity^α).
        slate_size: items per impression.
        seq_strength: ρ, how much the last item steers the next choice.
        appeal_weight: γ, weight of intrinsic appeal in true utility.
        temperature: τ of the user's click choice.
        min_length: shortest per-user sequence (lengths are geometric between the two bounds).
        max_length: longest per-user sequence.
        seed: everything is a deterministic function of the arguments.
        retriever_noise: std of the noise the retriever re-ranks its candidates with (today's world: 0.3).
        logging_taste_noise: σ_L, how far the retriever's idea of a user's taste is from the truth (0 = exact).
        logging_item_noise: std of fixed per-(user, item) noise in the retriever's utility (0 = none).
        logging_seq_strength: ρ the retriever assumes (``None`` = the true ``seq_strength``): a retriever that
            over-weights the last item shows "more of the same", and a policy that imitates the clicks learns it.
        logging_appeal_weight: γ the retriever ranks with (``None`` = the true ``appeal_weight``): a larger value
            is a retriever biased to generically appealing items.
        satisfaction_noise: std of post-click satisfaction around the clicked item's true utility
            (``None`` = not simulated).
        user_feature_noise: std of the noise in the user features the reward side may read (``None`` = no
            features).
    """

    def __init__(
        self,
        num_users: int = 5000,
        num_items: int = 2000,
        num_categories: int = 16,
        subcategories: int = 8,
        dim: int = 32,
        popularity_skew: float = 1.0,
        exposure_bias: float = 1.0,
        retriever_share: float = 0.5,
        slate_size: int = 20,
        seq_strength: float = 0.5,
        appeal_weight: float = 0.5,
        temperature: float = 0.1,
        min_length: int = 5,
        max_length: int = 30,
        seed: int = 0,
        retriever_noise: float = 0.3,
        logging_taste_noise: float = 0.0,
        logging_item_noise: float = 0.0,
        logging_seq_strength: float | None = None,
        logging_appeal_weight: float | None = None,
        satisfaction_noise: float | None = None,
        user_feature_noise: float | None = None,
    ) -> None:
        checks = {
            "num_users": num_users >= 1,
            "num_items": num_items >= max(2, slate_size),
            "num_categories": num_categories >= 1,
            "subcategories": subcategories >= 1,
            "dim": dim >= 2,
            "exposure_bias": exposure_bias >= 0,
            "retriever_share": 0 <= retriever_share <= 1,
            "slate_size": slate_size >= 2,
            "seq_strength": 0 <= seq_strength <= 1,
            "temperature": temperature > 0,
            "min_length": 1 <= min_length <= max_length,
            "retriever_noise": retriever_noise >= 0,
            "logging_taste_noise": logging_taste_noise >= 0,
            "logging_item_noise": logging_item_noise >= 0,
            "logging_seq_strength": logging_seq_strength is None or 0 <= logging_seq_strength <= 1,
            "satisfaction_noise": satisfaction_noise is None or satisfaction_noise >= 0,
            "user_feature_noise": user_feature_noise is None or user_feature_noise >= 0,
        }
        for key, ok in checks.items():
            if not ok:
                raise ConfigError(key, f"invalid value {locals()[key]!r}")
        self.num_users, self.num_items, self.dim = num_users, num_items, dim
        self.exposure_bias, self.retriever_share, self.slate_size = exposure_bias, retriever_share, slate_size
        self.seq_strength, self.appeal_weight, self.temperature = seq_strength, appeal_weight, temperature
        self.min_length, self.max_length = min_length, max_length
        self.seed = seed
        self.retriever_noise = retriever_noise
        self.logging_taste_noise, self.logging_item_noise = logging_taste_noise, logging_item_noise
        self.logging_seq_strength = seq_strength if logging_seq_strength is None else logging_seq_strength
        self.logging_appeal_weight = appeal_weight if logging_appeal_weight is None else logging_appeal_weight
        self.satisfaction_noise, self.user_feature_noise = satisfaction_noise, user_feature_noise
        gen = torch.Generator().manual_seed(seed)

        # Items: hierarchy, factors, appeal, text.
        cat_centres = torch.randn(num_categories, dim, generator=gen)  # [K, d]
        sub_offsets = 0.6 * torch.randn(num_categories, subcategories, dim, generator=gen)  # [K, S, d]
        self.item_category = torch.randint(num_categories, (num_items,), generator=gen)  # [N]
        self.item_subcategory = torch.randint(subcategories, (num_items,), generator=gen)  # [N]
        v = cat_centres[self.item_category] + sub_offsets[self.item_category, self.item_subcategory]
        v = v + 0.3 * torch.randn(num_items, dim, generator=gen)
        self.item_factors = v / v.norm(dim=1, keepdim=True)  # [N, d]
        ranks = torch.randperm(num_items, generator=gen).double() + 1
        log_pop = -popularity_skew * ranks.log()  # Zipf: base rate ∝ rank^-skew
        # Appeal spans [-skew/2, skew/2] from the most to the least popular item, so it shifts utility
        # by about as much as taste does instead of swamping it.
        appeal = log_pop / math.log(num_items)  # [N], in [-skew, 0]
        self.item_appeal = (appeal - appeal.mean()).float()  # [N]
        self.item_popularity = torch.softmax(log_pop, 0).float()  # [N], exposure base rate

        cat_words = _words(num_categories, gen, 2)
        sub_words = _words(num_categories * subcategories, gen, 2)
        adjectives = _words(48, gen, 2)
        adj = torch.randint(len(adjectives), (num_items, 2), generator=gen).tolist()
        self.titles = [
            f"{adjectives[a]} {adjectives[b]} {sub_words[c * subcategories + s]}"
            for (a, b), c, s in zip(adj, self.item_category.tolist(), self.item_subcategory.tolist())
        ]
        self.categories = [
            f"{cat_words[c]}, {sub_words[c * subcategories + s]}"
            for c, s in zip(self.item_category.tolist(), self.item_subcategory.tolist())
        ]

        # Users: taste mixes 1-3 favourite categories.
        fav = torch.randint(num_categories, (num_users, 3), generator=gen)  # [U, 3]
        weights = torch.rand(num_users, 3, generator=gen) * (torch.rand(num_users, 3, generator=gen) < 0.6)
        weights[:, 0] = 1.0
        u = (weights[..., None] * cat_centres[fav]).sum(1) + 0.3 * torch.randn(num_users, dim, generator=gen)
        self.user_factors = u / u.norm(dim=1, keepdim=True)  # [U, d]

        # Knobs draw from their own generators: at 0 the main stream, hence the world, is unchanged.
        side = torch.Generator().manual_seed(seed * 7_919 + 104_729)
        if logging_taste_noise > 0:
            u_log = self.user_factors + logging_taste_noise * torch.randn(num_users, dim, generator=side)
            self.logging_user_factors = u_log / u_log.norm(dim=1, keepdim=True)  # [U, d]
        else:
            self.logging_user_factors = self.user_factors
        self._item_noise_seed = int(torch.randint(2**31 - 1, (1,), generator=side))
        self.user_features = None
        if user_feature_noise is not None:
            feat = torch.Generator().manual_seed(seed * 7_919 + 15_485_863)
            self.user_features = self.user_factors + user_feature_noise * torch.randn(num_users, dim, generator=feat)
        self._satisfaction_gen = torch.Generator().manual_seed(seed * 7_919 + 32_452_843)

        self.sequences, self.impressions = self._simulate(gen)

    # --------------------------------------------------------------------------------- truth
    def state(self, users: torch.Tensor, last_items: torch.Tensor, logging: bool = False) -> torch.Tensor:
        """User state ``[B, d]`` after ``last_items`` (-1 = no history); ``logging``: as the retriever sees it."""
        u = (self.logging_user_factors if logging else self.user_factors)[users]  # [B, d]
        last = self.item_factors[last_items.clamp_min(0)]  # [B, d]
        strength = self.logging_seq_strength if logging else self.seq_strength
        rho = torch.where(last_items >= 0, strength, 0.0)[:, None]
        s = (1 - rho) * u + rho * last
        return s / s.norm(dim=1, keepdim=True)

    def utility(self, users: torch.Tensor, last_items: torch.Tensor, items: torch.Tensor | None = None) -> torch.Tensor:
        """True utility ``U(s, i)``: ``[B, N]`` over the catalogue, or ``[B, M]`` for ``items [B, M]``
        (item -1 gets -inf)."""
        s = self.state(users, last_items)  # [B, d]
        if items is None:
            return s @ self.item_factors.T + self.appeal_weight * self.item_appeal  # [B, N]
        it = items.clamp_min(0)
        score = torch.einsum("bd,bmd->bm", s, self.item_factors[it]) + self.appeal_weight * self.item_appeal[it]
        return torch.where(items >= 0, score, torch.full_like(score, -math.inf))

    @property
    def logging_corrupted(self) -> bool:
        """Whether the retriever ranks by anything but the true utility."""
        return (self.logging_taste_noise > 0 or self.logging_item_noise > 0
                or self.logging_seq_strength != self.seq_strength or self.logging_appeal_weight != self.appeal_weight)

    def logging_utility(self, users: torch.Tensor, last_items: torch.Tensor) -> torch.Tensor:
        """The retriever's (corrupted) utility ``[B, N]``: taste seen through ``logging_taste_noise``, the
        retriever's own ρ and γ, plus fixed per-(user, item) noise of std ``logging_item_noise``. Equals
        :meth:`utility` when the logging policy is not corrupted."""
        s = self.state(users, last_items, logging=True)  # [B, d]
        util = s @ self.item_factors.T + self.logging_appeal_weight * self.item_appeal  # [B, N]
        if self.logging_item_noise > 0:
            util = util + self.logging_item_noise * _fixed_normal(users, self.num_items, self._item_noise_seed)
        return util

    # --------------------------------------------------------------------------------- simulation
    def draw_slates(self, util: torch.Tensor, log_util: torch.Tensor, gen: torch.Generator
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One logging step for ``A`` user states: the slates ``[A, S]`` the logging policy shows and the slot
        ``[A]`` each user clicks. ``util``: true utility ``[A, N]`` (-inf on seen items); ``log_util``: what the
        retriever ranks by (``util`` itself when the logging policy is not corrupted)."""
        a = util.shape[0]
        n_ret = int(round(self.retriever_share * self.slate_size))
        n_pop = self.slate_size - n_ret
        exposure = self.item_popularity.double() ** self.exposure_bias  # [N], popularity^α
        exposure_cdf = torch.cumsum(exposure / exposure.sum(), 0)  # [N]
        pool = min(self.num_items, 4 * max(1, n_ret))  # retriever candidates per step
        # Popularity part: inverse-CDF draws ∝ popularity^α (may repeat an item or show a seen one;
        # such slots can't be clicked below, like a real feed that shows stale items).
        u01 = torch.rand(a, n_pop, generator=gen, dtype=torch.float64)
        pop_part = torch.searchsorted(exposure_cdf, u01).clamp_max(self.num_items - 1)  # [A, n_pop]
        # Retriever part: the best `pool` unseen items by the retriever's utility, re-ranked with noise.
        cand_util, cand = torch.topk(log_util, pool, dim=1)  # [A, P]
        noisy = cand_util + self.retriever_noise * torch.randn(a, pool, generator=gen)
        ret_part = torch.gather(cand, 1, torch.topk(noisy, n_ret, dim=1).indices)  # [A, n_ret]
        slate = torch.cat([pop_part, ret_part], dim=1)  # [A, S]
        choice = torch.gather(util, 1, slate) / self.temperature  # [A, S]; seen items are -inf
        same = slate[:, :, None] == slate[:, None, :]  # [A, S, S]
        first = ~torch.tril(same, diagonal=-1).any(dim=2)  # first occurrence of each item in a slate
        choice = choice.masked_fill(~first, -math.inf)
        pick = torch.multinomial(torch.softmax(choice, 1), 1, generator=gen).squeeze(1)  # [A]
        return slate, pick

    def click_probabilities(self, users: torch.Tensor, last_items: torch.Tensor, seen: torch.Tensor,
                            samples: int = 256, seed: int = 0) -> torch.Tensor:
        """The logging policy's next-click distribution ``[B, N]`` given the true state, by Monte Carlo over
        ``samples`` slates per row: what an ideal imitator of the logs would learn. ``seen``: bool ``[B, N]``."""
        gen = torch.Generator().manual_seed(seed)
        util = self.utility(users, last_items).masked_fill(seen, -math.inf)  # [B, N]
        corrupted = self.logging_corrupted
        log_util = self.logging_utility(users, last_items).masked_fill(seen, -math.inf) if corrupted else util
        counts = torch.zeros(util.shape, dtype=torch.float64)
        for _ in range(samples):
            slate, pick = self.draw_slates(util, log_util, gen)
            counts[torch.arange(len(users)), slate[torch.arange(len(users)), pick]] += 1
        return (counts / samples).float()

    def _simulate(self, gen: torch.Generator) -> tuple[list[list[int]], ImpressionLog]:
        users = torch.arange(self.num_users)
        # Extra length beyond min_length is geometric with mean ~(max - min) / 3, drawn by inverse CDF so it
        # uses our seeded generator; p_stop < 1 always (1 / (1 + mean)), so min == max works too.
        p_stop = 1.0 / (1.0 + (self.max_length - self.min_length) / 3.0)
        uniform = torch.rand(self.num_users, generator=gen).clamp_min(1e-12)
        extra = torch.floor(uniform.log() / math.log1p(-p_stop)) if p_stop < 1 else torch.zeros_like(uniform)
        lengths = (self.min_length + extra).clamp_max(self.max_length)
        lengths = lengths.long()  # [U]
        last = torch.full((self.num_users,), -1, dtype=torch.long)
        seen = torch.zeros(self.num_users, self.num_items, dtype=torch.bool)  # users don't re-buy
        clicks = torch.full((self.num_users, self.max_length), -1, dtype=torch.long)  # [U, T]
        slates_all, users_all, steps_all, clicked_all, satisfaction_all = [], [], [], [], []
        for t in range(self.max_length):
            active = users[lengths > t]  # [A]
            a = len(active)
            util = self.utility(active, last[active]).masked_fill_(seen[active], -math.inf)  # [A, N]
            corrupted = self.logging_corrupted
            log_util = (self.logging_utility(active, last[active]).masked_fill_(seen[active], -math.inf)
                        if corrupted else util)  # [A, N] what the retriever ranks by
            slate, pick = self.draw_slates(util, log_util, gen)  # [A, S], [A]
            clicked = slate[torch.arange(a), pick]  # [A]
            clicks[active, t] = clicked
            last[active] = clicked
            seen[active, clicked] = True
            slates_all.append(slate)
            users_all.append(active)
            steps_all.append(torch.full((a,), t, dtype=torch.long))
            clicked_all.append(clicked)
            if self.satisfaction_noise is not None:
                sat = util[torch.arange(a), clicked] + self.satisfaction_noise * torch.randn(
                    a, generator=self._satisfaction_gen)
                satisfaction_all.append(sat)
        sequences = [row[row >= 0].tolist() for row in clicks]
        log = ImpressionLog(torch.cat(users_all), torch.cat(steps_all), torch.cat(slates_all), torch.cat(clicked_all),
                            torch.cat(satisfaction_all) if satisfaction_all else None)
        return sequences, log

    # --------------------------------------------------------------------------------- export
    def interactions(self) -> Interactions:
        catalog = Catalog(
            item_ids=[f"i{i}" for i in range(self.num_items)],
            text={"title": self.titles, "categories": self.categories},
            attrs={},
        )
        return Interactions.from_lists(
            "synthetic", catalog, [f"u{u}" for u in range(self.num_users)], self.sequences, ["<synthetic>"]
        )

    def summary(self) -> dict:
        pop = np.bincount(torch.cat([torch.tensor(s) for s in self.sequences]).numpy(), minlength=self.num_items)
        return {"exposure_bias": self.exposure_bias, "impressions": int(self.impressions.slates.shape[0]),
                "clicked_items": int((pop > 0).sum())}


def _fixed_normal(users: torch.Tensor, num_items: int, seed: int) -> torch.Tensor:
    """A fixed N(0, 1) per (user, item), ``[B, N]``: the same numbers whenever a user is asked about."""
    key = (users[:, None].long() * 1_000_003 + torch.arange(num_items)[None, :]) * 2 + seed
    u1, u2 = hash_uniform(key), hash_uniform(key + 1)
    return (torch.sqrt(-2 * torch.log(u1)) * torch.cos(2 * math.pi * u2)).float()


def hash_uniform(key: torch.Tensor) -> torch.Tensor:
    """A uniform in (0, 1) from an integer key (splitmix-style mixing), elementwise: fixed pseudo-random numbers
    without a generator's state (the world's fixed per-(user, item) noise, ``NoisyReward``'s)."""
    x = key.long() & 0xFFFFFFFF
    x = ((x >> 16) ^ x) * 0x45D9F3B & 0xFFFFFFFF
    x = ((x >> 16) ^ x) * 0x45D9F3B & 0xFFFFFFFF
    x = (x >> 16) ^ x
    return (x.double() + 0.5) / 2**32


class SyntheticSource(DataSource):
    """The synthetic world as a dataset source (the default data); arguments are :class:`SyntheticWorld`'s.

    Args:
        num_users: number of users (default 5,000).
        num_items: number of items (default 2,000).
        num_categories: top-level item categories.
        subcategories: sub-categories per category.
        dim: latent dimension.
        popularity_skew: Zipf exponent of item appeal (higher = more head-heavy).
        exposure_bias: α, the logging policy's popularity exponent (0 = popularity-blind exposure).
        retriever_share: share of each slate filled by the relevance retriever (the rest by popularity^α).
        slate_size: items per impression.
        seq_strength: ρ, how much the last item steers the next choice.
        appeal_weight: γ, weight of intrinsic appeal in true utility.
        temperature: τ of the user's click choice.
        min_length: shortest per-user sequence (lengths are geometric between the two bounds).
        max_length: longest per-user sequence.
        seed: everything is a deterministic function of the arguments.
        retriever_noise: std of the noise the retriever re-ranks its candidates with (today's world: 0.3).
        logging_taste_noise: σ_L, how far the retriever's idea of a user's taste is from the truth (0 = exact).
        logging_item_noise: std of fixed per-(user, item) noise in the retriever's utility (0 = none).
        logging_seq_strength: ρ the retriever assumes (``None`` = the true ``seq_strength``): a retriever that
            over-weights the last item shows "more of the same", and a policy that imitates the clicks learns it.
        logging_appeal_weight: γ the retriever ranks with (``None`` = the true ``appeal_weight``): a larger value
            is a retriever biased to generically appealing items.
        satisfaction_noise: std of post-click satisfaction around the clicked item's true utility
            (``None`` = not simulated).
        user_feature_noise: std of the noise in the user features the reward side may read (``None`` = no
            features).
    """

    def __init__(
        self,
        num_users: int = 5000,
        num_items: int = 2000,
        num_categories: int = 16,
        subcategories: int = 8,
        dim: int = 32,
        popularity_skew: float = 1.0,
        exposure_bias: float = 1.0,
        retriever_share: float = 0.5,
        slate_size: int = 20,
        seq_strength: float = 0.5,
        appeal_weight: float = 0.5,
        temperature: float = 0.1,
        min_length: int = 5,
        max_length: int = 30,
        seed: int = 0,
        retriever_noise: float = 0.3,
        logging_taste_noise: float = 0.0,
        logging_item_noise: float = 0.0,
        logging_seq_strength: float | None = None,
        logging_appeal_weight: float | None = None,
        satisfaction_noise: float | None = None,
        user_feature_noise: float | None = None,
    ) -> None:
        super().__init__(min_length=min(3, min_length), name="synthetic")
        self.world_args = dict(
            num_users=num_users, num_items=num_items, num_categories=num_categories, subcategories=subcategories,
            dim=dim, popularity_skew=popularity_skew, exposure_bias=exposure_bias, retriever_share=retriever_share,
            slate_size=slate_size, seq_strength=seq_strength, appeal_weight=appeal_weight,
            temperature=temperature, min_length=min_length, max_length=max_length, seed=seed,
        )
        knobs = dict(retriever_noise=retriever_noise, logging_taste_noise=logging_taste_noise,
                     logging_item_noise=logging_item_noise, logging_seq_strength=logging_seq_strength,
                     logging_appeal_weight=logging_appeal_weight, satisfaction_noise=satisfaction_noise,
                     user_feature_noise=user_feature_noise)
        defaults = dict(retriever_noise=0.3, logging_taste_noise=0.0, logging_item_noise=0.0, logging_seq_strength=None,
                        logging_appeal_weight=None, satisfaction_noise=None, user_feature_noise=None)
        # Only knobs moved off today's values enter the arguments, so today's world keeps its cache key.
        self.world_args.update({k: v for k, v in knobs.items() if v != defaults[k]})
        self._world: SyntheticWorld | None = None

    @property
    def world(self) -> SyntheticWorld:
        if self._world is None:
            self._world = SyntheticWorld(**self.world_args)
        return self._world

    def cache_key(self) -> dict:
        return {"synthetic": self.world_args}

    def read(self) -> tuple[Interactions, list[tuple[str, int | None, str | None]]]:
        data = self.world.interactions()
        return data, [("<synthetic>", None, uid) for uid in data.user_ids]
