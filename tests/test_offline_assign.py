"""Clustering probabilities and fragment identity assignment (numpy + sklearn, no torch)."""
from __future__ import annotations

import numpy as np
import pytest

from toxrt.offline import assign, cluster
from toxrt.fragments import build_fragment_table, coexisting_pairs, global_fragments

from .helpers import make_fake_session


def csr(n, pairs):
    both = np.concatenate([pairs, pairs[:, ::-1]]) if len(pairs) else np.zeros((0, 2), np.int64)
    both = both[np.lexsort((both[:, 1], both[:, 0]))]
    ptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(both[:, 0], minlength=n), out=ptr[1:])
    return ptr, both[:, 1]


def test_identity_probabilities_inverse_seventh_power():
    centers = np.array([[0.0, 0.0], [10.0, 0.0]])
    z = np.array([[2.0, 0.0], [0.0, 0.0], [5.0, 0.0]])
    p = cluster.identity_probabilities(z, centers)
    w = np.array([2.0 ** -7, 8.0 ** -7])
    np.testing.assert_allclose(p[0], w / w.sum())
    np.testing.assert_allclose(p[1], [1.0, 0.0], atol=1e-12)  # on a centre: certain, no NaN
    np.testing.assert_allclose(p[2], [0.5, 0.5])
    np.testing.assert_allclose(p.sum(axis=1), 1.0)


def test_kmeans_from_initial_centres_and_silhouette():
    rng = np.random.default_rng(0)
    true_centers = rng.normal(0, 10, (4, 8))
    label = np.repeat(np.arange(4), 100)
    z = true_centers[label] + rng.normal(0, 0.5, (400, 8))
    init = cluster.group_centers(z, label + 1, 4)
    centers, found = cluster.kmeans(z, 4, init, seed=0)
    np.testing.assert_array_equal(found, label)  # initialised centres keep their order
    assert cluster.silhouette(z, found, 10000, 0) > 0.9
    assert cluster.silhouette(z, np.zeros(400, np.int64), 10000, 0) == -1.0
    assert cluster.group_centers(z, np.where(label == 3, 0, label + 1), 4) is None


def test_align_clusters_keeps_the_live_numbering():
    cluster_label = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    live = np.array([3, 3, 1, 1, 1, 2, 2, 0])
    np.testing.assert_array_equal(assign.align_clusters(cluster_label, live, 3), [3, 1, 2])


def test_fragment_probabilities_are_means_per_fragment():
    p = np.array([[1.0, 0.0], [0.0, 1.0], [0.2, 0.8], [0.4, 0.6], [0.6, 0.4]])
    np.testing.assert_allclose(assign.fragment_probabilities(p, np.array([2, 3])), [[0.5, 0.5], [0.4, 0.6]])


def test_chunked_fragment_probabilities_equal_the_direct_ones():
    rng = np.random.default_rng(1)
    n_images = np.array([3, 1, 7, 2, 5])
    z = rng.normal(0, 3, (n_images.sum(), 8))
    centers = rng.normal(0, 3, (3, 8))
    order = np.array([2, 0, 1])
    direct = assign.fragment_probabilities(cluster.identity_probabilities(z, centers)[:, order], n_images)
    chunked = assign.fragment_probabilities_chunked(z, centers, n_images, order, chunk=4)
    np.testing.assert_allclose(chunked, direct)


@pytest.mark.parametrize("seed", range(5))
def test_coexisting_fragments_never_share_an_identity(seed):
    rng = np.random.default_rng(seed)
    n_animals, n_frag = 4, 120
    start = rng.integers(0, 300, n_frag)
    end = start + rng.integers(0, 40, n_frag)
    pairs = coexisting_pairs(start, end)
    ptr, adj = csr(n_frag, pairs)
    # noisy probabilities that often prefer the same identity for coexisting fragments
    p1 = rng.dirichlet(np.ones(n_animals) * 0.3, n_frag)
    identity, probability = assign.assign_fragments(p1, rng.integers(1, 50, n_frag), ptr, adj,
                                                    np.zeros((0, n_animals), np.int64))
    assert assign.shares_identity_with_coexisting(identity, pairs) == 0
    assert ((identity >= 0) & (identity <= n_animals)).all()
    assert (probability[identity > 0] > 0).all()
    # a fragment only stays unidentified when its neighbours hold every identity
    for f in np.flatnonzero(identity == 0):
        held = set(identity[adj[ptr[f]:ptr[f + 1]]])
        assert held >= set(range(1, n_animals + 1))


def test_residual_identification_decides_the_most_certain_first():
    # fragments 0 and 1 coexist and both prefer identity 1; 0 is far more certain, so it wins
    p1 = np.array([[0.9, 0.1], [0.6, 0.4]])
    ptr, adj = csr(2, np.array([[0, 1]]))
    identity, probability = assign.assign_fragments(p1, np.array([10, 10]), ptr, adj, np.zeros((0, 2), np.int64))
    np.testing.assert_array_equal(identity, [1, 2])
    assert probability[1] == pytest.approx(1.0)  # the only identity left


def test_global_fragment_needs_unique_consistent_identities():
    ptr, adj = csr(3, np.array([[0, 1], [0, 2], [1, 2]]))
    members = np.array([[0, 1, 2]])
    clean = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]])
    identity, _ = assign.assign_fragments(clean, np.array([5, 5, 5]), ptr, adj, members)
    np.testing.assert_array_equal(identity, [1, 2, 3])
    state = assign.Assigner(clean, ptr, adj)
    assign.accept_global_fragment(state, members[0])
    np.testing.assert_array_equal(state.identity, [1, 2, 3])
    clash = np.array([[0.8, 0.1, 0.1], [0.7, 0.2, 0.1], [0.2, 0.2, 0.6]])
    state = assign.Assigner(clash, ptr, adj)
    assign.accept_global_fragment(state, members[0])
    np.testing.assert_array_equal(state.identity, [0, 0, 0])  # left to residual identification
    identity, _ = assign.assign_fragments(clash, np.array([5, 5, 5]), ptr, adj, members)
    assert sorted(identity) == [1, 2, 3]


def test_fake_session_assignment_from_true_probabilities_is_exact():
    s = make_fake_session(seed=4)
    table = build_fragment_table(s.blobs)
    truth = np.array([s.truth[int(f)] for f in table.ids])
    rng = np.random.default_rng(0)
    p1 = np.full((len(table), 4), 0.1) + rng.uniform(0, 0.05, (len(table), 4))
    p1[np.arange(len(table)), truth - 1] = 0.6
    ptr, adj = table.neighbours()
    identity, _ = assign.assign_fragments(p1, table.n_images, ptr, adj, global_fragments(table, s.blobs, 4))
    np.testing.assert_array_equal(identity, truth)
    assert 0 < table.connectivity(4) <= 4
