"""Fragments, their coexistence and global fragments (toxrt/fragments.py), against brute force."""
from __future__ import annotations

import numpy as np

from toxrt.fragments import (build_fragment_table, coexisting_pairs, complete_groups, connectivity, fragment_graph,
                             global_fragments, largest_alive_group, overlapping)

from .helpers import make_fake_session


def random_intervals(seed: int, n: int = 60, span: int = 100, longest: int = 15):
    rng = np.random.default_rng(seed)
    start = rng.integers(0, span, n)
    return start, start + rng.integers(0, longest, n)


def alive_at(start, end, t, candidates):
    return [int(i) for i in candidates if start[i] <= t <= end[i]]


def test_coexisting_pairs_match_brute_force_with_and_without_labels():
    for seed in range(3):
        start, end = random_intervals(seed, n=300, span=1000, longest=40)
        i, j = np.triu_indices(start.size, k=1)
        overlap = overlapping(start[i], end[i], start[j], end[j])
        expected = set(zip(i[overlap].tolist(), j[overlap].tolist()))
        pairs = coexisting_pairs(start, end)
        assert {tuple(p) for p in pairs.tolist()} == expected and len(pairs) == len(expected)
        assert np.array_equal(pairs, pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))])  # sorted
        labels = np.arange(start.size) * 7 + 3
        relabelled = {tuple(p) for p in coexisting_pairs(start, end, labels).tolist()}
        assert relabelled == {(a * 7 + 3, b * 7 + 3) for a, b in expected}
    assert coexisting_pairs(np.array([4]), np.array([9])).shape == (0, 2)


def test_largest_alive_group_is_the_first_largest_set_alive_in_one_frame():
    for seed in range(6):
        start, end = random_intervals(seed, n=25, span=60, longest=12)
        length = np.random.default_rng(seed + 100).integers(1, 50, start.size)
        best_key, best = (0, 0), []
        for t in range(int(end.max()) + 1):  # frame by frame, earliest first
            alive = alive_at(start, end, t, range(start.size))
            key = (len(alive), int(length[alive].min())) if alive else (0, 0)
            if key > best_key:
                best_key, best = key, alive
        assert largest_alive_group(start, end, length).tolist() == best
        subset = np.arange(0, start.size, 2)
        brute = max((alive_at(start, end, t, subset) for t in range(int(end.max()) + 1)),
                    key=lambda a: (len(a), int(length[a].min()) if a else 0))
        assert largest_alive_group(start, end, length, subset).tolist() == brute


def test_complete_groups_are_the_sets_of_n_candidates_alive_in_some_frame():
    start, end = random_intervals(4, n=30, span=80, longest=20)
    candidates = np.arange(1, 30, 3)
    expected = {tuple(alive_at(start, end, t, candidates)) for t in range(int(end.max()) + 1)}
    expected = {g for g in expected if len(g) == 3}
    assert {tuple(g.tolist()) for g in complete_groups(start, end, candidates, 3)} == expected


def test_fragment_table_graph_and_global_fragments_of_a_session():
    s = make_fake_session(seed=2)
    table = build_fragment_table(s.blobs)
    individual = s.fragments[~s.fragments["is_crossing"]]
    assert table.ids.tolist() == sorted(individual["fragment"].tolist())
    for f in range(len(table)):
        rows = table.rows[table.offsets[f]:table.offsets[f + 1]]
        assert (s.blobs["fragment"][rows] == table.ids[f]).all() and not s.blobs["is_crossing"][rows].any()
        assert np.all(np.diff(s.blobs["frame"][rows]) > 0)
    live = {int(r["fragment"]): int(r["identity"]) for r in individual}
    assert table.live_identity.tolist() == [live[int(i)] for i in table.ids]
    graph = fragment_graph(table, s.blobs, 4)
    assert graph.connectivity(4) == table.connectivity(4) == connectivity(len(table.pairs), len(table), 4)
    for f in range(len(table)):  # CSR neighbours = the coexisting pairs, both ways
        expected = {int(b) for a, b in table.pairs if a == f} | {int(a) for a, b in table.pairs if b == f}
        assert set(graph.neighbours(f).tolist()) == expected
    sets = global_fragments(table, s.blobs, 4)
    assert sets.shape[1] == 4 and len(sets) > 0
    frames = s.blobs["frame"]
    for members in sets:  # N fragments seen together in a frame without a crossing blob
        shared = set.intersection(*(set(frames[table.rows[table.offsets[m]:table.offsets[m + 1]]].tolist())
                                    for m in members))
        assert any(not s.blobs["is_crossing"][frames == t].any() for t in shared)
    shortest = table.n_images[sets].min(axis=1)
    assert np.all(np.diff(shortest) <= 0)  # the one whose shortest fragment is longest first
