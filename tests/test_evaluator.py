import json
import os

import numpy as np
import pytest

from llm_hardneg.components.evaluator import EvaluatorConfig, evaluate, popularity_figures, run_evaluator
from llm_hardneg.components.evaluator.core import NO_EXCLUSION


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hit_rate_matches_numpy_oracle(seed):
    rng = np.random.default_rng(seed)
    candidates = rng.normal(size=(300, 6)).astype(np.float32)
    queries = rng.normal(size=(250, 6)).astype(np.float32)
    targets = rng.integers(-1, 300, size=250)  # -1: target not in the corpus
    config = EvaluatorConfig(ks=(5, 50), batch_size=64)
    batches = [(queries[i:i + 64], targets[i:i + 64]) for i in range(0, 250, 64)]
    result = evaluate(batches, candidates, config)
    scores = queries @ candidates.T
    for k in (5, 50):
        topk = np.argsort(-scores, axis=1)[:, :k]
        expected = np.mean([t >= 0 and t in row for t, row in zip(targets, topk)])
        assert result["metrics"][f"hit_rate@{k}"] == pytest.approx(expected)
        ndcg = np.mean([1 / np.log2(list(row).index(t) + 2) if t >= 0 and t in row else 0.0
                        for t, row in zip(targets, topk)])
        assert result["metrics"][f"ndcg@{k}"] == pytest.approx(ndcg)
    assert result["metrics"]["targets_not_in_corpus"] == int((targets < 0).sum())
    top50 = np.argsort(-scores, axis=1)[:, :50]
    np.testing.assert_array_equal(result["appearances"], np.bincount(top50.ravel(), minlength=300))


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("edges", [(1, 5), (2,)])
def test_hit_rate_by_target_frequency_matches_numpy_oracle(seed, edges):
    rng = np.random.default_rng(seed)
    candidates = rng.normal(size=(200, 5)).astype(np.float32)
    queries = rng.normal(size=(180, 5)).astype(np.float32)
    targets = rng.integers(-1, 200, size=180)  # -1: not in the corpus, frequency 0
    train_counts = rng.choice([0, 1, 2, 4, 5, 30], size=200)
    config = EvaluatorConfig(ks=(10, 40), batch_size=50, frequency_buckets=edges)
    result = evaluate([(queries[i:i + 50], targets[i:i + 50]) for i in range(0, 180, 50)], candidates, config,
                      train_counts)
    groups = result["metrics"]["by_target_frequency"]
    assert list(groups) == (["0", "1-4", "5+"] if edges == (1, 5) else ["0-1", "2+"])
    frequency = np.where(targets >= 0, train_counts[np.maximum(targets, 0)], 0)
    rank = np.argsort(np.argsort(-(queries @ candidates.T), axis=1), axis=1)[np.arange(180), np.maximum(targets, 0)]
    rank = np.where(targets >= 0, rank, 10**9)
    low = [0, *edges]
    for g, name in enumerate(groups):
        rows = (frequency >= low[g]) & (frequency < (low[g + 1] if g + 1 < len(low) else np.inf))
        assert groups[name]["queries"] == int(rows.sum())
        for k in (10, 40):
            assert groups[name][f"hit_rate@{k}"] == pytest.approx((rank[rows] < k).mean() if rows.any() else 0.0)
            dcg = np.where(rank[rows] < k, 1 / np.log2(np.minimum(rank[rows], k) + 2), 0.0)
            assert groups[name][f"ndcg@{k}"] == pytest.approx(dcg.mean() if rows.any() else 0.0)
    assert sum(g["queries"] for g in groups.values()) == 180
    with pytest.raises(ValueError, match="frequency_buckets"):
        EvaluatorConfig(frequency_buckets=(5, 1))


def test_hit_rate_by_new_and_returning_users_matches_numpy_oracle():
    rng = np.random.default_rng(3)
    candidates = rng.normal(size=(100, 4)).astype(np.float32)
    queries = rng.normal(size=(90, 4)).astype(np.float32)
    targets = rng.integers(0, 100, size=90)
    new = rng.random(90) < 0.3
    config = EvaluatorConfig(ks=(5, 20), batch_size=40)
    result = evaluate([(queries[i:i + 40], targets[i:i + 40], NO_EXCLUSION, None, new[i:i + 40])
                       for i in range(0, 90, 40)], candidates, config)
    rank = np.argsort(np.argsort(-(queries @ candidates.T), axis=1), axis=1)[np.arange(90), targets]
    for name, rows in (("returning", ~new), ("new", new)):
        group = result["metrics"]["by_user"][name]
        assert group["queries"] == int(rows.sum())
        for k in (5, 20):
            assert group[f"hit_rate@{k}"] == pytest.approx((rank[rows] < k).mean())
    assert "by_user" not in evaluate([(queries, targets)], candidates, config)["metrics"]


