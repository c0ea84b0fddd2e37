import numpy as np
import pytest
import tensorflow as tf

from llm_hardneg.components.trainer.losses import (
    MASKED_LOGIT,
    MASS_ROWS,
    SOURCES,
    expected_counts,
    log_count,
    mixed_negatives_loss,
)


def numpy_loss(q, p, pid, t, lc=None, n=None, nid=None, nvalid=None, nlc=None, sources=(), w=None, rows=None,
               excluded=None):
    """Hand computation of the loss and the per-source mass shares, one example at a time (the first `rows`
    queries only, every one by default; the in-batch columns stay the whole batch's; `excluded` [B, B]: in-batch
    columns left out of a query's negatives)."""
    total, b = 0.0, len(q)
    w = np.ones(b) if w is None else w
    shares = np.zeros(len(SOURCES))
    for i in range(b if rows is None else rows):
        logits = []  # (logit, is positive, source)
        for j in range(b):
            if j != i and (pid[j] == pid[i] or (excluded is not None and excluded[i, j])):
                continue  # accidental hit or excluded column: removed
            logits.append((q[i] @ p[j] / t - (0.0 if lc is None else lc[i, j]), j == i, "in_batch"))
        if n is not None:
            for k in range(n.shape[1]):
                if nvalid[i, k] and nid[i, k] != pid[i]:
                    logits.append((q[i] @ n[i, k] / t - (0.0 if nlc is None else nlc[i, k]), False, sources[k]))
        values = np.array([s for s, _, _ in logits], np.float64)
        positive = [s for s, is_pos, _ in logits if is_pos][0]
        ce = np.log(np.exp(values - values.max()).sum()) + values.max() - positive
        total += w[i] * ce
        probs = np.exp(values - values.max()) / np.exp(values - values.max()).sum()
        mass = np.array([sum(pr for pr, (_, is_pos, s) in zip(probs, logits) if not is_pos and s == name)
                         for name in SOURCES])
        if mass.sum() > 0:
            shares += w[i] * mass / mass.sum()
    return total / b, shares / max(w[:rows].sum(), 1e-12)


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("with_negatives", [False, True])
@pytest.mark.parametrize("with_correction", [False, True])
def test_matches_numpy_oracle(seed, with_negatives, with_correction):
    rng = np.random.default_rng(seed)
    b, k, d, t = 6, 5, 5, 0.1
    q, p = _unit(rng.normal(size=(b, d))), _unit(rng.normal(size=(b, d)))
    pid = rng.integers(0, 4, size=b)  # duplicates -> accidental hits
    lc = np.log(rng.uniform(0.01, 3.0, size=(b, b))) if with_correction else None
    w = rng.integers(0, 2, size=b).astype(np.float32)
    w[0] = 1.0
    kwargs, nargs = {}, {}
    if with_negatives:
        n = _unit(rng.normal(size=(b, k, d)))
        nid = rng.integers(0, 6, size=(b, k))  # some equal to the positive -> masked
        nvalid = rng.uniform(size=(b, k)) > 0.3
        nlc = np.log(rng.uniform(0.05, 2, size=(b, k))) if with_correction else None
        sources = ["random", "cluster", "cluster", "edis", "cluster"]
        nargs = dict(n=n, nid=nid, nvalid=nvalid, nlc=nlc, sources=sources)
        kwargs = dict(negatives=tf.constant(n, tf.float32), negative_ids=tf.constant(nid),
                      negative_valid=tf.constant(nvalid), negative_sources=sources,
                      negative_log_count=None if nlc is None else tf.constant(nlc, tf.float32))
    loss, stats = mixed_negatives_loss(
        tf.constant(q, tf.float32), tf.constant(p, tf.float32), tf.constant(pid), t,
        in_batch_log_count=None if lc is None else tf.constant(lc, tf.float32), sample_weight=tf.constant(w), **kwargs)
    expected, shares = numpy_loss(q, p, pid, t, lc, w=w, **nargs)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-4, atol=1e-5)
    for name, share in zip(SOURCES, shares):
        if f"mass_{name}" in stats:
            np.testing.assert_allclose(float(stats[f"mass_{name}"]), share, rtol=1e-4, atol=1e-6)
    if with_negatives:
        keep = nargs["nvalid"] & (nargs["nid"] != pid[:, None])
        np.testing.assert_allclose(float(stats["negative_masked_rate"]), 1 - keep.mean(), rtol=1e-6)
        assert sum(float(v) for key, v in stats.items() if key.startswith("mass_")) == pytest.approx(1.0, abs=1e-5)
    else:
        assert float(stats["mass_in_batch"]) == pytest.approx(1.0)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("negatives", ["none", "per_example", "shared"])
