"""A ground-truth world for closed-loop (feedback-loop) simulation of a recommender, and its metrics.

Users and items have latent vectors; items belong to topics (topic sizes follow a power law) and
have a popularity prior (Zipf over a random order of the items). A user's true utility for an item is

    u(user, item) = scale * <p_user, q_item> + popularity_weight * log(V * prior_item)

and a user shown a slate of K items chooses at most one by a multinomial logit with a no-click option
(RecSim's choice model; Chaney, Stewart and Engelhardt 2018 use the same kind of world):

    P(item j) = exp(u_j / T) / (exp(u_0 / T) + sum_k exp(u_k / T)),   P(no click) = exp(u_0 / T) / (...)

Each item has a short generated text that names its topic (a topic word; with probability
`text_noise` the word of another topic instead), so the production LLM embedder and clusterer run on
it; `cluster_purity` measures how well their clusters recover the true topics.
Everything is a NumPy function of the config and its seed.
"""

from __future__ import annotations

import dataclasses

import numpy as np

# topic words: one per topic (topics beyond the list get a numbered word)
TOPIC_WORDS = ("jazz", "hiking", "cooking", "chess", "gardening", "astronomy", "football", "poetry", "robotics",
               "knitting", "surfing", "photography", "baking", "cycling", "painting", "fishing", "opera", "yoga",
               "camping", "pottery", "sailing", "tennis", "origami", "skiing", "climbing", "theatre", "beekeeping",
               "archery", "cinema", "dancing", "golf", "birdwatching", "calligraphy", "woodworking", "rowing",
               "magic", "comics", "wine", "coffee", "tea", "history", "geology", "sculpture", "boxing", "karate",
               "puzzles", "aquariums", "perfume", "jewellery", "motorcycles")
ADJECTIVES = ("classic", "modern", "compact", "deluxe", "vintage", "portable", "premium", "simple", "bold", "quiet")
NOUNS = ("guide", "kit", "set", "collection", "book", "edition", "pack", "bundle", "box", "series")