def test_popularity_figures():
    appearances = np.array([10, 0, 5, 5, 0])
    train_counts = np.array([100, 90, 1, 0, 0])
    figures = popularity_figures(appearances, train_counts, 2,
                                 EvaluatorConfig(top_popular=2, min_recommended=(1, 6)))
    assert figures["top2_popular_share_of_top2"] == pytest.approx(10 / 20)
    assert figures["distinct_items_in_top2"] == 3
    assert figures["share_of_catalogue_recommended_at_least_1x"] == pytest.approx(3 / 5)
    assert figures["share_of_catalogue_recommended_at_least_6x"] == pytest.approx(1 / 5)


def test_run_evaluator(examples_dir, clusters_dir, tmp_path):
    from llm_hardneg.components.trainer import TrainerConfig, run_trainer

    model = str(tmp_path / "model")
    run_trainer(TrainerConfig(batch_size=32, epochs=1, embedding_dim=8, history_length=5), examples_dir,
                clusters_dir, model)
    metrics = run_evaluator(EvaluatorConfig(ks=(5, 40)), model, examples_dir, str(tmp_path / "eval"), 5)
    summary = json.load(open(os.path.join(examples_dir, "summary.json")))
    assert metrics["num_queries"] == summary["eval_positives"]
    assert metrics["hit_rate@40"] == 1.0  # the corpus has 40 items
    assert 0.0 <= metrics["hit_rate@5"] <= 1.0
    assert json.load(open(tmp_path / "eval" / "metrics.json"))["hit_rate@5"] == metrics["hit_rate@5"]
    # by user: a target's user is new when example_gen's users.txt (the training users) does not hold them
    from tests.test_example_gen import read_examples

    training_users = set(open(os.path.join(examples_dir, "users.txt")).read().split())
    evaluation = [e for e in read_examples(os.path.join(examples_dir, "eval")) if e["label"] == 1]
    new = sum(e["user_id"] not in training_users for e in evaluation)
    assert metrics["by_user"]["new"]["queries"] == new
    assert metrics["by_user"]["returning"]["queries"] == len(evaluation) - new
    # a budget that allows 2 queries a batch gives exactly the same figures
    assert EvaluatorConfig(memory_budget_mb=1).query_batch(2**20 // 24) == 2
    small = run_evaluator(EvaluatorConfig(ks=(5, 40), memory_budget_mb=1, batch_size=3), model, examples_dir,
                          str(tmp_path / "eval2"), 5)
    assert small.keys() == metrics.keys()
    for key, value in metrics.items():  # sums in another order: equal to rounding
        if key == "distinct_queries":  # examples sharing a (user, history) are scored once per read batch
            assert value <= small[key] <= metrics["num_queries"]
        elif key in ("by_target_frequency", "by_user"):
            assert value.keys() == small[key].keys() == ({"0", "1-4", "5+"} if key == "by_target_frequency"
                                                         else {"returning", "new"})
            for name, group in value.items():
                assert small[key][name] == pytest.approx(group, rel=1e-12), name
            assert sum(g["queries"] for g in value.values()) == metrics["num_queries"]
        else:
            assert small[key] == (pytest.approx(value, rel=1e-12) if isinstance(value, float) else value), key


def test_query_batch_bounds_memory_by_the_budget():
    config = EvaluatorConfig()  # 1 GB, 4096 queries at most
    assert config.query_batch(3_883) == 4096
    for items in (10**6, 10**7, 10**8):
        assert 3 * 4 * items * config.query_batch(items) <= 2**30 or config.query_batch(items) == 1
    assert config.query_batch(10**6) == 89


def test_batches_of_any_size_share_one_trace():
    from llm_hardneg.components.evaluator.core import EvaluatorConfig, _batch_top_k, evaluate

    rng = np.random.default_rng(0)
    candidates = rng.normal(size=(30, 4)).astype(np.float32)
    before = _batch_top_k.experimental_get_tracing_count()
    for batch, ks in ((7, (5,)), (4, (3, 9))):  # a smaller last batch, another K
        queries, targets = rng.normal(size=(10, 4)).astype(np.float32), rng.integers(0, 30, 10)
        evaluate(((queries[i:i + batch], targets[i:i + batch]) for i in range(0, 10, batch)), candidates,
                 EvaluatorConfig(ks=ks))
    assert _batch_top_k.experimental_get_tracing_count() - before <= 1


def test_scann_search_reports_recall_and_matches_exact_where_it_retrieves_the_same():
    from llm_hardneg.components.evaluator.core import EvaluatorConfig, evaluate

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(40, 16))  # clustered, as trained item embeddings are
    candidates = (centres[rng.integers(0, 40, 5000)] + 0.3 * rng.normal(size=(5000, 16))).astype(np.float32)
    candidates /= np.linalg.norm(candidates, axis=1, keepdims=True)  # 5000 > brute_force_below: tree + AH + reorder
    queries = candidates[rng.integers(0, 5000, 300)] + 0.1 * rng.normal(size=(300, 16)).astype(np.float32)
    targets = rng.integers(0, 5000, 300)
    targets[:150] = np.argsort(-(queries[:150] @ candidates.T), axis=1)[:, 3]  # half the targets ranked 4th
    batches = lambda: ((queries[i:i + 64], targets[i:i + 64]) for i in range(0, 300, 64))  # noqa: E731
    exact = evaluate(batches(), candidates, EvaluatorConfig(ks=(10, 50)))["metrics"]
    approx = evaluate(batches(), candidates, EvaluatorConfig(ks=(10, 50), search="scann", recall_sample=100))
    metrics = approx["metrics"]
    assert metrics["search"] == "scann" and metrics["recall_queries"] == 100
    assert 0.9 <= metrics["recall@50"] <= 1.0
    for key in ("hit_rate@10", "hit_rate@50", "ndcg@10"):  # the index misses a few; float ties may swap a few
        assert metrics[key] == pytest.approx(exact[key], abs=0.03), key
    assert exact["hit_rate@10"] >= 0.5 and approx["appearances"].sum() == 300 * 50
    assert EvaluatorConfig(search="scann").query_batch(10**7) == 4096
    with pytest.raises(ValueError, match="search must be 'exact' or 'scann', got 'faiss'"):
        EvaluatorConfig(search="faiss")


