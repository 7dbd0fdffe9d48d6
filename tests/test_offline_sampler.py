"""Pair sampling and image loading of the offline stage (numpy only, no torch)."""
from __future__ import annotations

import numpy as np
import pytest

from toxrt.errors import SessionError
from toxrt.fragments import build_fragment_table
from toxrt.offline.dataset import ImageLoader, check_session, resize_batch
from toxrt.offline.sampler import PairSampler

from .helpers import make_fake_session


def test_sampler_respects_coexistence_and_leaves_out_small_fragments():
    s = make_fake_session(seed=2)
    table = build_fragment_table(s.blobs)
    sampler = PairSampler(table, np.random.default_rng(0), images_per_fragment=10)
    coexist = {tuple(p) for p in table.pairs}
    frag_of_row = np.full(len(s.blobs), -1)
    frag_of_row[table.rows] = table.fragment_of_image()
    small = set(np.flatnonzero(table.n_images < 4))
    assert small, "the fake session must hold fragments with fewer than 4 images"
    for _ in range(5):
        batch = sampler.sample(300)
        # positives: two different images of one fragment
        fa, fb = frag_of_row[batch.positive_a], frag_of_row[batch.positive_b]
        assert (fa == fb).all() and (fa == batch.positive_fragment).all()
        assert (batch.positive_a != batch.positive_b).all()
        # negatives: one image from each of two different, coexisting fragments
        na, nb = frag_of_row[batch.negative_a], frag_of_row[batch.negative_b]
        assert (na != nb).all()
        assert all((min(a, b), max(a, b)) in coexist for a, b in zip(na, nb))
        used = set(fa) | set(na) | set(nb)
        assert not used & small


def test_images_per_fragment_limits_the_pool_evenly():
    s = make_fake_session(seed=2)
    table = build_fragment_table(s.blobs)
    sampler = PairSampler(table, np.random.default_rng(0), images_per_fragment=4)
    seen = set()
    for _ in range(20):
        batch = sampler.sample(200)
        seen |= set(batch.positive_a) | set(batch.positive_b)
    long = np.flatnonzero(table.n_images >= 20)
    for f in long:
        rows = set(table.rows[table.offsets[f]:table.offsets[f + 1]])
        assert len(rows & seen) <= 4


def test_loss_scores_decay_and_shift_sampling():
    s = make_fake_session(seed=2)
    table = build_fragment_table(s.blobs)
    sampler = PairSampler(table, np.random.default_rng(0), alpha=0.5)
    p_pos0, p_neg0 = sampler.probabilities()
    np.testing.assert_allclose(p_pos0.sum(), 1.0)
    np.testing.assert_allclose(p_neg0.sum(), 1.0)
    # size-based: proportional to f_i and to f_i + f_j
    sizes = table.n_images[sampler.fragments]
    np.testing.assert_allclose(p_pos0, sizes / sizes.sum())
    pair_sizes = table.n_images[sampler.pairs].sum(axis=1)
    np.testing.assert_allclose(p_neg0, pair_sizes / pair_sizes.sum())

    batch = sampler.sample(50)
    neg_loss = np.zeros(50)
    neg_loss[0] = 2.0  # only the first negative pair still has loss
    sampler.update(batch, np.zeros(50), neg_loss)
    hot = batch.negative_pair[0]
    assert sampler.score_neg[hot] == pytest.approx(1.0)
    assert sampler.score_neg.sum() == pytest.approx(1.0)
    _, p_neg = sampler.probabilities()
    assert p_neg[hot] == pytest.approx(0.5 * p_neg0[hot] + 0.5)
    sampler.update(sampler.sample(50), np.zeros(50), np.zeros(50))
    assert sampler.score_neg[hot] == pytest.approx(0.98)


def test_sampler_state_round_trip_repeats_the_draws():
    s = make_fake_session(seed=2)
    table = build_fragment_table(s.blobs)
    a = PairSampler(table, np.random.default_rng(5))
    state = a.state_dict()
    first = a.sample(20)
    b = PairSampler(table, np.random.default_rng(99))
    b.load_state_dict(state)
    second = b.sample(20)
    np.testing.assert_array_equal(first.negative_a, second.negative_a)
    np.testing.assert_array_equal(first.positive_b, second.positive_b)


def test_image_loader_resizes_and_keeps_order():
    s = make_fake_session(seed=2)
    loader = ImageLoader(s, 16)
    rows = np.array([7, 3, 7, 0])
    x = loader.load(rows)
    assert x.shape == (4, 1, 16, 16) and x.dtype == np.float32
    np.testing.assert_array_equal(x[0], x[2])
    assert 0.0 <= x.min() and x.max() <= 1.0
    expected = resize_batch(s.crops(np.array([3])), 16)[0] / 255.0
    np.testing.assert_allclose(x[1, 0], expected, atol=1e-6)
    up = resize_batch(s.crops(np.array([3])), 32)
    assert up.shape == (1, 32, 32) and up.dtype == np.uint8


def test_check_session_rejects_bad_input():
    s = make_fake_session(seed=2)
    assert check_session(s, "x") == 4
    s.meta = {**s.meta, "identification_image_size": 0}
    with pytest.raises(SessionError, match="without identification images"):
        check_session(s, "x")
    s.meta = {**s.meta, "identification_image_size": 20, "number_of_animals": 0}
    with pytest.raises(SessionError, match="number_of_animals"):
        check_session(s, "x")


def test_importing_the_offline_entry_point_does_not_load_torch():
    import subprocess
    import sys

    code = ("import sys, toxrt, toxrt.offline, toxrt.offline.refine, toxrt.offline.dataset, "
            "toxrt.offline.sampler; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