@dataclasses.dataclass(frozen=True)
class WorldConfig:
    """The world's parameters (all written into the results).

    items, users, topics, dim: sizes; latent vectors have `dim` dimensions.
    topic_exponent: topic sizes follow (rank + 1)^-topic_exponent.
    item_spread: an item's vector = its topic's centroid + item_spread * noise (then unit length).
    user_topics: topics a user likes (their vector is a random mix of those centroids, unit length).
    scale: weight of the preference term; popularity_weight: weight of log(V * prior).
    popularity_exponent: the prior is (rank + 1)^-popularity_exponent over a random order of the items.
    temperature, no_click_utility: the multinomial logit; slate: items shown to a user per round.
    active_share: share of users active in a round; text_noise: chance an item's text names another topic.
    """

    items: int = 100_000
    users: int = 20_000
    topics: int = 50
    dim: int = 16
    topic_exponent: float = 0.8
    item_spread: float = 0.6
    user_topics: int = 3
    scale: float = 4.0
    popularity_weight: float = 0.5
    popularity_exponent: float = 1.0
    temperature: float = 1.0
    no_click_utility: float = 3.0
    slate: int = 10
    active_share: float = 0.5
    text_noise: float = 0.1
    seed: int = 0

    def __post_init__(self):
        for name in ("items", "users", "topics", "dim", "user_topics", "slate"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.slate > self.items:
            raise ValueError(f"slate {self.slate} is larger than the catalogue ({self.items} items)")
        if not 0.0 < self.active_share <= 1.0 or not 0.0 <= self.text_noise <= 1.0 or self.temperature <= 0:
            raise ValueError(f"need 0 < active_share <= 1, 0 <= text_noise <= 1 and temperature > 0, got "
                             f"{self.active_share}, {self.text_noise}, {self.temperature}")


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


class World:
    """The ground truth: vectors, topics, popularity prior, texts, the choice model."""

    def __init__(self, config: WorldConfig):
        self.config = c = config
        rng = np.random.default_rng(c.seed)
        self.centroids = _unit(rng.normal(size=(c.topics, c.dim)))
        sizes = (np.arange(c.topics) + 1.0) ** -c.topic_exponent
        self.item_topic = rng.choice(c.topics, size=c.items, p=sizes / sizes.sum())
        self.item_vectors = _unit(self.centroids[self.item_topic] + c.item_spread * rng.normal(size=(c.items, c.dim)))
        prior = np.empty(c.items)
        prior[rng.permutation(c.items)] = (np.arange(c.items) + 1.0) ** -c.popularity_exponent
        self.prior = prior / prior.sum()
        liked = np.stack([rng.choice(c.topics, size=c.user_topics, replace=False) for _ in range(c.users)])
        mix = rng.dirichlet(np.ones(c.user_topics), size=c.users)
        self.user_vectors = _unit(np.einsum("ut,utd->ud", mix, self.centroids[liked])
                                  + 0.3 * rng.normal(size=(c.users, c.dim)))
        self.item_bias = c.popularity_weight * np.log(c.items * self.prior)
        named = np.where(rng.random(c.items) < c.text_noise, rng.integers(0, c.topics, c.items), self.item_topic)
        self.texts = [f"{ADJECTIVES[i % len(ADJECTIVES)]} {_topic_word(t)} {NOUNS[(i // 7) % len(NOUNS)]} "
                      f"number {i}" for i, t in enumerate(named.tolist())]

    def utility(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """[U, K] true utilities of each user's slate (items [U, K])."""
        return self.config.scale * np.einsum("ud,ukd->uk", self.user_vectors[users], self.item_vectors[items]) \
            + self.item_bias[items]

    def choice_probabilities(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """[U, K + 1]: the multinomial logit over the slate, the last column the no-click option."""
        c = self.config
        logits = np.concatenate([self.utility(users, items), np.full((len(users), 1), c.no_click_utility)],
                                axis=1) / c.temperature
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)

    def choose(self, rng: np.random.Generator, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """The chosen item of each user's slate, -1 for no click."""
        k = items.shape[1]
        p = self.choice_probabilities(users, items)
        pick = np.minimum((rng.random((len(users), 1)) > np.cumsum(p, axis=1)).sum(axis=1), k)  # inverse CDF
        chosen = np.full(len(users), -1, np.int64)
        clicked = np.flatnonzero(pick < k)
        chosen[clicked] = items[clicked, pick[clicked]]
        return chosen

    def oracle_top_k(self, users: np.ndarray, k: int, exclude: list[set] | None = None,
                     batch: int = 512) -> np.ndarray:
        """[U, k] the items of highest true utility per user (excluding `exclude[u]`, the consumed ones)."""
        out = np.empty((len(users), k), np.int64)
        for start in range(0, len(users), batch):
            rows = users[start:start + batch]
            scores = self.config.scale * self.user_vectors[rows] @ self.item_vectors.T + self.item_bias
            out[start:start + len(rows)] = top_k_excluding(scores, rows, exclude, k)
        return out

    def popularity_slates(self, rng: np.random.Generator, users: np.ndarray) -> np.ndarray:
        """Round 0's exposure: each user's slate drawn from the popularity prior, without repeats."""
        k = self.config.slate
        draws = rng.choice(self.config.items, size=(len(users), 4 * k), p=self.prior)
        out = np.empty((len(users), k), np.int64)
        for r, row in enumerate(draws):
            _, first = np.unique(row, return_index=True)
            picked = row[np.sort(first)][:k]
            while len(picked) < k:  # a tiny catalogue: fill with uniform draws
                picked = np.unique(np.concatenate([picked, rng.integers(0, self.config.items, k)]))[:k]
            out[r] = picked
        return out


def top_k_excluding(scores: np.ndarray, users: np.ndarray, exclude: list[set] | None, k: int) -> np.ndarray:
    """[U, k] the columns of highest score per row, best first (ties by column), leaving out each row's
    `exclude[users[row]]` (the items its user consumed); `scores` is overwritten there."""
    if exclude is not None:
        lists = [exclude[u] for u in users.tolist()]
        rows = np.repeat(np.arange(len(lists)), [len(s) for s in lists])
        scores[rows, np.fromiter((i for s in lists for i in s), np.int64, count=len(rows))] = -np.inf
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1)


def _topic_word(topic: int) -> str:
    return TOPIC_WORDS[topic] if topic < len(TOPIC_WORDS) else f"topic{topic}"


# -- loop metrics -------------------------------------------------------------------------------------------
def gini(counts: np.ndarray) -> float:
    """Gini coefficient of non-negative counts (0 = equal, -> 1 = all on one)."""
    x = np.sort(np.asarray(counts, dtype=np.float64))
    n, total = len(x), x.sum()
    if n == 0 or total == 0:
        return 0.0
    return float((2 * np.arange(1, n + 1) - n - 1) @ x / (n * total))


def top_share(counts: np.ndarray, top: int = 100) -> float:
    """Share of all impressions that go to the `top` most shown items (the paper's Table 3 figure)."""
    total = counts.sum()
    return float(np.sort(counts)[::-1][:top].sum() / total) if total else 0.0


def slate_recall(slates: np.ndarray, oracle: np.ndarray) -> float:
    """Mean share of each user's oracle list found in their slate ([U, k] each, distinct items in a row)."""
    return float(((slates[:, :, None] == oracle[:, None, :]).any(-1).sum(1) / oracle.shape[1]).mean())


def jaccard_homogenisation(slates: np.ndarray, rng: np.random.Generator, pairs: int = 2000) -> float:
    """Mean Jaccard similarity of the lists of random pairs of distinct users (1 = everyone sees the same)."""
    if len(slates) < 2:
        return 0.0
    a = rng.integers(0, len(slates), pairs)
    b = (a + rng.integers(1, len(slates), pairs)) % len(slates)
    sims = [len(set(slates[i]) & set(slates[j])) / len(set(slates[i]) | set(slates[j]))
            for i, j in zip(a.tolist(), b.tolist())]
    return float(np.mean(sims))


def cluster_purity(true_topics: np.ndarray, clusters: np.ndarray) -> float:
    """Share of items whose cluster's most common true topic is their own."""
    clusters, true_topics = np.asarray(clusters), np.asarray(true_topics)
    hits = 0
    for c in np.unique(clusters):
        hits += np.bincount(true_topics[clusters == c]).max()
    return float(hits / len(clusters))