def _oracle_with_exclusion(queries, candidates, targets, excluded, k):
    """HR@k, NDCG@k and top-k appearances with each row's excluded items out of the ranking (NumPy)."""
    scores = queries @ candidates.T
    scores[excluded[:, 0], excluded[:, 1]] = -np.inf
    hits, gains, appearances = 0, 0.0, np.zeros(len(candidates), np.int64)
    for row, target in enumerate(targets):
        top = np.argsort(-scores[row], kind="stable")[:k]
        appearances[top] += 1
        if target >= 0 and np.isfinite(scores[row, target]) and target in top:
            hits += 1
            gains += 1 / np.log2(list(top).index(target) + 2)
    return hits / len(targets), gains / len(targets), appearances


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exclude_seen_matches_numpy_oracle(seed):
    rng = np.random.default_rng(seed)
    candidates = rng.normal(size=(120, 5)).astype(np.float32)
    queries = rng.normal(size=(90, 5)).astype(np.float32)
    targets = rng.integers(-1, 120, size=90)
    scores = queries @ candidates.T
    excluded = []
    for row in range(90):  # each row excludes some of the items that outrank its target, and random others
        better = np.flatnonzero(scores[row] > scores[row, max(targets[row], 0)])
        chosen = rng.choice(better, size=min(len(better), rng.integers(0, 15)), replace=False)
        excluded += [(row, i) for i in chosen] + [(row, i) for i in rng.integers(0, 120, size=3)]
    excluded += [(row, targets[row]) for row in range(0, 90, 9) if targets[row] >= 0]  # seen targets: misses
    excluded = np.unique(np.array(excluded, np.int64), axis=0)
    config = EvaluatorConfig(ks=(5, 20), exclude_seen=True)
    batches = []
    for start in range(0, 90, 32):  # pairs re-based to each batch's rows
        rows = (excluded[:, 0] >= start) & (excluded[:, 0] < start + 32)
        batches.append((queries[start:start + 32], targets[start:start + 32], excluded[rows] - [start, 0]))
    result = evaluate(batches, candidates, config)
    for k in (5, 20):
        hr, ndcg, appearances = _oracle_with_exclusion(queries, candidates, targets, excluded, k)
        assert result["metrics"][f"hit_rate@{k}"] == pytest.approx(hr)
        assert result["metrics"][f"ndcg@{k}"] == pytest.approx(ndcg)
    np.testing.assert_array_equal(result["appearances"], appearances)  # k = 20, the largest
    pairs = set(map(tuple, excluded.tolist()))
    seen_targets = sum((row, t) in pairs for row, t in enumerate(targets.tolist()))
    assert seen_targets >= 10
    assert result["metrics"]["targets_seen_in_training"] == seen_targets and result["metrics"]["exclude_seen"]
    plain = evaluate([(q, t) for q, t, _ in batches], candidates, EvaluatorConfig(ks=(5, 20)))["metrics"]
    assert plain["hit_rate@5"] < result["metrics"]["hit_rate@5"]  # excluding outranking items lifts targets


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("search,ties", [("exact", "pessimistic"), ("exact", "optimistic"), ("scann", "pessimistic")])
def test_shared_queries_give_the_figures_of_one_query_per_target(seed, search, ties):
    """Targets sharing a query (QueryBatch.rows), with exclusions and tied scores: the same figures as the same
    queries repeated for every target; exact ranks count the candidates scoring higher, and with pessimistic
    ties those scoring the same too."""
    from llm_hardneg.components.evaluator.core import QueryBatch

    rng = np.random.default_rng(seed)
    candidates = rng.normal(size=(150, 5)).astype(np.float32)
    candidates[100:110] = candidates[:10]  # tied scores for every query
    queries = rng.normal(size=(30, 5)).astype(np.float32)
    rows = rng.integers(0, 30, size=110)
    targets = rng.integers(-1, 150, size=110)
    excluded = np.unique(np.stack([rng.integers(0, 30, size=200), rng.integers(0, 150, size=200)], 1), axis=0)
    config = EvaluatorConfig(ks=(5, 20), exclude_seen=True, search=search, recall_sample=30, ties=ties)
    shared = evaluate([QueryBatch(queries, targets, excluded, rows)], candidates, config)
    per_target = np.array([(i, item) for i, row in enumerate(rows) for r, item in excluded if r == row], np.int64)
    repeated = evaluate([(queries[rows], targets, per_target)], candidates, config)
    for key, value in repeated["metrics"].items():
        if key not in ("distinct_queries", "recall@20", "recall_queries"):
            assert shared["metrics"][key] == pytest.approx(value), key
    assert shared["metrics"]["distinct_queries"] == 30 and repeated["metrics"]["distinct_queries"] == 110
    np.testing.assert_array_equal(shared["appearances"], repeated["appearances"])
    if search == "exact":
        scores = queries @ candidates.T
        scores[excluded[:, 0], excluded[:, 1]] = -np.inf
        known = targets >= 0
        target_scores = scores[rows, np.maximum(targets, 0)]
        ahead = scores[rows] >= target_scores[:, None] if ties == "pessimistic" else \
            scores[rows] > target_scores[:, None]
        rank = np.where(known & np.isfinite(target_scores), ahead.sum(1) - (ties == "pessimistic"), 10**9)
        for k in (5, 20):
            assert shared["metrics"][f"hit_rate@{k}"] == pytest.approx((rank < k).mean())
            dcg = np.where(rank < k, 1 / np.log2(np.minimum(rank, k) + 2), 0.0)
            assert shared["metrics"][f"ndcg@{k}"] == pytest.approx(dcg.mean())