def test_excluded_in_batch_columns_leave_the_softmax(seed, negatives):
    """in_batch_excluded [B, B] (e.g. the query's own user's other targets): those in-batch columns leave the
    query's negatives, with every kind of pool negatives beside them; the positive's own column stays the
    positive even when marked (NumPy oracle), and an all-False mask is no mask."""
    rng = np.random.default_rng(seed)
    b, k, d, t = 7, 4, 5, 0.1
    q, p = _unit(rng.normal(size=(b, d))), _unit(rng.normal(size=(b, d)))
    pid = rng.integers(0, 6, size=b)
    lc = np.log(rng.uniform(0.01, 3.0, size=(b, b)))
    excluded = rng.uniform(size=(b, b)) > 0.5
    excluded[0, 0] = True
    w = rng.integers(1, 3, size=b).astype(np.float32)
    kwargs, nargs = {}, {}
    sources = ["random", "cluster", "cluster", "cluster"]
    if negatives != "none":
        n, nid = _unit(rng.normal(size=(b, k, d))), rng.integers(0, 8, size=(b, k))
        nvalid, nlc = rng.uniform(size=(b, k)) > 0.3, np.log(rng.uniform(0.05, 2, size=(b, k)))
        if negatives == "shared":
            n, nid, nlc = np.broadcast_to(n[0], (b, k, d)), np.broadcast_to(nid[0], (b, k)), np.repeat(nlc[:1], b, 0)
            kwargs = dict(negatives=tf.constant(n[0], tf.float32), negative_ids=tf.constant(nid[0]),
                          negative_log_count=tf.constant(nlc[:1], tf.float32),
                          negative_sources=tf.constant([SOURCES.index(s) for s in sources]))
        else:
            kwargs = dict(negatives=tf.constant(n, tf.float32), negative_ids=tf.constant(nid),
                          negative_log_count=tf.constant(nlc, tf.float32), negative_sources=sources)
        kwargs["negative_valid"] = tf.constant(nvalid)
        nargs = dict(n=n, nid=nid, nvalid=nvalid, nlc=nlc, sources=sources)
    args = (tf.constant(q, tf.float32), tf.constant(p, tf.float32), tf.constant(pid), t)
    common = dict(in_batch_log_count=tf.constant(lc, tf.float32), sample_weight=tf.constant(w), **kwargs)
    loss, _ = mixed_negatives_loss(*args, in_batch_excluded=tf.constant(excluded), **common)
    expected, _ = numpy_loss(q, p, pid, t, lc, w=w, excluded=excluded, **nargs)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-4, atol=1e-5)
    unmasked, _ = numpy_loss(q, p, pid, t, lc, w=w, **nargs)
    assert abs(expected - unmasked) > 1e-3  # the mask changed something to check
    none, _ = mixed_negatives_loss(*args, in_batch_excluded=tf.zeros([b, b], tf.bool), **common)
    np.testing.assert_allclose(float(none), unmasked, rtol=1e-4, atol=1e-5)


