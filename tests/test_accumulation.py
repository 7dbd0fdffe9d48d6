"""Identities learned from the session itself: features, model, accumulation, session end, refine.

One simulated video of look-alike animals (``appearance_spread`` 0.3) is tracked once for the
module; the tests then scramble, re-decide and compare against the simulator's ground truth.
"""
from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest

from toxrt.fragments import FragmentGraph
from toxrt.accumulation import accumulate, agreement, relabel_to, spread_rows
from toxrt.appearance import AppearanceModel, FeatureShape, identity_features
from toxrt.config import AppearanceConfig, load_config
from toxrt.evaluation.groundtruth import GroundTruth
from toxrt.evaluation.metrics import evaluate
from toxrt.io.trajectory_files import load_trajectories
from toxrt.tracking import run_tracking
from toxrt.io.layout import FRAGMENT_IDENTITIES
from toxrt.session_end import load_fragment_identities
from toxrt.session_identities import identify_session
from toxrt.io.session_reader import load_session
from toxrt.sim.writer import write_simulation

ANIMALS = 6


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """A tracked simulated session of 6 look-alike animals (600 frames) and its ground truth."""
    root = tmp_path_factory.mktemp("lookalike")
    sim = load_config(None, {"sim": {"frames": 600, "seed": 3, "width": 320, "height": 240, "body_length_px": 24,
                                     "appearance_spread": 0.3}}).sim
    paths = write_simulation(root / "arena", sim, ANIMALS)
    config = load_config(paths["params"], {"output_dir": str(root / "out"), "appearance.live_inline": True})
    summary = run_tracking(config, progress=False)
    truth = GroundTruth.from_csv(paths["csv"])
    return summary, truth, float(np.load(paths["npz"])["body_length_px"]), config


def _crop(length: int, size: int = 32, bend: float = 0.0, head_right: bool = True) -> np.ndarray:
    """A synthetic animal: a tapered dark body along the middle row, optionally bent and turned."""
    image = np.zeros((size, size), np.uint8)
    c = (size - 1) / 2
    for x in range(size):
        u = (x - c) / (length / 2)
        if abs(u) > 1:
            continue
        half_width = 3.0 * (1.2 + 0.8 * u if head_right else 1.2 - 0.8 * u) / 2
        centre = c + bend * u * u
        rows = np.arange(size)
        image[np.abs(rows - centre) <= half_width, x] = 60 + int(40 * (u + 1))
    return image


def test_features_are_the_same_whichever_end_the_head_points_to():
    shape = FeatureShape(32, 0.3)
    crop = _crop(24)
    turned = crop[::-1, ::-1].copy()  # the same animal with the main axis the other way round
    a, b = identity_features(np.stack([crop, turned]), shape)
    np.testing.assert_allclose(a, b, atol=1e-3)


def test_straightening_brings_a_bent_body_back_onto_the_middle_row():
    shape = FeatureShape(32, 0.3)
    straight, bent = identity_features(np.stack([_crop(24), _crop(24, bend=4.0)]), shape)
    h = 2 * shape.half_height + 1
    # the bent body's mass sits on the band's middle rows as the straight one's does
    rows_straight = straight.reshape(h, -1).sum(axis=1)
    rows_bent = bent.reshape(h, -1).sum(axis=1)
    assert np.argmax(rows_bent) == np.argmax(rows_straight) == h // 2
    # without straightening a 4 px bend moves most of the mass off the middle row
    unstraightened = _crop(24, bend=4.0)[16 - shape.half_height:16 + shape.half_height + 1]
    assert np.argmax(unstraightened.sum(axis=1)) != shape.half_height


def test_wider_crops_are_resampled_to_the_feature_width():
    shape = FeatureShape(96, 0.3)
    features = identity_features(np.zeros((3, 96, 96), np.uint8), shape)
    assert features.shape == (3, shape.size) and shape.width == 48
    assert identity_features(np.zeros((0, 96, 96), np.uint8), shape).shape == (0, shape.size)


def test_the_model_separates_two_animals_and_gives_probabilities():
    rng = np.random.default_rng(0)
    shape = FeatureShape(32, 0.3)
    crops = [_crop(20 if k % 2 else 26) for k in range(200)]
    noisy = np.clip(np.stack(crops).astype(int) + rng.integers(-8, 9, (200, 32, 32)) * (np.stack(crops) > 0), 0, 255)
    x = identity_features(noisy.astype(np.uint8), shape)
    labels = np.where(np.arange(200) % 2, 1, 2)
    model = AppearanceModel(shape, 3).fit(x[:100], labels[:100])
    log_p = model.log_proba(x[100:])
    assert log_p.shape == (100, 3)
    np.testing.assert_allclose(np.exp(log_p[:, :2]).sum(axis=1), 1.0, rtol=1e-4)  # identity 3 never seen
    assert (log_p.argmax(axis=1) + 1 == labels[100:]).mean() > 0.95


def test_spread_rows_picks_evenly_inside_each_fragment():
    rows = spread_rows(np.array([10, 3, 0, 7]), 4)
    assert rows.tolist() == [0, 2, 5, 7, 10, 11, 12, 13, 14, 16, 18]
    assert spread_rows(np.array([5, 2]), 0).tolist() == list(range(7))


