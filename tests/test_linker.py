"""Named linker scenarios, checked regardless of fragment numbering: every fragment holds one animal."""
import numpy as np

from toxrt.config import LinkingConfig
from toxrt.linker import Linker
from .helpers import make_blobs

CFG = LinkingConfig(max_unmatched_frames=3, crossing_release_frames=5)


def run(frames, max_distance=12.0, flag_oversized=True):
    """frames: list of (xy list, area list, true animal labels per blob (tuple for crossings)).

    Blobs of several animals are flagged oversized unless ``flag_oversized`` is False (the linker
    must then find the merge itself). Every fragment is checked to be pure: its blobs are all of one
    animal and not crossings, or all of several animals and crossings.
    """
    linker = Linker(CFG, max_distance)
    owners: dict[int, set] = {}
    kinds: dict[int, set] = {}  # fragment -> labels of its blobs (an int, or tuples of animals)
    history = []
    for xy, area, labels in frames:
        several = [isinstance(lab, tuple) for lab in labels]
        oversized = several if flag_oversized else None
        result = linker.update(make_blobs(xy, area, oversized) if xy else make_blobs(np.zeros((0, 2)), []))
        for fragment, lab, crossing in zip(result.fragment.tolist(), labels, result.is_crossing.tolist()):
            assert crossing == isinstance(lab, tuple), f"blob of {lab} in fragment {fragment}: is_crossing {crossing}"
            owners.setdefault(fragment, set()).update(lab if isinstance(lab, tuple) else (lab,))
            kinds.setdefault(fragment, set()).add("crossing" if isinstance(lab, tuple) else lab)
        history.append(result)
    assert all(len(k) == 1 for k in kinds.values()), f"impure fragments: {kinds}"
    return owners, history


def straight(start, velocity, t):
    return (start[0] + velocity[0] * t, start[1] + velocity[1] * t)


def test_isolated_animals_keep_one_fragment_each():
    starts = [(20, 20), (100, 20), (20, 100), (100, 100)]
    frames = [([straight(s, (1.5, 0.8), t) for s in starts], [100] * 4, [0, 1, 2, 3]) for t in range(60)]
    owners, history = run(frames)
    assert len(owners) == 4
    assert sorted(next(iter(o)) for o in owners.values()) == [0, 1, 2, 3]
    assert all(len(r.started) == 0 for r in history[1:])


def test_crossing_cuts_fragments_and_keeps_them_pure():
    frames = []
    for t in range(40):
        a, b = (10 + 2 * t, 50.0), (90 - 2 * t, 50.0)
        if abs(a[0] - b[0]) < 6:  # bodies overlap: one blob of two animals
            frames.append(([((a[0] + b[0]) / 2, 50.0)], [200], [(0, 1)]))
        else:
            frames.append(([a, b], [100, 100], [0, 1]))
    owners, history = run(frames)
    individual = [o for o in owners.values() if len(o) == 1]
    assert all(len(o) == 1 or o == {0, 1} for o in owners.values())
    assert len(individual) == 4  # each animal: one fragment before, one after
    crossing_results = [r for r in history if r.is_crossing.any()]
    assert crossing_results and all(len(r.crossing_members[int(r.fragment[0])]) == 2 for r in crossing_results)


def test_merge_without_size_flag_is_detected_by_the_linker():
    """Two animals meet in a blob of nearly single size (not flagged oversized); the linker still cuts:
    the blob is a crossing fragment of its own, and every fragment holds one animal or one crossing."""
    frames = []
    for t in range(30):
        a, b = (10 + 2 * t, 50.0), (70 - 2 * t, 50.0)
        if abs(a[0] - b[0]) < 6:
            frames.append(([((a[0] + b[0]) / 2, 50.0)], [110], [(0, 1)]))
        else:
            frames.append(([a, b], [100, 100], [0, 1]))
    owners, history = run(frames, flag_oversized=False)
    merged = [r for r in history if len(r.fragment) == 1]
    assert merged and all(r.is_crossing.all() for r in merged)
    assert len({int(r.fragment[0]) for r in merged}) == 1  # one crossing fragment, held while merged
    assert sorted(sorted(o) for o in owners.values()) == [[0], [0], [0, 1], [1], [1]]


def test_short_gap_coasts_and_long_gap_cuts():
    def scenario(gap):
        frames = []
        for t in range(30):
            visible = not (10 <= t < 10 + gap)
            frames.append(([straight((10, 10), (1, 1), t)] if visible else [], [100] if visible else [], [0] if visible else []))
        return run(frames)

    owners, history = scenario(gap=2)
    assert len(owners) == 1
    assert len(history[10].coasting_fragment) == 1
    np.testing.assert_allclose(history[10].coasting_xy[0], (20, 20), atol=1.5)
    owners, _ = scenario(gap=6)
    assert len(owners) == 2


def test_split_of_a_crossing_starts_new_fragments():
    frames = [([(50, 50)], [200], [(0, 1)])] * 3
    frames += [([(48 - t, 50), (52 + t, 50)], [100, 100], [0, 1]) for t in range(10)]
    owners, history = run(frames)
    assert all(len(o) == 1 or o == {0, 1} for o in owners.values())
    assert len(owners) == 3
    assert len(history[3].started) == 2 and len(history[3].ended) == 1


def test_size_gate_failure_ends_the_fragment():
    frames = [([(10 + t, 10)], [100 if t < 5 else 400], [0]) for t in range(10)]
    owners, history = run(frames)
    assert len(owners) == 2
    assert len(history[5].ended) == 1


def test_no_blobs_is_normal():
    linker = Linker(CFG, 10.0)
    result = linker.update(make_blobs(np.zeros((0, 2)), []))
    assert result.fragment.shape == (0,) and result.started.shape == (0,)