def numpy_counts(batch_items, drawn, prob, cluster_of, in_pool, n_r, n_c, filled, filled_of_cluster):
    """c_i(j) by its definition, one (query, candidate) at a time."""
    b = len(batch_items)

    def count(i, j):
        c = (b - 1) * prob[j]
        if in_pool[j]:
            c += n_r / filled
            if cluster_of[j] == cluster_of[batch_items[i]]:
                c += n_c / filled_of_cluster[cluster_of[batch_items[i]]]
        return c

    return (np.array([[count(i, j) for j in batch_items] for i in range(b)]),
            np.array([[count(i, j) for j in row] for i, row in enumerate(drawn)]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_expected_counts_match_their_definition(seed):
    rng = np.random.default_rng(seed)
    items, clusters, b, k, n_r, n_c = 30, 3, 8, 6, 2, 4
    prob = rng.dirichlet(np.ones(items))
    cluster_of = rng.integers(0, clusters, size=items)
    in_pool = rng.uniform(size=items) > 0.2
    filled = in_pool.sum()
    filled_of_cluster = np.bincount(cluster_of[in_pool], minlength=clusters)
    batch_items = rng.integers(0, items, size=b)
    drawn = rng.choice(np.flatnonzero(in_pool), size=(b, k))
    c_batch, c_drawn = numpy_counts(batch_items, drawn, prob, cluster_of, in_pool, n_r, n_c, filled,
                                    filled_of_cluster)
    own = cluster_of[batch_items]
    random_rate = np.full((b, 1), n_r / filled, np.float32)
    cluster_rate = np.divide(n_c, filled_of_cluster[own], out=np.zeros(b), where=filled_of_cluster[own] > 0)[:, None]
    got_batch = expected_counts(b - 1, prob[batch_items][None, :].astype(np.float32), in_pool[batch_items][None, :],
                                own[:, None] == own[None, :], random_rate, cluster_rate.astype(np.float32))
    got_drawn = expected_counts(b - 1, prob[drawn].astype(np.float32), True, cluster_of[drawn] == own[:, None],
                                random_rate, cluster_rate.astype(np.float32))
    np.testing.assert_allclose(got_batch.numpy(), c_batch, rtol=1e-5)
    np.testing.assert_allclose(got_drawn.numpy(), c_drawn, rtol=1e-5)


def test_equal_scores_give_each_source_its_expected_share():
    """With equal raw scores a column weighs 1/c_i(j), so source s carries sum_j n_s Q_s(j|i) / c_i(j)
    out of sum_j 1 (over the items j other than the positive); the loss's mass shares must match."""
    rng = np.random.default_rng(0)
    items, clusters, b, n_r, n_c = 60, 3, 64, 8, 24
    prob = rng.dirichlet(np.full(items, 0.7))
    cluster_of = np.arange(items) % clusters
    members = [np.flatnonzero(cluster_of == c) for c in range(clusters)]
    random_rate, cluster_rates = n_r / items, [n_c / len(m) for m in members]
    reported, expected = [], []
    for _ in range(40):
        batch_items = rng.choice(items, size=b, p=prob)
        own = cluster_of[batch_items]
        drawn = np.concatenate([rng.integers(0, items, size=(b, n_r)),
                                np.stack([rng.choice(members[c], size=n_c) for c in own])], axis=1)
        cluster_rate = np.array([cluster_rates[c] for c in own], np.float32)[:, None]
        c_batch = expected_counts(b - 1, prob[batch_items][None, :].astype(np.float32), True,
                                  own[:, None] == own[None, :], random_rate, cluster_rate)
        c_drawn = expected_counts(b - 1, prob[drawn].astype(np.float32), True, cluster_of[drawn] == own[:, None],
                                  random_rate, cluster_rate)
        zeros = tf.zeros([b, 4])
        _, stats = mixed_negatives_loss(
            zeros, zeros, tf.constant(batch_items), 1.0, in_batch_log_count=log_count(c_batch),
            negatives=tf.zeros([b, n_r + n_c, 4]), negative_ids=tf.constant(drawn),
            negative_valid=tf.ones([b, n_r + n_c], tf.bool), negative_log_count=log_count(c_drawn),
            negative_sources=["random"] * n_r + ["cluster"] * n_c)
        reported.append([float(stats[f"mass_{s}"]) for s in ("in_batch", "random", "cluster")])
        for i, y in enumerate(batch_items):
            others = np.array([j for j in range(items) if j != y])
            same = cluster_of[others] == own[i]
            c = (b - 1) * prob[others] + random_rate + same * cluster_rates[own[i]]
            mass = np.array([((b - 1) * prob[others] / c).sum(), (random_rate / c).sum(),
                             (same * cluster_rates[own[i]] / c).sum()])
            expected.append(mass / mass.sum())
    np.testing.assert_allclose(np.mean(reported, axis=0), np.mean(expected, axis=0), atol=0.01)
    assert np.all(np.mean(expected, axis=0) > 0.15)  # a case where every source matters


def test_small_hand_case():
    # one query, positive scores 1, one in-batch negative (row 2) scores 0, one pool negative scores 0.5
    q = tf.constant([[1.0, 0.0], [0.0, 1.0]])
    p = tf.constant([[1.0, 0.0], [0.0, 1.0]])
    n = tf.constant([[[0.5, 0.0]], [[0.0, 0.5]]])
    loss, _ = mixed_negatives_loss(q, p, tf.constant([1, 2]), 1.0, negatives=n, negative_ids=tf.constant([[3], [4]]),
                                   negative_valid=tf.constant([[True], [True]]), negative_sources=["random"])
    expected = -np.log(np.exp(1) / (np.exp(1) + np.exp(0) + np.exp(0.5)))
    np.testing.assert_allclose(float(loss), expected, rtol=1e-6)


def test_masked_negatives_do_not_change_the_loss():
    rng = np.random.default_rng(0)
    q = tf.constant(_unit(rng.normal(size=(3, 4))), tf.float32)
    p = tf.constant(_unit(rng.normal(size=(3, 4))), tf.float32)
    base, _ = mixed_negatives_loss(q, p, tf.constant([0, 1, 2]), 0.1)
    masked, stats = mixed_negatives_loss(
        q, p, tf.constant([0, 1, 2]), 0.1, negatives=tf.constant(rng.normal(size=(3, 2, 4)), tf.float32),
        negative_ids=tf.constant([[0, 9], [1, 1], [2, 9]]), negative_valid=tf.constant([[True, False]] * 3),
        negative_sources=["cluster", "cluster"])
    np.testing.assert_allclose(float(masked), float(base), rtol=1e-6)
    assert float(stats["negative_masked_rate"]) == 1.0
    assert float(stats["mass_cluster"]) == pytest.approx(0.0, abs=1e-7)
    assert MASKED_LOGIT < -1e8


def test_negatives_need_ids_valid_and_sources():
    with pytest.raises(ValueError, match="negative_ids"):
        mixed_negatives_loss(tf.ones([2, 2]), tf.ones([2, 2]), tf.constant([0, 1]), 1.0, negatives=tf.ones([2, 1, 2]))
    with pytest.raises(ValueError, match=r"negative_sources .* got \['bogus'\]"):
        mixed_negatives_loss(tf.ones([2, 2]), tf.ones([2, 2]), tf.constant([0, 1]), 1.0, negatives=tf.ones([2, 1, 2]),
                             negative_ids=tf.constant([[0], [1]]), negative_valid=tf.ones([2, 1], tf.bool),
                             negative_sources=["bogus"])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_row_slices_against_all_candidates_sum_to_the_whole_batch(seed):
    """Global in-batch negatives: each replica scores its rows [lo, hi) against every row's positive
    (first_row = lo); the slices' weighted sums add up to the whole batch's (NumPy oracle)."""
    rng = np.random.default_rng(seed)
    b, k, d, t = 9, 3, 5, 0.2
    q, p = _unit(rng.normal(size=(b, d))), _unit(rng.normal(size=(b, d)))
    pid = rng.integers(0, 5, size=b)  # accidental hits across the slices
    lc = np.log(rng.uniform(0.01, 3.0, size=(b, b)))
    n, nid = _unit(rng.normal(size=(b, k, d))), rng.integers(0, 7, size=(b, k))
    nvalid, nlc = rng.uniform(size=(b, k)) > 0.3, np.log(rng.uniform(0.05, 2, size=(b, k)))
    w = rng.integers(0, 3, size=b).astype(np.float32)
    expected, _ = numpy_loss(q, p, pid, t, lc, n, nid, nvalid, nlc, ["random", "cluster", "cluster"], w)
    total = 0.0
    for lo, hi in [(0, 4), (4, 5), (5, 9)]:
        part, stats = mixed_negatives_loss(
            tf.constant(q[lo:hi], tf.float32), tf.constant(p, tf.float32), tf.constant(pid), t,
            in_batch_log_count=tf.constant(lc[lo:hi], tf.float32), negatives=tf.constant(n[lo:hi], tf.float32),
            negative_ids=tf.constant(nid[lo:hi]), negative_valid=tf.constant(nvalid[lo:hi]),
            negative_log_count=tf.constant(nlc[lo:hi], tf.float32), negative_sources=["random", "cluster", "cluster"],
            sample_weight=tf.constant(w[lo:hi]), first_row=lo)
        total += float(part) * (hi - lo)  # without a strategy each part is its own rows' mean
    np.testing.assert_allclose(total / b, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("with_correction", [False, True])
def test_shared_negatives_match_the_oracle_of_every_query_drawing_them(seed, with_correction):
    """Shared draws [K, d] scored by every query, masks per query [B, K], one correction row [1, K]: the
    per-example oracle with the draws repeated for every query (duplicates across and within sources)."""
    rng = np.random.default_rng(seed)
    b, k, d, t = 7, 6, 5, 0.1
    q, p = _unit(rng.normal(size=(b, d))), _unit(rng.normal(size=(b, d)))
    pid = rng.integers(0, 5, size=b)
    n, nid = _unit(rng.normal(size=(k, d))), rng.integers(0, 6, size=k)  # some equal to a positive
    n[3], nid[3] = n[1], nid[1]  # the same item drawn twice
    nvalid = rng.uniform(size=(b, k)) > 0.25
    nlc = np.log(rng.uniform(0.05, 2, size=(1, k))) if with_correction else None
    lc = np.log(rng.uniform(0.01, 3.0, size=(1, b))) if with_correction else None
    source = np.array([1, 1, 2, 2, 2, 2])
    w = rng.integers(0, 3, size=b).astype(np.float32)
    w[0] = 1.0
    loss, stats = mixed_negatives_loss(
        tf.constant(q, tf.float32), tf.constant(p, tf.float32), tf.constant(pid), t,
        in_batch_log_count=None if lc is None else tf.constant(lc, tf.float32),
        negatives=tf.constant(n, tf.float32), negative_ids=tf.constant(nid), negative_valid=tf.constant(nvalid),
        negative_log_count=None if nlc is None else tf.constant(nlc, tf.float32),
        negative_sources=tf.constant(source), sample_weight=tf.constant(w))
    expected, shares = numpy_loss(q, p, pid, t, None if lc is None else np.repeat(lc, b, 0),
                                  np.broadcast_to(n, (b, k, d)), np.broadcast_to(nid, (b, k)), nvalid,
                                  None if nlc is None else np.repeat(nlc, b, 0), [SOURCES[s] for s in source], w)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-4, atol=1e-5)
    for name in ("in_batch", "random", "cluster"):
        np.testing.assert_allclose(float(stats[f"mass_{name}"]), shares[SOURCES.index(name)], rtol=1e-4, atol=1e-6)
    keep = nvalid & (nid[None, :] != pid[:, None])
    np.testing.assert_allclose(float(stats["negative_masked_rate"]), 1 - keep.mean(), rtol=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_draws_valid_for_every_query_and_mass_over_the_first_rows(seed):
    """Shared draws whose validity is per column ([K], as the trainer passes them without per-query masks:
    masked through the correction row), in a batch larger than MASS_ROWS: the loss over every row, the
    mass shares over the first MASS_ROWS rows, the masked and hit rates over every (query, draw)."""
    rng = np.random.default_rng(seed)
    b, k, d, t = MASS_ROWS + 44, 8, 4, 0.2
    q, p = _unit(rng.normal(size=(b, d))), _unit(rng.normal(size=(b, d)))
    pid = rng.integers(0, 60, size=b)
    n, nid = _unit(rng.normal(size=(k, d))), rng.integers(0, 60, size=k)
    nid[2] = pid[0]  # an accidental hit for query 0 at least
    nvalid = np.array([True, True, True, False, True, True, False, True])
    lc, nlc = np.log(rng.uniform(0.01, 3.0, size=(1, b))), np.log(rng.uniform(0.05, 2, size=(1, k)))
    source = np.array([1, 1, 2, 2, 2, 2, 2, 2])
    w = rng.integers(0, 3, size=b).astype(np.float32)
    w[0] = 1.0
    loss, stats = mixed_negatives_loss(
        tf.constant(q, tf.float32), tf.constant(p, tf.float32), tf.constant(pid), t,
        in_batch_log_count=tf.constant(lc, tf.float32), negatives=tf.constant(n, tf.float32),
        negative_ids=tf.constant(nid), negative_valid=tf.constant(nvalid),
        negative_log_count=tf.constant(nlc, tf.float32), negative_sources=tf.constant(source),
        sample_weight=tf.constant(w))
    args = dict(n=np.broadcast_to(n, (b, k, d)), nid=np.broadcast_to(nid, (b, k)),
                nvalid=np.broadcast_to(nvalid, (b, k)), nlc=np.repeat(nlc, b, 0), sources=[SOURCES[s] for s in source])
    expected, _ = numpy_loss(q, p, pid, t, np.repeat(lc, b, 0), w=w, **args)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-4, atol=1e-5)
    r = MASS_ROWS  # the oracle of the first rows alone: the in-batch columns stay the whole batch's
    _, shares = numpy_loss(q, p, pid, t, np.repeat(lc, b, 0), w=w, **args, rows=r)
    for name in ("in_batch", "random", "cluster"):
        np.testing.assert_allclose(float(stats[f"mass_{name}"]), shares[SOURCES.index(name)], rtol=1e-4, atol=1e-6)
    hit = nvalid[None, :] & (nid[None, :] == pid[:, None])
    np.testing.assert_allclose(float(stats["negative_hit_rate"]), hit.mean(), rtol=1e-6)
    np.testing.assert_allclose(float(stats["negative_masked_rate"]), 1 - (nvalid[None, :] & ~hit).mean(), rtol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_full_softmax_matches_numpy(seed):
    from llm_hardneg.components.trainer.losses import full_softmax_loss

    rng = np.random.default_rng(seed)
    b, v, d, t = 5, 11, 4, 0.2
    q, c = _unit(rng.normal(size=(b, d))), _unit(rng.normal(size=(v, d)))
    positive, w = rng.integers(0, v, size=b), rng.integers(0, 3, size=b).astype(np.float32)
    loss, _ = full_softmax_loss(tf.constant(q, tf.float32), tf.constant(c, tf.float32), tf.constant(positive), t,
                                tf.constant(w))
    logits = q @ c.T / t
    log_softmax = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(float(loss), -(w * log_softmax[np.arange(b), positive]).sum() / b, rtol=1e-5)
