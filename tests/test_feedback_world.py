"""The feedback-loop simulator's world (benchmarks/feedback_world.py): choice model, oracle, metrics."""

import numpy as np
import pytest

from benchmarks.feedback_world import (
    World,
    WorldConfig,
    cluster_purity,
    gini,
    jaccard_homogenisation,
    slate_recall,
    top_share,
)

SMALL = WorldConfig(items=300, users=50, topics=6, dim=8, slate=5, seed=3)


def test_choice_probabilities_are_the_multinomial_logit_with_a_no_click_option():
    world = World(SMALL)
    users, items = np.array([0, 7]), np.array([[1, 2, 3, 4, 5], [10, 20, 30, 40, 50]])
    p = world.choice_probabilities(users, items)
    for row, user in enumerate(users):
        u = SMALL.scale * world.user_vectors[user] @ world.item_vectors[items[row]].T \
            + SMALL.popularity_weight * np.log(SMALL.items * world.prior[items[row]])
        e = np.exp(np.append(u, SMALL.no_click_utility) / SMALL.temperature)
        np.testing.assert_allclose(p[row], e / e.sum(), rtol=1e-10)


def test_empirical_choice_shares_match_the_probabilities():
    world = World(SMALL)
    n = 200_000
    users = np.full(n, 4)
    slate = np.array([[3, 9, 27, 81, 243]])
    chosen = world.choose(np.random.default_rng(0), users, np.repeat(slate, n, axis=0))
    p = world.choice_probabilities(users[:1], slate)[0]
    shares = np.array([(chosen == i).mean() for i in slate[0]] + [(chosen == -1).mean()])
    assert np.all(np.abs(shares - p) < 4 * np.sqrt(p * (1 - p) / n) + 1e-9), (shares, p)


def test_the_world_is_a_function_of_its_seed_and_texts_name_their_topic():
    a, b = World(SMALL), World(SMALL)
    np.testing.assert_array_equal(a.item_vectors, b.item_vectors)
    assert a.texts == b.texts and len(a.texts) == SMALL.items
    np.testing.assert_allclose(a.prior.sum(), 1.0)
    from benchmarks.feedback_world import TOPIC_WORDS

    named = np.mean([TOPIC_WORDS[t] in text.split() for t, text in zip(a.item_topic, a.texts)])
    assert 1 - SMALL.text_noise - 0.06 < named <= 1.0
    assert not np.array_equal(World(WorldConfig(**{**SMALL.__dict__, "seed": 4})).item_topic, a.item_topic)


def test_oracle_top_k_is_the_highest_true_utility_without_the_excluded_items():
    world = World(SMALL)
    users = np.array([0, 1, 2])
    exclude = [set() for _ in range(SMALL.users)]
    exclude[1] = {int(world.oracle_top_k(np.array([1]), 1)[0, 0])}
    top = world.oracle_top_k(users, 4, exclude)
    for row, user in enumerate(users):
        scores = world.utility(np.array([user]), np.arange(SMALL.items)[None, :])[0]
        scores[list(exclude[user])] = -np.inf
        np.testing.assert_array_equal(top[row], np.argsort(-scores, kind="stable")[:4])


def test_popularity_slates_hold_distinct_items_and_follow_the_prior():
    world = World(SMALL)
    slates = world.popularity_slates(np.random.default_rng(1), np.arange(SMALL.users).repeat(20))
    assert all(len(set(s)) == SMALL.slate for s in slates)
    shown = np.bincount(slates.ravel(), minlength=SMALL.items)
    head = np.argsort(-world.prior)[:10]
    assert shown[head].mean() > 5 * shown.mean()


def test_metrics_against_hand_computed_values():
    assert gini(np.array([0, 0, 0, 1])) == pytest.approx(0.75)
    assert gini(np.array([2, 2, 2])) == pytest.approx(0.0)
    assert gini(np.array([1, 3])) == pytest.approx(0.25)  # mean absolute difference 2 / (2 * 2 * mean 2)
    assert top_share(np.array([5, 1, 3, 1]), top=2) == pytest.approx(0.8)
    rng = np.random.default_rng(0)
    assert jaccard_homogenisation(np.array([[1, 2], [1, 2], [1, 2]]), rng) == pytest.approx(1.0)
    assert jaccard_homogenisation(np.array([[1, 2], [3, 4]]), rng) == pytest.approx(0.0)
    assert jaccard_homogenisation(np.array([[1, 2], [2, 3]]), rng) == pytest.approx(1 / 3)
    assert cluster_purity(np.array([0, 0, 1, 1, 1]), np.array([5, 5, 5, 6, 6])) == pytest.approx(0.8)


def test_bad_world_config_names_the_value():
    with pytest.raises(ValueError, match="slate 20 is larger than the catalogue"):
        WorldConfig(items=10, slate=20)
    with pytest.raises(ValueError, match="items must be >= 1, got 0"):
        WorldConfig(items=0)


def test_slate_recall_matches_set_intersection():
    rng = np.random.default_rng(5)
    slates = np.stack([rng.choice(40, 6, replace=False) for _ in range(300)])
    oracle = np.stack([rng.choice(40, 6, replace=False) for _ in range(300)])
    expected = np.mean([len(set(s) & set(o)) / 6 for s, o in zip(slates.tolist(), oracle.tolist())])
    assert slate_recall(slates, oracle) == pytest.approx(expected, abs=1e-12)
    assert slate_recall(oracle, oracle) == 1.0
    assert slate_recall(slates, slates[:, ::-1] + 100) == 0.0
