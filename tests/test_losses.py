import numpy as np
import pytest
import tensorflow as tf

from components.trainer.losses import MASKED_LOGIT, mixed_negatives_loss


def numpy_loss(q, p, pid, t, prob=None, n=None, nid=None, nvalid=None, nlogq=None, w=None):
    """Hand computation of the loss, one example at a time."""
    total = 0.0
    b = len(q)
    for i in range(b):
        logits = []
        for j in range(b):
            s = q[i] @ p[j] / t
            if prob is not None:
                s -= np.log(np.clip(prob[j], 1e-6, 1.0))
            if j != i and pid[j] == pid[i]:
                continue  # accidental hit: removed
            logits.append((s, j == i))
        if n is not None:
            for k in range(n.shape[1]):
                if nvalid[i, k] and nid[i, k] != pid[i]:
                    logits.append((q[i] @ n[i, k] / t - (nlogq[i, k] if nlogq is not None else 0.0), False))
        values = np.array([s for s, _ in logits], np.float64)
        positive = [s for s, is_pos in logits if is_pos][0]
        ce = np.log(np.exp(values - values.max()).sum()) + values.max() - positive
        total += (1.0 if w is None else w[i]) * ce
    return total / b


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("with_negatives", [False, True])
@pytest.mark.parametrize("with_logq", [False, True])
def test_matches_numpy_oracle(seed, with_negatives, with_logq):
    rng = np.random.default_rng(seed)
    b, k, d, t = 6, 4, 5, 0.1
    q, p = _unit(rng.normal(size=(b, d))), _unit(rng.normal(size=(b, d)))
    pid = rng.integers(0, 4, size=b)  # duplicates -> accidental hits
    prob = rng.uniform(0.01, 0.5, size=b) if with_logq else None
    w = rng.integers(0, 2, size=b).astype(np.float32)
    kwargs, nargs = {}, {}
    if with_negatives:
        n = _unit(rng.normal(size=(b, k, d)))
        nid = rng.integers(0, 6, size=(b, k))
        nvalid = rng.uniform(size=(b, k)) > 0.3
        nlogq = np.log(rng.uniform(0.05, 1, size=(b, k))) if with_logq else None
        nargs = dict(n=n, nid=nid, nvalid=nvalid, nlogq=nlogq)
        kwargs = dict(negatives=tf.constant(n, tf.float32), negative_ids=tf.constant(nid),
                      negative_valid=tf.constant(nvalid),
                      negative_log_q=None if nlogq is None else tf.constant(nlogq, tf.float32))
    loss, stats = mixed_negatives_loss(
        tf.constant(q, tf.float32), tf.constant(p, tf.float32), tf.constant(pid), t,
        positive_sampling_probability=None if prob is None else tf.constant(prob, tf.float32),
        sample_weight=tf.constant(w), **kwargs)
    expected = numpy_loss(q, p, pid, t, prob, w=w, **nargs)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-4, atol=1e-5)
    if with_negatives:
        keep = nargs["nvalid"] & (nargs["nid"] != pid[:, None])
        np.testing.assert_allclose(float(stats["negative_masked_rate"]), 1 - keep.mean(), rtol=1e-6)


def test_small_hand_case():
    # one query, positive scores 1, one in-batch negative (row 2) scores 0, one pool negative scores 0.5
    q = tf.constant([[1.0, 0.0], [0.0, 1.0]])
    p = tf.constant([[1.0, 0.0], [0.0, 1.0]])
    n = tf.constant([[[0.5, 0.0]], [[0.0, 0.5]]])
    loss, _ = mixed_negatives_loss(q, p, tf.constant([1, 2]), 1.0, negatives=n, negative_ids=tf.constant([[3], [4]]),
                                   negative_valid=tf.constant([[True], [True]]))
    expected = -np.log(np.exp(1) / (np.exp(1) + np.exp(0) + np.exp(0.5)))
    np.testing.assert_allclose(float(loss), expected, rtol=1e-6)


def test_masked_negatives_do_not_change_the_loss():
    rng = np.random.default_rng(0)
    q = tf.constant(_unit(rng.normal(size=(3, 4))), tf.float32)
    p = tf.constant(_unit(rng.normal(size=(3, 4))), tf.float32)
    base, _ = mixed_negatives_loss(q, p, tf.constant([0, 1, 2]), 0.1)
    masked, stats = mixed_negatives_loss(
        q, p, tf.constant([0, 1, 2]), 0.1, negatives=tf.constant(rng.normal(size=(3, 2, 4)), tf.float32),
        negative_ids=tf.constant([[0, 9], [1, 1], [2, 9]]), negative_valid=tf.constant([[True, False]] * 3))
    np.testing.assert_allclose(float(masked), float(base), rtol=1e-6)
    assert float(stats["negative_masked_rate"]) == 1.0
    assert MASKED_LOGIT < -1e8


def test_negatives_need_ids_and_valid():
    with pytest.raises(ValueError, match="negative_ids"):
        mixed_negatives_loss(tf.ones([2, 2]), tf.ones([2, 2]), tf.constant([0, 1]), 1.0, negatives=tf.ones([2, 1, 2]))