@pytest.mark.parametrize("ties", ["pessimistic", "optimistic"])
def test_tied_scores_rank_as_the_tie_rule_says(ties):
    """Integer embeddings tie almost everywhere: ranks match a NumPy oracle under both rules, and a target
    sharing its row with 40 items (one unknown-item row) is a miss when ties count against it."""
    rng = np.random.default_rng(3)
    candidates = rng.integers(-2, 3, size=(160, 3)).astype(np.float32)
    candidates[99:140] = 5.0  # 41 items on one row
    queries = rng.integers(-2, 3, size=(90, 3)).astype(np.float32)
    targets = rng.integers(0, 160, size=90)
    targets[:10] = np.arange(100, 110)  # targets on the shared row
    queries[:10] = 1.0  # whose queries score that row highest (the target ties with 40 others)
    result = evaluate([(queries[:45], targets[:45]), (queries[45:], targets[45:])], candidates,
                      EvaluatorConfig(ks=(5, 6, 20), ties=ties))
    scores = queries @ candidates.T
    own = scores[np.arange(90), targets][:, None]
    rank = (scores >= own).sum(1) - 1 if ties == "pessimistic" else (scores > own).sum(1)
    for k in (5, 6, 20):
        assert result["metrics"][f"hit_rate@{k}"] == pytest.approx((rank < k).mean())
        assert result["metrics"][f"ndcg@{k}"] == pytest.approx(np.where(rank < k, 1 / np.log2(rank + 2), 0).mean())
    assert (rank[:10] >= 40).all() if ties == "pessimistic" else (rank[:10] < 5).all()  # the shared row
    assert result["metrics"]["ties"] == ties
    # a tie group that fills the list exactly (3 higher + 3 tied, K = 6) is a hit at rank 5, one more a miss
    base = np.array([[9.0], [9.0], [9.0], [5.0], [5.0], [5.0], [5.0], [1.0]], np.float32)
    for members, expected in ((3, 1.0), (4, 0.0 if ties == "pessimistic" else 1.0)):
        cands = np.concatenate([base[:3 + members], base[-1:]])
        hr = evaluate([(np.ones([1, 1], np.float32), np.array([3]))], cands, EvaluatorConfig(ks=(6,), ties=ties))
        assert hr["metrics"]["hit_rate@6"] == expected