def test_relabel_and_agreement_ignore_the_numbering():
    a = np.array([1, 2, 3, 1, 0])
    b = np.array([3, 1, 2, 3, 2])
    w = np.ones(5)
    assert agreement(a, b, w, 3) == pytest.approx(4 / 5)
    assert relabel_to(a, b, w, 3).tolist() == [3, 1, 2, 3, 0]


@pytest.mark.slow
def test_accumulation_opens_identities_when_no_frame_shows_every_animal():
    """Three animals, never all apart: fragment 2 coexists with both of the seed's, so it is new."""
    rng = np.random.default_rng(1)
    shape = FeatureShape(32, 0.3)
    length = {1: 18, 2: 23, 3: 28}
    animal = [1, 2, 3, 1, 2]  # fragment -> true animal
    start, end = np.array([0, 0, 10, 30, 30]), np.array([20, 20, 40, 50, 50])
    counts = end - start + 1
    crops = np.concatenate([np.stack([_crop(length[a])] * c) for a, c in zip(animal, counts)])
    crops = np.clip(crops.astype(int) + rng.integers(-6, 7, crops.shape) * (crops > 0), 0, 255).astype(np.uint8)
    image_fragment = np.repeat(np.arange(5), counts)
    pairs = [(0, 1), (0, 2), (1, 2), (2, 3), (2, 4), (3, 4)]
    adjacency = [[b for a, b in pairs if a == f] + [a for a, b in pairs if b == f] for f in range(5)]
    ptr = np.concatenate([[0], np.cumsum([len(x) for x in adjacency])])
    graph = FragmentGraph(counts, start, end, ptr, np.array(sum(adjacency, []), np.int64), np.zeros((0, 3), np.int64))
    result = accumulate(graph, identity_features(crops, shape), image_fragment, shape, 3, AppearanceConfig())
    assert any("no global fragment" in w for w in result.warnings)
    assert sorted(np.unique(result.identity).tolist()) == [1, 2, 3]
    truth = np.array(animal)
    assert agreement(result.identity, truth, counts.astype(float), 3) == 1.0


@pytest.mark.slow
def test_session_end_identities_are_accurate_and_never_shared_by_coexisting_fragments(tracked):
    summary, truth, body_length, _ = tracked
    assert summary["identity_method"] == "accumulation"
    trajectories, data, _ = load_trajectories(summary["session"])
    report = evaluate(trajectories, truth, body_length)
    assert report.accuracy_solo >= 0.995
    # estimated accuracy lies within one point of the measured one
    assert abs(summary["estimated_accuracy"] - report.accuracy_solo) <= 0.01
    session = load_session(summary["session"])
    decided = identify_session(session, ANIMALS, AppearanceConfig())
    pairs = decided.table.pairs
    identity = decided.result.identity
    assert not ((identity[pairs[:, 0]] == identity[pairs[:, 1]]) & (identity[pairs[:, 0]] > 0)).any()


@pytest.mark.slow
def test_every_identified_position_has_a_positive_probability(tracked):
    summary, _, _, _ = tracked
    trajectories, data, _ = load_trajectories(summary["session"])
    placed = ~np.isnan(trajectories[..., 0])
    probabilities = np.asarray(data["id_probabilities"])[..., 0]
    assert placed.any() and (probabilities[placed & ~np.isnan(probabilities)] > 0).all()


@pytest.mark.slow
def test_refine_recovers_identities_from_scrambled_live_ones(tracked, tmp_path):
    from toxrt.offline.refine import refine_session

    summary, truth, body_length, _ = tracked
    folder = tmp_path / "session"
    shutil.copytree(summary["session"], folder)
    # scramble: every fragment gets a random identity, as a poor live stage might have said
    with np.load(folder / FRAGMENT_IDENTITIES) as data:
        saved = {k: data[k] for k in data.files}
    saved["identity"] = np.random.default_rng(0).integers(1, ANIMALS + 1, saved["identity"].size)
    np.savez(folder / FRAGMENT_IDENTITIES, **saved)
    refined = refine_session(folder, progress=False)  # the session's [refine] table: accumulation
    assert refined.status == "refined"
    trajectories, _, _ = load_trajectories(folder)
    assert evaluate(trajectories, truth, body_length).accuracy_solo >= 0.995
    assert load_fragment_identities(folder) is not None


@pytest.mark.slow
def test_the_live_model_takes_over_and_never_looks_ahead(tracked):
    """Results up to frame t are the same whether the video ends at t or goes on."""
    from toxrt.pipeline import LiveTracker, prepare
    from toxrt.sources import open_source

    summary, _, _, config = tracked
    assert summary["live_model_trainings"] >= 1
    config = dataclasses.replace(config, appearance=dataclasses.replace(config.appearance, live_inline=True,
                                                                        live_retrain_interval_s=1.0))
    source = open_source(config)
    try:
        setup = prepare(config, source)
        frames = [frame for frame, _ in zip(source, range(300))]
    finally:
        source.close()

    def run(count: int) -> list[tuple[np.ndarray, np.ndarray]]:
        tracker = LiveTracker(config, setup)
        out = [tracker.step(frame) for frame in frames[:count]]
        taken_over = tracker.identities._model is not None
        tracker.close()
        assert taken_over
        return [(r.identity.copy(), r.probability.copy()) for r in out]

    short, long = run(200), run(300)
    for (a_id, a_p), (b_id, b_p) in zip(short, long[:200]):
        np.testing.assert_array_equal(a_id, b_id)
        np.testing.assert_array_equal(a_p, b_p)