def test_seen_items_give_every_pair_of_each_batch_user():
    from llm_hardneg.components.evaluator.core import SeenItems, fingerprints

    rng = np.random.default_rng(0)
    users = rng.integers(0, 20, size=500).astype(str)
    items = rng.integers(-1, 50, size=500)  # -1: not in the catalogue, left out; pairs repeat
    seen = SeenItems(fingerprints(users), items)
    batch = np.array(["3", "no-such-user", "3", "7", "19"])
    pairs = seen.pairs(batch)
    expected = {(row, int(i)) for row, user in enumerate(batch) for u, i in zip(users, items) if u == user and i >= 0}
    assert {tuple(p) for p in pairs.tolist()} == expected and len(pairs) == len(expected)
    assert SeenItems(np.zeros([0], np.int64), np.zeros([0], np.int64)).pairs(batch).shape == (0, 2)


def test_scann_search_leaves_excluded_items_out_of_the_top_k():
    from llm_hardneg.components.evaluator.core import SeenItems, fingerprints

    rng = np.random.default_rng(1)
    candidates = rng.normal(size=(200, 8)).astype(np.float32)  # small: ScaNN's brute force, exact
    queries, targets = rng.normal(size=(40, 8)).astype(np.float32), rng.integers(0, 200, 40)
    users = np.array([f"u{i % 10}" for i in range(40)])
    history = np.argsort(-(queries @ candidates.T), axis=1)[:, :7]  # every user's 7 best items are "seen"
    seen = SeenItems(fingerprints(np.repeat(users, 7)), history.ravel())
    batches = lambda: [(queries, targets, seen.pairs(users))]  # noqa: E731
    exact = evaluate(batches(), candidates, EvaluatorConfig(ks=(10,), exclude_seen=True))
    approx = evaluate(batches(), candidates, EvaluatorConfig(ks=(10,), exclude_seen=True, search="scann"))
    assert approx["metrics"]["hit_rate@10"] == pytest.approx(exact["metrics"]["hit_rate@10"])
    np.testing.assert_array_equal(approx["appearances"], exact["appearances"])
    assert approx["metrics"]["recall@10"] == pytest.approx(1.0)
    assert exact["appearances"][np.unique(history)].sum() < approx["appearances"].sum()


def test_run_evaluator_excludes_each_users_training_items(examples_dir, clusters_dir, tmp_path):
    import tensorflow as tf

    from llm_hardneg.components.trainer import TrainerConfig, run_trainer
    from llm_hardneg.components.trainer.data import example_files, make_dataset

    model = str(tmp_path / "model")
    run_trainer(TrainerConfig(batch_size=32, epochs=1, embedding_dim=8, history_length=5, strategy="in_batch"),
                examples_dir, clusters_dir, model)
    plain = run_evaluator(EvaluatorConfig(ks=(5, 10)), model, examples_dir, str(tmp_path / "plain"), 5)
    seen = run_evaluator(EvaluatorConfig(ks=(5, 10), exclude_seen=True), model, examples_dir,
                         str(tmp_path / "seen"), 5)
    train = {(u, i) for b in make_dataset(example_files(examples_dir, "train"), 256, 1)
             for u, i in zip(b["user_id"].numpy(), b["item_id"].numpy())}
    evals = [(u, i) for b in make_dataset(example_files(examples_dir, "eval"), 256, 1, positives_only=True)
             for u, i in zip(b["user_id"].numpy(), b["item_id"].numpy())]
    repeats = sum(pair in train for pair in evals)  # the tiny data repeats (user, item) pairs across the cut
    assert seen["targets_seen_in_training"] == repeats > 0 and seen["num_queries"] == len(evals)
    assert seen["exclude_seen"] and not plain["exclude_seen"]
    for k in (5, 10):  # a target not seen can only rise when items leave the ranking
        assert seen[f"hit_rate@{k}"] >= plain[f"hit_rate@{k}"] - repeats / len(evals) - 1e-12
    assert tf.io.gfile.exists(str(tmp_path / "seen" / "metrics.json"))
